"""Segmentation metrics as sums: one definition, in NumPy and in TensorFlow side by side.

Masks and predictions are (N, H, W, 1) or (N, H, W); truth is 0/1, predictions are
probabilities in [0, 1], thresholded (prediction = probability >= threshold, 0.5 by default).

Per image, from its pixel counts (intersection, truth, prediction, correct pixels, pixels):
- ``pixel_accuracy``: fraction of pixels classified right;
- ``iou`` and ``dice`` of the thresholded prediction against the truth, defined only for
  images WITH a mass: an image whose truth is empty is not in their averages (an empty
  prediction on it is a true negative, not a Dice of 1, which would inflate the mean with the
  easy cases), and any predicted pixel on it makes it a false-positive image.

Each image contributes one row of :data:`SUM_NAMES`; a batch's or an epoch's metrics are
ratios of the column sums (:class:`MetricSums`), so they are exact over all images whatever
the batching, and a sum vector can be all-reduced across training workers. Training computes
the rows in TensorFlow (:func:`image_sums_tf`, :func:`sums_tf`), evaluation in NumPy
(:func:`image_sums_np`); ``tests/model/test_metrics.py`` checks that they agree.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

THRESHOLD = 0.5
METRIC_NAMES = ("pixel_accuracy", "iou", "dice", "fp_rate")
# One row per image: 1, its pixel accuracy, whether it has a mass, its IoU and Dice (0 without
# a mass), whether it has none, and whether it has none but a predicted pixel.
SUM_NAMES = ("images", "accuracy_sum", "mass_images", "iou_sum", "dice_sum", "empty_images",
             "false_positive_images")
COUNT_NAMES = ("inter", "truth", "pred", "correct", "pixels")


# ------------------------------------------------------------------------------- NumPy

def counts_np(truth: np.ndarray, prob: np.ndarray,
              threshold: float = THRESHOLD) -> dict[str, np.ndarray]:
    """Per-image pixel counts (:data:`COUNT_NAMES`, int64 vectors) of thresholded predictions."""
    n = truth.shape[0]
    t = truth.reshape(n, -1) > 0.5
    p = prob.reshape(n, -1) >= threshold
    inter = np.logical_and(t, p).sum(axis=1)
    return {"inter": inter, "truth": t.sum(axis=1), "pred": p.sum(axis=1),
            "correct": (t == p).sum(axis=1), "pixels": np.full(n, t.shape[1])}


def overlap_np(inter, truth, pred) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (Dice, IoU) from counts, float64; 0 where the truth is empty."""
    inter, truth, pred = (np.asarray(v, np.float64) for v in (inter, truth, pred))
    has = truth > 0
    dice = np.where(has, 2 * inter / np.where(has, truth + pred, 1.0), 0.0)
    iou = np.where(has, inter / np.where(has, truth + pred - inter, 1.0), 0.0)
    return dice, iou


def image_sums_np(counts: dict[str, np.ndarray]) -> np.ndarray:
    """(n, len(SUM_NAMES)) float64: each image's row of sums."""
    truth = np.asarray(counts["truth"], np.float64)
    pred = np.asarray(counts["pred"], np.float64)
    dice, iou = overlap_np(counts["inter"], truth, pred)
    has = truth > 0
    accuracy = np.asarray(counts["correct"], np.float64) / np.asarray(counts["pixels"],
                                                                        np.float64)
    return np.stack([np.ones_like(truth), accuracy, has.astype(np.float64), iou, dice,
                     (~has).astype(np.float64), ((~has) & (pred > 0)).astype(np.float64)],
                    axis=1)


def sums_np(truth: np.ndarray, prob: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """The sum vector (:data:`SUM_NAMES`) of a batch."""
    return image_sums_np(counts_np(truth, prob, threshold)).sum(axis=0)


# -------------------------------------------------------------------------- TensorFlow

def counts_tf(truth, prob, threshold: float = THRESHOLD) -> dict:
    """TensorFlow twin of :func:`counts_np` (same keys, float32 vectors)."""
    import tensorflow as tf

    n = tf.shape(truth)[0]
    t = tf.reshape(tf.cast(truth > 0.5, tf.float32), (n, -1))
    p = tf.reshape(tf.cast(prob >= threshold, tf.float32), (n, -1))
    inter = tf.reduce_sum(t * p, axis=1)
    pixels = tf.cast(tf.shape(t)[1], tf.float32)
    correct = pixels - tf.reduce_sum(tf.abs(t - p), axis=1)
    return {"inter": inter, "truth": tf.reduce_sum(t, axis=1),
            "pred": tf.reduce_sum(p, axis=1), "correct": correct,
            "pixels": tf.fill([n], pixels)}


def image_sums_tf(counts: dict):
    """TensorFlow twin of :func:`image_sums_np`: (n, len(SUM_NAMES)) float32."""
    import tensorflow as tf

    inter, truth, pred = counts["inter"], counts["truth"], counts["pred"]
    has = truth > 0
    zero = tf.zeros_like(inter)
    dice = tf.where(has, 2 * inter / tf.maximum(truth + pred, 1.0), zero)
    iou = tf.where(has, inter / tf.maximum(truth + pred - inter, 1.0), zero)
    empty = tf.logical_not(has)
    return tf.stack([tf.ones_like(inter), counts["correct"] / counts["pixels"],
                     tf.cast(has, tf.float32), iou, dice, tf.cast(empty, tf.float32),
                     tf.cast(tf.logical_and(empty, pred > 0), tf.float32)], axis=1)


def sums_tf(truth, prob, threshold: float = THRESHOLD):
    """The sum vector of a batch in TensorFlow: what a training step returns and the workers
    all-reduce."""
    import tensorflow as tf

    return tf.reduce_sum(image_sums_tf(counts_tf(truth, prob, threshold)), axis=0)


# ------------------------------------------------------------------------- the metrics

@dataclass
class MetricSums:
    """Running sums (:data:`SUM_NAMES`) from which the metrics are exact over any number of
    batches, workers or images."""

    images: float = 0.0
    accuracy_sum: float = 0.0
    mass_images: float = 0.0
    iou_sum: float = 0.0
    dice_sum: float = 0.0
    empty_images: float = 0.0
    false_positive_images: float = 0.0

    @classmethod
    def from_vector(cls, vector) -> "MetricSums":
        values = [float(v) for v in np.asarray(vector, np.float64).reshape(-1)]
        if len(values) != len(SUM_NAMES):
            raise ValueError(f"expected {len(SUM_NAMES)} sums, got {len(values)}")
        return cls(*values)

    def to_vector(self) -> np.ndarray:
        return np.array([getattr(self, f.name) for f in fields(self)], np.float64)

    def __add__(self, other: "MetricSums") -> "MetricSums":
        return MetricSums.from_vector(self.to_vector() + other.to_vector())

    def result(self) -> dict[str, float]:
        """Metric values; NaN where no image qualifies (e.g. dice without any mass image)."""
        def ratio(a: float, b: float) -> float:
            return a / b if b else float("nan")

        return {"pixel_accuracy": ratio(self.accuracy_sum, self.images),
                "iou": ratio(self.iou_sum, self.mass_images),
                "dice": ratio(self.dice_sum, self.mass_images),
                "fp_rate": ratio(self.false_positive_images, self.empty_images)}


def metrics_np(truth: np.ndarray, prob: np.ndarray,
               threshold: float = THRESHOLD) -> dict[str, float]:
    """The metrics of one batch."""
    return MetricSums.from_vector(sums_np(truth, prob, threshold)).result()
