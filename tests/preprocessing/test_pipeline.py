"""End to end on a real local Ray: synthetic DICOM tree (with broken files) -> Parquet."""

from __future__ import annotations

import glob
import json
import os
import signal

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TEST_SALT, job_env, start_held, stop

from mammoray.core.config import config_from_dict
from mammoray.core.deid import Salt, salted_key
from mammoray.synthetic.common import FAKE_INSTITUTION, fake_patient
from mammoray.synthetic.folder import FolderOptions, write_folder_dataset
from preprocessing.pipeline import PreprocessError, run_preprocess
from preprocessing.transform import image_from_row

pytestmark = pytest.mark.ray
SIZE = 128
PATIENTS = 4
SEED = 21


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    truth = write_folder_dataset(FolderOptions(
        output=str(root), patients=PATIENTS, seed=SEED, height=320, width=256, film=True,
        transfer_syntax="mixed", monochrome1_fraction=0.3, defects=True))
    return root, truth


@pytest.fixture(scope="module")
def result(raw, tmp_path_factory, local_ray):
    root, _ = raw
    out = tmp_path_factory.mktemp("out") / "dataset"
    logs: list[str] = []
    mp = pytest.MonkeyPatch()
    mp.setenv("MAMMORAY_PATIENT_SALT", TEST_SALT)
    try:
        cfg = config_from_dict({"data": {"input": str(root), "output": str(out), "size": SIZE,
                                         "rows_per_file": 5, "parquet_compression": "zstd"}})
        summary = run_preprocess(cfg, log=logs.append)
    finally:
        mp.undo()
    rows = pq.read_table(sorted(glob.glob(str(out / "data" / "*.parquet")))).to_pylist()
    return out, summary, rows, logs


def test_counts_and_reasons(raw, result):
    _, truth = raw
    out, summary, rows, logs = result
    n_images, n_defects = len(truth["images"]), len(truth["defects"])
    assert summary["counts"] == {"input": n_images + n_defects, "written": n_images,
                                 "rejected": n_defects, "augmented_rows": 0}
    assert len(rows) == n_images
    rejected = pq.read_table(out / "rejected.parquet").to_pylist()
    by_path = {r["relpath"]: r["reason"] for r in rejected}
    assert set(by_path) == {d["relpath"] for d in truth["defects"]}
    for defect in truth["defects"]:
        assert defect["expect"] in by_path[defect["relpath"]]
    assert any(f"{n_images + n_defects} inputs = {n_images} written + {n_defects} rejected"
               in line for line in logs)
    on_disk = json.loads((out / "dataset.json").read_text())
    assert on_disk["counts"] == summary["counts"] and on_disk["schema_version"] == 2
    split_total = sum(v["images"] for v in on_disk["splits"]["folder"].values())
    assert split_total == n_images


def test_qc_sheets_and_fingerprint(raw, result):
    """qc/folder.png holds data.qc_samples cards, qc/rejected.png one card per rejected file
    that could be decoded (here the mask of the wrong size); the fingerprint's mass sizes agree
    with the generator's truth masks measured on the original grid."""
    root, truth = raw
    out, summary, rows, _ = result
    sheet = cv2.imread(str(out / "qc" / "folder.png"))
    assert sheet.shape == (4 * (34 + 256 + 8), 2 * (2 * 256 + 8 + 8), 3)  # 8 cards, 2 a row
    rejected = cv2.imread(str(out / "qc" / "rejected.png"))
    assert rejected.shape == (34 + 256 + 8, 2 * (2 * 256 + 8 + 8), 3)
    assert rejected[34:290, 520:].max() == 40  # one card: the second place stays empty
    assert sorted(os.listdir(out / "qc")) == ["folder.png", "rejected.png"]  # cards removed
    assert summary["qc_sheets"] == {"folder": "qc/folder.png (8 cards)",
                                    "rejected": "qc/rejected.png (1 cards)"}
    print_ = summary["fingerprint"]["folder"]
    assert print_["images"] == len(rows) == len(truth["images"])
    assert print_["original_height"]["median"] == 320 and print_["original_width"]["max"] == 256
    assert print_["pixel_spacing_mm"]["median"] == pytest.approx(240 / 256, abs=1e-4)
    assert print_["flipped"] == sum(r["flipped"] for r in rows)
    for row in rows:
        assert 0 <= row["intensity_p01"] <= row["intensity_p50"] <= row["intensity_p99"] <= 65535
    salt = Salt(TEST_SALT.encode(), "env")
    by_id = {row["image_id"]: row for row in rows}
    want = []
    for image in truth["images"]:
        row = by_id[salted_key(salt, "folder", "image", image["relpath"])]
        if row["mass_pixels"] and row["pixel_spacing_row"]:
            area = image["mass_pixels"] * row["pixel_spacing_row"] * row["pixel_spacing_col"]
            want.append(2 * np.sqrt(area / np.pi))
    got = print_["mass_diameter_mm"]
    assert got["n"] == len(want) > 5
    assert got["median"] == pytest.approx(float(np.median(want)), rel=0.1)
    assert print_["masses_under_100_input_px"] == sum(1 for r in rows
                                                      if 0 < r["mass_pixels"] < 100)


