"""Segmentation losses (TensorFlow), one definition each: ``LOSSES`` by config name.

``iou`` = 1 - soft IoU (the seed study's), ``dice`` = 1 - soft Dice, ``bce`` = binary
cross-entropy (mean over pixels), ``bce_dice`` = BCE + soft Dice loss. Masks and predictions
are (N, H, W, 1); truth is 0/1, predictions are the model's sigmoid probabilities.

The soft overlaps are pooled over all pixels of the batch, not averaged per image: per image,
every image without a mass rewards an all-empty prediction so strongly that a U-Net settled
there in one epoch and never left (docs/decisions.md). They use a smoothing term of 1 pixel, so
an empty truth with an empty prediction has loss 0 and a gradient that still pushes stray
probabilities down. Give the losses the model's sigmoid output: BCE then works from its logits
(see :func:`bce_loss`).
"""

from __future__ import annotations

SMOOTH = 1.0


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
    keeps. A hand-written BCE on clipped probabilities has zero gradient once the model is
    confidently wrong: with masses on under 1% of the pixels, a U-Net drove every output below
    the clip in one epoch and never recovered (docs/decisions.md)."""
    import keras
    import tensorflow as tf

    return tf.reduce_mean(keras.losses.binary_crossentropy(tf.cast(truth, tf.float32), prob))


def bce_dice_loss(truth, prob):
    return bce_loss(truth, prob) + soft_dice_loss(truth, prob)


LOSSES = {"iou": soft_iou_loss, "dice": soft_dice_loss, "bce": bce_loss,
          "bce_dice": bce_dice_loss}
