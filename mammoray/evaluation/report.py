"""What an evaluation writes besides metrics.json: per_image.csv, froc.png, the best and worst
cases outlined (overlays/), and report.html."""

from __future__ import annotations

import csv
import html
import io
import math
import os
from typing import Any

import numpy as np

from mammoray.core import storage
from mammoray.evaluation import figures

OVERLAY_CASES = 3


def _read_rows(data: str, image_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Image and mask bytes of the original rows with these ids, read directly (a handful)."""
    import pyarrow.dataset as pads

    fs, root = storage.resolve(storage.join(storage.normalize(data), "data"))
    dataset = pads.dataset(root, filesystem=fs, format="parquet")
    table = dataset.to_table(
        columns=["image_id", "image", "mask"],
        filter=pads.field("image_id").isin(image_ids) & (pads.field("augment_index") == 0))
    return {r["image_id"]: r for r in table.to_pylist()}


def write_overlays(checkpoint: str, data: str, rows, k: int, threshold: float, size: int,
                   staged: storage.StagedOutput, *,
                   infer: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Best and worst images with a mass (by Dice), outlined: truth green, prediction red."""
    from mammoray.core.overlays import write_overlay
    from mammoray.model.checkpoint import LocalCheckpoint
    from mammoray.model.inputs import decode_rows, predict_probabilities
    from mammoray.model.runtime import configure_tensorflow
    from mammoray.model.window import segmenter_of

    mass = [i for i in range(len(rows)) if rows[i]["truth"] > 0]
    if not mass:
        return []
    dice = {i: figures.per_image_metrics(rows[i], k)["dice"] for i in mass}
    order = sorted(mass, key=lambda i: (-dice[i], rows[i]["image_id"]))
    chosen = [("best", i) for i in order[:OVERLAY_CASES]]
    chosen += [("worst", i) for i in order[::-1][:OVERLAY_CASES] if i not in order[:OVERLAY_CASES]]
    found = _read_rows(data, [rows[i]["image_id"] for _, i in chosen])
    configure_tensorflow(os.cpu_count() or 1, False)
    with LocalCheckpoint(checkpoint) as folder:
        model, _, _ = segmenter_of(folder, infer)
    cases = []
    for rank, (kind, i) in enumerate(chosen):
        row = found[rows[i]["image_id"]]
        x, y = decode_rows([row["image"]], [row["mask"]], size)
        prob = predict_probabilities(model, x)[0]
        image = x[0, ..., 0]
        truth, pred = y[0, ..., 0], (prob >= threshold).astype(np.uint8)
        if size < 512:  # upscale small inputs so the outlines are readable
            f = 512 // size + (512 % size > 0)
            image = np.kron(image, np.ones((f, f), np.float32))
            truth, pred = (np.kron(m, np.ones((f, f), np.uint8)) for m in (truth, pred))
        name = f"{kind}_{rank + 1}_{rows[i]['image_id'][:12]}.png"
        write_overlay(staged.path("overlays", name), image, pred, truth)
        cases.append({"kind": kind, "file": f"overlays/{name}", "image_id": rows[i]["image_id"],
                      "dice": dice[i]})
    return cases


def write_froc_png(curve: list[dict[str, float]], chosen: float, path: str, title: str) -> None:
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


def write_per_image_csv(rows, k: int, diameters: list[tuple[float | None, float]],
                   path: str) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image_id", "patient_key", "source", "pathology", "has_mass", "dice",
                     "iou", "pixel_accuracy", "truth_pixels", "predicted_pixels", "lesions",
                     "detected", "false_positive_lesions", "lesion_diameter_mm", "max_prob"])
    for r, (d_mm, _) in zip(rows, diameters):
        m = figures.per_image_metrics(r, k)

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


def write_report_html(result: dict[str, Any], path: str) -> None:
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


def json_safe(value: Any) -> Any:
    """NaN (a figure with no image to average) as null: metrics.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value

