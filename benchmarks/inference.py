"""Prediction time per full-field DICOM and batch-evaluation throughput (not a test).

    .venv/bin/python benchmarks/inference.py [--images 8] [--quick | --patch-modes]
                                             [--eval-data DIR --checkpoint DIR]

1. ``jobs.predict`` on full-field scanned-film DICOMs (4000 x 3000, 16-bit RLE, from
   ``benchmarks/preprocess_cpu.py``'s data, generated if missing), with one actor on a local Ray of
   1 CPU, for U-Nets built from configs (timing does not depend on the weights): the laptop
   U-Net at 256 and at 1024 px input, and the seed study's 7-level / 64-filter U-Net at 1024.
   Median seconds per image of each stage: read, decode, preprocess, model, back-mapping
   (resize/crop/flip undone + threshold + lesion summary), writing (three PNGs, DICOM SEG,
   JSON), and writing's share of the total. ``--quick``: the laptop U-Net at 256 px only.
   What there is to write depends on the masks, which fixed untrained weights draw at random
   (a change of config changes them: writing took 0.11-0.23 s per image for the same code);
   so a trained laptop checkpoint (``--checkpoint``, by default ``benchmarks/quality.py``'s)
   is timed too where it exists: masses where a trained model finds them.
   ``--patch-modes``: both training modes of the laptop U-Net side by side: whole 256-px
   images (laptop.yaml) and 256-px patches over 512-px images (laptop-patches.yaml), the latter
   through the sliding window (overlap 0.5) and as one whole-image pass.
2. ``jobs.evaluate`` throughput (Parquet rows -> Ray Data -> one model per actor -> per-image
   figures at 23 thresholds) on a local Ray with 1 and then 2 CPUs (one actor per CPU), on the
   training split of ``benchmarks/quality.py``'s dataset with its trained laptop checkpoint
   (or --eval-data / --checkpoint).

Prints tables and writes ``benchmarks/results/inference.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mammoray.core.config import RayConfig, config_from_dict, load_config  # noqa: E402
from mammoray.inference.predictor import STAGES  # noqa: E402

DATA = os.path.join(REPO, "benchmarks", "data")


def full_field_inputs(n: int) -> str:
    """n full-field film DICOMs (the first of ``benchmarks/preprocess_cpu.py``'s 12 patients)."""
    from preprocess import ensure_data

    raw = ensure_data(DATA, max(12, -(-n // 4)), 4000, 3000)
    folder = os.path.join(DATA, f"predict_inputs_{n}")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        picked = sorted(os.path.join(d, f) for d in os.listdir(raw) if d.startswith("patient_")
                        for f in os.listdir(os.path.join(raw, d)) if f.endswith(".dcm"))[:n]
        for rel in picked:
            os.makedirs(os.path.join(folder, os.path.dirname(rel)), exist_ok=True)
            shutil.copy(os.path.join(raw, rel), os.path.join(folder, rel))
    return folder


def make_checkpoint(folder: str, model_cfg: dict, size: int, extra: dict | None = None) -> str:
    """A checkpoint of fixed weights for ``size`` images; ``extra``: more config sections
    (a ``train.patch_size`` builds the model for patches, as patch training does)."""
    import keras

    from mammoray.model.checkpoint import write_checkpoint
    from mammoray.model.unet import build_unet

    cfg = config_from_dict({"model": model_cfg, **(extra or {})})
    keras.utils.set_random_seed(0)  # the same weights, so the same masks to write, every run
    model = build_unet(cfg.model, cfg.train.patch_size or size)
    preprocessing = cfg.to_dict()["data"] | {"size": size}
    if extra and "data" in extra:
        preprocessing.update(extra["data"])
    os.makedirs(folder, exist_ok=True)
    write_checkpoint(folder, model, cfg.to_dict(), size, preprocessing)
    return folder


def bench_predict(inputs: str, ckpt: str) -> dict:
    from mammoray.inference.job import PredictOptions, run_prediction

    out = tempfile.mkdtemp(prefix="bench-predict-")
    try:
        summary = run_prediction(PredictOptions(checkpoint=ckpt, input=inputs, output=out),
                                 RayConfig(num_cpus=1), log=lambda _: None)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"predicted": summary["predicted"], "wall_seconds": summary["wall_seconds"],
            "median_seconds": summary["median_seconds_per_image"],
            "median_write_cpu_seconds": summary["median_write_cpu_seconds"]}


def bench_evaluate(data: str, ckpt: str, cpus: int) -> dict:
    from mammoray.evaluation.job import EvaluateOptions, run_evaluation

    out = tempfile.mkdtemp(prefix="bench-eval-")
    try:
        t0 = time.perf_counter()
        result = run_evaluation(EvaluateOptions(checkpoint=ckpt, data=data, split="train",
                                                output=os.path.join(out, "e"), bootstrap=200),
                                RayConfig(num_cpus=cpus), log=lambda _: None)
        total = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return result["throughput"] | {"job_seconds": total}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--eval-data", default=os.path.join(DATA, "quality_80p_256"))
    p.add_argument("--checkpoint", default=os.path.join(DATA, "quality_out_laptop", "best"),
                   help="a trained laptop.yaml checkpoint (benchmarks/quality.py's): predicted "
                        "beside the fixed weights, and used by the batch evaluation")
    p.add_argument("--skip-study-model", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="the laptop U-Net at 256 px only, no batch evaluation")
    p.add_argument("--patch-modes", action="store_true",
                   help="whole-image and patch-trained laptop U-Nets side by side, no batch "
                        "evaluation")
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results",
                                                  "inference.json"))
    args = p.parse_args(argv)
    inputs = full_field_inputs(args.images)
    laptop = load_config(os.path.join(REPO, "jobs", "configs", "laptop.yaml")).to_dict()["model"]
    study = load_config(os.path.join(REPO, "jobs", "configs", "thesis.yaml")).to_dict()["model"]
    models = [("laptop U-Net, 256 px", laptop, 256, None),
              ("laptop U-Net, 1024 px", laptop, 1024, None)]
    if args.quick:
        models = models[:1]
    elif args.patch_modes:
        patched = {"train": {"patch_size": 256}, "data": {"pad_to_square": True}}
        models = [("whole 256-px images (laptop.yaml)", laptop, 256, None),
                  ("256-px patches, 512 px, sliding window", laptop, 512,
                   patched | {"infer": {"mode": "sliding", "overlap": 0.5}}),
                  ("256-px patches, 512 px, whole image", laptop, 512,
                   patched | {"infer": {"mode": "whole"}})]
    elif not args.skip_study_model:
        models.append(("study U-Net (7 levels, 64 filters), 1024 px", study, 1024, None))
    results: dict = {"predict": {}, "evaluate": {}}
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        for i, (name, cfg, size, extra) in enumerate(models):
            print(f"predict: {name} ...", flush=True)
            ckpt = make_checkpoint(os.path.join(tmp, str(i)), cfg, size, extra)
            results["predict"][name] = bench_predict(inputs, ckpt)
    trained = os.path.join(args.checkpoint, "model.keras")
    if not args.patch_modes and os.path.isfile(trained):
        name = "laptop U-Net, 256 px, trained (--checkpoint)"
        print(f"predict: {name} ...", flush=True)
        results["predict"][name] = bench_predict(inputs, args.checkpoint)
    if args.quick or args.patch_modes:
        pass
    elif os.path.isdir(args.checkpoint) and os.path.isdir(args.eval_data):
        for cpus in (1, 2):
            print(f"evaluate: {cpus} CPU(s) ...", flush=True)
            results["evaluate"][str(cpus)] = bench_evaluate(args.eval_data, args.checkpoint, cpus)
    else:
        print(f"evaluate: skipped ({args.checkpoint} or {args.eval_data} missing: run "
              "benchmarks/quality.py first)")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"\nPrediction, median s per full-field DICOM (4000 x 3000 film, RLE), 1 CPU, "
          f"{args.images} images")
    print(f"{'model':46}" + "".join(f"{s:>11}" for s in (*STAGES, "total")))
    for name, r in results["predict"].items():
        m = r["median_seconds"]
        print(f"{name:46}" + "".join(f"{m[s]:11.3f}" for s in STAGES)
              + f"{sum(m.values()):11.3f}   (writing {m['write'] / sum(m.values()):.0%}; "
              f"its CPU {r['median_write_cpu_seconds']:.3f} s on two threads)")
    if results["evaluate"]:
        print("\nBatch evaluation (laptop U-Net, 256 px, one actor per CPU)")
        print(f"{'CPUs':>5} {'images':>7} {'scoring s':>10} {'images/s':>9} {'job s':>7}")
        for cpus, r in results["evaluate"].items():
            print(f"{cpus:>5} {r['images']:7d} {r['seconds']:10.1f} {r['images_per_s']:9.2f} "
                  f"{r['job_seconds']:7.1f}")
        one, two = results["evaluate"].get("1"), results["evaluate"].get("2")
        if one and two:
            print(f"2 CPUs / 1 CPU: {two['images_per_s'] / one['images_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
