"""Preprocessing speed and memory, measured side by side in one run (not a test).

    .venv/bin/python benchmarks/preprocess.py [--images 48] [--large 192] [--size 1024]

On full-field synthetic scanned-film DICOMs (16-bit, RLE Lossless, default 4000 x 3000):
(a) decode only (read + pydicom/pylibjpeg-rle decode), (b) a single-process loop over the
pipeline's own pure functions (``process_record``) with per-stage milliseconds, (c) the Ray Data
pipeline (``run_preprocess``) with 1 and 2 CPUs at ``--images`` and ``--large`` images, (d)
augmentation: the pure function on one core, and the pipeline at 2 CPUs with 4 copies per
image against the same run without copies (copies per second per CPU). Steady
state for (c) is the differential rate (large - images) / (t_large - t_images), which removes
Ray Data's fixed start cost; each Ray instance first does a warm-up run (worker start-up,
imports) so that both timed runs are warm; Ray's start-up and the first run are reported
separately. (b) runs twice: with OpenCV's default thread pool (it uses both cores in CLAHE and
resize) and with 1 thread (one core, as a Ray task that reserved 1 CPU). Peak memory is the
largest USS (and RSS) of any Ray worker process, sampled every 50 ms in separate, untimed runs
(the sampling itself costs a quarter of a core).

The benchmark re-executes itself with the preprocessing workers' allocator settings
(``mammoray.core.ray_session.WORKER_ENV``) so that (a), (b) and (c) run alike. (e): the
per-image cost of the robustness steps, on one core: the whole crop (the seed study), only the
breast (the default), and the side judged from the image (``--only-robustness`` runs (a) and
(e) alone).

Prints a table and writes ``benchmarks/results/preprocess.json``. The synthetic data is cached
in ``benchmarks/data/`` (generated on first use; about 10 MB per image).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time

import cv2
import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mammoray.core import storage  # noqa: E402
from mammoray.core.config import config_from_dict  # noqa: E402
from mammoray.core.timing import StageTimer  # noqa: E402
from mammoray.synthetic.folder import FolderOptions, write_folder_dataset  # noqa: E402
from preprocessing.dicom_io import _check_image, _parse, _stored_pixels  # noqa: E402
from preprocessing.transform import process_record  # noqa: E402


def ensure_data(root: str, patients: int, height: int, width: int) -> str:
    path = os.path.join(root, f"film_rle_{height}x{width}_{patients}p")
    if not os.path.exists(os.path.join(path, "truth.json")):
        print(f"generating {patients * 4} synthetic full-field DICOMs in {path} ...", flush=True)
        t0 = time.time()
        write_folder_dataset(FolderOptions(output=path, patients=patients, seed=1234,
                                           height=height, width=width, film=True,
                                           transfer_syntax="rle", monochrome1_fraction=0.0,
                                           workers=2))
        print(f"  generated in {time.time() - t0:.0f} s", flush=True)
    return path


def subset(full: str, patients: int) -> str:
    """A dataset root holding the first ``patients`` patient folders (symlinks)."""
    full = os.path.abspath(full)
    path = f"{full}_first{patients}p"
    os.makedirs(path, exist_ok=True)
    for i in range(patients):
        name = f"patient_{i:04d}"
        link = os.path.join(path, name)
        if not os.path.lexists(link):
            os.symlink(os.path.join(full, name), link)
    return path


def records(root: str) -> list[dict]:
    out = []
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root, followlinks=True)
                   for f in fs)
    for path in paths:
        if path.endswith(".dcm"):
            out.append({"image_id": os.path.relpath(path, root), "patient_key": "p",
                        "source": "folder", "split": "train",
                        "relpath": os.path.relpath(path, root), "dicom_path": path,
                        "mask": json.dumps({"kind": "png", "path": path[:-4] + "_mask.png"}),
                        "reject": "", "laterality_hint": "", "view_hint": ""})
    return out


def bench_decode(recs: list[dict]) -> list[float]:
    times = []
    for rec in recs:
        t0 = time.perf_counter()
        data = storage.read_bytes(rec["dicom_path"])
        ds = _parse(data)
        _check_image(ds)
        _stored_pixels(ds, data)
        times.append(time.perf_counter() - t0)
    return times


def bench_loop(recs: list[dict], cfg) -> tuple[list[float], dict[str, float]]:
    timer = StageTimer()
    times = []
    for rec in recs:
        t0 = time.perf_counter()
        row = process_record(rec, cfg, timer=timer)
        times.append(time.perf_counter() - t0)
        assert row["status"] == "ok", row["reason"]
        assert row["has_mask_annotation"], "the loop must read the masks, as the pipeline does"
    per_image_ms = {k: 1000 * v / len(recs) for k, v in timer.seconds.items()}
    return times, per_image_ms


class WorkerMemory:
    """Peak memory of Ray worker processes (process title ``ray::...``), sampled in a thread.

    ``peak_rss``: resident set, which also counts the object store's shared pages a worker
    has mapped (they grow with the number of objects it touched); ``peak_uss``: the worker's
    own (unique) memory, what it would give back if it exited.
    """

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_rss, self.peak_uss = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in psutil.process_iter(["cmdline"]):
                cmd = proc.info.get("cmdline") or []
                if not (cmd and cmd[0].startswith("ray::")):
                    continue
                try:
                    full = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.peak_rss = max(self.peak_rss, full.rss)
                self.peak_uss = max(self.peak_uss, full.uss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


ROBUSTNESS_VARIANTS = {
    # The seed study's behaviour: the whole crop, the side from the header.
    "whole crop": {"breast_only": False},
    # The default: only the breast (labels, markers and film edges set to background).
    "breast only (default)": {},
    # The default with the side judged from the image (scanned film without a header).
    "breast only, side from the image": {"orientation": "image"},
}


def bench_robustness(recs: list[dict], size: int) -> dict[str, dict]:
    """(e) Per image, one core (OpenCV 1 thread, as a 1-CPU task): the loop of (b) with each of
    ROBUSTNESS_VARIANTS, alternately image by image so the machine's noise hits all alike."""
    cv2.setNumThreads(1)
    cfgs = {name: config_from_dict({"data": {"size": size, **over}}).data
            for name, over in ROBUSTNESS_VARIANTS.items()}
    timers = {name: StageTimer() for name in cfgs}
    times: dict[str, list[float]] = {name: [] for name in cfgs}
    for rec in recs:
        for name, cfg in cfgs.items():
            t0 = time.perf_counter()
            row = process_record(rec, cfg, timer=timers[name])
            times[name].append(time.perf_counter() - t0)
            assert row["status"] == "ok", row["reason"]
    return {name: {"median_ms": 1000 * statistics.median(times[name]),
                   "stage_ms_per_image": {k: 1000 * v / len(recs)
                                          for k, v in timers[name].seconds.items()}}
            for name in cfgs}


