"""``jobs.predict``: masks for new mammograms, on the original DICOM pixel grid.

Each DICOM goes through the preprocessing its checkpoint was trained with (the dataset's
parameters saved in the checkpoint: orientation, breast crop, CLAHE, resize), the model, and
back through the geometry (resize, crop and flip undone, :func:`preprocessing.geometry.
to_original`). Outputs per image, beside each other so that a prediction folder next to its
DICOMs is itself a ``folder``-format dataset (for review and correction):

- ``<stem>_prob.png``: probability x 255, 8-bit, original size;
- ``<stem>_mask.png``: the binary mask (0/255, 1-bit PNG), original size;
- ``<stem>_overlay.png``: the mammogram with the predicted outline (red), longest side <= 2048;
- ``<stem>_seg.dcm``: a DICOM Segmentation (highdicom), binary, one segment "breast mass"
  (SCT 4147007 Mass, category SCT 49755003 Morphologically abnormal structure, anatomic region
  SCT 76752008 Breast), algorithm type AUTOMATIC, referencing the source image's study, series,
  SOP instance and frame of reference;
- ``<stem>.json``: mass found, lesion count, each lesion's box and area in pixels and (when the
  DICOM has a pixel spacing) in mm, its maximum probability; written last.

Prediction runs on Ray Data (:class:`DicomPredictor`: one model per actor, a GPU per actor when
the cluster has GPUs). A file that cannot be read gets its reason and no outputs; the others are
predicted. ``predict_summary.json`` in the output root lists every input with its status.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from mammoray import storage
from mammoray.config import ConfigError, RayConfig
from mammoray.timing import StageTimer

OUTPUT_SUFFIXES = ("_mask.png", "_prob.png", "_overlay.png", "_seg.dcm", ".json")
INPUT_SUFFIXES = (".dcm", ".dicom")
STAGES = ("read", "decode", "preprocess", "model", "back_map", "write")
SEG_SERIES_NUMBER = 9901
OVERLAY_MAX_SIDE = 2048
RESULT_SCHEMA = pa.schema(
    [("relpath", pa.string()), ("status", pa.string()), ("reason", pa.string()),
     ("mass_found", pa.bool_()), ("lesions", pa.int64()), ("seg_written", pa.bool_())]
    + [(f"seconds_{s}", pa.float64()) for s in STAGES])


@dataclass(frozen=True)
class PredictOptions:
    checkpoint: str
    input: str
    output: str | None = None  # default: beside the input DICOMs
    threshold: float = 0.5
    dicom_seg: bool = True
    overwrite: bool = False
    actors: int | None = None
    cpus_per_actor: float = 1.0


def is_input_name(name: str) -> bool:
    """A file the predictor takes: *.dcm / *.dicom, or a name without an extension (as PACS
    exports write them); never one of its own outputs."""
    lower = name.lower()
    if lower.endswith("_seg.dcm") or lower.startswith("."):
        return False
    return lower.endswith(INPUT_SUFFIXES) or "." not in os.path.basename(lower)


def list_inputs(path: str) -> tuple[str, list[str]]:
    """(root, relative paths of the inputs) of a file or a folder (recursive)."""
    path = storage.normalize(path)
    if not storage.exists(path):
        raise ConfigError(f"--input {path}: no such file or folder")
    if not storage.is_dir(path):
        root, name = os.path.split(path) if not storage.is_uri(path) else path.rsplit("/", 1)
        return root, [name]
    files = [f[len(path.rstrip("/")) + 1:] for f in storage.list_files(path)]
    rel = [f for f in files if is_input_name(f) and ".partial-" not in f]
    if not rel:
        raise ConfigError(f"--input {path}: no DICOM files (*.dcm, *.dicom or names without "
                          "an extension) in this folder")
    return path, rel


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
    peak = np.zeros(n, np.float32)  # each component's maximum probability, in one pass
    np.maximum.at(peak, labels.ravel(), prob.ravel().astype(np.float32))
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


def dicom_seg(source_bytes: bytes, mask: np.ndarray, *, run_id: str,
              software_version: str) -> bytes:
    """A binary DICOM Segmentation of ``mask`` (source grid) referencing the source image; the
    SEGs of one run and study share one series."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    src = pydicom.dcmread(io.BytesIO(source_bytes), stop_before_pixels=True, force=True)
    series_uid = pydicom.uid.generate_uid(
        entropy_srcs=[run_id, str(src.get("StudyInstanceUID", ""))])
    algorithm = hd.AlgorithmIdentificationSequence(
        name="mammoray U-Net", version=software_version,
        family=codes.cid7162.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="breast mass",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Mass,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, anatomic_regions=[codes.SCT.Breast])
    pixel_measures = None
    spacing = src.get("PixelSpacing") or src.get("ImagerPixelSpacing")
    if "FrameOfReferenceUID" in src and spacing:
        # With a frame of reference the SEG's Pixel Measures need a Slice Thickness (PS3.3
        # C.7.6.16.2.1). A projection image has none: the compressed breast thickness when the
        # header gives it, else 1 mm.
        thickness = float(src.get("BodyPartThickness") or 1.0)
        pixel_measures = hd.PixelMeasuresSequence(pixel_spacing=[float(v) for v in spacing],
                                                  slice_thickness=thickness)
    seg = hd.seg.Segmentation(
        source_images=[src], pixel_array=(mask > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="mammoray", manufacturer_model_name="mammoray U-Net",
        software_versions=software_version, device_serial_number="none",
        series_description="mammoray breast-mass segmentation", omit_empty_frames=False,
        pixel_measures=pixel_measures)
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()


class DicomPredictor:
    """Ray Data actor: DICOM relative paths in, outputs written, one status row out each."""

    def __init__(self, checkpoint, input_root: str, output_root: str, threshold: float,
                 write_seg: bool, run_id: str, cpus: float = 1.0,
                 use_gpu: bool = False) -> None:
        from mammoray.inference import LocalCheckpoint, configure_tensorflow
        from mammoray.train import checkpoint_data_config, load_checkpoint_model

        configure_tensorflow(cpus, use_gpu)
        with LocalCheckpoint(checkpoint) as folder:
            self.model, _, self.size = load_checkpoint_model(folder)
            self.data_cfg = checkpoint_data_config(folder)
        self.input_root, self.output_root = input_root, output_root
        self.threshold, self.write_seg, self.run_id = threshold, write_seg, run_id
        from mammoray import __version__

        self.version = __version__

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.predict(rel) for rel in batch.column("relpath").to_pylist()]
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)

    def predict(self, relpath: str) -> dict[str, Any]:
        from preprocessing.dicom_io import RejectedImage, read_dicom

        timer = StageTimer()
        row: dict[str, Any] = {"relpath": relpath, "status": "ok", "reason": None,
                               "mass_found": None, "lesions": None, "seg_written": None}
        try:
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
            first = str(exc).splitlines()[0][:160] if str(exc) else ""
            row.update(status="rejected", reason=f"unexpected error ({type(exc).__name__}: "
                                                 f"{first})")
        for stage in STAGES:
            row[f"seconds_{stage}"] = float(timer.seconds.get(stage, 0.0))
        return row

    def _predict_decoded(self, relpath, data, dicom, timer) -> dict[str, Any]:
        from mammoray.inference import draw_overlay, predict_probabilities, write_png
        from preprocessing.geometry import to_original
        from preprocessing.transform import preprocess_image

        with timer("preprocess"):
            processed = preprocess_image(dicom, None, self.data_cfg)
            x = (processed.image.astype(np.float32) * np.float32(1.0 / 65535))[None, ..., None]
        with timer("model"):
            prob = predict_probabilities(self.model, x)[0]
        with timer("back_map"):
            prob_orig = np.clip(to_original(prob, processed.geometry), 0.0, 1.0)
            mask = (prob_orig >= self.threshold).astype(np.uint8)
            lesions = lesion_summary(mask, prob_orig, dicom.pixel_spacing)
        with timer("write"):
            base = storage.join(self.output_root, stem_of(relpath))
            write_png(base + "_prob.png", np.rint(prob_orig * 255).astype(np.uint8))
            write_png(base + "_mask.png", mask * 255, bilevel=True)
            write_png(base + "_overlay.png", draw_overlay(dicom.pixels, mask,
                                                          max_side=OVERLAY_MAX_SIDE))
            seg_written, seg_error = False, None
            if self.write_seg:
                try:
                    storage.write_bytes(base + "_seg.dcm", dicom_seg(
                        data, mask, run_id=self.run_id, software_version=self.version))
                    seg_written = True
                except Exception as exc:  # the PNGs and JSON are still useful
                    seg_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            summary = {
                "image": os.path.basename(relpath), "mass_found": bool(lesions),
                "lesion_count": len(lesions), "lesions": lesions,
                "threshold": self.threshold,
                "original_size": [int(mask.shape[0]), int(mask.shape[1])],
                "pixel_spacing_mm": list(dicom.pixel_spacing) if dicom.pixel_spacing else None,
                "model_input_size": self.size, "flipped": processed.geometry.flipped,
                "breast_box_px": list(processed.geometry.crop),
                "outputs": [os.path.basename(base) + s for s in OUTPUT_SUFFIXES
                            if s != "_seg.dcm" or seg_written],
                "dicom_seg_error": seg_error,
            }
            storage.write_bytes(base + ".json", json.dumps(summary, indent=1).encode())
        return {"mass_found": bool(lesions), "lesions": len(lesions),
                "seg_written": seg_written}


