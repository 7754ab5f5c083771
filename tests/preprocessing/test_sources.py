"""CBIS-DDSM and INbreast adapters on generated trees: masks equal the generator's truth,
traps are rejected with their reasons, patients and official splits are right."""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from mammoray.core.config import DataConfig, SourceConfig
from mammoray.synthetic.cbis_ddsm import write_cbis_ddsm
from mammoray.synthetic.common import SynthOptions
from mammoray.synthetic.inbreast import write_inbreast
from preprocessing.masks import MASK_READERS, fill_polygons, inbreast_polygons
from preprocessing.sources import SourceError, scan_cbis_ddsm, scan_inbreast
from preprocessing.transform import image_from_row, process_record

pytestmark = pytest.mark.unit


def truth_mask(root, entry):
    return cv2.imread(os.path.join(root, entry["truth"]), cv2.IMREAD_UNCHANGED) > 0


def mask_of(image):
    """The adapter's mask, built by the worker's reader, at the original size."""
    import pydicom

    shape = pydicom.dcmread(image.dicom_path, stop_before_pixels=True)
    return MASK_READERS[image.mask["kind"]](image.mask, (shape.Rows, shape.Columns))


def matched(images, truth):
    """(truth entry, adapter image) pairs; the adapter found exactly the truth's images."""
    by_path = {img.relpath: img for img in images}
    assert set(by_path) == {e["relpath"] for e in truth["images"]}
    return [(entry, by_path[entry["relpath"]]) for entry in truth["images"]]


def record(image):
    return {"image_id": image.relpath, "patient_key": "k", "source": image.source,
            "split": "train", "relpath": image.relpath, "dicom_path": image.dicom_path,
            "mask": json.dumps(image.mask) if image.mask else "", "reject": image.reject or "",
            "laterality_hint": image.laterality or "", "view_hint": image.view or ""}