def test_files_are_bounded_and_complete(result):
    out, _, rows, _ = result
    files = glob.glob(str(out / "data" / "*.parquet"))
    assert all(pq.ParquetFile(f).metadata.num_rows <= 5 for f in files)
    assert len(files) >= len(rows) // 5
    for f in files:  # the configured codec; the pixel bytes without dictionary or statistics
        group = pq.ParquetFile(f).metadata.row_group(0)
        chunks = {group.column(i).path_in_schema: group.column(i)
                  for i in range(group.num_columns)}
        assert {c.compression for c in chunks.values()} == {"ZSTD"}
        for name in ("image", "mask"):
            assert not chunks[name].is_stats_set
            assert not [e for e in chunks[name].encodings if "DICTIONARY" in e]
        assert chunks["split"].is_stats_set and chunks["split"].has_dictionary_page
    parent = os.path.dirname(out)
    assert not [p for p in os.listdir(parent) if ".partial-" in p]


def test_rows_shapes_dtypes_and_splits(result):
    _, _, rows, _ = result
    by_patient: dict[str, set[str]] = {}
    for row in rows:
        image, mask = image_from_row(row)
        assert image.shape == mask.shape == (SIZE, SIZE)
        assert image.dtype == np.uint16 and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        assert row["augment_index"] == 0 and row["source"] == "folder"
        assert row["reason"] is None and row["relpath"] is None
        assert "status" not in row
        by_patient.setdefault(row["patient_key"], set()).add(row["split"])
    assert len(by_patient) == PATIENTS
    assert all(len(s) == 1 for s in by_patient.values())  # no patient in two splits


def test_masks_match_the_generator_truth(raw, result):
    """Each row's mask is exactly the truth mask pushed through the row's recorded geometry,
    and the recorded crop holds the whole breast without taking the film's frame."""
    root, truth = raw
    _, _, rows, _ = result
    salt = Salt(TEST_SALT.encode(), "env")
    by_id = {row["image_id"]: row for row in rows}
    for image in truth["images"]:
        row = by_id[salted_key(salt, "folder", "image", image["relpath"])]
        truth_mask = cv2.imread(str(root / image["relpath"].replace(".dcm", "_mask.png")),
                                cv2.IMREAD_GRAYSCALE) > 0
        x0, y0, x1, y1 = row["crop_x0"], row["crop_y0"], row["crop_x1"], row["crop_y1"]
        crop = truth_mask[y0:y1, x0:x1].astype(np.uint8)
        assert row["flipped"] == (image["laterality"] == "R")
        if row["flipped"]:
            crop = np.ascontiguousarray(crop[:, ::-1])
        # A pixel is mass when at least half of what it covers is (area resampling).
        interp = cv2.INTER_AREA if min(crop.shape) >= SIZE else cv2.INTER_LINEAR
        expected = (cv2.resize(crop.astype(np.float32), (SIZE, SIZE),
                               interpolation=interp) >= 0.5).astype(np.uint8)
        np.testing.assert_array_equal(image_from_row(row)[1], expected)
        assert int(truth_mask[y0:y1, x0:x1].sum()) == image["mass_pixels"]
        bx0, by0, bx1, by1 = image["breast_box"]
        # The crop holds the breast, except rows/columns that a bright film border covers
        # (the generator's bands are at most 3% of a side).
        tx, ty = 0.03 * 256, 0.03 * 320
        assert x0 <= bx0 + tx and y0 <= by0 + ty and x1 >= bx1 - tx and y1 >= by1 - ty
        crop_area = (x1 - x0) * (y1 - y0)
        assert crop_area <= 1.25 * (bx1 - bx0) * (by1 - by0), image["relpath"]


