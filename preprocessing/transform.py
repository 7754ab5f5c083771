"""One image (DICOM bytes + optional mask) -> one Parquet row; pure functions, no Ray.

:func:`preprocess_image` is the per-image pipeline: orient -> breast crop -> CLAHE -> resize,
with the mask carried through exactly the same geometry (nearest neighbour, stays 0/1).
:func:`process_batch` is what Ray Data maps over manifest batches: it reads the files, calls
:func:`preprocess_image`, and turns every failure into a row with ``status = "rejected"`` and
its reason, so that one bad file never stops a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from mammoray import storage
from mammoray.config import DataConfig
from mammoray.timing import no_timer
from preprocessing import geometry
from preprocessing.dicom_io import DicomImage, RejectedImage, read_dicom

SCHEMA_VERSION = 1

# Row columns in order. Rejected rows have empty image/mask bytes and carry `relpath` and
# `reason`; written rows have them null (a data row never names its source file).
COLUMNS = (
    "image_id", "patient_key", "source", "split", "augment_index", "laterality", "view",
    "height", "width", "image", "mask", "has_mask_annotation", "has_mass", "mass_pixels",
    "orig_height", "orig_width", "flipped", "flip_source", "crop_x0", "crop_y0", "crop_x1",
    "crop_y1", "pixel_spacing_row", "pixel_spacing_col", "pathology", "assessment",
    "abnormality_count", "status", "reason", "relpath",
)


@dataclass(frozen=True)
class ProcessedImage:
    """``image``: (size, size) uint16; ``mask``: (size, size) uint8 0/1 or None."""

    image: np.ndarray
    mask: np.ndarray | None
    geometry: geometry.Geometry
    flip_source: str


def decode_mask(data: bytes, shape: tuple[int, int]) -> np.ndarray:
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


def preprocess_image(dicom: DicomImage, mask: np.ndarray | None, cfg: DataConfig, *,
                     timer=no_timer) -> ProcessedImage:
    """Orient, crop, CLAHE and resize one decoded image and its (H, W) 0/1 mask."""
    pixels = dicom.pixels
    h, w = pixels.shape
    if mask is not None and mask.shape != (h, w):
        raise RejectedImage(f"mask size {mask.shape[0]} x {mask.shape[1]} does not match the "
                            f"image size {h} x {w}")
    with timer("orient"):
        flipped, flip_source = geometry.needs_flip(pixels, dicom.laterality,
                                                   dicom.orientation_row, cfg.orientation)
        if flipped:  # one contiguous copy; every later crop is a plain view of it
            pixels = cv2.flip(pixels, 1)
            mask = None if mask is None else cv2.flip(mask, 1)
    with timer("crop"):
        if cfg.crop.enabled:
            box = geometry.find_breast_box(pixels, cfg.crop)
        else:
            box = (0, 0, w, h)
        x0, y0, x1, y1 = box
        crop = pixels[y0:y1, x0:x1]
    with timer("clahe"):
        crop = geometry.apply_clahe(crop, cfg.clahe_clip_limit, cfg.clahe_tile_grid)
    with timer("resize"):
        image = geometry.resize_square(crop, cfg.size, pad_to_square=cfg.pad_to_square,
                                       nearest=False)
        out_mask = None
        if mask is not None:
            out_mask = geometry.resize_square(mask[y0:y1, x0:x1], cfg.size,
                                              pad_to_square=cfg.pad_to_square, nearest=True)
    geom = geometry.Geometry(orig_height=h, orig_width=w, flipped=flipped,
                             crop=geometry.box_to_original(box, w, flipped), size=cfg.size,
                             pad_to_square=cfg.pad_to_square)
    return ProcessedImage(image=image, mask=out_mask, geometry=geom, flip_source=flip_source)


def _empty_row(record: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in COLUMNS}
    for key in ("image_id", "patient_key", "source", "split", "pathology", "assessment",
                "abnormality_count"):
        row[key] = record.get(key)
    row["augment_index"] = 0
    return row


def rejected_row(record: dict[str, Any], reason: str) -> dict[str, Any]:
    row = _empty_row(record)
    row.update(status="rejected", reason=reason, relpath=record["relpath"], image=b"",
               mask=b"", height=0, width=0)
    return row


def process_record(record: dict[str, Any], cfg: DataConfig, *,
                   timer=no_timer) -> dict[str, Any]:
    """Read and preprocess one manifest record; never raises for a bad file."""
    try:
        with timer("read"):
            data = storage.read_bytes(record["dicom_path"])
        dicom = read_dicom(data, apply_voi=cfg.apply_voi_lut, timer=timer)
        del data
        mask = None
        if record.get("mask_path"):
            with timer("mask"):
                mask = decode_mask(storage.read_bytes(record["mask_path"]),
                                   dicom.pixels.shape)
        result = preprocess_image(dicom, mask, cfg, timer=timer)
    except RejectedImage as exc:
        return rejected_row(record, str(exc))
    except OSError as exc:
        return rejected_row(record, f"file could not be read ({type(exc).__name__})")
    except Exception as exc:  # a decoder bug must not stop the dataset either
        return rejected_row(record, f"unexpected error ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:160] if str(exc) else ''})")
    with timer("serialize"):
        return _written_row(record, dicom, result, cfg)


def _written_row(record: dict[str, Any], dicom: DicomImage, result: ProcessedImage,
                 cfg: DataConfig) -> dict[str, Any]:
    row = _empty_row(record)
    g = result.geometry
    spacing = dicom.pixel_spacing or (None, None)
    mass_pixels = int(result.mask.sum()) if result.mask is not None else 0
    row.update(
        laterality=dicom.laterality, view=dicom.view, height=cfg.size, width=cfg.size,
        image=result.image.tobytes(),
        mask=(result.mask if result.mask is not None
              else np.zeros((cfg.size, cfg.size), np.uint8)).tobytes(),
        has_mask_annotation=result.mask is not None, has_mass=mass_pixels > 0,
        mass_pixels=mass_pixels, orig_height=g.orig_height, orig_width=g.orig_width,
        flipped=g.flipped, flip_source=result.flip_source, crop_x0=g.crop[0],
        crop_y0=g.crop[1], crop_x1=g.crop[2], crop_y1=g.crop[3],
        pixel_spacing_row=spacing[0], pixel_spacing_col=spacing[1], status="ok")
    return row


def process_batch(batch: dict[str, np.ndarray], cfg: DataConfig) -> dict[str, list[Any]]:
    """Ray Data ``map_batches`` function: manifest columns in, row columns out."""
    # OpenCV starts a thread per core; a task that reserved N CPUs must use N, or two
    # workers on two cores oversubscribe them (measured: 30% of the throughput lost).
    cv2.setNumThreads(max(1, int(cfg.cpus_per_task)))
    n = len(batch["image_id"])
    records = [{k: _plain(v[i]) for k, v in batch.items()} for i in range(n)]
    rows = [process_record(r, cfg) for r in records]
    return {c: [row[c] for row in rows] for c in COLUMNS}


def _plain(value: Any) -> Any:
    """numpy scalars from a batch -> Python values."""
    return value.item() if isinstance(value, np.generic) else value


def image_from_row(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Decode a Parquet row's bytes: ((H, W) uint16 image, (H, W) uint8 mask)."""
    h, w = int(row["height"]), int(row["width"])
    image = np.frombuffer(row["image"], dtype=np.uint16).reshape(h, w)
    mask = np.frombuffer(row["mask"], dtype=np.uint8).reshape(h, w)
    return image, mask
