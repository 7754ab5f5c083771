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
    <output>/dataset.json       parameters, counts, splits, fingerprint, schema and code
                                version
    <output>/qc/<source>.png    QC contact sheets (preprocessing.qc); qc/rejected.png
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
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

import mammoray
from mammoray.core import faults, isolation, resources, storage
from mammoray.core.config import ConfigError, DataConfig, ExperimentConfig, SourceConfig
from mammoray.core.deid import Salt, load_salt, salted_key
from mammoray.core.ray_session import ray_session
from preprocessing import augment, qc
from preprocessing import splits as splits_mod
from preprocessing.sources import SCANNERS, SourceImage
from preprocessing.transform import PASSTHROUGH, SCHEMA, SCHEMA_VERSION, process_batch, rejected_row

REJECTED_COLUMNS = ("relpath", "source", "image_id", "reason")
WRITE_CPUS = 0.25  # Parquet writing is light next to decoding; leave the cores to the map
FILE_BYTES = 64 << 20  # target Parquet file size when data.rows_per_file is 0 (auto)
BYTES_COLUMNS = ("image", "mask")  # the per-image pixel bytes, most of a row


class PreprocessError(RuntimeError):
    """The job cannot run (bad path, empty input) or lost rows; says what to fix."""


def check_paths(cfg: DataConfig) -> None:
    """Stop before any work when an input or the output is missing or unusable."""
    sources = cfg.resolved_sources()
    for i, src in enumerate(sources):
        key = f"data.sources[{i}].input" if cfg.sources else "data.input"
        if not src.input:
            raise ConfigError(f"{key}: required (the dataset root); pass --input DIR")
        if not storage.is_dir(src.input):
            raise PreprocessError(f"--input {src.input}: no such directory")
    if not cfg.output:
        raise ConfigError("data.output: required (the output folder); pass --output DIR")
    output = storage.normalize(cfg.output).rstrip("/")
    if storage.exists(output) and not cfg.overwrite:
        state = "" if storage.is_complete(output) else (
            " (incomplete: its job failed or was killed while publishing it)")
        raise PreprocessError(f"--output {cfg.output}: already exists{state}; choose another "
                              f"folder or pass --overwrite")
    if not storage.is_uri(output):
        parent = os.path.dirname(output)
        if not os.path.isdir(parent):
            raise PreprocessError(f"--output {cfg.output}: parent folder {parent} does not "
                                  f"exist")
        if not os.access(parent, os.W_OK):
            raise PreprocessError(f"--output {cfg.output}: parent folder {parent} is not "
                                  f"writable")


def _identity(img: SourceImage) -> str:
    return img.patient or f"file:{img.relpath}"


def split_source(src: SourceConfig, images: list[SourceImage],
                 cfg: DataConfig) -> tuple[dict[str, str], dict[str, int]]:
    """Patient -> split for one source, and counts of what decided it.

    Test: the dataset's official test split when it has one (and ``official_split``), plus
    ``test_patients``; a patient with any test image is wholly test (no patient in two
    splits). Validation is carved out of the remaining patients by ``val_fraction``. Without
    an official split or a test list, ``test_fraction`` of the patients is test.
    """
    patients = sorted({_identity(img) for img in images})
    listed = set(src.test_patients)
    official = src.official_split and any(img.official_split for img in images)
    test = {p for p in patients if p in listed}
    if official:
        test |= {_identity(img) for img in images
                 if img.official_split == "test" or img.official_test_patient}
    rest = [p for p in patients if p not in test]
    fixed_test = official or bool(listed)
    split_of = splits_mod.assign_splits(rest, cfg.val_fraction,
                                        0.0 if fixed_test else cfg.test_fraction, cfg.seed)
    split_of.update({p: "test" for p in test})
    moved = sum(1 for img in images
                if img.official_split == "train" and split_of[_identity(img)] == "test")
    return split_of, {"official_split": int(official), "listed_test_patients": len(test & listed),
                      "train_images_moved_to_test_with_their_patient": moved}


