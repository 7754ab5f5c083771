"""``jobs.evaluate``: score a checkpoint on one split of a preprocessed dataset.

Batch inference runs on Ray Data (:mod:`mammoray.evaluation.scoring`: one model per actor, a
GPU per actor when the cluster has GPUs, every image scored at all thresholds at once). The
driver then computes the figures (:mod:`mammoray.evaluation.figures`), draws the best and worst
cases and writes the report (:mod:`mammoray.evaluation.report`).

Outputs (written aside and renamed when complete): ``metrics.json``, ``per_image.csv``,
``froc.png``, ``overlays/*.png``, ``report.html``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mammoray.core import storage
from mammoray.core.config import ConfigError, RayConfig, config_from_dict
from mammoray.core.dataset import image_size, read_dataset_json
from mammoray.core.ray_session import ray_session
from mammoray.evaluation import figures, report
from mammoray.evaluation.scoring import EvaluationError, score_split
from mammoray.model.checkpoint import check_checkpoint
from mammoray.model.window import check_infer, describe_inference, with_infer

SPLITS = ("train", "val", "test")
@dataclass(frozen=True)
class EvaluateOptions:
    checkpoint: str
    data: str
    split: str = "test"
    output: str | None = None
    threshold: str = "0.5"  # a number in (0, 1), or "val": best mean Dice on the val split
    batch_size: int = 8
    actors: int | None = None  # default: one per CPU (CPU) or per GPU
    cpus_per_actor: float = 1.0
    bootstrap: int = 1000
    seed: int = 0
    overwrite: bool = False
    infer: dict[str, Any] | None = None  # overrides of the checkpoint's infer section


def parse_threshold(value: str) -> float | None:
    """A fixed threshold, or None for "choose it on the validation split"."""
    if str(value).lower() == "val":
        return None
    try:
        t = float(value)
    except ValueError:
        raise ConfigError(f"--threshold {value}: expected a number between 0 and 1 (exclusive) "
                          "or 'val' (chosen on the validation split)") from None
    if not 0.0 < t < 1.0:
        raise ConfigError(f"--threshold {value}: must be between 0 and 1 (exclusive), or 'val'")
    return t


def _check(opts: EvaluateOptions) -> tuple[dict[str, Any], dict[str, Any], float | None, str]:
    if opts.split not in SPLITS:
        raise ConfigError(f"--split {opts.split}: allowed {', '.join(SPLITS)}")
    threshold = parse_threshold(opts.threshold)
    if threshold is None and opts.split == "val":
        raise ConfigError("--threshold val: the threshold is chosen on the validation split, "
                          "so evaluate another split (e.g. --split test) or give a number")
    check_infer(opts.infer)
    meta = check_checkpoint(opts.checkpoint)
    info = read_dataset_json(opts.data)
    size = image_size(info)
    if size != int(meta["size"]):
        raise ConfigError(f"--data {opts.data}: images are {size} x {size} but the checkpoint "
                          f"{opts.checkpoint} takes {meta['size']} x {meta['size']}")
    output = opts.output or storage.join(storage.dirname(storage.normalize(opts.checkpoint)),
                                         f"evaluation-{opts.split}")
    return meta, info, threshold, output


def _diameters(rows: list[dict[str, Any]], size: int, pad: bool) -> list[tuple[float | None,
                                                                          float]]:
    """(equivalent diameter of each image's truth in mm or None, and in input pixels)."""
    out = []
    for r in rows:
        area_px = float(r["truth"])
        d_px = 2 * math.sqrt(area_px / math.pi)
        sr, sc = r["pixel_spacing_row"], r["pixel_spacing_col"]
        d_mm = None
        if sr and sc and r["crop_x1"] is not None:
            cw, ch = r["crop_x1"] - r["crop_x0"], r["crop_y1"] - r["crop_y0"]
            if pad:
                cw = ch = max(cw, ch)
            d_mm = 2 * math.sqrt(area_px * (cw * sc / size) * (ch * sr / size) / math.pi)
        out.append((d_mm, d_px))
    return out


def _breakdowns(rows: list[dict[str, Any]], table: figures.Table, k: int,
                diameters: list[tuple[float | None, float]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, list[int]]] = {"source": {}, "pathology": {}, "lesion_size": {}}
    for i, (r, (d_mm, d_px)) in enumerate(zip(rows, diameters)):
        groups["source"].setdefault(r["source"] or "unknown", []).append(i)
        if r["truth"] > 0:
            groups["pathology"].setdefault((r["pathology"] or "unknown").lower(), []).append(i)
            groups["lesion_size"].setdefault(figures.size_bin(d_mm, d_px), []).append(i)
    out = {}
    for name, members in groups.items():
        if not members or (name == "pathology" and set(members) == {"unknown"}):
            continue
        out[name] = {value: figures.aggregate(table.subset(np.asarray(idx)), k)
                     for value, idx in sorted(members.items())}
    return out


def run_evaluation(opts: EvaluateOptions, ray_cfg: RayConfig,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate; returns the metrics.json content."""
    meta, info, threshold, output = _check(opts)
    size = int(meta["size"])
    pad = bool(info.get("parameters", {}).get("pad_to_square", False))
    t0 = time.perf_counter()
    with storage.StagedOutput.create(output, overwrite=opts.overwrite, log=log) as staged:
        with ray_session(ray_cfg):
            thresholds = figures.THRESHOLDS
            if threshold is not None and threshold not in thresholds:
                thresholds = tuple(sorted((*thresholds, threshold)))
            scoring = {"thresholds": thresholds, "batch_size": opts.batch_size,
                       "actors": opts.actors, "cpus_per_actor": opts.cpus_per_actor,
                       "wait_s": ray_cfg.resource_wait_s, "infer": opts.infer}
            threshold, source = _threshold(opts, threshold, scoring, log)
            k = thresholds.index(threshold)
            log(f"evaluate: scoring split '{opts.split}' ...")
            t_score = time.perf_counter()
            rows = score_split(opts.checkpoint, opts.data, opts.split, **scoring)
            score_seconds = time.perf_counter() - t_score
        diameters = _diameters(rows, size, pad)
        result = _result(opts, rows, k, threshold, source, size, diameters, thresholds,
                         score_seconds)
        trained = with_infer(config_from_dict(meta["config"]), opts.infer)
        result["protocol"]["inference"] = describe_inference(
            trained, size, trained.train.patch_size or size)
        _write_outputs(opts, result, rows, k, size, diameters, staged)
    f = result["figures"]
    log(f"evaluate: {f['images']} images ({opts.split}), mean Dice {f['mean_dice']:.3f}, "
        f"pooled Dice {f['pooled_dice']:.3f}, sensitivity {f['sensitivity']:.3f} at "
        f"{f['fp_per_image']:.2f} FP/image (threshold {threshold:g}) in "
        f"{time.perf_counter() - t0:.1f} s -> {output}")
    return result


def _threshold(opts: EvaluateOptions, threshold: float | None, scoring: dict[str, Any],
               log: Callable[[str], None]) -> tuple[float, str]:
    """The threshold and where it came from: fixed, or the best mean Dice on validation."""
    if threshold is not None:
        return threshold, "fixed"
    log("evaluate: scoring the validation split to choose the threshold ...")
    val_rows = score_split(opts.checkpoint, opts.data, "val", **scoring)
    try:
        threshold, _ = figures.choose_threshold(figures.Table.from_rows(val_rows),
                                                scoring["thresholds"])
    except ValueError as exc:
        raise EvaluationError(f"--threshold val: {exc}") from None
    log(f"evaluate: threshold {threshold:g} chosen on {len(val_rows)} validation images")
    return threshold, "chosen on the validation split (best mean Dice)"


def _result(opts: EvaluateOptions, rows: list[dict[str, Any]], k: int, threshold: float,
            source: str, size: int, diameters: list[tuple[float | None, float]],
            thresholds: tuple[float, ...],
            score_seconds: float) -> dict[str, Any]:
    """metrics.json's content: protocol, figures, intervals, FROC, breakdowns, throughput."""
    table = figures.Table.from_rows(rows)
    patients = [r["patient_key"] or r["image_id"] for r in rows]
    return {
        "protocol": {
            "images": "full-field mammograms (whole image cropped to the breast, no ROI "
                      "patches), metrics at the model's input resolution",
            "input_size": size, "split": opts.split, "threshold": threshold,
            "threshold_source": source, "hit_rule": figures.HIT_RULE,
            "confidence_intervals": f"percentile bootstrap over patients, "
                                    f"{opts.bootstrap} resamples, seed {opts.seed}",
            "patients": len(set(patients)), "empty_truth": "an image without a mass has "
            "no Dice/IoU; any predicted pixel on it counts in fp_image_rate",
        },
        "figures": figures.aggregate(table, k),
        "confidence_intervals": figures.bootstrap(table, k, patients, resamples=opts.bootstrap,
                                                  seed=opts.seed),
        "froc": figures.froc(table, thresholds),
        "breakdowns": _breakdowns(rows, table, k, diameters),
        "throughput": {"images": len(rows), "seconds": score_seconds,
                       "images_per_s": len(rows) / score_seconds},
    }


def _write_outputs(opts: EvaluateOptions, result: dict[str, Any], rows: list[dict[str, Any]],
                   k: int, size: int, diameters: list[tuple[float | None, float]],
                   staged: storage.StagedOutput) -> None:
    """per_image.csv, froc.png, overlays/, metrics.json and report.html into ``staged``."""
    threshold = result["protocol"]["threshold"]
    report.write_per_image_csv(rows, k, diameters, staged.path("per_image.csv"))
    report.write_froc_png(result["froc"], threshold, staged.path("froc.png"),
                          f"FROC, split {opts.split}, {len(rows)} images, {size} px input")
    result["overlays"] = report.write_overlays(opts.checkpoint, opts.data, rows, k, threshold,
                                               size, staged, infer=opts.infer)
    storage.write_bytes(staged.path("metrics.json"),
                        json.dumps(report.json_safe(result), indent=1).encode())
    report.write_report_html(result, staged.path("report.html"))
