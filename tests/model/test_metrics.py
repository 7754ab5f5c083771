"""Metrics and losses on hand-made masks with exact values; NumPy and TensorFlow agree."""

import numpy as np
import pytest

from mammoray.model.losses import LOSSES
from mammoray.model.metrics import (
    SUM_NAMES,
    MetricSums,
    counts_np,
    counts_tf,
    image_sums_np,
    image_sums_tf,
    metrics_np,
    sums_np,
    sums_tf,
)

pytestmark = pytest.mark.unit

T = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32)   # 3 mass pixels
P = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], np.float32)   # 2 right, 1 wrong, 1 missed
EMPTY = np.zeros((3, 3), np.float32)
STRAY = np.zeros((3, 3), np.float32)
STRAY[2, 2] = 0.9                                              # one predicted pixel


def stack(*masks):
    return np.stack(masks)[..., None]


def test_exact_values_one_image():
    m = metrics_np(stack(T), stack(P))
    assert m["iou"] == pytest.approx(2 / 4)
    assert m["dice"] == pytest.approx(2 * 2 / 6)
    assert m["pixel_accuracy"] == pytest.approx(7 / 9)
    assert np.isnan(m["fp_rate"])  # no image without a mass


def test_the_rows_of_sums_by_hand():
    rows = image_sums_np(counts_np(stack(T, EMPTY, EMPTY), stack(P, EMPTY, STRAY)))
    assert SUM_NAMES == ("images", "accuracy_sum", "mass_images", "iou_sum", "dice_sum",
                         "empty_images", "false_positive_images")
    np.testing.assert_allclose(rows, [[1, 7 / 9, 1, 2 / 4, 4 / 6, 0, 0],
                                      [1, 1, 0, 0, 0, 1, 0],
                                      [1, 8 / 9, 0, 0, 0, 1, 1]], rtol=0, atol=1e-15)


def test_empty_truth_is_not_in_the_dice_mean():
    # Empty truth + empty prediction: a true negative; it does not lift the mean Dice.
    m = metrics_np(stack(T, EMPTY), stack(P, EMPTY))
    assert m["dice"] == pytest.approx(2 / 3) and m["fp_rate"] == 0.0
    assert m["pixel_accuracy"] == pytest.approx((7 / 9 + 1) / 2)
    # A stray pixel on an empty truth is a false-positive image.
    m = metrics_np(stack(T, EMPTY, EMPTY), stack(P, STRAY, EMPTY))
    assert m["fp_rate"] == 0.5 and m["dice"] == pytest.approx(2 / 3)


def test_threshold_and_missed_mass():
    soft = P * 0.49
    m = metrics_np(stack(T), stack(soft))
    assert m["iou"] == 0.0 and m["dice"] == 0.0
    assert metrics_np(stack(T), stack(soft), threshold=0.4)["iou"] == pytest.approx(0.5)


def test_sums_are_exact_across_batches():
    whole = MetricSums.from_vector(sums_np(stack(T, EMPTY, T), stack(P, EMPTY, T)))
    parts = MetricSums()
    for t, p in ((stack(T), stack(P)), (stack(EMPTY, T), stack(EMPTY, T))):
        parts = parts + MetricSums.from_vector(sums_np(t, p))
    assert parts.result() == whole.result()
    assert whole.result()["dice"] == pytest.approx((2 / 3 + 1) / 2)
    np.testing.assert_array_equal(MetricSums.from_vector(whole.to_vector()).to_vector(),
                                  whole.to_vector())
    with pytest.raises(ValueError, match="expected 7 sums, got 3"):
        MetricSums.from_vector([1, 2, 3])


