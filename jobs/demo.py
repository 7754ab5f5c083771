"""The demo: synthesize -> preprocess -> train -> evaluate -> predict on a local Ray, on
built-in synthetic data.

    python -m jobs.demo [--output DIR] [--patients N] [--size N] [--epochs N]

Writes ``<output>/raw`` (synthetic scanned-film mammograms in mixed transfer syntaxes, plus
unusable files), ``<output>/dataset`` (the Parquet dataset) and ``<output>/train`` (the
U-Net of jobs/configs/laptop.yaml: best/ checkpoint, history.csv, curves.png),
``<output>/evaluation`` (test split: report.html, metrics.json, per_image.csv, froc.png,
overlays) and ``<output>/predictions`` (for new synthetic DICOMs in ``<output>/new_dicoms``:
predicted masks on the original grid, overlays, DICOM SEG objects and JSON summaries), and
prints where they are.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from jobs import evaluate, predict, preprocess, synthesize, train

LAPTOP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "laptop.yaml")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="demo_output", help="demo folder (replaced)")
    p.add_argument("--patients", type=int, default=8)
    p.add_argument("--size", type=int, default=256, help="preprocessed image side")
    p.add_argument("--epochs", type=int, default=8, help="training epochs")
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
    print("== 1/5 synthesize", flush=True)
    code = synthesize.main(["--output", raw, "--patients", str(args.patients), "--film",
                            "--transfer-syntax", "mixed", "--defects", "--seed", "7"])
    if code:
        return code
    print("== 2/5 preprocess", flush=True)
    code = preprocess.main(["--input", raw, "--output", dataset, "--size", str(args.size),
                            *ray_flags])
    if code:
        return code
    print("== 3/5 train (jobs/configs/laptop.yaml)", flush=True)
    code = train.main(["--config", LAPTOP, "--data", dataset, "--output", trained, "--epochs",
                       str(args.epochs), *ray_flags])
    if code:
        return code
    best, evaluation = os.path.join(trained, "best"), os.path.join(out, "evaluation")
    print("== 4/5 evaluate (test split, threshold chosen on validation)", flush=True)
    code = evaluate.main(["--checkpoint", best, "--data", dataset, "--split", "test",
                          "--threshold", "val", "--output", evaluation, *ray_flags])
    if code:
        return code
    print("== 5/5 predict (new synthetic DICOMs, full size)", flush=True)
    incoming, predictions = os.path.join(out, "new_dicoms"), os.path.join(out, "predictions")
    code = synthesize.main(["--output", incoming, "--patients", "1", "--seed", "99",
                            "--height", "2048", "--width", "1664"])
    if code:
        return code
    code = predict.main(["--checkpoint", best, "--input", incoming, "--output", predictions,
                         *ray_flags])
    if code:
        return code
    print(f"\ndemo done.\n  synthetic DICOMs: {raw}\n  Parquet dataset:  {dataset}/data\n"
          f"  rejected files:   {dataset}/rejected.parquet\n  dataset summary:  "
          f"{dataset}/dataset.json\n  trained model:    {trained}/best (model.keras)\n"
          f"  training curves:  {trained}/curves.png, {trained}/history.csv\n"
          f"  evaluation:       {evaluation}/report.html (metrics.json, per_image.csv, "
          f"froc.png, overlays/)\n  predictions:      {predictions}/patient_0000/ (*_mask.png, "
          f"*_prob.png, *_overlay.png, *_seg.dcm, *.json) for {incoming}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
