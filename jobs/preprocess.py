"""Preprocess a mammography dataset into Parquet with Ray Data.

    python -m jobs.preprocess [--config FILE] [--format folder] [--input DIR] [--output DIR]
        [--size N] [--overwrite] [--address ADDR] [--num-cpus N]

Without --config the documented defaults apply; flags override config keys.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_ray_flags, ray_overrides, run
from mammoray.config import load_config
from preprocessing.pipeline import PreprocessError, run_preprocess


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (sections data, ray)")
    p.add_argument("--format", help="dataset layout (data.format)")
    p.add_argument("--input", help="dataset root (data.input)")
    p.add_argument("--output", help="output folder (data.output)")
    p.add_argument("--size", type=int, help="output image side in pixels (data.size)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace an existing output (data.overwrite)")
    add_ray_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> None:
        cfg = load_config(args.config, {
            "data.format": args.format, "data.input": args.input, "data.output": args.output,
            "data.size": args.size, "data.overwrite": args.overwrite, **ray_overrides(args)})
        run_preprocess(cfg)

    return run(job, expected=(PreprocessError,))


if __name__ == "__main__":
    sys.exit(main())
