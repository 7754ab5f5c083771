"""Metrics and losses on hand-made masks with exact values; numpy and TensorFlow agree."""

import numpy as np
import pytest

from mammoray.metrics import LOSSES, MetricSums, metrics_np, per_image_np, per_image_tf

T = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32)   # 3 mass pixels
P = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], np.float32)   # 2 right, 1 wrong, 1 missed
EMPTY = np.zeros((3, 3), np.float32)


def stack(*masks):
    return np.stack(masks)[..., None]


def test_exact_values_one_image():
    m = metrics_np(stack(T), stack(P))
    assert m["iou"] == pytest.approx(2 / 4)
    assert m["dice"] == pytest.approx(2 * 2 / 6)
    assert m["pixel_accuracy"] == pytest.approx(7 / 9)
    assert np.isnan(m["fp_rate"])  # no image without a mass


def test_empty_truth_is_not_in_the_dice_mean():
    # Empty truth + empty prediction: a true negative; it does not lift the mean Dice.
    m = metrics_np(stack(T, EMPTY), stack(P, EMPTY))
    assert m["dice"] == pytest.approx(2 / 3) and m["fp_rate"] == 0.0
    assert m["pixel_accuracy"] == pytest.approx((7 / 9 + 1) / 2)
    # A stray pixel on an empty truth is a false-positive image.
    stray = EMPTY.copy()
    stray[2, 2] = 0.9
    m = metrics_np(stack(T, EMPTY, EMPTY), stack(P, stray, EMPTY))
    assert m["fp_rate"] == 0.5 and m["dice"] == pytest.approx(2 / 3)


def test_threshold_and_missed_mass():
    soft = P * 0.49
    m = metrics_np(stack(T), stack(soft))
    assert m["iou"] == 0.0 and m["dice"] == 0.0
    assert metrics_np(stack(T), stack(soft), threshold=0.4)["iou"] == pytest.approx(0.5)


def test_sums_are_exact_across_batches():
    whole = MetricSums()
    whole.add(per_image_np(stack(T, EMPTY, T), stack(P, EMPTY, T)))
    parts = MetricSums()
    for t, p in ((stack(T), stack(P)), (stack(EMPTY, T), stack(EMPTY, T))):
        batch = MetricSums()
        batch.add(per_image_np(t, p))
        parts.merge(batch)
    assert parts.result() == whole.result()
    assert whole.result()["dice"] == pytest.approx((2 / 3 + 1) / 2)


def test_tensorflow_twin_agrees():
    t, p = stack(T, EMPTY, T), stack(P, EMPTY, EMPTY)
    np_parts = per_image_np(t, p)
    tf_parts = {k: v.numpy() for k, v in per_image_tf(t, p).items()}
    for key in np_parts:
        np.testing.assert_allclose(tf_parts[key], np_parts[key])


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
