"""jobs.predict on a real local Ray and real DICOM files, with the fixed-weight checkpoint of
``conftest.fixed_checkpoint``: masks on the original grid against a direct computation, the
DICOM SEG against the PNG mask, broken files reported."""

from __future__ import annotations

import glob
import io
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from mammoray.core.config import ConfigError, RayConfig

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def world(fixed_checkpoint, local_ray):
    return fixed_checkpoint


def test_predict_folder_with_broken_files(world, tmp_path):
    import highdicom as hd
    import pydicom

    from mammoray.inference.job import PredictOptions, run_prediction
    from mammoray.model.checkpoint import checkpoint_data_config, load_checkpoint_model
    from mammoray.model.inputs import predict_probabilities, to_model_input
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
    assert summary["median_write_cpu_seconds"] > 0
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
        prob = predict_probabilities(model, to_model_input(p.image))[0]
        expected = np.clip(to_original(prob, p.geometry), 0, 1) >= 0.5
        np.testing.assert_array_equal(mask > 0, expected)
        assert 0 < expected.sum() < expected.size  # a real outline, not all or nothing
        prob_png = cv2.imread(stem + "_prob.png", cv2.IMREAD_UNCHANGED)
        assert prob_png.shape == mask.shape and prob_png.dtype == np.uint8
        overlay = cv2.imread(stem + "_overlay.png")
        assert overlay.shape[:2] == mask.shape  # under 2048 px: not shrunk
        # A palette PNG with the predicted mass outlined in red.
        assert ((overlay == (0, 0, 255)).all(-1)).any()
        with Image.open(stem + "_overlay.png") as pic:
            assert pic.mode == "P"
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
    with pytest.raises(ConfigError, match="prediction file.* already exist.*--skip-existing"):
        run_prediction(PredictOptions(checkpoint=str(ckpt), input=str(folder)), RayConfig())

    # A run interrupted after L_MLO's mask but before its JSON (written last): --skip-existing
    # keeps the two finished inputs untouched and predicts L_MLO (and tries the bad files)
    # again.
    os.remove(folder / "patient_0001" / "L_MLO.json")
    kept = folder / "patient_0000" / "L_CC_mask.png"
    os.utime(kept, (1, 1))
    again = run_prediction(PredictOptions(checkpoint=str(ckpt), input=str(folder),
                                          skip_existing=True), RayConfig(), log=lambda _: None)
    assert (again["inputs"], again["predicted"], again["rejected"], again["skipped"]) == \
        (5, 1, 2, 2)
    status = {r["relpath"]: r["status"] for r in again["images"]}
    assert status == {names[0]: "skipped", names[1]: "skipped", names[2]: "ok",
                      "notes.dcm": "rejected", "truncated.dcm": "rejected"}
    assert os.stat(kept).st_mtime == 1 and (folder / "patient_0001" / "L_MLO.json").is_file()
    with pytest.raises(ConfigError, match="--overwrite and --skip-existing: choose one"):
        run_prediction(PredictOptions(checkpoint=str(ckpt), input=str(folder), overwrite=True,
                                      skip_existing=True), RayConfig())


def test_predict_bad_arguments(world, tmp_path):
    from mammoray.inference.job import PredictOptions, run_prediction

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


