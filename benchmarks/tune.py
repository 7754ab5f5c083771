"""A hyper-parameter search with the laptop config (not a test).

    .venv/bin/python benchmarks/tune.py [--patients 80] [--set k=v ...]

Runs ``jobs.tune``'s ``run_search`` with ``jobs/configs/laptop.yaml`` (its ``tune`` section:
6 trials of 12 epochs, 2 at once, ASHA from epoch 3) on the quality benchmark's cached dataset
(``4 x patients`` synthetic mammograms at 256 px) on a local Ray with 2 CPUs. The first trial is
the laptop config's own values, so the best trial is compared with the default under the same
budget, in the same run. Reports how many trials ran at once, how many ASHA stopped early, the
search's wall time and the best validation Dice against the default's.

Prints a table and writes ``benchmarks/results/tune.json``; the search's outputs (trials.csv,
search.png, best_config.yaml) stay in ``benchmarks/data/tune_out``.
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


from _datasets import cached_dataset, parse_sets  # noqa: E402

from mammoray.core.config import config_from_dict, load_config  # noqa: E402

LAPTOP = os.path.join(REPO, "jobs", "configs", "laptop.yaml")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patients", type=int, default=80, help="4 images each")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a laptop.yaml key, e.g. tune.num_samples=4")
    p.add_argument("--data", default=os.path.join(REPO, "benchmarks", "data"))
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "tune.json"))
    args = p.parse_args(argv)
    overrides = parse_sets(p, args.set)
    tree = load_config(LAPTOP, overrides).to_dict()
    _, data = cached_dataset(args.data, "quality", patients=args.patients, seed=78,
                             data=tree["data"])
    out = os.path.join(args.data, "tune_out")
    shutil.rmtree(out, ignore_errors=True)
    tree["train"].update({"data": data, "max_failures": 0})
    tree["tune"]["output"] = out
    tree["ray"] = {"num_cpus": 2}
    from mammoray.tuning.search import run_search

    t0 = time.perf_counter()
    summary = run_search(config_from_dict(tree), log=lambda m: print(m, flush=True))
    wall = time.perf_counter() - t0
    with open(os.path.join(out, "trials.csv")) as fh:
        rows = list(csv.DictReader(fh))
    result = {"patients": args.patients, "overrides": overrides, "wall_seconds": round(wall, 1),
              "summary": summary, "trials": rows}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=2)

    t = tree["tune"]
    print(f"\nSearch: {t['num_samples']} trials of up to {t['epochs']} epochs, at most "
          f"{t['max_concurrent']} at once, {args.patients * 4} synthetic images at 256 px, "
          "2 cores")
    print(f"{'trial':>9} {'status':>10} {'levels':>6} {'mean dropout':>12} {'lr':>9} "
          f"{'epochs':>6} {'best val Dice':>13} {'val IoU':>8} {'minutes':>7}")
    for r in rows:
        dropout = json.loads(r["dropout"])
        mark = " (default)" if r["baseline"] == "True" else ""
        print(f"{r['trial_id']:>9} {r['status']:>10} {r['levels']:>6} "
              f"{sum(dropout) / len(dropout):12.3f} {float(r['learning_rate']):9.2e} "
              f"{r['epochs_run']:>6} {float(r['best_val_dice']):13.3f} "
              f"{float(r['best_val_iou']):8.3f} {float(r['minutes']):7.1f}{mark}")
    print(f"trials at once (most): {summary['trials_at_once']}; stopped early by ASHA: "
          f"{summary['stopped']} of {summary['trials']}; failed: {summary['error']}")
    print(f"wall time of the search: {wall / 60:.1f} min")
    best, base = summary["best"], summary["baseline"]
    print(f"best validation Dice {best['best_val_dice']:.3f} (trial {best['trial_id']})"
          + (f" against the laptop default's {base['best_val_dice']:.3f} ({base['status']}, "
             f"{base['epochs_run']} epochs)" if base else ""))
    print(f"-> {args.json}; {out}/search.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
