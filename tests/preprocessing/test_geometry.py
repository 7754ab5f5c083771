"""Orientation, breast crop, CLAHE/resize alignment and the exact inverse mapping."""

import dataclasses

import cv2
import numpy as np
import pytest

from mammoray.core.config import CropConfig, DataConfig
from preprocessing import geometry
from preprocessing.dicom_io import DicomImage
from preprocessing.transform import preprocess_image

pytestmark = pytest.mark.unit

H, W = 400, 300
BREAST_BOX = (0, 60, 181, 341)  # half ellipse centred (0, 200), semi-axes 180 x 140


def film_image():
    """Breast on the left, a burnt-in label, and bright borders on three edges that join the
    breast through the chest-wall strip: a naive largest-component crop takes the frame."""
    img = np.full((H, W), 2000, np.uint16)
    breast = np.zeros((H, W), np.uint8)
    cv2.ellipse(breast, (0, 200), (180, 140), 0, -90, 90, 1, -1)
    img[breast > 0] = 30000
    label = np.zeros((H, W), np.uint8)  # OpenCV draws text on 8-bit images only
    cv2.putText(label, "LCC", (200, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 255, 3)
    img[label > 0] = 60000
    img[:, :6] = 60000      # chest-wall-side scanner border
    img[388:, :] = 60000    # bottom film edge
    img[:, 290:] = 60000    # outer film edge
    return img, breast


def test_naive_crop_takes_the_whole_frame():
    img, _ = film_image()
    naive = CropConfig(opening_fraction=0.0, border_depth_fraction=0.0, margin_fraction=0.0)
    assert geometry.find_breast_box(img, naive) == (0, 0, W, H)


def test_robust_crop_finds_the_breast():
    img, breast = film_image()
    ys, xs = np.nonzero(breast)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == BREAST_BOX
    box = geometry.find_breast_box(img, CropConfig())
    x0, y0, x1, y1 = box
    bx0, by0, bx1, by1 = BREAST_BOX
    # Contains the whole breast and is at most 2.5% of the long side (10 px: the 4 px margin
    # plus blur halo) larger on each side; the naive crop above was 60-120 px off.
    assert x0 <= bx0 and y0 <= by0 and x1 >= bx1 and y1 >= by1
    assert by0 - y0 <= 10 and x1 - bx1 <= 10 and y1 - by1 <= 10
    assert x1 < 290 and y1 < 388  # no border strip inside


def test_crop_on_thumbnail_scales_back():
    img, _ = film_image()
    big = cv2.resize(img, (W * 4, H * 4), interpolation=cv2.INTER_NEAREST)
    x0, y0, x1, y1 = geometry.find_breast_box(big, CropConfig(thumbnail=400))
    # Found on a 4x smaller thumbnail: the full-size bounds, times 4.
    assert x0 == 0 and abs(y0 - 4 * 60) <= 4 * 10 and abs(x1 - 4 * 181) <= 4 * 10
    assert abs(y1 - 4 * 341) <= 4 * 10 and y0 <= 4 * 60 and x1 >= 4 * 181


@pytest.mark.parametrize("laterality,orientation,mode,expected", [
    ("L", "A", "auto", (False, "orientation")),
    ("L", "P", "auto", (True, "orientation")),      # header pixels say chest wall right
    ("R", None, "auto", (True, "laterality")),
    ("L", None, "auto", (False, "laterality")),
    (None, None, "auto", (True, "image")),          # tissue is on the right in this image
    ("L", "A", "image", (True, "image")),
    ("R", "P", "none", (False, "none")),
])
def test_needs_flip(laterality, orientation, mode, expected):
    img, _ = film_image()
    mirrored = np.ascontiguousarray(img[:, ::-1])
    assert geometry.needs_flip(mirrored, laterality, orientation, mode) == expected


def test_image_fallback_on_plain_breast():
    img, _ = film_image()
    assert geometry.chest_wall_left_from_image(img)
    assert not geometry.chest_wall_left_from_image(np.ascontiguousarray(img[:, ::-1]))


def _dicom(pixels, laterality=None, orientation=None):
    return DicomImage(pixels=pixels, laterality=laterality, view="CC",
                      orientation_row=orientation, pixel_spacing=None, patient_id=None,
                      sop_instance_uid=None)


def test_mask_stays_aligned_through_flip_crop_clahe_resize():
    img, breast = film_image()
    img = np.ascontiguousarray(img[:, ::-1])  # a right breast as written
    mask = np.zeros((H, W), np.uint8)
    mask[150:190, 200:240] = 1                # in the mirrored frame
    img[mask > 0] = 50000
    cfg = DataConfig(size=128)
    out = preprocess_image(_dicom(img, "R"), mask, cfg)
    g = out.geometry
    assert g.flipped and g.orig_height == H and g.orig_width == W
    assert out.mask.dtype == np.uint8 and set(np.unique(out.mask)) == {0, 1}
    # The mask marks the bright square: every masked pixel is brighter than the breast
    # around it, before and after CLAHE (it moves only intensities, never positions).
    breast_level = np.median(out.image[(out.mask == 0) & (out.image > 20000)])
    assert out.image[out.mask > 0].min() > breast_level
    # Exactly the coverage (area-averaged) resize of the cropped, flipped mask, >= 0.5.
    ox0, oy0, ox1, oy1 = g.crop  # original (written) coordinates
    cover = cv2.resize(np.ascontiguousarray(mask[oy0:oy1, ox0:ox1][:, ::-1]).astype(np.float32),
                       (128, 128), interpolation=cv2.INTER_AREA)
    expected = (cover >= 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out.mask, expected)


def test_to_original_is_exact_without_resampling():
    rng = np.random.default_rng(3)
    img = rng.integers(1000, 60000, (64, 64)).astype(np.uint16)
    mask = (rng.random((64, 64)) > 0.7).astype(np.uint8)
    cfg = DataConfig(size=64, crop=CropConfig(enabled=False), clahe_clip_limit=0.0)
    out = preprocess_image(_dicom(img, "R"), mask, cfg)
    assert out.geometry.flipped
    np.testing.assert_array_equal(out.mask, mask[:, ::-1])
    np.testing.assert_array_equal(geometry.to_original(out.mask, out.geometry, nearest=True),
                                  mask)


@pytest.mark.parametrize("pad", [False, True])
def test_to_original_round_trip_after_crop_and_resize(pad):
    img, _ = film_image()
    img = np.ascontiguousarray(img[:, ::-1])
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, (220, 190), 50, 1, -1)
    cfg = DataConfig(size=256, pad_to_square=pad)
    out = preprocess_image(_dicom(img, "R"), mask, cfg)
    back = geometry.to_original(out.mask.astype(np.float32), out.geometry) >= 0.5
    assert back.shape == (H, W)
    iou = np.logical_and(back, mask).sum() / np.logical_or(back, mask).sum()
    # Resampled twice, the outline of a ~43 px (output) radius mass moves by under half a
    # pixel: IoU >= 1 - 1/r ~ 0.977.
    assert iou >= 0.97
    # Nothing outside the crop, and the flip is undone (the mass is where it was drawn).
    ys, xs = np.nonzero(back)
    assert abs(xs.mean() - 220) < 1.0 and abs(ys.mean() - 190) < 1.0


