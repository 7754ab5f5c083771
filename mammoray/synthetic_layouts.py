"""Synthetic datasets in the real CBIS-DDSM and INbreast layouts, traps included.

CBIS-DDSM (TCIA download tree + case description CSVs):
- ``CBIS-DDSM/<Mass-Training_P_00001_LEFT_CC>/<date>-DDSM-<n>/1.000000-full mammogram
  images-<n>/1-1.dcm`` for the full image (NBIA's descriptive download names), and
  ``<subject>_<abnormality id>/.../1.000000-ROI mask images-<n>/1-1.dcm, 1-2.dcm`` for the
  cropped lesion and the ROI mask, in either order (the trap: only the size tells the mask).
  A few patients use the UID ("classic") layout whose paths match the CSV exactly.
- ``mass_case_description_{train,test}_set.csv`` and ``calc_case_description_{train,test}
  _set.csv`` with the real columns; the CSV paths name ``000000.dcm`` / ``000001.dcm`` under
  UID folders. Traps: several abnormalities on one image (the mask is their union), one ROI
  mask whose size does not match its image, a ROI path with a trailing newline, a patient
  whose calcification case is in the official test set while the mass case is in training.

INbreast: ``AllDICOMs/<FileName>_<hash>_MG_<L|R>_<CC|ML>_ANON.dcm``, ``AllXML/<FileName>.xml``
(OsiriX plist: ``Images[0].ROIs`` with ``Name``, ``NumberOfPoints``, ``Point_px`` "(x, y)"),
``INbreast.xls`` (and ``INbreast.csv``); ROI names as inconsistent as the real ones
(``Mass``, ``Spiculated Region``, ``Espiculated Region``, ``Spiculated region`` for masses;
``Calcification``, ``Cluster``, ``Point 1``, ``Unnamed``... for the rest), calcification
points with 1-2 points, repeat exams of one patient, MONOCHROME1 and compressed files.

``truth.json`` lists every image with its expected mask file (``<relpath>.truth.png`` in
``truth/``) or the reason it must be rejected.
"""

from __future__ import annotations

import csv
import json
import os
import plistlib
from dataclasses import asdict
from typing import Any

import cv2
import numpy as np
from pydicom import uid

from mammoray import dicom_write
from mammoray.synthetic import (VIEWS, SynthOptions, SyntheticImage, _write_png, fake_patient,
                                synthesize_image)

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
MASS_ROI_NAMES = ("Mass", "Spiculated Region", "Espiculated Region", "Spiculated region")
OTHER_ROI_NAMES = ("Cluster", "Asymmetry", "Assymetry", "Distortion", "Unnamed")
INBREAST_XLS_COLUMNS = ["Patient ID", "Patient age", "Laterality", "View", "Acquisition date",
                        "File Name", "ACR", "Bi-Rads"]


def _uid(*parts: object) -> str:
    return uid.generate_uid(entropy_srcs=[str(p) for p in parts])


