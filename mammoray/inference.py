"""Batch inference with a trained checkpoint on Ray Data: one model per actor.

``RowScorer`` scores preprocessed Parquet rows (``jobs.evaluate``); ``DicomPredictor`` runs
DICOM files through the checkpoint's preprocessing, the model and back onto the original pixel
grid (``jobs.predict``, see :mod:`mammoray.prediction`). Both are Ray Data callable classes:
``map_batches(cls, concurrency=n, num_cpus=..., num_gpus=...)`` starts ``n`` actors and each
loads the Keras model once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from mammoray.evaluation import STAT_KEYS, THRESHOLDS, image_stats

# Row columns an evaluation carries from the Parquet to the per-image table.
META_COLUMNS = ("image_id", "patient_key", "source", "split", "pathology", "mass_pixels",
                "crop_x0", "crop_y0", "crop_x1", "crop_y1", "pixel_spacing_row",
                "pixel_spacing_col")
SCORE_SCHEMA = pa.schema(
    [(c, pa.string()) for c in ("image_id", "patient_key", "source", "split", "pathology")]
    + [(c, pa.int64()) for c in ("mass_pixels", "crop_x0", "crop_y0", "crop_x1", "crop_y1")]
    + [("pixel_spacing_row", pa.float64()), ("pixel_spacing_col", pa.float64())]
    + [(k, pa.list_(pa.int64())) for k in STAT_KEYS]
    + [("truth", pa.int64()), ("pixels", pa.int64()), ("lesions", pa.int64()),
       ("max_prob", pa.float64())])


def configure_tensorflow(cpus: float, use_gpu: bool) -> None:
    """Size TensorFlow's thread pools to the actor's CPUs; let GPU memory grow."""
    import tensorflow as tf

    threads = max(1, int(round(cpus)))
    cv2.setNumThreads(threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        if use_gpu:
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass  # TensorFlow already initialised in this process (e.g. a driver that trained)


def share_checkpoint(path: str):
    """The checkpoint's files (model and config) in Ray's object store: actors on any node load
    it from there, while the folder itself is usually on the driver's node only (where the
    training job wrote it)."""
    import ray

    from mammoray.train import CONFIG_FILE, MODEL_FILE

    files = {}
    for name in (MODEL_FILE, CONFIG_FILE):
        with open(os.path.join(path, name), "rb") as fh:
            files[name] = fh.read()
    return ray.put(files)


class LocalCheckpoint:
    """``with LocalCheckpoint(shared) as folder:`` a temporary local copy of a shared
    checkpoint (an object reference from :func:`share_checkpoint`, or a folder path)."""

    def __init__(self, shared) -> None:
        self.shared, self.folder = shared, None

    def __enter__(self) -> str:
        import ray

        if isinstance(self.shared, str):
            return self.shared
        files = ray.get(self.shared) if isinstance(self.shared, ray.ObjectRef) else self.shared
        self.folder = tempfile.mkdtemp(prefix="mammoray-ckpt-")
        for name, data in files.items():
            with open(os.path.join(self.folder, name), "wb") as fh:
                fh.write(data)
        return self.folder

    def __exit__(self, *exc) -> None:
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def predict_probabilities(model, images: np.ndarray) -> np.ndarray:
    """(N, S, S, 1) float32 in [0, 1] -> (N, S, S) float32 probabilities."""
    prob = model(images, training=False)
    return np.asarray(prob, dtype=np.float32)[..., 0]


class RowScorer:
    """Ray Data actor: scores preprocessed rows at every threshold of ``thresholds`` (per-image
    stats, not the probability maps)."""

    def __init__(self, checkpoint, thresholds: tuple[float, ...] = THRESHOLDS,
                 cpus: float = 1.0, use_gpu: bool = False) -> None:
        configure_tensorflow(cpus, use_gpu)
        self.thresholds = tuple(thresholds)
        from mammoray.train import load_checkpoint_model

        with LocalCheckpoint(checkpoint) as folder:
            self.model, _, self.size = load_checkpoint_model(folder)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from mammoray.train import decode_batch

        cols = batch.to_pydict()
        x, y = decode_batch({"image": cols["image"], "mask": cols["mask"]}, self.size)
        prob = predict_probabilities(self.model, x)
        out: dict[str, list[Any]] = {c: cols[c] for c in META_COLUMNS}
        stats = [image_stats(y[i, ..., 0], prob[i], self.thresholds) for i in range(len(x))]
        for key in (*STAT_KEYS, "truth", "pixels", "lesions", "max_prob"):
            out[key] = [s[key] for s in stats]
        return pa.Table.from_pydict(out, schema=SCORE_SCHEMA)


def to_gray_u8(image: np.ndarray) -> np.ndarray:
    """A uint16 (or float [0, 1]) image as uint8 for display."""
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def draw_overlay(image: np.ndarray, prediction: np.ndarray | None,
                 truth: np.ndarray | None = None, *, max_side: int | None = None) -> np.ndarray:
    """BGR picture of ``image`` with the truth outlined in green and the prediction in red (as
    the seed study's figures 3 and 4). ``max_side`` shrinks large mammograms first (the outlines
    are drawn after shrinking, so they stay visible)."""
    gray = to_gray_u8(image)
    h, w = gray.shape
    scale = 1.0
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)

        def shrink(m):
            return None if m is None else cv2.resize(m.astype(np.uint8), size,
                                                     interpolation=cv2.INTER_NEAREST)

        prediction, truth = shrink(prediction), shrink(truth)
    canvas = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for mask, color in ((truth, (0, 200, 0)), (prediction, (0, 0, 255))):
        if mask is None:
            continue
        contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, color, thickness, cv2.LINE_AA)
    return canvas


def write_png(path: str, image: np.ndarray, *, bilevel: bool = False) -> None:
    """Write a PNG through :mod:`mammoray.storage` (local path or object-storage URI)."""
    from mammoray import storage

    params = [cv2.IMWRITE_PNG_BILEVEL, 1] if bilevel else []
    ok, buf = cv2.imencode(".png", image, params)
    if not ok:
        raise RuntimeError(f"could not encode {os.path.basename(path)}")
    storage.write_bytes(path, buf.tobytes())
