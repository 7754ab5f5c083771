"""One image (DICOM bytes + optional mask) -> one Parquet row; pure functions, no Ray.

:func:`preprocess_image` is the per-image pipeline: orient -> breast crop -> CLAHE -> resize,
with the mask carried through exactly the same geometry (coverage >= 0.5, stays 0/1).
:func:`process_batch` is what Ray Data maps over manifest batches: it reads the files, calls
:func:`preprocess_image`, and turns every failure into a row with ``status = "rejected"`` and
its reason, so that one bad file never stops a dataset.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from mammoray.core import faults, storage
from mammoray.core.config import AugmentConfig, DataConfig
from mammoray.core.timing import no_timer
from preprocessing import augment, geometry, qc
from preprocessing.dicom_io import DicomImage, RejectedImage, read_dicom
from preprocessing.masks import MASK_READERS

SCHEMA_VERSION = 2

# Row schema (version 2: + intensity percentiles). Rejected rows have empty image/mask bytes and
# carry `relpath` and `reason`; written rows have them null (a data row never names its source
# file).
SCHEMA = pa.schema([
    ("image_id", pa.string()), ("patient_key", pa.string()), ("source", pa.string()),
    ("split", pa.string()), ("augment_index", pa.int32()), ("laterality", pa.string()),
    ("view", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
    ("image", pa.binary()), ("mask", pa.binary()), ("has_mask_annotation", pa.bool_()),
    ("has_mass", pa.bool_()), ("mass_pixels", pa.int64()), ("orig_height", pa.int32()),
    ("orig_width", pa.int32()), ("flipped", pa.bool_()), ("flip_source", pa.string()),
    ("crop_x0", pa.int32()), ("crop_y0", pa.int32()), ("crop_x1", pa.int32()),
    ("crop_y1", pa.int32()), ("pixel_spacing_row", pa.float64()),
    ("pixel_spacing_col", pa.float64()), ("pathology", pa.string()),
    ("assessment", pa.string()), ("abnormality_count", pa.int32()), ("subtlety", pa.int32()),
    ("mass_shape", pa.string()), ("mass_margins", pa.string()),
    ("breast_density", pa.string()), ("intensity_p01", pa.float64()),
    ("intensity_p50", pa.float64()), ("intensity_p99", pa.float64()),
    ("status", pa.string()), ("reason", pa.string()),
    ("relpath", pa.string()),
])
COLUMNS = tuple(SCHEMA.names)
# Dataset facts an adapter passes through to the rows (null where the dataset lacks them).
PASSTHROUGH = ("pathology", "assessment", "abnormality_count", "subtlety", "mass_shape",
               "mass_margins", "breast_density")


@dataclass(frozen=True)
class ProcessedImage:
    """``image``: (size, size) uint16; ``mask``: (size, size) uint8 0/1 or None;
    ``breast``: (size, size) uint8 0/1, what is kept of the image with ``data.breast_only``
    (None without it): outside it the image is 0."""

    image: np.ndarray
    mask: np.ndarray | None
    geometry: geometry.Geometry
    flip_source: str
    breast: np.ndarray | None = None


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
                                                   dicom.orientation_row, cfg.orientation,
                                                   cfg.crop)
        if flipped:  # one contiguous copy; every later crop is a plain view of it
            pixels = cv2.flip(pixels, 1)
            mask = None if mask is None else cv2.flip(mask, 1)
    with timer("crop"):
        region = (geometry.find_breast(pixels, cfg.crop)
                  if cfg.crop.enabled or cfg.breast_only else None)
        box = region.box if cfg.crop.enabled else (0, 0, w, h)
        if region is not None and not cfg.crop.enabled:
            region = geometry.BreastRegion(box, region.mask, region.factor)
        x0, y0, x1, y1 = box
        crop = pixels[y0:y1, x0:x1]
        keep = None
        if cfg.breast_only:
            # Labels, markers, film edges and tape never reach CLAHE or the model.
            keep = geometry.breast_mask_in_box(region, margin=breast_margin(cfg, h, w))
            crop = cv2.bitwise_and(crop, crop, mask=keep)  # a new array: pixels stay intact
    if cfg.clahe_at == "crop":
        with timer("clahe"):
            crop = geometry.apply_clahe(crop, cfg.clahe_clip_limit, cfg.clahe_tile_grid,
                                       cfg.clahe_bins)
    with timer("resize"):
        image = geometry.resize_square(crop, cfg.size, pad_to_square=cfg.pad_to_square,
                                       mask=False)
    if cfg.clahe_at == "output":
        with timer("clahe"):
            # Only the crop's part of the image: its tiles then cover what they cover at
            # "crop", not the padding.
            hh, ww = geometry.content_shape(crop.shape, cfg.size, cfg.pad_to_square)
            image[:hh, :ww] = geometry.apply_clahe(np.ascontiguousarray(image[:hh, :ww]),
                                                   cfg.clahe_clip_limit, cfg.clahe_tile_grid,
                                                   cfg.clahe_bins)
    with timer("resize"):
        breast = None
        if keep is not None:
            # The kept region is already grown by a margin: nearest neighbour is exact enough.
            breast = geometry.resize_square(keep, cfg.size, pad_to_square=cfg.pad_to_square,
                                            mask="nearest")
            image *= breast  # CLAHE lifts the zeros it was given; outside stays 0
        out_mask = None
        if mask is not None:
            out_mask = geometry.resize_mask_sparse(mask[y0:y1, x0:x1], cfg.size,
                                                   pad_to_square=cfg.pad_to_square)
    geom = geometry.Geometry(orig_height=h, orig_width=w, flipped=flipped,
                             crop=geometry.box_to_original(box, w, flipped), size=cfg.size,
                             pad_to_square=cfg.pad_to_square)
    return ProcessedImage(image=image, mask=out_mask, geometry=geom, flip_source=flip_source,
                          breast=breast)


def breast_margin(cfg: DataConfig, height: int, width: int) -> int:
    """Pixels the breast mask is grown by before everything outside it is set to background:
    ``crop.margin_fraction`` of the image's long side (the margin of the crop box too)."""
    return int(np.ceil(cfg.crop.margin_fraction * max(height, width)))


