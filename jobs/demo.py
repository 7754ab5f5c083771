"""The demo: synthesize -> preprocess -> train on a local Ray, on built-in synthetic data.

    python -m jobs.demo [--output DIR] [--patients N] [--size N] [--epochs N]

Writes ``<output>/raw`` (synthetic scanned-film mammograms in mixed transfer syntaxes, plus
unusable files), ``<output>/dataset`` (the Parquet dataset) and ``<output>/train`` (the
U-Net of jobs/configs/laptop.yaml: best/ checkpoint, history.csv, curves.png), and prints
where they are.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from jobs import preprocess, synthesize, train

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
    print("== 1/3 synthesize", flush=True)
    code = synthesize.main(["--output", raw, "--patients", str(args.patients), "--film",
                            "--transfer-syntax", "mixed", "--defects", "--seed", "7"])
    if code:
        return code
    print("== 2/3 preprocess", flush=True)
    flags = ["--input", raw, "--output", dataset, "--size", str(args.size)]
    if args.num_cpus:
        flags += ["--num-cpus", str(args.num_cpus)]
    code = preprocess.main(flags)
    if code:
        return code
    print("== 3/3 train (jobs/configs/laptop.yaml)", flush=True)
    flags = ["--config", LAPTOP, "--data", dataset, "--output", trained, "--epochs",
             str(args.epochs)]
    if args.num_cpus:
        flags += ["--num-cpus", str(args.num_cpus)]
    code = train.main(flags)
    if code:
        return code
    print(f"\ndemo done.\n  synthetic DICOMs: {raw}\n  Parquet dataset:  {dataset}/data\n"
          f"  rejected files:   {dataset}/rejected.parquet\n  dataset summary:  "
          f"{dataset}/dataset.json\n  trained model:    {trained}/best (model.keras)\n"
          f"  training curves:  {trained}/curves.png, {trained}/history.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
