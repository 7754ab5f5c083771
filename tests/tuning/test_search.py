"""Hyper-parameter search (Ray Tune + Optuna + ASHA over Ray Train runs) on a real local Ray."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, job_env, preprocessed, start_held, stop

from mammoray.core.config import ConfigError, config_from_dict, load_config
from mammoray.tuning.results import trial_rows
from mammoray.tuning.search import check_search_config
from mammoray.tuning.space import baseline_params

pytestmark = pytest.mark.ray
SIZE = 32


@pytest.fixture(scope="module")
def tune_ray():
    """A local Ray with 2 CPUs and the dashboard (Tune needs it), started as jobs start theirs
    (see mammoray.core.ray_session). The resume test runs a job with a local Ray of its own
    beside it: two Ray instances on one machine, which Ray Train's placement-group cleaner got
    wrong."""
    import ray

    from mammoray.core.config import RayConfig
    from mammoray.core.ray_session import init_ray

    init_ray(RayConfig(num_cpus=2), dashboard=True)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory, tune_ray):
    base = tmp_path_factory.mktemp("search")
    preprocessed(base, patients=6, seed=4, size=SIZE)
    return base


def search_tree(base, output, **tune):
    return {"model": {"levels": 3, "base_filters": 4, "dropout": [0.2]},
            "train": {"data": str(base / "ds"), "epochs": 2, "batch_size": 2, "loss": "bce",
                      "learning_rate": 0.003, "cpus_per_worker": 2},
            "tune": {"output": str(output), "num_samples": 3, "max_concurrent": 2,
                     "levels": [2, 3], "learning_rate": [1e-3, 1e-2], "cpus_per_worker": 1,
                     **tune},
            "ray": {"num_cpus": 2}}


def test_bad_ranges_and_paths_stop_before_any_work(data, tmp_path):
    with pytest.raises(ConfigError, match=r"tune\.dropout"):
        config_from_dict({"tune": {"dropout": [0.5, 0.1]}})
    with pytest.raises(ConfigError, match=r"tune\.levels"):
        config_from_dict({"tune": {"levels": [3]}})
    with pytest.raises(ConfigError, match=r"tune\.loss\[0\]"):
        config_from_dict({"tune": {"loss": ["hinge"]}})
    # 6 levels need a side divisible by 32: the 32 px data takes it, 7 levels do not.
    tree = search_tree(data, tmp_path / "x", levels=[2, 7])
    with pytest.raises(ConfigError, match=r"tune\.levels: \[2, 7\] includes 7 levels"):
        check_search_config(config_from_dict(tree), resume=False)
    with pytest.raises(ConfigError, match=r"--resume: no search to resume"):
        from mammoray.tuning.search import run_search

        run_search(config_from_dict(search_tree(data, tmp_path / "y")), resume=True)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ------------------------------------------------------------------ real searches

@pytest.fixture(scope="module")
def searched(data):
    from mammoray.tuning.search import run_search

    out = data / "search"
    tree = search_tree(data, out)
    tree["train"].update(mlflow_tracking_uri=f"file:{data}/mlruns", mlflow_experiment="search")
    cfg = config_from_dict(tree)
    lines: list[str] = []
    summary = run_search(cfg, log=lines.append)
    with open(out / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    return out, cfg, summary, rows, lines


def test_three_trials_with_one_dropout_rate_per_level(searched):
    out, cfg, summary, rows, lines = searched
    assert len(rows) == 3 and len({r["trial_id"] for r in rows}) == 3
    for r in rows:
        dropout = json.loads(r["dropout"])
        assert len(dropout) == int(r["levels"]) and 2 <= int(r["levels"]) <= 3
        assert all(0.1 <= d <= 0.5 for d in dropout)
        assert 1e-3 <= float(r["learning_rate"]) <= 1e-2
        assert r["status"] in ("completed", "stopped") and 1 <= int(r["epochs_run"]) <= 2
        assert 0.0 <= float(r["best_val_dice"]) <= 1.0
    # The config's own values are the first trial (the baseline), run under the same budget.
    baseline = [r for r in rows if r["baseline"] == "True"]
    assert len(baseline) == 1 and json.loads(baseline[0]["dropout"]) == [0.2, 0.2, 0.2]
    assert float(baseline[0]["learning_rate"]) == 0.003
    # Never more at once than allowed (that they overlap is a matter of timing on 2 shared
    # cores: test_the_tuner_runs_two_trials_at_once checks it deterministically).
    assert 1 <= summary["trials_at_once"] <= 2
    assert summary["trials"] == 3 and summary["error"] == 0
    assert os.path.getsize(out / "search.png") > 20000
    assert any("at most 2 at once" in line for line in lines)


def test_each_trial_writes_tensorboard_events_and_an_mlflow_run(data, searched):
    import glob

    import mlflow
    import tensorflow as tf

    out, cfg, summary, rows, _ = searched
    best = {r["trial_id"]: float(r["best_val_score"]) for r in rows}
    for trial_id, score in best.items():
        [folder] = glob.glob(str(out / "ray_results" / "search" / f"*{trial_id}*"))
        scores = [v.simple_value for path in glob.glob(f"{folder}/events.out.tfevents.*")
                  for event in tf.compat.v1.train.summary_iterator(path)
                  for v in event.summary.value if v.tag == "ray/tune/best_val_score"]
        assert scores and max(scores) == pytest.approx(score, abs=1e-6)
    client = mlflow.tracking.MlflowClient(f"file:{data}/mlruns")
    runs = client.search_runs([client.get_experiment_by_name("search").experiment_id])
    assert len(runs) == 3
    assert sorted(r.data.metrics["best_val_score"] for r in runs) == pytest.approx(
        sorted(best.values()), abs=1e-6)


def test_best_config_loads_into_training_and_matches_the_best_trial(searched, tmp_path):
    from mammoray.model.checkpoint import load_checkpoint_model
    from mammoray.training.trainer import run_training

    out, cfg, summary, rows, _ = searched
    best = max(rows, key=lambda r: float(r["best_val_score"]))
    assert summary["best"]["best_val_iou"] == pytest.approx(float(best["best_val_iou"]))
    loaded = load_config(str(out / "best_config.yaml"))
    assert loaded.model.levels == int(summary["best"]["levels"])
    assert loaded.model.dropout == json.loads(summary["best"]["dropout"])
    assert loaded.train.learning_rate == summary["best"]["learning_rate"]
    assert loaded.train.epochs == 2 and loaded.train.cpus_per_worker == 2  # not the search's
    assert loaded.train.data == str(out.parent / "ds") and loaded.train.output is None
    model, ckpt_cfg, size = load_checkpoint_model(str(out / "best"))
    assert size == SIZE and ckpt_cfg.model.dropout == loaded.model.dropout
    # jobs.train takes it as is (one epoch here, to keep the test short).
    trained = run_training(load_config(str(out / "best_config.yaml"), {
        "train.output": str(tmp_path / "retrain"), "train.epochs": 1}), log=lambda _: None)
    assert trained["epochs"] == 1 and (tmp_path / "retrain" / "best" / "model.keras").is_file()


def test_a_second_search_in_the_same_place_needs_resume(searched):
    from mammoray.tuning.search import run_search

    out, cfg, *_ = searched
    with pytest.raises(FileExistsError, match="--resume"):
        run_search(cfg)


def test_the_tuner_runs_two_trials_at_once(tune_ray, tmp_path):
    """The search's tuner with 2 trials at once (OptunaSearch once ran trials one at a time
    despite max_concurrent_trials): each trial waits at a barrier until both have arrived, so
    trials run one after the other would each time out and score 0."""
    from ray import tune

    from mammoray.tuning.search import _grid_results, _make_tuner

    barrier = tmp_path / "barrier"
    barrier.mkdir()

    def trainable(params):
        (barrier / tune.get_context().get_trial_id()).touch()
        deadline = time.time() + 60
        while len(os.listdir(barrier)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        met = float(len(os.listdir(barrier)) >= 2)
        tune.report({"epoch": 1, "time": time.time(), "seconds": 0.1, "val_score": met,
                     "best_val_score": met, "val_iou": met, "val_dice": met})

    cfg = config_from_dict({
        "model": {"levels": 2, "dropout": [0.1]}, "train": {"epochs": 1},
        "tune": {"output": str(tmp_path), "num_samples": 2, "levels": [2, 2],
                 "start_from_config": False}})
    grid = _make_tuner(cfg, tune.with_resources(trainable, {"cpu": 1}), concurrency=2).fit()
    rows = trial_rows(_grid_results(grid), cfg.to_dict(), 1, None)
    assert [r["best_val_score"] for r in rows] == [1.0, 1.0]


def test_asha_stops_trials_worse_than_the_first_at_its_rung(tune_ray, tmp_path):
    """The search's scheduler and searcher on deterministic scores (the training replaced by
    a function of the learning rate, peaking at the baseline's 1e-3): trials below the first
    trial's score at epoch 1 are stopped there."""
    from ray import tune

    from mammoray.tuning.search import _grid_results, _make_tuner

    def trainable(params):
        score = -abs(math.log10(params["learning_rate"]) + 3.0)
        for epoch in range(1, 5):
            tune.report({"epoch": epoch, "time": time.time(), "seconds": 0.1,
                         "val_score": score + 0.01 * epoch,
                         "best_val_score": score + 0.01 * epoch, "val_iou": 0.5 + score,
                         "val_dice": 0.6 + score})

    cfg = config_from_dict({
        "model": {"levels": 2, "dropout": [0.1]}, "train": {"epochs": 4, "learning_rate": 1e-3},
        "tune": {"output": str(tmp_path), "num_samples": 4, "levels": [2, 2],
                 "learning_rate": [1e-5, 1e-1], "grace_period": 1, "reduction_factor": 2}})
    grid = _make_tuner(cfg, trainable, concurrency=1).fit()
    rows = trial_rows(_grid_results(grid), cfg.to_dict(), 4, baseline_params(cfg))
    first = next(r for r in rows if r["baseline"])
    assert first["status"] == "completed" and first["epochs_run"] == 4
    stopped = [r for r in rows if r["status"] == "stopped"]
    assert stopped and all(r["epochs_run"] < 4 for r in stopped)


