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
from mammoray.core.shrinking import shrink, shrink_factor

Box = tuple[int, int, int, int]

# PatientOrientation's first value is the patient direction of increasing column index. 'A'
# (anterior) means columns run from the chest wall towards the nipple: chest wall on the left.
_CHEST_WALL_LEFT = {"A": True, "P": False}
# Convention without PatientOrientation: left breasts are shown chest wall left, right breasts
# chest wall right (the two views face each other on a reading screen).
_LATERALITY_CHEST_WALL_LEFT = {"L": True, "R": False}


ALL_SIDES = ("top", "bottom", "left", "right")
NON_CHEST_WALL_SIDES = ("top", "bottom", "right")


@dataclass(frozen=True)
class Geometry:
    """Everything needed to map a (size, size) output back onto the original grid."""

    orig_height: int
    orig_width: int
    flipped: bool
    crop: Box  # original coordinates, end-exclusive
    size: int
    pad_to_square: bool


def chest_wall_left_from_image(image: np.ndarray, cfg: CropConfig | None = None) -> bool:
    """True if the chest wall is on the image's left, judged from the breast itself.

    The breast region is segmented on a thumbnail without assuming a side (bright bands along
    any edge removed, labels, markers and film edges cut off by the opening, the largest
    component kept). Within the region's own horizontal extent, the chest-wall side is where
    the breast is tall (it spans the chest wall, with the pectoral muscle and axillary tail on
    MLO views); the nipple side tapers to a point. So the side whose outer fifth of the region
    holds the taller columns is the chest wall: background margins, labels on either side and
    film edges do not enter the comparison. Falls back to the frame's outer fifths when no
    region is found.
    """
    cfg = cfg or CropConfig()
    thumb, _ = thumbnail(image, min(cfg.thumbnail, 256))
    region = breast_mask_thumbnail(thumb, cfg, sides=ALL_SIDES)
    cols = region.sum(axis=0).astype(np.float64)
    if not cols.any():
        _, fg = cv2.threshold(to_uint8(thumb), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        cols = fg.sum(axis=0).astype(np.float64)
    xs = np.nonzero(cols)[0]
    if xs.size == 0:
        return True
    heights = cols[xs.min():xs.max() + 1]
    k = max(1, heights.size // 5)
    return bool(heights[:k].mean() >= heights[-k:].mean())


def needs_flip(image: np.ndarray, laterality: str | None, orientation_row: str | None,
               mode: str, crop: CropConfig | None = None) -> tuple[bool, str]:
    """Whether to flip left-right so the chest wall is on the left, and what decided it."""
    if mode == "none":
        return False, "none"
    if mode == "auto":
        if orientation_row and orientation_row[0] in _CHEST_WALL_LEFT:
            return not _CHEST_WALL_LEFT[orientation_row[0]], "orientation"
        if laterality in _LATERALITY_CHEST_WALL_LEFT:
            return not _LATERALITY_CHEST_WALL_LEFT[laterality], "laterality"
    return not chest_wall_left_from_image(image, crop), "image"


def thumbnail(image: np.ndarray, long_side: int) -> tuple[np.ndarray, int]:
    """Area-downsampled copy by an integer factor k (long side at most ``long_side``) and k.

    An integer factor takes OpenCV's fast area path (much faster than an arbitrary scale on a
    full-field image; docs/decisions.md); up to k - 1 trailing rows/columns are left out of the
    thumbnail.
    """
    k = shrink_factor(image.shape, long_side)
    return shrink(image, k, cv2.INTER_AREA, edges="trim"), k


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


def _levels(thumb: np.ndarray, cfg: CropConfig) -> tuple[np.ndarray, float, float]:
    """(blurred 8-bit thumbnail, background level, Otsu's threshold): the background level is
    the median of what Otsu puts below its threshold."""
    img8 = to_uint8(thumb)
    if cfg.blur_kernel > 1:
        img8 = cv2.GaussianBlur(img8, (cfg.blur_kernel, cfg.blur_kernel), 0)
    otsu, fg = cv2.threshold(img8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    below = img8[fg == 0]
    return img8, float(np.median(below)) if below.size else 0.0, float(otsu)


def breast_with_edge(thumb: np.ndarray, core: np.ndarray, cfg: CropConfig) -> np.ndarray:
    """The breast ``core`` (:func:`breast_mask_thumbnail`) grown into its faint fatty edge:
    thumbnail pixels above ``edge_fraction`` between background and Otsu's threshold, within
    ``edge_depth_fraction`` of the long side from the core, and connected to it. Labels and
    markers farther from the breast never join it."""
    if not core.any():
        return core
    img8, background, otsu = _levels(thumb, cfg)
    tissue = (img8 > background + cfg.edge_fraction * (otsu - background)).astype(np.uint8)
    reach = int(round(cfg.edge_depth_fraction * max(core.shape)))
    if reach > 0:
        near = cv2.dilate(core, cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                          (2 * reach + 1, 2 * reach + 1)))
        tissue &= near
    tissue |= core
    count, labels = cv2.connectedComponents(tissue, connectivity=8)
    touching = np.unique(labels[core > 0])
    return np.isin(labels, touching[touching > 0]).astype(np.uint8)


def breast_mask_thumbnail(thumb: np.ndarray, cfg: CropConfig,
                          sides: tuple[str, ...] = NON_CHEST_WALL_SIDES) -> np.ndarray:
    """Binary (0/1 uint8) breast mask on a thumbnail.

    Gaussian blur + Otsu + largest component as in the seed study; the threshold may sit below
    Otsu's (``threshold_fraction``) to keep the thin fatty edge; two guards for scanned film:
    full-length bright bands along the ``sides`` are removed (by default every side but the
    chest wall's, the left: the image is oriented), and a morphological opening cuts thin
    bright structures (film borders, tape, label strokes, markers) off the breast before the
    largest component is taken.
    """
    img8, background, otsu = _levels(thumb, cfg)
    level = background + cfg.threshold_fraction * (otsu - background)
    fg = (img8 > level).astype(np.uint8) if cfg.threshold_fraction < 1.0 else (
        img8 > otsu).astype(np.uint8)
    h, w = fg.shape
    depth_y = int(cfg.border_depth_fraction * h)
    depth_x = int(cfg.border_depth_fraction * w)
    # Band depths are all measured before any band is cleared.
    bands = {side: _border_band_depth(lines, cfg.border_fill, depth)
             for side, lines, depth in (("top", fg, depth_y), ("bottom", fg[::-1], depth_y),
                                        ("left", fg.T, depth_x), ("right", fg.T[::-1], depth_x))
             if side in sides}
    fg[:bands.get("top", 0)] = 0
    fg[h - bands.get("bottom", 0):] = 0
    fg[:, :bands.get("left", 0)] = 0
    fg[:, w - bands.get("right", 0):] = 0
    k = int(round(cfg.opening_fraction * max(h, w)))
    if k >= 2:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k | 1, k | 1))
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count <= 1:
        return np.zeros_like(fg)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == largest).astype(np.uint8)