def _empty_row(record: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in COLUMNS}
    for key in ("image_id", "patient_key", "source", "split", *PASSTHROUGH):
        row[key] = record.get(key)
    row["augment_index"] = 0
    return row


def rejected_row(record: dict[str, Any], reason: str) -> dict[str, Any]:
    row = _empty_row(record)
    row.update(status="rejected", reason=reason, relpath=record["relpath"], image=b"",
               mask=b"", height=0, width=0)
    return row


def process_record(record: dict[str, Any], cfg: DataConfig, *, timer=no_timer,
                   qc_dir: str | None = None) -> dict[str, Any]:
    """Read and preprocess one manifest record; never raises for a bad file.

    ``record["mask"]`` is a JSON mask spec for :data:`preprocessing.masks.MASK_READERS` or
    empty (no annotation); ``record["reject"]`` carries an adapter's reason, if any. With
    ``qc_dir``, a record marked ``qc`` and any file rejected after it was decoded leave a
    card there (:mod:`preprocessing.qc`).
    """
    if record.get("reject"):
        return rejected_row(record, record["reject"])
    dicom = None
    try:
        with timer("read"):
            data = storage.read_bytes(record["dicom_path"])
        dicom = read_dicom(data, apply_voi=cfg.apply_voi_lut, timer=timer)
        del data
        mask, count = None, None
        if record.get("mask"):
            with timer("mask"):
                spec = json.loads(record["mask"])
                mask, count = MASK_READERS[spec["kind"]](spec, dicom.pixels.shape)
        result = preprocess_image(dicom, mask, cfg, timer=timer)
    except RejectedImage as exc:
        reason = str(exc)
        if qc_dir and dicom is not None:
            _qc(lambda: qc.write_card(qc_dir, "rejected", record, qc.rejected_card(
                dicom.pixels, record, reason)))
        return rejected_row(record, reason)
    except OSError as exc:
        return rejected_row(record, f"file could not be read ({type(exc).__name__})")
    except Exception as exc:  # a decoder bug must not stop the dataset either
        return rejected_row(record, f"unexpected error ({describe(exc)})")
    except BaseException as exc:
        # A Rust decoder's panic (pyo3's PanicException) is a BaseException: it would pass an
        # `except Exception` and fail the whole task. Interrupts still stop the job.
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return rejected_row(record, f"decoder crashed ({describe(exc)})")
    with timer("serialize"):
        row = _written_row(record, dicom, result, cfg)
    if row["abnormality_count"] is None and count is not None:
        row["abnormality_count"] = count
    if qc_dir and record.get("qc"):
        _qc(lambda: qc.write_card(qc_dir, "sample", record, qc.written_card(
            dicom.pixels, row, result.image, result.mask)))
    return row


