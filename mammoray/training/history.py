"""A training run's history: ``history.csv`` (one row per epoch) and ``curves.png``."""

from __future__ import annotations

import csv
import os
from typing import Any

from mammoray.model.metrics import METRIC_NAMES

COLUMNS = ["epoch", "loss", "val_loss", *METRIC_NAMES, *(f"val_{m}" for m in METRIC_NAMES),
           "learning_rate", "train_images", "train_seconds", "seconds"]


def write_history(history: list[dict[str, Any]], output: str) -> None:
    """history.csv and curves.png (pixel accuracy, loss, IoU; training and validation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(output, "history.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (name, title) in zip(axes, (("pixel_accuracy", "pixel accuracy"),
                                        ("loss", "loss"), ("iou", "IoU (images with a mass)"))):
        ax.plot(epochs, [h[name] for h in history], marker="o", label="train")
        ax.plot(epochs, [h[f"val_{name}"] for h in history], marker="o", label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(output, "curves.png"), dpi=100)
    plt.close(fig)
