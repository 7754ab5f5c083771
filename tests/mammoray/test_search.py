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

import optuna
import pytest
from conftest import preprocessed
import yaml

from mammoray.config import ConfigError, config_from_dict, load_config
from mammoray.search import (SearchSpace, auto_concurrency, baseline_params,
                             check_search_config, max_overlap, trial_config, trial_rows)

SIZE = 32
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tune_ray():
    """A local Ray with 2 CPUs and the dashboard (Tune needs it), started as jobs start theirs
    (see mammoray.ray_env). The resume test runs a job with a local Ray of its own beside it:
    two Ray instances on one machine, which Ray Train's placement-group cleaner got wrong."""
    import ray

    from mammoray.config import RayConfig
    from mammoray.ray_env import init_ray

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
            "train": {"data": str(base / "ds"), "epochs": 3, "batch_size": 2, "loss": "bce",
                      "learning_rate": 0.003, "cpus_per_worker": 2},
            "tune": {"output": str(output), "num_samples": 3, "max_concurrent": 2,
                     "levels": [2, 3], "learning_rate": [1e-3, 1e-2], "cpus_per_worker": 1,
                     **tune},
            "ray": {"num_cpus": 2}}


# ------------------------------------------------------------------ pure parts, exact values

def test_space_samples_one_dropout_rate_per_level():
    cfg = config_from_dict({"tune": {"levels": [2, 6], "dropout": [0.1, 0.5],
                                     "learning_rate": [1e-5, 1e-3], "loss": ["iou", "dice"]}})
    space = SearchSpace(cfg.tune)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    depths = set()
    for _ in range(40):
        trial = study.ask()
        space(trial)
        p = trial.params
        depths.add(p["levels"])
        assert sorted(k for k in p if k.startswith("dropout_")) == sorted(
            f"dropout_{i}" for i in range(p["levels"]))
        assert all(0.1 <= p[f"dropout_{i}"] <= 0.5 for i in range(p["levels"]))
        assert 1e-5 <= p["learning_rate"] <= 1e-3 and p["loss"] in ("iou", "dice")
        study.tell(trial, 0.0)
    assert depths == {2, 3, 4, 5, 6}


def test_trial_config_puts_rounded_values_in_and_keeps_resources_out_of_best():
    base = config_from_dict({"model": {"levels": 5, "dropout": [0.0]},
                             "train": {"epochs": 40, "cpus_per_worker": 4},
                             "tune": {"epochs": 6, "cpus_per_worker": 1,
                                      "batch_size": [2, 8]}}).to_dict()
    params = {"levels": 3, "dropout_0": 0.123456, "dropout_1": 0.25, "dropout_2": 0.49999,
              "learning_rate": 0.000123456, "batch_size": 8}
    trial = trial_config(base, params, for_search=True)
    assert trial.model.levels == 3 and trial.model.dropout == [0.1235, 0.25, 0.5]
    assert trial.train.learning_rate == 0.0001235 and trial.train.batch_size == 8
    assert trial.train.epochs == 6 and trial.train.cpus_per_worker == 1
    best = trial_config(base, params, for_search=False)
    assert best.model == trial.model and best.train.epochs == 6
    assert best.train.cpus_per_worker == 4


def test_baseline_is_the_configs_own_point_only_inside_the_ranges():
    cfg = config_from_dict({"model": {"levels": 5, "dropout": [0.1]},
                            "train": {"learning_rate": 1e-3}})
    assert baseline_params(cfg) == {"levels": 5, "learning_rate": 1e-3, **{
        f"dropout_{i}": 0.1 for i in range(5)}}
    assert baseline_params(config_from_dict({"model": {"levels": 4}})) is None  # 4 < 5
    outside = config_from_dict({"model": {"levels": 5, "dropout": [0.0]}})
    assert baseline_params(outside) is None


def test_trials_at_once_from_their_time_windows():
    assert max_overlap([(0, 10), (5, 15), (12, 20)]) == 2
    assert max_overlap([(0, 10), (1, 9), (2, 8)]) == 3
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1  # one ends as the next starts
    assert max_overlap([(math.nan, math.nan), (0, 4)]) == 1


def test_concurrency_from_the_clusters_resources():
    def cfg(**train):
        return config_from_dict({"train": train})

    assert auto_concurrency(cfg(cpus_per_worker=1), {"CPU": 2.0}) == 2
    assert auto_concurrency(cfg(cpus_per_worker=2, num_workers=2), {"CPU": 10.0}) == 2
    assert auto_concurrency(cfg(cpus_per_worker=4), {"CPU": 2.0}) == 1  # at least one
    assert auto_concurrency(cfg(cpus_per_worker=8, use_gpu=True),
                            {"CPU": 64.0, "GPU": 3.0}) == 3


