"""The sliding window and whole-image inference of a patch-trained model: an identity model
reproduces its input across tile seams, the blending weights sum to one, and whole-image
inference through the patch model's weights equals a model built for the whole image."""

from __future__ import annotations

import numpy as np
import pytest

from mammoray.model.window import gaussian_weights, sliding_window, window_starts

pytestmark = pytest.mark.unit


def test_window_starts_cover_the_side_and_end_at_the_edge():
    assert window_starts(100, 32, 16) == [0, 16, 32, 48, 64, 68]
    assert window_starts(64, 32, 32) == [0, 32]
    assert window_starts(32, 32, 16) == [0]
    assert window_starts(20, 32, 16) == [0]
    for length, patch, step in ((1000, 256, 128), (777, 96, 40), (257, 256, 1)):
        starts = window_starts(length, patch, step)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s:s + patch] = True
        assert covered.all() and starts[-1] + patch == length
        assert all(b - a <= step for a, b in zip(starts, starts[1:]))


def test_gaussian_weights_peak_in_the_middle_and_have_no_zeros():
    w = gaussian_weights(64, 0.125)
    assert w.dtype == np.float32 and w.shape == (64, 64)
    assert w.max() == 1.0 and w.min() > 0
    assert w[31, 31] == w[32, 32] == w.max() or w[31:33, 31:33].min() > 0.99
    assert w[0, 0] < w[0, 32] < w[32, 32]
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_identity_model_reproduces_its_input_across_seams(overlap):
    """Blending normalises the weights at every pixel: sum(w x p) / sum(w) of a prediction
    equal to the input is the input, at seams and edges alike (float32 rounding only)."""
    rng = np.random.default_rng(0)
    images = rng.random((2, 150, 97, 1), dtype=np.float32)
    calls = []

    def identity(windows):
        calls.append(len(windows))
        return windows[..., 0]

    out = sliding_window(identity, images, 32, overlap=overlap, batch_size=5)
    assert out.shape == (2, 150, 97)
    assert np.max(np.abs(out - images[..., 0])) < 1e-6
    assert max(calls) <= 5


def test_blending_weights_sum_to_one_per_pixel():
    """A model predicting 1 everywhere gives exactly 1 everywhere; one predicting each
    window's index shows every pixel is a convex mix of the windows covering it."""
    images = np.zeros((1, 100, 100, 1), np.float32)
    ones = sliding_window(lambda w: np.ones(w.shape[:3], np.float32), images, 40, overlap=0.5)
    assert np.allclose(ones, 1.0, atol=1e-6)
    counter = iter(range(10_000))
    mixed = sliding_window(lambda w: np.stack([np.full(w.shape[1:3], next(counter), np.float32)
                                               for _ in w]), images, 40, overlap=0.5,
                           batch_size=1)
    # 100 px with 40-px windows every 20 px: starts 0, 20, 40, 60 -> 16 windows, indices 0-15.
    assert mixed.min() >= 0.0 and mixed.max() <= 15.0 + 1e-5  # float32 rounding only
    assert mixed[0, 0, 0] == pytest.approx(0.0)       # only the first window covers (0, 0)
    assert mixed[0, 99, 99] == pytest.approx(15.0)    # only the last covers the far corner


def test_segmenter_whole_mode_equals_a_model_built_for_the_whole_image():
    import keras

    from mammoray.core.config import config_from_dict
    from mammoray.model.unet import build_unet
    from mammoray.model.window import Segmenter

    cfg = config_from_dict({"model": {"levels": 3, "base_filters": 4},
                            "infer": {"mode": "whole"}})
    keras.utils.set_random_seed(0)
    patch_model = build_unet(cfg.model, 32)
    segmenter = Segmenter(patch_model, cfg, 64)
    assert segmenter.windowed and "whole 64 x 64" in segmenter.describe()
    x = np.random.default_rng(1).random((2, 64, 64, 1), dtype=np.float32)
    whole = build_unet(cfg.model, 64)
    whole.set_weights(patch_model.get_weights())
    assert np.allclose(segmenter(x), np.asarray(whole(x)), atol=1e-6)
    # The patch model's weights change (training); sync() takes them.
    patch_model.get_layer("head").set_weights([w * 0 for w in
                                               patch_model.get_layer("head").get_weights()])
    segmenter.sync()
    assert np.allclose(segmenter(x), 0.5, atol=1e-6)  # sigmoid(0)


def test_segmenter_sliding_mode_on_a_real_model_matches_the_windows():
    """A real U-Net through the sliding window: where only one window covers a pixel (the
    image's corners), the blended output is that window's own prediction."""
    import keras

    from mammoray.core.config import config_from_dict
    from mammoray.model.unet import build_unet
    from mammoray.model.window import Segmenter

    cfg = config_from_dict({"model": {"levels": 2, "base_filters": 4},
                            "infer": {"overlap": 0.5, "batch_size": 3}})
    keras.utils.set_random_seed(0)
    model = build_unet(cfg.model, 16)
    segmenter = Segmenter(model, cfg, 40)
    assert "sliding 16-px windows over 40 x 40" in segmenter.describe()
    x = np.random.default_rng(2).random((1, 40, 40, 1), dtype=np.float32)
    prob = segmenter(x)
    assert prob.shape == (1, 40, 40, 1)
    first = np.asarray(model(x[:, :16, :16]))[0, ..., 0]
    last = np.asarray(model(x[:, 24:, 24:]))[0, ..., 0]
    # Starts 0, 8, 16, 24: pixels (0-7, 0-7) are covered by the first window only.
    assert np.allclose(prob[0, :8, :8, 0], first[:8, :8], atol=1e-5)
    assert np.allclose(prob[0, 32:, 32:, 0], last[8:, 8:], atol=1e-5)
    # A model built for the image size is used as it is.
    same = Segmenter(build_unet(cfg.model, 40), cfg, 40)
    assert not same.windowed and same.describe() == "whole 40 x 40 images"
