"""The patch sampler on hand-made images: the foreground fraction over many draws, patches
inside the image and the breast, image and mask cut and augmented together."""

from __future__ import annotations

import numpy as np
import pytest

from mammoray.model.patches import PatchSampler, augment_batch, augmenter, draw_patch, place_patch

pytestmark = pytest.mark.unit


def breast_image(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A breast in the left 60% of the image (values > 0), zero elsewhere; one 6 x 6 mass."""
    image = np.zeros((size, size), np.uint16)
    image[:, : int(size * 0.6)] = 1000 + np.arange(int(size * 0.6), dtype=np.uint16)
    mask = np.zeros((size, size), np.uint8)
    mask[40:46, 20:26] = 1
    return image, mask


def test_place_patch_moves_inwards_at_the_border():
    assert place_patch((0, 0), (100, 80), 32) == (0, 0)
    assert place_patch((99, 79), (100, 80), 32) == (68, 48)
    assert place_patch((50, 40), (100, 80), 32) == (34, 24)
    assert place_patch((50, 40), (100, 80), 80) == (10, 0)


def test_foreground_fraction_holds_over_many_draws():
    image, mask = breast_image()
    rng = np.random.default_rng(0)
    draws = [draw_patch(image, mask, 32, 0.33, rng) for _ in range(3000)]
    share = np.mean([d.foreground for d in draws])
    # Binomial(3000, 0.33): standard deviation 0.0086; 4 sigma.
    assert abs(share - 0.33) < 0.035
    for d in draws:
        patch_mask = mask[d.top:d.top + 32, d.left:d.left + 32]
        patch_image = image[d.top:d.top + 32, d.left:d.left + 32]
        assert 0 <= d.top <= 96 and 0 <= d.left <= 96
        if d.foreground:
            assert patch_mask.sum() > 0  # centred on a mass pixel
        # Centred on the breast (columns 0-75): unclamped, the patch's centre pixel is
        # breast; clamped at the left edge, the patch starts at 0.
        assert d.left <= 75 - 16
        assert patch_image[16, 16] > 0 or d.left == 0


def test_random_patches_are_centred_in_the_breast():
    image, mask = breast_image()
    rng = np.random.default_rng(1)
    for _ in range(500):
        d = draw_patch(image, mask, 16, 0.0, rng)
        assert not d.foreground
        assert d.left <= 75 - 8
        assert image[d.top + 8, d.left + 8] > 0 or d.left == 0
    lefts = [draw_patch(image, mask, 16, 0.0, rng).left for _ in range(500)]
    assert max(lefts) >= 55  # the whole breast is drawn from, not only its middle


def test_no_mass_means_a_random_patch_and_no_breast_a_uniform_one():
    image, mask = breast_image()
    rng = np.random.default_rng(2)
    draws = [draw_patch(image, np.zeros_like(mask), 16, 1.0, rng) for _ in range(200)]
    assert not any(d.foreground for d in draws)
    blank = [draw_patch(np.zeros_like(image), np.zeros_like(mask), 16, 0.5, rng)
             for _ in range(200)]
    lefts = [d.left for d in blank]
    assert min(lefts) < 20 and max(lefts) > 90  # uniform over the whole image


def test_patch_larger_than_the_image_is_refused():
    image, mask = breast_image(32)
    with pytest.raises(ValueError, match="patch_size 64 is larger than the images"):
        draw_patch(image, mask, 64, 0.3, np.random.default_rng(0))


def test_sampler_cuts_image_and_mask_at_the_same_place():
    """The image is its own coordinates (value = row * size + col), so a patch shows where it
    was cut; the mask is the image's parity: aligned patches keep mask == parity of image."""
    size, p = 64, 16
    coords = (np.arange(size * size, dtype=np.uint16).reshape(size, size) + 1)
    mask = (coords % 2).astype(np.uint8)
    sampler = PatchSampler(p, 0.5, 3, augment=False, seed=0)
    x, y = sampler(np.stack([coords, coords]), np.stack([mask, mask]))
    assert x.shape == (6, p, p, 1) and y.shape == (6, p, p, 1)
    values = np.rint(x[..., 0] * 65535).astype(np.int64)
    for k in range(6):
        first = values[k, 0, 0] - 1
        top, left = divmod(int(first), size)
        want = coords[top:top + p, left:left + p]
        assert np.array_equal(values[k], want)
        assert np.array_equal(y[k, ..., 0], (want % 2).astype(np.float32))
    assert sampler.drawn == 6


def test_augmented_patches_keep_image_and_mask_aligned():
    """With augmentation (flips, rotations, brightness/contrast) the mask still marks the
    same pixels as the image's bright square."""
    image = np.full((64, 64), 2000, np.uint16)
    image[10:20, 30:44] = 60000
    mask = (image == 60000).astype(np.uint8)
    sampler = PatchSampler(32, 1.0, 1, augment=True, seed=3)
    for _ in range(20):
        x, y = sampler(image[None], mask[None])
        bright = x[0, ..., 0] > 0.5
        assert y[0, ..., 0].sum() > 0
        assert np.array_equal(bright, y[0, ..., 0] > 0.5)
        assert 0.0 <= x.min() and x.max() <= 1.0


def test_whole_images_augmented_by_the_eight_symmetries_with_their_masks():
    """``train.image_augment``: a whole image and its mask go through the same draw; over 200
    draws each of the square's 8 symmetries appears, the mask always marks the image's bright
    pixels, and the same seed gives the same draws."""
    from mammoray.model.inputs import to_model_input

    image = np.full((16, 16), 2000, np.uint16)
    image[2:5, 9:14] = 60000   # an asymmetric bright block: each symmetry puts it elsewhere
    mask = (image == 60000).astype(np.uint8)
    x0 = to_model_input(image)
    y0 = mask[None, ..., None].astype(np.float32)
    symmetries = {np.rot90(m, k).tobytes() for m in (mask, mask.T) for k in range(4)}
    assert len(symmetries) == 8

    def draws(seed):
        transform, seen = augmenter(seed), []
        for _ in range(200):
            x, y = augment_batch(transform, x0.copy(), y0.copy())
            assert np.array_equal(x[0, ..., 0] > 0.5, y[0, ..., 0] > 0.5)
            assert 0.0 <= x.min() and x.max() <= 1.0
            seen.append(y[0, ..., 0].astype(np.uint8).tobytes())
        return seen

    seen = draws(5)
    assert set(seen) == symmetries
    assert draws(5) == seen and draws(6) != seen


def test_chest_wall_augmentation_keeps_the_chest_wall_on_the_left():
    """``train.augment_geometry: chest_wall``: over 300 draws the image comes back as it was,
    mirrored up-down, or turned/zoomed a little, in about equal shares; never mirrored
    left-right or turned a quarter (a block at the left edge stays there); the mask stays on
    the image's bright pixels (inside it bright, away from it dark) through every draw."""
    import cv2

    from mammoray.model.inputs import to_model_input

    image = np.full((32, 32), 2000, np.uint16)
    image[4:10, 2:12] = 60000  # touching neither edge's mirror: each flip puts it elsewhere
    mask = (image == 60000).astype(np.uint8)
    x0, y0 = to_model_input(image), mask[None, ..., None].astype(np.float32)
    transform, kinds, kernel = augmenter(3, "chest_wall"), [], np.ones((3, 3), np.uint8)
    for _ in range(300):
        x, y = augment_batch(transform, x0.copy(), y0.copy())
        m = y[0, ..., 0].astype(np.uint8)
        assert set(np.unique(m)) <= {0, 1}
        kinds.append("as is" if np.array_equal(m, mask) else
                     "mirrored" if np.array_equal(m, mask[::-1]) else "turned")
        assert np.nonzero(m)[1].mean() < 10  # still at the left (the block's centre: 6.5)
        bright = x[0, ..., 0] > 0.5
        inner = cv2.erode(m, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        assert bright[inner > 0].all()
        assert not (bright & (cv2.dilate(m, kernel) == 0)).any()
    shares = {k: kinds.count(k) / len(kinds) for k in ("as is", "mirrored", "turned")}
    # Expected: 1/4 as is, 1/4 mirrored, 1/2 turned (a turn of ~0 degrees at zoom ~1 may
    # land on "as is" or "mirrored"); 300 draws: 4 standard deviations ~ 0.1.
    assert 0.15 < shares["as is"] < 0.35 and 0.15 < shares["mirrored"] < 0.35
    assert 0.4 < shares["turned"] < 0.6
    with pytest.raises(ValueError, match="augment geometry 'd8': expected one of d4, chest_wall"):
        augmenter(0, "d8")


@pytest.mark.parametrize("zoom", [0.8, 1.0, 1.25])
def test_chest_wall_zoom_is_the_configured_one(zoom):
    """``train.augment_zoom`` sets the zoom of the chest-wall turn: with a fixed zoom z every
    turned draw scales the mass's area by z squared (within the nearest-neighbour rounding of
    a turn of up to 10 degrees), so [1, high] never makes a mass smaller."""
    from mammoray.model.inputs import to_model_input

    image = np.full((64, 64), 2000, np.uint16)
    image[24:36, 12:28] = 60000  # 192 px, inside the frame at every zoom and turn here
    mask = (image == 60000).astype(np.uint8)
    x0, y0 = to_model_input(image), mask[None, ..., None].astype(np.float32)
    transform, ratios = augmenter(4, "chest_wall", (zoom, zoom)), []
    for _ in range(120):
        _, y = augment_batch(transform, x0.copy(), y0.copy())
        m = y[0, ..., 0].astype(np.uint8)
        if not (np.array_equal(m, mask) or np.array_equal(m, mask[::-1])):
            ratios.append(m.sum() / mask.sum())
    assert len(ratios) > 30  # about half of the draws turn
    assert np.allclose(ratios, zoom ** 2, rtol=0.08), (min(ratios), max(ratios))


@pytest.mark.parametrize("side", [256, 512])
def test_elastic_deformation_moves_about_one_percent_of_the_side_smoothly(side):
    """``train.augment_elastic``'s field, measured on an image of its own coordinates: each
    pixel comes from a median of 0.5-1.2% of the side away (0.8% designed) at both sizes,
    and neighbouring pixels move almost alike (a smooth field, not noise)."""
    import albumentations as A

    from mammoray.model.patches import elastic_deformation

    transform = A.Compose([elastic_deformation(side, 1.0)], seed=0)
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float32)
    inner = (slice(side // 8, -side // 8),) * 2  # away from what comes in from outside
    medians, steps = [], []
    for _ in range(4):
        out = transform(image=np.dstack([cols, rows]))["image"]
        dx, dy = out[..., 0] - cols, out[..., 1] - rows
        medians.append(float(np.median(np.hypot(dx, dy)[inner])))
        steps.append(float(np.median(np.abs(np.diff(dx, axis=1))[inner])))
    assert 0.005 * side < np.median(medians) < 0.012 * side, medians
    # Pixels a step apart move within 0.1 px of each other (OpenCV's remap resolves 1/32 px;
    # albumentations' approximate field, a 17 x 17 blur, gave 0.375).
    assert max(steps) < 0.1, steps


def test_elastic_deformation_moves_image_and_mask_alike():
    """A mass of brightness 1 on a background of 0: after the whole-image augmentation with
    ``elastic`` 1, the bright pixels are the mask's (the mask nearest-neighbour, the image
    linear: they may differ on the outline only), the outline has changed, the area has not
    much; with ``elastic`` 0 the augmentation has no elastic step."""
    import cv2

    mask = np.zeros((256, 256), np.float32)
    cv2.circle(mask, (100, 120), 30, 1.0, -1)
    x0, y0 = mask[None, ..., None].copy(), mask[None, ..., None].copy()
    transform = augmenter(5, "chest_wall", (1.0, 1.0), "light", 1.0, side=256)
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(20):
        x, y = augment_batch(transform, x0.copy(), y0.copy())
        m = y[0, ..., 0].astype(np.uint8)
        assert set(np.unique(m)) <= {0, 1}
        outline = cv2.dilate(m, kernel) - cv2.erode(m, kernel)
        bright = (x[0, ..., 0] > 0.45).astype(np.uint8)
        assert np.array_equal(bright[outline == 0], m[outline == 0])
        assert not np.array_equal(m, mask.astype(np.uint8))
        assert not np.array_equal(m, mask[::-1].astype(np.uint8))
        assert 0.85 < m.sum() / mask.sum() < 1.15
    kinds = [type(t).__name__ for t in augmenter(5, "chest_wall").transforms]
    assert "ElasticTransform" not in kinds
    assert "ElasticTransform" in [type(t).__name__
                                  for t in augmenter(5, "d4", elastic=0.5).transforms]


def test_intensity_augmentation_light_and_strong():
    """``train.augment_intensity``: over 400 draws of d4 (which leaves a uniform image and a
    full mask as they are), ``light`` keeps a uniform image uniform and a step edge two-valued
    (only brightness and contrast); ``strong`` adds Gaussian noise in about 0.15 of the draws
    and intermediate values at the edge (noise, blur or a lower resolution: 1 - 0.85 x 0.8 x
    0.75 = 0.49 expected, 0.44 seen with seed 1) and gamma takes the mean further; the mask
    never changes."""
    shares = {}
    for intensity in ("light", "strong"):
        transform, noisy, graded, means = augmenter(1, "d4", intensity=intensity), 0, 0, []
        for _ in range(400):
            x, y = augment_batch(transform, np.full((1, 64, 64, 1), 0.5, np.float32),
                                 np.ones((1, 64, 64, 1), np.float32))
            assert (y == 1).all()
            noisy += int(x.std() > 1e-4)
            means.append(float(x.mean()))
            edge = np.zeros((1, 64, 64, 1), np.float32)
            edge[:, :, 32:] = 1
            edge, _ = augment_batch(transform, edge, np.zeros_like(edge))
            graded += int(len(np.unique(edge)) > 2)
        shares[intensity] = (noisy / 400, graded / 400, min(means), max(means))
    assert shares["light"][:2] == (0.0, 0.0)
    assert 0.3 < shares["light"][2] and shares["light"][3] < 0.7  # up to 10% either way
    noisy, graded, low, high = shares["strong"]
    assert 0.09 < noisy < 0.21 and 0.35 < graded < 0.6
    assert low < shares["light"][2] and high > shares["light"][3]
    with pytest.raises(ValueError, match="augment intensity 'heavy': expected one of light"):
        augmenter(0, "d4", intensity="heavy")
