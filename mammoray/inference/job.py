"""``jobs.predict``: masks for new mammograms, on the original DICOM pixel grid.

Each DICOM goes through the preprocessing its checkpoint was trained with (the dataset's
parameters saved in the checkpoint: orientation, breast crop, CLAHE, resize), the model, and
back through the geometry (resize, crop and flip undone, :func:`preprocessing.geometry.
to_original`). Outputs per image, beside each other so that a prediction folder next to its
DICOMs is itself a ``folder``-format dataset (for review and correction):

- ``<stem>_prob.png``: probability x 255, 8-bit, original size;
- ``<stem>_mask.png``: the binary mask (0/255, 1-bit PNG), original size;
- ``<stem>_overlay.png``: the mammogram with the predicted outline (red), longest side <= 2048;
- ``<stem>_seg.dcm``: a DICOM Segmentation (:mod:`mammoray.inference.seg`);
- ``<stem>.json``: mass found, lesion count, each lesion's box and area in pixels and (when the
  DICOM has a pixel spacing) in mm, its maximum probability; written last.

Prediction runs on Ray Data (:class:`mammoray.inference.predictor.DicomPredictor`: one model
per actor, a GPU per actor when
the cluster has GPUs). A file that cannot be read gets its reason and no outputs; the others are
predicted. ``predict_summary.json`` in the output root lists every input with its status.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mammoray.core import faults, isolation, resources, storage
from mammoray.core.config import ConfigError, RayConfig
from mammoray.core.ray_session import actor_pool, ray_session
from mammoray.inference.predictor import (
    INPUT_SUFFIXES,
    OUTPUT_SUFFIXES,
    STAGES,
    DicomPredictor,
    predict_alone,
    stem_of,
)
from mammoray.model.checkpoint import check_checkpoint, share_checkpoint
from mammoray.model.window import check_infer


@dataclass(frozen=True)
class PredictOptions:
    checkpoint: str
    input: str
    output: str | None = None  # default: beside the input DICOMs
    threshold: float = 0.5
    dicom_seg: bool = True
    overwrite: bool = False
    skip_existing: bool = False  # keep the inputs whose outputs are all there; predict the rest
    actors: int | None = None
    cpus_per_actor: float = 1.0
    # Overrides of the checkpoint's infer section (mode, overlap) for a patch-trained model.
    infer: dict[str, Any] | None = None


def is_input_name(name: str) -> bool:
    """A file the predictor takes: *.dcm / *.dicom, or a name without an extension (as PACS
    exports write them); never one of its own outputs."""
    lower = name.lower()
    if lower.endswith("_seg.dcm") or lower.startswith("."):
        return False
    return lower.endswith(INPUT_SUFFIXES) or "." not in os.path.basename(lower)


def list_inputs(path: str) -> tuple[str, list[str]]:
    """(root, relative paths of the inputs) of a file or a folder (recursive)."""
    path = storage.normalize(path)
    if not storage.exists(path):
        raise ConfigError(f"--input {path}: no such file or folder")
    if not storage.is_dir(path):
        root, name = os.path.split(path) if not storage.is_uri(path) else path.rsplit("/", 1)
        return root, [name]
    files = [f[len(path.rstrip("/")) + 1:] for f in storage.list_files(path)]
    rel = [f for f in files if is_input_name(f) and ".partial-" not in f]
    if not rel:
        raise ConfigError(f"--input {path}: no DICOM files (*.dcm, *.dicom or names without "
                          "an extension) in this folder")
    return path, rel


def expected_outputs(opts: PredictOptions) -> tuple[str, ...]:
    return tuple(s for s in OUTPUT_SUFFIXES if opts.dicom_seg or s != "_seg.dcm")


def check_prediction(opts: PredictOptions) -> tuple[str, list[str], str, list[str]]:
    """(input root, input relative paths to predict, output root, inputs skipped because their
    outputs are all there), or a clear error before any work."""
    if not 0.0 < opts.threshold < 1.0:
        raise ConfigError(f"--threshold {opts.threshold}: must be between 0 and 1 (exclusive)")
    check_infer(opts.infer)
    if opts.overwrite and opts.skip_existing:
        raise ConfigError("--overwrite and --skip-existing: choose one (replace every "
                          "prediction, or keep the finished ones)")
    check_checkpoint(opts.checkpoint)
    root, relpaths = list_inputs(opts.input)
    output = storage.normalize(opts.output) if opts.output else root
    present = set(storage.list_files(output)) if storage.is_dir(output) else set()

    def outputs_of(rel: str) -> list[str]:
        return [storage.join(output, stem_of(rel)) + s for s in expected_outputs(opts)]

    if opts.skip_existing:
        # <stem>.json is written last: an input with every output present was finished; one
        # with some of them was interrupted and is predicted again.
        done = {r for r in relpaths if all(p in present for p in outputs_of(r))}
        return (root, [r for r in relpaths if r not in done], output,
                [r for r in relpaths if r in done])
    existing = [path for r in relpaths for path in outputs_of(r) if path in present]
    if existing and not opts.overwrite:
        raise ConfigError(f"--output {output}: {len(existing)} prediction file(s) already exist "
                          f"(e.g. {existing[0]}; a <stem>_mask.png may be a ground-truth "
                          "mask); choose another --output, pass --skip-existing to predict "
                          "only the inputs without them, or --overwrite")
    return root, relpaths, output, []


def run_prediction(opts: PredictOptions, ray_cfg: RayConfig,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Predict every input; returns the summary (also written as predict_summary.json)."""
    import ray

    root, relpaths, output, skipped = check_prediction(opts)
    t0 = time.perf_counter()
    if skipped:
        log(f"predict: {len(skipped)} input(s) already predicted (every output there) are "
            f"kept; predicting the other {len(relpaths)}")
    if not relpaths:
        summary = summarize(opts, [], [], time.perf_counter() - t0, skipped)
        storage.write_bytes(storage.join(output, "predict_summary.json"),
                            json.dumps(summary, indent=1).encode())
        log(f"predict: nothing left to predict in {output}")
        return summary
    with ray_session(ray_cfg):
        pool = actor_pool(opts.actors, opts.cpus_per_actor, items=len(relpaths))
        resources.ensure_units("prediction", pool.size, "actor", opts.cpus_per_actor,
                               1.0 if pool.use_gpu else 0.0, count_flag="--actors",
                               cpus_flag="", wait_s=ray_cfg.resource_wait_s,
                               log=log)
        actor_kwargs = {
            "checkpoint": share_checkpoint(opts.checkpoint), "input_root": root,
            "output_root": output, "threshold": opts.threshold, "write_seg": opts.dicom_seg,
            "run_id": uuid.uuid4().hex, "cpus": opts.cpus_per_actor, "use_gpu": pool.use_gpu,
            "injected": faults.from_env(), "infer": opts.infer}
        # A dataset keeps the DataContext of its creation: tolerate errored blocks from here.
        with isolation.tolerant_blocks():
            ds = ray.data.from_items([{"relpath": r} for r in relpaths],
                                     override_num_blocks=min(len(relpaths), 4 * pool.size))
            results = ds.map_batches(
                DicomPredictor, fn_constructor_kwargs=actor_kwargs, batch_size=1,
                batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=pool.size),
                num_cpus=opts.cpus_per_actor, num_gpus=1 if pool.use_gpu else None,
                **isolation.retry_args(actors=True)).take_all()
        results += rescue_lost(relpaths, results, actor_kwargs, opts, pool.use_gpu)
    summary = summarize(opts, relpaths, results, time.perf_counter() - t0, skipped)
    storage.write_bytes(storage.join(output, "predict_summary.json"),
                        json.dumps(summary, indent=1).encode())
    for r in summary["images"]:
        if r["status"] != "ok":
            log(f"predict: rejected {r['relpath']}: {r['reason']}")
    log(f"predict: {summary['inputs']} inputs = {summary['predicted']} predicted + "
        f"{summary['rejected']} rejected + {summary['skipped']} kept from before; "
        f"{sum(1 for r in summary['images'] if r['mass_found'])} with a mass found -> {output}")
    return summary


