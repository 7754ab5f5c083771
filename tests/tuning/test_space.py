"""The search space and what a point of it means as a training config (pure, exact values)."""

import optuna
import pytest

from mammoray.core.config import config_from_dict
from mammoray.tuning.search import auto_concurrency
from mammoray.tuning.space import SearchSpace, baseline_params, trial_config

pytestmark = pytest.mark.unit


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


def test_concurrency_from_the_clusters_resources():
    def cfg(**train):
        return config_from_dict({"train": train})

    assert auto_concurrency(cfg(cpus_per_worker=1), {"CPU": 2.0}) == 2
    assert auto_concurrency(cfg(cpus_per_worker=2, num_workers=2), {"CPU": 10.0}) == 2
    assert auto_concurrency(cfg(cpus_per_worker=4), {"CPU": 2.0}) == 1  # at least one
    assert auto_concurrency(cfg(cpus_per_worker=8, use_gpu=True),
                            {"CPU": 64.0, "GPU": 3.0}) == 3


def test_patch_size_and_foreground_fraction_can_be_searched():
    cfg = config_from_dict({"train": {"patch_size": 256, "foreground_fraction": 0.33},
                            "model": {"levels": 5, "dropout": [0.1]},
                            "tune": {"patch_size": [0, 128, 256],
                                     "foreground_fraction": [0.33, 0.5]}})
    space = SearchSpace(cfg.tune)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        space(trial)
        point = trial_config(cfg.to_dict(), trial.params, for_search=True)
        assert point.train.patch_size == trial.params["patch_size"]
        assert point.train.foreground_fraction == trial.params["foreground_fraction"]
        seen.add((point.train.patch_size, point.train.foreground_fraction))
        study.tell(trial, 0.0)
    assert {p for p, _ in seen} == {0, 128, 256} and {f for _, f in seen} == {0.33, 0.5}
    # The config's own values are the baseline point when they are among the choices.
    assert baseline_params(cfg)["patch_size"] == 256
    assert baseline_params(cfg)["foreground_fraction"] == 0.33