def test_trial_rows_status_and_best_epoch():
    base = config_from_dict({"model": {"levels": 2}}).to_dict()
    params = {"levels": 2, "dropout_0": 0.1, "dropout_1": 0.2, "learning_rate": 1e-3}

    def epoch(e, score, t):
        return {"epoch": e, "val_score": score, "val_iou": score, "val_dice": score + 0.1,
                "time": t, "seconds": 5.0}

    results = [
        {"trial_id": "a", "params": params, "error": None,
         "history": [epoch(1, 0.2, 105), epoch(2, 0.5, 110), epoch(3, 0.5, 115),
                     epoch(4, 0.4, 120)]},
        {"trial_id": "b", "params": params, "error": None, "history": [epoch(1, 0.1, 106)]},
        {"trial_id": "c", "params": params, "error": "RuntimeError('x')\nOOM", "history": []},
    ]
    rows = trial_rows(results, base, max_epochs=4, baseline=params)
    assert [r["status"] for r in rows] == ["completed", "stopped", "error"]
    assert rows[0]["best_epoch"] == 3 and rows[0]["best_val_iou"] == 0.5  # ties: later
    assert rows[0]["best_val_dice"] == 0.6 and rows[0]["epochs_run"] == 4
    assert rows[0]["minutes"] == round(20 / 60, 2)  # from 100 s (105 - 5) to 120 s
    assert rows[1]["epochs_run"] == 1 and rows[2]["error"] == "OOM"
    assert json.loads(rows[0]["dropout"]) == [0.1, 0.2] and rows[0]["baseline"]


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
        from mammoray.search import run_search

        run_search(config_from_dict(search_tree(data, tmp_path / "y")), resume=True)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ------------------------------------------------------------------ real searches

