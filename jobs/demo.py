"""The demo: synthesize -> preprocess -> search -> train -> evaluate -> predict -> export on a
local Ray, on built-in synthetic data.

    python -m jobs.demo [--output DIR] [--patients N] [--size N] [--epochs N] [--trials N]

Writes ``<output>/raw`` (synthetic scanned-film mammograms in mixed transfer syntaxes, plus
unusable files), ``<output>/dataset`` (the Parquet dataset), ``<output>/search`` (a short
hyper-parameter search over jobs/configs/laptop.yaml's space: trials.csv, search.png,
best_config.yaml; demo-sized, so training below keeps laptop.yaml), ``<output>/train`` (the
U-Net of jobs/configs/laptop.yaml: best/ checkpoint, history.csv, curves.png),
``<output>/evaluation`` (test split: report.html, metrics.json, per_image.csv, froc.png,
overlays) and ``<output>/predictions`` (for new synthetic DICOMs in ``<output>/new_dicoms``:
predicted masks on the original grid, overlays, DICOM SEG objects and JSON summaries) and
``<output>/export`` (the model as a SavedModel and ONNX), and prints where they are.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from jobs import evaluate, export, predict, preprocess, synthesize, train, tune

LAPTOP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "laptop.yaml")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="demo_output", help="demo folder (replaced)")
    p.add_argument("--patients", type=int, default=8)
    p.add_argument("--size", type=int, default=256, help="preprocessed image side")
    p.add_argument("--epochs", type=int, default=8, help="training epochs")
    p.add_argument("--trials", type=int, default=3, help="search trials (3 epochs each)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.output)
    if os.path.isdir(out):
        shutil.rmtree(out)
    raw, dataset = os.path.join(out, "raw"), os.path.join(out, "dataset")
    trained = os.path.join(out, "train")
    ray_flags = ["--num-cpus", str(args.num_cpus)] if args.num_cpus else []
    print("== 1/7 synthesize", flush=True)
    code = synthesize.main(["--output", raw, "--patients", str(args.patients), "--film",
                            "--transfer-syntax", "mixed", "--defects", "--seed", "7"])
    if code:
        return code
    print("== 2/7 preprocess", flush=True)
    code = preprocess.main(["--input", raw, "--output", dataset, "--size", str(args.size),
                            *ray_flags])
    if code:
        return code
    search = os.path.join(out, "search")
    print(f"== 3/7 search ({args.trials} trials of 3 epochs, two at once)", flush=True)
    code = tune.main(["--config", LAPTOP, "--data", dataset, "--output", search,
                      "--num-samples", str(args.trials), "--epochs", "3", *ray_flags])
    if code:
        return code
    print("== 4/7 train (jobs/configs/laptop.yaml)", flush=True)
    code = train.main(["--config", LAPTOP, "--data", dataset, "--output", trained, "--epochs",
                       str(args.epochs), *ray_flags])
    if code:
        return code
    best, evaluation = os.path.join(trained, "best"), os.path.join(out, "evaluation")
    print("== 5/7 evaluate (test split, threshold chosen on validation)", flush=True)
    code = evaluate.main(["--checkpoint", best, "--data", dataset, "--split", "test",
                          "--threshold", "val", "--output", evaluation, *ray_flags])
    if code:
        return code
    print("== 6/7 predict (new synthetic DICOMs, full size)", flush=True)
    incoming, predictions = os.path.join(out, "new_dicoms"), os.path.join(out, "predictions")
    code = synthesize.main(["--output", incoming, "--patients", "1", "--seed", "99",
                            "--height", "2048", "--width", "1664"])
    if code:
        return code
    code = predict.main(["--checkpoint", best, "--input", incoming, "--output", predictions,
                         *ray_flags])
    if code:
        return code
    exported = os.path.join(out, "export")
    print("== 7/7 export (TensorFlow SavedModel and ONNX)", flush=True)
    code = export.main(["--checkpoint", best, "--output", exported])
    if code:
        return code
    print(f"\ndemo done.\n  synthetic DICOMs: {raw}\n  Parquet dataset:  {dataset}/data\n"
          f"  rejected files:   {dataset}/rejected.parquet\n  dataset summary:  "
          f"{dataset}/dataset.json (fingerprint)\n  QC sheets:        {dataset}/qc/*.png\n"
          f"  search:           {search}/trials.csv, search.png, "
          f"best_config.yaml\n  trained model:    {trained}/best (model.keras)\n"
          f"  training curves:  {trained}/curves.png, {trained}/history.csv, "
          f"{trained}/tensorboard\n"
          f"  evaluation:       {evaluation}/report.html (metrics.json, per_image.csv, "
          f"froc.png, overlays/)\n  predictions:      {predictions}/patient_0000/ (*_mask.png, "
          f"*_prob.png, *_overlay.png, *_seg.dcm, *.json) for {incoming}\n"
          f"  export:           {exported}/saved_model, model.onnx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