def _trial_results(exp):
    out = {}
    for name in os.listdir(exp):
        path = os.path.join(exp, name, "result.json")
        if os.path.isfile(path):
            with open(path) as fh:
                out[name] = [json.loads(line) for line in fh if line.strip()]
    return out


@pytest.mark.slow
def test_resume_continues_an_interrupted_search_without_rerunning_finished_trials(data,
                                                                                 tmp_path):
    """Deterministic: a fault holds the second trial at the start of its epoch 2 (its epoch 1
    checkpoint saved, the first trial finished); SIGTERM then (it stops a search as Ctrl+C
    does, within 30 s); --resume finishes the search."""
    out = tmp_path / "search"
    config = tmp_path / "search.yaml"
    # Trials at once left to the cluster: one 2-CPU trial fits the local Ray's 2 CPUs. ASHA
    # stops nothing before epoch 3 (grace period 3), so both trials reach epoch 2.
    tree = search_tree(data, out, max_concurrent=0, cpus_per_worker=2, start_from_config=False,
                       num_samples=2, grace_period=3)
    tree["tune"].pop("output")
    tree["train"]["epochs"] = 3
    config.write_text(yaml.safe_dump(tree))
    args = ["jobs.tune", "--config", str(config), "--output", str(out)]
    hold, epoch1 = tmp_path / "hold", tmp_path / "epoch1"
    env = job_env(
        {"at": "train.epoch", "action": "hold", "dir": str(hold), "epoch": 2, "arrival": 2},
        # Never fires; counts the starts of epoch 1 (a trial run again from scratch would
        # start epoch 1 a third time).
        {"at": "train.epoch", "action": "hold", "dir": str(epoch1), "epoch": 1, "arrival": 99})
    exp = out / "ray_results" / "search"
    log_path = tmp_path / "tune.log"
    proc = start_held(args, env, hold, log_path, timeout=300)
    stopped = stop(proc, signal.SIGTERM, timeout=180)  # as `ray job stop` does; as Ctrl+C
    log = log_path.read_text(errors="replace")
    assert proc.returncode == 2 and stopped <= 30, (stopped, log[-3000:])
    assert "--resume" in log and not (out / "summary.json").exists()
    # The search config is saved with the trials at once it runs with (the restored searcher
    # keeps that number, whatever the cluster holds on resuming).
    stored = json.loads((exp / "search_config.json").read_text())
    assert stored["tune"]["max_concurrent"] == 1 and "at most 1 at once" in log
    mid = _trial_results(exp)
    finished = [t for t, h in mid.items() if h and h[-1].get("done")]
    assert len(finished) == 1 and [h["epoch"] for h in mid[finished[0]]] == [1, 2, 3]
    before = {t: mid[t] for t in finished}

    resumed = subprocess.run([sys.executable, "-m", *args, "--resume"], cwd=REPO, env=env,
                             capture_output=True,
                             text=True, timeout=600, start_new_session=True)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert "at most 1 at once" in resumed.stdout
    with open(out / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and set(finished) <= {r["trial_id"] for r in rows}
    after = _trial_results(exp)
    assert {t: after[t] for t in finished} == before  # the finished trial was not run again
    for r in rows:
        assert r["status"] == "completed" and int(r["epochs_run"]) == 3
        assert 1 <= int(r["best_epoch"]) <= 3
    assert json.loads((out / "summary.json").read_text())["trials"] == 2
    # The interrupted trial went on from its epoch 1 checkpoint: epoch 1 was started twice in
    # all (once per trial), epoch 2 three times (the held start, and once more after resuming).
    assert sorted(os.listdir(epoch1)) == ["arrival-1", "arrival-2"]
    assert sorted(os.listdir(hold)) == ["arrival-1", "arrival-2", "arrival-3", "fired"]
