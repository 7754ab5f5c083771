"""A training run's history: ``history.csv`` (one row per epoch) and ``curves.png``."""

from __future__ import annotations

import csv
import io
from typing import Any

from mammoray.core import storage
from mammoray.model.metrics import METRIC_NAMES

COLUMNS = ["epoch", "loss", "val_loss", *METRIC_NAMES, *(f"val_{m}" for m in METRIC_NAMES),
           "learning_rate", "train_images", "val_images", "train_seconds", "seconds"]


def write_history(history: list[dict[str, Any]], output: str) -> None:
    """history.csv and curves.png (pixel accuracy, loss, IoU; training and validation) in
    ``output`` (a local folder or a URI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    storage.write_bytes(storage.join(output, "history.csv"), buf.getvalue().encode())
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
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(storage.join(output, "curves.png"), png.getvalue())