def _truth_png(root: str, relpath: str, mask: np.ndarray) -> str:
    path = os.path.join(root, "truth", relpath + ".truth.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_png(path, mask)
    return os.path.relpath(path, root)


def _syntax(rng: np.random.Generator, opts: SynthOptions) -> str:
    if opts.transfer_syntax != "mixed":
        return opts.transfer_syntax
    return str(rng.choice(["explicit-le", "rle", "jpeg-ls", "jpeg2000-lossless",
                           "jpeg-lossless-sv1"]))


# ------------------------------------------------------------------------------ CBIS-DDSM

def _cbis_image(rng: np.random.Generator, opts: SynthOptions, lat: str, view: str,
                n_masses: int) -> SyntheticImage:
    while True:  # every CBIS-DDSM mass image has at least one mass
        img = synthesize_image(rng, opts.height, opts.width, lat, view, film=True,
                               n_masses=n_masses)
        if img.masses:
            return img


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


def write_cbis_ddsm(opts: SynthOptions) -> dict[str, Any]:
    """Write a CBIS-DDSM-like tree (mass and calc tables, full images, ROI series)."""
    root = opts.output
    os.makedirs(root, exist_ok=True)
    rows = {("mass", "train"): [], ("mass", "test"): [], ("calc", "train"): [],
            ("calc", "test"): []}
    images: list[dict[str, Any]] = []
    n_test = max(1, opts.patients // 4)
    for index in range(opts.patients):
        rng = np.random.default_rng([opts.seed, index, 7])
        pid = f"P_{index * 7 + 1:05d}"
        split = "test" if index >= opts.patients - n_test else "train"
        prefix = "Mass-Test" if split == "test" else "Mass-Training"
        uid_layout = index % 4 == 1
        density = int(rng.integers(1, 5))
        chosen = [v for v in VIEWS if rng.random() < 0.6] or [VIEWS[0]]
        for lat, view in chosen:
            n_masses = 2 if (index == 0 and (lat, view) == chosen[0]) else 1
            img = _cbis_image(rng, opts, lat, view, n_masses)
            side = "LEFT" if lat == "L" else "RIGHT"
            subject = f"{prefix}_{pid}_{side}_{view}"
            study, series = _uid(opts.seed, subject, "st"), _uid(opts.seed, subject, "se")
            attrs = {"PatientID": subject, "PatientName": subject,
                     "StudyInstanceUID": study, "SeriesInstanceUID": series,
                     "SOPInstanceUID": _uid(opts.seed, subject, "im"),
                     "BodyPartExamined": "BREAST", "SeriesDescription": "full mammogram images"}
            ds = dicom_write.image_dataset(img.stored, bits_stored=16, attributes=attrs)
            full_dir = _series_dir(root, subject, uid_layout, "full", series, study, series)
            os.makedirs(full_dir, exist_ok=True)
            full_name = "000000.dcm" if uid_layout else "1-1.dcm"
            with open(os.path.join(full_dir, full_name), "wb") as fh:
                fh.write(dicom_write.encode(ds, _syntax(rng, opts)))
            count, labels = cv2.connectedComponents(img.mask, connectivity=8)
            reject = None
            for abn in range(1, count):
                component = (labels == abn).astype(np.uint8)
                roi_subject = f"{subject}_{abn}"
                rstudy, rseries = (_uid(opts.seed, roi_subject, "st"),
                                   _uid(opts.seed, roi_subject, "se"))
                roi_dir = _series_dir(root, roi_subject, uid_layout, "roi", rseries, rstudy,
                                      rseries)
                os.makedirs(roi_dir, exist_ok=True)
                mask_pixels = component * np.uint8(255)
                if index == 2 and abn == 1 and (lat, view) == chosen[0]:
                    mask_pixels = mask_pixels[: opts.height - 24]  # the size-mismatch trap
                    reject = "does not match the image size"
                mask_ds = dicom_write.image_dataset(
                    np.ascontiguousarray(mask_pixels), bits_stored=8,
                    sop_class=uid.SecondaryCaptureImageStorage,
                    attributes={"PatientID": roi_subject, "PatientName": roi_subject,
                                "SeriesDescription": "ROI mask images",
                                "SOPInstanceUID": _uid(opts.seed, roi_subject, "mask")})
                crop_ds = dicom_write.image_dataset(
                    _lesion_crop(img.stored, component), bits_stored=16,
                    sop_class=uid.SecondaryCaptureImageStorage,
                    attributes={"PatientID": roi_subject, "PatientName": roi_subject,
                                "SeriesDescription": "cropped images",
                                "SOPInstanceUID": _uid(opts.seed, roi_subject, "crop")})
                swap = bool(rng.random() < 0.5)  # which of 1-1 / 1-2 is the mask
                names = (("000001.dcm", "000000.dcm") if uid_layout
                         else ("1-1.dcm", "1-2.dcm"))
                mask_name, crop_name = (names[1], names[0]) if swap else names
                with open(os.path.join(roi_dir, mask_name), "wb") as fh:
                    fh.write(dicom_write.encode(mask_ds, "explicit-le"))
                with open(os.path.join(roi_dir, crop_name), "wb") as fh:
                    fh.write(dicom_write.encode(crop_ds, "explicit-le"))
                kind = img.masses[min(abn - 1, len(img.masses) - 1)].kind
                csv_mask = f"{roi_subject}/{rstudy}/{rseries}/" + (
                    "000001.dcm" if not swap else "000000.dcm")
                csv_crop = f"{roi_subject}/{rstudy}/{rseries}/" + (
                    "000000.dcm" if not swap else "000001.dcm")
                if index == 1 and abn == 1:
                    csv_mask += "\n"  # real CSVs carry stray newlines in paths
                rows[("mass", split)].append({
                    "patient_id": pid, "breast_density": density,
                    "left or right breast": side, "image view": view, "abnormality id": abn,
                    "abnormality type": "mass", "mass shape": SHAPES[kind],
                    "mass margins": MARGINS[kind], "assessment": int(rng.integers(2, 6)),
                    "pathology": PATHOLOGIES[int(rng.integers(len(PATHOLOGIES)))],
                    "subtlety": int(rng.integers(1, 6)),
                    "image file path": f"{subject}/{study}/{series}/000000.dcm",
                    "cropped image file path": csv_crop, "ROI mask file path": csv_mask})
            relpath = os.path.relpath(os.path.join(full_dir, full_name), root)
            entry = {"relpath": relpath, "patient": pid, "official_split": split,
                     "laterality": lat, "view": view, "abnormalities": count - 1}
            if reject:
                entry["reject"] = reject
            else:
                entry["truth"] = _truth_png(root, relpath, img.mask)
            images.append(entry)
        if index == 0:
            # The same patient's calcification case sits in the official *test* table.
            rows[("calc", "test")].append({
                "patient_id": pid, "breast density": density, "left or right breast": "LEFT",
                "image view": "CC", "abnormality id": 1, "abnormality type": "calcification",
                "calc type": "PLEOMORPHIC", "calc distribution": "CLUSTERED", "assessment": 4,
                "pathology": "MALIGNANT", "subtlety": 3,
                "image file path": f"Calc-Test_{pid}_LEFT_CC/1.2.3/1.2.4/000000.dcm",
                "cropped image file path": f"Calc-Test_{pid}_LEFT_CC_1/1.2.5/1.2.6/000000.dcm",
                "ROI mask file path": f"Calc-Test_{pid}_LEFT_CC_1/1.2.5/1.2.6/000001.dcm"})
    for (kind, split), table in rows.items():
        columns = CBIS_COLUMNS_MASS if kind == "mass" else CBIS_COLUMNS_CALC
        name = f"{kind}_case_description_{split}_set.csv"
        with open(os.path.join(root, name), "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(table)
    truth = {"format": "cbis-ddsm", "options": asdict(opts), "images": images}
    with open(os.path.join(root, "truth.json"), "w", encoding="utf-8") as fh:
        json.dump(truth, fh, indent=1)
    return truth


# ------------------------------------------------------------------------------- INbreast

def _polygon_points(component: np.ndarray) -> list[str]:
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=len)[:, 0, :]
    return [f"({x:.6f}, {y:.6f})" for x, y in contour]


def _roi(name: str, points: list[str], index: int) -> dict[str, Any]:
    return {"Area": 0.0, "Center": "(0.000000, 0.000000, 0.000000)", "Dev": 0.0,
            "IndexInImage": index, "Max": 0.0, "Mean": 0.0, "Min": 0.0, "Name": name,
            "NumberOfPoints": len(points), "Point_mm": [p[:-1] + ", 0.000000)" for p in points],
            "Point_px": points, "Total": 0.0, "Type": 15 if len(points) > 2 else 19}


def write_inbreast(opts: SynthOptions) -> dict[str, Any]:
    """Write an INbreast-like tree (AllDICOMs, AllXML, INbreast.xls/.csv)."""
    import xlwt  # the real INbreast.xls is an Excel 97 workbook

    root = opts.output
    for folder in ("AllDICOMs", "AllXML", "AllROI", "MedicalReports", "PectoralMuscle"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    images: list[dict[str, Any]] = []
    table: list[list[Any]] = []
    file_number = 20586908 + opts.seed * 1000
    for index in range(opts.patients):
        rng = np.random.default_rng([opts.seed, index, 11])
        patient_hash = f"{int(rng.integers(1 << 62)):016x}"
        exams = 2 if index == 1 else 1  # a repeat exam: same patient hash, new files
        for exam in range(exams):
            for lat, view in VIEWS:
                file_number += 1 + int(rng.integers(3))
                n_masses = int(rng.choice([0, 1, 2], p=[0.5, 0.35, 0.15]))
                mono1 = bool(rng.random() < 0.2)
                img = synthesize_image(rng, opts.height, opts.width, lat, view, film=False,
                                       n_masses=n_masses, monochrome1=mono1)
                short = "ML" if view == "MLO" else "CC"
                name = f"{file_number}_{patient_hash}_MG_{lat}_{short}_ANON.dcm"
                patient = fake_patient(opts.seed, 500 + index)
                attrs = dict(patient, ImageLaterality=lat, ViewPosition=view,
                             PatientOrientation=["A" if lat == "L" else "P",
                                                 "F" if view == "CC" else "FR"],
                             PixelSpacing=[0.07, 0.07],
                             SOPInstanceUID=_uid(opts.seed, name))
                if img.window is not None:
                    attrs.update(WindowCenter=round(img.window[0], 1),
                                 WindowWidth=round(img.window[1], 1))
                ds = dicom_write.image_dataset(img.stored, bits_stored=img.bits_stored,
                                               photometric=img.photometric, attributes=attrs)
                with open(os.path.join(root, "AllDICOMs", name), "wb") as fh:
                    fh.write(dicom_write.encode(ds, _syntax(rng, opts)))
                rois = []
                count, labels = cv2.connectedComponents(img.mask, connectivity=8)
                for c in range(1, count):
                    component = (labels == c).astype(np.uint8)
                    mass_name = MASS_ROI_NAMES[int(rng.integers(len(MASS_ROI_NAMES)))]
                    rois.append(_roi(mass_name, _polygon_points(component), len(rois)))
                ys, xs = np.nonzero(img.breast)
                for _ in range(int(rng.integers(0, 4))):  # calcification points: not masses
                    k = int(rng.integers(len(xs)))
                    pts = [f"({xs[k]:.6f}, {ys[k]:.6f})"]
                    if rng.random() < 0.3:
                        pts.append(f"({xs[k] + 2:.6f}, {ys[k] + 1:.6f})")
                    rois.append(_roi(str(rng.choice(["Calcification", "Calcifications",
                                                     "Point 1", "Point 3"])), pts, len(rois)))
                if rng.random() < 0.5:  # a non-mass polygon (cluster, asymmetry, ...)
                    k = int(rng.integers(len(xs)))
                    x, y = int(xs[k]), int(ys[k])
                    square = [f"({x + dx:.6f}, {y + dy:.6f})"
                              for dx, dy in ((0, 0), (12, 0), (12, 12), (0, 12))]
                    rois.append(_roi(OTHER_ROI_NAMES[int(rng.integers(len(OTHER_ROI_NAMES)))],
                                     square, len(rois)))
                if rois:
                    plist = {"Images": [{"ImageHeight": opts.height, "ImageIndex": 0,
                                         "ImageWidth": opts.width, "NumberOfROIs": len(rois),
                                         "ROIs": rois}]}
                    with open(os.path.join(root, "AllXML", f"{file_number}.xml"), "wb") as fh:
                        plistlib.dump(plist, fh, fmt=plistlib.FMT_XML)
                relpath = f"AllDICOMs/{name}"
                birads = str(int(rng.integers(1, 6))) if not img.masses else str(
                    int(rng.choice([3, 4, 5])))
                table.append(["removed", "", lat, short, f"2008{exam + 1:02d}", file_number,
                              int(rng.integers(1, 5)), birads])
                images.append({"relpath": relpath, "patient": patient_hash, "laterality": lat,
                               "view": view, "photometric": img.photometric,
                               "masses": len(img.masses), "assessment": birads,
                               "truth": _truth_png(root, relpath, img.mask)})
    book = xlwt.Workbook()
    sheet = book.add_sheet("Sheet1")
    for col, title in enumerate(INBREAST_XLS_COLUMNS):
        sheet.write(0, col, title)
    for r, row in enumerate(table, start=1):
        for col, value in enumerate(row):
            sheet.write(r, col, value)
    book.save(os.path.join(root, "INbreast.xls"))
    with open(os.path.join(root, "INbreast.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=";")
        writer.writerow(INBREAST_XLS_COLUMNS)
        writer.writerows(table)
    truth = {"format": "inbreast", "options": asdict(opts), "images": images}
    with open(os.path.join(root, "truth.json"), "w", encoding="utf-8") as fh:
        json.dump(truth, fh, indent=1)
    return truth