def _forbidden_strings(truth) -> list[str]:
    values = [FAKE_INSTITUTION, "ZZSYNTH"]
    for index in list(range(PATIENTS)) + [9999]:
        patient = fake_patient(SEED, index)
        values += [patient["PatientID"], patient["AccessionNumber"],
                   patient["PatientBirthDate"], str(patient["PatientName"])]
    return values


def test_no_patient_field_reaches_any_output(raw, result):
    _, truth = raw
    out, _, _, logs = result
    forbidden = _forbidden_strings(truth)
    for path in glob.glob(str(out / "**" / "*"), recursive=True):
        if os.path.isdir(path):
            continue
        blob = open(path, "rb").read()
        for value in forbidden:
            assert value.encode() not in blob, (value, path)
        if path.endswith(".parquet"):
            table = pq.read_table(path)
            for column in table.column_names:
                if table.schema.field(column).type in ("string", "large_string"):
                    for cell in table.column(column).to_pylist():
                        assert not any(v in (cell or "") for v in forbidden), (column, cell)
    for line in logs:
        assert not any(v in line for v in forbidden)


def test_existing_output_stops_before_any_work(raw, result):
    root, _ = raw
    out, _, _, _ = result
    before = sorted(os.listdir(out / "data"))
    cfg = config_from_dict({"data": {"input": str(root), "output": str(out)}})
    with pytest.raises(PreprocessError, match="already exists"):
        run_preprocess(cfg)
    assert sorted(os.listdir(out / "data")) == before


def test_missing_input_is_named(tmp_path):
    cfg = config_from_dict({"data": {"input": str(tmp_path / "nope"),
                                     "output": str(tmp_path / "o")}})
    with pytest.raises(PreprocessError, match=r"--input .*nope: no such directory"):
        run_preprocess(cfg)


def test_killed_job_leaves_no_output_that_looks_complete(raw, tmp_path):
    """SIGKILL the job while it runs (deterministically: a fault holds its third image): the
    final output folder must not exist; only the staged partial one is left."""
    root, _ = raw
    out, hold = tmp_path / "killed", tmp_path / "hold"
    proc = start_held(["jobs.preprocess", "--input", str(root), "--output", str(out), "--size",
                       "64", "--num-cpus", "2"],
                      job_env({"at": "preprocess.image", "action": "hold", "dir": str(hold),
                               "arrival": 3}), hold, tmp_path / "log", timeout=120)
    stop(proc, signal.SIGKILL)  # the job; then what is left of its session (its Ray)
    assert not out.exists()
    assert len(glob.glob(str(out) + ".partial-*")) == 1


def test_ctrl_c_stops_the_job_and_publishes_nothing(raw, tmp_path):
    """Ctrl+C (SIGINT) while the job is held at its third image: it ends within 30 s with code
    130 and says so; no output, and no partial folder left."""
    root, _ = raw
    out, hold, log = tmp_path / "interrupted", tmp_path / "hold", tmp_path / "log"
    proc = start_held(["jobs.preprocess", "--input", str(root), "--output", str(out), "--size",
                       "64", "--num-cpus", "2"],
                      job_env({"at": "preprocess.image", "action": "hold", "dir": str(hold),
                               "arrival": 3}), hold, log, timeout=120)
    stopped = stop(proc, signal.SIGINT)
    err = log.read_text()
    assert proc.returncode == 130 and stopped <= 30, (stopped, err[-2000:])
    assert "interrupted: nothing partial was published; run the same command again" in err
    assert not out.exists() and not glob.glob(str(out) + ".partial-*")
