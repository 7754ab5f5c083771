"""What every synthetic layout shares: options, the four views, fake patient fields (so that
de-identification is tested on them), mask PNGs and deterministic UIDs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from pydicom import uid

VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
FAKE_INSTITUTION = "ZZSYNTH Breast Imaging Center"
# The transfer syntaxes a "mixed" dataset draws from.
MIXED_SYNTAXES = ("explicit-le", "rle", "jpeg-ls", "jpeg2000-lossless", "jpeg-lossless-sv1")


@dataclass(frozen=True)
class SynthOptions:
    """What every layout of ``jobs.synthesize`` takes (CBIS-DDSM and INbreast need no more)."""

    output: str
    patients: int = 4
    seed: int = 0
    height: int = 512
    width: int = 416
    transfer_syntax: str = "mixed"  # or one name of dicom_write.TRANSFER_SYNTAXES


def fake_patient(seed: int, index: int) -> dict[str, Any]:
    """Fake but realistic-looking patient fields for image headers (de-id is tested on them)."""
    return {
        "PatientName": f"ZZSYNTH^PATIENT{seed:03d}X{index:04d}",
        "PatientID": f"SYNPID-{seed:03d}-{index:05d}",
        "PatientBirthDate": f"19{50 + index % 40:02d}0{1 + index % 9}1{index % 9}",
        "PatientSex": "F",
        "StudyDate": f"2019{1 + index % 9:02d}{10 + index % 18:02d}",
        "ContentDate": f"2019{1 + index % 9:02d}{10 + index % 18:02d}",
        "StudyTime": "101500",
        "AccessionNumber": f"SYNACC{seed:03d}{index:05d}",
        "InstitutionName": FAKE_INSTITUTION,
        "ReferringPhysicianName": "ZZSYNTH^REFERRER",
        "StudyID": f"S{index:05d}",
    }


def write_mask_png(path: str, mask: np.ndarray) -> None:
    """A 0/1 mask as a 1-bit (bilevel) PNG: small, opens in any viewer, decodes fast."""
    ok, buf = cv2.imencode(".png", (mask > 0).astype(np.uint8) * 255,
                           [cv2.IMWRITE_PNG_BILEVEL, 1])
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    with open(path, "wb") as fh:
        fh.write(buf.tobytes())


def uid_of(*parts: object) -> str:
    """A DICOM UID derived from ``parts`` (the same parts give the same UID)."""
    return uid.generate_uid(entropy_srcs=[str(p) for p in parts])


def pick_syntax(rng: np.random.Generator, opts: SynthOptions) -> str:
    """The transfer syntax of the next file: the option's, or one drawn for "mixed"."""
    if opts.transfer_syntax != "mixed":
        return opts.transfer_syntax
    return str(rng.choice(list(MIXED_SYNTAXES)))


def truth_png(root: str, relpath: str, mask: np.ndarray, kind: str = "truth") -> str:
    """Write a 0/1 truth image of an image to ``truth/<relpath>.<kind>.png`` under ``root``
    (the mass mask of the CBIS-DDSM and INbreast layouts, which keep their own annotation
    formats; a scanned film's label pixels or breast); returns its path relative to
    ``root``."""
    path = os.path.join(root, "truth", f"{relpath}.{kind}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_mask_png(path, mask)
    return os.path.relpath(path, root)
