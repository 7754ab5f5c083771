"""DICOM bytes -> a MONOCHROME2 uint16 mammogram plus the header facts preprocessing needs.

Pixel pipeline, in the order of the DICOM grayscale pipeline:
stored values (BitsStored honoured, signed values sign-extended) -> Modality LUT / rescale ->
VOI LUT or window (LINEAR, LINEAR_EXACT, SIGMOID; optional) -> MONOCHROME1 inverted ->
linear stretch of the image's own [min, max] to [0, 65535].

Decoding goes through pydicom's pixel handlers (pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-rle,
pyjpegls, python-gdcm). One gap is closed here: pydicom's gdcm plugin refuses 12-bit JPEG
Extended (Process 2 and 4), which GDCM itself decodes, so that case is decoded by GDCM directly.

Anything that is not a single-frame grayscale image raises :class:`RejectedImage` with a reason
that contains no header values (so no patient data can leak through a reason).
"""

from __future__ import annotations

import io
import os
import tempfile
import typing
from dataclasses import dataclass

import cv2
import numpy as np
import pydicom
from pydicom import uid
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

from mammoray.core.timing import no_timer

UINT16_MAX = 65535


class RejectedImage(Exception):
    """A file that cannot become a training image; ``str(exc)`` is the reason."""


@dataclass(frozen=True)
class DicomImage:
    """A decoded mammogram.

    ``pixels``: (H, W) uint16, MONOCHROME2 (bright = dense), row-major, stretched to the full
    uint16 range. ``laterality``: 'L', 'R' or None. ``view``: e.g. 'CC', 'MLO' or None.
    ``orientation_row``: first PatientOrientation value (direction of increasing column index,
    e.g. 'A' or 'P'), or None. ``pixel_spacing``: (row, column) mm, or None.
    ``patient_id``: the raw DICOM PatientID, used only to derive a salted key; never stored.
    """

    pixels: np.ndarray
    laterality: str | None
    view: str | None
    orientation_row: str | None
    pixel_spacing: tuple[float, float] | None
    patient_id: str | None
    sop_instance_uid: str | None


def _parse(data: bytes) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        pass  # no 128-byte preamble + "DICM": tried as a raw data set below
    except Exception as exc:  # a truncated or corrupt header
        raise RejectedImage(f"unreadable DICOM header ({type(exc).__name__})") from None
    else:
        if len(ds) == 0:
            # pydicom gives up silently on a data set cut inside encapsulated pixel data.
            raise RejectedImage("truncated or corrupt DICOM (no data elements could be read)")
        return ds
    # Old files without the 128-byte preamble: accept only if a real header parses.
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        ds.get("SOPClassUID")  # forces parsing of the first elements
    except Exception:
        raise RejectedImage("not a DICOM file") from None
    if len(ds) == 0 or "SOPClassUID" not in ds and "PixelData" not in ds:
        raise RejectedImage("not a DICOM file")
    return ds


def _sop_class_name(ds: pydicom.Dataset) -> str:
    sop = ds.get("SOPClassUID")
    return getattr(sop, "name", None) or str(sop) or "unknown SOP class"


def _check_image(ds: pydicom.Dataset) -> None:
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise RejectedImage("float pixel data is not a mammogram")
        raise RejectedImage(f"no pixel data ({_sop_class_name(ds)})")
    rows, cols = _check_header(ds)
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None or not ts.is_compressed:
        bits = int(ds.get("BitsAllocated", 16))
        expected = rows * cols * bits // 8
        have = len(ds.PixelData)
        if have < expected:
            raise RejectedImage(f"truncated pixel data ({have} of {expected} bytes)")


