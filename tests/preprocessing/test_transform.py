"""process_record / process_batch on real files, without Ray: rows, rejections, masks."""

import json

import numpy as np
import pyarrow as pa
import pytest

from mammoray.core.config import DataConfig
from mammoray.synthetic.folder import FolderOptions, write_folder_dataset
from preprocessing.transform import COLUMNS, image_from_row, process_batch, process_record

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    truth = write_folder_dataset(FolderOptions(output=str(root), patients=1, seed=11,
                                               height=200, width=160, defects=True))
    return root, truth


def record(root, relpath, mask=True):
    path = str(root / relpath)
    spec = json.dumps({"kind": "png", "path": path[:-4] + "_mask.png"})
    return {"image_id": "img", "patient_key": "pk", "source": "folder", "split": "train",
            "relpath": relpath, "dicom_path": path, "mask": spec if mask else "",
            "reject": "", "laterality_hint": "", "view_hint": "", "pathology": None,
            "assessment": None, "abnormality_count": None}


def test_good_row(tree):
    root, truth = tree
    image = truth["images"][0]
    row = process_record(record(root, image["relpath"]), DataConfig(size=64))
    assert set(row) == set(COLUMNS)
    assert row["status"] == "ok" and row["reason"] is None and row["relpath"] is None
    img, mask = image_from_row(row)
    assert img.shape == mask.shape == (64, 64)
    assert img.dtype == np.uint16 and mask.dtype == np.uint8
    assert (row["orig_height"], row["orig_width"]) == (200, 160)
    assert row["has_mask_annotation"] and row["has_mass"] == (image["mass_pixels"] > 0)
    assert row["mass_pixels"] == int(mask.sum())
    assert row["laterality"] == image["laterality"] and row["view"] == image["view"]
    assert row["pixel_spacing_row"] == pytest.approx(240.0 / 160, abs=1e-5)


def test_image_without_mask_file(tree):
    root, truth = tree
    row = process_record(record(root, truth["images"][1]["relpath"], mask=False),
                         DataConfig(size=32))
    assert row["status"] == "ok" and not row["has_mask_annotation"] and not row["has_mass"]
    assert image_from_row(row)[1].sum() == 0


def test_defects_become_rejected_rows(tree):
    root, truth = tree
    batch = pa.Table.from_pylist([record(root, d["relpath"]) for d in truth["defects"]])
    out = process_batch(batch, DataConfig(size=32)).to_pydict()
    assert list(out) == list(COLUMNS)
    for defect, status, reason, relpath, image in zip(truth["defects"], out["status"],
                                                      out["reason"], out["relpath"],
                                                      out["image"]):
        assert status == "rejected" and relpath == defect["relpath"] and image == b""
        assert defect["expect"] in reason


def test_adapter_rejection_passes_through(tree):
    root, truth = tree
    rec = dict(record(root, truth["images"][0]["relpath"]), reject="full image of X not found")
    row = process_record(rec, DataConfig(size=32))
    assert row["status"] == "rejected" and row["reason"] == "full image of X not found"


def test_missing_file_is_rejected_not_raised(tree):
    root, _ = tree
    row = process_record(record(root, "nope/gone.dcm"), DataConfig(size=32))
    assert row["status"] == "rejected" and row["reason"].startswith("file could not be read")
