"""Preprocessing CPU per image against the seed study's naive loop (not a test).

    .venv/bin/python benchmarks/preprocess_cpu.py [--images 16] [--large 48]
        [--ray-repeats 3] [--variant clahe_at=output]

One run, side by side, on full-field synthetic scanned-film DICOMs (4000 x 3000, 16-bit RLE
Lossless, 1-bit PNG masks; the data of ``benchmarks/preprocess.py``, cached in
``benchmarks/data/``) to 1024 px:

- (a) decode only (read + pydicom/pylibjpeg-rle), one process;
- (n) the seed study's naive pipeline, one process: decode, Gaussian blur + Otsu + largest
  contour, CLAHE on the crop, resize; the mask read and resized alike; no robustness, no
  Parquet (OpenCV's default threads, as a plain script runs it: on 2 cores its CLAHE and
  resize use both, so its wall time is below its CPU time);
- (n1) the same loop with OpenCV held to one thread: the one-CPU baseline, which a 2-CPU
  pipeline's speed-up is measured against;
- (b) the platform's per-image function (``process_record``) on one core (OpenCV 1 thread, as
  a 1-CPU task runs it), per stage, for each variant of :func:`variants`;
- (c) ``jobs.preprocess``'s pipeline on a local Ray with 2 CPUs for each variant (or only
  those named by ``--variant``, the slow part when comparing two versions of one): wall time
  per image in steady state ((large - images) / (t_large - t_images) on a warm Ray) and CPU
  time per image (user + system of every process of the local Ray, over the same
  difference), each against the naive loop (n) and (n1) timed on 4 images right before and
  after that pair (the machine's speed drifts over minutes); ``--ray-repeats`` pairs, medians
  of the ratios; the peak worker memory (USS) of one more large run.

The images are processed alternately (a, n, b) image by image so that the machine's noise hits
all alike; CPU time is ``time.process_time`` (a, n, b) and the Ray processes' CPU times (c).
To measure the code before a change, copy this script into an older checkout (a ``git
worktree``) and run it there with ``PYTHONPATH=<that checkout>`` (Ray's workers then import
that code too; variants the older code lacks are skipped). Prints a table and writes
``benchmarks/results/preprocess_cpu.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def naive_record(rec: dict, size: int) -> None:
    """The seed study's preprocessing of one image (its notebook's steps, 16-bit)."""
    import cv2
    import numpy as np

    from mammoray.core import storage
    from preprocessing.dicom_io import _parse, _stored_pixels

    data = storage.read_bytes(rec["dicom_path"])
    ds = _parse(data)
    pixels = cv2.normalize(_stored_pixels(ds, data), None, 0, 65535, cv2.NORM_MINMAX,
                           dtype=cv2.CV_16U)
    mask = cv2.imdecode(np.frombuffer(storage.read_bytes(json.loads(rec["mask"])["path"]),
                                      np.uint8), cv2.IMREAD_GRAYSCALE)
    small = cv2.convertScaleAbs(pixels, alpha=255.0 / 65535)
    blur = cv2.GaussianBlur(small, (5, 5), 0)
    _, binary = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    image = clahe.apply(np.ascontiguousarray(pixels[y:y + h, x:x + w]))
    cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    cv2.resize(mask[y:y + h, x:x + w], (size, size), interpolation=cv2.INTER_NEAREST)


def decode_record(rec: dict) -> None:
    from mammoray.core import storage
    from preprocessing.dicom_io import _check_image, _parse, _stored_pixels

    data = storage.read_bytes(rec["dicom_path"])
    ds = _parse(data)
    _check_image(ds)
    _stored_pixels(ds, data)


def supports(key: str) -> bool:
    from mammoray.core.config import DataConfig

    return key in DataConfig.__dataclass_fields__


def variants() -> dict[str, dict]:
    out = {"default": {}}
    if supports("clahe_at"):
        out["clahe_at=output"] = {"clahe_at": "output"}
    return out


def cpu_of_ray() -> float:
    """User + system CPU seconds of this process's children (the local Ray: GCS, raylet,
    workers), those alive now and those that ended."""
    import psutil

    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            continue
    return total


def bench_single(recs: list[dict], size: int) -> dict:
    import cv2

    from mammoray.core.config import config_from_dict
    from mammoray.core.timing import StageTimer
    from preprocessing.transform import process_record

    threads = cv2.getNumThreads()
    cfgs = {name: config_from_dict({"data": {"size": size, **over}}).data
            for name, over in variants().items()}
    timers = {name: StageTimer() for name in cfgs}
    cpu: dict[str, list[float]] = {"decode": [], "naive": [], "naive_1t": [],
                                   **{n: [] for n in cfgs}}
    wall: dict[str, list[float]] = {k: [] for k in cpu}
    outputs: dict[str, list] = {n: [] for n in cfgs}

    def timed(name: str, fn):
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        cpu[name].append(time.process_time() - c0)
        wall[name].append(time.perf_counter() - t0)
        return result

    for rec in recs:
        timed("decode", lambda: decode_record(rec))
        cv2.setNumThreads(threads)
        timed("naive", lambda: naive_record(rec, size))
        cv2.setNumThreads(1)
        timed("naive_1t", lambda: naive_record(rec, size))
        for name, cfg in cfgs.items():
            row = timed(name, lambda: process_record(rec, cfg, timer=timers[name]))
            assert row["status"] == "ok", row["reason"]
            outputs[name].append((row["image"], row["mask"]))
    cv2.setNumThreads(threads)
    return {"cpu_ms": {k: 1000 * statistics.median(v) for k, v in cpu.items()},
            "wall_ms": {k: 1000 * statistics.median(v) for k, v in wall.items()},
            "stage_ms": {n: {k: round(1000 * v / len(recs), 1) for k, v in t.seconds.items()}
                         for n, t in timers.items()},
            "difference": differences(outputs)}


def differences(outputs: dict[str, list]) -> dict:
    """Each variant against the default: largest absolute pixel difference (of 65535), the
    mean absolute difference, and the lowest mask IoU over the images."""
    import numpy as np

    out = {}
    base = outputs["default"]
    for name, rows in outputs.items():
        if name == "default":
            continue
        max_abs, mean_abs, iou = 0, [], []
        for (img_a, mask_a), (img_b, mask_b) in zip(base, rows):
            a = np.frombuffer(img_a, np.uint16).astype(np.int32)
            b = np.frombuffer(img_b, np.uint16).astype(np.int32)
            max_abs = max(max_abs, int(np.abs(a - b).max()))
            mean_abs.append(float(np.abs(a - b).mean()))
            ma, mb = np.frombuffer(mask_a, np.uint8) > 0, np.frombuffer(mask_b, np.uint8) > 0
            union = (ma | mb).sum()
            iou.append(float((ma & mb).sum() / union) if union else 1.0)
        out[name] = {"max_abs": max_abs, "mean_abs": statistics.mean(mean_abs),
                     "min_mask_iou": min(iou)}
    return out


def bench_ray(small: str, large: str, n_small: int, n_large: int, warm: str, work: str,
              size: int, naive_recs: list[dict], repeats: int,
              only: list[str] | None = None) -> dict:
    """(c) for each variant, ``repeats`` times: the steady-state difference of the small and
    the large run, each beside a fresh timing of the naive loop on ``naive_recs`` (the
    machine's speed drifts over minutes, so each ratio compares figures of the same minute);
    medians of the ratios. Peak worker memory from one more large run per variant."""
    import cv2
    from preprocess import WorkerMemory

    from mammoray.core.config import RayConfig, config_from_dict
    from mammoray.core.ray_session import ray_session
    from preprocessing.pipeline import run_preprocess

    threads = cv2.getNumThreads()

    def run(root: str, name: str, over: dict) -> tuple[float, float]:
        cfg = config_from_dict({"data": {"input": root, "output": os.path.join(work, name),
                                         "size": size, "overwrite": True, **over}})
        c0, t0 = cpu_of_ray(), time.perf_counter()
        summary = run_preprocess(cfg, log=lambda _: None)
        wall, cpu = time.perf_counter() - t0, cpu_of_ray() - c0
        assert summary["counts"]["rejected"] == 0, summary["rejected_reasons"]
        return wall, cpu

    def naive() -> tuple[float, float, float]:
        """Wall and CPU ms per image of (n), and wall ms of (n1), image by image alternately."""
        wall, cpu, wall_1t = 0.0, 0.0, 0.0
        for rec in naive_recs:
            cv2.setNumThreads(threads)
            c0, t0 = time.process_time(), time.perf_counter()
            naive_record(rec, size)
            wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
            cv2.setNumThreads(1)
            t0 = time.perf_counter()
            naive_record(rec, size)
            wall_1t += time.perf_counter() - t0
        cv2.setNumThreads(threads)
        n = len(naive_recs)
        return 1000 * wall / n, 1000 * cpu / n, 1000 * wall_1t / n

    out = {}
    with ray_session(RayConfig(num_cpus=2)):
        for name, over in variants().items():
            if only and name not in only:
                continue
            run(warm, f"warm_{name}", over)
            reps = []
            for _ in range(repeats):
                nw1, nc1, n1w1 = naive()
                (ws, cs), (wl, cl) = run(small, f"s_{name}", over), run(large, f"l_{name}", over)
                nw2, nc2, n1w2 = naive()
                n = n_large - n_small
                wall, cpu = 1000 * (wl - ws) / n, 1000 * (cl - cs) / n
                naive_wall, naive_cpu = (nw1 + nw2) / 2, (nc1 + nc2) / 2
                naive_1t_wall = (n1w1 + n1w2) / 2
                reps.append({"wall_ms": wall, "cpu_ms": cpu, "naive_wall_ms": naive_wall,
                             "naive_cpu_ms": naive_cpu, "naive_1t_wall_ms": naive_1t_wall,
                             "wall_vs_naive": wall / naive_wall,
                             "wall_vs_naive_1t": wall / naive_1t_wall,
                             "cpu_vs_naive": cpu / naive_cpu})
            with WorkerMemory() as mem:
                run(large, f"m_{name}", over)
            out[name] = {**{k: statistics.median(r[k] for r in reps) for k in reps[0]},
                         "repeats": reps, "wall_large_s": wl,
                         "peak_worker_uss_gib": mem.peak_uss / (1 << 30)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--large", type=int, default=48)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--ray-repeats", type=int, default=3,
                   help="(c) small/large pairs per variant, each beside a naive timing")
    p.add_argument("--variant", action="append", default=[], metavar="NAME",
                   help="(c) only for these variants (default: all; (a), (n), (b) run for all)")
    p.add_argument("--data", default=os.path.join(REPO, "benchmarks", "data"))
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results",
                                                  "preprocess_cpu.json"))
    args = p.parse_args(argv)
    unknown = [v for v in args.variant if v not in variants()]
    if unknown:
        p.error(f"--variant {unknown[0]}: choose from {', '.join(variants())}")
    from mammoray.core.ray_session import WORKER_ENV

    if any(os.environ.get(k) != v for k, v in WORKER_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **WORKER_ENV})
    from preprocess import ensure_data, records, subset

    full = ensure_data(args.data, args.large // 4, 4000, 3000)
    small, large = subset(full, args.images // 4), subset(full, args.large // 4)
    recs = records(small)
    decode_record(recs[0])
    single = bench_single(recs, args.size)
    work = os.path.join(args.data, "out_cpu")
    os.makedirs(work, exist_ok=True)
    ray = bench_ray(small, large, args.images, args.large, subset(full, 2), work, args.size,
                    recs[:4], args.ray_repeats, args.variant)
    result = {"repo": REPO, "images": args.images, "large": args.large, "size": args.size,
              "single": single, "ray_2cpus": ray}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=2)
    cpu, wall = single["cpu_ms"], single["wall_ms"]
    print(f"\nPer image, 4000 x 3000 RLE film -> {args.size} px ({REPO}); medians")
    print(f"{'what':44} {'CPU ms':>7} {'/naive':>7} {'wall ms':>8} {'/naive':>7}")

    def line(label: str, c: float, w: float, extra: str = "") -> None:
        print(f"{label:44} {c:7.0f} {c / cpu['naive']:7.2f} {w:8.0f} {w / wall['naive']:7.2f}"
              + extra)

    line("(a) decode only", cpu["decode"], wall["decode"])
    line("(n) naive loop (seed study)", cpu["naive"], wall["naive"])
    line("(n1) naive loop, OpenCV on 1 thread", cpu["naive_1t"], wall["naive_1t"])
    for name in variants():
        line(f"(b) process_record, 1 core, {name}", cpu[name], wall[name])
        print("    stages (b), ms: " + ", ".join(f"{k} {v}" for k, v in
                                                single["stage_ms"][name].items()))
        if name not in ray:
            continue
        r = ray[name]
        floor = r["wall_ms"] / (wall["decode"] / 2)
        print(f"{'(c) Ray 2 CPUs, ' + name:44} {r['cpu_ms']:7.0f} {r['cpu_vs_naive']:7.2f} "
              f"{r['wall_ms']:8.0f} {r['wall_vs_naive']:7.2f}  {floor:.2f}x the 2-CPU decode "
              f"floor; peak worker USS {r['peak_worker_uss_gib']:.2f} GiB")
        print(f"    (c) wall against (n1), the one-CPU loop: {r['wall_vs_naive_1t']:.2f}")
        print("    (c) per repeat, CPU / wall against (n) / wall against (n1), timed beside it: "
              + ", ".join(f"{x['cpu_vs_naive']:.2f} / {x['wall_vs_naive']:.2f} / "
                          f"{x['wall_vs_naive_1t']:.2f}" for x in r["repeats"]))
    for name, d in single["difference"].items():
        print(f"{name} against default: max |diff| {d['max_abs']} of 65535, mean "
              f"{d['mean_abs']:.1f}, lowest mask IoU {d['min_mask_iou']:.4f}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
