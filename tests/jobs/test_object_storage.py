"""Every job with every path on ``s3://``, against a real S3-compatible server on 127.0.0.1
(moto's standalone server; the standard AWS variables point the jobs at it): preprocess ->
train -> evaluate -> predict, a search whose trials checkpoint there, and a job killed while
publishing that leaves nothing that reads as complete."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import REPO, job_env, start_held, stop

from mammoray.core import storage
from mammoray.core.config import ConfigError, RayConfig, config_from_dict
from mammoray.synthetic.folder import FolderOptions, write_folder_dataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MODEL = {"levels": 2, "base_filters": 4}
TRAIN = {"epochs": 1, "batch_size": 2, "loss": "bce", "learning_rate": 0.003,
         "cpus_per_worker": 2}


@pytest.fixture(scope="module")
def bucket(s3_env, tmp_path_factory):
    """A local Ray started after the AWS variables are set (its workers inherit them), and the
    synthetic DICOMs uploaded to the bucket: the jobs see no local path at all."""
    import ray

    from mammoray.core.ray_session import init_ray

    raw = tmp_path_factory.mktemp("s3raw")
    write_folder_dataset(FolderOptions(output=str(raw), patients=4, seed=8, height=256,
                                       width=208, defects=True))
    base = f"{s3_env}/jobs"
    storage.copy_local_tree(str(raw), f"{base}/raw")
    init_ray(RayConfig(num_cpus=2), dashboard=True)  # as jobs start theirs (Tune needs it)
    try:
        yield base
    finally:
        ray.shutdown()


def test_preprocess_train_evaluate_predict_on_object_storage(bucket):
    from mammoray.evaluation.job import EvaluateOptions, run_evaluation
    from mammoray.inference.job import PredictOptions, run_prediction
    from mammoray.training.trainer import run_training
    from preprocessing.pipeline import run_preprocess

    data, train = f"{bucket}/ds", f"{bucket}/train"
    summary = run_preprocess(config_from_dict({"data": {
        "input": f"{bucket}/raw", "output": data, "size": 32}}), log=lambda _: None)
    assert summary["counts"]["written"] == 16 and summary["counts"]["rejected"] == 7
    assert storage.is_complete(data) and not storage.stale_partials(data)
    assert len([f for f in storage.list_files(f"{data}/data") if f.endswith(".parquet")]) >= 1

    result = run_training(config_from_dict({"model": MODEL, "train": dict(
        TRAIN, data=data, output=train)}), log=lambda _: None)
    assert result["epochs"] == 1
    assert storage.is_complete(f"{train}/best")
    for name in ("history.csv", "curves.png", "summary.json", "best/model.keras",
                 "best/config.json"):
        assert storage.exists(f"{train}/{name}"), name
    with io.StringIO(storage.read_bytes(f"{train}/history.csv").decode()) as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1]
    # Ray Train kept its checkpoints on the object store too (train.storage_path default).
    kept = [f for f in storage.list_files(f"{train}/ray_results")
            if f.endswith("/optimizer.npz")]
    assert kept

    metrics = run_evaluation(EvaluateOptions(
        checkpoint=f"{train}/best", data=data, split="train", bootstrap=20), RayConfig(),
        log=lambda _: None)
    evaluation = f"{train}/evaluation-train"  # beside the checkpoint, as on a local disk
    assert storage.is_complete(evaluation)
    saved = json.loads(storage.read_bytes(f"{evaluation}/metrics.json"))
    assert saved["figures"]["images"] == metrics["figures"]["images"] > 0
    assert storage.exists(f"{evaluation}/report.html")

    predicted = run_prediction(PredictOptions(
        checkpoint=f"{train}/best", input=f"{bucket}/raw/patient_0000",
        output=f"{bucket}/pred"), RayConfig(), log=lambda _: None)
    assert predicted["inputs"] == 4 and predicted["predicted"] == 4
    outputs = storage.list_files(f"{bucket}/pred")
    for view in ("L_CC", "L_MLO", "R_CC", "R_MLO"):
        for suffix in ("_mask.png", "_prob.png", "_overlay.png", "_seg.dcm", ".json"):
            assert f"{bucket}/pred/{view}{suffix}" in outputs
    mask = cv2.imdecode(np.frombuffer(storage.read_bytes(f"{bucket}/pred/L_CC_mask.png"),
                                      np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (256, 208)


def test_a_search_keeps_its_state_and_trials_on_object_storage(bucket):
    from mammoray.tuning.search import run_search

    data, search = f"{bucket}/ds", f"{bucket}/search"
    summary = run_search(config_from_dict({
        "model": MODEL, "train": dict(TRAIN, data=data),
        "tune": {"output": search, "num_samples": 1, "levels": [2, 2],
                 "learning_rate": [1e-3, 1e-2]}, "ray": {"num_cpus": 2}}),
        log=lambda _: None)
    assert summary["trials"] == 1 and summary["error"] == 0
    for name in ("trials.csv", "search.png", "best_config.yaml", "summary.json"):
        assert storage.exists(f"{search}/{name}"), name
    assert storage.is_complete(f"{search}/best")
    runs = storage.list_files(f"{search}/ray_results/search/train_runs")
    assert len({f.split("/train_runs/")[1].split("/")[0] for f in runs
                if f.endswith("/optimizer.npz")}) == 1  # the trial checkpointed there


def test_a_job_killed_while_publishing_leaves_nothing_that_reads_as_complete(bucket, tmp_path):
    """The preprocessing job is held (a fault) after moving its files into place and before
    writing the marker, then SIGKILLed: the dataset is there but incomplete, a reader refuses
    it, and a new job refuses to take its place without --overwrite."""
    from mammoray.core.dataset import read_dataset_json

    final = f"{bucket}/killed"
    hold = tmp_path / "hold"
    args = ["jobs.preprocess", "--input", f"{bucket}/raw/patient_0001", "--output", final,
            "--size", "32", "--num-cpus", "2"]
    proc = start_held(args, job_env({"at": "storage.publish", "action": "hold",
                                     "dir": str(hold), "final": "killed"}),
                      hold, tmp_path / "log", timeout=180)
    stop(proc, signal.SIGKILL)
    assert storage.exists(f"{final}/dataset.json")  # every file moved into place ...
    assert not storage.is_complete(final)  # ... but no marker
    with pytest.raises(ConfigError, match=r"an incomplete dataset \(no _COMPLETE marker"):
        read_dataset_json(final)
    again = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=job_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert f"error: --output {final}: already exists (incomplete: its job failed or was " \
           "killed while publishing it); choose another folder or pass --overwrite" in \
           again.stderr
