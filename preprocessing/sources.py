"""Source adapters: a dataset tree -> manifest records, one per image.

A manifest record names the files of one image and its identities; the driver turns raw
patient identities into salted keys before anything is handed to Ray workers, so raw IDs never
leave the driver process.

Folder format: every ``*.dcm`` below the root (recursive, case-insensitive); an optional mask
``<stem>_mask.png`` beside a DICOM (0 = background, non-zero = mass). The patient is the DICOM
PatientID; a file without one is its own patient.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mammoray import storage
from preprocessing.dicom_io import read_patient_id


@dataclass
class SourceImage:
    """One image found by an adapter. ``patient`` is a raw identity (driver-side only)."""

    source: str
    relpath: str
    dicom_path: str
    mask_path: str
    patient: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def _relpath(path: str, root: str) -> str:
    return posixpath.relpath(path.replace("\\", "/"), root.replace("\\", "/").rstrip("/"))


def _header_patient_id(path: str) -> str | None:
    try:
        with storage.open_input(path) as fh:
            return read_patient_id(fh)
    except OSError:
        return None


def scan_folder(root: str, *, threads: int = 8) -> list[SourceImage]:
    """Folder-format images below ``root``, sorted by relative path."""
    files = storage.list_files(root)
    present = set(files)
    dicoms = [f for f in files if f.lower().endswith(".dcm")]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        patients = list(pool.map(_header_patient_id, dicoms))
    images = []
    for path, patient in zip(dicoms, patients):
        mask = path[: -len(".dcm")] + "_mask.png"
        images.append(SourceImage(source="folder", relpath=_relpath(path, root),
                                  dicom_path=path, mask_path=mask if mask in present else "",
                                  patient=patient))
    return images


SCANNERS = {"folder": scan_folder}
