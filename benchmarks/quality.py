"""Training quality within a time budget (not a test).

    .venv/bin/python benchmarks/quality.py [--config jobs/configs/laptop.yaml] [--patients 80]
        [--budget-minutes 20] [--set k=v ...]

Synthesizes ``4 x patients`` mammograms (800 x 640, folder format), preprocesses them with
the config's data section (laptop.yaml: 256 px; laptop-patches.yaml: 512 px) and trains it with
``jobs.train``'s ``run_training`` on a local Ray with 2 CPUs. Reports the best validation Dice
(mean over validation images with a mass) reached within the budget, counted from the call to
``run_training`` (start-up included) to the end of each epoch, and when the target was first
reached. Then it predicts the validation split with the best checkpoint and breaks the Dice down
by mass area and by visibility (the mass's contrast-to-noise against the tissue around it in the
preprocessed image), which shows which masses the model misses, and does the same on the
training images: where the two differ the model has not generalised. The best checkpoint predicts
as jobs.evaluate does (whole images, or the sliding window of a patch-trained model); mass
areas are counted at the 256-px scale (area x (256 / size)^2) so that the bins mean the same
masses at any resolution. The same patients and split for every config (the split depends on
the patients, the fractions and the seed only).

Prints a table and writes ``benchmarks/results/quality.json``; data is cached in
``benchmarks/data/``.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from _datasets import cached_dataset, parse_sets  # noqa: E402

from mammoray.core.config import config_from_dict, load_config  # noqa: E402

LAPTOP = os.path.join(REPO, "jobs", "configs", "laptop.yaml")


def visibility(image: np.ndarray, mask: np.ndarray) -> float:
    """Contrast-to-noise of a mass in the preprocessed image: (mean inside - mean of a ring
    around it) / standard deviation of the ring. Near 0: the mass is as bright as the tissue
    around it and cannot be seen at this resolution."""
    ring = cv2.dilate(mask, np.ones((9, 9), np.uint8)) & ~mask.astype(bool)
    inside, around = image[mask > 0], image[ring > 0]
    return float((inside.mean() - around.mean()) / max(around.std(), 1e-6))


def breakdown(best: str, data: str, splits: tuple[str, ...] = ("val", "train")) -> dict:
    """Dice of the best checkpoint on each split's images with a mass, by the mass's size and
    measured visibility, and over all of them: {split: {group: {images, mean_dice}}}. The
    checkpoint is loaded and the dataset read once for all the splits."""
    import pyarrow.parquet as pq

    from mammoray.model.inputs import decode_rows, predict_probabilities
    from mammoray.model.metrics import counts_np, overlap_np
    from mammoray.model.window import segmenter_of

    segmenter, _, size = segmenter_of(best)
    table = pq.read_table(glob.glob(os.path.join(data, "data", "*.parquet")),
                          columns=["image", "mask", "split"]).to_pydict()
    result = {}
    for split in splits:
        keep = [i for i, s in enumerate(table["split"]) if s == split]
        x, y = decode_rows([table["image"][i] for i in keep],
                           [table["mask"][i] for i in keep], size)
        prob = np.concatenate([predict_probabilities(segmenter, x[i:i + 4])
                               for i in range(0, len(x), 4)])
        parts = counts_np(y, prob)
        dices, _ = overlap_np(parts["inter"], parts["truth"], parts["pred"])
        groups: dict[str, list[float]] = {}
        for j in range(len(keep)):
            if parts["truth"][j] == 0:
                continue
            area = float(parts["truth"][j]) * (256.0 / size) ** 2  # at the 256-px scale
            cnr = visibility(x[j, ..., 0], y[j, ..., 0].astype(np.uint8))
            area_bin = "< 100 px" if area < 100 else "100-400 px" if area < 400 else ">= 400 px"
            cnr_bin = "< 0.5" if cnr < 0.5 else "0.5-1.5" if cnr < 1.5 else ">= 1.5"
            for key in ("all", f"area {area_bin}", f"visibility {cnr_bin}"):
                groups.setdefault(key, []).append(float(dices[j]))
        result[split] = {k: {"images": len(v), "mean_dice": float(np.mean(v))}
                         for k, v in sorted(groups.items())}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=LAPTOP, help="the config trained (default laptop.yaml)")
    p.add_argument("--patients", type=int, default=80, help="4 images each")
    p.add_argument("--budget-minutes", type=float, default=20.0)
    p.add_argument("--target-dice", type=float, default=0.75)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. train.epochs=40")
    p.add_argument("--report-only", action="store_true",
                   help="do not train: report the last run in <data>/quality_out")
    p.add_argument("--startup-seconds", type=float,
                   help="with --report-only: the run's start-up (from its log); otherwise "
                        "measured")
    p.add_argument("--data", default=os.path.join(REPO, "benchmarks", "data"))
    p.add_argument("--json", help="default benchmarks/results/quality-<config name>.json")
    args = p.parse_args(argv)
    overrides = parse_sets(p, args.set)
    cfg = load_config(args.config, overrides)
    stem = os.path.splitext(os.path.basename(args.config))[0]
    args.json = args.json or os.path.join(REPO, "benchmarks", "results", f"quality-{stem}.json")
    tree = cfg.to_dict()
    _, data = cached_dataset(args.data, "quality", patients=args.patients, seed=78,
                             data=tree["data"])
    out = os.path.join(args.data, f"quality_out_{stem}")
    if not args.report_only:
        shutil.rmtree(out, ignore_errors=True)
        tree["train"].update({"data": data, "output": out, "max_failures": 0})
        tree["ray"] = {"num_cpus": 2}
        from mammoray.training.trainer import run_training

        print(f"training {data} with {stem}.yaml {overrides or ''} ...", flush=True)
        t0 = time.perf_counter()
        run_training(config_from_dict(tree), log=lambda m: print(m, flush=True))
        total = time.perf_counter() - t0
    with open(os.path.join(out, "history.csv")) as fh:
        rows = list(csv.DictReader(fh))
    if args.report_only:
        if args.startup_seconds is None:
            p.error("--report-only needs --startup-seconds (from the run's log)")
        startup = args.startup_seconds
        total = startup + sum(float(r["seconds"]) for r in rows)
    else:
        startup = total - sum(float(r["seconds"]) for r in rows)
    elapsed, curve = startup, []
    for r in rows:
        elapsed += float(r["seconds"])
        curve.append({"epoch": int(r["epoch"]), "minutes": elapsed / 60,
                      "val_dice": float(r["val_dice"]), "val_iou": float(r["val_iou"]),
                      "dice": float(r["dice"]), "val_fp_rate": float(r["val_fp_rate"])})
    budget = [c for c in curve if c["minutes"] <= args.budget_minutes]
    best_in_budget = max(budget, key=lambda c: c["val_dice"]) if budget else None
    reached = next((c for c in curve if c["val_dice"] >= args.target_dice), None)
    best_all = max(curve, key=lambda c: c["val_dice"])
    with open(os.path.join(data, "dataset.json")) as fh:
        splits = json.load(fh)["splits"]
    by_split = breakdown(os.path.join(out, "best"), data)
    result = {"config": stem, "config_overrides": overrides, "size": cfg.data.size,
              "patch_size": cfg.train.patch_size, "infer": cfg.to_dict()["infer"], "patients": args.patients, "splits": splits,
              "startup_seconds": startup, "total_minutes": total / 60, "curve": curve,
              "best_in_budget": best_in_budget, "best_overall": best_all,
              "target_dice": args.target_dice, "budget_minutes": args.budget_minutes,
              "target_reached_at": reached,
              "breakdown": by_split["val"], "train_breakdown": by_split["train"]}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=2)
    mode = (f"{cfg.train.patch_size}-px patches, {cfg.infer.mode} inference"
            if cfg.train.patch_size else "whole images")
    print(f"\nQuality: {stem}.yaml, {args.patients * 4} synthetic images ({splits}), "
          f"{cfg.data.size} px, {mode}, 2 cores")
    print(f"{'epoch':>5} {'minutes':>8} {'val Dice':>9} {'val IoU':>8} {'train Dice':>11}")
    for c in curve:
        print(f"{c['epoch']:5d} {c['minutes']:8.1f} {c['val_dice']:9.3f} {c['val_iou']:8.3f} "
              f"{c['dice']:11.3f}")
    if best_in_budget:
        print(f"best validation Dice within {args.budget_minutes:g} min: "
              f"{best_in_budget['val_dice']:.3f} (epoch {best_in_budget['epoch']}, "
              f"{best_in_budget['minutes']:.1f} min)")
    print(f"target {args.target_dice}: " + (f"reached at epoch {reached['epoch']}, "
                                             f"{reached['minutes']:.1f} min" if reached
                                             else "not reached"))
    print("Dice of the best checkpoint by mass area (pixels at 256-px scale) and visibility "
          "(contrast-to-noise against a ring around the mass), on the validation images and on "
          "the training images (not augmented): the gap between the two is what does not "
          "carry over to new patients")
    print(f"  {'':20} {'val images':>10} {'Dice':>6} {'train images':>13} {'Dice':>6}")
    trained = result["train_breakdown"]
    for k, v in result["breakdown"].items():
        t = trained.get(k, {"images": 0, "mean_dice": float("nan")})
        print(f"  {k:20} {v['images']:10d} {v['mean_dice']:6.3f} {t['images']:13d} "
              f"{t['mean_dice']:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
