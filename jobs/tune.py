"""Search hyper-parameters with Ray Tune + Optuna: U-Net depth, a dropout rate per level,
learning rate (and, if the config opens them, base filters, batch size, loss).

    python -m jobs.tune --config FILE [--data DIR] [--output DIR] [--num-samples N]
        [--max-concurrent N] [--epochs N] [--cpus-per-worker N] [--resume] [--address ADDR] [--num-cpus N]

Each trial is one Ray Train run of the config's model and train sections with the sampled
values (its own workers, train.num_workers x tune.cpus_per_worker or train.cpus_per_worker);
ASHA stops poor trials early on validation IoU. Writes <output>/trials.csv (one row per
trial), search.png, best_config.yaml (give it to jobs.train --config), best/ (the best trial's
checkpoint, for jobs.evaluate / jobs.predict) and summary.json. The search's state lives in
<output>/ray_results/<tune.name> (or tune.storage_path); --resume continues an interrupted
search from there with the config it was started with, without re-running finished trials.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_ray_flags, config_sets, ray_overrides, run
from mammoray.core.config import load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (sections model, train, tune, ray)")
    p.add_argument("--data", help="preprocessed dataset folder (train.data)")
    p.add_argument("--output", help="search output folder (tune.output)")
    p.add_argument("--num-samples", type=int, help="trials (tune.num_samples)")
    p.add_argument("--max-concurrent", type=int,
                   help="trials at once; 0 = what the cluster holds now (tune.max_concurrent)")
    p.add_argument("--epochs", type=int, help="epochs per trial (tune.epochs)")
    p.add_argument("--cpus-per-worker", type=float,
                   help="CPUs per training worker during the search (tune.cpus_per_worker)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue the interrupted search in the output's storage path")
    add_ray_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mammoray.training.trainer import TrainError
    from mammoray.tuning.search import SearchInterrupted, run_search

    def job() -> None:
        cfg = load_config(args.config, {
            "train.data": args.data, "tune.output": args.output,
            "tune.num_samples": args.num_samples, "tune.max_concurrent": args.max_concurrent,
            "tune.epochs": args.epochs, "tune.cpus_per_worker": args.cpus_per_worker,
            **ray_overrides(args)}, config_sets(args))
        run_search(cfg, resume=args.resume)

    return run(job, expected=(TrainError, SearchInterrupted), interrupted=(
        "the search's state is kept; continue it with --resume"))


if __name__ == "__main__":
    sys.exit(main())