@pytest.fixture(scope="module")
def searched(data):
    from mammoray.search import run_search

    out = data / "search"
    cfg = config_from_dict(search_tree(data, out))
    lines: list[str] = []
    summary = run_search(cfg, log=lines.append)
    with open(out / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    return out, cfg, summary, rows, lines


def test_three_trials_run_two_at_once_with_one_dropout_per_level(searched):
    out, cfg, summary, rows, lines = searched
    assert len(rows) == 3 and len({r["trial_id"] for r in rows}) == 3
    for r in rows:
        dropout = json.loads(r["dropout"])
        assert len(dropout) == int(r["levels"]) and 2 <= int(r["levels"]) <= 3
        assert all(0.1 <= d <= 0.5 for d in dropout)
        assert 1e-3 <= float(r["learning_rate"]) <= 1e-2
        assert r["status"] in ("completed", "stopped") and 1 <= int(r["epochs_run"]) <= 3
        assert 0.0 <= float(r["best_val_dice"]) <= 1.0
    # The config's own values are the first trial (the baseline), run under the same budget.
    baseline = [r for r in rows if r["baseline"] == "True"]
    assert len(baseline) == 1 and json.loads(baseline[0]["dropout"]) == [0.2, 0.2, 0.2]
    assert float(baseline[0]["learning_rate"]) == 0.003
    # Two trials of one 1-CPU worker each on 2 CPUs: they really ran at the same time.
    assert summary["trials_at_once"] == 2
    assert summary["trials"] == 3 and summary["error"] == 0
    assert os.path.getsize(out / "search.png") > 20000
    assert any("at most 2 at once" in line for line in lines)


def test_best_config_loads_into_training_and_matches_the_best_trial(searched, tmp_path):
    from mammoray.train import load_checkpoint_model, run_training

    out, cfg, summary, rows, _ = searched
    best = max(rows, key=lambda r: float(r["best_val_score"]))
    assert summary["best"]["best_val_iou"] == pytest.approx(float(best["best_val_iou"]))
    loaded = load_config(str(out / "best_config.yaml"))
    assert loaded.model.levels == int(summary["best"]["levels"])
    assert loaded.model.dropout == json.loads(summary["best"]["dropout"])
    assert loaded.train.learning_rate == summary["best"]["learning_rate"]
    assert loaded.train.epochs == 3 and loaded.train.cpus_per_worker == 2  # not the search's
    assert loaded.train.data == str(out.parent / "ds") and loaded.train.output is None
    model, ckpt_cfg, size = load_checkpoint_model(str(out / "best"))
    assert size == SIZE and ckpt_cfg.model.dropout == loaded.model.dropout
    # jobs.train takes it as is (one epoch here, to keep the test short).
    trained = run_training(load_config(str(out / "best_config.yaml"), {
        "train.output": str(tmp_path / "retrain"), "train.epochs": 1}), log=lambda _: None)
    assert trained["epochs"] == 1 and (tmp_path / "retrain" / "best" / "model.keras").is_file()


def test_a_second_search_in_the_same_place_needs_resume(searched):
    from mammoray.search import run_search

    out, cfg, *_ = searched
    with pytest.raises(FileExistsError, match="--resume"):
        run_search(cfg)


def test_asha_stops_trials_worse_than_the_first_at_its_rung(tune_ray, tmp_path):
    """The search's scheduler and searcher on deterministic scores (the training replaced by
    a function of the learning rate, peaking at the baseline's 1e-3): trials below the first
    trial's score at epoch 1 are stopped there."""
    from ray import tune

    from mammoray.search import _grid_results, _make_tuner

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


def _epochs_saved(runs):
    """Epochs each trial's training run has saved so far (its latest checkpoint's history)."""
    out = {}
    if runs.is_dir():
        for run in runs.iterdir():
            counts = [0]
            for path in run.glob("checkpoint_*/history.json"):
                try:
                    counts.append(len(json.loads(path.read_text())))
                except (OSError, ValueError):
                    pass  # being copied into place right now
            out[run.name] = max(counts)
    return out


def _trial_results(exp):
    out = {}
    for name in os.listdir(exp):
        path = os.path.join(exp, name, "result.json")
        if os.path.isfile(path):
            with open(path) as fh:
                out[name] = [json.loads(line) for line in fh if line.strip()]
    return out


def test_resume_continues_an_interrupted_search_without_rerunning_finished_trials(data,
                                                                                 tmp_path):
    out = tmp_path / "search"
    config = tmp_path / "search.yaml"
    # Trials at once left to the cluster: one 2-CPU trial fits the local Ray's 2 CPUs.
    tree = search_tree(data, out, max_concurrent=0, cpus_per_worker=2, start_from_config=False,
                       num_samples=2)
    tree["tune"].pop("output")
    config.write_text(yaml.safe_dump(tree))
    command = [sys.executable, "-m", "jobs.tune", "--config", str(config), "--output", str(out)]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    exp = out / "ray_results" / "search"
    # The job's output goes to a file: a pipe nobody reads while the test polls fills up and
    # blocks the job.
    log_path = tmp_path / "tune.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        # Interrupt when one trial's training has saved all 3 epochs and the next one's has
        # saved some (trials run one at a time here): read from the training runs' checkpoints,
        # which the workers write as they go (Tune's result files may lag behind).
        deadline = time.time() + 300
        interrupted = None
        while time.time() < deadline and proc.poll() is None and interrupted is None:
            saved = _epochs_saved(exp / "train_runs")
            if 3 in saved.values():
                interrupted = next((t for t, n in saved.items() if 0 < n < 3), None)
            time.sleep(0.2)
        assert interrupted, "no trial trained while another had finished:\n" + \
            log_path.read_text(errors="replace")[-3000:]
        proc.send_signal(signal.SIGINT)  # Ctrl+C
        proc.wait(timeout=180)
    finally:
        _end_session(proc)
    log = log_path.read_text(errors="replace")
    assert proc.returncode == 2, log[-3000:]
    assert "--resume" in log and not (out / "summary.json").exists()
    # The search config is saved with the trials at once it runs with (the restored searcher
    # keeps that number, whatever the cluster holds on resuming).
    stored = json.loads((exp / "search_config.json").read_text())
    assert stored["tune"]["max_concurrent"] == 1 and "at most 1 at once" in log
    mid = _trial_results(exp)
    finished = [t for t, h in mid.items() if h and h[-1].get("done")]
    assert finished
    before = {t: mid[t] for t in finished}

    resumed = subprocess.run(command + ["--resume"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=600, start_new_session=True)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert "at most 1 at once" in resumed.stdout
    with open(out / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and set(finished) <= {r["trial_id"] for r in rows}
    after = _trial_results(exp)
    assert {t: after[t] for t in finished} == before  # finished trials were not run again
    for r in rows:
        assert r["status"] in ("completed", "stopped") and 1 <= int(r["epochs_run"]) <= 3
    assert json.loads((out / "summary.json").read_text())["trials"] == 2
    # The interrupted trial went on from its last checkpoint, not from epoch 1 (what it reports
    # to Tune after resuming starts later; nothing, if its training had already saved its last
    # epoch when the search stopped), and its row counts the epochs before the interruption.
    row = next(r for r in rows if r["trial_id"] == interrupted)
    assert int(row["epochs_run"]) == 3 and 1 <= int(row["best_epoch"]) <= 3
    if interrupted not in finished and after[interrupted] and mid.get(interrupted):
        assert after[interrupted][0]["epoch"] > mid[interrupted][-1]["epoch"]


def _end_session(proc: subprocess.Popen) -> None:
    """End what is left of a job's process session (its local Ray, if it leaked)."""
    import psutil

    if proc.poll() is None:
        proc.kill()
    left = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == proc.pid:
                left.append(p)
        except OSError:
            pass
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)