@dataclass(frozen=True)
class BreastRegion:
    """The breast found on a thumbnail: ``box`` (x0, y0, x1, y1) in the image's coordinates,
    end-exclusive, margin included; ``mask`` the thumbnail's (th, tw) uint8 0/1 breast,
    its faint edge included (:func:`breast_with_edge`); ``factor`` the thumbnail's integer
    shrink factor (a thumbnail pixel covers factor x factor image pixels)."""

    box: Box
    mask: np.ndarray
    factor: int


def find_breast(image: np.ndarray, cfg: CropConfig) -> BreastRegion:
    """The breast of an oriented image (chest wall on the left). Its box falls back to the
    whole image when no foreground is found."""
    h, w = image.shape
    thumb, k = thumbnail(image, cfg.thumbnail)
    mask = breast_mask_thumbnail(thumb, cfg)
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return BreastRegion((0, 0, w, h), mask, k)
    edge = breast_with_edge(thumb, mask, cfg)
    th, tw = mask.shape
    margin = cfg.margin_fraction * max(h, w)
    x0 = int(np.floor(xs.min() * k - margin))
    y0 = int(np.floor(ys.min() * k - margin))
    # Reaching the thumbnail's last column/row means reaching the image's edge (the < k
    # trailing pixels the thumbnail left out).
    x1 = w if xs.max() + 1 == tw else int(np.ceil((xs.max() + 1) * k + margin))
    y1 = h if ys.max() + 1 == th else int(np.ceil((ys.max() + 1) * k + margin))
    return BreastRegion((max(0, x0), max(0, y0), min(w, x1), min(h, y1)), edge, k)