def test_numpy_and_tensorflow_agree_exactly():
    """The per-image counts equal exactly; each image's row of sums is the same float32 value
    (one correctly rounded division each); the sum vector a training step returns and the
    workers all-reduce equals NumPy's to float32 precision."""
    big_t = np.zeros((6, 6), np.float32)
    big_t[1:4, 1:5] = 1                                       # 12 mass pixels
    big_p = np.zeros((6, 6), np.float32)
    big_p[2:5, 2:6] = 0.7                                     # 12 predicted, 6 of them right
    zero = np.zeros((5, 5), np.float32)
    truth = stack(np.pad(T, 1), zero, zero, np.pad(T, 1))
    prob = stack(np.pad(P, 1), zero, np.pad(STRAY, 1), np.pad(T, 1) * 0.5)
    for t, p in ((truth, prob), (big_t[None, ..., None], big_p[None, ..., None])):
        counts = counts_np(t, p)
        counts_t = {k: v.numpy() for k, v in counts_tf(t, p).items()}
        for key in counts:
            np.testing.assert_array_equal(counts_t[key], counts[key].astype(np.float32))
        rows_np = image_sums_np(counts).astype(np.float32)
        np.testing.assert_array_equal(image_sums_tf(counts_tf(t, p)).numpy(), rows_np)
        np.testing.assert_allclose(sums_tf(t, p).numpy(), sums_np(t, p), rtol=1e-6)
    # The mixed batch (5 x 5 images) by hand: the first image has IoU 2/4, Dice 4/6 and 2 wrong
    # pixels; the last one's prediction (0.5 >= the threshold) is its truth.
    np.testing.assert_allclose(sums_np(truth, prob),
                               [4, 23 / 25 + 1 + 24 / 25 + 1, 2, 2 / 4 + 1, 4 / 6 + 1, 2, 1],
                               rtol=0, atol=1e-15)


def test_losses():
    t, p = stack(T), stack(P)
    # Soft IoU with 1 pixel of smoothing: (2 + 1) / (4 + 1).
    assert float(LOSSES["iou"](t, p)) == pytest.approx(1 - 3 / 5)
    assert float(LOSSES["dice"](t, p)) == pytest.approx(1 - 5 / 7)
    assert float(LOSSES["iou"](stack(EMPTY), stack(EMPTY))) == pytest.approx(0.0)
    assert float(LOSSES["iou"](t, t)) == pytest.approx(0.0)
    soft = np.where(P > 0, 0.8, 0.1).astype(np.float32)  # away from the clip at 0 and 1
    expected_bce = -np.mean(T * np.log(soft) + (1 - T) * np.log(1 - soft))
    assert float(LOSSES["bce"](t, stack(soft))) == pytest.approx(expected_bce, rel=1e-5)
    inter, total = float((T * soft).sum()), float(T.sum() + soft.sum())
    expected_dice = 1 - (2 * inter + 1) / (total + 1)
    # Pooled over the batch: an empty image adds its stray probabilities to the sums and no
    # "free" zero loss: T/P plus an empty image predicted empty gives the same loss as T/P.
    assert float(LOSSES["iou"](stack(T, EMPTY), stack(P, EMPTY))) == pytest.approx(1 - 3 / 5)
    stray = EMPTY.copy()
    stray[0, 0] = 1.0
    assert float(LOSSES["iou"](stack(T, EMPTY), stack(P, stray))) == pytest.approx(1 - 3 / 6)
    assert float(LOSSES["bce_dice"](t, stack(soft))) == pytest.approx(
        expected_bce + expected_dice, rel=1e-5)


