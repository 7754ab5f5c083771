"""Segmentation losses (TensorFlow), one definition each: ``LOSSES`` by config name.

``iou`` = 1 - soft IoU (the seed study's), ``dice`` = 1 - soft Dice, ``bce`` = binary
cross-entropy (mean over pixels), ``bce_dice`` = BCE + soft Dice loss, ``bce_mass_dice`` =
BCE + the mean soft Dice loss of the batch's images with a mass, ``bce_mass_tversky`` = the
same with the Tversky index in place of Dice (a missed mass pixel weighs 0.7, a false one 0.3).
Masks and predictions are (N, H, W, 1); truth is 0/1, predictions are the model's sigmoid
probabilities.

The soft overlaps of ``iou``, ``dice`` and ``bce_dice`` are pooled over all pixels of the
batch, not averaged per image: per image, every image without a mass rewards an all-empty
prediction so strongly that a U-Net settled there in one epoch and never left
(docs/decisions.md). They use a smoothing term of 1 pixel, so an empty truth with an empty
prediction has loss 0 and a gradient that still pushes stray probabilities down. Pooled, a
mass weighs in the Dice term by its area: a 50-pixel mass beside a 2,000-pixel one gets a
fortieth of the gradient. ``bce_mass_dice`` weighs every image with a mass the same, as the
Dice metric does (docs/training.md), and leaves the images without one out of the Dice term:
BCE alone keeps their predictions empty, so they cannot reward an all-empty model.

Give the losses the model's sigmoid output: BCE then works from its logits (see
:func:`bce_loss`).
"""

from __future__ import annotations

SMOOTH = 1.0


def _soft_sums(truth, prob, per_image: bool = False):
    """Soft intersection and sizes pooled over every pixel of the batch, or one per image."""
    import tensorflow as tf

    t = tf.cast(truth, tf.float32)
    p = tf.cast(prob, tf.float32)
    axes = tf.range(1, tf.rank(t)) if per_image else None
    return (tf.reduce_sum(t * p, axis=axes), tf.reduce_sum(t, axis=axes),
            tf.reduce_sum(p, axis=axes))


def soft_iou_loss(truth, prob):
    """1 - soft IoU pooled over the batch (the seed study's loss)."""
    inter, t_sum, p_sum = _soft_sums(truth, prob)
    return 1.0 - (inter + SMOOTH) / (t_sum + p_sum - inter + SMOOTH)


def soft_dice_loss(truth, prob):
    """1 - soft Dice pooled over the batch."""
    inter, t_sum, p_sum = _soft_sums(truth, prob)
    return 1.0 - (2.0 * inter + SMOOTH) / (t_sum + p_sum + SMOOTH)


# Tversky's weights of the missed and the false mass pixels in ``bce_mass_tversky`` (Salehi
# et al. 2017, for small lesions); 0.5 and 0.5 is Dice.
TVERSKY_MISSED = 0.7


def mass_dice_loss(truth, prob, missed: float = 0.5):
    """1 - soft Dice of each image with a mass, averaged over those images (0 when the batch
    has none). Images without a mass are left out. ``missed`` != 0.5: 1 - the Tversky index
    (inter + 1) / (inter + missed x (truth - inter) + (1 - missed) x (pred - inter) + 1), which
    is Dice's (2 inter + 1) / (truth + pred + 1) at 0.5 up to the smoothing term."""
    import tensorflow as tf

    inter, t_sum, p_sum = _soft_sums(truth, prob, per_image=True)
    has = tf.cast(t_sum > 0, tf.float32)
    if missed == 0.5:
        score = (2.0 * inter + SMOOTH) / (t_sum + p_sum + SMOOTH)
    else:
        score = (inter + SMOOTH) / (inter + missed * (t_sum - inter)
                                    + (1.0 - missed) * (p_sum - inter) + SMOOTH)
    return tf.reduce_sum(has * (1.0 - score)) / tf.maximum(tf.reduce_sum(has), 1.0)


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


def bce_mass_dice_loss(truth, prob):
    return bce_loss(truth, prob) + mass_dice_loss(truth, prob)


def bce_mass_tversky_loss(truth, prob):
    return bce_loss(truth, prob) + mass_dice_loss(truth, prob, missed=TVERSKY_MISSED)


def deep_supervision_loss(loss_fn, heads: int):
    """``loss_fn`` over the outputs [full size, 1/2, ..., 1/2**heads] of a deeply supervised
    model: each against the truth averaged over 2**i x 2**i blocks (a coarse pixel's truth is
    the fraction of it that is mass, so a mass smaller than a block still counts), weighted
    1, 1/2, 1/4, ... and normalised to sum to 1 (nnU-Net's weights)."""
    import tensorflow as tf

    weights = [0.5 ** i for i in range(heads + 1)]
    total = sum(weights)

    def loss(truth, outputs):
        t = tf.cast(truth, tf.float32)
        value = weights[0] * loss_fn(t, outputs[0])
        for i in range(1, heads + 1):
            coarse = tf.nn.avg_pool2d(t, 2 ** i, 2 ** i, "VALID")
            value += weights[i] * loss_fn(coarse, outputs[i])
        return value / total

    return loss


LOSSES = {"iou": soft_iou_loss, "dice": soft_dice_loss, "bce": bce_loss,
          "bce_dice": bce_dice_loss, "bce_mass_dice": bce_mass_dice_loss,
          "bce_mass_tversky": bce_mass_tversky_loss}
