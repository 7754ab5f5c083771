"""A search's results: one row per trial (trials.csv), trials at once, the best trial's
training config (best_config.yaml) and the search picture (search.png)."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import yaml

from mammoray.core import storage
from mammoray.core.config import ExperimentConfig
from mammoray.tuning.space import trial_config

TRIAL_COLUMNS = ["trial_id", "status", "levels", "dropout", "learning_rate", "base_filters",
                 "batch_size", "loss", "patch_size", "foreground_fraction", "best_val_score", "best_val_iou", "best_val_dice",
                 "best_epoch", "epochs_run", "minutes", "baseline", "error"]


def trial_rows(results: list[dict[str, Any]], base: dict[str, Any], max_epochs: int,
               baseline: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per trial from ``results`` (dicts with trial_id, params, history: the epoch
    metrics Tune recorded, error): parameters, best validation IoU/Dice, epochs run, status
    (completed / stopped early by ASHA / error)."""
    rows = []
    for r in results:
        cfg = trial_config(base, r["params"], for_search=False)
        history = r["history"]
        best = max(history, key=epoch_rank) if history else None
        epochs_run = max((int(h["epoch"]) for h in history), default=0)
        status = ("error" if r["error"] else "completed" if epochs_run >= max_epochs
                  else "stopped")
        start, end = trial_window(history)
        rows.append({
            "trial_id": r["trial_id"], "status": status, "levels": cfg.model.levels,
            "dropout": json.dumps(cfg.model.dropout),
            "learning_rate": cfg.train.learning_rate,
            "base_filters": cfg.model.base_filters, "batch_size": cfg.train.batch_size,
            "loss": cfg.train.loss, "patch_size": cfg.train.patch_size,
            "foreground_fraction": cfg.train.foreground_fraction,
            "best_val_score": best["val_score"] if best else math.nan,
            "best_val_iou": best["val_iou"] if best else math.nan,
            "best_val_dice": best["val_dice"] if best else math.nan,
            "best_epoch": int(best["epoch"]) if best else 0,
            "epochs_run": epochs_run,
            "minutes": round((end - start) / 60.0, 2) if history else 0.0,
            "baseline": baseline is not None and _same_params(r["params"], baseline),
            "error": (r["error"] or "").strip().splitlines()[-1][:300] if r["error"] else "",
        })
    return rows


def epoch_rank(h: dict[str, Any]) -> tuple[float, int]:
    """Epochs by validation score, ties to the later epoch."""
    return (h["val_score"], int(h["epoch"]))


def _same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return set(a) == set(b) and all(
        math.isclose(a[k], b[k], rel_tol=1e-9) if isinstance(b[k], float) else a[k] == b[k]
        for k in b)


def trial_window(history: list[dict[str, Any]]) -> tuple[float, float]:
    """(start, end) wall-clock seconds of a trial's training run: from the start of its worker
    (TensorFlow start-up and model building included; else its first epoch's start) to its last
    epoch's end."""
    if not history:
        return (math.nan, math.nan)
    first, last = history[0], history[-1]
    start = first.get("worker_started") or float(first["time"]) - float(first["seconds"])
    return float(start), float(last["time"])


def max_overlap(windows: list[tuple[float, float]]) -> int:
    """The most windows open at one moment (trials that ran at once)."""
    events = sorted([(s, 1) for s, e in windows if not math.isnan(s)]
                    + [(e, -1) for s, e in windows if not math.isnan(s)],
                    key=lambda ev: (ev[0], ev[1]))
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TRIAL_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes(path, buf.getvalue().encode())


def write_best_config(cfg: ExperimentConfig, row: dict[str, Any], path: str) -> None:
    """The best trial's training config, as ``jobs.train --config`` takes it: output and run
    name cleared (give --output), the search section left out."""
    tree = cfg.to_dict()
    tree.pop("tune")
    for key in ("output", "run_name", "storage_path"):
        tree["train"][key] = None
    header = (f"# Best trial {row['trial_id']} of the search in {storage.dirname(path)}:\n"
              f"# validation IoU {row['best_val_iou']:.4f}, Dice {row['best_val_dice']:.4f} at "
              f"epoch {row['best_epoch']} of {row['epochs_run']}.\n"
              f"#   python -m jobs.train --config {storage.basename(path)} --output DIR\n")
    text = header + yaml.safe_dump(tree, sort_keys=False, default_flow_style=None)
    storage.write_bytes(path, text.encode())


def plot_search(rows: list[dict[str, Any]], histories: dict[str, list[dict[str, Any]]],
                path: str, opened: list[str]) -> None:
    """search.png: validation IoU by trial over the search's time, and each trial's best
    validation IoU against each searched parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["levels", "learning_rate", "mean dropout", *opened]
    cols = 3
    nrows = 1 + math.ceil(len(panels) / cols)
    fig = plt.figure(figsize=(5 * cols, 3.8 * nrows))
    ax = fig.add_subplot(nrows, 1, 1)
    starts = [trial_window(h)[0] for h in histories.values() if h]
    t0 = min(starts) if starts else 0.0
    best_id = max((r for r in rows if not math.isnan(r["best_val_score"])),
                  key=lambda r: r["best_val_score"], default={"trial_id": None})["trial_id"]
    for row in rows:
        h = histories.get(row["trial_id"]) or []
        if not h:
            continue
        x = [(float(e["time"]) - t0) / 60.0 for e in h]
        y = [e["val_iou"] for e in h]
        line, = ax.plot(x, y, marker=".", lw=2.5 if row["trial_id"] == best_id else 1.2,
                        label=f"{row['trial_id']} ({row['status']})")
        if row["status"] == "stopped":
            ax.plot(x[-1], y[-1], "x", color=line.get_color(), ms=10, mew=2)
    ax.set_xlabel("minutes since the search started")
    ax.set_ylabel("validation IoU")
    ax.set_title("Validation IoU by trial (x: stopped early by ASHA; thick: best trial)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc="best")
    for i, name in enumerate(panels):
        a = fig.add_subplot(nrows, cols, cols + i + 1)
        if name == "mean dropout":
            xs = [sum(json.loads(r["dropout"])) / r["levels"] for r in rows]
        else:
            xs = [r[name] for r in rows]
        ys = [r["best_val_iou"] for r in rows]
        colors = ["tab:green" if r["status"] == "completed" else
                  "tab:orange" if r["status"] == "stopped" else "tab:red" for r in rows]
        a.scatter(xs, ys, c=colors)
        if name == "learning_rate":
            a.set_xscale("log")
        a.set_xlabel(name)
        a.set_ylabel("best validation IoU")
        a.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    storage.write_bytes(path, buf.getvalue())

