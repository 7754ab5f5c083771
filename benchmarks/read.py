"""Reading a preprocessed dataset's split: Ray Data's V1 Parquet reader against V2 (not a test).

    .venv/bin/python benchmarks/read.py [--patients 80] [--repeats 5] [--two-node]

What ``jobs.train``, ``jobs.tune`` and ``jobs.evaluate`` do before any work: read the
dataset's rows (image, mask, split columns), keep one split and materialize it
(``mammoray.core.dataset.split_dataset``). Timed with Ray 2.60's default V2 reader (a ListFiles task,
then ReadFiles) and with the V1 reader the project uses (``mammoray.core.dataset.read_rows``),
alternately, ``--repeats`` times each after one untimed warm-up read of each, on the quality
benchmark's cached dataset (``4 x patients`` synthetic mammograms at 256 px):

- on a local Ray with 2 CPUs (as the jobs start one on a laptop);
- with ``--two-node``, also from a job submitted with ``ray job submit`` to a two-node cluster
  on this machine (the tests' ``TwoNodeCluster``: head + one node of 2 CPUs each, both on
  127.0.0.1), in the same run.

Prints a table of medians and writes ``benchmarks/results/read.json``.
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

from _datasets import cached_dataset  # noqa: E402

READERS = ("v2", "v1")


def read_split(data: str, reader: str) -> int:
    """The training split read with ``reader`` and materialized, as the jobs read it; returns
    the row count."""
    from mammoray.core.dataset import split_dataset

    return split_dataset(data, "train", v2=reader == "v2").count()


def measure(data: str, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per read of each reader on the Ray this process is connected to."""
    rows = {r: read_split(data, r) for r in READERS}  # warm-up: workers, imports
    if rows["v1"] != rows["v2"]:
        raise RuntimeError(f"the readers disagree: {rows}")
    times: dict[str, list[float]] = {r: [] for r in READERS}
    for _ in range(repeats):
        for reader in READERS:
            t0 = time.perf_counter()
            read_split(data, reader)
            times[reader].append(time.perf_counter() - t0)
    return {r: {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3),
                "max_s": round(max(t), 3), "rows": rows[r]} for r, t in times.items()}


def on_two_node_cluster(data: str, repeats: int, inner_json: str) -> dict[str, dict[str, float]]:
    """``measure`` inside a job submitted to a fresh two-node cluster (stopped afterwards)."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from ray_cluster import TwoNodeCluster, running, submit, wait_job

    with running(TwoNodeCluster()) as cluster:
        job = submit(cluster, "python", "benchmarks/read.py", "--dataset", data, "--repeats",
                     str(repeats), "--connect", "--json", inner_json)
        status, logs = wait_job(cluster, job, timeout=1200)
        if status != "SUCCEEDED":
            raise RuntimeError(f"the benchmark job ended {status}:\n{logs[-3000:]}")
    with open(inner_json) as fh:
        return json.load(fh)["local"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patients", type=int, default=80, help="4 images each")
    p.add_argument("--dataset", help="a preprocessed dataset (default: the cached one)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--two-node", action="store_true",
                   help="also measure from a job on a two-node cluster on this machine")
    p.add_argument("--connect", action="store_true",
                   help="use the cluster in RAY_ADDRESS (how --two-node runs its job)")
    p.add_argument("--data", default=os.path.join(REPO, "benchmarks", "data"))
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "read.json"))
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats: at least 1")
    data = args.dataset
    if data is None:
        from mammoray.core.config import load_config

        tree = load_config(os.path.join(REPO, "jobs", "configs", "laptop.yaml")).to_dict()
        _, data = cached_dataset(args.data, "quality", patients=args.patients, seed=78,
                                 data=tree["data"])
    data = os.path.abspath(data)
    if not os.path.isfile(os.path.join(data, "dataset.json")):
        p.error(f"--dataset {data}: no dataset.json (a jobs.preprocess output is expected)")

    import ray

    if args.connect:
        ray.init(log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = {"dataset": data, "repeats": args.repeats,
                  "local": measure(data, args.repeats)}
    finally:
        ray.shutdown()
    if args.two_node:
        inner = os.path.splitext(args.json)[0] + ".two_node.json"
        result["two_node_job"] = on_two_node_cluster(data, args.repeats, inner)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=2)

    if args.connect:
        return 0
    print(f"\nRead one split (train, {result['local']['v1']['rows']} rows) and materialize; "
          f"median of {args.repeats} (min-max), seconds")
    print(f"{'where':<28} {'V2 (default)':>20} {'V1 (used)':>20} {'V2 / V1':>8}")
    for where, key in (("local Ray, 2 CPUs", "local"), ("job on two-node cluster",
                                                        "two_node_job")):
        if key in result:
            m = result[key]
            cells = [f"{m[r]['median_s']:.2f} ({m[r]['min_s']:.2f}-{m[r]['max_s']:.2f})"
                     for r in READERS]
            print(f"{where:<28} {cells[0]:>20} {cells[1]:>20} "
                  f"{m['v2']['median_s'] / m['v1']['median_s']:8.1f}")
    print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
