"""Segmentation losses (TensorFlow) and metrics (numpy and TensorFlow), one definition each.

Masks and predictions are (N, H, W, 1) or (N, H, W); truth is 0/1, predictions are
probabilities in [0, 1] (thresholded at 0.5 for the metrics).

Metrics, per image, then aggregated over images:
- ``pixel_accuracy``: fraction of pixels classified right, averaged over all images;
- ``iou`` and ``dice``: of the thresholded prediction against the truth, averaged over the
  images WITH a mass only. An image whose truth is empty is not in that average: an empty
  prediction on it is a true negative, not a Dice of 1 (which would inflate the mean with the
  easy cases), and any predicted pixel on it is a false positive;
- ``fp_rate``: fraction of the images WITHOUT a mass that get any predicted mass pixel.
Metric states are sums and counts, so epoch values are exact over all images whatever the
batching (``MetricSums``).

Losses (``LOSSES``): ``iou`` = 1 - soft IoU (the seed study's), ``dice`` = 1 - soft Dice,
``bce`` = binary cross-entropy (mean over pixels), ``bce_dice`` = BCE + soft Dice loss. The soft
overlaps are pooled over all pixels of the batch, not averaged per image: per image, every
image without a mass (a third of the synthetic training set) rewards an all-empty prediction
so strongly that a U-Net settled there in one epoch and never left (measured: Dice 0 with
per-image losses, rising with pooled ones).
The soft overlaps use a smoothing term of 1 pixel, so an empty truth with an empty prediction
has loss 0 and a gradient that still pushes stray probabilities down. Give the losses the
model's sigmoid output: BCE then works from its logits (see :func:`bce_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

THRESHOLD = 0.5
SMOOTH = 1.0
METRIC_NAMES = ("pixel_accuracy", "iou", "dice", "fp_rate")


# ------------------------------------------------------------------------------- numpy

def per_image_np(truth: np.ndarray, prob: np.ndarray,
                 threshold: float = THRESHOLD) -> dict[str, np.ndarray]:
    """Per-image intersections, sizes and correct pixels of thresholded predictions."""
    n = truth.shape[0]
    t = truth.reshape(n, -1).astype(bool)
    p = prob.reshape(n, -1) >= threshold
    inter = np.logical_and(t, p).sum(axis=1)
    t_sum, p_sum = t.sum(axis=1), p.sum(axis=1)
    return {"inter": inter, "truth": t_sum, "pred": p_sum,
            "correct": (t == p).sum(axis=1), "pixels": np.full(n, t.shape[1])}


@dataclass
class MetricSums:
    """Running sums from which the metrics are exact over any number of batches."""

    images: int = 0
    accuracy_sum: float = 0.0
    mass_images: int = 0
    iou_sum: float = 0.0
    dice_sum: float = 0.0
    empty_images: int = 0
    false_positive_images: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def add(self, parts: dict[str, np.ndarray]) -> None:
        inter = np.asarray(parts["inter"], np.float64)
        truth = np.asarray(parts["truth"], np.float64)
        pred = np.asarray(parts["pred"], np.float64)
        has_mass = truth > 0
        self.images += int(inter.size)
        self.accuracy_sum += float(np.sum(np.asarray(parts["correct"], np.float64)
                                          / np.asarray(parts["pixels"], np.float64)))
        union = truth + pred - inter
        self.mass_images += int(has_mass.sum())
        self.iou_sum += float(np.sum(inter[has_mass] / union[has_mass]))
        self.dice_sum += float(np.sum(2 * inter[has_mass] / (truth + pred)[has_mass]))
        self.empty_images += int((~has_mass).sum())
        self.false_positive_images += int(((~has_mass) & (pred > 0)).sum())

    def merge(self, other: "MetricSums") -> None:
        for name in ("images", "accuracy_sum", "mass_images", "iou_sum", "dice_sum",
                     "empty_images", "false_positive_images"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def result(self) -> dict[str, float]:
        """Metric values; NaN where no image qualifies (e.g. dice without any mass image)."""
        def ratio(a: float, b: int) -> float:
            return a / b if b else float("nan")

        return {"pixel_accuracy": ratio(self.accuracy_sum, self.images),
                "iou": ratio(self.iou_sum, self.mass_images),
                "dice": ratio(self.dice_sum, self.mass_images),
                "fp_rate": ratio(self.false_positive_images, self.empty_images)}


def metrics_np(truth: np.ndarray, prob: np.ndarray,
               threshold: float = THRESHOLD) -> dict[str, float]:
    sums = MetricSums()
    sums.add(per_image_np(truth, prob, threshold))
    return sums.result()


# -------------------------------------------------------------------------- TensorFlow

def per_image_tf(truth, prob, threshold: float = THRESHOLD):
    """TensorFlow twin of :func:`per_image_np` (same keys, float32 vectors)."""
    import tensorflow as tf

    n = tf.shape(truth)[0]
    t = tf.reshape(tf.cast(truth > 0.5, tf.float32), (n, -1))
    p = tf.reshape(tf.cast(prob >= threshold, tf.float32), (n, -1))
    inter = tf.reduce_sum(t * p, axis=1)
    t_sum, p_sum = tf.reduce_sum(t, axis=1), tf.reduce_sum(p, axis=1)
    pixels = tf.cast(tf.shape(t)[1], tf.float32)
    correct = pixels - tf.reduce_sum(tf.abs(t - p), axis=1)
    return {"inter": inter, "truth": t_sum, "pred": p_sum, "correct": correct,
            "pixels": tf.fill([n], pixels)}


def _soft_sums(truth, prob):
    """Soft intersection and sizes pooled over every pixel of the batch."""
    import tensorflow as tf

    t = tf.cast(truth, tf.float32)
    p = tf.cast(prob, tf.float32)
    return tf.reduce_sum(t * p), tf.reduce_sum(t), tf.reduce_sum(p)


def soft_iou_loss(truth, prob):
    """1 - soft IoU pooled over the batch (the seed study's loss)."""
    inter, t_sum, p_sum = _soft_sums(truth, prob)
    return 1.0 - (inter + SMOOTH) / (t_sum + p_sum - inter + SMOOTH)


def soft_dice_loss(truth, prob):
    """1 - soft Dice pooled over the batch."""
    inter, t_sum, p_sum = _soft_sums(truth, prob)
    return 1.0 - (2.0 * inter + SMOOTH) / (t_sum + p_sum + SMOOTH)


def bce_loss(truth, prob):
    """Binary cross-entropy through Keras, which computes it from the logits the sigmoid head
    keeps (``_keras_logits``). A hand-written BCE on clipped probabilities has zero gradient
    once the model is confidently wrong: with masses on 0.7% of the pixels, a U-Net drove every
    output below the clip in one epoch and never recovered (measured)."""
    import keras
    import tensorflow as tf

    return tf.reduce_mean(keras.losses.binary_crossentropy(tf.cast(truth, tf.float32), prob))


def bce_dice_loss(truth, prob):
    return bce_loss(truth, prob) + soft_dice_loss(truth, prob)


LOSSES = {"iou": soft_iou_loss, "dice": soft_dice_loss, "bce": bce_loss,
          "bce_dice": bce_dice_loss}
