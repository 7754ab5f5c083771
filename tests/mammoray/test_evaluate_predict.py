"""jobs.evaluate and jobs.predict on a real local Ray, real Parquet and real DICOM files.

The checkpoint is a real Keras model saved the way jobs.train saves one: a 1x1 convolution with
fixed weights, sigmoid(20 x - 14), which marks the bright tissue. It is deterministic and gives
masks with real outlines, so the Ray Data pipeline's figures can be checked against a direct
in-process computation, and the DICOM SEG against the PNG mask.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from conftest import preprocessed

from mammoray import evaluation as ev
from mammoray.config import ConfigError, RayConfig, config_from_dict
from mammoray.synthetic import fake_patient

SIZE = 64
SEED = 5
PATIENTS = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory, local_ray):
    import keras

    from mammoray.train import read_dataset_json, write_checkpoint
    base = tmp_path_factory.mktemp("evalpred")
    preprocessed(base, patients=PATIENTS, seed=SEED, size=SIZE, val=0.25, test=0.25)
    inp = keras.Input((SIZE, SIZE, 1))
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", name="head",
                              kernel_initializer=keras.initializers.Constant(20.0),
                              bias_initializer=keras.initializers.Constant(-14.0))(inp)
    ckpt = base / "run" / "best"
    ckpt.mkdir(parents=True)
    write_checkpoint(str(ckpt), keras.Model(inp, out), config_from_dict({}).to_dict(), SIZE,
                     read_dataset_json(str(base / "ds"))["parameters"])
    return base, ckpt


def direct_stats(ckpt, data, split):
    """Per-image stats computed in this process, without Ray."""
    import pyarrow.parquet as pq

    from mammoray.train import decode_batch, load_checkpoint_model

    model, _, size = load_checkpoint_model(str(ckpt))
    t = pq.read_table(glob.glob(os.path.join(data, "data", "*.parquet"))).to_pylist()
    rows = sorted((r for r in t if r["split"] == split and r["augment_index"] == 0),
                  key=lambda r: r["image_id"])
    x, y = decode_batch({"image": [r["image"] for r in rows],
                         "mask": [r["mask"] for r in rows]}, size)
    prob = np.asarray(model(x))[..., 0]
    return rows, [ev.image_stats(y[i, ..., 0], prob[i]) for i in range(len(rows))]


def patient_strings():
    out = []
    for i in range(PATIENTS):
        p = fake_patient(SEED, i)
        out += [p["PatientName"], p["PatientID"], p["PatientBirthDate"], p["AccessionNumber"],
                p["InstitutionName"]]
    return out


def test_evaluate_matches_direct_computation(world):
    from mammoray.evaluate import EvaluateOptions, run_evaluation

    base, ckpt = world
    data = str(base / "ds")
    out = base / "eval"
    result = run_evaluation(EvaluateOptions(checkpoint=str(ckpt), data=data, split="test",
                                            output=str(out), threshold="val", bootstrap=200),
                            RayConfig(), log=lambda _: None)
    # The threshold comes from the validation split, never from the test split.
    _, val_stats = direct_stats(ckpt, data, "val")
    expected_t, k = ev.choose_threshold(ev.Table.from_rows(val_stats))
    assert result["protocol"]["threshold"] == expected_t
    assert result["protocol"]["split"] == "test" and result["protocol"]["input_size"] == SIZE
    assert "validation" in result["protocol"]["threshold_source"]
    rows, stats = direct_stats(ckpt, data, "test")
    expected = ev.aggregate(ev.Table.from_rows(stats), k)
    for key in ("mean_dice", "pooled_dice", "mean_iou", "sensitivity", "fp_per_image",
                "pixel_accuracy"):
        assert result["figures"][key] == pytest.approx(expected[key], nan_ok=True)
    assert result["figures"]["images"] == len(rows)
    with open(out / "metrics.json") as fh:
        saved = json.load(fh)  # strict JSON (NaN written as null)
    assert saved["figures"]["images"] == len(rows)
    lo, hi = saved["confidence_intervals"]["mean_dice"]
    assert lo <= saved["figures"]["mean_dice"] <= hi
    with open(out / "per_image.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["image_id"] for r in table] == [r["image_id"] for r in rows]
    for r, s in zip(table, stats):
        m = ev.per_image_metrics(s, k)
        if s["truth"] > 0:
            assert float(r["dice"]) == pytest.approx(m["dice"], abs=1e-5)
        else:
            assert r["dice"] == ""
        assert int(r["detected"]) == s["hits"][k] and int(r["lesions"]) == s["lesions"]
    assert len(saved["froc"]) == len(ev.THRESHOLDS)
    for name in ("froc.png", "report.html"):
        assert (out / name).stat().st_size > 0
    overlays = sorted(os.listdir(out / "overlays"))
    assert overlays and all(cv2.imread(str(out / "overlays" / f)) is not None for f in overlays)
    assert "split <b>test</b>" in (out / "report.html").read_text()
    assert not glob.glob(str(base / "eval.partial-*"))
    # No patient field anywhere in the outputs.
    blob = b"".join(open(f, "rb").read() for f in glob.glob(str(out / "**" / "*"),
                                                             recursive=True)
                    if os.path.isfile(f))
    for s in patient_strings():
        assert s.encode() not in blob


def test_evaluate_bad_inputs_stop_before_work(world, tmp_path):
    from mammoray.evaluate import EvaluateOptions, run_evaluation

    base, ckpt = world
    data = str(base / "ds")

    def go(**kw):
        opts = dict(checkpoint=str(ckpt), data=data, output=str(tmp_path / "o"))
        opts.update(kw)
        run_evaluation(EvaluateOptions(**opts), RayConfig(), log=lambda _: None)

    with pytest.raises(ConfigError, match="--checkpoint .*not a checkpoint folder"):
        go(checkpoint=str(tmp_path))
    with pytest.raises(ConfigError, match="--split holdout: allowed train, val, test"):
        go(split="holdout")
    with pytest.raises(ConfigError, match="--threshold val: the threshold is chosen on the "
                                          "validation split"):
        go(split="val", threshold="val")
    with pytest.raises(ConfigError, match="--threshold 1.5"):
        go(threshold="1.5")
    with pytest.raises(ConfigError, match="--data .*no dataset.json"):
        go(data=str(tmp_path))
    assert not (tmp_path / "o").exists()


def test_predict_folder_with_broken_files(world, tmp_path):
    import highdicom as hd
    import pydicom

    from mammoray.prediction import PredictOptions, run_prediction
    from mammoray.train import checkpoint_data_config, load_checkpoint_model
    from preprocessing.dicom_io import read_dicom
    from preprocessing.geometry import to_original
    from preprocessing.sources import scan_folder
    from preprocessing.transform import preprocess_image

    base, ckpt = world
    folder = tmp_path / "incoming"
    folder.mkdir()
    names = ["patient_0000/L_CC.dcm", "patient_0000/R_MLO.dcm", "patient_0001/L_MLO.dcm"]
    for name in names:
        (folder / os.path.dirname(name)).mkdir(exist_ok=True)
        shutil.copy(base / "raw" / name, folder / name)
    (folder / "notes.dcm").write_bytes(b"not a DICOM file at all\n" * 10)
    good = (base / "raw" / names[0]).read_bytes()
    (folder / "truncated.dcm").write_bytes(good[: len(good) // 2])
    (folder / "readme.txt").write_text("ignored: not a DICOM name")

    summary = run_prediction(PredictOptions(checkpoint=str(ckpt), input=str(folder)),
                             RayConfig(), log=lambda _: None)
    assert summary["inputs"] == 5 and summary["predicted"] == 3 and summary["rejected"] == 2
    by_path = {r["relpath"]: r for r in summary["images"]}
    assert "not a DICOM" in by_path["notes.dcm"]["reason"]
    assert by_path["truncated.dcm"]["status"] == "rejected" and by_path["truncated.dcm"]["reason"]
    assert not glob.glob(str(folder / "notes*.png"))

    model, _, size = load_checkpoint_model(str(ckpt))
    cfg = checkpoint_data_config(str(ckpt))
    for name in names:
        stem = str(folder / name[:-4])
        data = (folder / name).read_bytes()
        src = pydicom.dcmread(io.BytesIO(data))
        mask = cv2.imread(stem + "_mask.png", cv2.IMREAD_UNCHANGED)
        assert mask.shape == (src.Rows, src.Columns)
        # The same result computed here, without Ray.
        dicom = read_dicom(data)
        p = preprocess_image(dicom, None, cfg)
        prob = np.asarray(model(p.image[None, ..., None].astype(np.float32) / 65535))[0, ..., 0]
        expected = np.clip(to_original(prob, p.geometry), 0, 1) >= 0.5
        np.testing.assert_array_equal(mask > 0, expected)
        assert 0 < expected.sum() < expected.size  # a real outline, not all or nothing
        prob_png = cv2.imread(stem + "_prob.png", cv2.IMREAD_UNCHANGED)
        assert prob_png.shape == mask.shape and prob_png.dtype == np.uint8
        overlay = cv2.imread(stem + "_overlay.png")
        assert overlay.shape[:2] == mask.shape  # under 2048 px: not shrunk
        with open(stem + ".json") as fh:
            info = json.load(fh)
        n_components = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)[0] - 1
        assert info["lesion_count"] == n_components and info["mass_found"] == (n_components > 0)
        sr, sc = dicom.pixel_spacing
        biggest = info["lesions"][0]
        assert biggest["area_mm2"] == pytest.approx(biggest["area_px"] * sr * sc, abs=0.01)
        # The DICOM SEG references the source and holds exactly the PNG mask.
        seg = hd.seg.segread(stem + "_seg.dcm")
        assert (src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID) in \
            seg.get_source_image_uids()
        assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
        assert seg.SegmentSequence[0].SegmentLabel == "breast mass"
        assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "4147007"
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[src.SOPInstanceUID], segment_numbers=[1])
        np.testing.assert_array_equal(pixels[0, ..., 0] > 0, mask > 0)
        # Prediction outputs carry no patient field (the SEG, by DICOM's rules, does).
        for suffix in ("_mask.png", "_prob.png", "_overlay.png", ".json"):
            blob = open(stem + suffix, "rb").read()
            assert str(src.PatientName).encode() not in blob
            assert str(src.PatientID).encode() not in blob

    # The prediction folder is itself a folder-format dataset: masks found, SEGs skipped.
    found = {i.relpath: i for i in scan_folder(str(folder), "folder")}
    assert set(found) == {*names, "notes.dcm", "truncated.dcm"}
    assert all(found[n].mask and found[n].mask["path"].endswith(n[:-4] + "_mask.png")
               for n in names)
    # Predicting again would replace those masks: refused before any work.
    with pytest.raises(ConfigError, match="prediction file.* already exist.*--overwrite"):
        run_prediction(PredictOptions(checkpoint=str(ckpt), input=str(folder)), RayConfig())


def test_predict_bad_arguments(world, tmp_path):
    from mammoray.prediction import PredictOptions, run_prediction

    _, ckpt = world
    with pytest.raises(ConfigError, match="--input .*no such file or folder"):
        run_prediction(PredictOptions(checkpoint=str(ckpt), input=str(tmp_path / "nope")),
                       RayConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="--input .*no DICOM files"):
        run_prediction(PredictOptions(checkpoint=str(ckpt), input=str(tmp_path / "empty")),
                       RayConfig())
    with pytest.raises(ConfigError, match="--threshold 0"):
        run_prediction(PredictOptions(checkpoint=str(ckpt), input=str(tmp_path),
                                      threshold=0.0), RayConfig())
