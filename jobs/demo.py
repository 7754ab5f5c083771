"""The demo: synthesize -> preprocess on a local Ray, on built-in synthetic data.

    python -m jobs.demo [--output DIR] [--patients N] [--size N]

Writes ``<output>/raw`` (synthetic scanned-film mammograms in mixed transfer syntaxes, plus
unusable files) and ``<output>/dataset`` (the Parquet dataset), and prints where they are.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from jobs import preprocess, synthesize


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="demo_output", help="demo folder (replaced)")
    p.add_argument("--patients", type=int, default=8)
    p.add_argument("--size", type=int, default=256, help="preprocessed image side")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.output)
    if os.path.isdir(out):
        shutil.rmtree(out)
    raw, dataset = os.path.join(out, "raw"), os.path.join(out, "dataset")
    print("== 1/2 synthesize", flush=True)
    code = synthesize.main(["--output", raw, "--patients", str(args.patients), "--film",
                            "--transfer-syntax", "mixed", "--defects", "--seed", "7"])
    if code:
        return code
    print("== 2/2 preprocess", flush=True)
    flags = ["--input", raw, "--output", dataset, "--size", str(args.size)]
    if args.num_cpus:
        flags += ["--num-cpus", str(args.num_cpus)]
    code = preprocess.main(flags)
    if code:
        return code
    print(f"\ndemo done.\n  synthetic DICOMs: {raw}\n  Parquet dataset:  {dataset}/data\n"
          f"  rejected files:   {dataset}/rejected.parquet\n  summary:          "
          f"{dataset}/dataset.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
