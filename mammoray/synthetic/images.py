"""Synthetic screening mammograms with exact ground-truth masks, deterministic by seed.

Every image is drawn in a canonical frame (chest wall on the left) and mirrored for right
breasts, so the written files follow the reading convention (left breasts chest wall left,
right breasts chest wall right) and carry matching ImageLaterality / PatientOrientation.

Anatomy: a breast outline attached to the chest wall (CC: half ellipse; MLO: ellipse plus the
axillary tail, with the pectoral muscle in the upper chest-wall corner), thickness fall-off and
a skin line at the edge, fatty-to-dense fibroglandular texture (filtered noise at several
scales), quantum noise. Masses: oval, lobulated, irregular or spiculated, a few mm to several
cm, contrast from subtle to obvious; the mask is the mass core (spicules excluded).

Film mode (CBIS-DDSM-like scanned film): 16-bit, burnt-in labels ("LCC", "RMLO"), bright
film/scanner border strips along image edges, a tape strip. Scanned film with margins
(:func:`synthesize_scanned`): the film digitised with a band of background on every side, so
the breast touches no edge of the frame; labels ("L MLO", "CRAN", numbers) and lead markers at
random, next to the breast and inside its bounding box included; the truth keeps every label
pixel. Digital mode (INbreast-like): 14-bit stored in 16 with a VOI window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

FIELD_OF_VIEW_MM = 240.0  # width of the detector, as on INbreast's 3328-column images
KINDS = ("oval", "lobulated", "irregular", "spiculated")


@dataclass(frozen=True)
class Mass:
    """A mass in the written image's coordinates: center (x, y) px, radius px and mm."""

    kind: str
    center_x: float
    center_y: float
    radius_px: float
    radius_mm: float
    contrast: float


@dataclass
class SyntheticImage:
    """``stored``: (H, W) uint16 stored values as written; ``mask``/``breast``: (H, W) uint8 0/1
    in the same (written) coordinates; ``breast_box`` (x0, y0, x1, y1) end-exclusive."""

    stored: np.ndarray
    mask: np.ndarray
    breast: np.ndarray
    laterality: str
    view: str
    bits_stored: int
    photometric: str
    pixel_spacing_mm: float
    window: tuple[float, float] | None
    masses: list[Mass] = field(default_factory=list)
    # Scanned film with margins only: (H, W) uint8 0/1 pixels of burnt-in labels and lead
    # markers, and their boxes (x0, y0, x1, y1), end-exclusive, in the written frame.
    labels: np.ndarray | None = None
    label_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def chest_wall(self) -> str:
        """The side of the written image the chest wall is on (the reading convention)."""
        return "left" if self.laterality == "L" else "right"

    @property
    def breast_box(self) -> tuple[int, int, int, int]:
        ys, xs = np.nonzero(self.breast)
        return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int,
                  sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise: a coarse random grid blurred and upsampled."""
    h, w = shape
    gh = max(4, int(round(cells * h / max(h, w))))
    gw = max(4, int(round(cells * w / max(h, w))))
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    grid = cv2.GaussianBlur(grid, (0, 0), sigma)
    up = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    up -= up.mean()
    return up / (up.std() + 1e-6)


def _breast_outline(rng: np.random.Generator, h: int, w: int,
                    view: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Polygon of the breast (canonical, chest wall at x=0) and of the pectoral muscle."""
    thetas = np.linspace(-math.pi / 2, math.pi / 2, 181)
    wobble = np.ones_like(thetas)
    for k in (2, 3, 5):
        wobble += rng.uniform(-0.025, 0.025) * np.sin(k * thetas + rng.uniform(0, 2 * math.pi))
    if view == "CC":
        a = rng.uniform(0.55, 0.82) * w
        b = rng.uniform(0.34, 0.45) * h
        cy = h / 2 + rng.uniform(-0.04, 0.04) * h
        xs, ys = a * wobble * np.cos(thetas), cy + b * wobble * np.sin(thetas)
        return np.stack([xs, ys], 1), None
    a = rng.uniform(0.6, 0.82) * w
    b = rng.uniform(0.36, 0.42) * h
    cy = rng.uniform(0.55, 0.6) * h
    keep = thetas >= -math.pi / 4
    xs = a * wobble[keep] * np.cos(thetas[keep])
    ys = cy + b * wobble[keep] * np.sin(thetas[keep])
    tail_x = rng.uniform(0.3, 0.42) * w
    tail = np.array([[0.0, 0.0], [tail_x, 0.0]])
    bridge_t = np.linspace(0, 1, 20)[1:-1]
    bridge = np.stack([tail_x + (xs[0] - tail_x) * bridge_t ** 1.5,
                       ys[0] * bridge_t], 1)
    outline = np.concatenate([tail, bridge, np.stack([xs, ys], 1)])
    pw = rng.uniform(0.55, 0.85) * tail_x
    ph = rng.uniform(0.4, 0.6) * h
    t = np.linspace(0, 1, 30)
    bow = rng.uniform(0.0, 0.08)
    edge = np.stack([pw * (1 - t) + bow * w * np.sin(math.pi * t), ph * t], 1)
    pectoral = np.concatenate([[[0.0, 0.0]], edge])
    return outline, pectoral


