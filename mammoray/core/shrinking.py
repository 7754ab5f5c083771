"""Shrinking an image by a whole factor, OpenCV's fast area path: it averages factor x factor
blocks, 10-15x the speed of a fractional scale on a full-field mammogram
(``docs/decisions.md``). Used for the breast-finding thumbnail and for overlays."""

from __future__ import annotations

import math

import cv2
import numpy as np


def shrink_factor(shape: tuple[int, ...], max_side: int | None) -> int:
    """The smallest whole factor that brings the longest side to at most ``max_side``."""
    return max(1, math.ceil(max(shape[:2]) / max_side)) if max_side else 1


def shrink(image: np.ndarray, factor: int, interpolation: int, *,
           edges: str = "repeat") -> np.ndarray:
    """``image`` shrunk by a whole ``factor``. The bottom and right edges are repeated up to a
    multiple of it first (``edges="repeat"``: no pixel is lost, for pictures), or their last
    ``shape % factor`` rows and columns left out (``edges="trim"``: every output pixel is a
    whole block, for the thumbnail a breast is found on)."""
    if edges not in ("repeat", "trim"):
        raise ValueError(f"edges={edges!r}: choose 'repeat' or 'trim'")
    if factor == 1:
        return image
    h, w = image.shape[:2]
    if edges == "trim":
        h, w = h - h % factor, w - w % factor
        image = image[:h, :w]
    else:
        pad_h, pad_w = -h % factor, -w % factor
        if pad_h or pad_w:
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
            h, w = h + pad_h, w + pad_w
    return cv2.resize(image, (w // factor, h // factor), interpolation=interpolation)