@pytest.fixture(scope="module")
def cbis(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cbis"))
    truth = write_cbis_ddsm(SynthOptions(output=root, patients=4, seed=3, height=240,
                                          width=192))
    return root, truth, scan_cbis_ddsm(root, "cbis-ddsm")


def test_cbis_images_patients_and_official_split(cbis):
    root, truth, images = cbis
    for entry, img in matched(images, truth):
        assert img.patient == entry["patient"] and img.official_split == entry["official_split"]
        assert img.laterality == entry["laterality"] and img.view == entry["view"]
        assert img.reject is None
        assert img.extra["abnormality_count"] == entry["abnormalities"]
        assert img.extra["pathology"] in ("BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT")
    # The UID ("classic") layout patient was linked by the CSV's exact path.
    assert any(e["relpath"].endswith("000000.dcm") for e in truth["images"])
    # Test patients: those of the Mass-Test table, and P_00001, whose mass cases are all in
    # training but whose calcification case is in the official test table.
    mass_test = {e["patient"] for e in truth["images"] if e["official_split"] == "test"}
    assert "P_00001" not in mass_test
    for img in images:
        assert img.official_test_patient == (img.patient in mass_test | {"P_00001"})


def test_cbis_masks_equal_truth_and_union(cbis):
    root, truth, images = cbis
    by_path = {img.relpath: img for img in images}
    checked_union = False
    for entry in truth["images"]:
        if "reject" in entry:
            continue
        mask, count = mask_of(by_path[entry["relpath"]])
        np.testing.assert_array_equal(mask > 0, truth_mask(root, entry))
        assert count == entry["abnormalities"]
        checked_union |= entry["abnormalities"] == 2
    assert checked_union  # an image with two abnormalities: the union of both ROI masks


def test_cbis_size_mismatch_is_rejected_with_reason(cbis):
    root, truth, images = cbis
    trapped = [e for e in truth["images"] if "reject" in e]
    assert len(trapped) == 1
    img = next(i for i in images if i.relpath == trapped[0]["relpath"])
    row = process_record(record(img), DataConfig(size=32))
    assert row["status"] == "rejected"
    assert "ROI mask of abnormality 1 does not match the image size 240 x 192" in row["reason"]


def test_cbis_missing_files_and_tables(cbis, tmp_path):
    root, truth, _ = cbis
    copy = tmp_path / "cbis"
    shutil.copytree(root, copy)
    first = truth["images"][0]["relpath"]
    os.remove(copy / first)
    images = scan_cbis_ddsm(str(copy), "cbis-ddsm")
    missing = [i for i in images if i.reject]
    assert len(missing) == 1 and missing[0].reject.startswith("full image of ")
    assert "not found (expected one DICOM in its folder, found 0)" in missing[0].reject
    for name in os.listdir(copy):
        if name.startswith("mass_case"):
            os.remove(copy / name)
    with pytest.raises(SourceError, match="no mass_case_description"):
        scan_cbis_ddsm(str(copy), "cbis-ddsm")


@pytest.fixture(scope="module")
def inbreast(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("inbreast"))
    truth = write_inbreast(SynthOptions(output=root, patients=3, seed=5, height=240,
                                         width=192))
    options = SourceConfig(format="inbreast", input=root)
    return root, truth, scan_inbreast(root, "inbreast", options)


def test_inbreast_patients_views_and_table(inbreast):
    root, truth, images = inbreast
    for entry, img in matched(images, truth):
        assert img.patient == entry["patient"]
        assert (img.laterality, img.view) == (entry["laterality"], entry["view"])
        assert img.extra["assessment"] == entry["assessment"]  # from INbreast.xls
    # The repeat exam: 8 images of one patient hash.
    counts = {}
    for img in images:
        counts[img.patient] = counts.get(img.patient, 0) + 1
    assert sorted(counts.values()) == [4, 4, 8]


def test_inbreast_masks_match_truth(inbreast):
    root, truth, images = inbreast
    by_path = {img.relpath: img for img in images}
    with_mass = 0
    for entry in truth["images"]:
        mask, count = mask_of(by_path[entry["relpath"]])
        expected = truth_mask(root, entry)
        union = np.logical_or(mask, expected).sum()
        iou = np.logical_and(mask, expected).sum() / union if union else 1.0
        assert iou >= 0.99, entry["relpath"]
        assert count == entry["masses"] or expected.sum() == 0
        with_mass += entry["masses"] > 0
    assert with_mass >= 3


def test_inbreast_roi_names_mapping_is_configurable():
    xml = _plist([("Mass", 4), ("Spiculated region", 4), ("Calcification", 1),
                  ("Point 3", 2), ("Cluster", 4), ("Espiculated Region", 4)])
    default = inbreast_polygons(xml, SourceConfig().mass_roi_names)
    assert len(default) == 3  # Mass + both spiculated spellings; not points or clusters
    only_mass = inbreast_polygons(xml, ["Mass"])
    assert len(only_mass) == 1
    square = fill_polygons(only_mass, (20, 20))
    assert square.sum() == 16 and square[2:6, 2:6].all()  # (2,2)-(5,5) inclusive


def _plist(rois):
    import plistlib

    entries = []
    for name, n in rois:
        pts = ["(2.0, 2.0)", "(5.0, 2.0)", "(5.0, 5.0)", "(2.0, 5.0)"][:n]
        entries.append({"Name": name, "NumberOfPoints": n, "Point_px": pts})
    return plistlib.dumps({"Images": [{"NumberOfROIs": len(rois), "ROIs": entries}]},
                          fmt=plistlib.FMT_XML)


def test_inbreast_csv_export_and_bad_names(inbreast, tmp_path):
    root, truth, _ = inbreast
    copy = tmp_path / "inb"
    shutil.copytree(root, copy)
    os.remove(copy / "INbreast.xls")  # falls back to the CSV export
    with open(copy / "AllDICOMs" / "scan_of_something.dcm", "wb") as fh:
        fh.write(b"x")
    images = scan_inbreast(str(copy), "inbreast", SourceConfig(format="inbreast", input="x"))
    by_path = {img.relpath: img for img in images}
    entry = truth["images"][0]
    assert by_path[entry["relpath"]].extra["assessment"] == entry["assessment"]
    bad = by_path["AllDICOMs/scan_of_something.dcm"]
    assert bad.reject.startswith("file name does not follow INbreast's")
    shutil.rmtree(copy / "AllDICOMs")
    with pytest.raises(SourceError, match="no AllDICOMs"):
        scan_inbreast(str(copy), "inbreast", None)


def test_inbreast_row_through_preprocessing(inbreast):
    root, truth, images = inbreast
    entry = next(e for e in truth["images"] if e["masses"])
    img = next(i for i in images if i.relpath == entry["relpath"])
    row = process_record(record(img), DataConfig(size=64))
    assert row["status"] == "ok" and row["has_mass"] and row["abnormality_count"] >= 1
    assert image_from_row(row)[1].sum() == row["mass_pixels"] > 0
