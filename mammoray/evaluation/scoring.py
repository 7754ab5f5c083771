"""Scoring preprocessed rows with a checkpoint on Ray Data: one model per actor
(:class:`RowScorer`), every image scored at all thresholds of
:data:`mammoray.evaluation.figures.THRESHOLDS` at once, so the FROC curve and a threshold chosen
on the validation split cost one pass each. What leaves the actors is per-image stats, never
probability maps."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from mammoray.core import resources
from mammoray.core.dataset import read_rows
from mammoray.core.ray_session import actor_pool
from mammoray.evaluation.figures import STAT_KEYS, THRESHOLDS, image_stats
from mammoray.model import checkpoint as ckpt
from mammoray.model.window import segmenter_of

# Row columns an evaluation carries from the Parquet to the per-image table.
META_COLUMNS = ("image_id", "patient_key", "source", "split", "pathology", "mass_pixels",
                "crop_x0", "crop_y0", "crop_x1", "crop_y1", "pixel_spacing_row",
                "pixel_spacing_col")
SCORE_SCHEMA = pa.schema(
    [(c, pa.string()) for c in ("image_id", "patient_key", "source", "split", "pathology")]
    + [(c, pa.int64()) for c in ("mass_pixels", "crop_x0", "crop_y0", "crop_x1", "crop_y1")]
    + [("pixel_spacing_row", pa.float64()), ("pixel_spacing_col", pa.float64())]
    + [(k, pa.list_(pa.int64())) for k in STAT_KEYS]
    + [("truth", pa.int64()), ("pixels", pa.int64()), ("lesions", pa.int64()),
       ("max_prob", pa.float64())])


class EvaluationError(RuntimeError):
    """The data cannot be evaluated (e.g. an empty split)."""


class RowScorer:
    """Ray Data actor: scores preprocessed rows at every threshold of ``thresholds``."""

    def __init__(self, checkpoint, thresholds: tuple[float, ...] = THRESHOLDS,
                 cpus: float = 1.0, use_gpu: bool = False,
                 infer: dict[str, Any] | None = None) -> None:
        from mammoray.model.runtime import configure_tensorflow

        configure_tensorflow(cpus, use_gpu)
        self.thresholds = tuple(thresholds)
        with ckpt.LocalCheckpoint(checkpoint) as folder:
            self.model, _, self.size = segmenter_of(folder, infer)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from mammoray.model.inputs import decode_rows, predict_probabilities

        cols = batch.to_pydict()
        x, y = decode_rows(cols["image"], cols["mask"], self.size)
        prob = predict_probabilities(self.model, x)
        out: dict[str, list[Any]] = {c: cols[c] for c in META_COLUMNS}
        stats = [image_stats(y[i, ..., 0], prob[i], self.thresholds) for i in range(len(x))]
        for key in (*STAT_KEYS, "truth", "pixels", "lesions", "max_prob"):
            out[key] = [s[key] for s in stats]
        return pa.Table.from_pydict(out, schema=SCORE_SCHEMA)


def split_rows(data: str, split: str):
    """Original (non-augmented) rows of one split, materialized before the actors start (so
    actors holding every CPU never starve the read tasks)."""
    from ray.data.expressions import col

    ds = read_rows(data, ["image", "mask", "augment_index", *META_COLUMNS])
    ds = ds.filter(expr=(col("split") == split) & (col("augment_index") == 0))
    return ds.drop_columns(["augment_index"]).materialize()


def score_split(checkpoint: str, data: str, split: str, *, thresholds: tuple[float, ...],
                batch_size: int, actors: int | None, cpus_per_actor: float,
                wait_s: float, infer: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per-image stats of every row of ``split`` (Ray Data, one model per actor)."""
    import ray

    ds = split_rows(data, split)
    rows = ds.count()
    if rows == 0:
        raise EvaluationError(f"--data {data}: split '{split}' has no rows")
    batches = -(-rows // batch_size)
    pool = actor_pool(actors, cpus_per_actor, items=batches)
    resources.ensure_units("evaluation", pool.size, "actor", cpus_per_actor,
                           1.0 if pool.use_gpu else 0.0, count_flag="--actors",
                           cpus_flag="", wait_s=wait_s)
    # Enough blocks for every actor to get work (a small split is often one block), made
    # before the actors start: actors holding every CPU would starve the repartition tasks.
    ds = ds.repartition(max(1, min(batches, 8 * pool.size))).materialize()
    scored = ds.map_batches(
        RowScorer, fn_constructor_kwargs={"checkpoint": ckpt.share_checkpoint(checkpoint),
                                          "thresholds": thresholds, "cpus": cpus_per_actor,
                                          "use_gpu": pool.use_gpu, "infer": infer},
        batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pool.size),
        num_cpus=cpus_per_actor, num_gpus=1 if pool.use_gpu else None)
    return sorted(scored.take_all(), key=lambda r: r["image_id"])

