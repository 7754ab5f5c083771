"""Training speed, measured side by side in one run (not a test).

    .venv/bin/python benchmarks/train.py [--patients 24] [--sizes 256 512] [--epochs 4]

Same data and model (jobs/configs/laptop.yaml's U-Net, loss and dtype policy, batch 4 per
worker): steady state images/s of (a) the same training step without Ray (one process, plain
TensorFlow, a tf.data pipeline from arrays in memory, TensorFlow on both cores), (b) Ray Train
with 1 worker (2 CPUs), (c) Ray Train with 2 workers (1 CPU each, MultiWorkerMirrored-
Strategy); the input pipeline alone (Parquet -> Ray Data -> decoded batches, no model) in
images/s; start-up of (b) and (c) (from the call to the first epoch's start). Steady state
skips the first epoch (tracing, warm-up) and uses the epochs' training-loop time
(``train_seconds``).

Prints a table and writes ``benchmarks/results/train.json``. Data is cached in
``benchmarks/data/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from _datasets import cached_dataset  # noqa: E402

from mammoray.core.config import config_from_dict, load_config  # noqa: E402

LAPTOP = os.path.join(REPO, "jobs", "configs", "laptop.yaml")


def arrays(data: str, split: str, size: int):
    import glob

    import pyarrow.parquet as pq

    from mammoray.model.inputs import decode_rows

    table = pq.read_table(glob.glob(os.path.join(data, "data", "*.parquet")),
                          columns=["image", "mask", "split"]).to_pydict()
    keep = [i for i, s in enumerate(table["split"]) if s == split]
    return decode_rows([table["image"][i] for i in keep], [table["mask"][i] for i in keep],
                       size)


def bench_plain(data: str, size: int, epochs: int, cfg) -> dict:
    """(a): one process, TensorFlow on both cores, tf.data from memory, the same step."""
    import keras
    import tensorflow as tf

    from mammoray.model.losses import LOSSES
    from mammoray.model.runtime import precision_policy
    from mammoray.model.unet import build_unet

    x, y = arrays(data, "train", size)
    keras.mixed_precision.set_global_policy(precision_policy(cfg.train))  # as (b) and (c)
    keras.utils.set_random_seed(0)
    model = build_unet(cfg.model, size)
    optimizer = keras.optimizers.Adam(cfg.train.learning_rate)
    loss_fn = LOSSES[cfg.train.loss]
    ds = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64, seed=0)
          .batch(cfg.train.batch_size, drop_remainder=True).prefetch(2))

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    times, images = [], []
    for _ in range(epochs):
        t0, n = time.perf_counter(), 0
        for xb, yb in ds:
            step(xb, yb)
            n += int(xb.shape[0])
        times.append(time.perf_counter() - t0)
        images.append(n)
    return {"epoch_seconds": times, "images_per_epoch": images[0],
            "steady_images_per_s": sum(images[1:]) / sum(times[1:])}


def bench_ray(data: str, out: str, epochs: int, workers: int, cfg_dict: dict) -> dict:
    """(b)/(c): jobs.train's run_training with ``workers`` workers on a fresh local Ray."""
    from mammoray.training.trainer import run_training

    tree = json.loads(json.dumps(cfg_dict))
    tree["train"].update({"data": data, "output": out, "epochs": epochs,
                          "num_workers": workers, "cpus_per_worker": 2.0 / workers,
                          "max_failures": 0})
    tree["ray"] = {"num_cpus": 2}
    cfg = config_from_dict(tree)
    t0 = time.perf_counter()
    run_training(cfg, log=lambda _: None)
    total = time.perf_counter() - t0
    with open(os.path.join(out, "history.csv")) as fh:
        rows = list(csv.DictReader(fh))
    epoch_s = [float(r["seconds"]) for r in rows]
    train_s = [float(r["train_seconds"]) for r in rows]
    images = [int(r["train_images"]) for r in rows]
    return {"workers": workers, "total_seconds": total, "epoch_seconds": epoch_s,
            "startup_seconds": total - sum(epoch_s), "images_per_epoch": images[0],
            "steady_images_per_s": sum(images[1:]) / sum(train_s[1:]),
            "final_val_dice": float(rows[-1]["val_dice"])}


