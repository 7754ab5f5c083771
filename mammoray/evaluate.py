"""``jobs.evaluate``: score a checkpoint on one split of a preprocessed dataset.

Batch inference runs on Ray Data (:class:`mammoray.inference.RowScorer`, one model per actor,
a GPU per actor when the cluster has GPUs); every image is scored at all thresholds of
:data:`mammoray.evaluation.THRESHOLDS` at once, so the FROC curve and a threshold chosen on the
validation split cost one pass each. The driver then computes the figures
(:mod:`mammoray.evaluation`), draws the best and worst cases and writes the report.

Outputs (written aside and renamed when complete): ``metrics.json``, ``per_image.csv``,
``froc.png``, ``overlays/*.png``, ``report.html``.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mammoray import evaluation, storage
from mammoray.config import ConfigError, RayConfig
from mammoray.inference import META_COLUMNS

SPLITS = ("train", "val", "test")
OVERLAY_CASES = 3


class EvaluationError(RuntimeError):
    """The data cannot be evaluated (e.g. an empty split)."""


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


def check_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint's config.json, or a clear error naming --checkpoint."""
    from mammoray.train import CONFIG_FILE, MODEL_FILE

    missing = [f for f in (MODEL_FILE, CONFIG_FILE) if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise ConfigError(f"--checkpoint {path}: not a checkpoint folder (missing "
                          f"{', '.join(missing)}); give <train output>/best")
    with open(os.path.join(path, CONFIG_FILE)) as fh:
        return json.load(fh)


def _check(opts: EvaluateOptions) -> tuple[dict[str, Any], dict[str, Any], float | None, str]:
    from mammoray.train import TrainError, read_dataset_json

    if opts.split not in SPLITS:
        raise ConfigError(f"--split {opts.split}: allowed {', '.join(SPLITS)}")
    threshold = parse_threshold(opts.threshold)
    if threshold is None and opts.split == "val":
        raise ConfigError("--threshold val: the threshold is chosen on the validation split, "
                          "so evaluate another split (e.g. --split test) or give a number")
    meta = check_checkpoint(opts.checkpoint)
    try:
        info = read_dataset_json(opts.data)
    except TrainError as exc:
        raise ConfigError(str(exc)) from None
    size = int(info["image"]["height"])
    if size != int(meta["size"]):
        raise ConfigError(f"--data {opts.data}: images are {size} x {size} but the checkpoint "
                          f"{opts.checkpoint} takes {meta['size']} x {meta['size']}")
    output = opts.output or os.path.join(os.path.dirname(os.path.abspath(opts.checkpoint)),
                                         f"evaluation-{opts.split}")
    return meta, info, threshold, output


def _split_rows(data: str, split: str):
    """Original (non-augmented) rows of one split, materialized before the actors start (so
    actors holding every CPU never starve the read tasks)."""
    from ray.data.expressions import col

    from mammoray.train import read_rows

    ds = read_rows(data, ["image", "mask", "augment_index", *META_COLUMNS])
    ds = ds.filter(expr=(col("split") == split) & (col("augment_index") == 0))
    return ds.drop_columns(["augment_index"]).materialize()


def score_split(checkpoint: str, data: str, split: str, *, thresholds: tuple[float, ...],
                batch_size: int, actors: int | None,
                cpus_per_actor: float) -> list[dict[str, Any]]:
    """Per-image stats of every row of ``split`` (Ray Data, one model per actor)."""
    import ray

    from mammoray.inference import RowScorer, share_checkpoint

    ds = _split_rows(data, split)
    rows = ds.count()
    if rows == 0:
        raise EvaluationError(f"--data {data}: split '{split}' has no rows")
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = float(ray.cluster_resources().get("CPU", 1))
    use_gpu = gpus > 0
    n = actors or (gpus if use_gpu else max(1, int(cpus // cpus_per_actor)))
    # Enough blocks for every actor to get work (a small split is often one block), made
    # before the actors start: actors holding every CPU would starve the repartition tasks.
    ds = ds.repartition(max(1, min(-(-rows // batch_size), 8 * n))).materialize()
    scored = ds.map_batches(
        RowScorer, fn_constructor_kwargs={"checkpoint": share_checkpoint(checkpoint),
                                          "thresholds": thresholds, "cpus": cpus_per_actor,
                                          "use_gpu": use_gpu},
        batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=n),
        num_cpus=cpus_per_actor, num_gpus=1 if use_gpu else None)
    return sorted(scored.take_all(), key=lambda r: r["image_id"])


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


def _breakdowns(rows: list[dict[str, Any]], table: evaluation.Table, k: int,
                diameters: list[tuple[float | None, float]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, list[int]]] = {"source": {}, "pathology": {}, "lesion_size": {}}
    for i, (r, (d_mm, d_px)) in enumerate(zip(rows, diameters)):
        groups["source"].setdefault(r["source"] or "unknown", []).append(i)
        if r["truth"] > 0:
            groups["pathology"].setdefault((r["pathology"] or "unknown").lower(), []).append(i)
            groups["lesion_size"].setdefault(evaluation.size_bin(d_mm, d_px), []).append(i)
    out = {}
    for name, members in groups.items():
        if not members or (name == "pathology" and set(members) == {"unknown"}):
            continue
        out[name] = {value: evaluation.aggregate(table.subset(np.asarray(idx)), k)
                     for value, idx in sorted(members.items())}
    return out


def _read_rows(data: str, image_ids: list[str]) -> dict[str, dict[str, Any]]:
    import pyarrow.dataset as pads

    fs, root = storage.resolve(storage.join(storage.normalize(data), "data"))
    dataset = pads.dataset(root, filesystem=fs, format="parquet")
    table = dataset.to_table(
        columns=["image_id", "image", "mask"],
        filter=pads.field("image_id").isin(image_ids) & (pads.field("augment_index") == 0))
    return {r["image_id"]: r for r in table.to_pylist()}


def _overlays(opts: EvaluateOptions, rows, k: int, threshold: float, size: int,
              staged: storage.StagedOutput) -> list[dict[str, Any]]:
    """Best and worst images with a mass (by Dice), outlined: truth green, prediction red."""
    from mammoray.inference import (configure_tensorflow, draw_overlay, predict_probabilities,
                                    write_png)
    from mammoray.train import decode_batch, load_checkpoint_model

    mass = [i for i in range(len(rows)) if rows[i]["truth"] > 0]
    if not mass:
        return []
    dice = {i: evaluation.per_image_metrics(rows[i], k)["dice"] for i in mass}
    order = sorted(mass, key=lambda i: (-dice[i], rows[i]["image_id"]))
    chosen = [("best", i) for i in order[:OVERLAY_CASES]]
    chosen += [("worst", i) for i in order[::-1][:OVERLAY_CASES] if i not in order[:OVERLAY_CASES]]
    found = _read_rows(opts.data, [rows[i]["image_id"] for _, i in chosen])
    configure_tensorflow(os.cpu_count() or 1, False)
    model, _, _ = load_checkpoint_model(opts.checkpoint)
    cases = []
    for rank, (kind, i) in enumerate(chosen):
        row = found[rows[i]["image_id"]]
        x, y = decode_batch({"image": [row["image"]], "mask": [row["mask"]]}, size)
        prob = predict_probabilities(model, x)[0]
        image = x[0, ..., 0]
        truth, pred = y[0, ..., 0], (prob >= threshold).astype(np.uint8)
        if size < 512:  # upscale small inputs so the outlines are readable
            f = 512 // size + (512 % size > 0)
            image = np.kron(image, np.ones((f, f), np.float32))
            truth, pred = (np.kron(m, np.ones((f, f), np.uint8)) for m in (truth, pred))
        name = f"{kind}_{rank + 1}_{rows[i]['image_id'][:12]}.png"
        write_png(staged.path("overlays", name), draw_overlay(image, pred, truth))
        cases.append({"kind": kind, "file": f"overlays/{name}", "image_id": rows[i]["image_id"],
                      "dice": dice[i]})
    return cases


def _froc_png(curve: list[dict[str, float]], chosen: float, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    xs = [c["fp_per_image"] for c in curve]
    ys = [c["sensitivity"] for c in curve]
    ax.plot(xs, ys, marker="o", markersize=3)
    for c in curve:
        if abs(c["threshold"] - chosen) < 1e-9:
            ax.plot([c["fp_per_image"]], [c["sensitivity"]], "r*", markersize=12,
                    label=f"threshold {chosen:g}")
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("lesion sensitivity")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    storage.write_bytes(path, buf.getvalue())


def _per_image_csv(rows, k: int, diameters: list[tuple[float | None, float]],
                   path: str) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image_id", "patient_key", "source", "pathology", "has_mass", "dice",
                     "iou", "pixel_accuracy", "truth_pixels", "predicted_pixels", "lesions",
                     "detected", "false_positive_lesions", "lesion_diameter_mm", "max_prob"])
    for r, (d_mm, _) in zip(rows, diameters):
        m = evaluation.per_image_metrics(r, k)

        def fmt(v):
            return "" if v is None or (isinstance(v, float) and math.isnan(v)) else (
                f"{v:.6g}" if isinstance(v, float) else v)

        writer.writerow([r["image_id"], r["patient_key"], r["source"], r["pathology"] or "",
                         int(r["truth"] > 0), fmt(m["dice"]), fmt(m["iou"]),
                         fmt(m["pixel_accuracy"]), r["truth"], r["pred"][k], r["lesions"],
                         r["hits"][k], r["fp_lesions"][k],
                         fmt(d_mm if r["truth"] > 0 else None), fmt(float(r["max_prob"]))])
    storage.write_bytes(path, buf.getvalue().encode())


FIGURE_LABELS = {
    "mean_dice": "Dice, mean over images with a mass",
    "pooled_dice": "Dice, pooled over all pixels",
    "mean_iou": "IoU, mean over images with a mass",
    "pixel_accuracy": "pixel accuracy",
    "fp_image_rate": "images without a mass with any predicted pixel",
    "sensitivity": "lesion sensitivity",
    "fp_per_image": "false-positive lesions per image",
}


def _report_html(result: dict[str, Any], path: str) -> None:
    p = result["protocol"]
    esc = html.escape

    def num(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines = ["<!doctype html><html><head><meta charset='utf-8'><title>mammoray evaluation"
             "</title><style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:4px 8px;text-align:right}th{background:#f4f4f4}td:first-child,"
             "th:first-child{text-align:left}img{max-width:100%}figure{display:inline-block;"
             "margin:6px;width:31%}figcaption{font-size:small}</style></head><body>",
             "<h1>Breast-mass segmentation: evaluation</h1>",
             f"<p><b>Protocol.</b> {esc(p['images'])}; model input {p['input_size']} x "
             f"{p['input_size']}; split <b>{esc(p['split'])}</b> ({result['figures']['images']}"
             f" images, {result['figures']['mass_images']} with a mass, "
             f"{result['figures']['lesions']} lesions, {p['patients']} patients); threshold "
             f"{p['threshold']:g} ({esc(p['threshold_source'])}); lesion hit rule: "
             f"{esc(p['hit_rule'])}; 95% intervals: {esc(p['confidence_intervals'])}.</p>",
             "<table><tr><th>figure</th><th>value</th><th>95% CI</th></tr>"]
    for key, label in FIGURE_LABELS.items():
        lo, hi = result["confidence_intervals"][key]
        lines.append(f"<tr><td>{esc(label)}</td><td>{num(result['figures'][key])}</td>"
                     f"<td>{num(lo)} - {num(hi)}</td></tr>")
    lines.append("</table><h2>FROC</h2><img src='froc.png' alt='FROC curve'>")
    for name, groups in result["breakdowns"].items():
        lines.append(f"<h2>By {esc(name.replace('_', ' '))}</h2><table><tr><th>{esc(name)}"
                     "</th><th>images</th><th>mean Dice</th><th>pooled Dice</th>"
                     "<th>sensitivity</th><th>FP / image</th></tr>")
        for value, g in groups.items():
            lines.append(f"<tr><td>{esc(str(value))}</td><td>{g['images']}</td>"
                         f"<td>{num(g['mean_dice'])}</td><td>{num(g['pooled_dice'])}</td>"
                         f"<td>{num(g['sensitivity'])}</td><td>{num(g['fp_per_image'])}</td>"
                         "</tr>")
        lines.append("</table>")
    if result["overlays"]:
        lines.append("<h2>Best and worst cases</h2><p>Truth outlined in green, prediction in "
                     "red.</p>")
        for case in result["overlays"]:
            lines.append(f"<figure><img src='{esc(case['file'])}'><figcaption>{case['kind']}: "
                         f"Dice {case['dice']:.3f} ({esc(case['image_id'][:12])})"
                         "</figcaption></figure>")
    lines.append("<p>Per image: <a href='per_image.csv'>per_image.csv</a>; all figures: "
                 "<a href='metrics.json'>metrics.json</a>.</p></body></html>")
    storage.write_bytes(path, "\n".join(lines).encode())


def _json_safe(value: Any) -> Any:
    """NaN (a figure with no image to average) as null: metrics.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def run_evaluation(opts: EvaluateOptions, ray_cfg: RayConfig,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate; returns the metrics.json content."""
    import ray

    from mammoray.ray_env import init_ray

    meta, info, threshold, output = _check(opts)
    size = int(meta["size"])
    pad = bool(info.get("parameters", {}).get("pad_to_square", False))
    staged = storage.StagedOutput.create(output, overwrite=opts.overwrite)
    started = init_ray(ray_cfg)
    t0 = time.perf_counter()
    try:
        thresholds = evaluation.THRESHOLDS
        if threshold is not None and threshold not in thresholds:
            thresholds = tuple(sorted((*thresholds, threshold)))
        scoring = {"thresholds": thresholds, "batch_size": opts.batch_size,
                   "actors": opts.actors, "cpus_per_actor": opts.cpus_per_actor}
        source = "fixed"
        if threshold is None:
            log("evaluate: scoring the validation split to choose the threshold ...")
            val_rows = score_split(opts.checkpoint, opts.data, "val", **scoring)
            try:
                threshold, _ = evaluation.choose_threshold(evaluation.Table.from_rows(val_rows),
                                                           thresholds)
            except ValueError as exc:
                raise EvaluationError(f"--threshold val: {exc}") from None
            source = "chosen on the validation split (best mean Dice)"
            log(f"evaluate: threshold {threshold:g} chosen on {len(val_rows)} validation images")
        k = thresholds.index(threshold)
        log(f"evaluate: scoring split '{opts.split}' ...")
        t_score = time.perf_counter()
        rows = score_split(opts.checkpoint, opts.data, opts.split, **scoring)
        score_seconds = time.perf_counter() - t_score
        table = evaluation.Table.from_rows(rows)
        patients = [r["patient_key"] or r["image_id"] for r in rows]
        figures = evaluation.aggregate(table, k)
        diameters = _diameters(rows, size, pad)
        result = {
            "protocol": {
                "images": "full-field mammograms (whole image cropped to the breast, no ROI "
                          "patches), metrics at the model's input resolution",
                "input_size": size, "split": opts.split, "threshold": threshold,
                "threshold_source": source, "hit_rule": evaluation.HIT_RULE,
                "confidence_intervals": f"percentile bootstrap over patients, "
                                        f"{opts.bootstrap} resamples, seed {opts.seed}",
                "patients": len(set(patients)), "empty_truth": "an image without a mass has "
                "no Dice/IoU; any predicted pixel on it counts in fp_image_rate",
            },
            "figures": figures,
            "confidence_intervals": evaluation.bootstrap(table, k, patients,
                                                         resamples=opts.bootstrap,
                                                         seed=opts.seed),
            "froc": evaluation.froc(table, thresholds),
            "breakdowns": _breakdowns(rows, table, k, diameters),
            "throughput": {"images": len(rows), "seconds": score_seconds,
                           "images_per_s": len(rows) / score_seconds},
        }
        _per_image_csv(rows, k, diameters, staged.path("per_image.csv"))
        _froc_png(result["froc"], threshold, staged.path("froc.png"),
                  f"FROC, split {opts.split}, {len(rows)} images, {size} px input")
        result["overlays"] = _overlays(opts, rows, k, threshold, size, staged)
        storage.write_bytes(staged.path("metrics.json"),
                            json.dumps(_json_safe(result), indent=1).encode())
        _report_html(result, staged.path("report.html"))
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    finally:
        if started:
            ray.shutdown()
    log(f"evaluate: {figures['images']} images ({opts.split}), mean Dice "
        f"{figures['mean_dice']:.3f}, pooled Dice {figures['pooled_dice']:.3f}, sensitivity "
        f"{figures['sensitivity']:.3f} at {figures['fp_per_image']:.2f} FP/image "
        f"(threshold {threshold:g}) in {time.perf_counter() - t0:.1f} s -> {output}")
    return result