def _fill(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    pts = np.round(polygon * 16).astype(np.int32)  # 4 fractional bits for a smooth outline
    cv2.fillPoly(out, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return out


def _mass_outline(rng: np.random.Generator, kind: str, cx: float, cy: float,
                  r: float) -> np.ndarray:
    thetas = np.linspace(0, 2 * math.pi, 240, endpoint=False)
    if kind == "oval":
        aspect = rng.uniform(0.6, 1.0)
        rot = rng.uniform(0, math.pi)
        x, y = r * np.cos(thetas), r * aspect * np.sin(thetas)
        xs = x * math.cos(rot) - y * math.sin(rot)
        ys = x * math.sin(rot) + y * math.cos(rot)
        return np.stack([cx + xs, cy + ys], 1)
    radius = np.ones_like(thetas)
    if kind == "lobulated":
        lobes = rng.integers(3, 6)
        radius += 0.14 * np.sin(lobes * thetas + rng.uniform(0, 2 * math.pi))
    else:  # irregular and spiculated cores: random low-frequency outline
        for k in range(2, 9):
            radius += rng.uniform(-0.12, 0.12) / math.sqrt(k) * np.sin(
                k * thetas + rng.uniform(0, 2 * math.pi))
    radius = np.clip(radius, 0.55, 1.45)
    return np.stack([cx + r * radius * np.cos(thetas), cy + r * radius * np.sin(thetas)], 1)


def synthesize_image(rng: np.random.Generator, height: int, width: int, laterality: str,
                     view: str, *, film: bool = False, n_masses: int = 1,
                     density: float | None = None,
                     monochrome1: bool = False) -> SyntheticImage:
    """Draw one mammogram. Deterministic for a given ``rng`` state and arguments."""
    h, w = height, width
    spacing = FIELD_OF_VIEW_MM / w
    breast, pectoral, dist_mm, thickness, atten = _tissue(rng, h, w, view, spacing, density)
    mask, masses, signal = _masses(rng, breast, pectoral, dist_mm, spacing, n_masses)
    atten += signal * breast * (0.4 + 0.6 * thickness)
    atten += rng.standard_normal((h, w), dtype=np.float32) * np.float32(0.008)
    if film:
        bits, gain, base = 16, 52000.0, 6000.0
    else:
        bits, gain, base = 14, 14500.0, 400.0
    top = (1 << bits) - 1
    values = base + gain * np.clip(atten, 0, None)
    window = None
    if film:
        values = _add_film_artifacts(rng, values, breast, view, laterality, top)
    else:
        inside = values[breast > 0]
        lo, hi = float(np.percentile(inside, 0.5)), float(np.percentile(inside, 99.9))
        window = ((lo + hi) / 2, (hi - lo) * 1.3)
    stored = np.clip(np.rint(values), 0, top).astype(np.uint16)
    if monochrome1:
        stored = (top - stored).astype(np.uint16)
    if laterality == "R":
        stored, mask, breast = (np.ascontiguousarray(a[:, ::-1]) for a in (stored, mask, breast))
        masses = [Mass(m.kind, w - 1 - m.center_x, m.center_y, m.radius_px, m.radius_mm,
                       m.contrast) for m in masses]
    return SyntheticImage(stored=stored, mask=mask, breast=breast, laterality=laterality,
                          view=view, bits_stored=bits,
                          photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2",
                          pixel_spacing_mm=spacing, window=window, masses=masses)


def _tissue(rng: np.random.Generator, h: int, w: int, view: str, spacing: float,
            density: float | None):
    """The breast without masses (canonical frame): (breast 0/1, pectoral 0/1 or None,
    distance from the skin in mm, thickness fall-off, attenuation)."""
    outline, pectoral_poly = _breast_outline(rng, h, w, view)
    breast = _fill((h, w), outline)
    pectoral = _fill((h, w), pectoral_poly) & breast if pectoral_poly is not None else None
    dist_mm = cv2.distanceTransform(breast, cv2.DIST_L2, 5) * np.float32(spacing)
    thickness = 1.0 - np.exp(-dist_mm / np.float32(9.0))
    density = rng.uniform(0.1, 0.9) if density is None else density
    cells = 48
    gland = (_smooth_noise(rng, (h, w), cells, 1.5)
             + 0.6 * _smooth_noise(rng, (h, w), cells * 4, 1.2)
             + 0.35 * _smooth_noise(rng, (h, w), cells * 12, 1.0))
    depth = 1.0 - np.exp(-dist_mm / np.float32(18.0))
    gland = 1.0 / (1.0 + np.exp(-(gland + np.float32(3.2 * (density - 0.5))) * 1.5))
    gland *= depth
    atten = breast * thickness * (np.float32(0.34) + np.float32(0.34) * gland)
    atten += breast * np.float32(0.12) * np.exp(-dist_mm / np.float32(0.7))  # skin line
    if pectoral is not None:
        pect_level = np.float32(rng.uniform(0.25, 0.35))
        atten += pectoral * (pect_level + np.float32(0.05)
                             * _smooth_noise(rng, (h, w), cells // 2, 1.0))
    return breast, pectoral, dist_mm, thickness, atten


def _masses(rng: np.random.Generator, breast: np.ndarray, pectoral: np.ndarray | None,
            dist_mm: np.ndarray, spacing: float, n_masses: int):
    """Up to ``n_masses`` masses inside the breast, off the pectoral muscle and each other:
    (mask 0/1 of the mass cores, the masses, their added attenuation incl. spicules)."""
    h, w = breast.shape
    mask = np.zeros((h, w), np.uint8)
    masses: list[Mass] = []
    soft = np.zeros((h, w), np.float32)
    spikes = np.zeros((h, w), np.float32)
    forbidden = pectoral if pectoral is not None else np.zeros((h, w), np.uint8)
    for _ in range(n_masses):
        radius_mm = float(math.exp(rng.uniform(math.log(3.0), math.log(22.0))))
        r = radius_mm / spacing
        candidates = np.argwhere((dist_mm > radius_mm * 1.5 + 4.0) & (forbidden == 0)
                                 & (mask == 0))
        if len(candidates) == 0:
            continue
        cy, cx = candidates[rng.integers(len(candidates))].astype(float)
        kind = KINDS[rng.integers(len(KINDS))]
        contrast = float(rng.uniform(0.05, 0.24))
        core = _fill((h, w), _mass_outline(rng, kind, cx, cy, r))
        mask |= core
        blurred = cv2.GaussianBlur(core.astype(np.float32), (0, 0), max(0.8, 0.12 * r))
        soft += np.float32(contrast) * blurred
        if kind == "spiculated":
            for _ in range(int(rng.integers(8, 20))):
                angle = rng.uniform(0, 2 * math.pi)
                length = r * rng.uniform(1.4, 2.6)
                end = (int(cx + length * math.cos(angle)), int(cy + length * math.sin(angle)))
                thick = max(1, int(round(r * rng.uniform(0.04, 0.09))))
                cv2.line(spikes, (int(cx), int(cy)), end, 0.55 * contrast, thick, cv2.LINE_AA)
        masses.append(Mass(kind, cx, cy, r, radius_mm, contrast))
    if spikes.any():
        spikes = cv2.GaussianBlur(spikes, (0, 0), 1.0)
    return mask, masses, soft + spikes


def _add_film_artifacts(rng: np.random.Generator, values: np.ndarray, breast: np.ndarray,
                        view: str, laterality: str, top: int) -> np.ndarray:
    """Scanned-film mess (canonical frame): borders, tape and a burnt-in label."""
    h, w = values.shape
    bright = top * 0.93
    # Bright film-edge / scanner borders touching the image edges (the breast touches some).
    band = max(2, int(rng.uniform(0.012, 0.03) * w))
    values[:, w - band:] = bright + rng.uniform(-0.02, 0.02) * top
    edge = rng.choice(["top", "bottom", "both"])
    band_y = max(2, int(rng.uniform(0.01, 0.025) * h))
    if edge in ("top", "both"):
        values[:band_y] = bright
    if edge in ("bottom", "both"):
        values[h - band_y:] = bright
    if rng.random() < 0.5:
        values[:, : max(2, int(0.008 * w))] = bright
    # Tape: a translucent strip across the outer corner, touching the right edge.
    tape_h = int(rng.uniform(0.05, 0.09) * h)
    tape_y = int(rng.uniform(0.72, 0.85) * h)
    tape_x = int(rng.uniform(0.72, 0.82) * w)
    values[tape_y:tape_y + tape_h, tape_x:] += top * 0.25
    # Burnt-in label in the outer upper corner (away from the breast).
    label = f"{laterality}{view}"
    scale = h / 500.0
    thickness = max(2, int(round(scale * 2.5)))
    org = (int(0.66 * w), int(0.11 * h))
    layer = np.zeros((h, w), np.uint8)
    cv2.putText(layer, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness)
    if laterality == "R":
        # The whole image is mirrored for right breasts; pre-mirror the text in place so
        # that it reads correctly in the written file.
        ys, xs = np.nonzero(layer)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        layer[y0:y1, x0:x1] = layer[y0:y1, x0:x1][:, ::-1].copy()
    values[layer > 0] = top * 0.97
    return values


# ------------------------------------------------------------- scanned film with margins

LABEL_TEXTS = ("L MLO", "R MLO", "L CC", "R CC", "CRAN", "CAUD", "LAT", "2", "17", "A")
# Labels keep at least this fraction of the long side away from the breast: burnt-in labels
# and lead markers sit on the film, not on the breast's shadow.
LABEL_GAP_FRACTION = 0.03


def synthesize_scanned(rng: np.random.Generator, height: int, width: int, laterality: str,
                       view: str, *, n_masses: int = 1,
                       density: float | None = None) -> SyntheticImage:
    """A film mammogram digitised with background margins on all sides (the breast touches no
    edge), film edges at the frame's sides, and labels and lead markers placed at random (next
    to the breast and inside its bounding box included, never on the breast). 16-bit
    MONOCHROME2; right breasts are mirrored as written, labels read correctly."""
    h, w = height, width
    spacing = FIELD_OF_VIEW_MM / w
    # Film is larger than the breast and is not centred on the scanner: a band of background
    # of 4-30% of the width on either side, 2-10% of the height at top and bottom.
    left, right = (int(rng.uniform(0.04, 0.3) * w) for _ in range(2))
    top, bottom = (int(rng.uniform(0.02, 0.1) * h) for _ in range(2))
    inner_h, inner_w = h - top - bottom, w - left - right
    breast_in, pectoral, dist_mm, thickness, atten_in = _tissue(rng, inner_h, inner_w, view,
                                                               spacing, density)
    mask_in, masses, signal = _masses(rng, breast_in, pectoral, dist_mm, spacing, n_masses)
    atten_in += signal * breast_in * (0.4 + 0.6 * thickness)
    atten = np.zeros((h, w), np.float32)
    breast = np.zeros((h, w), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    inner = (slice(top, top + inner_h), slice(left, left + inner_w))
    atten[inner], breast[inner], mask[inner] = atten_in, breast_in, mask_in
    atten += rng.standard_normal((h, w), dtype=np.float32) * np.float32(0.008)
    bits, gain, base = 16, 52000.0, 6000.0
    peak = (1 << bits) - 1
    values = base + gain * np.clip(atten, 0, None)
    masses = [Mass(m.kind, m.center_x + left, m.center_y + top, m.radius_px, m.radius_mm,
                   m.contrast) for m in masses]
    if laterality == "R":
        values, mask, breast = (np.ascontiguousarray(a[:, ::-1]) for a in (values, mask, breast))
        masses = [Mass(m.kind, w - 1 - m.center_x, m.center_y, m.radius_px, m.radius_mm,
                       m.contrast) for m in masses]
    _film_edges(rng, values, peak)
    labels, boxes = _labels_and_markers(rng, breast)
    values[labels > 0] = peak * rng.uniform(0.9, 0.98)
    stored = np.clip(np.rint(values), 0, peak).astype(np.uint16)
    return SyntheticImage(stored=stored, mask=mask, breast=breast, laterality=laterality,
                          view=view, bits_stored=bits, photometric="MONOCHROME2",
                          pixel_spacing_mm=spacing, window=None, masses=masses, labels=labels,
                          label_boxes=boxes)


def _film_edges(rng: np.random.Generator, values: np.ndarray, peak: int) -> None:
    """The film's own edges at the frame's sides (either side, both or none), bright as the
    unexposed film base, separated from the breast by the margins."""
    h, w = values.shape
    for side in ("left", "right", "top", "bottom"):
        if rng.random() < (0.5 if side in ("left", "right") else 0.3):
            depth = max(2, int(rng.uniform(0.005, 0.04) * (w if side in ("left", "right")
                                                           else h)))
            band = {"left": (slice(None), slice(0, depth)),
                    "right": (slice(None), slice(w - depth, w)),
                    "top": (slice(0, depth), slice(None)),
                    "bottom": (slice(h - depth, h), slice(None))}[side]
            values[band] = peak * rng.uniform(0.85, 0.95)


def _labels_and_markers(rng: np.random.Generator, breast: np.ndarray):
    """2-4 text labels and 1-2 lead markers (a bright square with a letter cut out), each at a
    random place off the breast by at least LABEL_GAP_FRACTION of the long side; about half
    are drawn inside the breast's bounding box. Returns the (H, W) 0/1 label pixels and the
    label boxes."""
    h, w = breast.shape
    gap = max(2, int(LABEL_GAP_FRACTION * max(h, w)))
    near = cv2.dilate(breast, cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                        (2 * gap + 1, 2 * gap + 1)))
    ys, xs = np.nonzero(breast)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    labels = np.zeros((h, w), np.uint8)
    taken = np.zeros((h, w), np.uint8)
    boxes = []
    scale = max(h, w) / 700.0
    n_text, n_markers = int(rng.integers(2, 5)), int(rng.integers(1, 3))
    for i in range(n_text + n_markers):
        patch = (_text_patch(rng, scale) if i < n_text else _marker_patch(rng, scale))
        ph, pw = patch.shape
        for _ in range(300):
            if rng.random() < 0.5:  # inside the breast's bounding box
                x = int(rng.integers(bbox[0], max(bbox[0] + 1, bbox[2] - pw)))
                y = int(rng.integers(bbox[1], max(bbox[1] + 1, bbox[3] - ph)))
            else:
                x, y = int(rng.integers(0, max(1, w - pw))), int(rng.integers(0, max(1, h - ph)))
            if y + ph > h or x + pw > w:
                continue
            if near[y:y + ph, x:x + pw].any() or taken[y:y + ph, x:x + pw].any():
                continue
            labels[y:y + ph, x:x + pw] |= patch
            taken[max(0, y - 4):y + ph + 4, max(0, x - 4):x + pw + 4] = 1
            boxes.append((x, y, x + pw, y + ph))
            break
    return labels, boxes


def _text_patch(rng: np.random.Generator, scale: float) -> np.ndarray:
    """A label's pixels (0/1), tightly cropped."""
    text = LABEL_TEXTS[int(rng.integers(len(LABEL_TEXTS)))]
    size = scale * rng.uniform(0.9, 1.6)
    thickness = max(2, int(round(2.2 * size)))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, thickness)
    canvas = np.zeros((th + base + 2 * thickness, tw + 2 * thickness), np.uint8)
    cv2.putText(canvas, text, (thickness, th + thickness), cv2.FONT_HERSHEY_SIMPLEX, size, 1,
                thickness)
    ys, xs = np.nonzero(canvas)
    return np.ascontiguousarray(canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1])


def _marker_patch(rng: np.random.Generator, scale: float) -> np.ndarray:
    """A lead marker: a filled square with the side's letter cut out of it."""
    side = max(8, int(rng.uniform(20, 34) * scale))
    patch = np.ones((side, side), np.uint8)
    letter = "L" if rng.random() < 0.5 else "R"
    size = side / 30.0
    thickness = max(1, int(round(2 * size)))
    (tw, th), _ = cv2.getTextSize(letter, cv2.FONT_HERSHEY_SIMPLEX, size, thickness)
    cv2.putText(patch, letter, ((side - tw) // 2, (side + th) // 2), cv2.FONT_HERSHEY_SIMPLEX,
                size, 0, thickness)
    return patch
