"""Requests that cannot fit stop at once, with the numbers and the fix, exit code 2: on the
job's own local Ray (no autoscaler). The waiting side, on an autoscaling cluster, is in
tests/cluster/test_tune_autoscaling.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import REPO, preprocessed

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("fit")
    preprocessed(base, patients=3, seed=2, size=32)
    return base


def test_a_training_larger_than_the_local_ray_stops_in_seconds(data):
    """The issue's case: laptop.yaml (2 CPUs per worker) with 2 workers on 2 CPUs."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "jobs.train", "--config",
                           os.path.join(REPO, "jobs", "configs", "laptop.yaml"), "--data",
                           str(data / "ds"), "--output", str(data / "never"), "--num-workers",
                           "2", "--num-cpus", "2"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    seconds = time.time() - t0
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: training asks 2 workers x 2 CPUs = 4 CPUs; this Ray has 2 CPUs (use "
        "--num-workers 1 or --cpus-per-worker 1)")
    assert seconds < 60  # Ray's start-up included; nothing waited
    assert not (data / "never" / "best").exists()


def test_more_prediction_actors_than_cpus_stop_before_any_actor_starts(data, fixed_checkpoint):
    from mammoray.core.config import RayConfig
    from mammoray.core.resources import ResourceError
    from mammoray.inference.job import PredictOptions, run_prediction

    _, ckpt = fixed_checkpoint
    with pytest.raises(ResourceError, match=r"^prediction asks 3 actors x 1 CPU = 3 CPUs; "
                                            r"this Ray has 2 CPUs \(use --actors 2\)$"):
        run_prediction(PredictOptions(checkpoint=str(ckpt), input=str(data / "raw"),
                                      output=str(data / "pred"), actors=3),
                       RayConfig(num_cpus=2))
    assert not (data / "pred").exists()


def test_a_search_whose_trial_cannot_fit_stops_before_any_trial(data):
    from mammoray.core.config import config_from_dict
    from mammoray.core.resources import ResourceError
    from mammoray.tuning.search import run_search

    cfg = config_from_dict({
        "model": {"levels": 2, "base_filters": 4},
        "train": {"data": str(data / "ds"), "epochs": 1, "num_workers": 2},
        "tune": {"output": str(data / "search"), "num_samples": 2, "cpus_per_worker": 2,
                 "levels": [2, 3]},
        "ray": {"num_cpus": 2}})
    t0 = time.time()
    with pytest.raises(ResourceError, match=r"^each search trial asks 2 workers x 2 CPUs = 4 "
                                            r"CPUs; this Ray has 2 CPUs \(use "
                                            r"train.num_workers: 1 or --cpus-per-worker 1\)$"):
        run_search(cfg, log=lambda line: None)
    assert time.time() - t0 < 60
    assert not (data / "search" / "trials.csv").exists()
    assert not (data / "search" / "best").exists()
