"""The lesion list of a prediction's JSON, on hand-made masks: 8-connected components, boxes
end-exclusive, areas, centroids, each component's own maximum probability, sizes in mm."""

from __future__ import annotations

import numpy as np
import pytest

from mammoray.inference.predictor import lesion_summary

pytestmark = pytest.mark.unit


def test_each_lesion_has_its_box_area_centroid_and_own_peak_probability():
    prob = np.full((40, 50), 0.2, np.float32)
    prob[5:9, 10:16] = 0.7          # lesion A: 4 x 6 = 24 px
    prob[6, 12] = 0.95              # A's peak
    prob[20:30, 30:32] = 0.6        # lesion B: 10 x 2 = 20 px
    prob[30, 32] = 0.8              # touches B diagonally: 8-connected, so B's peak
    prob[0, 49] = 0.99              # lesion C: one pixel, the highest peak of all
    mask = (prob >= 0.5).astype(np.uint8)
    lesions = lesion_summary(mask, prob, (0.1, 0.2))
    assert [les["area_px"] for les in lesions] == [24, 21, 1]
    a, b, c = lesions
    assert a["box_px"] == [10, 5, 16, 9] and a["centroid_px"] == [12.5, 6.5]
    assert a["max_probability"] == 0.95
    assert b["box_px"] == [30, 20, 33, 31] and b["max_probability"] == 0.8
    assert c["box_px"] == [49, 0, 50, 1] and c["max_probability"] == 0.99
    # (row, column) spacing 0.1 x 0.2 mm
    assert a["width_mm"] == 1.2 and a["height_mm"] == 0.4 and a["area_mm2"] == 0.48
    assert a["box_mm"] == [2.0, 0.5, 3.2, 0.9]
    # Without a pixel spacing: pixels only.
    assert "area_mm2" not in lesion_summary(mask, prob, None)[0]


def test_an_empty_mask_has_no_lesion():
    assert lesion_summary(np.zeros((8, 8), np.uint8), np.ones((8, 8), np.float32), None) == []