def print_robustness(rob: dict[str, dict]) -> None:
    base = rob["whole crop"]["median_ms"]
    print("(e) robustness per image, 1 core: " + "; ".join(
        f"{name} {r['median_ms']:.0f} ms ({r['median_ms'] / base:.2f}x)"
        for name, r in rob.items()))
    for name, r in rob.items():
        print(f"    {name}: " + ", ".join(f"{k} {v:.1f}"
                                          for k, v in r["stage_ms_per_image"].items()))


def bench_augment(size: int, copies: int = 24) -> float:
    """Copies per second of the pure augmentation function on one core (OpenCV 1 thread)."""
    import numpy as np

    from mammoray.core.config import AugmentConfig
    from preprocessing.augment import augment, build_augmenter

    rng = np.random.default_rng(0)
    image = rng.integers(0, 65535, (size, size)).astype(np.uint16)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 3: size // 2, size // 3: size // 2] = 1
    aug = build_augmenter(AugmentConfig())
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    augment(aug, image, mask, seed=0, image_id="warm", k=1)
    t0 = time.perf_counter()
    for k in range(copies):
        augment(aug, image, mask, seed=0, image_id="x", k=k + 1)
    cv2.setNumThreads(threads)
    return copies / (time.perf_counter() - t0)


def bench_ray_augment(root: str, warmup: str, out: str, size: int, copies: int) -> dict:
    """2 CPUs, all images in training: the same run without and with ``copies`` per image."""
    from mammoray.core.config import RayConfig
    from mammoray.core.ray_session import ray_session
    from preprocessing.pipeline import run_preprocess

    def run(name: str, n_copies: int) -> tuple[float, dict]:
        cfg = config_from_dict({"data": {
            "output": os.path.join(out, name), "size": size, "overwrite": True,
            "val_fraction": 0.0, "test_fraction": 0.0,
            "sources": [{"format": "folder", "input": root if name != "warm" else warmup,
                         "augment": {"copies": n_copies}}]}})
        t0 = time.perf_counter()
        summary = run_preprocess(cfg, log=lambda _: None)
        return time.perf_counter() - t0, summary

    with ray_session(RayConfig(num_cpus=2)):
        run("warm", copies)
        plain_s, _ = run("aug0", 0)
        aug_s, summary = run("aug", copies)
    made = summary["counts"]["augmented_rows"]
    return {"cpus": 2, "images": summary["counts"]["written"], "copies_per_image": copies,
            "copies_made": made, "seconds_without": plain_s, "seconds_with": aug_s,
            "copies_per_s_per_cpu": made / max(1e-9, aug_s - plain_s) / 2}


