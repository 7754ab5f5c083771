"""Export a checkpoint for serving outside the platform (``python -m jobs.export``).

The output folder holds:

- ``saved_model/``: a TensorFlow SavedModel written with Keras 3's ``ExportArchive``. Its
  ``serve`` signature (also ``serving_default``) takes ``image``: preprocessed images exactly
  as the dataset stores them, (N, S, S) uint16, and returns ``probability``: (N, S, S)
  float32 mass probabilities. It normalises inside, with the same float32 operations as
  :func:`mammoray.model.inputs.to_model_input`, and runs the checkpoint's model under its own
  dtype policy, so its outputs equal the checkpoint's.
- ``model.onnx`` (with ``onnx``): the same contract (uint16 in, float32 probabilities out)
  through tf2onnx, from a float32 copy of the model (ONNX runtimes do not run bfloat16
  convolutions on CPUs): equal to the checkpoint's outputs within the rounding of its
  training precision, which the export measures and records.
- ``preprocessing.json``: the dataset's preprocessing parameters and the input size, what a
  DICOM goes through before the model (``jobs.predict`` applies them; docs/preprocessing.md
  describes each);
- ``export.json``: what was exported, from which checkpoint config, and the largest absolute
  difference of each exported model's output from the checkpoint's on a fixed probe batch.

A checkpoint trained on patches is exported for whole images: its weights in a U-Net built for
the dataset's image size (what ``infer.mode: whole`` computes).

The folder is published only when complete (:class:`mammoray.core.storage.StagedOutput`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mammoray.core import storage
from mammoray.core.config import ConfigError
from mammoray.model import checkpoint as ckpt
from mammoray.model.inputs import UINT16_MAX, predict_probabilities, to_model_input

SAVED_MODEL = "saved_model"
ONNX_FILE = "model.onnx"
ONNX_OPSET = 17
# The SavedModel runs the checkpoint's own graph: anything above float32 round-off is a bug.
SAVED_MODEL_TOLERANCE = 1e-6


class ExportError(RuntimeError):
    """An exported model does not reproduce its checkpoint."""


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: str
    output: str
    onnx: bool = True
    overwrite: bool = False
    probe_images: int = 4


def probe_batch(size: int, count: int) -> np.ndarray:
    """A fixed batch of uint16 images (smooth structure plus noise) for checking exports."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    images = np.empty((count, size, size), np.uint16)
    for i in range(count):
        blob = np.exp(-((xx - rng.random()) ** 2 + (yy - rng.random()) ** 2) * 8.0)
        field = 0.3 * xx + 0.5 * blob + 0.2 * rng.random((size, size))
        images[i] = np.clip(field / field.max() * UINT16_MAX, 0, UINT16_MAX).astype(np.uint16)
    return images


def serving_function(model):
    """uint16 (N, S, S) -> {"probability": float32 (N, S, S)} around ``model``."""
    import tensorflow as tf

    def serve(image):
        # The same float32 product as to_model_input (the constant made in the graph, so
        # tf2onnx keeps it a constant, not an input).
        x = tf.cast(image, tf.float32) * tf.constant(np.float32(1.0 / UINT16_MAX))
        return {"probability": tf.cast(model(x[..., None], training=False), tf.float32)[..., 0]}

    return serve


def image_spec(size: int):
    import tensorflow as tf

    return [tf.TensorSpec((None, size, size), tf.uint16, name="image")]


def write_saved_model(model, size: int, folder: str) -> None:
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=serving_function(model),
                         input_signature=image_spec(size))
    archive.write_out(folder, verbose=False)


def float32_copy(model):
    """The same network with every layer under the float32 policy and the checkpoint's weights
    (the variables of a mixed-precision model are float32 already)."""
    import keras

    def as_float32(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=as_float32)
    copy.set_weights(model.get_weights())
    return copy


def write_onnx(model, size: int, path: str) -> None:
    try:
        import tf2onnx
    except ImportError:
        raise ConfigError("--onnx: tf2onnx is not installed; install the export extra "
                          "(pip install -e '.[cpu,export]') or pass --no-onnx") from None
    import tensorflow as tf

    copy = float32_copy(model)
    fn = tf.function(serving_function(copy), input_signature=image_spec(size))
    tf2onnx.convert.from_function(fn, input_signature=image_spec(size), opset=ONNX_OPSET,
                                  output_path=path)


