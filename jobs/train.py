"""Train the U-Net with Ray Train on a preprocessed dataset.

    python -m jobs.train --config FILE [--data DIR] [--output DIR] [--num-workers N]
        [--cpus-per-worker N] [--use-gpu] [--epochs N] [--storage-path URI] [--dry-run] [--address ADDR]
        [--num-cpus N]

Writes <output>/best (model.keras + config.json: what jobs.evaluate and jobs.predict take as
--checkpoint), history.csv, curves.png and summary.json; Ray Train's checkpoints live in
<output>/ray_results (or train.storage_path). Running the same command again resumes the run
from its latest checkpoint. --dry-run checks the config and the data, builds the model, prints
`trainable parameters: N` and exits.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_ray_flags, config_sets, ray_overrides, run
from mammoray.core.config import load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (sections model, train, ray)")
    p.add_argument("--data", help="preprocessed dataset folder (train.data)")
    p.add_argument("--output", help="training output folder (train.output)")
    p.add_argument("--num-workers", type=int, help="Ray Train workers (train.num_workers)")
    p.add_argument("--cpus-per-worker", type=float,
                   help="CPUs per worker (train.cpus_per_worker)")
    p.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="one GPU per worker, or none (train.use_gpu)")
    p.add_argument("--epochs", type=int, help="epochs (train.epochs)")
    p.add_argument("--storage-path", help="where Ray Train keeps checkpoints (train.storage_path"
                   "; s3://... or gs://... on a multi-node cluster)")
    p.add_argument("--dry-run", action="store_true",
                   help="check config and data, build the model, print its size, exit")
    add_ray_flags(p)
    return p.parse_args(argv)


def dry_run(cfg) -> int:
    from mammoray.model.unet import build_unet, count_trainable
    from mammoray.training.trainer import check_train_config

    size = 256
    if cfg.train.data:
        size = int(check_train_config(cfg, need_output=False)["image"]["height"])
    n = count_trainable(build_unet(cfg.model, size))
    print(f"model: {cfg.model.levels} levels, {cfg.model.base_filters} base filters, input "
          f"{size} x {size}")
    print(f"trainable parameters: {n}")
    return n


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mammoray.training.trainer import TrainError, run_training

    def job() -> None:
        cfg = load_config(args.config, {
            "train.data": args.data, "train.output": args.output,
            "train.num_workers": args.num_workers, "train.use_gpu": args.use_gpu,
            "train.cpus_per_worker": args.cpus_per_worker,
            "train.epochs": args.epochs, "train.storage_path": args.storage_path,
            **ray_overrides(args)}, config_sets(args))
        if args.dry_run:
            dry_run(cfg)
        else:
            run_training(cfg)

    return run(job, expected=(TrainError,), interrupted=(
        "the checkpoints saved so far are kept (train.storage_path, default "
        "<output>/ray_results); run the same command again to continue from the latest"))


if __name__ == "__main__":
    sys.exit(main())
