"""Evaluate a trained checkpoint on one split of a preprocessed dataset.

    python -m jobs.evaluate --checkpoint PATH --data DIR [--split test] [--output DIR]
        [--threshold T|val] [--batch-size N] [--actors N] [--bootstrap N] [--overwrite]
        [--address ADDR] [--num-cpus N]

Writes metrics.json, per_image.csv, froc.png, overlays/ and report.html into --output (default
<checkpoint>/../evaluation-<split>). --threshold val chooses the threshold with the best mean
Dice on the validation split (never on the evaluated split). Batch inference runs on Ray Data,
one model per actor (a GPU each when the cluster has GPUs).
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_ray_flags, infer_overrides, ray_config, run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (<train output>/best)")
    p.add_argument("--data", required=True, help="preprocessed dataset (jobs.preprocess output)")
    p.add_argument("--split", default="test", help="train, val or test (default test)")
    p.add_argument("--output", help="output folder (default <checkpoint>/../evaluation-<split>)")
    p.add_argument("--threshold", default="0.5",
                   help="probability threshold in (0, 1), or 'val' to choose it on the "
                        "validation split (default 0.5)")
    p.add_argument("--batch-size", type=int, default=8, help="images per inference batch")
    p.add_argument("--actors", type=int, help="inference actors (default: one per CPU, or one "
                   "per GPU when the cluster has GPUs)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples (by patient) for the 95%% intervals")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace an existing output")
    add_ray_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mammoray.evaluation.job import EvaluateOptions, run_evaluation
    from mammoray.evaluation.scoring import EvaluationError

    def job() -> None:
        if args.batch_size < 1 or (args.actors is not None and args.actors < 1):
            raise ValueError("--batch-size and --actors must be at least 1")
        if args.bootstrap < 10:
            raise ValueError("--bootstrap must be at least 10")
        ray_cfg = ray_config(args, "jobs.evaluate", ("ray", "infer"))
        run_evaluation(EvaluateOptions(
            checkpoint=args.checkpoint, data=args.data, split=args.split, output=args.output,
            threshold=args.threshold, batch_size=args.batch_size, actors=args.actors,
            bootstrap=args.bootstrap, overwrite=args.overwrite, infer=infer_overrides(args)),
            ray_cfg)

    return run(job, expected=(EvaluationError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
