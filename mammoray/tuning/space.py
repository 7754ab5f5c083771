"""The search space (Optuna define-by-run over the U-Net's depth, one dropout rate per level
and the learning rate, plus the choices a config opens) and what a point of it means as a
training config."""

from __future__ import annotations

import copy
from typing import Any

from mammoray.core.config import ExperimentConfig, config_from_dict

SEARCHED_CHOICES = (("base_filters", "model"), ("batch_size", "train"), ("loss", "train"),
                    ("patch_size", "train"), ("foreground_fraction", "train"))


class SearchSpace:
    """Optuna define-by-run space over ``tune`` ranges. A plain object, not a closure: Tune
    saves the searcher with pickle, so that --resume continues the same study."""

    def __init__(self, tune_cfg) -> None:
        self.levels = tuple(tune_cfg.levels)
        self.dropout = tuple(tune_cfg.dropout)
        self.learning_rate = tuple(tune_cfg.learning_rate)
        self.choices = {name: list(getattr(tune_cfg, name)) for name, _ in SEARCHED_CHOICES
                        if getattr(tune_cfg, name)}

    def __call__(self, trial) -> None:
        levels = trial.suggest_int("levels", *self.levels)
        for i in range(levels):
            trial.suggest_float(f"dropout_{i}", *self.dropout)
        trial.suggest_float("learning_rate", *self.learning_rate, log=True)
        for name, values in self.choices.items():
            trial.suggest_categorical(name, values)


def baseline_params(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The config's own model/train values as a point of the space, or None when they fall
    outside its ranges."""
    t, m = cfg.tune, cfg.model
    dropout = m.dropout * m.levels if len(m.dropout) == 1 else list(m.dropout)
    params: dict[str, Any] = {"levels": m.levels, "learning_rate": cfg.train.learning_rate}
    params.update({f"dropout_{i}": rate for i, rate in enumerate(dropout)})
    inside = (t.levels[0] <= m.levels <= t.levels[1]
              and all(t.dropout[0] <= d <= t.dropout[1] for d in dropout)
              and t.learning_rate[0] <= cfg.train.learning_rate <= t.learning_rate[1])
    for name, section in SEARCHED_CHOICES:
        values = getattr(t, name)
        if values:
            own = getattr(getattr(cfg, section), name)
            inside = inside and own in values
            params[name] = own
    return params if inside else None


def trial_config(base: dict[str, Any], params: dict[str, Any], *,
                 for_search: bool) -> ExperimentConfig:
    """The training config of one trial: ``base`` (a config dict) with the sampled values.

    Trials run ``tune.epochs`` epochs. ``for_search`` also applies ``tune.cpus_per_worker``
    (a resource setting of the search, not a hyper-parameter: best_config.yaml keeps
    train.cpus_per_worker). Values are rounded (dropout 4 decimals, learning rate 4 significant
    digits) before the trial runs, so the written best config reproduces the trial exactly.
    """
    tree = copy.deepcopy(base)
    tune_section = tree.get("tune") or {}
    levels = int(params["levels"])
    tree["model"]["levels"] = levels
    tree["model"]["dropout"] = [round(float(params[f"dropout_{i}"]), 4) for i in range(levels)]
    tree["train"]["learning_rate"] = float(f"{float(params['learning_rate']):.4g}")
    for name, section in SEARCHED_CHOICES:
        if name in params:
            tree[section][name] = params[name]
    if tune_section.get("epochs"):
        tree["train"]["epochs"] = tune_section["epochs"]
    if for_search and tune_section.get("cpus_per_worker"):
        tree["train"]["cpus_per_worker"] = tune_section["cpus_per_worker"]
    return config_from_dict(tree)

