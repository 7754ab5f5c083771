"""A synthetic dataset in the real INbreast layout, traps included.

``AllDICOMs/<FileName>_<hash>_MG_<L|R>_<CC|ML>_ANON.dcm``, ``AllXML/<FileName>.xml`` (OsiriX
plist: ``Images[0].ROIs`` with ``Name``, ``NumberOfPoints``, ``Point_px`` "(x, y)"),
``INbreast.xls`` (and ``INbreast.csv``). Traps: ROI names as inconsistent as the real ones
(``Mass``, ``Spiculated Region``, ``Espiculated Region``, ``Spiculated region`` for masses;
``Calcification``, ``Cluster``, ``Point 1``, ``Unnamed``... for the rest), calcification points
with 1-2 points, non-mass polygons, repeat exams of one patient (:data:`TRAPS`), MONOCHROME1
and compressed files. ``truth.json`` lists every image with its true mask file.
"""

from __future__ import annotations

import csv
import json
import os
import plistlib
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import cv2
import numpy as np

from mammoray.synthetic import dicom_write
from mammoray.synthetic.common import (
    VIEWS,
    SynthOptions,
    fake_patient,
    pick_syntax,
    truth_png,
    uid_of,
)
from mammoray.synthetic.images import SyntheticImage, synthesize_image

MASS_ROI_NAMES = ("Mass", "Spiculated Region", "Espiculated Region", "Spiculated region")
OTHER_ROI_NAMES = ("Cluster", "Asymmetry", "Assymetry", "Distortion", "Unnamed")
POINT_ROI_NAMES = ("Calcification", "Calcifications", "Point 1", "Point 3")
INBREAST_XLS_COLUMNS = ["Patient ID", "Patient age", "Laterality", "View", "Acquisition date",
                        "File Name", "ACR", "Bi-Rads"]
# The patient of this index has a repeat exam: the same patient hash on new files, so a split
# by file would put one patient on both sides.
TRAPS = {"repeat_exam": 1}
MONOCHROME1_FRACTION = 0.2