def build_records(scanned: list[tuple[SourceConfig, list[SourceImage]]], cfg: DataConfig,
                  salt: Salt) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Manifest records for the workers (salted keys, split, files, augmentation copies; no
    raw identities) and per-source notes on how the split was made."""
    records: list[dict[str, Any]] = []
    notes: dict[str, Any] = {}
    for src, images in scanned:
        name = src.source_name
        split_of, notes[name] = split_source(src, images, cfg)
        train = [img for img in images if split_of[_identity(img)] == "train" and not img.reject]
        copies = dict(zip((id(img) for img in train),
                          augment.copies_for(len(train), copies=src.augment.copies,
                                             target_total=src.augment.target_total)))
        for img in images:
            records.append({
                "image_id": salted_key(salt, name, "image", img.relpath),
                "patient_key": salted_key(salt, name, "patient", _identity(img)),
                "source": name,
                "split": split_of[_identity(img)],
                "relpath": img.relpath,
                "dicom_path": img.dicom_path,
                "mask": json.dumps(img.mask) if img.mask else "",
                "reject": img.reject or "",
                "laterality_hint": img.laterality or "",
                "view_hint": img.view or "",
                "augment_copies": copies.get(id(img), 0),
                "qc": False,
                **{k: img.extra.get(k) for k in PASSTHROUGH},
            })
    # QC cards for a sample per source: the first by salted image id (random-like, and
    # the same for the same salt). Twice as many are drawn as a sheet shows, so that files
    # rejected while decoding do not leave the sheet short (qc.write_sheets keeps the first).
    for src, _ in scanned:
        mine = sorted((r for r in records if r["source"] == src.source_name and
                       not r["reject"]), key=lambda r: r["image_id"])
        for r in mine[:2 * cfg.qc_samples]:
            r["qc"] = True
    return records, notes


def _code_version() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                             capture_output=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{mammoray.__version__}+{sha}" if sha else mammoray.__version__


INDEX_COLUMNS = ("image_id", "patient_key", "source", "split", "augment_index", "has_mass",
                 "has_mask_annotation", "mass_pixels", "orig_height", "orig_width", "flipped",
                 "crop_x0", "crop_y0", "crop_x1", "crop_y1", "pixel_spacing_row",
                 "pixel_spacing_col", "intensity_p01", "intensity_p50", "intensity_p99")


def _collect(staged: storage.StagedOutput) -> tuple[pa.Table, pa.Table]:
    """Move written rows into data/ and gather rejected rows; returns (data index, rejected)."""
    fs, rows = storage.resolve(staged.path("rows"))
    _, data = storage.resolve(staged.path("data"))
    ok_dir, rej_dir = f"{rows}/status=ok", f"{rows}/status=rejected"
    if fs.get_file_info(ok_dir).type == storage.pafs.FileType.Directory:
        storage.move_tree(staged.path("rows", "status=ok"), staged.path("data"))
    else:
        fs.create_dir(data)
    files = [i.path for i in fs.get_file_info(storage.pafs.FileSelector(data))
             if i.path.endswith(".parquet")]
    if files:
        index = pads.dataset(files, filesystem=fs, format="parquet").to_table(
            columns=list(INDEX_COLUMNS))
    else:
        index = SCHEMA.empty_table().select(list(INDEX_COLUMNS))
    if fs.get_file_info(rej_dir).type == storage.pafs.FileType.Directory:
        rejected = pads.dataset(rej_dir, filesystem=fs, format="parquet").to_table(
            columns=list(REJECTED_COLUMNS))
    else:
        rejected = SCHEMA.empty_table().select(list(REJECTED_COLUMNS))
    fs.delete_dir(rows)
    return index, rejected


def _process_alone(record: dict[str, Any], **map_kwargs: Any) -> pa.Table:
    """One record through the map function with the map's own keyword arguments, as a task
    of its own (see _rescue_lost)."""
    return process_batch(pa.Table.from_pylist([record]), **map_kwargs)


def _rescue_lost(records: list[dict[str, Any]], index: pa.Table, rejected: pa.Table,
                 staged: storage.StagedOutput, kwargs: dict[str, Any],
                 log: Callable[[str], None]) -> tuple[pa.Table, pa.Table]:
    """Inputs whose rows never came back (their task's process died, even after a retry:
    a decoder that segfaults, aborts or is killed for memory takes its task's other images
    with it) run again one per task: those whose task dies again are rejected with the reason,
    the others are written. Returns the index and rejected rows, completed."""
    seen = set(index.column("image_id").to_pylist()) | set(
        rejected.column("image_id").to_pylist())
    lost = [r for r in records if r["image_id"] not in seen]
    if not lost:
        return index, rejected
    results = isolation.run_each_alone(
        lambda record: _process_alone(record, **kwargs), lost,
        num_cpus=kwargs["cfg"].cpus_per_task)
    tables, crashed = [], []
    for record, table, error in results:
        if error is None:
            tables.append(table)
        else:
            crashed.append(rejected_row(record, isolation.crash_reason(error)))
    done = pa.concat_tables([*tables, pa.Table.from_pylist(crashed, schema=SCHEMA)])
    ok = done.filter(pc.equal(done.column("status"), "ok")).drop_columns(["status"])
    if ok.num_rows:
        fs, path = storage.resolve(staged.path("data", "rescued.parquet"))
        pq.write_table(ok, path, filesystem=fs, **parquet_write_options(kwargs["cfg"]))
    not_ok = done.filter(pc.not_equal(done.column("status"), "ok"))
    log(f"preprocess: {len(lost)} input(s) lost with a task whose process died, processed "
        f"one by one: {len(lost) - not_ok.num_rows} written, {not_ok.num_rows} rejected")
    return (pa.concat_tables([index, ok.select(list(INDEX_COLUMNS))]),
            pa.concat_tables([rejected, not_ok.select(list(REJECTED_COLUMNS))]))


def _split_summary(index: pa.Table) -> dict[str, Any]:
    """Per source and split: original images, patients, images with a mass, augmented rows."""
    rows = index.to_pylist()
    out: dict[str, Any] = {}
    for source in sorted({r["source"] for r in rows}):
        per = {}
        for split in splits_mod.SPLITS:
            sel = [r for r in rows if r["source"] == source and r["split"] == split]
            originals = [r for r in sel if r["augment_index"] == 0]
            per[split] = {"images": len(originals),
                          "patients": len({r["patient_key"] for r in originals}),
                          "with_mass": sum(bool(r["has_mass"]) for r in originals),
                          "augmented_rows": len(sel) - len(originals)}
        out[source] = per
    return out


def parquet_write_options(data_cfg: DataConfig) -> dict[str, Any]:
    """pyarrow's Parquet write options for the rows: the configured codec, and no dictionary
    and no statistics for the image and mask bytes. A 2 MB value never repeats, so its
    dictionary is built and thrown away, and its min/max tells a reader nothing; the two cost
    twice the codec's CPU (``benchmarks/parquet_codec.py``). The files read back the same."""
    small = [c for c in SCHEMA.names if c not in BYTES_COLUMNS and c != "status"]
    return {"compression": data_cfg.parquet_compression, "use_dictionary": small,
            "write_statistics": small}


