"""What preprocessing did to the images, as pictures and numbers (``<output>/qc/`` and the
``fingerprint`` of ``dataset.json``); pure functions, no Ray.

Cards: each sampled image (``data.qc_samples`` per source) and each rejected file that could be
decoded gets a card: the original as stored (thumbnail) with the crop box (yellow) and the
flip written on it, and, for a written image, the preprocessed image with the mass mask
outlined (green). Captions carry the source, split, salted image id, flip and the reason of a
rejection, never a file name or a header value. Preprocessing tasks write the cards into the
staged output; the driver then lays them out as contact sheets (:func:`contact_sheet`):
``qc/<source>.png`` and ``qc/rejected.png``.

Fingerprint (:func:`fingerprint`), per source, as nnU-Net keeps one: original image and crop
sizes, pixel spacing, intensity percentiles of the original pixels inside the crop box, and
mass sizes (equivalent diameter) in input pixels and in mm.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from mammoray.core import storage
from mammoray.core.overlays import draw_overlay, to_gray_u8

CARD_SIDE = 256
CAPTION_HEIGHT = 34
YELLOW, WHITE, RED = (0, 220, 255), (255, 255, 255), (60, 60, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _fit(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def original_panel(pixels: np.ndarray, crop: tuple[int, int, int, int] | None) -> np.ndarray:
    """The original (H, W) image as stored, thumbnail, with the crop box in yellow."""
    thumb, scale = _fit(to_gray_u8(pixels), CARD_SIDE)
    panel = cv2.cvtColor(thumb, cv2.COLOR_GRAY2BGR)
    if crop is not None:
        x0, y0, x1, y1 = (round(v * scale) for v in crop)
        cv2.rectangle(panel, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), YELLOW, 2)
    return panel


def processed_panel(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The preprocessed (size, size) image with the mass mask outlined in green."""
    picture = draw_overlay(image, None, mask if mask is not None and mask.any() else None)
    return _fit(picture, CARD_SIDE)[0]


def card(panels: list[np.ndarray], lines: list[str], *, rejected: bool = False) -> np.ndarray:
    """Panels side by side under a two-line caption, on a fixed-size black card."""
    width = 2 * CARD_SIDE + 8
    out = np.zeros((CAPTION_HEIGHT + CARD_SIDE, width, 3), np.uint8)
    x = 0
    for panel in panels:
        h, w = panel.shape[:2]
        out[CAPTION_HEIGHT:CAPTION_HEIGHT + h, x:x + w] = panel
        x += w + 8
    for i, line in enumerate(lines[:2]):
        cv2.putText(out, line[:72], (4, 14 + 16 * i), FONT, 0.42,
                    RED if rejected and i == 1 else WHITE, 1, cv2.LINE_AA)
    return out


def written_card(original: np.ndarray, row: dict[str, Any], image: np.ndarray,
                 mask: np.ndarray | None) -> np.ndarray:
    """The card of a written image: ``original`` as stored, the row's crop box and flip."""
    crop = (row["crop_x0"], row["crop_y0"], row["crop_x1"], row["crop_y1"])
    flip = f"flipped ({row['flip_source']})" if row["flipped"] else "not flipped"
    lines = [f"{row['source']} / {row['split']} / {row['image_id'][:12]}",
             f"{flip}; crop {crop[2] - crop[0]} x {crop[3] - crop[1]}; "
             f"mass {int(row['mass_pixels'] or 0)} px"]
    return card([original_panel(original, crop), processed_panel(image, mask)], lines)


def rejected_card(original: np.ndarray, record: dict[str, Any], reason: str) -> np.ndarray:
    """The card of a file that was decoded and then rejected: the original and the reason."""
    lines = [f"{record['source']} / {record['split']} / {record['image_id'][:12]}",
             f"rejected: {reason}"]
    return card([original_panel(original, None)], lines, rejected=True)