def write_inbreast(opts: SynthOptions,
                   progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """Write an INbreast-like tree (AllDICOMs, AllXML, INbreast.xls/.csv); ``progress()``
    after each patient."""
    root = opts.output
    for folder in ("AllDICOMs", "AllXML", "AllROI", "MedicalReports", "PectoralMuscle"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    images: list[dict[str, Any]] = []
    table: list[list[Any]] = []
    file_number = 20586908 + opts.seed * 1000
    for index in range(opts.patients):
        rng = np.random.default_rng([opts.seed, index, 11])
        patient_hash = f"{int(rng.integers(1 << 62)):016x}"
        exams = 2 if index == TRAPS["repeat_exam"] else 1
        for exam in range(exams):
            for lat, view in VIEWS:
                file_number += 1 + int(rng.integers(3))
                entry, row = _write_image(opts, rng, index, patient_hash, exam, file_number,
                                          lat, view)
                images.append(entry)
                table.append(row)
        if progress is not None:
            progress()
    _write_table(root, table)
    truth = {"format": "inbreast", "options": asdict(opts), "images": images}
    with open(os.path.join(root, "truth.json"), "w", encoding="utf-8") as fh:
        json.dump(truth, fh, indent=1)
    return truth


def _write_image(opts: SynthOptions, rng: np.random.Generator, index: int, patient_hash: str,
                 exam: int, file_number: int, lat: str,
                 view: str) -> tuple[dict[str, Any], list[Any]]:
    """One image's DICOM and XML; returns its truth entry and its INbreast.xls row."""
    root = opts.output
    n_masses = int(rng.choice([0, 1, 2], p=[0.5, 0.35, 0.15]))
    mono1 = bool(rng.random() < MONOCHROME1_FRACTION)
    img = synthesize_image(rng, opts.height, opts.width, lat, view, film=False,
                           n_masses=n_masses, monochrome1=mono1)
    short = "ML" if view == "MLO" else "CC"
    name = f"{file_number}_{patient_hash}_MG_{lat}_{short}_ANON.dcm"
    attrs = dict(fake_patient(opts.seed, 500 + index), ImageLaterality=lat, ViewPosition=view,
                 PatientOrientation=["A" if lat == "L" else "P", "F" if view == "CC" else "FR"],
                 PixelSpacing=[0.07, 0.07], SOPInstanceUID=uid_of(opts.seed, name))
    if img.window is not None:
        attrs.update(WindowCenter=round(img.window[0], 1), WindowWidth=round(img.window[1], 1))
    ds = dicom_write.image_dataset(img.stored, bits_stored=img.bits_stored,
                                   photometric=img.photometric, attributes=attrs)
    with open(os.path.join(root, "AllDICOMs", name), "wb") as fh:
        fh.write(dicom_write.encode(ds, pick_syntax(rng, opts)))
    rois = _rois(rng, img)
    if rois:
        plist = {"Images": [{"ImageHeight": opts.height, "ImageIndex": 0,
                             "ImageWidth": opts.width, "NumberOfROIs": len(rois),
                             "ROIs": rois}]}
        with open(os.path.join(root, "AllXML", f"{file_number}.xml"), "wb") as fh:
            plistlib.dump(plist, fh, fmt=plistlib.FMT_XML)
    relpath = f"AllDICOMs/{name}"
    birads = str(int(rng.integers(1, 6))) if not img.masses else str(int(rng.choice([3, 4, 5])))
    row = ["removed", "", lat, short, f"2008{exam + 1:02d}", file_number,
           int(rng.integers(1, 5)), birads]
    entry = {"relpath": relpath, "patient": patient_hash, "laterality": lat, "view": view,
             "photometric": img.photometric, "masses": len(img.masses), "assessment": birads,
             "truth": truth_png(root, relpath, img.mask)}
    return entry, row


def _rois(rng: np.random.Generator, img: SyntheticImage) -> list[dict[str, Any]]:
    """The image's OsiriX ROIs: one polygon per mass under a mass name, 0-3 calcification
    points (1-2 points each: never masses), and maybe a non-mass polygon."""
    rois = []
    count, labels = cv2.connectedComponents(img.mask, connectivity=8)
    for c in range(1, count):
        component = (labels == c).astype(np.uint8)
        mass_name = MASS_ROI_NAMES[int(rng.integers(len(MASS_ROI_NAMES)))]
        rois.append(_roi(mass_name, _polygon_points(component), len(rois)))
    ys, xs = np.nonzero(img.breast)
    for _ in range(int(rng.integers(0, 4))):
        k = int(rng.integers(len(xs)))
        pts = [f"({xs[k]:.6f}, {ys[k]:.6f})"]
        if rng.random() < 0.3:
            pts.append(f"({xs[k] + 2:.6f}, {ys[k] + 1:.6f})")
        rois.append(_roi(str(rng.choice(list(POINT_ROI_NAMES))), pts, len(rois)))
    if rng.random() < 0.5:  # a non-mass polygon (cluster, asymmetry, ...)
        k = int(rng.integers(len(xs)))
        x, y = int(xs[k]), int(ys[k])
        square = [f"({x + dx:.6f}, {y + dy:.6f})"
                  for dx, dy in ((0, 0), (12, 0), (12, 12), (0, 12))]
        rois.append(_roi(OTHER_ROI_NAMES[int(rng.integers(len(OTHER_ROI_NAMES)))], square,
                         len(rois)))
    return rois


def _polygon_points(component: np.ndarray) -> list[str]:
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=len)[:, 0, :]
    return [f"({x:.6f}, {y:.6f})" for x, y in contour]


def _roi(name: str, points: list[str], index: int) -> dict[str, Any]:
    return {"Area": 0.0, "Center": "(0.000000, 0.000000, 0.000000)", "Dev": 0.0,
            "IndexInImage": index, "Max": 0.0, "Mean": 0.0, "Min": 0.0, "Name": name,
            "NumberOfPoints": len(points), "Point_mm": [p[:-1] + ", 0.000000)" for p in points],
            "Point_px": points, "Total": 0.0, "Type": 15 if len(points) > 2 else 19}


def _write_table(root: str, table: list[list[Any]]) -> None:
    """INbreast.xls (an Excel 97 workbook, as the real one) and its CSV export."""
    import xlwt

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
