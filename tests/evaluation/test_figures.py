"""Evaluation figures on hand-made masks, with exact expected values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mammoray.evaluation import figures as ev

pytestmark = pytest.mark.unit


def square(shape, x0, y0, side, value=1):
    m = np.zeros(shape, np.uint8)
    m[y0:y0 + side, x0:x0 + side] = value
    return m


def test_match_lesions_iou_rule_centroid_rule_and_false_positives():
    truth = square((64, 64), 10, 10, 10) | square((64, 64), 40, 40, 10)
    # Shifted by 5 px: IoU 50 / 150 = 1/3 >= 0.1, its centroid (x 19.5 -> 20) is outside.
    pred = square((64, 64), 15, 10, 10)
    assert ev.match_lesions(truth, pred) == (2, 1, 0)
    # A large box around a lesion: IoU 100 / 1600 < 0.1, but its centroid lies inside.
    around = np.zeros((80, 80), np.uint8)
    around[25:65, 25:65] = 1
    t2 = square((80, 80), 40, 40, 10)
    assert ev.match_lesions(t2, around) == (1, 1, 0)
    # Far away and tiny overlap (IoU < 0.1, centroid outside): a miss and a false positive.
    far = square((64, 64), 0, 50, 6)
    assert ev.match_lesions(truth, far) == (2, 0, 1)
    assert ev.match_lesions(np.zeros((8, 8), np.uint8), square((8, 8), 1, 1, 2)) == (0, 0, 1)
    assert ev.match_lesions(truth, np.zeros((64, 64), np.uint8)) == (2, 0, 0)


def table_of(cases, thresholds=(0.5,)):
    rows = [ev.image_stats(t, p, thresholds) for t, p in cases]
    return rows, ev.Table.from_rows(rows)


def test_constructed_cases_exact_values():
    shape = (32, 32)
    # A: truth 100 px, prediction = half of it (50 px inside): Dice 2*50/150, IoU 0.5.
    ta = square(shape, 0, 0, 10)
    pa = np.zeros(shape, np.float32)
    pa[0:5, 0:10] = 0.9
    # B: empty truth, empty prediction: no Dice, not a false-positive image.
    tb, pb = np.zeros(shape, np.uint8), np.zeros(shape, np.float32)
    # C: empty truth, 4 predicted pixels: a false-positive image and one FP lesion.
    tc, pc = np.zeros(shape, np.uint8), square(shape, 20, 20, 2).astype(np.float32) * 0.8
    # D: two lesions (36 + 16 px), one found exactly, one missed.
    td = square(shape, 2, 2, 6) | square(shape, 20, 20, 4)
    pd = square(shape, 2, 2, 6).astype(np.float32) * 0.7
    rows, t = table_of([(ta, pa), (tb, pb), (tc, pc), (td, pd)])
    a = ev.per_image_metrics(rows[0], 0)
    assert a["dice"] == pytest.approx(2 * 50 / 150)
    assert a["iou"] == pytest.approx(0.5)
    assert a["pixel_accuracy"] == pytest.approx(1 - 50 / 1024)
    assert math.isnan(ev.per_image_metrics(rows[1], 0)["dice"])
    d = ev.per_image_metrics(rows[3], 0)
    assert d["dice"] == pytest.approx(2 * 36 / (52 + 36))
    agg = ev.aggregate(t, 0)
    assert agg["images"] == 4 and agg["mass_images"] == 2 and agg["empty_images"] == 2
    assert agg["mean_dice"] == pytest.approx((2 * 50 / 150 + 2 * 36 / 88) / 2)
    assert agg["mean_iou"] == pytest.approx((0.5 + 36 / 52) / 2)
    assert agg["pooled_dice"] == pytest.approx(2 * (50 + 36) / ((100 + 52) + (50 + 4 + 36)))
    assert agg["fp_image_rate"] == pytest.approx(0.5)
    assert agg["lesions"] == 3
    assert agg["sensitivity"] == pytest.approx(2 / 3)
    assert agg["fp_per_image"] == pytest.approx(1 / 4)
    assert agg["pixel_accuracy"] == pytest.approx(
        (1 - 50 / 1024 + 1 + 1 - 4 / 1024 + 1 - 16 / 1024) / 4)


def test_empty_truth_and_empty_prediction_everywhere():
    z = np.zeros((16, 16), np.uint8)
    _, t = table_of([(z, z.astype(np.float32))] * 3)
    agg = ev.aggregate(t, 0)
    assert math.isnan(agg["mean_dice"]) and math.isnan(agg["sensitivity"])
    assert agg["fp_image_rate"] == 0.0 and agg["fp_per_image"] == 0.0
    assert agg["pixel_accuracy"] == 1.0


def test_thresholds_froc_and_choice():
    truth = square((32, 32), 8, 8, 10)
    prob = np.zeros((32, 32), np.float32)
    prob[8:18, 8:18] = 0.6          # the mass
    prob[8:18, 18:28] = 0.4         # a halo beside it: inside the prediction below 0.4
    prob[0:3, 28:31] = 0.3          # a separate false positive below 0.3
    thresholds = (0.25, 0.35, 0.5, 0.7)
    rows, t = table_of([(truth, prob)], thresholds)
    # 0.25: mass + halo (one component with the mass) + the separate blob.
    assert [ev.aggregate(t, k)["fp_per_image"] for k in range(4)] == [1.0, 0.0, 0.0, 0.0]
    assert [ev.aggregate(t, k)["sensitivity"] for k in range(4)] == [1.0, 1.0, 1.0, 0.0]
    dice = [ev.per_image_metrics(rows[0], k)["dice"] for k in range(4)]
    assert dice[2] == pytest.approx(1.0) and dice[1] == pytest.approx(2 * 100 / 300)
    assert ev.choose_threshold(t, thresholds) == (0.5, 2)
    curve = ev.froc(t, thresholds)
    assert [c["threshold"] for c in curve] == list(thresholds)
    with pytest.raises(ValueError, match="no image with a mass"):
        ev.choose_threshold(table_of([(np.zeros((4, 4), np.uint8),
                                       np.zeros((4, 4), np.float32))])[1], (0.5,))


def test_bootstrap_by_patient():
    good = (square((16, 16), 2, 2, 4), square((16, 16), 2, 2, 4).astype(np.float32))
    half = (square((16, 16), 2, 2, 4), (square((16, 16), 2, 2, 4)
                                        * (np.arange(16)[None, :] < 4)).astype(np.float32))
    _, t = table_of([good, good, half, half])
    # All of a patient's images are drawn together: patient "a" always has Dice 1, so a
    # resample of only "a" gives 1 and one of only "b" gives 2*8/24.
    ci = ev.bootstrap(t, 0, ["a", "a", "b", "b"], resamples=2000, seed=1)
    lo, hi = ci["mean_dice"]
    assert lo == pytest.approx(2 * 8 / 24) and hi == pytest.approx(1.0)
    first = ev.bootstrap(t, 0, ["a", "a", "b", "b"], resamples=200, seed=1)
    again = ev.bootstrap(t, 0, ["a", "a", "b", "b"], resamples=200, seed=1)
    assert first["mean_dice"] == again["mean_dice"]  # seeded
    assert all(math.isnan(v) for v in first["fp_image_rate"])  # no image without a mass
    one = ev.bootstrap(t, 0, ["p"] * 4, resamples=50)
    value = ev.aggregate(t, 0)["mean_dice"]
    assert one["mean_dice"] == [pytest.approx(value), pytest.approx(value)]


def test_size_bins():
    assert ev.size_bin(8.0, 100) == "< 10 mm"
    assert ev.size_bin(15.0, 3) == "10-20 mm"
    assert ev.size_bin(None, 50) == ">= 48 px"
    assert ev.size_bin(float("nan"), 10) == "< 16 px"