def bench_input(data: str, size: int, batch: int) -> dict:
    """The input pipeline alone: Ray Data shard iteration + decoding, no model."""
    from mammoray.core.config import RayConfig
    from mammoray.core.dataset import split_dataset
    from mammoray.core.ray_session import ray_session
    from mammoray.model.inputs import decode_rows

    with ray_session(RayConfig(num_cpus=2)):
        ds = split_dataset(data, "train")
        for _ in ds.iter_batches(batch_size=batch, batch_format="numpy"):
            pass  # warm
        t0, n = time.perf_counter(), 0
        for _ in range(3):
            for b in ds.iter_batches(batch_size=batch, batch_format="numpy", drop_last=True):
                x, _ = decode_rows(b["image"], b["mask"], size)
                n += x.shape[0]
        seconds = time.perf_counter() - t0
    return {"images_per_s": n / seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patients", type=int, default=24, help="4 images each")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--data", default=os.path.join(REPO, "benchmarks", "data"))
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "train.json"))
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch is warm-up)")
    cfg = load_config(LAPTOP)
    cfg_dict = cfg.to_dict()
    results = {"model": cfg_dict["model"], "loss": cfg.train.loss,
               "batch_per_worker": cfg.train.batch_size, "sizes": {}}
    for size in args.sizes:
        print(f"size {size}: data ...", flush=True)
        _, data = cached_dataset(args.data, "train", patients=args.patients, seed=77,
                                 data={"size": size, "val_fraction": 0.1,
                                       "test_fraction": 0.1})
        print(f"size {size}: (a) plain TensorFlow ...", flush=True)
        plain = bench_plain(data, size, args.epochs, cfg)
        runs = {}
        for workers in (1, 2):
            print(f"size {size}: Ray Train, {workers} worker(s) ...", flush=True)
            out = os.path.join(args.data, f"train_out_{size}_{workers}w")
            shutil.rmtree(out, ignore_errors=True)
            runs[workers] = bench_ray(data, out, args.epochs, workers, cfg_dict)
        print(f"size {size}: input pipeline ...", flush=True)
        pipe = bench_input(data, size, cfg.train.batch_size)
        results["sizes"][str(size)] = {"a_plain": plain, "b_ray_1": runs[1], "c_ray_2": runs[2],
                                       "input": pipe}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"\nTraining benchmark: laptop U-Net ({cfg.model.levels} levels, "
          f"{cfg.model.base_filters} filters), batch {cfg.train.batch_size} per worker, "
          f"{os.cpu_count()} cores, {args.epochs} epochs (first = warm-up)")
    print(f"{'size':>5} {'what':34} {'images/s':>9} {'start-up s':>11}")
    for size, r in results["sizes"].items():
        a, b, c = r["a_plain"], r["b_ray_1"], r["c_ray_2"]
        print(f"{size:>5} {'(a) plain TensorFlow':34} {a['steady_images_per_s']:9.2f}")
        print(f"{size:>5} {'(b) Ray Train, 1 worker':34} {b['steady_images_per_s']:9.2f} "
              f"{b['startup_seconds']:11.1f}")
        print(f"{size:>5} {'(c) Ray Train, 2 workers':34} {c['steady_images_per_s']:9.2f} "
              f"{c['startup_seconds']:11.1f}")
        print(f"{size:>5} {'input pipeline alone':34} {r['input']['images_per_s']:9.2f}")
        ratio = b["steady_images_per_s"] / a["steady_images_per_s"]
        feed = r["input"]["images_per_s"] / max(b["steady_images_per_s"],
                                                c["steady_images_per_s"])
        print(f"{'':>5} (b)/(a) = {ratio:.2f} (target >= 0.9): {'PASS' if ratio >= 0.9 else 'FAIL'};"
              f" input / training = {feed:.1f}x (target >= 3): {'PASS' if feed >= 3 else 'FAIL'}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
