"""jobs.export: the SavedModel reproduces the checkpoint exactly, ONNX within the rounding of
the checkpoint's training precision; the uint16 contract; errors before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.unit
SIZE = 32


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """A small U-Net checkpoint trained-as-if under mixed bfloat16 (what training writes on a
    CPU with native bfloat16), with a non-trivial batch norm and dropout."""
    import keras

    from mammoray.core.config import config_from_dict
    from mammoray.model.checkpoint import write_checkpoint
    from mammoray.model.unet import build_unet

    cfg = config_from_dict({"model": {"levels": 2, "base_filters": 4, "batch_norm": True,
                                      "dropout": [0.3]}})
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(3)
        model = build_unet(cfg.model, SIZE)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(1)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    folder = tmp_path_factory.mktemp("export") / "best"
    folder.mkdir()
    write_checkpoint(str(folder), model, cfg.to_dict(), SIZE, {"size": SIZE, "clahe_clip": 2.0})
    return folder


@pytest.fixture(scope="module")
def exported(bf16_checkpoint, tmp_path_factory):
    from mammoray.inference.export import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("exported") / "serve"
    summary = export_checkpoint(ExportOptions(checkpoint=str(bf16_checkpoint), output=str(out)),
                                log=lambda _: None)
    return out, summary


def checkpoint_probabilities(folder, images):
    from mammoray.model.checkpoint import load_checkpoint_model
    from mammoray.model.inputs import predict_probabilities, to_model_input

    model, _, _ = load_checkpoint_model(str(folder))
    return predict_probabilities(model, to_model_input(images))


def test_the_saved_model_equals_the_checkpoint(bf16_checkpoint, exported):
    import tensorflow as tf

    out, summary = exported
    images = np.random.default_rng(7).integers(0, 65536, (3, SIZE, SIZE)).astype(np.uint16)
    loaded = tf.saved_model.load(str(out / "saved_model"))
    got = loaded.signatures["serving_default"](image=tf.constant(images))["probability"]
    np.testing.assert_array_equal(got.numpy(), checkpoint_probabilities(bf16_checkpoint,
                                                                        images))
    assert summary["max_abs_difference"]["saved_model"] == 0.0
    assert summary["mask_pixels_changed"]["saved_model"] == 0.0
    assert summary["model"]["dtype_policy"] == "mixed_bfloat16"


def test_the_onnx_model_takes_the_same_input_and_differs_only_by_bfloat16_rounding(
        bf16_checkpoint, exported):
    import keras
    import onnxruntime

    from mammoray.inference.export import float32_copy
    from mammoray.model.inputs import predict_probabilities, to_model_input

    out, summary = exported
    session = onnxruntime.InferenceSession(str(out / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape[1:]) for i in session.get_inputs()] == [
        ("image", "tensor(uint16)", [SIZE, SIZE])]
    assert [(o.name, o.type) for o in session.get_outputs()] == [("probability",
                                                                   "tensor(float)")]
    images = np.random.default_rng(8).integers(0, 65536, (2, SIZE, SIZE)).astype(np.uint16)
    got = session.run(None, {"image": images})[0]
    model = keras.models.load_model(str(bf16_checkpoint / "model.keras"), compile=False)
    # The same network in float32: equal up to float32 round-off ...
    np.testing.assert_allclose(got, predict_probabilities(float32_copy(model),
                                                          to_model_input(images)), atol=2e-6)
    # ... and the bfloat16 checkpoint within bfloat16's rounding, as export.json records.
    difference = np.abs(got - checkpoint_probabilities(bf16_checkpoint, images)).max()
    assert 0 < difference < 0.05
    assert 0 < summary["max_abs_difference"]["onnx"] < 0.05
    # The share of the probe batch's mask pixels that change, as export.json records it.
    from mammoray.inference.export import probe_batch

    probe = probe_batch(SIZE, summary["probe_images"])
    mask = checkpoint_probabilities(bf16_checkpoint, probe) > 0.5
    onnx_mask = session.run(None, {"image": probe})[0] > 0.5
    assert summary["mask_pixels_changed"]["onnx"] == pytest.approx(np.mean(mask != onnx_mask))
    assert summary["mask_pixels_changed"]["onnx"] < 0.01


def test_the_folder_holds_the_preprocessing_and_a_record(exported):
    out, summary = exported
    assert json.loads((out / "preprocessing.json").read_text()) == {
        "size": SIZE, "preprocessing": {"size": SIZE, "clahe_clip": 2.0}}
    assert json.loads((out / "export.json").read_text()) == summary
    assert summary["files"] == ["export.json", "model.onnx", "preprocessing.json",
                                "saved_model"]
    assert summary["signature"]["input"] == {"name": "image", "dtype": "uint16",
                                             "shape": [None, SIZE, SIZE]}
    assert (out / "_COMPLETE").is_file()


def test_bad_paths_stop_before_any_work(bf16_checkpoint, exported, tmp_path, capsys):
    from jobs import export

    assert export.main(["--checkpoint", str(tmp_path / "nope"), "--output",
                        str(tmp_path / "o")]) == 2
    assert "error: --checkpoint" in capsys.readouterr().err
    out, _ = exported
    assert export.main(["--checkpoint", str(bf16_checkpoint), "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --output {out}: already exists; choose another folder or pass --overwrite")
    assert not (tmp_path / "o").exists()


def test_a_patch_trained_checkpoint_is_exported_for_whole_images(tmp_path):
    """Trained on 16-px patches of 32-px images: the served model takes whole 32 x 32 images
    and computes what infer.mode: whole does (the weights in a U-Net built for 32 px)."""
    import keras
    import tensorflow as tf

    from mammoray.core.config import config_from_dict
    from mammoray.inference.export import ExportOptions, export_checkpoint
    from mammoray.model.checkpoint import write_checkpoint
    from mammoray.model.inputs import to_model_input
    from mammoray.model.unet import build_unet
    from mammoray.model.window import Segmenter

    cfg = config_from_dict({"model": {"levels": 2, "base_filters": 4},
                            "train": {"patch_size": 16}, "infer": {"mode": "whole"}})
    keras.utils.set_random_seed(4)
    patch_model = build_unet(cfg.model, 16)
    folder = tmp_path / "best"
    folder.mkdir()
    write_checkpoint(str(folder), patch_model, cfg.to_dict(), SIZE, {"size": SIZE})
    messages = []
    summary = export_checkpoint(ExportOptions(checkpoint=str(folder), output=str(tmp_path / "x"),
                                              onnx=False), log=messages.append)
    assert summary["size"] == SIZE and "trained on 16-px patches" in messages[0]
    images = np.random.default_rng(8).integers(0, 65536, (2, SIZE, SIZE)).astype(np.uint16)
    loaded = tf.saved_model.load(str(tmp_path / "x" / "saved_model"))
    got = loaded.signatures["serving_default"](image=tf.constant(images))["probability"]
    want = Segmenter(patch_model, cfg, SIZE)(to_model_input(images))[..., 0]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
