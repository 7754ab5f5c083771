"""A synthetic dataset in the real CBIS-DDSM layout, traps included.

- ``CBIS-DDSM/<Mass-Training_P_00001_LEFT_CC>/<date>-DDSM-<n>/1.000000-full mammogram
  images-<n>/1-1.dcm`` for the full image (NBIA's descriptive download names), and
  ``<subject>_<abnormality id>/.../1.000000-ROI mask images-<n>/1-1.dcm, 1-2.dcm`` for the
  cropped lesion and the ROI mask, in either order (only the size tells the mask). Some patients
  use the UID ("classic") layout whose paths match the CSV exactly.
- ``mass_case_description_{train,test}_set.csv`` and ``calc_case_description_{train,test}
  _set.csv`` with the real columns; the CSV paths name ``000000.dcm`` / ``000001.dcm`` under
  UID folders.
- The real dataset's traps, each planted where :data:`TRAPS` says.
- ``truth.json`` lists every image with its expected mask file (``truth/<relpath>.truth.png``)
  or the reason it must be rejected.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import cv2
import numpy as np
from pydicom import uid

from mammoray.synthetic import dicom_write
from mammoray.synthetic.common import VIEWS, SynthOptions, pick_syntax, truth_png, uid_of
from mammoray.synthetic.images import SyntheticImage, synthesize_image

CBIS_COLUMNS_MASS = [
    "patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
    "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
    "image file path", "cropped image file path", "ROI mask file path"]
CBIS_COLUMNS_CALC = [
    "patient_id", "breast density", "left or right breast", "image view", "abnormality id",
    "abnormality type", "calc type", "calc distribution", "assessment", "pathology",
    "subtlety", "image file path", "cropped image file path", "ROI mask file path"]
SHAPES = {"oval": "OVAL", "lobulated": "LOBULATED", "irregular": "IRREGULAR",
          "spiculated": "IRREGULAR-ARCHITECTURAL_DISTORTION"}
MARGINS = {"oval": "CIRCUMSCRIBED", "lobulated": "MICROLOBULATED", "irregular": "ILL_DEFINED",
           "spiculated": "SPICULATED"}
PATHOLOGIES = ("BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT")

# The real dataset's traps, each planted in the patient of this index (so that every tree of a
# few patients has them all); the adapter tests check each one.
TRAPS = {
    # The patient's first image has two masses: its mask is the union of two ROI masks.
    "two_abnormalities": 0,
    # The same patient's calcification case is in the official *test* table while the mass
    # cases are in training: the whole patient must go to test.
    "calc_case_in_test": 0,
    # The CSV's ROI mask path carries a stray newline, as real CSVs do.
    "newline_in_roi_path": 1,
    # The first image's first ROI mask is 24 rows short of its image: the image is rejected.
    "mismatched_roi_mask": 2,
}
# Patients 1, 5, 9, ... use the "classic" layout (UID folders, 000000.dcm names), the others
# NBIA's descriptive download names (1-1.dcm, 1-2.dcm).
UID_LAYOUT_EVERY = 4


def write_cbis_ddsm(opts: SynthOptions,
                    progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """Write a CBIS-DDSM-like tree (mass and calc tables, full images, ROI series);
    ``progress()`` after each patient."""
    root = opts.output
    os.makedirs(root, exist_ok=True)
    tables: dict[tuple[str, str], list[dict[str, Any]]] = {
        ("mass", "train"): [], ("mass", "test"): [], ("calc", "train"): [],
        ("calc", "test"): []}
    images: list[dict[str, Any]] = []
    n_test = max(1, opts.patients // 4)
    for index in range(opts.patients):
        split = "test" if index >= opts.patients - n_test else "train"
        images += _write_patient(opts, index, split, tables)
        if progress is not None:
            progress()
    for (kind, split), rows in tables.items():
        columns = CBIS_COLUMNS_MASS if kind == "mass" else CBIS_COLUMNS_CALC
        name = f"{kind}_case_description_{split}_set.csv"
        with open(os.path.join(root, name), "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    truth = {"format": "cbis-ddsm", "options": asdict(opts), "images": images}
    with open(os.path.join(root, "truth.json"), "w", encoding="utf-8") as fh:
        json.dump(truth, fh, indent=1)
    return truth


def _write_patient(opts: SynthOptions, index: int, split: str,
                   tables: dict[tuple[str, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One patient's images (about 60% of the four views) and CSV rows; the truth entries."""
    rng = np.random.default_rng([opts.seed, index, 7])
    patient = {"pid": f"P_{index * 7 + 1:05d}", "split": split, "index": index,
               "uid_layout": index % UID_LAYOUT_EVERY == 1,
               "density": int(rng.integers(1, 5))}
    chosen = [v for v in VIEWS if rng.random() < 0.6] or [VIEWS[0]]
    entries = []
    for lat, view in chosen:
        first = (lat, view) == chosen[0]
        entries.append(_write_image(opts, rng, patient, lat, view, first,
                                    tables[("mass", split)]))
    if index == TRAPS["calc_case_in_test"]:
        tables[("calc", "test")].append(_calc_row(patient["pid"], patient["density"]))
    return entries