def test_pad_to_square_keeps_aspect():
    crop = np.zeros((100, 50), np.uint16)
    crop[:, :] = 1000
    out = geometry.resize_square(crop, 100, pad_to_square=True, mask=False)
    assert out.shape == (100, 100)
    assert (out[:, :50] == 1000).all() and (out[:, 50:] == 0).all()


def test_to_original_rejects_wrong_shape():
    g = geometry.Geometry(10, 10, False, (0, 0, 10, 10), 8, False)
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        geometry.to_original(np.zeros((4, 4), np.uint8), g)


def test_clahe_switch_and_dtype():
    img, _ = film_image()
    assert geometry.apply_clahe(img, 0.0, 8) is img
    out = geometry.apply_clahe(img, 2.0, 8)
    assert out.dtype == np.uint16 and out.shape == img.shape and not np.array_equal(out, img)


def test_clahe_limit_on_16_bit_and_on_8_bit_histograms():
    """OpenCV clips a tile's histogram at limit x tile pixels / bins counts, at least 1: on a
    16-bit histogram of 64 x 64 tiles every limit below 16 is 1 count, so 1, 2 and 4 give the
    same pixels; on 256 bins they are 16, 32 and 64 counts, and differ."""
    rng = np.random.default_rng(3)
    img = np.zeros((512, 512), np.uint16)
    img[:, 256:] = 20000  # a step, and a faint mass on the bright side
    cv2.circle(img, (380, 250), 40, 26000, -1)
    img = (img + rng.normal(0, 2500, img.shape).clip(0, None)).astype(np.uint16)
    wide = [geometry.apply_clahe(img, limit, 8) for limit in (1.0, 2.0, 4.0)]
    assert np.array_equal(wide[0], wide[1]) and np.array_equal(wide[1], wide[2])
    narrow = [geometry.apply_clahe(img, limit, 8, bins=256) for limit in (1.0, 2.0, 4.0)]
    assert not np.array_equal(narrow[0], narrow[1]) and not np.array_equal(narrow[1], narrow[2])

    def contrast(out):  # the mass against the bright side around it, in units of 0-65535
        ring = np.zeros(img.shape, np.uint8)
        cv2.circle(ring, (380, 250), 70, 1, -1)
        cv2.circle(ring, (380, 250), 50, 0, -1)
        inside = np.zeros(img.shape, np.uint8)
        cv2.circle(inside, (380, 250), 30, 1, -1)
        return out[inside > 0].mean() - out[ring > 0].mean()

    # A higher limit equalises more: the mass stands out more, up to the 16-bit CLAHE's
    # strongest; every output is on the 16-bit scale (an 8-bit value v becomes 257 v).
    gains = [contrast(o) for o in narrow]
    assert contrast(img) < gains[0] < gains[1] < gains[2] <= contrast(wide[0]) * 1.05
    for out in narrow:
        assert out.dtype == np.uint16 and not (out % 257).any()
    # Pixels whose top 8 bits are equal get the same value (the same 8-bit CLAHE input).
    same = (img >> 8) == (img[0, 0] >> 8)
    assert np.unique(narrow[1][:64, :64][same[:64, :64]]).size == 1
    with pytest.raises(ValueError, match="256 or 65536"):
        geometry.apply_clahe(img, 2.0, 8, bins=4096)