def run_prediction(opts: PredictOptions, ray_cfg: RayConfig,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Predict every input; returns the summary (also written as predict_summary.json)."""
    import ray

    from mammoray.evaluate import check_checkpoint
    from mammoray.inference import share_checkpoint
    from mammoray.ray_env import init_ray

    if not 0.0 < opts.threshold < 1.0:
        raise ConfigError(f"--threshold {opts.threshold}: must be between 0 and 1 (exclusive)")
    check_checkpoint(opts.checkpoint)
    root, relpaths = list_inputs(opts.input)
    output = storage.normalize(opts.output) if opts.output else root
    present = set(storage.list_files(output)) if storage.is_dir(output) else set()
    existing = [path for r in relpaths for s in OUTPUT_SUFFIXES
                if (path := storage.join(output, stem_of(r)) + s) in present]
    if existing and not opts.overwrite:
        raise ConfigError(f"--output {output}: {len(existing)} prediction file(s) already exist "
                          f"(e.g. {existing[0]}; a <stem>_mask.png may be a ground-truth "
                          "mask); choose another --output or pass --overwrite")
    started = init_ray(ray_cfg)
    t0 = time.perf_counter()
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = float(ray.cluster_resources().get("CPU", 1))
        use_gpu = gpus > 0
        n = opts.actors or (gpus if use_gpu else max(1, int(cpus // opts.cpus_per_actor)))
        n = max(1, min(n, len(relpaths)))
        ds = ray.data.from_items([{"relpath": r} for r in relpaths],
                                 override_num_blocks=min(len(relpaths), 4 * n))
        results = ds.map_batches(
            DicomPredictor, fn_constructor_kwargs={
                "checkpoint": share_checkpoint(opts.checkpoint), "input_root": root,
                "output_root": output, "threshold": opts.threshold,
                "write_seg": opts.dicom_seg, "run_id": uuid.uuid4().hex,
                "cpus": opts.cpus_per_actor, "use_gpu": use_gpu},
            batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=n),
            num_cpus=opts.cpus_per_actor, num_gpus=1 if use_gpu else None).take_all()
    finally:
        if started:
            ray.shutdown()
    results = sorted(results, key=lambda r: r["relpath"])
    ok = [r for r in results if r["status"] == "ok"]
    rejected = [r for r in results if r["status"] != "ok"]
    if len(ok) + len(rejected) != len(relpaths):
        raise RuntimeError(f"predict: {len(relpaths)} inputs but {len(ok)} predicted + "
                           f"{len(rejected)} rejected")
    seconds = {s: float(np.median([r[f"seconds_{s}"] for r in ok])) if ok else None
               for s in STAGES}
    summary = {"inputs": len(relpaths), "predicted": len(ok), "rejected": len(rejected),
               "threshold": opts.threshold, "dicom_seg": opts.dicom_seg,
               "median_seconds_per_image": seconds,
               "wall_seconds": time.perf_counter() - t0,
               "images": [{k: r[k] for k in ("relpath", "status", "reason", "mass_found",
                                             "lesions", "seg_written")} for r in results]}
    storage.write_bytes(storage.join(output, "predict_summary.json"),
                        json.dumps(summary, indent=1).encode())
    for r in rejected:
        log(f"predict: rejected {r['relpath']}: {r['reason']}")
    log(f"predict: {len(relpaths)} inputs = {len(ok)} predicted + {len(rejected)} rejected; "
        f"{sum(1 for r in ok if r['mass_found'])} with a mass found -> {output}")
    return summary