def test_predict_rejects_only_the_files_that_crash_their_decoder(world, tmp_path, monkeypatch):
    """A file whose decoder panics (a BaseException) and one whose processing kills its actor
    (os.abort(), through a fault) are each reported with the reason; the others are
    predicted."""
    from mammoray.core import faults
    from mammoray.inference.job import PredictOptions, run_prediction
    from mammoray.synthetic import dicom_write

    base, ckpt = world
    folder = tmp_path / "incoming"
    folder.mkdir()
    good = ["L_CC.dcm", "R_MLO.dcm", "L_MLO.dcm"]
    for name in good:
        shutil.copy(base / "raw" / "patient_0000" / name, folder / name)
    panic = dicom_write.corrupt_rle_segments(dicom_write.encode(
        dicom_write.image_dataset(np.arange(64 * 48, dtype=np.uint16).reshape(64, 48),
                                  bits_stored=12), "rle"))
    (folder / "corrupt_rle.dcm").write_bytes(panic)
    fault = tmp_path / "abort"
    monkeypatch.setenv(faults.ENV, json.dumps([
        {"at": "predict.image", "action": "abort", "dir": str(fault), "relpath": "R_MLO.dcm",
         "every": True}]))
    summary = run_prediction(PredictOptions(checkpoint=str(ckpt), input=str(folder)),
                             RayConfig(), log=lambda _: None)
    assert (summary["inputs"], summary["predicted"], summary["rejected"]) == (4, 2, 2)
    by_path = {r["relpath"]: r for r in summary["images"]}
    assert by_path["corrupt_rle.dcm"]["reason"].startswith("decoder crashed (PanicException: ")
    assert by_path["R_MLO.dcm"]["reason"] == \
        "decoder crashed: its worker process died (WorkerCrashedError)"
    assert [r["status"] for r in (by_path["L_CC.dcm"], by_path["L_MLO.dcm"])] == ["ok", "ok"]
    assert (folder / "L_CC_mask.png").exists() and not (folder / "R_MLO_mask.png").exists()


def test_a_patch_trained_checkpoint_predicts_whole_images_through_windows(world, tmp_path):
    """The fixed model (a pointwise 1x1 convolution) saved as if trained on 32-px patches of
    the 64-px data: jobs.predict goes through sliding windows with Gaussian blending (weights
    normalised), so its masks on the original grid are those of the same model taking whole
    images; its JSON says how it predicted. `--set infer.mode=whole` (the override) puts the
    same weights in a model built for the whole image: the same masks again."""
    import keras

    from mammoray.core.config import config_from_dict
    from mammoray.core.dataset import read_dataset_json
    from mammoray.inference.job import PredictOptions, run_prediction
    from mammoray.model.checkpoint import write_checkpoint

    base, ckpt = world
    inp = keras.Input((32, 32, 1))
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", name="head",
                              kernel_initializer=keras.initializers.Constant(20.0),
                              bias_initializer=keras.initializers.Constant(-14.0))(inp)
    patch_ckpt = tmp_path / "patch_best"
    patch_ckpt.mkdir()
    write_checkpoint(str(patch_ckpt), keras.Model(inp, out),
                     config_from_dict({"train": {"patch_size": 32},
                                       "infer": {"overlap": 0.5}}).to_dict(),
                     64, read_dataset_json(str(base / "ds"))["parameters"])
    names = ["patient_0000/L_CC.dcm", "patient_0001/L_MLO.dcm"]
    for folder in ("whole", "patches", "override"):
        for name in names:
            (tmp_path / folder / os.path.dirname(name)).mkdir(parents=True, exist_ok=True)
            shutil.copy(base / "raw" / name, tmp_path / folder / name)
    for folder, checkpoint, infer in (("whole", ckpt, None), ("patches", patch_ckpt, None),
                                      ("override", patch_ckpt, {"mode": "whole"})):
        summary = run_prediction(PredictOptions(checkpoint=str(checkpoint),
                                                input=str(tmp_path / folder), infer=infer),
                                 RayConfig(), log=lambda _: None)
        assert summary["predicted"] == 2
    for name in names:
        stem = name[:-4]
        whole = cv2.imread(str(tmp_path / "whole" / (stem + "_mask.png")), cv2.IMREAD_UNCHANGED)
        windowed = cv2.imread(str(tmp_path / "patches" / (stem + "_mask.png")),
                              cv2.IMREAD_UNCHANGED)
        assert 0 < (whole > 0).sum() < whole.size
        np.testing.assert_array_equal(windowed, whole)
        overridden = cv2.imread(str(tmp_path / "override" / (stem + "_mask.png")),
                                cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(overridden, whole)
        with open(tmp_path / "patches" / (stem + ".json")) as fh:
            info = json.load(fh)
        assert info["inference"] == ("sliding 32-px windows over 64 x 64 images (overlap 0.5, "
                                     "Gaussian sigma 0.125 x patch)")
        with open(tmp_path / "whole" / (stem + ".json")) as fh:
            assert json.load(fh)["inference"] == "whole 64 x 64 images"
        with open(tmp_path / "override" / (stem + ".json")) as fh:
            assert json.load(fh)["inference"] == ("whole 64 x 64 images through the weights of "
                                                  "32-px patch training")
