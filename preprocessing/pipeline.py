"""The Ray Data preprocessing pipeline: dataset tree -> Parquet dataset.

Driver: validate paths -> adapter manifest -> salted keys and patient-level split (raw IDs stay
here) -> Ray Data: ``from_items`` -> ``map_batches(process_batch)`` -> ``write_parquet``
partitioned by status, streaming (one image per task batch, so memory does not grow with the
number of images) -> the driver sorts rows into ``data/`` and ``rejected.parquet``, checks
inputs = written + rejected, writes ``dataset.json`` and renames the output into place.

Output layout::

    <output>/data/*.parquet     one row per image (columns: preprocessing.transform.COLUMNS
                                minus status; `reason` and `relpath` are null there)
    <output>/rejected.parquet   relpath, source, image_id, reason: one row per rejected file
    <output>/dataset.json       parameters, counts, splits, schema and code version
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import time
from collections import Counter
from typing import Any, Callable

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

import mammoray
from mammoray import storage
from mammoray.config import ConfigError, DataConfig, ExperimentConfig
from mammoray.deid import Salt, load_salt, salted_key
from preprocessing import splits as splits_mod
from preprocessing.sources import SCANNERS, SourceImage
from preprocessing.transform import SCHEMA_VERSION, process_batch

REJECTED_COLUMNS = ("relpath", "source", "image_id", "reason")
WRITE_CPUS = 0.25  # Parquet writing is light next to decoding; leave the cores to the map
FILE_BYTES = 64 << 20  # target Parquet file size when data.rows_per_file is 0 (auto)


class PreprocessError(RuntimeError):
    """The job cannot run (bad path, empty input) or lost rows; says what to fix."""


def check_paths(cfg: DataConfig) -> None:
    """Stop before any work when input/output are missing or unusable."""
    if not cfg.input:
        raise ConfigError("data.input: required (the dataset root); pass --input DIR")
    if not cfg.output:
        raise ConfigError("data.output: required (the output folder); pass --output DIR")
    if not storage.is_dir(cfg.input):
        raise PreprocessError(f"--input {cfg.input}: no such directory")
    output = storage.normalize(cfg.output).rstrip("/")
    if storage.exists(output) and not cfg.overwrite:
        raise PreprocessError(f"--output {cfg.output}: already exists; choose another folder "
                              f"or pass --overwrite")
    if not storage.is_uri(output):
        parent = os.path.dirname(output)
        if not os.path.isdir(parent):
            raise PreprocessError(f"--output {cfg.output}: parent folder {parent} does not "
                                  f"exist")
        if not os.access(parent, os.W_OK):
            raise PreprocessError(f"--output {cfg.output}: parent folder {parent} is not "
                                  f"writable")


def build_records(images: list[SourceImage], cfg: DataConfig,
                  salt: Salt) -> list[dict[str, Any]]:
    """Manifest records for the workers: salted keys, split, file paths; no raw identities."""
    identities = [img.patient or f"file:{img.relpath}" for img in images]
    split_of = splits_mod.assign_splits(
        (f"{img.source}\x1f{ident}" for img, ident in zip(images, identities)),
        cfg.val_fraction, cfg.test_fraction, cfg.seed)
    records = []
    for img, ident in zip(images, identities):
        records.append({
            "image_id": salted_key(salt, img.source, "image", img.relpath),
            "patient_key": salted_key(salt, img.source, "patient", ident),
            "source": img.source,
            "split": split_of[f"{img.source}\x1f{ident}"],
            "relpath": img.relpath,
            "dicom_path": img.dicom_path,
            "mask_path": img.mask_path,
            "pathology": img.extra.get("pathology"),
            "assessment": img.extra.get("assessment"),
            "abnormality_count": img.extra.get("abnormality_count"),
        })
    return records


def _code_version() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                             capture_output=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{mammoray.__version__}+{sha}" if sha else mammoray.__version__


def _collect(staged: storage.StagedOutput) -> tuple[pa.Table, pa.Table]:
    """Move written rows into data/ and gather rejected rows; returns (data index, rejected)."""
    fs, rows = storage.resolve(staged.path("rows"))
    _, data = storage.resolve(staged.path("data"))
    ok_dir, rej_dir = f"{rows}/status=ok", f"{rows}/status=rejected"
    if fs.get_file_info(ok_dir).type == storage.pafs.FileType.Directory:
        fs.move(ok_dir, data)
    else:
        fs.create_dir(data)
    index_cols = ["image_id", "patient_key", "source", "split", "has_mass",
                  "has_mask_annotation"]
    files = [i.path for i in fs.get_file_info(storage.pafs.FileSelector(data))
             if i.path.endswith(".parquet")]
    if files:
        index = pads.dataset(files, filesystem=fs, format="parquet").to_table(columns=index_cols)
    else:
        index = pa.table({c: pa.array([], pa.string()) for c in index_cols})
    if fs.get_file_info(rej_dir).type == storage.pafs.FileType.Directory:
        rejected = pads.dataset(rej_dir, filesystem=fs, format="parquet").to_table(
            columns=list(REJECTED_COLUMNS)).sort_by("relpath")
    else:
        rejected = pa.table({c: pa.array([], pa.string()) for c in REJECTED_COLUMNS})
    _, rejected_path = storage.resolve(staged.path("rejected.parquet"))
    pq.write_table(rejected, rejected_path, filesystem=fs)
    fs.delete_dir(rows)
    return index, rejected


def _split_summary(index: pa.Table) -> dict[str, Any]:
    rows = index.to_pylist()
    out: dict[str, Any] = {}
    for source in sorted({r["source"] for r in rows}):
        per = {}
        for split in splits_mod.SPLITS:
            sel = [r for r in rows if r["source"] == source and r["split"] == split]
            per[split] = {"images": len(sel), "patients": len({r["patient_key"] for r in sel}),
                          "with_mass": sum(bool(r["has_mass"]) for r in sel)}
        out[source] = per
    return out


def _run_pipeline(ray, records: list[dict[str, Any]], data_cfg: DataConfig,
                  staged: storage.StagedOutput, salt: Salt, t0: float) -> dict[str, Any]:
    """Ray Data map + write into ``staged``, then sort and count rows; returns the summary."""
    t_ray = time.time()
    # Ray Data reserves a share of the CPUs per operator; on a small machine that leaves
    # the map one task while the light writer idles on its share. The map is the work.
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    per_task = data_cfg.images_per_task
    blocks = max(1, min(-(-len(records) // per_task), 4096))
    ds = ray.data.from_items(records, override_num_blocks=blocks)
    ds = ds.map_batches(process_batch, batch_size=per_task, batch_format="numpy",
                        fn_kwargs={"cfg": data_cfg}, num_cpus=data_cfg.cpus_per_task)
    rows_per_file = data_cfg.rows_per_file or max(1, FILE_BYTES // (data_cfg.size ** 2 * 3))
    # The write must stay a separate operator (its own, smaller CPU request prevents
    # fusion): fused with the map, min_rows_per_file would bundle rows_per_file *input*
    # images into one serial task, losing parallelism and holding a whole file of
    # processed rows in one worker.
    ds.write_parquet(staged.path("rows"), partition_cols=["status"],
                     min_rows_per_file=rows_per_file, max_rows_per_file=rows_per_file,
                     ray_remote_args={"num_cpus": WRITE_CPUS})
    t_written = time.time()
    index, rejected = _collect(staged)
    written, n_rejected = index.num_rows, rejected.num_rows
    if written + n_rejected != len(records):
        raise PreprocessError(f"row count mismatch: {len(records)} inputs but {written} "
                              f"written + {n_rejected} rejected; the output was discarded")
    summary = {
        "schema_version": SCHEMA_VERSION,
        "code_version": _code_version(),
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "format": data_cfg.format,
        "parameters": dataclasses.asdict(data_cfg),
        "patient_key_salt": salt.origin,
        "image": {"height": data_cfg.size, "width": data_cfg.size, "dtype": "uint16",
                  "mask_dtype": "uint8", "layout": "row-major bytes"},
        "counts": {"input": len(records), "written": written, "rejected": n_rejected},
        "rejected_reasons": dict(Counter(rejected.column("reason").to_pylist())),
        "splits": _split_summary(index),
        "seconds": {"total": round(time.time() - t0, 2),
                    "pipeline": round(t_written - t_ray, 2)},
    }
    storage.write_bytes(staged.path("dataset.json"),
                        json.dumps(summary, indent=2).encode("utf-8"))
    return summary


def run_preprocess(cfg: ExperimentConfig, *,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the preprocessing job; returns the summary written to ``dataset.json``."""
    import ray  # imported here so that the pure modules above never need Ray

    from mammoray.ray_env import init_ray

    data_cfg = cfg.data
    check_paths(data_cfg)
    input_root = storage.normalize(data_cfg.input)
    t0 = time.time()
    images = SCANNERS[data_cfg.format](input_root)
    if not images:
        raise PreprocessError(f"--input {data_cfg.input}: no DICOM files (*.dcm) found for "
                              f"format '{data_cfg.format}'")
    salt = load_salt(data_cfg.salt_env)
    if salt.origin == "random":
        log(f"note: {data_cfg.salt_env} is not set; patient keys use a random salt and differ "
            f"between runs (splits do not)")
    records = build_records(images, data_cfg, salt)
    log(f"preprocess: {len(records)} images from {data_cfg.format} dataset, "
        f"{len({r['patient_key'] for r in records})} patients")
    started_ray = init_ray(cfg.ray)
    try:
        staged = storage.StagedOutput.create(data_cfg.output, overwrite=data_cfg.overwrite)
        try:
            summary = _run_pipeline(ray, records, data_cfg, staged, salt, t0)
            staged.commit()
        except BaseException:
            staged.discard()
            raise
    finally:
        if started_ray:
            ray.shutdown()
    counts = summary["counts"]
    log(f"preprocess: {counts['input']} inputs = {counts['written']} written + "
        f"{counts['rejected']} rejected -> {staged.final}")
    for reason, n in sorted(summary["rejected_reasons"].items()):
        log(f"  rejected {n}: {reason}")
    return summary
