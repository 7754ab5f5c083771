"""A search on an autoscaling cluster: Ray's fake multi-node autoscaler on this machine.

The head (1 CPU, as the job's driver needs for reading the data) starts with no worker nodes;
the worker node type has 2 CPUs and at most 2 nodes. Each trial's training worker asks for 2
CPUs, which only a worker node has, so the 2 concurrent trials of the search are pending until
the autoscaler adds nodes, and the search finishes. (The idle nodes go away afterwards, but only
once Ray Train's resource request of the last trial expires, 180 s after it: measured once, in
the README, rather than waited for in every test run.)

The jobs run as drivers connected with --address, not through `ray job submit`: the fake worker
nodes share the head's session folder on this one machine, and a worker node that the
autoscaler ends removes the runtime-environment files there, including the submitted job's
working directory (on a real cluster each node has its own disk). `ray job submit` itself is
tested on a real two-node cluster in test_cluster_jobs.py.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from ray_cluster import REPO, FakeAutoscalingCluster, running

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(dataset):
    with running(FakeAutoscalingCluster(head_cpus=1, worker_cpus=2, max_workers=2)) as c:
        yield c


def run_job(cluster: FakeAutoscalingCluster, *args: str, timeout: float = 600):
    """`python -m jobs.<job> ARGS --address <head>` with the cluster's token."""
    return subprocess.run([sys.executable, "-m", *args, "--address", cluster.gcs_address],
                          cwd=REPO, env=cluster.env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Preprocessed before the cluster starts (on a local Ray of the job's own): preprocessing
    on the fake cluster would itself make the autoscaler add nodes."""
    base = tmp_path_factory.mktemp("autoscale")
    from mammoray.synthetic.folder import FolderOptions, write_folder_dataset

    write_folder_dataset(FolderOptions(output=str(base / "raw"), patients=4, seed=5,
                                       height=256, width=208))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-m", "jobs.preprocess", "--input", str(base / "raw"),
                          "--output", str(base / "ds"), "--size", "32", "--num-cpus", "2"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return base


def test_pending_trials_make_the_autoscaler_add_nodes_and_the_search_finishes(cluster, dataset):
    assert cluster.active_nodes() == 1  # the head only
    config = dataset / "tune.yaml"
    config.write_text(
        "model: {levels: 2, base_filters: 4}\n"
        "train: {epochs: 2, batch_size: 2, loss: bce, cpus_per_worker: 2}\n"
        # grace_period = epochs: ASHA may not stop a trial early. Otherwise which trial it
        # stops depends on which reports first, and the trials below would not all complete.
        "tune: {num_samples: 2, max_concurrent: 2, levels: [2, 3], start_from_config: false,"
        " grace_period: 2}\n")
    nodes: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            n = cluster.active_nodes()
            if n is not None:
                nodes.append(n)
            time.sleep(2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out = run_job(cluster, "jobs.tune", "--config", str(config), "--data",
                      str(dataset / "ds"), "--output", str(dataset / "search"))
    finally:
        stop.set()
        watcher.join()
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    # No node held a trial's 2-CPU worker: the job said what it waited for, and went on.
    assert ("waiting for the autoscaler: each search trial asks 1 worker x 2 CPUs = 2 CPUs; "
            "this Ray has 1 CPU (waiting up to 600 s: ray.resource_wait_s)") in out.stdout
    assert "the cluster holds it now: this Ray has 3 CPUs on 2 nodes" in out.stdout
    assert max(nodes) == 3, nodes  # head + the worker type's maximum of 2
    with open(dataset / "search" / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
    summary = json.loads((dataset / "search" / "summary.json").read_text())
    assert summary["trials"] == 2 and summary["error"] == 0