def _qc(write: Callable[[], None]) -> None:
    """Write a QC card; a card that cannot be written never costs the image its row."""
    try:
        write()
    except Exception as exc:  # noqa: BLE001 - the row matters, the picture does not
        print(f"preprocess: a QC card could not be written ({describe(exc)})", flush=True)


def describe(exc: BaseException) -> str:
    """An exception as ``Type: first line`` (at most 160 characters of it), for a reason."""
    first = str(exc).splitlines()[0][:160] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _written_row(record: dict[str, Any], dicom: DicomImage, result: ProcessedImage,
                 cfg: DataConfig) -> dict[str, Any]:
    row = _empty_row(record)
    g = result.geometry
    spacing = dicom.pixel_spacing or (None, None)
    mass_pixels = int(result.mask.sum()) if result.mask is not None else 0
    row.update(
        laterality=dicom.laterality or record.get("laterality_hint") or None,
        view=dicom.view or record.get("view_hint") or None, height=cfg.size, width=cfg.size,
        image=result.image.tobytes(),
        mask=(result.mask if result.mask is not None
              else np.zeros((cfg.size, cfg.size), np.uint8)).tobytes(),
        has_mask_annotation=result.mask is not None, has_mass=mass_pixels > 0,
        mass_pixels=mass_pixels, orig_height=g.orig_height, orig_width=g.orig_width,
        flipped=g.flipped, flip_source=result.flip_source, crop_x0=g.crop[0],
        crop_y0=g.crop[1], crop_x1=g.crop[2], crop_y1=g.crop[3],
        pixel_spacing_row=spacing[0], pixel_spacing_col=spacing[1], status="ok")
    row["intensity_p01"], row["intensity_p50"], row["intensity_p99"] = \
        qc.intensity_percentiles(dicom.pixels, g.crop)
    return row


def augmented_rows(row: dict[str, Any], copies: int, cfg: AugmentConfig) -> list[dict[str, Any]]:
    """``copies`` augmented rows of a written training row (augment_index 1..copies)."""
    if copies <= 0 or row["status"] != "ok":
        return []
    image, mask = image_from_row(row)
    augmenter = _augmenter(cfg)
    out = []
    for k in range(1, copies + 1):
        aug_image, aug_mask = augment.augment(augmenter, image, mask, seed=cfg.seed,
                                              image_id=row["image_id"], k=k)
        copy = dict(row)
        mass_pixels = int(aug_mask.sum())
        copy.update(augment_index=k, image=aug_image.tobytes(), mask=aug_mask.tobytes(),
                    mass_pixels=mass_pixels, has_mass=mass_pixels > 0)
        out.append(copy)
    return out


@functools.lru_cache(maxsize=8)
def _augmenter(cfg: AugmentConfig):
    return augment.build_augmenter(cfg)


def process_batch(batch: pa.Table, cfg: DataConfig,
                  augment_by_source: dict[str, AugmentConfig] | None = None,
                  injected: list[dict[str, Any]] | None = None,
                  qc_dir: str | None = None) -> pa.Table:
    """Ray Data ``map_batches`` function: manifest columns in, row columns out (plus augmented
    copies of training rows whose record asks for ``augment_copies``). ``injected``: faults
    of :mod:`mammoray.core.faults` (tests only), at point ``preprocess.image``. ``qc_dir``:
    where QC cards go (see :func:`process_record`)."""
    # OpenCV starts a thread per core; a task that reserved N CPUs must use N, or two
    # workers on two cores oversubscribe them (docs/decisions.md).
    cv2.setNumThreads(max(1, int(cfg.cpus_per_task)))
    rows = []
    for record in batch.to_pylist():
        if injected:
            faults.fire(injected, "preprocess.image", relpath=record["relpath"])
        row = process_record(record, cfg, qc_dir=qc_dir)
        rows.append(row)
        copies = int(record.get("augment_copies") or 0)
        if copies and row["split"] == "train" and augment_by_source:
            rows += augmented_rows(row, copies, augment_by_source[row["source"]])
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def image_from_row(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Decode a Parquet row's bytes: ((H, W) uint16 image, (H, W) uint8 mask)."""
    h, w = int(row["height"]), int(row["width"])
    image = np.frombuffer(row["image"], dtype=np.uint16).reshape(h, w)
    mask = np.frombuffer(row["mask"], dtype=np.uint8).reshape(h, w)
    return image, mask
