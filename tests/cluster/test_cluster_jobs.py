"""A real two-node Ray cluster on this machine, and real `ray job submit`.

`ray start --head` (loopback only: node IP 127.0.0.1, dashboard on 127.0.0.1) and a second node
with `ray start --address`, each in a process session of its own (see ``ray_cluster``); the
jobs are submitted with the `ray job submit` CLI, which tails each job's logs until it ends,
as a user sees them. The head requires a token, as a user's would.
"""

from __future__ import annotations

import json

import pytest
from ray_cluster import TwoNodeCluster, run_job, running, worker_nodes

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster():
    with running(TwoNodeCluster()) as c:
        yield c


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from mammoray.synthetic.folder import FolderOptions, write_folder_dataset

    base = tmp_path_factory.mktemp("cluster")
    write_folder_dataset(FolderOptions(output=str(base / "raw"), patients=4, seed=8,
                                       height=256, width=208, defects=True))
    return base


def test_preprocess_then_two_node_training_by_job_submit(cluster, raw):
    base = raw
    status, logs = run_job(cluster, "python", "-m", "jobs.preprocess", "--input",
                           str(base / "raw"), "--output", str(base / "ds"), "--size", "64")
    assert status == "SUCCEEDED", logs[-3000:]
    with open(base / "ds" / "dataset.json") as fh:
        info = json.load(fh)
    assert info["counts"]["written"] == 16 and info["counts"]["rejected"] >= 5
    assert info["counts"]["input"] == info["counts"]["written"] + info["counts"]["rejected"]

    config = base / "two_nodes.yaml"
    config.write_text("model: {levels: 3, base_filters: 8}\n"
                      "train: {epochs: 2, batch_size: 2, num_workers: 2, cpus_per_worker: 2,"
                      " learning_rate: 0.003, loss: bce, max_failures: 0}\n")
    status, logs = run_job(cluster, "python", "-m", "jobs.train", "--config", str(config),
                           "--data", str(base / "ds"), "--output", str(base / "train"))
    assert status == "SUCCEEDED", logs[-3000:]
    # Two workers of 2 CPUs on two 2-CPU nodes: one per node, so the collective crosses nodes.
    assert len(worker_nodes(logs)) == 2, logs[-3000:]
    # The progress callback's line per epoch reaches `ray job logs`.
    assert "epoch 1/2: loss " in logs and "epoch 2/2: loss " in logs, logs[-3000:]
    assert (base / "train" / "best" / "model.keras").is_file()
    with open(base / "train" / "history.csv") as fh:
        assert len(fh.read().strip().splitlines()) == 3  # header + 2 epochs

    # Evaluation and prediction as jobs: one actor per CPU over both nodes, each loading the
    # checkpoint from the object store.
    status, logs = run_job(cluster, "python", "-m", "jobs.evaluate", "--checkpoint",
                           str(base / "train" / "best"), "--data", str(base / "ds"), "--split",
                           "train", "--actors", "4", "--bootstrap", "50", "--output",
                           str(base / "eval"))
    assert status == "SUCCEEDED", logs[-3000:]
    with open(base / "eval" / "metrics.json") as fh:
        assert json.load(fh)["protocol"]["split"] == "train"
    status, logs = run_job(cluster, "python", "-m", "jobs.predict", "--checkpoint",
                           str(base / "train" / "best"), "--input",
                           str(base / "raw" / "patient_0000"), "--output", str(base / "pred"))
    assert status == "SUCCEEDED", logs[-3000:]
    assert len(list((base / "pred").glob("*_seg.dcm"))) == 4


def test_search_by_job_submit_runs_one_trial_per_node(cluster, raw):
    """jobs.tune submitted as a job: 2 trials allowed at once, each a Ray Train run whose 2-CPU
    worker takes a whole node; the workers are placed one per node.

    The summary's trials-at-once (training windows that overlap) is not asserted here: these
    two "nodes" share this machine's 2 cores, and the second node's worker starts 10-20 s after
    the first (a fresh process importing TensorFlow under load), about as long as these trials
    train. Training windows measured at once are asserted by the local 3-trial search."""
    config = raw / "search.yaml"
    config.write_text("model: {levels: 2, base_filters: 4}\n"
                      "train: {epochs: 2, batch_size: 2, loss: bce, cpus_per_worker: 2}\n"
                      "tune: {num_samples: 2, max_concurrent: 2, levels: [2, 3]}\n")
    status, logs = run_job(cluster, "python", "-m", "jobs.tune", "--config", str(config),
                           "--data", str(raw / "ds"), "--output", str(raw / "search"))
    assert status == "SUCCEEDED", logs[-3000:]
    assert len(worker_nodes(logs, "train: worker rank 0 of 1")) == 2, logs[-3000:]
    summary = json.loads((raw / "search" / "summary.json").read_text())
    assert summary["trials"] == 2 and summary["completed"] == 2 and summary["error"] == 0
    assert "at most 2 at once, each 1 worker(s) with 2 CPU(s)" in logs
    assert (raw / "search" / "best_config.yaml").is_file()


def test_job_with_bad_config_fails_and_names_the_key(cluster, raw):
    config = raw / "bad.yaml"
    config.write_text("train: {epochs: 0}\n")
    status, logs = run_job(cluster, "python", "-m", "jobs.train", "--config", str(config),
                           "--data", str(raw / "ds"), "--output", str(raw / "never"),
                           timeout=180)
    assert status == "FAILED"
    assert "train.epochs" in logs
    assert not (raw / "never").exists()