def _cbis_image(rng: np.random.Generator, opts: SynthOptions, lat: str, view: str,
                n_masses: int) -> SyntheticImage:
    while True:  # every CBIS-DDSM mass image has at least one mass
        img = synthesize_image(rng, opts.height, opts.width, lat, view, film=True,
                               n_masses=n_masses)
        if img.masses:
            return img


def _write_image(opts: SynthOptions, rng: np.random.Generator, patient: dict[str, Any],
                 lat: str, view: str, first: bool, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The full image, one ROI series per abnormality and their CSV rows; the truth entry."""
    root, pid = opts.output, patient["pid"]
    n_masses = 2 if (patient["index"] == TRAPS["two_abnormalities"] and first) else 1
    img = _cbis_image(rng, opts, lat, view, n_masses)
    side = "LEFT" if lat == "L" else "RIGHT"
    prefix = "Mass-Test" if patient["split"] == "test" else "Mass-Training"
    subject = f"{prefix}_{pid}_{side}_{view}"
    study, series = uid_of(opts.seed, subject, "st"), uid_of(opts.seed, subject, "se")
    attrs = {"PatientID": subject, "PatientName": subject, "StudyInstanceUID": study,
             "SeriesInstanceUID": series, "SOPInstanceUID": uid_of(opts.seed, subject, "im"),
             "BodyPartExamined": "BREAST", "SeriesDescription": "full mammogram images"}
    ds = dicom_write.image_dataset(img.stored, bits_stored=16, attributes=attrs)
    full_dir = _series_dir(root, subject, patient["uid_layout"], "full", series, study, series)
    os.makedirs(full_dir, exist_ok=True)
    full_name = "000000.dcm" if patient["uid_layout"] else "1-1.dcm"
    with open(os.path.join(full_dir, full_name), "wb") as fh:
        fh.write(dicom_write.encode(ds, pick_syntax(rng, opts)))
    count, labels = cv2.connectedComponents(img.mask, connectivity=8)
    reject = None
    for abn in range(1, count):
        mismatched = (patient["index"] == TRAPS["mismatched_roi_mask"] and abn == 1 and first)
        roi_mask, roi_crop = _write_roi(opts, rng, patient, subject, abn,
                                        (labels == abn).astype(np.uint8), img, mismatched)
        if mismatched:
            reject = "does not match the image size"
        kind = img.masses[min(abn - 1, len(img.masses) - 1)].kind
        rows.append({
            "patient_id": pid, "breast_density": patient["density"],
            "left or right breast": side, "image view": view, "abnormality id": abn,
            "abnormality type": "mass", "mass shape": SHAPES[kind],
            "mass margins": MARGINS[kind], "assessment": int(rng.integers(2, 6)),
            "pathology": PATHOLOGIES[int(rng.integers(len(PATHOLOGIES)))],
            "subtlety": int(rng.integers(1, 6)),
            "image file path": f"{subject}/{study}/{series}/000000.dcm",
            "cropped image file path": roi_crop, "ROI mask file path": roi_mask})
    relpath = os.path.relpath(os.path.join(full_dir, full_name), root)
    entry = {"relpath": relpath, "patient": pid, "official_split": patient["split"],
             "laterality": lat, "view": view, "abnormalities": count - 1}
    if reject:
        entry["reject"] = reject
    else:
        entry["truth"] = truth_png(root, relpath, img.mask)
    return entry


def _write_roi(opts: SynthOptions, rng: np.random.Generator, patient: dict[str, Any],
               subject: str, abn: int, component: np.ndarray, img: SyntheticImage,
               mismatched: bool) -> tuple[str, str]:
    """One abnormality's ROI series (mask and cropped lesion, named in random order); returns
    the CSV's (ROI mask path, cropped image path)."""
    roi_subject = f"{subject}_{abn}"
    rstudy, rseries = uid_of(opts.seed, roi_subject, "st"), uid_of(opts.seed, roi_subject, "se")
    uid_layout = patient["uid_layout"]
    roi_dir = _series_dir(opts.output, roi_subject, uid_layout, "roi", rseries, rstudy, rseries)
    os.makedirs(roi_dir, exist_ok=True)
    mask_pixels = component * np.uint8(255)
    if mismatched:
        mask_pixels = mask_pixels[: opts.height - 24]
    mask_ds = dicom_write.image_dataset(
        np.ascontiguousarray(mask_pixels), bits_stored=8,
        sop_class=uid.SecondaryCaptureImageStorage,
        attributes={"PatientID": roi_subject, "PatientName": roi_subject,
                    "SeriesDescription": "ROI mask images",
                    "SOPInstanceUID": uid_of(opts.seed, roi_subject, "mask")})
    crop_ds = dicom_write.image_dataset(
        _lesion_crop(img.stored, component), bits_stored=16,
        sop_class=uid.SecondaryCaptureImageStorage,
        attributes={"PatientID": roi_subject, "PatientName": roi_subject,
                    "SeriesDescription": "cropped images",
                    "SOPInstanceUID": uid_of(opts.seed, roi_subject, "crop")})
    swap = bool(rng.random() < 0.5)  # which of 1-1 / 1-2 is the mask
    names = ("000001.dcm", "000000.dcm") if uid_layout else ("1-1.dcm", "1-2.dcm")
    mask_name, crop_name = (names[1], names[0]) if swap else names
    with open(os.path.join(roi_dir, mask_name), "wb") as fh:
        fh.write(dicom_write.encode(mask_ds, "explicit-le"))
    with open(os.path.join(roi_dir, crop_name), "wb") as fh:
        fh.write(dicom_write.encode(crop_ds, "explicit-le"))
    folder = f"{roi_subject}/{rstudy}/{rseries}/"
    csv_mask = folder + ("000001.dcm" if not swap else "000000.dcm")
    csv_crop = folder + ("000000.dcm" if not swap else "000001.dcm")
    if patient["index"] == TRAPS["newline_in_roi_path"] and abn == 1:
        csv_mask += "\n"
    return csv_mask, csv_crop


def _calc_row(pid: str, density: int) -> dict[str, Any]:
    """A calcification case of the patient in the official test table."""
    return {"patient_id": pid, "breast density": density, "left or right breast": "LEFT",
            "image view": "CC", "abnormality id": 1, "abnormality type": "calcification",
            "calc type": "PLEOMORPHIC", "calc distribution": "CLUSTERED", "assessment": 4,
            "pathology": "MALIGNANT", "subtlety": 3,
            "image file path": f"Calc-Test_{pid}_LEFT_CC/1.2.3/1.2.4/000000.dcm",
            "cropped image file path": f"Calc-Test_{pid}_LEFT_CC_1/1.2.5/1.2.6/000000.dcm",
            "ROI mask file path": f"Calc-Test_{pid}_LEFT_CC_1/1.2.5/1.2.6/000001.dcm"}


def _series_dir(root: str, subject: str, uid_layout: bool, kind: str, key: str,
                study: str, series: str) -> str:
    if uid_layout:
        return os.path.join(root, "CBIS-DDSM", subject, study, series)
    n = int(key[-5:], 16) % 100000
    name = ("1.000000-full mammogram images" if kind == "full"
            else "1.000000-ROI mask images") + f"-{n:05d}"
    return os.path.join(root, "CBIS-DDSM", subject, f"07-20-2016-DDSM-{n:05d}", name)


def _lesion_crop(stored: np.ndarray, component: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(component)
    pad = 8
    y0, y1 = max(0, ys.min() - pad), min(stored.shape[0], ys.max() + 1 + pad)
    x0, x1 = max(0, xs.min() - pad), min(stored.shape[1], xs.max() + 1 + pad)
    return np.ascontiguousarray(stored[y0:y1, x0:x1])
