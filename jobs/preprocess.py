"""Preprocess a mammography dataset into Parquet with Ray Data.

    python -m jobs.preprocess [--config FILE] [--format folder|cbis-ddsm|inbreast]
        [--input DIR] [--source-input NAME=DIR ...] [--output DIR] [--size N] [--overwrite]
        [--address ADDR] [--num-cpus N]

Without --config the documented defaults apply; flags override config keys. --format/--input
describe one dataset; a config's `data.sources` lists several, whose roots --source-input
sets (e.g. --source-input inbreast=/data/INbreast --source-input cbis-ddsm=/data/CBIS).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs._cli import add_ray_flags, config_sets, ray_overrides, run
from mammoray.core.config import ConfigError, load_config
from preprocessing.pipeline import PreprocessError, run_preprocess
from preprocessing.sources import SourceError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (sections data, ray)")
    p.add_argument("--format", help="dataset layout: folder, cbis-ddsm, inbreast (data.format)")
    p.add_argument("--input", help="dataset root (data.input)")
    p.add_argument("--output", help="output folder (data.output)")
    p.add_argument("--size", type=int, help="output image side in pixels (data.size)")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=None,
                   help="replace an existing output (data.overwrite)")
    p.add_argument("--source-input", action="append", default=[], metavar="NAME=DIR",
                   help="root of the config's source NAME (data.sources[].input); repeatable")
    add_ray_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> None:
        cfg = load_config(args.config, {
            "data.format": args.format, "data.input": args.input, "data.output": args.output,
            "data.size": args.size, "data.overwrite": args.overwrite, **ray_overrides(args)},
            config_sets(args))
        if args.source_input:
            inputs = {}
            for item in args.source_input:
                name, sep, root = item.partition("=")
                if not sep or not name or not root:
                    raise ConfigError(f"--source-input {item}: expected NAME=DIR")
                inputs[name] = root
            cfg = dataclasses.replace(cfg, data=cfg.data.with_source_inputs(inputs))
        run_preprocess(cfg)

    return run(job, expected=(PreprocessError, SourceError))


if __name__ == "__main__":
    sys.exit(main())