def _check_header(ds: pydicom.Dataset) -> tuple[int, int]:
    """The checks that need no pixel data: one 2-D grayscale frame of at least 16 x 16.
    Returns (rows, columns)."""
    spp = int(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if spp != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise RejectedImage(f"colour image (PhotometricInterpretation {photometric or '?'}, "
                            f"{spp} samples per pixel); expected MONOCHROME1/2 grayscale")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise RejectedImage(f"multi-frame object ({frames} frames); expected one 2-D image")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows < 16 or cols < 16:
        raise RejectedImage(f"image too small ({rows} x {cols} pixels)")
    return rows, cols


def _decode_with_gdcm(data: bytes) -> np.ndarray:
    """Decode through GDCM directly (it needs a file name, so the bytes go to a temp file)."""
    import gdcm  # imported lazily: only this rare transfer syntax needs it

    fd, path = tempfile.mkstemp(suffix=".dcm")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        reader = gdcm.ImageReader()
        reader.SetFileName(path)
        if not reader.Read():
            raise RejectedImage("pixel data could not be decoded by GDCM")
        image = reader.GetImage()
        fmt = image.GetPixelFormat().GetScalarTypeAsString()
        dtype = {"UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16,
                 "INT16": np.int16}.get(fmt)
        if dtype is None:
            raise RejectedImage(f"unsupported GDCM pixel format {fmt}")
        cols, rows = image.GetDimension(0), image.GetDimension(1)
        buf = image.GetBuffer().encode("utf-8", "surrogateescape")
        return np.frombuffer(buf, dtype=dtype)[: rows * cols].reshape(rows, cols).copy()
    finally:
        os.unlink(path)


def _stored_pixels(ds: pydicom.Dataset, data: bytes) -> np.ndarray:
    ts = ds.file_meta.get("TransferSyntaxUID")
    try:
        return ds.pixel_array
    except Exception as exc:
        if ts == uid.JPEGExtended12Bit and int(ds.get("BitsStored", 8)) > 8:
            return _decode_with_gdcm(data)
        name = getattr(ts, "name", str(ts))
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise RejectedImage(f"pixel data could not be decoded ({name}): {detail}") from None


def _first(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return str(value[0]).strip().upper() if len(value) else None
    text = str(value).strip().upper()
    return text or None


def _laterality(ds: pydicom.Dataset) -> str | None:
    for keyword in ("ImageLaterality", "Laterality", "FrameLaterality"):
        value = _first(ds.get(keyword))
        if value in ("L", "R"):
            return value
    return None


def _view(ds: pydicom.Dataset) -> str | None:
    view = _first(ds.get("ViewPosition"))
    if view:
        return view
    seq = ds.get("ViewCodeSequence")
    if seq:
        meaning = str(seq[0].get("CodeMeaning", "")).lower()
        for needle, code in (("medio-lateral oblique", "MLO"), ("cranio-caudal", "CC"),
                             ("medio-lateral", "ML"), ("latero-medial", "LM")):
            if needle in meaning:
                return code
    return None


def _orientation_row(ds: pydicom.Dataset) -> str | None:
    value = ds.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) < 2:
        return None
    row = str(value[0]).strip().upper()
    return row or None


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            try:
                spacing = (float(value[0]), float(value[1]))
            except (TypeError, ValueError):
                continue
            if spacing[0] > 0 and spacing[1] > 0:
                return spacing
    return None


def stretch_to_uint16(values: np.ndarray) -> np.ndarray:
    """Linear map of the image's own [min, max] onto [0, 65535].

    OpenCV's min-max normalisation computes in float32: a value may differ by 1 (of 65535)
    from exact rounding; min maps to 0 and max to 65535 exactly. It is much faster than an
    exact lookup table on a full-field image (docs/decisions.md, the preprocessing pipeline).
    """
    src = values if values.dtype in (np.uint8, np.uint16, np.int16) else values.astype(np.float64)
    lo, hi, _, _ = cv2.minMaxLoc(src)
    if not hi > lo:
        raise RejectedImage("constant image (no contrast after the LUTs)")
    return cv2.normalize(src, None, 0, UINT16_MAX, cv2.NORM_MINMAX, dtype=cv2.CV_16U)


def to_monochrome2_uint16(stored: np.ndarray, ds: pydicom.Dataset, *,
                          apply_voi: bool) -> np.ndarray:
    """Stored values -> (H, W) uint16 MONOCHROME2 stretched to [0, 65535]."""
    values = stored
    if "ModalityLUTSequence" in ds:
        values = apply_modality_lut(values, ds)
    else:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        if slope != 1 or intercept != 0:
            values = values.astype(np.float64) * slope + intercept
    if apply_voi and ("VOILUTSequence" in ds or "WindowCenter" in ds):
        values = apply_voi_lut(values, ds, index=0)
    out = stretch_to_uint16(np.asarray(values))
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        cv2.bitwise_not(out, dst=out)  # 65535 - x for uint16
    return out


def _decode_encapsulated(data: bytes) -> tuple[pydicom.Dataset, np.ndarray] | None:
    """The common compressed file in one pass over its pixel data: the header without the
    pixel data, then pydicom's decoder reading the fragments straight from the bytes. Reading
    the whole data set first copies the compressed pixel data twice more (the element, then
    its fragments): memory at the decode's peak, and CPU (docs/decisions.md).
    None for anything else (uncompressed, no preamble, any header or decoding problem): the
    full path then decodes it or gives the reason, exactly as before."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        ts = ds.file_meta.get("TransferSyntaxUID")
        if ts is None or not ts.is_encapsulated:
            return None
        _check_header(ds)
        stored = pixel_array(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - the full path below names the problem
        return None
    return ds, stored


def read_dicom(data: bytes, *, apply_voi: bool = True, timer=no_timer) -> DicomImage:
    """Decode one DICOM file's bytes; raise :class:`RejectedImage` with the reason if unusable."""
    with timer("decode"):
        fast = _decode_encapsulated(data)
        if fast is not None:
            ds, stored = fast
        else:
            ds = _parse(data)
            _check_image(ds)
            stored = _stored_pixels(ds, data)
    if stored.ndim != 2:
        raise RejectedImage(f"decoded pixel array has shape {stored.shape}; expected (H, W)")
    with timer("luts"):
        pixels = to_monochrome2_uint16(stored, ds, apply_voi=apply_voi)
    patient_id = ds.get("PatientID")
    return DicomImage(
        pixels=pixels,
        laterality=_laterality(ds),
        view=_view(ds),
        orientation_row=_orientation_row(ds),
        pixel_spacing=_pixel_spacing(ds),
        patient_id=str(patient_id) if patient_id else None,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")) or None,
    )


def read_patient_id(fileobj: typing.BinaryIO) -> str | None:
    """PatientID from a seekable file object, reading the header only; None when absent."""
    try:
        ds = pydicom.dcmread(fileobj, stop_before_pixels=True, specific_tags=["PatientID"],
                             force=True)
        value = ds.get("PatientID")
    except Exception:
        return None
    return str(value) if value else None