def _run_pipeline(ray, records: list[dict[str, Any]], notes: dict[str, Any],
                  data_cfg: DataConfig, staged: storage.StagedOutput, salt: Salt,
                  t0: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Ray Data map + write into ``staged``, then sort and count rows; returns the summary."""
    t_ray = time.time()
    # Ray Data reserves a share of the CPUs per operator; on a small machine that leaves
    # the map one task while the light writer idles on its share. The map is the work.
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    per_task = data_cfg.images_per_task
    blocks = max(1, min(-(-len(records) // per_task), 4096))
    map_kwargs = {"cfg": data_cfg, "augment_by_source": {
        s.source_name: s.augment for s in data_cfg.resolved_sources()},
        "injected": faults.from_env(),
        "qc_dir": staged.path("qc", "cards") if data_cfg.qc_samples else None}
    rows_per_file = data_cfg.rows_per_file or max(1, FILE_BYTES // (data_cfg.size ** 2 * 3))
    # A dataset keeps the DataContext of its creation: tolerate errored blocks from here.
    with isolation.tolerant_blocks():
        ds = ray.data.from_items(records, override_num_blocks=blocks)
        ds = ds.map_batches(process_batch, batch_size=per_task, batch_format="pyarrow",
                            fn_kwargs=map_kwargs, num_cpus=data_cfg.cpus_per_task,
                            **isolation.retry_args())
        # The write must stay a separate operator (its own, smaller CPU request prevents
        # fusion): fused with the map, min_rows_per_file would bundle rows_per_file *input*
        # images into one serial task, losing parallelism and holding a whole file of
        # processed rows in one worker.
        ds.write_parquet(staged.path("rows"), partition_cols=["status"],
                         min_rows_per_file=rows_per_file, max_rows_per_file=rows_per_file,
                         ray_remote_args={"num_cpus": WRITE_CPUS},
                         **parquet_write_options(data_cfg))
    t_written = time.time()
    index, rejected = _collect(staged)
    index, rejected = _rescue_lost(records, index, rejected, staged, map_kwargs, log)
    rejected = rejected.sort_by("relpath")
    sheets = (qc.write_sheets(map_kwargs["qc_dir"], staged.path("qc"), data_cfg.qc_samples)
              if map_kwargs["qc_dir"] else {})
    fs, rejected_path = storage.resolve(staged.path("rejected.parquet"))
    pq.write_table(rejected, rejected_path, filesystem=fs)
    originals = pc.equal(index.column("augment_index"), 0)
    written = int(pc.sum(originals).as_py() or 0)
    augmented = index.num_rows - written
    n_rejected = rejected.num_rows
    if written + n_rejected != len(records):
        raise PreprocessError(f"row count mismatch: {len(records)} inputs but {written} "
                              f"written + {n_rejected} rejected; the output was discarded")
    summary = {
        "schema_version": SCHEMA_VERSION,
        "code_version": _code_version(),
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sources": {s.source_name: s.format for s in data_cfg.resolved_sources()},
        "parameters": _parameters(data_cfg),
        "patient_key_salt": salt.origin,
        "image": {"height": data_cfg.size, "width": data_cfg.size, "dtype": "uint16",
                  "mask_dtype": "uint8", "layout": "row-major bytes"},
        "counts": {"input": len(records), "written": written, "rejected": n_rejected,
                   "augmented_rows": augmented},
        "rejected_reasons": dict(Counter(rejected.column("reason").to_pylist())),
        "splits": _split_summary(index),
        "split_notes": notes,
        "fingerprint": qc.fingerprint(index.to_pylist(), data_cfg.size,
                                      data_cfg.pad_to_square),
        "qc_sheets": {name: f"qc/{name}.png ({n} cards)" for name, n in sheets.items()},
        "seconds": {"total": round(time.time() - t0, 2),
                    "pipeline": round(t_written - t_ray, 2)},
    }
    storage.write_bytes(staged.path("dataset.json"),
                        json.dumps(summary, indent=2).encode("utf-8"))
    return summary


def _parameters(cfg: DataConfig) -> dict[str, Any]:
    """The config as written to dataset.json: test patient lists are raw identities, so only
    their length is kept."""
    params = dataclasses.asdict(cfg)
    for src in params["sources"]:
        src["test_patients"] = f"<{len(src['test_patients'])} patients, not written>"
    return params


def run_preprocess(cfg: ExperimentConfig, *,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the preprocessing job; returns the summary written to ``dataset.json``."""
    import ray  # imported here so that the pure modules above never need Ray

    data_cfg = cfg.data
    check_paths(data_cfg)
    t0 = time.time()
    scanned = []
    for src in data_cfg.resolved_sources():
        root = storage.normalize(src.input)
        images = SCANNERS[src.format](root, src.source_name, src)
        if not images:
            raise PreprocessError(f"--input {src.input}: no DICOM files (*.dcm) found for "
                                  f"format '{src.format}'")
        scanned.append((src, images))
    salt = load_salt(data_cfg.salt_env)
    if salt.origin == "random":
        log(f"note: {data_cfg.salt_env} is not set; patient keys use a random salt and differ "
            f"between runs (splits do not)")
    records, notes = build_records(scanned, data_cfg, salt)
    for src, images in scanned:
        name = src.source_name
        mine = [r for r in records if r["source"] == name]
        log(f"preprocess: {name}: {len(mine)} images of {len({r['patient_key'] for r in mine})}"
            f" patients ({src.format}); {sum(r['augment_copies'] for r in mine)} augmented "
            f"copies planned")
    with ray_session(cfg.ray):
        resources.ensure_units("preprocessing", 1, "task", data_cfg.cpus_per_task, 0.0,
                               count_flag="", cpus_flag="data.cpus_per_task",
                               wait_s=cfg.ray.resource_wait_s, log=log)
        with storage.StagedOutput.create(data_cfg.output, overwrite=data_cfg.overwrite,
                                         log=log) as staged:
            summary = _run_pipeline(ray, records, notes, data_cfg, staged, salt, t0, log)
    counts = summary["counts"]
    log(f"preprocess: {counts['input']} inputs = {counts['written']} written + "
        f"{counts['rejected']} rejected (+ {counts['augmented_rows']} augmented rows) -> "
        f"{staged.final}")
    for reason, n in sorted(summary["rejected_reasons"].items()):
        log(f"  rejected {n}: {reason}")
    return summary