def write_card(folder: str, kind: str, record: dict[str, Any], picture: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", picture)
    if ok:
        storage.write_bytes(storage.join(
            folder, f"{kind}-{record['source']}-{record['image_id'][:16]}.png"), buf.tobytes())


def contact_sheet(cards: list[np.ndarray], columns: int = 2) -> np.ndarray:
    """Cards in a grid, ``columns`` per row, 8 px apart."""
    h, w = cards[0].shape[:2]
    rows = math.ceil(len(cards) / columns)
    sheet = np.full((rows * (h + 8), columns * (w + 8), 3), 40, np.uint8)
    for i, picture in enumerate(cards):
        r, c = divmod(i, columns)
        sheet[r * (h + 8):r * (h + 8) + h, c * (w + 8):c * (w + 8) + w] = picture
    return sheet


def write_sheets(cards_dir: str, qc_dir: str, samples: int) -> dict[str, int]:
    """``qc/<source>.png`` (the first ``samples`` cards by image id) and ``qc/rejected.png``
    (every card) from the cards the tasks wrote (then the cards are removed); returns cards
    per sheet."""
    groups: dict[str, list[str]] = {}
    files = storage.list_files(cards_dir) if storage.exists(cards_dir) else []
    for path in files:
        kind, source = storage.basename(path).split("-", 2)[:2]
        groups.setdefault("rejected" if kind == "rejected" else source, []).append(path)
    counts = {}
    for name, paths in sorted(groups.items()):
        paths = sorted(paths, key=storage.basename)
        if name != "rejected":
            paths = paths[:samples]
        cards = [cv2.imdecode(np.frombuffer(storage.read_bytes(p), np.uint8), cv2.IMREAD_COLOR)
                 for p in paths]
        ok, buf = cv2.imencode(".png", contact_sheet(cards))
        if ok:
            storage.write_bytes(storage.join(qc_dir, f"{name}.png"), buf.tobytes())
            counts[name] = len(cards)
    storage.delete(cards_dir)
    return counts


# ------------------------------------------------------------------------------ fingerprint

def intensity_percentiles(pixels: np.ndarray, crop: tuple[int, int, int, int],
                          step: int = 8) -> tuple[float, float, float]:
    """1st, 50th and 99th percentiles of the original pixels inside the crop box (every
    ``step``-th pixel each way: exact enough for a fingerprint, cheap at full resolution)."""
    x0, y0, x1, y1 = crop
    values = pixels[y0:y1:step, x0:x1:step]
    if values.size == 0:
        return (math.nan,) * 3
    p01, p50, p99 = np.percentile(values, (1, 50, 99))
    return float(p01), float(p50), float(p99)


def _stats(values: list[float], *, digits: int = 1) -> dict[str, Any] | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    p = np.percentile(values, (0, 5, 50, 95, 100))
    return {"n": len(values), **{k: round(float(v), digits) for k, v in zip(
        ("min", "p5", "median", "p95", "max"), p)}}


def mass_sizes(row: dict[str, Any], size: int, pad_to_square: bool) -> tuple[float, float | None]:
    """(equivalent diameter in input pixels, in mm or None without a pixel spacing) of a
    row's mass: the mask's area, scaled back through the resize onto the original grid."""
    area = float(row["mass_pixels"])
    crop_h, crop_w = row["crop_y1"] - row["crop_y0"], row["crop_x1"] - row["crop_x0"]
    if pad_to_square:
        sy = sx = max(crop_h, crop_w) / size
    else:
        sy, sx = crop_h / size, crop_w / size
    diameter_px = 2.0 * math.sqrt(area / math.pi)
    if row["pixel_spacing_row"] is None or row["pixel_spacing_col"] is None:
        return diameter_px, None
    area_mm2 = area * sy * sx * row["pixel_spacing_row"] * row["pixel_spacing_col"]
    return diameter_px, 2.0 * math.sqrt(area_mm2 / math.pi)


def fingerprint(rows: list[dict[str, Any]], size: int, pad_to_square: bool) -> dict[str, Any]:
    """Per source, over its written originals (augmented copies left out)."""
    out: dict[str, Any] = {}
    for source in sorted({r["source"] for r in rows}):
        sel = [r for r in rows if r["source"] == source and r["augment_index"] == 0]
        masses = [mass_sizes(r, size, pad_to_square) for r in sel if r["mass_pixels"]]
        out[source] = {
            "images": len(sel),
            "original_height": _stats([r["orig_height"] for r in sel], digits=0),
            "original_width": _stats([r["orig_width"] for r in sel], digits=0),
            "crop_height": _stats([r["crop_y1"] - r["crop_y0"] for r in sel], digits=0),
            "crop_width": _stats([r["crop_x1"] - r["crop_x0"] for r in sel], digits=0),
            "pixel_spacing_mm": _stats([r["pixel_spacing_row"] for r in sel], digits=4),
            "without_pixel_spacing": sum(r["pixel_spacing_row"] is None for r in sel),
            "flipped": sum(bool(r["flipped"]) for r in sel),
            "intensity_p01": _stats([r["intensity_p01"] for r in sel], digits=0),
            "intensity_p50": _stats([r["intensity_p50"] for r in sel], digits=0),
            "intensity_p99": _stats([r["intensity_p99"] for r in sel], digits=0),
            "images_with_mass": len(masses),
            "mass_diameter_input_px": _stats([m[0] for m in masses]),
            "mass_diameter_mm": _stats([m[1] for m in masses]),
            "masses_under_100_input_px": sum(1 for r in sel if 0 < r["mass_pixels"] < 100),
        }
    return out
