"""Pictures a radiologist looks at: a mammogram with masks outlined (truth green, prediction
red, as the seed study's figures 3 and 4), written as PNG to a local path or object storage.

An overlay is drawn as an 8-bit palette image: indices 0-253 are the mammogram's gray levels
(its two brightest 8-bit levels clipped to 253), 254 the truth's outline and 255 the
prediction's. As a palette PNG it is a third of the bytes of a colour one and encodes in half
the time (``benchmarks/RESULTS.md``, issue 15); :func:`draw_overlay` gives the same picture
as BGR for the places that need colour pixels (QC cards, TensorBoard pictures)."""

from __future__ import annotations

import io
import os

import cv2
import numpy as np

from mammoray.core import storage
from mammoray.core.shrinking import shrink, shrink_factor

TRUTH_INDEX, PREDICTION_INDEX = 254, 255
TRUTH_RGB, PREDICTION_RGB = (0, 200, 0), (255, 0, 0)
PALETTE_RGB = np.concatenate([np.repeat(np.arange(TRUTH_INDEX, dtype=np.uint8)[:, None], 3, 1),
                              np.array([TRUTH_RGB, PREDICTION_RGB], np.uint8)])
PALETTE_BGR = np.ascontiguousarray(PALETTE_RGB[:, ::-1])


def to_gray_u8(image: np.ndarray) -> np.ndarray:
    """A uint16 (or float [0, 1]) image as uint8 for display."""
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def overlay_indices(image: np.ndarray, prediction: np.ndarray | None,
                    truth: np.ndarray | None = None, *,
                    max_side: int | None = None) -> np.ndarray:
    """The overlay as palette indices (:data:`PALETTE_RGB`): ``image`` in gray, the truth
    outlined with :data:`TRUTH_INDEX`, the prediction with :data:`PREDICTION_INDEX`.
    ``max_side`` shrinks large mammograms first, by a whole factor (the outlines are drawn
    after shrinking, so they stay visible)."""
    factor = shrink_factor(image.shape, max_side)
    if factor > 1:
        # Shrunk first, converted after: the conversion then touches a fraction of the pixels.
        image = shrink(image, factor, cv2.INTER_AREA)
        prediction, truth = (None if m is None else
                             shrink(m.astype(np.uint8), factor, cv2.INTER_NEAREST)
                             for m in (prediction, truth))
    canvas = np.minimum(to_gray_u8(image), TRUTH_INDEX - 1)
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for mask, index in ((truth, TRUTH_INDEX), (prediction, PREDICTION_INDEX)):
        if mask is None:
            continue
        contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, index, thickness, cv2.LINE_8)
    return canvas


def draw_overlay(image: np.ndarray, prediction: np.ndarray | None,
                 truth: np.ndarray | None = None, *, max_side: int | None = None) -> np.ndarray:
    """BGR picture of ``image`` with the truth outlined in green and the prediction in red (as
    the seed study's figures 3 and 4): :func:`overlay_indices` through the palette."""
    return PALETTE_BGR[overlay_indices(image, prediction, truth, max_side=max_side)]


def overlay_png(image: np.ndarray, prediction: np.ndarray | None,
                truth: np.ndarray | None = None, *, max_side: int | None = None) -> bytes:
    """The overlay as a palette PNG (Pillow, zlib level 1)."""
    from PIL import Image

    picture = Image.fromarray(overlay_indices(image, prediction, truth, max_side=max_side))
    picture.putpalette(PALETTE_RGB.tobytes())
    buf = io.BytesIO()
    picture.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_overlay(path: str, image: np.ndarray, prediction: np.ndarray | None,
                  truth: np.ndarray | None = None, *, max_side: int | None = None) -> None:
    """Write :func:`overlay_png` through :mod:`mammoray.storage`."""
    storage.write_bytes(path, overlay_png(image, prediction, truth, max_side=max_side))


def write_png(path: str, image: np.ndarray, *, bilevel: bool = False) -> None:
    """Write a PNG through :mod:`mammoray.storage` (local path or object-storage URI)."""
    params = [cv2.IMWRITE_PNG_BILEVEL, 1] if bilevel else []
    ok, buf = cv2.imencode(".png", image, params)
    if not ok:
        raise RuntimeError(f"could not encode {os.path.basename(path)}")
    storage.write_bytes(path, buf.tobytes())