def bench_ray(runs: list[tuple[str, int]], warmup: str, out: str, size: int,
              cpus: int) -> list[dict]:
    """One Ray instance with ``cpus`` CPUs: a warm-up run (worker start-up, imports), then
    each (root, images) run timed with its peak worker memory."""
    from mammoray.core.config import RayConfig
    from mammoray.core.ray_session import ray_session
    from preprocessing.pipeline import run_preprocess

    def run(root: str, name: str, sample: bool) -> tuple[dict, float, WorkerMemory | None]:
        cfg = config_from_dict({"data": {"input": root, "output": os.path.join(out, name),
                                         "size": size, "overwrite": True}})
        mem = WorkerMemory() if sample else None
        with mem or contextlib.nullcontext():
            t1 = time.perf_counter()
            summary = run_preprocess(cfg, log=lambda _: None)
            elapsed = time.perf_counter() - t1
        assert summary["counts"]["rejected"] == 0, summary["rejected_reasons"]
        return summary, elapsed, mem

    t0 = time.perf_counter()
    results = []
    with ray_session(RayConfig(num_cpus=cpus)):
        startup = time.perf_counter() - t0
        _, warm_s, _ = run(warmup, f"c{cpus}_warmup", False)
        # Timed runs are not sampled: reading /proc/*/smaps every 50 ms costs a quarter of a
        # core, so memory is measured in separate runs of the same data.
        for root, n in runs:
            summary, elapsed, _ = run(root, f"c{cpus}_{n}", False)
            _, _, mem = run(root, f"c{cpus}_{n}_mem", True)
            results.append({"cpus": cpus, "images": summary["counts"]["written"],
                            "ray_startup_s": startup, "first_run_s": warm_s,
                            "pipeline_s": elapsed, "peak_worker_rss_bytes": mem.peak_rss,
                            "peak_worker_uss_bytes": mem.peak_uss})
    return results


