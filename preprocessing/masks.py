"""Building an image's ground-truth mask from its dataset's annotation, in the worker.

Each reader takes the adapter's mask spec and the image's (H, W) and returns the (H, W) uint8
0/1 mask (union of all mass annotations) and the number of mass annotations, or raises
:class:`RejectedImage` with the reason. Readers are chosen by ``spec["kind"]`` from
:data:`MASK_READERS`.
"""

from __future__ import annotations

import io
import plistlib
import re
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pydicom

from mammoray.core import storage
from preprocessing.dicom_io import RejectedImage
from preprocessing.geometry import count_regions

Shape = tuple[int, int]
MaskResult = tuple[np.ndarray, int]


def decode_png_mask(data: bytes, shape: Shape) -> np.ndarray:
    """A mask image file (PNG, any depth) -> (H, W) uint8 0/1; non-zero = mass."""
    raw = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise RejectedImage("mask file is not a readable image")
    if raw.ndim == 3:
        raw = raw.max(axis=2)
    if raw.shape != shape:
        raise RejectedImage(f"mask size {raw.shape[0]} x {raw.shape[1]} does not match the "
                            f"image size {shape[0]} x {shape[1]}")
    if raw.dtype not in (np.uint8, np.uint16):
        return (raw != 0).astype(np.uint8)
    return cv2.threshold(raw, 0, 1, cv2.THRESH_BINARY)[1].astype(np.uint8, copy=False)


def read_png(spec: dict[str, Any], shape: Shape) -> MaskResult:
    mask = decode_png_mask(storage.read_bytes(spec["path"]), shape)
    count = count_regions(mask)
    return mask, count


def read_empty(spec: dict[str, Any], shape: Shape) -> MaskResult:
    return np.zeros(shape, np.uint8), 0


def _dicom_size(path: str) -> tuple[int, int] | None:
    try:
        with storage.open_input(path) as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True,
                                 specific_tags=["Rows", "Columns"])
        return int(ds.Rows), int(ds.Columns)
    except Exception:
        return None


def read_cbis_roi(spec: dict[str, Any], shape: Shape) -> MaskResult:
    """CBIS-DDSM: per abnormality, the ROI series holds the mask and the cropped lesion under
    inconsistent names; the mask is the file whose size equals the full image's."""
    mask = np.zeros(shape, np.uint8)
    for i, candidates in enumerate(spec["candidates"], start=1):
        sizes = [(_dicom_size(path), path) for path in candidates]
        matching = [path for size, path in sizes if size == shape]
        if not matching:
            found = ", ".join(f"{s[0]} x {s[1]}" for s, _ in sizes if s) or "none readable"
            raise RejectedImage(f"ROI mask of abnormality {i} does not match the image size "
                                f"{shape[0]} x {shape[1]} (ROI files: {found})")
        try:
            ds = pydicom.dcmread(io.BytesIO(storage.read_bytes(matching[0])))
            roi = ds.pixel_array
        except Exception as exc:
            raise RejectedImage(f"ROI mask of abnormality {i} could not be decoded "
                                f"({type(exc).__name__})") from None
        if roi.ndim != 2:
            raise RejectedImage(f"ROI mask of abnormality {i} is not a 2-D image")
        mask |= (roi != 0).astype(np.uint8)
    return mask, len(spec["candidates"])


_POINT = re.compile(r"\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)")


def inbreast_polygons(xml: bytes, names: list[str]) -> list[np.ndarray]:
    """Mass polygons of an INbreast OsiriX plist: ROIs named in ``names`` with 3+ points.

    ``Point_px`` holds "(x, y)" strings, x = column, y = row, float pixels. ROIs with 1-2
    points are calcification points and never masses.
    """
    try:
        plist = plistlib.loads(xml, fmt=plistlib.FMT_XML)
        rois = plist["Images"][0].get("ROIs", [])
    except Exception as exc:
        raise RejectedImage(f"annotation XML is not a readable OsiriX plist "
                            f"({type(exc).__name__})") from None
    wanted = {n.strip().lower() for n in names}
    polygons = []
    for roi in rois:
        points = roi.get("Point_px") or []
        if str(roi.get("Name", "")).strip().lower() not in wanted or len(points) < 3:
            continue
        coords = []
        for text in points:
            m = _POINT.match(str(text))
            if not m:
                raise RejectedImage(f"annotation point {text!r} is not '(x, y)'")
            coords.append((float(m.group(1)), float(m.group(2))))
        polygons.append(np.array(coords, dtype=np.float64))
    return polygons


def fill_polygons(polygons: list[np.ndarray], shape: Shape) -> np.ndarray:
    """Filled (x, y) float polygons -> (H, W) uint8 0/1 (pixel centres inside or on the edge)."""
    mask = np.zeros(shape, np.uint8)
    if polygons:
        pts = [np.round(p * 16).astype(np.int32) for p in polygons]  # 4 fractional bits
        cv2.fillPoly(mask, pts, 1, lineType=cv2.LINE_8, shift=4)
    return mask


def read_inbreast_xml(spec: dict[str, Any], shape: Shape) -> MaskResult:
    polygons = inbreast_polygons(storage.read_bytes(spec["path"]), spec["names"])
    return fill_polygons(polygons, shape), len(polygons)


MaskReader = Callable[[dict[str, Any], Shape], MaskResult]
MASK_READERS: dict[str, MaskReader] = {
    "png": read_png, "empty": read_empty, "cbis-roi": read_cbis_roi,
    "inbreast-xml": read_inbreast_xml}
