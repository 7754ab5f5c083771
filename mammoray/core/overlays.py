"""Pictures a radiologist looks at: a mammogram with masks outlined (truth green, prediction
red, as the seed study's figures 3 and 4), written as PNG to a local path or object storage."""

from __future__ import annotations

import os

import cv2
import numpy as np

from mammoray.core import storage


def to_gray_u8(image: np.ndarray) -> np.ndarray:
    """A uint16 (or float [0, 1]) image as uint8 for display."""
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def draw_overlay(image: np.ndarray, prediction: np.ndarray | None,
                 truth: np.ndarray | None = None, *, max_side: int | None = None) -> np.ndarray:
    """BGR picture of ``image`` with the truth outlined in green and the prediction in red (as
    the seed study's figures 3 and 4). ``max_side`` shrinks large mammograms first (the outlines
    are drawn after shrinking, so they stay visible)."""
    h, w = image.shape
    if max_side and max(h, w) > max_side:
        # Shrunk first, converted after: the conversion then touches a few pixels, not all.
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)

        def shrink(m):
            return None if m is None else cv2.resize(m.astype(np.uint8), size,
                                                     interpolation=cv2.INTER_NEAREST)

        prediction, truth = shrink(prediction), shrink(truth)
    canvas = cv2.cvtColor(to_gray_u8(image), cv2.COLOR_GRAY2BGR)
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for mask, color in ((truth, (0, 200, 0)), (prediction, (0, 0, 255))):
        if mask is None:
            continue
        contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, color, thickness, cv2.LINE_AA)
    return canvas


def write_png(path: str, image: np.ndarray, *, bilevel: bool = False) -> None:
    """Write a PNG through :mod:`mammoray.storage` (local path or object-storage URI)."""
    params = [cv2.IMWRITE_PNG_BILEVEL, 1] if bilevel else []
    ok, buf = cv2.imencode(".png", image, params)
    if not ok:
        raise RuntimeError(f"could not encode {os.path.basename(path)}")
    storage.write_bytes(path, buf.tobytes())
