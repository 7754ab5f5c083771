"""The prediction actor: a DICOM's relative path in, its outputs written, one status row out.

Each DICOM goes through the preprocessing its checkpoint was trained with (the dataset's
parameters saved in the checkpoint), the model, and back through the geometry (resize, crop and
flip undone, :func:`preprocessing.geometry.to_original`). A file that cannot be read gets its
reason and no outputs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import cv2
import numpy as np
import pyarrow as pa

from mammoray.core import faults, storage
from mammoray.core.overlays import write_overlay, write_png
from mammoray.core.timing import StageTimer
from mammoray.inference.seg import dicom_seg
from mammoray.model.inputs import predict_probabilities, to_model_input
from preprocessing.dicom_io import RejectedImage, read_dicom
from preprocessing.geometry import to_original
from preprocessing.transform import describe, preprocess_image

T = TypeVar("T")

OUTPUT_SUFFIXES = ("_mask.png", "_prob.png", "_overlay.png", "_seg.dcm", ".json")
INPUT_SUFFIXES = (".dcm", ".dicom")
STAGES = ("read", "decode", "preprocess", "model", "back_map", "write")
OVERLAY_MAX_SIDE = 2048
RESULT_SCHEMA = pa.schema(
    [("relpath", pa.string()), ("status", pa.string()), ("reason", pa.string()),
     ("mass_found", pa.bool_()), ("lesions", pa.int64()), ("seg_written", pa.bool_())]
    + [(f"seconds_{s}", pa.float64()) for s in STAGES]
    + [("cpu_seconds_write", pa.float64())])


def stem_of(relpath: str) -> str:
    lower = relpath.lower()
    for suffix in INPUT_SUFFIXES:
        if lower.endswith(suffix):
            return relpath[: -len(suffix)]
    return relpath


def lesion_summary(mask: np.ndarray, prob: np.ndarray,
                   spacing: tuple[float, float] | None) -> list[dict[str, Any]]:
    """Connected components (8-connected) of a mask on the original grid: box (x0, y0, x1, y1,
    end-exclusive) and area in pixels, and in mm when the pixel spacing (row, col) is known."""
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                                   connectivity=8)
    # Each component's maximum probability, in one pass over the mask's pixels only (a pass
    # over the whole film cost 0.2 s).
    inside = np.flatnonzero(mask)
    peak = np.zeros(n, np.float32)
    np.maximum.at(peak, labels.ravel()[inside], prob.ravel()[inside].astype(np.float32))
    out = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        lesion: dict[str, Any] = {
            "box_px": [x, y, x + w, y + h], "area_px": area,
            "centroid_px": [round(float(centroids[i][0]), 1),
                            round(float(centroids[i][1]), 1)],
            "max_probability": round(float(peak[i]), 4)}
        if spacing:
            sr, sc = spacing
            lesion.update(width_mm=round(w * sc, 2), height_mm=round(h * sr, 2),
                          area_mm2=round(area * sr * sc, 2),
                          box_mm=[round(x * sc, 2), round(y * sr, 2), round((x + w) * sc, 2),
                                  round((y + h) * sr, 2)])
        out.append(lesion)
    return sorted(out, key=lambda les: -les["area_px"])


class DicomPredictor:
    """Ray Data actor: DICOM relative paths in, outputs written, one status row out each."""

    def __init__(self, checkpoint, input_root: str, output_root: str, threshold: float,
                 write_seg: bool, run_id: str, cpus: float = 1.0,
                 use_gpu: bool = False, injected: list[dict[str, Any]] | None = None,
                 infer: dict[str, Any] | None = None) -> None:
        from mammoray import __version__
        from mammoray.model import checkpoint as ckpt
        from mammoray.model.runtime import configure_tensorflow
        from mammoray.model.window import segmenter_of

        configure_tensorflow(cpus, use_gpu)
        with ckpt.LocalCheckpoint(checkpoint) as folder:
            self.model, _, self.size = segmenter_of(folder, infer)
            self.data_cfg = ckpt.checkpoint_data_config(folder)
        self.input_root, self.output_root = input_root, output_root
        self.threshold, self.write_seg, self.run_id = threshold, write_seg, run_id
        self.injected = injected or []
        self.version = __version__
        # Two writer threads: the full-size probability PNG (the largest encode) starts as soon
        # as the probabilities are on the original grid, the DICOM SEG once the mask is; the
        # actor's own thread finds the lesions and writes the mask and overlay meanwhile.
        # OpenCV's and Pillow's PNG encoders (zlib) release the GIL. The JSON comes last.
        self.writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mammoray-write")

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.predict(rel) for rel in batch.column("relpath").to_pylist()]
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)

    def predict(self, relpath: str) -> dict[str, Any]:
        timer = StageTimer()
        row: dict[str, Any] = {"relpath": relpath, "status": "ok", "reason": None,
                               "mass_found": None, "lesions": None, "seg_written": None,
                               "cpu_seconds_write": 0.0}
        try:
            if self.injected:
                faults.fire(self.injected, "predict.image", relpath=relpath)
            with timer("read"):
                data = storage.read_bytes(storage.join(self.input_root, relpath))
            with timer("decode"):
                dicom = read_dicom(data, apply_voi=self.data_cfg.apply_voi_lut)
            row.update(self._predict_decoded(relpath, data, dicom, timer))
        except RejectedImage as exc:
            row.update(status="rejected", reason=str(exc))
        except OSError as exc:
            row.update(status="rejected", reason=f"file could not be read "
                                                 f"({type(exc).__name__})")
        except Exception as exc:  # one broken file must not stop the others
            row.update(status="rejected", reason=f"unexpected error ({describe(exc)})")
        except BaseException as exc:  # a decoder's panic; interrupts still stop the job
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            row.update(status="rejected", reason=f"decoder crashed ({describe(exc)})")
        for stage in STAGES:
            row[f"seconds_{stage}"] = float(timer.seconds.get(stage, 0.0))
        return row

    def _predict_decoded(self, relpath, data, dicom, timer) -> dict[str, Any]:
        with timer("preprocess"):
            processed = preprocess_image(dicom, None, self.data_cfg)
            x = to_model_input(processed.image)
        with timer("model"):
            prob = predict_probabilities(self.model, x)[0]
        base = storage.join(self.output_root, stem_of(relpath))
        jobs: list[Future] = []
        try:
            with timer("back_map"):
                prob_orig = np.clip(to_original(prob, processed.geometry), 0.0, 1.0)
                # Written from here on, on a writer thread, while this one finds the lesions.
                jobs.append(self.writer.submit(with_thread_cpu, _write_probabilities,
                                               base + "_prob.png", prob_orig))
                mask = (prob_orig >= self.threshold).astype(np.uint8)
                lesions = lesion_summary(mask, prob_orig, dicom.pixel_spacing)
            with timer("write"):
                if self.write_seg:
                    jobs.append(self.writer.submit(with_thread_cpu, self._write_seg,
                                                   base + "_seg.dcm", data, mask))
                _, cpu = with_thread_cpu(self._write_pictures, base, dicom.pixels, mask)
                wait(jobs)
        finally:
            wait(jobs)  # never left writing after this image's row is returned
        with timer("write"):
            # Their errors, if any, reject the image (a SEG's error is only noted).
            cpu += jobs[0].result()[1]
            (seg_written, seg_error), seg_cpu = jobs[1].result() if self.write_seg else \
                ((False, None), 0.0)
            summary = {
                "image": os.path.basename(relpath), "mass_found": bool(lesions),
                "lesion_count": len(lesions), "lesions": lesions,
                "threshold": self.threshold,
                "original_size": [int(mask.shape[0]), int(mask.shape[1])],
                "pixel_spacing_mm": list(dicom.pixel_spacing) if dicom.pixel_spacing else None,
                "model_input_size": self.size, "inference": self.model.describe(),
                "flipped": processed.geometry.flipped,
                "breast_box_px": list(processed.geometry.crop),
                "outputs": [os.path.basename(base) + s for s in OUTPUT_SUFFIXES
                            if s != "_seg.dcm" or seg_written],
                "dicom_seg_error": seg_error,
            }
            # Last: a JSON says every other output of its image is complete.
            _, json_cpu = with_thread_cpu(storage.write_bytes, base + ".json",
                                          json.dumps(summary, indent=1).encode())
        return {"mass_found": bool(lesions), "lesions": len(lesions), "seg_written": seg_written,
                "cpu_seconds_write": cpu + seg_cpu + json_cpu}

    def _write_seg(self, path: str, data: bytes, mask: np.ndarray) -> tuple[bool, str | None]:
        """The DICOM SEG: (written, error); an error leaves the other outputs."""
        try:
            storage.write_bytes(path, dicom_seg(data, mask, run_id=self.run_id,
                                                software_version=self.version))
            return True, None
        except Exception as exc:  # the PNGs and JSON are still useful
            return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"

    @staticmethod
    def _write_pictures(base: str, pixels: np.ndarray, mask: np.ndarray) -> None:
        """The bilevel mask PNG and the overlay."""
        write_png(base + "_mask.png", mask * 255, bilevel=True)
        write_overlay(base + "_overlay.png", pixels, mask, max_side=OVERLAY_MAX_SIDE)


def with_thread_cpu(fn: Callable[..., T], *args) -> tuple[T, float]:
    """``fn(*args)`` and the CPU seconds it took on the calling thread (the writing's CPU is
    reported apart from its wall time: it runs on writer threads beside the actor's)."""
    cpu0 = time.thread_time()
    result = fn(*args)
    return result, time.thread_time() - cpu0


def _write_probabilities(path: str, prob: np.ndarray) -> None:
    """The probability PNG (round(p * 255), one saturating pass; ``prob`` is in [0, 1])."""
    write_png(path, cv2.convertScaleAbs(prob, alpha=255.0))


def predict_alone(relpath: str, actor_kwargs: dict[str, Any]) -> dict[str, Any]:
    """One input through a predictor of its own, in a task of its own (see
    :func:`mammoray.core.isolation.run_each_alone`)."""
    return DicomPredictor(**actor_kwargs).predict(relpath)