def rescue_lost(relpaths: list[str], results: list[dict[str, Any]],
                actor_kwargs: dict[str, Any], opts: PredictOptions,
                use_gpu: bool) -> list[dict[str, Any]]:
    """Inputs whose rows never came back (their actor's process died, even after a retry),
    each run again in a task of its own: rows for them, rejected with the reason when the task
    dies again."""
    done = {r["relpath"] for r in results}
    lost = [r for r in relpaths if r not in done]
    rows = []
    for relpath, row, error in isolation.run_each_alone(
            lambda rel: predict_alone(rel, actor_kwargs), lost, num_cpus=opts.cpus_per_actor,
            num_gpus=1 if use_gpu else None):
        rows.append(row if error is None else {
            "relpath": relpath, "status": "rejected", "reason": isolation.crash_reason(error),
            "mass_found": None, "lesions": None, "seg_written": None,
            "cpu_seconds_write": 0.0, **{f"seconds_{s}": 0.0 for s in STAGES}})
    return rows


def summarize(opts: PredictOptions, relpaths: list[str], results: list[dict[str, Any]],
              wall_seconds: float, skipped: list[str] | None = None) -> dict[str, Any]:
    """predict_summary.json: counts (inputs = predicted + rejected + skipped, checked; skipped:
    kept from an earlier run by --skip-existing), median seconds per stage (wall time; the
    writing stage's CPU time, over its two threads, apart), and every input's
    status."""
    skipped = skipped or []
    results = sorted(results + [
        {"relpath": r, "status": "skipped", "reason": "every output already there "
         "(--skip-existing)", "mass_found": None, "lesions": None, "seg_written": None}
        for r in skipped], key=lambda r: r["relpath"])
    ok = [r for r in results if r["status"] == "ok"]
    rejected = [r for r in results if r["status"] not in ("ok", "skipped")]
    if len(ok) + len(rejected) != len(relpaths):
        raise RuntimeError(f"predict: {len(relpaths)} inputs but {len(ok)} predicted + "
                           f"{len(rejected)} rejected")
    seconds = {s: float(np.median([r[f"seconds_{s}"] for r in ok])) if ok else None
               for s in STAGES}
    write_cpu = float(np.median([r["cpu_seconds_write"] for r in ok])) if ok else None
    return {"inputs": len(relpaths) + len(skipped), "predicted": len(ok),
            "rejected": len(rejected), "skipped": len(skipped),
            "threshold": opts.threshold, "dicom_seg": opts.dicom_seg,
            "median_seconds_per_image": seconds, "median_write_cpu_seconds": write_cpu,
            "wall_seconds": wall_seconds,
            "images": [{k: r[k] for k in ("relpath", "status", "reason", "mass_found",
                                          "lesions", "seg_written")} for r in results]}