def test_mass_dice_loss_weighs_each_mass_image_alike():
    t, p = stack(T), stack(P)
    # One image: the pooled and the per-image soft Dice are the same, (2 x 2 + 1) / (3 + 3 + 1).
    assert float(LOSSES["bce_mass_dice"](t, p) - LOSSES["bce"](t, p)) == pytest.approx(
        1 - 5 / 7)
    # An image without a mass is left out of the Dice term, predicted empty or not.
    stray = EMPTY.copy()
    stray[0, 0] = 1.0
    for other in (EMPTY, stray):
        dice_part = LOSSES["bce_mass_dice"](stack(T, EMPTY), stack(P, other)) - LOSSES["bce"](
            stack(T, EMPTY), stack(P, other))
        assert float(dice_part) == pytest.approx(1 - 5 / 7)
    # A batch without a mass: BCE alone.
    assert float(LOSSES["bce_mass_dice"](stack(EMPTY, stray), stack(EMPTY, stray))) == (
        pytest.approx(float(LOSSES["bce"](stack(EMPTY, stray), stack(EMPTY, stray)))))
    # Two masses, a 1-pixel one missed and T/P: each image weighs 1/2, (1 - 1/2) + (1 - 5/7)
    # halved; pooled, the small one would count for 1 pixel of 4: 1 - (4 + 1) / (4 + 3 + 1).
    small = EMPTY.copy()
    small[2, 2] = 1.0
    truth, prob = stack(T, small), stack(P, EMPTY)
    assert float(LOSSES["bce_mass_dice"](truth, prob) - LOSSES["bce"](truth, prob)) == (
        pytest.approx(((1 - 1 / 2) + (1 - 5 / 7)) / 2))
    assert float(LOSSES["dice"](truth, prob)) == pytest.approx(1 - 5 / 8)


def test_mass_tversky_loss_weighs_a_missed_mass_pixel_more_than_a_false_one():
    def tversky_part(truth, prob):
        return float(LOSSES["bce_mass_tversky"](truth, prob) - LOSSES["bce"](truth, prob))

    # T/P: 2 pixels right, 1 missed, 1 false: 1 - (2 + 1) / (2 + 0.7 x 1 + 0.3 x 1 + 1).
    assert tversky_part(stack(T), stack(P)) == pytest.approx(1 - 3 / 4)
    # The same two errors apart: 2 of T's 3 pixels missed, or T found with 2 false pixels.
    under = np.zeros_like(T)
    under[0, 0] = 1.0
    over = T.copy()
    over[np.argwhere(T == 0)[:2, 0], np.argwhere(T == 0)[:2, 1]] = 1.0
    assert under.sum() == 1 and (under * T).sum() == 1 and over.sum() == 5
    assert tversky_part(stack(T), stack(under)) == pytest.approx(1 - 2 / (1 + 0.7 * 2 + 1))
    assert tversky_part(stack(T), stack(over)) == pytest.approx(1 - 4 / (3 + 0.3 * 2 + 1))
    # An image without a mass stays out of the term, as in bce_mass_dice.
    stray = EMPTY.copy()
    stray[0, 0] = 1.0
    assert tversky_part(stack(T, EMPTY), stack(P, stray)) == pytest.approx(1 - 3 / 4)


def test_deep_supervision_loss_scores_each_head_against_the_averaged_mask():
    import tensorflow as tf

    from mammoray.model.losses import deep_supervision_loss

    truth = np.zeros((4, 4), np.float32)
    truth[:2, :2] = 1.0
    truth[3, 3] = 1.0   # a quarter of the bottom-right 2 x 2 block
    coarse = np.array([[1, 0], [0, 0]], np.float32)
    loss = deep_supervision_loss(LOSSES["dice"], 1)
    # Full size exact: Dice loss 0. Half size: truth [[1, 0], [0, 1/4]] against [[1, 0], [0,
    # 0]]: 1 - (2 x 1 + 1) / (1.25 + 1 + 1). Weights 1 and 1/2, over 1.5.
    got = float(loss(tf.constant(stack(truth)), [tf.constant(stack(truth)),
                                                 tf.constant(stack(coarse))]))
    assert got == pytest.approx((0.5 * (1 - 3 / 3.25)) / 1.5, rel=1e-6)
    # Two heads: the quarter-size truth is the mean of all 16 pixels, 5 / 16, against 0.
    two = deep_supervision_loss(LOSSES["dice"], 2)
    got2 = float(two(tf.constant(stack(truth)), [tf.constant(stack(truth)),
                                                 tf.constant(stack(coarse)),
                                                 tf.constant(stack(np.zeros((1, 1),
                                                                             np.float32)))]))
    quarter = 1 - 1 / (5 / 16 + 0 + 1)
    assert got2 == pytest.approx((0.5 * (1 - 3 / 3.25) + 0.25 * quarter) / 1.75, rel=1e-6)
