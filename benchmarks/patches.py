"""Patch training's input pipeline against its training rate (not a test).

    .venv/bin/python benchmarks/patches.py [--data benchmarks/data]

Run after ``benchmarks/quality.py`` for laptop.yaml and laptop-patches.yaml (it reads their
cached datasets and training histories). For each config: the input pipeline alone, as a
training worker runs it (Ray Data iteration of the training split on a local Ray with 2 CPUs,
decoding, and for patch training the patch sampler with its augmentation), in training
inputs per second; the training rate of the quality run (training inputs / the training
loop's seconds, epochs 2 on, which includes the input pipeline); their ratio (the issue's
target: at least 3); and the bytes per stored row.

Prints a table and writes ``benchmarks/results/patches.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mammoray.core.config import RayConfig, load_config  # noqa: E402

CONFIGS = ("laptop", "laptop-patches")


def input_rate(data: str, cfg, repeats: int = 3) -> float:
    """Training inputs (images or patches) per second of the input pipeline alone."""
    from mammoray.core.dataset import split_dataset
    from mammoray.core.ray_session import ray_session
    from mammoray.training.loop import batch_inputs

    tcfg, size = cfg.train, cfg.data.size
    rows, inputs = batch_inputs(tcfg, size, epoch=0)
    with ray_session(RayConfig(num_cpus=2)):
        ds = split_dataset(data, "train")
        for _ in ds.iter_batches(batch_size=rows, batch_format="numpy"):
            pass  # warm
        t0, n = time.perf_counter(), 0
        for _ in range(repeats):
            for b in ds.iter_batches(batch_size=rows, batch_format="numpy", drop_last=True,
                                     local_shuffle_buffer_size=64, local_shuffle_seed=0):
                n += len(inputs(b)[0])
        return n / (time.perf_counter() - t0)


def training_rate(out: str) -> tuple[float, float]:
    """(training inputs per second, seconds per epoch) of a quality run, epochs 2 on."""
    with open(os.path.join(out, "history.csv")) as fh:
        rows = list(csv.DictReader(fh))[1:]
    inputs = sum(int(r["train_images"]) for r in rows)
    seconds = sum(float(r["train_seconds"]) for r in rows)
    return inputs / seconds, sum(float(r["seconds"]) for r in rows) / len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patients", type=int, default=80)
    p.add_argument("--data", default=os.path.join(REPO, "benchmarks", "data"))
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results",
                                                  "patches.json"))
    args = p.parse_args(argv)
    results = {}
    for name in CONFIGS:
        cfg = load_config(os.path.join(REPO, "jobs", "configs", f"{name}.yaml"))
        data = os.path.join(args.data, f"quality_{args.patients}p_{cfg.data.size}")
        out = os.path.join(args.data, f"quality_out_{name}")
        if not os.path.isfile(os.path.join(out, "history.csv")):
            p.error(f"{out}: no history.csv; run benchmarks/quality.py --config "
                    f"jobs/configs/{name}.yaml first")
        feed = input_rate(data, cfg)
        train, epoch = training_rate(out)
        results[name] = {"size": cfg.data.size, "patch_size": cfg.train.patch_size,
                         "input_per_s": feed, "training_per_s": train,
                         "ratio": feed / train, "epoch_seconds": epoch,
                         "row_bytes": cfg.data.size ** 2 * 3}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"{'config':16} {'input':>10} {'row MB':>7} {'pipeline/s':>11} {'training/s':>11} "
          f"{'ratio':>6} {'s/epoch':>8}")
    for name, r in results.items():
        what = (f"{r['patch_size']}@{r['size']}" if r["patch_size"] else f"{r['size']}")
        print(f"{name:16} {what:>10} {r['row_bytes'] / 1e6:7.2f} {r['input_per_s']:11.1f} "
              f"{r['training_per_s']:11.2f} {r['ratio']:6.1f} {r['epoch_seconds']:8.1f}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
