"""Reading a preprocessed dataset (the output of ``jobs.preprocess``): its ``dataset.json``
and its rows (``<data>/data/*.parquet``) as Ray Datasets. Training, search and evaluation read
through here; the rows are written by :mod:`preprocessing.pipeline`."""

from __future__ import annotations

import json
from typing import Any

from mammoray.core import storage
from mammoray.core.config import ConfigError


def read_dataset_json(data: str) -> dict[str, Any]:
    """The dataset's ``dataset.json``; a clear error naming ``--data`` when there is none."""
    root = storage.normalize(data)
    path = storage.join(root, "dataset.json")
    if not storage.exists(path):
        raise ConfigError(f"--data {data}: no dataset.json; give the output folder of "
                          f"jobs.preprocess")
    try:
        storage.require_complete(root, "--data", "dataset")
    except storage.IncompleteOutput as exc:
        raise ConfigError(str(exc)) from None
    return json.loads(storage.read_bytes(path))


def image_size(info: dict[str, Any]) -> int:
    """The side of the dataset's (square) images, from its dataset.json."""
    return int(info["image"]["height"])


def read_rows(data: str, columns: list[str], *, v2: bool = False):
    """The ``columns`` of a preprocessed dataset's rows as a Ray Dataset.

    Read with Ray Data's V1 Parquet reader unless ``v2`` (Ray 2.60's default V2 reader: a
    ListFiles task, then ReadFiles): V2 was several times slower here, most of all from a job
    on a cluster (``benchmarks/read.py``; figures in benchmarks/RESULTS.md, why in
    docs/decisions.md). The switch is read at ``read_parquet`` time only, so it is restored at
    once.
    """
    import ray

    ctx = ray.data.DataContext.get_current()
    previous, ctx.use_datasource_v2 = ctx.use_datasource_v2, v2
    try:
        return ray.data.read_parquet(storage.join(storage.normalize(data), "data"),
                                     columns=columns)
    finally:
        ctx.use_datasource_v2 = previous


def repeat_mass_rows(batch, times: int):
    """A batch of rows (a pyarrow Table with ``has_mass``) with every row showing a mass
    ``times`` times in a row, the others once; ``has_mass`` dropped."""
    import numpy as np

    counts = np.where(batch.column("has_mass").to_numpy(zero_copy_only=False), times, 1)
    return batch.take(np.repeat(np.arange(batch.num_rows), counts)).drop_columns(["has_mass"])


def split_dataset(data: str, split: str, *, v2: bool = False, mass_repeat: int = 1):
    """The rows of one split as a Ray Dataset (image id, image and mask bytes), materialized:
    training workers then iterate without needing CPUs for read tasks. ``v2``: see ``read_rows``.

    ``mass_repeat`` > 1 oversamples the images with a mass (``train.mass_repeat``): each such
    row comes that many times, next to each other (the training reader's local shuffle then
    spreads the copies through its window).

    Workers read it again every epoch; those reads print no progress bars or execution plans
    (a dataset keeps the DataContext of its creation): a training log shows its epochs."""
    import ray
    from ray.data.expressions import col

    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.print_on_execution_start
    ctx.enable_progress_bars = ctx.print_on_execution_start = False
    try:
        columns = ["image_id", "image", "mask"] + (["has_mass"] if mass_repeat > 1 else [])
        ds = read_rows(data, columns + ["split"], v2=v2)
        ds = ds.filter(expr=col("split") == split).select_columns(columns)
        if mass_repeat > 1:
            ds = ds.map_batches(repeat_mass_rows, fn_kwargs={"times": mass_repeat},
                                batch_format="pyarrow")
        return ds.materialize()
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved
