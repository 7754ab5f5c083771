"""What TensorFlow in the Train controller costs: Ray's TensorflowConfig against
mammoray.training.backend's, side by side in one run (not a test).

    .venv/bin/python benchmarks/train_startup.py [--repeats 3]

Each repeat runs jobs.train's ``run_training`` (its own local Ray of 2 CPUs, one 2-CPU worker,
a 3-level U-Net on 64-px images, 2 epochs) once with each backend config, alternating; for
each run: the wall time of the run, and the peak memory (RSS, sampled every 0.2 s) of the
Train controller's process and of all the run's processes that are not its worker. The
worker imports TensorFlow either way. Ray's config is put in the place of ours for the "ray"
runs; the benchmark's own process imports TensorFlow before timing anything, so its import is
not counted in either.

Prints a table (medians) and writes ``benchmarks/results/train_startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from _datasets import cached_dataset  # noqa: E402

from mammoray.core.config import config_from_dict  # noqa: E402


class PeakMemory:
    """Peak RSS (MiB) of the processes whose command line names ``TrainController`` (the
    controller actor) and of Ray's other non-driver processes except the training worker,
    sampled every 0.2 s in a thread."""

    def __init__(self) -> None:
        self.controller = 0.0
        self.others = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = os.getpid()
        while not self._stop.is_set():
            controller = others = 0.0
            for proc in psutil.process_iter(["pid", "cmdline", "memory_info"]):
                try:
                    cmd = " ".join(proc.info["cmdline"] or [])
                    rss = proc.info["memory_info"].rss / 2**20
                except (psutil.Error, TypeError, AttributeError):
                    continue
                if proc.info["pid"] == me or not cmd.startswith("ray::"):
                    continue
                if "TrainController" in cmd:
                    controller += rss
                elif "RayTrainWorker" not in cmd:
                    others += rss
            self.controller = max(self.controller, controller)
            self.others = max(self.others, others)
            self._stop.wait(0.2)


def run_once(variant: str, data: str, out: str) -> dict:
    import mammoray.training.backend as backend
    from mammoray.training.trainer import run_training

    ours = backend.TensorflowBackendConfig
    if variant == "ray":
        from ray.train.tensorflow import TensorflowConfig

        backend.TensorflowBackendConfig = TensorflowConfig
    shutil.rmtree(out, ignore_errors=True)
    tree = {"model": {"levels": 3, "base_filters": 8},
            "train": {"data": data, "output": out, "epochs": 2, "batch_size": 4,
                      "loss": "bce", "cpus_per_worker": 2, "max_failures": 0,
                      "tensorboard": False},
            "ray": {"num_cpus": 2}}
    try:
        with PeakMemory() as peak:
            t0 = time.perf_counter()
            run_training(config_from_dict(tree), log=lambda _: None)
            seconds = time.perf_counter() - t0
    finally:
        backend.TensorflowBackendConfig = ours
    return {"variant": variant, "seconds": seconds, "controller_mib": peak.controller,
            "other_ray_processes_mib": peak.others}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", default=os.path.join(REPO, "benchmarks", "data"))
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results",
                                                  "train_startup.json"))
    args = p.parse_args(argv)
    import tensorflow  # noqa: F401  (the driver's import, out of every timing)

    _, data = cached_dataset(args.data, "startup", patients=8, seed=5,
                             data={"size": 64, "val_fraction": 0.25, "test_fraction": 0.0})
    runs = []
    for i in range(args.repeats):
        for variant in ("ray", "mammoray") if i % 2 == 0 else ("mammoray", "ray"):
            print(f"repeat {i + 1}/{args.repeats}: {variant} ...", flush=True)
            runs.append(run_once(variant, data, os.path.join(args.data, "startup_out")))
    table = {}
    for variant in ("ray", "mammoray"):
        mine = [r for r in runs if r["variant"] == variant]
        table[variant] = {k: statistics.median(r[k] for r in mine)
                          for k in ("seconds", "controller_mib", "other_ray_processes_mib")}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"runs": runs, "medians": table, "cpus": os.cpu_count()}, fh, indent=2)
    print(f"\nA 2-epoch training run, medians of {args.repeats} (alternating):")
    print(f"{'backend config':34} {'run s':>7} {'controller MiB':>15} {'other Ray MiB':>14}")
    names = {"ray": "Ray's TensorflowConfig", "mammoray": "mammoray TensorflowBackendConfig"}
    for variant, row in table.items():
        print(f"{names[variant]:34} {row['seconds']:7.1f} {row['controller_mib']:15.0f} "
              f"{row['other_ray_processes_mib']:14.0f}")
    ray_row, ours = table["ray"], table["mammoray"]
    print(f"ratio (ours / Ray's): run {ours['seconds'] / ray_row['seconds']:.2f}, controller "
          f"memory {ours['controller_mib'] / ray_row['controller_mib']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
