"""Writing mammography DICOM files in any transfer syntax a reader must handle.

Used by the synthetic generator and by the tests, so the readers are exercised on real files.
pydicom encodes RLE, JPEG-LS and JPEG 2000 itself (pylibjpeg-rle, pyjpegls,
pylibjpeg-openjpeg); JPEG Lossless, JPEG baseline/extended and big endian are produced by
GDCM's transcoder.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

# name -> (transfer syntax UID, encoder, extra compress() arguments)
TRANSFER_SYNTAXES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "implicit-le": (uid.ImplicitVRLittleEndian, "pydicom", {}),
    "explicit-le": (uid.ExplicitVRLittleEndian, "pydicom", {}),
    "explicit-be": (uid.ExplicitVRBigEndian, "gdcm", {}),
    "deflated": (uid.DeflatedExplicitVRLittleEndian, "pydicom", {}),
    "rle": (uid.RLELossless, "pydicom", {}),
    "jpeg-lossless": (uid.JPEGLossless, "gdcm", {}),
    "jpeg-lossless-sv1": (uid.JPEGLosslessSV1, "gdcm", {}),
    "jpeg-baseline": (uid.JPEGBaseline8Bit, "gdcm", {}),
    "jpeg-extended": (uid.JPEGExtended12Bit, "gdcm", {}),
    "jpeg-ls": (uid.JPEGLSLossless, "pydicom", {}),
    "jpeg-ls-near": (uid.JPEGLSNearLossless, "pydicom", {"jls_error": 2}),
    "jpeg2000-lossless": (uid.JPEG2000Lossless, "pydicom", {}),
    "jpeg2000": (uid.JPEG2000, "pydicom", {"j2k_cr": [8]}),
}
LOSSY = {"jpeg-baseline", "jpeg-extended", "jpeg-ls-near", "jpeg2000"}

MAMMO_SOP_CLASS = uid.DigitalMammographyXRayImageStorageForPresentation


def image_dataset(pixels: np.ndarray, *, bits_stored: int,
                  photometric: str = "MONOCHROME2",
                  sop_class: str = MAMMO_SOP_CLASS,
                  attributes: dict[str, Any] | None = None) -> Dataset:
    """A single-frame grayscale image dataset; ``attributes`` are set by keyword last."""
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16, np.int16):
        raise ValueError(f"expected a 2-D uint8/uint16/int16 array, got {pixels.dtype} "
                         f"{pixels.shape}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid.generate_uid()
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.Modality = "MG"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for keyword, value in (attributes or {}).items():
        setattr(ds, keyword, value)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ts = ds.file_meta.TransferSyntaxUID
    ds.save_as(buf, implicit_vr=ts == uid.ImplicitVRLittleEndian, enforce_file_format=True)
    return buf.getvalue()


def _gdcm_transcode(data: bytes, transfer_syntax: str) -> bytes:
    import gdcm

    names = {uid.ExplicitVRBigEndian: "ExplicitVRBigEndian",
             uid.JPEGLossless: "JPEGLosslessProcess14",
             uid.JPEGLosslessSV1: "JPEGLosslessProcess14_1",
             uid.JPEGBaseline8Bit: "JPEGBaselineProcess1",
             uid.JPEGExtended12Bit: "JPEGExtendedProcess2_4"}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.dcm"), os.path.join(tmp, "out.dcm")
        with open(src, "wb") as fh:
            fh.write(data)
        reader = gdcm.ImageReader()
        reader.SetFileName(src)
        if not reader.Read():
            raise RuntimeError("GDCM could not read the dataset to transcode")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax,
                                                             names[transfer_syntax])))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"GDCM could not transcode to {transfer_syntax}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(dst)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("GDCM could not write the transcoded dataset")
        with open(dst, "rb") as fh:
            return fh.read()


def encode(ds: Dataset, syntax: str) -> bytes:
    """The file bytes of ``ds`` in the transfer syntax named ``syntax`` (TRANSFER_SYNTAXES)."""
    if syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {syntax!r}; choose one of "
                         + ", ".join(TRANSFER_SYNTAXES))
    ts, encoder, kwargs = TRANSFER_SYNTAXES[syntax]
    ds = ds.copy()
    if encoder == "gdcm":
        return _gdcm_transcode(_to_bytes(ds), ts)
    if pydicom.uid.UID(ts).is_compressed:
        ds.compress(ts, generate_instance_uid=False, **kwargs)
    else:
        ds.file_meta.TransferSyntaxUID = ts
    return _to_bytes(ds)


def corrupt_rle_segments(data: bytes) -> bytes:
    """A 16-bit RLE Lossless file whose frame is damaged so that pylibjpeg-rle panics in Rust
    (``pyo3_runtime.PanicException``: a BaseException, not an Exception), whatever the image.

    The frame keeps a valid segment table and a valid first (high-byte) segment; its second
    segment first decodes 65 bytes fewer than a segment holds, then a replicate run of 128.
    The decoder checks that run's length against the frame as if it wrote every byte, while it
    writes every second byte: the run passes the check, then writes past the end of the frame.
    """
    import struct

    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(data))
    if ds.file_meta.TransferSyntaxUID != uid.RLELossless or int(ds.BitsAllocated) != 16:
        raise ValueError("expected a 16-bit RLE Lossless file")
    plane = int(ds.Rows) * int(ds.Columns)
    first = _replicate_runs(plane)
    second = _replicate_runs(plane - 65) + bytes([129, 0])  # a run of 128 too many
    header = struct.pack("<16I", 2, 64, 64 + len(first), *([0] * 13))
    ds.PixelData = encapsulate([header + first + second])
    return _to_bytes(ds)


def _replicate_runs(n: int) -> bytes:
    """RLE runs that decode to ``n`` zero bytes, padded to an even length."""
    out = bytearray()
    while n > 0:
        k = min(128, n)
        out += bytes([0, 0]) if k == 1 else bytes([257 - k, 0])
        n -= k
    return bytes(out)