def test_geometry_is_frozen():
    g = geometry.Geometry(10, 10, False, (0, 0, 10, 10), 8, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.flipped = True


@pytest.mark.parametrize("laterality", ["L", "R"])
def test_synthetic_mask_round_trip_at_1024(laterality):
    """The issue's round trip: a synthetic full-field mammogram's mask through preprocessing
    (flip, breast crop, resize to 1024) and back with an identity "model" (the preprocessed
    mask itself) matches the original mask."""
    from mammoray.synthetic.images import synthesize_image

    rng = np.random.default_rng(11)
    img = synthesize_image(rng, 2600, 2000, laterality, "MLO", film=True, n_masses=2)
    assert img.mask.sum() > 0
    dicom = DicomImage(pixels=img.stored, laterality=laterality, view="MLO",
                       orientation_row=None, pixel_spacing=None, patient_id=None,
                       sop_instance_uid=None)
    out = preprocess_image(dicom, img.mask, DataConfig(size=1024))
    assert out.geometry.flipped == (laterality == "R")
    x0, y0, x1, y1 = out.geometry.crop
    assert (x1 - x0) < 2000 or (y1 - y0) < 2600  # the film border was cropped away
    back = geometry.to_original(out.mask.astype(np.float32), out.geometry) >= 0.5
    iou = np.logical_and(back, img.mask).sum() / np.logical_or(back, img.mask).sum()
    assert iou >= 0.98


def test_round_trip_at_high_resolution_through_the_sliding_window():
    """Patch training's setup (issue 17): the breast's long side at 2048 px with its aspect
    ratio kept; an identity "model" applied through 512-px sliding windows (Gaussian blending)
    and the result mapped back to the original grid matches the original mask."""
    from mammoray.model.window import sliding_window
    from mammoray.synthetic.images import synthesize_image

    rng = np.random.default_rng(12)
    img = synthesize_image(rng, 3000, 2400, "L", "CC", film=False, n_masses=2)
    dicom = DicomImage(pixels=img.stored, laterality="L", view="CC", orientation_row=None,
                       pixel_spacing=None, patient_id=None, sop_instance_uid=None)
    out = preprocess_image(dicom, img.mask, DataConfig(size=2048, pad_to_square=True))
    x0, y0, x1, y1 = out.geometry.crop
    assert out.mask.shape == (2048, 2048)
    # The long side fills the output, the short one keeps the aspect ratio (padded).
    rows = np.flatnonzero(out.image.max(axis=1) > 0)
    cols = np.flatnonzero(out.image.max(axis=0) > 0)
    long_side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    assert long_side >= 2000
    blended = sliding_window(lambda w: w[..., 0], out.mask.astype(np.float32)[None, ..., None],
                             512, overlap=0.5)[0]
    assert np.max(np.abs(blended - out.mask)) < 1e-6
    back = geometry.to_original(blended, out.geometry) >= 0.5
    iou = np.logical_and(back, img.mask).sum() / np.logical_or(back, img.mask).sum()
    assert iou >= 0.98 and back.shape == img.mask.shape


# --------------------------------------------------------- scanned film with margins (issue 13)

def _mono2(img) -> np.ndarray:
    """A synthetic image's stored values as the reader gives them: MONOCHROME2 uint16 over
    the full range."""
    s = img.stored.astype(np.float64)
    if img.photometric == "MONOCHROME1":
        s = (1 << img.bits_stored) - 1 - s
    return np.rint((s - s.min()) / (s.max() - s.min()) * 65535).astype(np.uint16)


def _naive_chest_wall_left(image: np.ndarray) -> bool:
    """The frame's outer fifths, as orientation was judged before: tissue at the chest wall,
    air at the nipple; on film with margins they hold background, labels and film edges."""
    thumb, _ = geometry.thumbnail(image, 256)
    _, fg = cv2.threshold(geometry.to_uint8(thumb), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    cols = fg.sum(axis=0)
    k = cols.size // 5
    return bool(cols[:k].sum() >= cols[-k:].sum())


def _views(n: int):
    for i in range(n):
        yield i, "LR"[i % 2], ("CC", "MLO")[(i // 2) % 2]


def test_orientation_from_the_breast_on_scanned_film_with_margins():
    """200 scanned films with background margins on both sides, film edges and labels at
    random, no header: the chest wall's side from the breast itself, at least 99% right. The
    frame's outer fifths get about a quarter wrong on the same images (the trait is there)."""
    from mammoray.synthetic.images import synthesize_scanned

    right = naive = 0
    for i, lat, view in _views(200):
        rng = np.random.default_rng([101, i])
        img = synthesize_scanned(rng, 320, 256, lat, view, n_masses=int(rng.integers(0, 3)))
        pixels = _mono2(img)
        right += geometry.chest_wall_left_from_image(pixels) == (img.chest_wall == "left")
        naive += _naive_chest_wall_left(pixels) == (img.chest_wall == "left")
    assert right / 200 >= 0.99
    assert naive / 200 <= 0.8


@pytest.mark.parametrize("film", [False, True])
def test_orientation_from_the_breast_on_the_other_layouts(film):
    """No regression on the generator's other images: digital (MONOCHROME1 included) and
    film with bright borders touching the breast."""
    from mammoray.synthetic.images import synthesize_image

    for i, lat, view in _views(100):
        rng = np.random.default_rng([102, i])
        img = synthesize_image(rng, 320, 256, lat, view, film=film,
                               monochrome1=bool(rng.random() < 0.2))
        assert geometry.chest_wall_left_from_image(_mono2(img)) == (lat == "L"), (i, lat, view)


def _through(truth: np.ndarray, g: geometry.Geometry) -> np.ndarray:
    """A (H, W) 0/1 truth through a row's geometry (flip, crop, resize): each output pixel's
    coverage."""
    x0, y0, x1, y1 = g.crop
    part = truth[y0:y1, x0:x1].astype(np.float32)
    if g.flipped:
        part = np.ascontiguousarray(part[:, ::-1])
    interp = cv2.INTER_AREA if min(part.shape) >= g.size else cv2.INTER_LINEAR
    return cv2.resize(part, (g.size, g.size), interpolation=interp)


@pytest.mark.parametrize("clahe_at", ["crop", "output"])
def test_only_the_breast_reaches_the_model(clahe_at):
    """data.breast_only (the default): on 40 scanned films no output pixel that covers any
    label or marker pixel is non-zero, and every output pixel that is mostly breast (coverage
    >= 0.5) is kept, with CLAHE at either place. The seed study's setting (off) keeps the
    labels in the image."""
    from mammoray.synthetic.images import synthesize_scanned

    label_pixels = kept_with_study = 0
    for i, lat, view in _views(40):
        rng = np.random.default_rng([202, i])
        img = synthesize_scanned(rng, 512, 416, lat, view, n_masses=1)
        dicom = _dicom(_mono2(img))
        out = preprocess_image(dicom, img.mask, DataConfig(size=256, clahe_at=clahe_at))
        assert out.geometry.flipped == (lat == "R")
        labels = _through(img.labels, out.geometry) > 0
        label_pixels += int(labels.sum())
        assert not out.image[labels].any(), (i, lat, view)
        breast = _through(img.breast, out.geometry) >= 0.5
        assert not (breast & (out.breast == 0)).any(), (i, lat, view)
        assert not out.image[out.breast == 0].any()
        study = preprocess_image(dicom, img.mask, DataConfig(size=256, breast_only=False))
        kept_with_study += int((study.image[_through(img.labels, study.geometry) > 0.5]
                                > 40000).sum())
        assert study.breast is None
    assert label_pixels > 5000 and kept_with_study > 1000  # labels were really in the crops


def test_sparse_mask_resize_on_a_hand_made_mask():
    """8 x 8 -> 4 x 4 (each output pixel covers 2 x 2): a 3 x 3 block at (1, 1) covers 1/4,
    2/4, 2/4 and 4/4 of the four output pixels it meets; >= 0.5 keeps three."""
    mask = np.zeros((8, 8), np.uint8)
    mask[1:4, 1:4] = 1
    want = np.zeros((4, 4), np.uint8)
    want[0, 1] = want[1, 0] = want[1, 1] = 1
    assert np.array_equal(geometry.resize_mask_sparse(mask, 4, pad_to_square=False), want)
    assert np.array_equal(geometry.resize_square(mask, 4, pad_to_square=False, mask=True), want)


@pytest.mark.parametrize("pad", [True, False])
def test_sparse_mask_resize_equals_the_full_resize(pad):
    """On random ellipses at random scales the two agree everywhere except at coverage ties
    (exactly 0.5, where float rounding decides)."""
    rng = np.random.default_rng(7)
    compared = differing = 0
    for _ in range(120):
        h, w = (int(v) for v in rng.integers(40, 700, 2))
        size = int(rng.integers(8, min(h, w) + 1))
        mask = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(0, 4))):
            cv2.ellipse(mask, (int(rng.integers(0, w)), int(rng.integers(0, h))),
                        (int(rng.integers(1, 60)), int(rng.integers(1, 60))),
                        float(rng.integers(0, 180)), 0, 360, 1, -1)
        full = geometry.resize_square(mask, size, pad_to_square=pad, mask=True)
        sparse = geometry.resize_mask_sparse(mask, size, pad_to_square=pad)
        padded = mask
        if pad:
            side = max(h, w)
            padded = np.zeros((side, side), np.uint8)
            padded[:h, :w] = mask
        cover = cv2.resize(padded.astype(np.float64), (size, size), interpolation=cv2.INTER_AREA)
        ties = np.abs(cover - 0.5) < 1e-6
        assert np.array_equal(full[~ties], sparse[~ties])
        compared += full.size
        differing += int((full != sparse).sum())
    assert differing < compared * 1e-4


def test_count_regions_inside_the_bounding_box():
    mask = np.zeros((300, 200), np.uint8)
    assert geometry.count_regions(mask) == 0
    mask[10:20, 10:20] = 1
    mask[20:30, 20:30] = 1        # touches the first only diagonally: 8-connected, one region
    mask[200:210, 150:190] = 1
    mask[250, 5] = 1
    assert geometry.count_regions(mask) == 3


@pytest.mark.parametrize("pad", [True, False])
def test_clahe_at_output_is_clahe_of_the_resized_crop(pad):
    """clahe_at=output: the image equals CLAHE (same clip and tiles) of the resized crop, on the
    crop's part of the output only (padding stays 0); the geometry and mask equal crop mode's."""
    img, _ = film_image()
    mask = np.zeros((H, W), np.uint8)
    mask[150:190, 40:80] = 1
    base = DataConfig(size=128, pad_to_square=pad, breast_only=False)
    at_crop = preprocess_image(_dicom(img, "L"), mask, base)
    out = preprocess_image(_dicom(img, "L"), mask, dataclasses.replace(base, clahe_at="output"))
    assert out.geometry == at_crop.geometry
    np.testing.assert_array_equal(out.mask, at_crop.mask)
    x0, y0, x1, y1 = out.geometry.crop
    resized = geometry.resize_square(img[y0:y1, x0:x1], 128, pad_to_square=pad, mask=False)
    hh, ww = geometry.content_shape((y1 - y0, x1 - x0), 128, pad)
    want = resized.copy()
    want[:hh, :ww] = geometry.apply_clahe(np.ascontiguousarray(resized[:hh, :ww]), 2.0, 8)
    np.testing.assert_array_equal(out.image, want)
    if pad:
        assert (hh, ww) != (128, 128) and not out.image[hh:, :].any() | out.image[:, ww:].any()
    assert not np.array_equal(out.image, resized)  # CLAHE did change it


@pytest.mark.parametrize("clahe_at,bins", [("crop", 65536), ("output", 65536), ("crop", 256),
                                           ("output", 256)])
def test_breast_only_masks_the_full_resolution_crop(clahe_at, bins):
    """With data.breast_only, the crop is zeroed outside the (grown) breast at full resolution,
    before CLAHE and the resize, at either CLAHE place: no pixel outside it (background, the
    film's scanner border next to the breast, labels) is averaged into an output pixel. The
    image equals those steps done by hand; masking only the resized image instead would let
    the outside into the output pixels along the breast's edge."""
    from preprocessing.transform import breast_margin

    img, _ = film_image()
    cfg = DataConfig(size=128, clahe_at=clahe_at, clahe_bins=bins)
    out = preprocess_image(_dicom(img, "L"), None, cfg)
    assert not out.geometry.flipped
    region = geometry.find_breast(img, cfg.crop)
    x0, y0, x1, y1 = region.box
    keep = geometry.breast_mask_in_box(region, margin=breast_margin(cfg, H, W))
    crop = img[y0:y1, x0:x1] * keep
    assert (crop == 0).any() and (img[y0:y1, x0:x1][keep == 0] > 0).all()  # outside was lit
    if clahe_at == "crop":
        want = geometry.resize_square(geometry.apply_clahe(crop, 2.0, 8, bins), 128,
                                      pad_to_square=False, mask=False)
    else:
        want = geometry.apply_clahe(
            geometry.resize_square(crop, 128, pad_to_square=False, mask=False), 2.0, 8, bins)
    breast = geometry.resize_square(keep, 128, pad_to_square=False, mask="nearest")
    np.testing.assert_array_equal(out.breast, breast)
    np.testing.assert_array_equal(out.image, want * breast)