def saved_model_probabilities(folder: str, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(folder)  # held: its variables live as long as it does
    return loaded.serve(tf.constant(images))["probability"].numpy()


def onnx_probabilities(path: str, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["probability"], {"image": images})[0]


def whole_image_model(model, cfg, size: int, log: Callable[[str], None]):
    """A patch-trained model's weights in a U-Net built for whole ``size`` images (what
    ``infer.mode: whole`` computes): a served model takes whole images, with no windowing
    left to the client."""
    from mammoray.model.unet import check_input_size
    from mammoray.model.window import resized_model

    try:
        check_input_size(cfg.model, size)
    except ConfigError as exc:
        raise ConfigError(f"--checkpoint: trained on {model.input_shape[1]}-px patches; an "
                          f"exported model takes whole images, so {exc}") from None
    whole = resized_model(model, size)
    log(f"export: trained on {model.input_shape[1]}-px patches; exported for whole {size} x "
        f"{size} images (as infer.mode: whole predicts)")
    return whole


def export_checkpoint(opts: ExportOptions, *, log: Callable[[str], None] = print
                      ) -> dict[str, Any]:
    """Export ``opts.checkpoint`` into ``opts.output``; returns export.json's content."""
    meta = ckpt.check_checkpoint(opts.checkpoint)
    output = storage.normalize(opts.output)
    if storage.exists(output) and not opts.overwrite:
        raise FileExistsError(f"--output {output}: already exists; choose another folder or "
                              "pass --overwrite")
    with ckpt.LocalCheckpoint(storage.normalize(opts.checkpoint)) as folder:
        model, cfg, size = ckpt.load_checkpoint_model(folder)
    if int(model.input_shape[1]) != size:
        model = whole_image_model(model, cfg, size, log)
    images = probe_batch(size, opts.probe_images)
    reference = predict_probabilities(model, to_model_input(images))
    work = tempfile.mkdtemp(prefix="mammoray-export-")
    try:
        summary = _export_into(work, model, cfg, size, meta, images, reference, opts)
        with storage.StagedOutput.create(output, overwrite=opts.overwrite, log=log) as staged:
            storage.copy_local_tree(work, staged.partial)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"export: SavedModel{' and ONNX' if opts.onnx else ''} of a {size} x {size} model -> "
        f"{output} (largest difference from the checkpoint's probabilities, and the share of "
        f"mask pixels that change: "
        + ", ".join(f"{k} {v:.2g}, {summary['mask_pixels_changed'][k]:.2%}"
                    for k, v in summary["max_abs_difference"].items()) + ")")
    return summary


def _export_into(work: str, model, cfg, size: int, meta: dict[str, Any], images: np.ndarray,
                 reference: np.ndarray, opts: ExportOptions) -> dict[str, Any]:
    """Write the exports into the local folder ``work`` and check each against the
    checkpoint's probabilities on the probe batch."""
    write_saved_model(model, size, os.path.join(work, SAVED_MODEL))
    outputs = {"saved_model": saved_model_probabilities(os.path.join(work, SAVED_MODEL), images)}
    saved_difference = float(np.abs(outputs["saved_model"] - reference).max())
    if saved_difference > SAVED_MODEL_TOLERANCE:
        raise ExportError(f"the SavedModel's probabilities differ from the checkpoint's by "
                          f"{saved_difference:.3g}")
    if opts.onnx:
        write_onnx(model, size, os.path.join(work, ONNX_FILE))
        outputs["onnx"] = onnx_probabilities(os.path.join(work, ONNX_FILE), images)
    differences = {k: float(np.abs(v - reference).max()) for k, v in outputs.items()}
    # What a user sees of a difference: pixels whose mask (probability > 0.5) changes.
    flipped = {k: float(np.mean((v > 0.5) != (reference > 0.5))) for k, v in outputs.items()}
    policies = sorted({layer.dtype_policy.name for layer in model.layers} - {"float32"})
    with open(os.path.join(work, "preprocessing.json"), "w") as fh:
        json.dump({"size": size, "preprocessing": meta.get("preprocessing")}, fh, indent=1)
    summary = {
        "checkpoint": storage.normalize(opts.checkpoint), "size": size,
        "model": {"levels": cfg.model.levels, "base_filters": cfg.model.base_filters,
                  "parameters": int(model.count_params()),
                  "dtype_policy": policies[0] if policies else "float32"},
        "signature": {"input": {"name": "image", "dtype": "uint16",
                                "shape": [None, size, size]},
                      "output": {"name": "probability", "dtype": "float32",
                                 "shape": [None, size, size]}},
        "files": sorted([SAVED_MODEL, "preprocessing.json", "export.json"]
                        + ([ONNX_FILE] if opts.onnx else [])),
        "onnx_opset": ONNX_OPSET if opts.onnx else None,
        "probe_images": int(images.shape[0]), "max_abs_difference": differences,
        "mask_pixels_changed": flipped}
    with open(os.path.join(work, "export.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    return summary
