"""Geometric preprocessing steps and their exact inverse.

Conventions: images are (H, W) arrays, row-major; x = column, y = row. Boxes are
(x0, y0, x1, y1), end-exclusive. After orientation the chest wall is on the LEFT (column 0).
The crop box is recorded in ORIGINAL pixel coordinates (before the flip), so a prediction can be
mapped back onto the DICOM's own grid with :func:`to_original`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mammoray.core.config import CropConfig

Box = tuple[int, int, int, int]

# PatientOrientation's first value is the patient direction of increasing column index. 'A'
# (anterior) means columns run from the chest wall towards the nipple: chest wall on the left.
_CHEST_WALL_LEFT = {"A": True, "P": False}
# Convention without PatientOrientation: left breasts are shown chest wall left, right breasts
# chest wall right (the two views face each other on a reading screen).
_LATERALITY_CHEST_WALL_LEFT = {"L": True, "R": False}


@dataclass(frozen=True)
class Geometry:
    """Everything needed to map a (size, size) output back onto the original grid."""

    orig_height: int
    orig_width: int
    flipped: bool
    crop: Box  # original coordinates, end-exclusive
    size: int
    pad_to_square: bool


def chest_wall_left_from_image(image: np.ndarray) -> bool:
    """True if the breast's mass of tissue sits on the left half (image-based fallback)."""
    thumb, _ = thumbnail(image, 256)
    _, fg = cv2.threshold(to_uint8(thumb), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    cols = fg.sum(axis=0).astype(np.float64)
    w = cols.size
    # Compare the outer fifths: the chest-wall edge is full of tissue, the nipple side is air.
    k = max(1, w // 5)
    return bool(cols[:k].sum() >= cols[w - k:].sum())


def needs_flip(image: np.ndarray, laterality: str | None, orientation_row: str | None,
               mode: str) -> tuple[bool, str]:
    """Whether to flip left-right so the chest wall is on the left, and what decided it."""
    if mode == "none":
        return False, "none"
    if mode == "auto":
        if orientation_row and orientation_row[0] in _CHEST_WALL_LEFT:
            return not _CHEST_WALL_LEFT[orientation_row[0]], "orientation"
        if laterality in _LATERALITY_CHEST_WALL_LEFT:
            return not _LATERALITY_CHEST_WALL_LEFT[laterality], "laterality"
    return not chest_wall_left_from_image(image), "image"


def thumbnail(image: np.ndarray, long_side: int) -> tuple[np.ndarray, int]:
    """Area-downsampled copy by an integer factor k (long side at most ``long_side``) and k.

    An integer factor takes OpenCV's fast area path (much faster than an arbitrary scale on a
    full-field image; docs/decisions.md); up to k - 1 trailing rows/columns are left out of the
    thumbnail.
    """
    h, w = image.shape[:2]
    k = max(1, -(-max(h, w) // long_side))
    if k == 1:
        return image, 1
    th, tw = h // k, w // k
    view = image[: th * k, : tw * k]
    return cv2.resize(view, (tw, th), interpolation=cv2.INTER_AREA), k


def to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    raise TypeError(f"expected uint8 or uint16, got {image.dtype}")


def _border_band_depth(fg: np.ndarray, fill: float, max_depth: int) -> int:
    """How many leading rows of ``fg`` (0/1) are a border band (fraction >= fill)."""
    depth = 0
    fractions = fg[:max_depth].mean(axis=1) if max_depth > 0 else np.zeros(0)
    for frac in fractions:
        if frac < fill:
            break
        depth += 1
    return depth


def breast_mask_thumbnail(thumb: np.ndarray, cfg: CropConfig) -> np.ndarray:
    """Binary (0/1 uint8) breast mask on a thumbnail whose chest wall is on the left.

    Gaussian blur + Otsu + largest component as in the seed study; the threshold may sit below
    Otsu's (``threshold_fraction``) to keep the thin fatty edge; two guards for scanned film:
    full-length bright bands along the top, bottom and right edges are removed, and a
    morphological opening cuts thin bright structures (film borders, tape, label strokes) off
    the breast before the largest component is taken.
    """
    img8 = to_uint8(thumb)
    if cfg.blur_kernel > 1:
        img8 = cv2.GaussianBlur(img8, (cfg.blur_kernel, cfg.blur_kernel), 0)
    otsu, fg = cv2.threshold(img8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if cfg.threshold_fraction < 1.0:
        below = img8[fg == 0]
        background = float(np.median(below)) if below.size else 0.0
        level = background + cfg.threshold_fraction * (otsu - background)
        fg = (img8 > level).astype(np.uint8)
    h, w = fg.shape
    depth_y = int(cfg.border_depth_fraction * h)
    depth_x = int(cfg.border_depth_fraction * w)
    top = _border_band_depth(fg, cfg.border_fill, depth_y)
    bottom = _border_band_depth(fg[::-1], cfg.border_fill, depth_y)
    right = _border_band_depth(fg.T[::-1], cfg.border_fill, depth_x)
    fg[:top] = 0
    fg[h - bottom:] = 0
    fg[:, w - right:] = 0
    k = int(round(cfg.opening_fraction * max(h, w)))
    if k >= 2:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k | 1, k | 1))
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count <= 1:
        return np.zeros_like(fg)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == largest).astype(np.uint8)


def find_breast_box(image: np.ndarray, cfg: CropConfig) -> Box:
    """Breast bounding box (x0, y0, x1, y1), end-exclusive, in ``image``'s coordinates.

    ``image`` is oriented (chest wall on the left). Falls back to the whole image when no
    foreground is found.
    """
    h, w = image.shape
    thumb, k = thumbnail(image, cfg.thumbnail)
    mask = breast_mask_thumbnail(thumb, cfg)
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return (0, 0, w, h)
    th, tw = mask.shape
    margin = cfg.margin_fraction * max(h, w)
    x0 = int(np.floor(xs.min() * k - margin))
    y0 = int(np.floor(ys.min() * k - margin))
    # Reaching the thumbnail's last column/row means reaching the image's edge (the < k
    # trailing pixels the thumbnail left out).
    x1 = w if xs.max() + 1 == tw else int(np.ceil((xs.max() + 1) * k + margin))
    y1 = h if ys.max() + 1 == th else int(np.ceil((ys.max() + 1) * k + margin))
    return (max(0, x0), max(0, y0), min(w, x1), min(h, y1))


def box_to_original(box: Box, width: int, flipped: bool) -> Box:
    """Map a box between oriented and original coordinates (the mapping is its own inverse)."""
    x0, y0, x1, y1 = box
    if not flipped:
        return box
    return (width - x1, y0, width - x0, y1)


def apply_clahe(image: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
    """CLAHE on a uint16 image (OpenCV supports 16-bit CLAHE); clip_limit 0 = unchanged."""
    if clip_limit <= 0:
        return image
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid))
    return clahe.apply(image)  # a crop view (positive strides) needs no copy


def resize_square(image: np.ndarray, size: int, *, pad_to_square: bool,
                  mask: bool) -> np.ndarray:
    """(h, w) -> (size, size). With ``pad_to_square`` the crop is first padded with zeros on the
    right and bottom to max(h, w) square (aspect kept).

    Images: area averaging when shrinking, bilinear when enlarging. Masks (``mask=True``, 0/1
    uint8): the same resampling of the mask as a coverage fraction, then >= 0.5, so a pixel is
    mass when at least half of what it covers is. Nearest-neighbour sampling instead moves an
    outline by up to half an output pixel (docs/decisions.md).
    """
    h, w = image.shape
    if pad_to_square and h != w:
        side = max(h, w)
        padded = np.zeros((side, side), dtype=image.dtype)
        padded[:h, :w] = image
        image = padded
    if image.shape == (size, size):
        return np.ascontiguousarray(image)
    shrinking = image.shape[0] >= size and image.shape[1] >= size
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    if mask:
        cover = cv2.resize(image.astype(np.float32), (size, size), interpolation=interp)
        return (cover >= 0.5).astype(np.uint8)
    return cv2.resize(image, (size, size), interpolation=interp)


def to_original(output: np.ndarray, geometry: Geometry, *,
                nearest: bool = False) -> np.ndarray:
    """Map a (size, size) array back onto the (orig_h, orig_w) grid.

    Undoes resize (and padding), crop and flip, in that order; pixels outside the crop are 0.
    Give it probabilities (float) and threshold the result: bilinear resampling of a
    probability map restores outlines more faithfully than nearest-neighbour on a binary mask
    (``nearest=True`` keeps labels exact, e.g. for integer label maps).
    """
    if output.shape != (geometry.size, geometry.size):
        raise ValueError(f"expected a ({geometry.size}, {geometry.size}) array, got "
                         f"{output.shape}")
    x0, y0, x1, y1 = box_to_original(geometry.crop, geometry.orig_width, geometry.flipped)
    ch, cw = y1 - y0, x1 - x0
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if geometry.pad_to_square and ch != cw:
        side = max(ch, cw)
        restored = cv2.resize(output, (side, side), interpolation=interp)[:ch, :cw]
    else:
        restored = cv2.resize(output, (cw, ch), interpolation=interp)
    canvas = np.zeros((geometry.orig_height, geometry.orig_width), dtype=output.dtype)
    canvas[y0:y1, x0:x1] = restored
    if geometry.flipped:
        canvas = np.ascontiguousarray(canvas[:, ::-1])
    return canvas