def main(argv: list[str] | None = None) -> int:
    from mammoray.core.ray_session import WORKER_ENV

    if any(os.environ.get(k) != v for k, v in WORKER_ENV.items()):
        # (a) and (b) run in this process: give it the allocator settings the pipeline's
        # workers run with, so that all three are measured alike.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **WORKER_ENV})
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--large", type=int, default=192)
    p.add_argument("--height", type=int, default=4000)
    p.add_argument("--width", type=int, default=3000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--data", default=os.path.join(REPO, "benchmarks", "data"))
    p.add_argument("--only-robustness", action="store_true",
                   help="run (a) and (e) only (a few minutes), into <json stem>.robustness.json")
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results",
                                                  "preprocess.json"))
    args = p.parse_args(argv)
    if args.images % 4 or args.large % 4 or args.large <= args.images:
        p.error("--images and --large must be multiples of 4 (4 views a patient), large > images")
    full = ensure_data(args.data, args.large // 4, args.height, args.width)
    small = subset(full, args.images // 4)
    recs = records(small)
    assert len(recs) == args.images
    bench_decode(recs[:2])  # warm the page cache and imports for both (a) and (b)
    for rec in recs:
        storage.read_bytes(rec["dicom_path"])
    cfg = config_from_dict({"data": {"size": args.size}}).data
    if args.only_robustness:
        decode = bench_decode(recs)
        rob = bench_robustness(recs, args.size)
        out = {"a_decode": {"median_ms": 1000 * statistics.median(decode)}, "e_robustness": rob}
        path = os.path.splitext(args.json)[0] + ".robustness.json"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(out, fh, indent=2)
        print(f"(a) decode only: {out['a_decode']['median_ms']:.0f} ms per image")
        print_robustness(rob)
        print(f"wrote {path}")
        return 0

    decode = bench_decode(recs)
    threads = cv2.getNumThreads()
    loop, stages = bench_loop(recs, cfg)
    cv2.setNumThreads(1)
    loop1, stages1 = bench_loop(recs, cfg)
    cv2.setNumThreads(threads)
    work = os.path.join(args.data, "out")
    os.makedirs(work, exist_ok=True)
    warmup = subset(full, 2)
    ray_runs = []
    for cpus in (1, 2):
        print(f"ray data: {cpus} CPU(s): warm-up, {args.images} and {args.large} images ...",
              flush=True)
        ray_runs += bench_ray([(small, args.images), (full, args.large)], warmup, work,
                              args.size, cpus)

    print("robustness ...", flush=True)
    rob = bench_robustness(recs, args.size)
    print("augmentation ...", flush=True)
    aug_pure = bench_augment(args.size)
    aug_ray = bench_ray_augment(small, warmup, work, args.size, copies=4)

    def run_of(cpus: int, n: int) -> dict:
        return next(r for r in ray_runs if r["cpus"] == cpus and r["images"] == n)

    decode_ms, loop_ms = 1000 * statistics.median(decode), 1000 * statistics.median(loop)
    loop1_ms = 1000 * statistics.median(loop1)
    loop_rate, loop1_rate = len(loop) / sum(loop), len(loop1) / sum(loop1)
    steady = {}
    for cpus in (1, 2):
        a, b = run_of(cpus, args.images), run_of(cpus, args.large)
        steady[cpus] = (args.large - args.images) / (b["pipeline_s"] - a["pipeline_s"])
    gib = 1 << 30
    mem_small = run_of(2, args.images)["peak_worker_uss_bytes"]
    mem_large = run_of(2, args.large)["peak_worker_uss_bytes"]
    results = {
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / gib, 1)},
        "input": {"height": args.height, "width": args.width, "dtype": "uint16",
                  "transfer_syntax": "RLE Lossless", "film": True, "output_size": args.size},
        "a_decode": {"median_ms": decode_ms, "images_per_s": len(decode) / sum(decode)},
        "b_loop": {"opencv_threads": threads, "median_ms": loop_ms, "images_per_s": loop_rate,
                   "stage_ms_per_image": stages},
        "b_loop_1_thread": {"opencv_threads": 1, "median_ms": loop1_ms,
                            "images_per_s": loop1_rate, "stage_ms_per_image": stages1},
        "c_ray": ray_runs,
        "c_steady_images_per_s": steady,
        "d_augment": {"pure_copies_per_s_1_thread": aug_pure, "ray": aug_ray},
        "e_robustness": rob,
        "ratios": {"ray2_steady_over_loop": steady[2] / loop_rate,
                   "ray1_steady_over_loop": steady[1] / loop_rate,
                   "ray2_steady_over_loop_1_thread": steady[2] / loop1_rate,
                   "ray1_steady_over_loop_1_thread": steady[1] / loop1_rate,
                   "loop_over_decode_per_image": loop_ms / decode_ms,
                   "peak_mem_large_over_small": mem_large / mem_small},
    }
    targets = {
        "(c) 2 CPUs >= 1.7x (b), steady state": results["ratios"]["ray2_steady_over_loop"] >= 1.7,
        "(b) per image <= 2x (a)": results["ratios"]["loop_over_decode_per_image"] <= 2.0,
        "peak worker memory (USS) <= 1.5 GiB": max(mem_small, mem_large) <= 1.5 * gib,
        f"peak worker memory (USS) {args.images} vs {args.large} within 20%":
            abs(results["ratios"]["peak_mem_large_over_small"] - 1) <= 0.2,
    }
    results["targets"] = targets
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(results, fh, indent=2)

    print(f"\nPreprocessing benchmark: {args.height} x {args.width} uint16 RLE film DICOMs "
          f"-> {args.size} x {args.size}, {os.cpu_count()} cores")
    print(f"{'what':44} {'images/s':>9} {'ms/image':>9}")
    print(f"{'(a) decode only (median)':44} {1000 / decode_ms:9.2f} {decode_ms:9.0f}")
    print(f"{f'(b) single-process loop, OpenCV {threads} threads':44} {1000 / loop_ms:9.2f} "
          f"{loop_ms:9.0f}")
    print(f"{'(b) single-process loop, OpenCV 1 thread':44} {1000 / loop1_ms:9.2f} "
          f"{loop1_ms:9.0f}")
    for cpus in (1, 2):
        print(f"{f'(c) Ray Data, {cpus} CPU(s), steady state':44} {steady[cpus]:9.2f} "
              f"{1000 / steady[cpus]:9.0f}")
    for r in ray_runs:
        label = f"    {r['cpus']} CPU(s), {r['images']} images end to end"
        print(f"{label:44} {r['images'] / r['pipeline_s']:9.2f} "
              f"{'':>9} ({r['pipeline_s']:.1f} s; ray start {r['ray_startup_s']:.1f} s, "
              f"first run {r['first_run_s']:.1f} s, "
              f"peak worker USS {r['peak_worker_uss_bytes'] / gib:.2f} GiB, "
              f"RSS {r['peak_worker_rss_bytes'] / gib:.2f} GiB)")
    print(f"{'(d) augmentation alone, 1 thread (copies/s)':44} {aug_pure:9.2f} "
          f"{1000 / aug_pure:9.0f}")
    print(f"(d) Ray Data, 2 CPUs, {aug_ray['images']} images x {aug_ray['copies_per_image']} "
          f"copies: {aug_ray['seconds_with']:.1f} s vs {aug_ray['seconds_without']:.1f} s "
          f"without = {aug_ray['copies_per_s_per_cpu']:.1f} copies/s per CPU")
    print_robustness(rob)
    print("stages of (b), mean ms per image: " + ", ".join(
        f"{k} {v:.0f}" for k, v in stages.items()))
    print("stages of (b) at 1 thread:        " + ", ".join(
        f"{k} {v:.0f}" for k, v in stages1.items()))
    print(f"(c) 2 CPUs over (b): {results['ratios']['ray2_steady_over_loop']:.2f}x; over (b) at "
          f"1 thread: {results['ratios']['ray2_steady_over_loop_1_thread']:.2f}x")
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
