"""Several datasets in one run on a real local Ray: INbreast (augmented) + CBIS-DDSM."""

from __future__ import annotations

import glob
import json
import os

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TEST_SALT

from mammoray.core.config import config_from_dict
from mammoray.core.deid import Salt, salted_key
from mammoray.synthetic.cbis_ddsm import write_cbis_ddsm
from mammoray.synthetic.common import SynthOptions
from mammoray.synthetic.inbreast import write_inbreast
from preprocessing.pipeline import run_preprocess
from preprocessing.transform import image_from_row

pytestmark = pytest.mark.ray

SIZE = 96


@pytest.fixture(scope="module")
def run(tmp_path_factory, local_ray):
    base = tmp_path_factory.mktemp("multi")
    inb = write_inbreast(SynthOptions(output=str(base / "inb"), patients=4, seed=2,
                                       height=240, width=192))
    cbis = write_cbis_ddsm(SynthOptions(output=str(base / "cbis"), patients=4, seed=2,
                                         height=240, width=192))
    mp = pytest.MonkeyPatch()
    mp.setenv("MAMMORAY_PATIENT_SALT", TEST_SALT)
    try:
        cfg = config_from_dict({"data": {
            "output": str(base / "out"), "size": SIZE, "val_fraction": 0.25,
            "test_fraction": 0.25,
            "sources": [{"format": "inbreast", "input": str(base / "inb"),
                         "augment": {"copies": 2, "rotate_p": 1.0}},
                        {"format": "cbis-ddsm", "input": str(base / "cbis")}]}})
        summary = run_preprocess(cfg, log=lambda _: None)
    finally:
        mp.undo()
    rows = pq.read_table(glob.glob(str(base / "out" / "data" / "*.parquet"))).to_pylist()
    return base, inb, cbis, summary, rows


def test_counts_per_source(run):
    base, inb, cbis, summary, rows = run
    n_in = len(inb["images"]) + len(cbis["images"])
    rejected = sum("reject" in e for e in cbis["images"])
    assert summary["counts"]["input"] == n_in
    assert summary["counts"]["rejected"] == rejected == 1
    assert summary["counts"]["written"] == n_in - rejected
    assert set(summary["splits"]) == {"inbreast", "cbis-ddsm"}
    inb_train = summary["splits"]["inbreast"]["train"]
    assert inb_train["augmented_rows"] == 2 * inb_train["images"] > 0
    assert summary["splits"]["cbis-ddsm"]["train"]["augmented_rows"] == 0
    assert summary["counts"]["augmented_rows"] == len([r for r in rows if r["augment_index"]])


def test_no_leakage_and_augmentation_only_in_train(run):
    _, _, _, _, rows = run
    splits_of: dict[str, set[str]] = {}
    for row in rows:
        splits_of.setdefault(row["patient_key"], set()).add(row["split"])
        if row["augment_index"] > 0:
            assert row["split"] == "train" and row["source"] == "inbreast"
    assert all(len(s) == 1 for s in splits_of.values())


def test_cbis_official_test_respected(run):
    _, _, cbis, _, rows = run
    salt = Salt(TEST_SALT.encode(), "env")
    split_by_patient = {salted_key(salt, "cbis-ddsm", "patient", e["patient"]): e
                        for e in cbis["images"]}
    for row in rows:
        if row["source"] != "cbis-ddsm":
            continue
        entry = split_by_patient[row["patient_key"]]
        if entry["official_split"] == "test" or entry["patient"] == "P_00001":
            assert row["split"] == "test"
        else:
            assert row["split"] in ("train", "val")
        assert row["pathology"] in ("BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT")
        assert row["mass_shape"] and row["mass_margins"] and row["subtlety"] >= 1


def test_masks_match_truth_through_geometry(run):
    base, inb, cbis, _, rows = run
    salt = Salt(TEST_SALT.encode(), "env")
    by_id = {(r["image_id"], r["augment_index"]): r for r in rows}
    checked = 0
    for source, truth, root in (("inbreast", inb, base / "inb"), ("cbis-ddsm", cbis,
                                                                   base / "cbis")):
        for entry in truth["images"]:
            if "reject" in entry:
                continue
            row = by_id[(salted_key(salt, source, "image", entry["relpath"]), 0)]
            mask = cv2.imread(os.path.join(root, entry["truth"]), cv2.IMREAD_UNCHANGED) > 0
            x0, y0, x1, y1 = row["crop_x0"], row["crop_y0"], row["crop_x1"], row["crop_y1"]
            crop = mask[y0:y1, x0:x1].astype(np.uint8)
            if row["flipped"]:
                crop = np.ascontiguousarray(crop[:, ::-1])
            # A pixel is mass when at least half of what it covers is (area resampling).
            interp = cv2.INTER_AREA if min(crop.shape) >= SIZE else cv2.INTER_LINEAR
            expected = (cv2.resize(crop.astype(np.float32), (SIZE, SIZE),
                                   interpolation=interp) >= 0.5).astype(np.uint8)
            got = image_from_row(row)[1]
            union = np.logical_or(got, expected).sum()
            iou = np.logical_and(got, expected).sum() / union if union else 1.0
            assert iou >= 0.99, entry["relpath"]
            checked += 1
    assert checked == len(rows) - len([r for r in rows if r["augment_index"]])


def test_dataset_json_keeps_no_test_patient_list(run):
    base, _, _, _, _ = run
    text = (base / "out" / "dataset.json").read_text()
    params = json.loads(text)["parameters"]
    assert params["sources"][1]["format"] == "cbis-ddsm"
    assert "P_000" not in text