def find_breast_box(image: np.ndarray, cfg: CropConfig) -> Box:
    """Breast bounding box (x0, y0, x1, y1), end-exclusive, in ``image``'s coordinates
    (``image`` oriented: chest wall on the left); the whole image when no breast is found."""
    return find_breast(image, cfg).box


def breast_mask_in_box(region: BreastRegion, margin: int) -> np.ndarray:
    """The breast mask at full resolution over ``region.box``: (y1 - y0, x1 - x0) uint8 0/1,
    the thumbnail mask grown by ``margin`` image pixels (so the thumbnail's coarse outline
    loses no breast pixel) and scaled up. Everything outside it is not breast: background,
    labels, markers, film edges, tape."""
    x0, y0, x1, y1 = region.box
    k = region.factor
    if not region.mask.any():
        return np.ones((y1 - y0, x1 - x0), np.uint8)
    grow = int(np.ceil(margin / k))
    mask = region.mask
    if grow > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                          (2 * grow + 1, 2 * grow + 1)))
    # Thumbnail pixel (i, j) covers image pixels [i*k, (i+1)*k): scale the thumbnail block
    # under the box up by k (nearest: exact replication); image pixels past the thumbnail's
    # last row/column take its edge.
    th, tw = mask.shape
    ty0, tx0 = min(y0 // k, th - 1), min(x0 // k, tw - 1)
    ty1, tx1 = max(ty0 + 1, min(th, -(-y1 // k))), max(tx0 + 1, min(tw, -(-x1 // k)))
    block = mask[ty0:ty1, tx0:tx1]
    up = cv2.resize(block, (block.shape[1] * k, block.shape[0] * k),
                    interpolation=cv2.INTER_NEAREST)
    pad_y = max(0, y1 - ty1 * k)
    pad_x = max(0, x1 - tx1 * k)
    if pad_y or pad_x:
        up = np.pad(up, ((0, pad_y), (0, pad_x)), mode="edge")
    return np.ascontiguousarray(up[y0 - ty0 * k:y1 - ty0 * k, x0 - tx0 * k:x1 - tx0 * k])


def box_to_original(box: Box, width: int, flipped: bool) -> Box:
    """Map a box between oriented and original coordinates (the mapping is its own inverse)."""
    x0, y0, x1, y1 = box
    if not flipped:
        return box
    return (width - x1, y0, width - x0, y1)


def apply_clahe(image: np.ndarray, clip_limit: float, tile_grid: int,
                bins: int = 65536) -> np.ndarray:
    """CLAHE on a uint16 image; clip_limit 0 = unchanged.

    ``bins`` is the size of each tile's histogram. 65536: OpenCV's 16-bit CLAHE on the pixels
    as they are (the seed study). OpenCV clips each bin at ``clip_limit x tile pixels / bins``
    counts, at least 1, so on images of a few megapixels or less every limit below ~10 clips at
    1 count, the strongest equalisation. 256: the image's top 8 bits through OpenCV's 8-bit
    CLAHE, where the limit means what it does in most of the literature (2.0 = twice the mean
    count per bin), mapped back to the 16-bit range (x 257, so 255 -> 65535)."""
    if clip_limit <= 0:
        return image
    if bins not in (256, 65536):
        raise ValueError(f"CLAHE bins must be 256 or 65536, got {bins}")
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid))
    if bins == 65536:
        return clahe.apply(image)  # a crop view (positive strides) needs no copy
    top = (image >> 8).astype(np.uint8)
    return clahe.apply(top).astype(np.uint16) * np.uint16(257)


def resize_square(image: np.ndarray, size: int, *, pad_to_square: bool,
                  mask: bool | str) -> np.ndarray:
    """(h, w) -> (size, size). With ``pad_to_square`` the crop is first padded with zeros on the
    right and bottom to max(h, w) square (aspect kept).

    Images: area averaging when shrinking, bilinear when enlarging. Masks (``mask=True``, 0/1
    uint8): the same resampling of the mask as a coverage fraction, then >= 0.5, so a pixel is
    mass when at least half of what it covers is. Nearest-neighbour sampling instead moves an
    outline by up to half an output pixel (docs/decisions.md); ``mask="nearest"`` takes it,
    for masks whose outline is not that exact anyway (it is much cheaper at full field).
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
    if mask == "nearest":
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST)
    if mask:
        cover = cv2.resize(image.astype(np.float32), (size, size), interpolation=interp)
        return (cover >= 0.5).astype(np.uint8)
    return cv2.resize(image, (size, size), interpolation=interp)


def content_shape(shape: tuple[int, int], size: int, pad_to_square: bool) -> tuple[int, int]:
    """Rows and columns of a (size, size) :func:`resize_square` output that hold the (h, w)
    input; the rest is padding."""
    h, w = shape
    if not pad_to_square:
        return size, size
    side = max(h, w)
    return max(1, round(h * size / side)), max(1, round(w * size / side))


def resize_mask_sparse(mask: np.ndarray, size: int, *, pad_to_square: bool) -> np.ndarray:
    """:func:`resize_square` of a 0/1 mask (``mask=True``: area coverage >= 0.5), computed only
    around the mask's non-zero pixels.

    A mass covers a small part of a mammogram, and the full-size coverage resize of the whole
    crop cost more than everything else done to the mask. The area a shrunk output pixel
    covers is a rectangle with fractional edges; its mass area is read from the integral image
    of the mask's bounding box, interpolated bilinearly at the edges, which is exact for a
    pixelwise-constant image (the integral is bilinear inside each pixel). Equal to
    ``resize_square(mask=True)`` except where the coverage is within float rounding of 0.5.
    Enlarging (a crop smaller than ``size``) falls back to ``resize_square``.
    """
    h, w = mask.shape
    side_h, side_w = (max(h, w),) * 2 if pad_to_square else (h, w)
    if side_h < size or side_w < size:
        return resize_square(mask, size, pad_to_square=pad_to_square, mask=True)
    out = np.zeros((size, size), np.uint8)
    box = cv2.boundingRect(mask)
    if box[2] == 0 or box[3] == 0:
        return out
    x, y, bw, bh = box
    sy, sx = side_h / size, side_w / size
    # Output pixels whose footprint meets the box, and their edges in input coordinates.
    oy0, oy1 = int(y // sy), min(size, int(np.ceil((y + bh) / sy)))
    ox0, ox1 = int(x // sx), min(size, int(np.ceil((x + bw) / sx)))
    edges_y = np.clip(np.arange(oy0, oy1 + 1) * sy, y, y + bh) - y
    edges_x = np.clip(np.arange(ox0, ox1 + 1) * sx, x, x + bw) - x
    integral = cv2.integral(mask[y:y + bh, x:x + bw], sdepth=cv2.CV_64F)
    at = _interpolation_matrix(edges_y, bh) @ integral @ _interpolation_matrix(edges_x, bw).T
    area = np.diff(np.diff(at, axis=0), axis=1)
    out[oy0:oy1, ox0:ox1] = area >= 0.5 * sy * sx
    return out


def _interpolation_matrix(positions: np.ndarray, n: int) -> np.ndarray:
    """(len(positions), n + 1): linear interpolation at ``positions`` in [0, n] of values on
    the integer grid 0..n."""
    lower = np.minimum(np.floor(positions).astype(int), n - 1)
    frac = positions - lower
    matrix = np.zeros((len(positions), n + 1))
    rows = np.arange(len(positions))
    matrix[rows, lower] = 1.0 - frac
    matrix[rows, lower + 1] += frac
    return matrix


def count_regions(mask: np.ndarray) -> int:
    """8-connected regions of a 0/1 mask, labelled only inside its bounding box (a mass is a
    small part of a full-field mask; labelling all of it cost more than decoding it)."""
    x, y, bw, bh = cv2.boundingRect(mask)
    if bw == 0 or bh == 0:
        return 0
    return cv2.connectedComponents(np.ascontiguousarray(mask[y:y + bh, x:x + bw]),
                                   connectivity=8)[0] - 1


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
