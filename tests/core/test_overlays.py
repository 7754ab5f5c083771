"""Overlays: shrinking by a whole factor, outlines drawn in the palette's own indices, and the
palette PNG read back by the libraries a user opens it with (OpenCV, Pillow)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from mammoray.core.overlays import (
    PREDICTION_INDEX,
    TRUTH_INDEX,
    draw_overlay,
    overlay_indices,
    overlay_png,
)
from mammoray.core.shrinking import shrink, shrink_factor

pytestmark = pytest.mark.unit


def test_shrink_factor_is_the_smallest_whole_factor_within_max_side():
    assert shrink_factor((4000, 3000), 2048) == 2
    assert shrink_factor((4096, 3328), 2048) == 2
    assert shrink_factor((4097, 3328), 2048) == 3
    assert shrink_factor((2048, 1000), 2048) == 1
    assert shrink_factor((5000, 3000), None) == 1


def test_shrink_averages_whole_blocks_and_repeats_the_edges_to_a_multiple():
    image = np.arange(24, dtype=np.uint16).reshape(4, 6) * 4
    np.testing.assert_array_equal(
        shrink(image, 2, cv2.INTER_AREA),
        [[(0 + 4 + 24 + 28) / 4, (8 + 12 + 32 + 36) / 4, (16 + 20 + 40 + 44) / 4],
         [(48 + 52 + 72 + 76) / 4, (56 + 60 + 80 + 84) / 4, (64 + 68 + 88 + 92) / 4]])
    odd = np.array([[0, 8, 16], [40, 48, 56], [80, 88, 96]], np.uint16)
    # 3 x 3 -> 4 x 4 with the last row and column repeated -> 2 x 2
    np.testing.assert_array_equal(shrink(odd, 2, cv2.INTER_AREA),
                                  [[(0 + 8 + 40 + 48) / 4, (16 + 16 + 56 + 56) / 4],
                                   [(80 + 88 + 80 + 88) / 4, 96]])
    assert shrink(odd, 1, cv2.INTER_AREA) is odd


def square_mask(shape, top, left, side):
    mask = np.zeros(shape, np.uint8)
    mask[top:top + side, left:left + side] = 1
    return mask


def test_outlines_take_their_palette_indices_and_the_image_stays_gray_inside():
    image = np.full((64, 64), 65535, np.uint16)
    image[:, :32] = 100 << 8
    truth = square_mask(image.shape, 8, 8, 20)
    pred = square_mask(image.shape, 36, 36, 20)
    idx = overlay_indices(image, pred, truth)
    assert idx.dtype == np.uint8 and idx.shape == image.shape
    # One-pixel outlines exactly on each square's border (64 px: thickness 1).
    for mask, index in ((truth, TRUTH_INDEX), (pred, PREDICTION_INDEX)):
        border = mask.astype(bool) & ~cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
        np.testing.assert_array_equal(idx == index, border)
    rest = (idx != TRUTH_INDEX) & (idx != PREDICTION_INDEX)
    # The gray levels: 100 as is, white clipped to the palette's brightest gray (253).
    assert set(np.unique(idx[rest])) == {100, 253}
    assert (idx[rest & (np.arange(64) < 32)] == 100).all()


def test_overlay_png_reads_back_as_the_same_picture_in_opencv_and_pillow():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65536, (120, 90), dtype=np.uint16)
    pred, truth = square_mask(image.shape, 30, 20, 40), square_mask(image.shape, 50, 40, 30)
    blob = overlay_png(image, pred, truth)
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(blob)) as pic:
        assert pic.mode == "P"
        np.testing.assert_array_equal(np.asarray(pic), overlay_indices(image, pred, truth))
    bgr = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(bgr, draw_overlay(image, pred, truth))
    idx = overlay_indices(image, pred, truth)
    assert (bgr[idx == PREDICTION_INDEX] == (0, 0, 255)).all()
    assert (bgr[idx == TRUTH_INDEX] == (0, 200, 0)).all()
    gray = (image >> 8).astype(np.uint8)
    rest = idx < TRUTH_INDEX
    np.testing.assert_array_equal(bgr[rest][:, 1], np.minimum(gray[rest], 253))


def test_a_full_field_overlay_is_shrunk_by_a_whole_factor_and_keeps_small_masses():
    image = np.full((4000, 3000), 30000, np.uint16)
    pred = square_mask(image.shape, 1000, 1000, 12)  # a 12-px mass: 6 px after shrinking
    idx = overlay_indices(image, pred, max_side=2048)
    assert idx.shape == (2000, 1500)
    ys, xs = np.nonzero(idx == PREDICTION_INDEX)
    # The square at 500-505 after shrinking, outlined 5 px thick (2000 / 400), centred on it.
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (497, 508, 497, 508)
    assert (idx[501:505, 501:505] == PREDICTION_INDEX).all()
    assert (idx[:490] == (30000 >> 8)).all()


def test_shrink_can_trim_the_edges_instead_and_names_what_is_allowed():
    odd = np.array([[0, 8, 16], [40, 48, 56], [80, 88, 96]], np.uint16)
    # 3 x 3 -> its leading 2 x 2 block -> 1 x 1 (the breast-finding thumbnail's way)
    np.testing.assert_array_equal(shrink(odd, 2, cv2.INTER_AREA, edges="trim"),
                                  [[(0 + 8 + 40 + 48) / 4]])
    with pytest.raises(ValueError, match="edges='wrap': choose 'repeat' or 'trim'"):
        shrink(odd, 2, cv2.INTER_AREA, edges="wrap")
    with pytest.raises(ValueError, match="edges='wrap'"):  # whatever the factor
        shrink(odd, 1, cv2.INTER_AREA, edges="wrap")
