"""Hyper-parameter search: Ray Tune + Optuna over the U-Net's depth, per-level dropout and the
learning rate (``python -m jobs.tune``).

Shape of a search (Ray 2.60 runs Ray Train V2, where a ``Tuner`` cannot take a trainer):
- each Tune trial is a function trainable that builds the same ``TensorflowTrainer`` as
  ``jobs.train`` (``mammoray.train.build_trainer``: its own workers, CPU or GPU per the config)
  and calls ``fit()``; ``TuneReportCallback`` forwards every epoch's metrics to Tune;
- the trial's own driver holds no CPU, only ``tune.trial_memory_mb`` of memory (a CPU-less
  request with no other resource is refused), so the trials' workers get every CPU;
- the define-by-run space (``SearchSpace``) samples the depth first and then one dropout rate
  per level, so a trial's dropout list always has its depth's length;
- ASHA stops poor trials early and Optuna ranks trials by ``best_val_score``: the best
  validation IoU so far (minus the validation loss when the validation split has no mass);
- the training data are read and materialized once, by the search's driver, and handed to
  every trial through the object store (``tune.with_parameters``).

Outputs (written when the search ends; summary.json last): trials.csv (one row per trial),
search.png, best_config.yaml (a training config ``jobs.train --config`` takes as is: the best
trial's exact setup), best/ (that trial's best checkpoint, for jobs.evaluate / jobs.predict)
and summary.json. ``--resume`` continues an interrupted search from its storage path: finished
trials are kept, unfinished ones continue from their latest training checkpoint.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import yaml

from mammoray import storage
from mammoray.config import ConfigError, ExperimentConfig, config_from_dict
from mammoray.train import TrainError, build_trainer, read_dataset_json, split_dataset

METRIC = "best_val_score"
SEARCHED_CHOICES = (("base_filters", "model"), ("batch_size", "train"), ("loss", "train"))
TRIAL_COLUMNS = ["trial_id", "status", "levels", "dropout", "learning_rate", "base_filters",
                 "batch_size", "loss", "best_val_score", "best_val_iou", "best_val_dice",
                 "best_epoch",
                 "epochs_run", "minutes", "baseline", "error"]


class SearchInterrupted(RuntimeError):
    """The search stopped before all its trials finished (Ctrl+C); --resume continues it."""


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


def run_trial(params: dict[str, Any], *, base: dict[str, Any], size: int,
              preprocessing: dict[str, Any] | None, train_ds, val_ds,
              storage_path: str) -> None:
    """One Tune trial: a Ray Train run of the trial's config, reporting every epoch to Tune.
    A restarted trial (--resume) continues its training run from the latest checkpoint."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_config(base, params, for_search=True)
    trial_id = ray.tune.get_context().get_trial_id()
    print(f"tune: trial {trial_id}: {cfg.model.levels} levels, dropout {cfg.model.dropout}, "
          f"learning rate {cfg.train.learning_rate:g}", flush=True)
    trainer = build_trainer(cfg, size, preprocessing, {"train": train_ds, "val": val_ds},
                            name=trial_id, storage_path=storage_path,
                            callbacks=[TuneReportCallback()])
    trainer.fit()


def trial_dirname(trial) -> str:
    """Trial folders and names are the trial ids (module level: Tune pickles it)."""
    return trial.trial_id


# ------------------------------------------------------------------------------ checks

def check_search_config(cfg: ExperimentConfig, *, resume: bool) -> dict[str, Any]:
    """Stop before any work on a bad path or range; returns the dataset's dataset.json."""
    from mammoray.model import check_input_size

    t = cfg.tune
    if not cfg.train.data:
        raise ConfigError("train.data: required (the jobs.preprocess output); pass --data DIR")
    if not t.output:
        raise ConfigError("tune.output: required (the search output); pass --output DIR")
    if storage.is_uri(t.output):
        raise ConfigError("tune.output: must be a local folder (the search's state may go to "
                          "object storage through tune.storage_path)")
    info = read_dataset_json(cfg.train.data)
    size = int(info["image"]["height"])
    for levels in range(t.levels[0], t.levels[1] + 1):
        try:
            check_input_size(dataclasses.replace(cfg.model, levels=levels), size)
        except ConfigError:
            factor = 2 ** (levels - 1)
            raise ConfigError(f"tune.levels: {t.levels} includes {levels} levels, which need "
                              f"an input size divisible by {factor}; the data is {size} x "
                              f"{size}") from None
    if not resume and storage.exists(experiment_path(cfg)):
        raise FileExistsError(f"{experiment_path(cfg)}: a search of this name exists; pass "
                              f"--resume to continue it, or choose another --output or "
                              f"tune.name")
    return info


SEARCH_CONFIG = "search_config.json"


def stored_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config a search was started with (saved in its storage), for --resume: the trials
    already run were sampled and trained under it. Only the ``ray`` section is today's."""
    path = storage.join(experiment_path(cfg), SEARCH_CONFIG)
    if not storage.exists(path):
        raise ConfigError(f"--resume: no search to resume at {experiment_path(cfg)} "
                          f"(set by tune.output / tune.storage_path and tune.name)")
    tree = json.loads(storage.read_bytes(path))
    tree["ray"] = dataclasses.asdict(cfg.ray)
    return config_from_dict(tree)


def storage_root(cfg: ExperimentConfig) -> str:
    t = cfg.tune
    return storage.normalize(t.storage_path or os.path.join(t.output, "ray_results"))


def experiment_path(cfg: ExperimentConfig) -> str:
    return storage.join(storage_root(cfg), cfg.tune.name)


def per_trial_resources(cfg: ExperimentConfig) -> tuple[float, float]:
    """CPUs and GPUs one trial's workers take."""
    tcfg = cfg.train
    cpus = cfg.tune.cpus_per_worker or tcfg.cpus_per_worker
    return tcfg.num_workers * cpus, float(tcfg.num_workers if tcfg.use_gpu else 0)


def auto_concurrency(cfg: ExperimentConfig, cluster: dict[str, float]) -> int:
    """Trials the cluster's current resources hold at once (at least 1)."""
    cpus, gpus = per_trial_resources(cfg)
    fits = math.floor(cluster.get("CPU", 0.0) / cpus + 1e-9)
    if gpus:
        fits = min(fits, math.floor(cluster.get("GPU", 0.0) / gpus + 1e-9))
    return max(1, fits)


# ----------------------------------------------------------------------------- results

def trial_rows(results: list[dict[str, Any]], base: dict[str, Any], max_epochs: int,
               baseline: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per trial from ``results`` (dicts with trial_id, params, history: the epoch
    metrics Tune recorded, error): parameters, best validation IoU/Dice, epochs run, status
    (completed / stopped early by ASHA / error)."""
    rows = []
    for r in results:
        cfg = trial_config(base, r["params"], for_search=False)
        history = r["history"]
        best = max(history, key=_epoch_rank) if history else None
        epochs_run = max((int(h["epoch"]) for h in history), default=0)
        status = ("error" if r["error"] else "completed" if epochs_run >= max_epochs
                  else "stopped")
        start, end = trial_window(history)
        rows.append({
            "trial_id": r["trial_id"], "status": status, "levels": cfg.model.levels,
            "dropout": json.dumps(cfg.model.dropout),
            "learning_rate": cfg.train.learning_rate,
            "base_filters": cfg.model.base_filters, "batch_size": cfg.train.batch_size,
            "loss": cfg.train.loss,
            "best_val_score": best["val_score"] if best else math.nan,
            "best_val_iou": best["val_iou"] if best else math.nan,
            "best_val_dice": best["val_dice"] if best else math.nan,
            "best_epoch": int(best["epoch"]) if best else 0,
            "epochs_run": epochs_run,
            "minutes": round((end - start) / 60.0, 2) if history else 0.0,
            "baseline": baseline is not None and _same_params(r["params"], baseline),
            "error": (r["error"] or "").strip().splitlines()[-1][:300] if r["error"] else "",
        })
    return rows


def _epoch_rank(h: dict[str, Any]) -> tuple[float, int]:
    """Epochs by validation score, ties to the later epoch."""
    return (h["val_score"], int(h["epoch"]))


def _same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return set(a) == set(b) and all(
        math.isclose(a[k], b[k], rel_tol=1e-9) if isinstance(b[k], float) else a[k] == b[k]
        for k in b)


def trial_window(history: list[dict[str, Any]]) -> tuple[float, float]:
    """(start, end) wall-clock seconds of a trial's training run: from the start of its worker
    (TensorFlow start-up and model building included; else its first epoch's start) to its last
    epoch's end."""
    if not history:
        return (math.nan, math.nan)
    first, last = history[0], history[-1]
    start = first.get("worker_started") or float(first["time"]) - float(first["seconds"])
    return float(start), float(last["time"])


def max_overlap(windows: list[tuple[float, float]]) -> int:
    """The most windows open at one moment (trials that ran at once)."""
    events = sorted([(s, 1) for s, e in windows if not math.isnan(s)]
                    + [(e, -1) for s, e in windows if not math.isnan(s)],
                    key=lambda ev: (ev[0], ev[1]))
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TRIAL_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes(path, buf.getvalue().encode())


def write_best_config(cfg: ExperimentConfig, row: dict[str, Any], path: str) -> None:
    """The best trial's training config, as ``jobs.train --config`` takes it: output and run
    name cleared (give --output), the search section left out."""
    tree = cfg.to_dict()
    tree.pop("tune")
    for key in ("output", "run_name", "storage_path"):
        tree["train"][key] = None
    header = (f"# Best trial {row['trial_id']} of the search in {os.path.dirname(path)}:\n"
              f"# validation IoU {row['best_val_iou']:.4f}, Dice {row['best_val_dice']:.4f} at "
              f"epoch {row['best_epoch']} of {row['epochs_run']}.\n"
              f"#   python -m jobs.train --config {os.path.basename(path)} --output DIR\n")
    text = header + yaml.safe_dump(tree, sort_keys=False, default_flow_style=None)
    storage.write_bytes(path, text.encode())


def plot_search(rows: list[dict[str, Any]], histories: dict[str, list[dict[str, Any]]],
                path: str, opened: list[str]) -> None:
    """search.png: validation IoU by trial over the search's time, and each trial's best
    validation IoU against each searched parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["levels", "learning_rate", "mean dropout", *opened]
    cols = 3
    nrows = 1 + math.ceil(len(panels) / cols)
    fig = plt.figure(figsize=(5 * cols, 3.8 * nrows))
    ax = fig.add_subplot(nrows, 1, 1)
    starts = [trial_window(h)[0] for h in histories.values() if h]
    t0 = min(starts) if starts else 0.0
    best_id = max((r for r in rows if not math.isnan(r["best_val_score"])),
                  key=lambda r: r["best_val_score"], default={"trial_id": None})["trial_id"]
    for row in rows:
        h = histories.get(row["trial_id"]) or []
        if not h:
            continue
        x = [(float(e["time"]) - t0) / 60.0 for e in h]
        y = [e["val_iou"] for e in h]
        line, = ax.plot(x, y, marker=".", lw=2.5 if row["trial_id"] == best_id else 1.2,
                        label=f"{row['trial_id']} ({row['status']})")
        if row["status"] == "stopped":
            ax.plot(x[-1], y[-1], "x", color=line.get_color(), ms=10, mew=2)
    ax.set_xlabel("minutes since the search started")
    ax.set_ylabel("validation IoU")
    ax.set_title("Validation IoU by trial (x: stopped early by ASHA; thick: best trial)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc="best")
    for i, name in enumerate(panels):
        a = fig.add_subplot(nrows, cols, cols + i + 1)
        if name == "mean dropout":
            xs = [sum(json.loads(r["dropout"])) / r["levels"] for r in rows]
        else:
            xs = [r[name] for r in rows]
        ys = [r["best_val_iou"] for r in rows]
        colors = ["tab:green" if r["status"] == "completed" else
                  "tab:orange" if r["status"] == "stopped" else "tab:red" for r in rows]
        a.scatter(xs, ys, c=colors)
        if name == "learning_rate":
            a.set_xscale("log")
        a.set_xlabel(name)
        a.set_ylabel("best validation IoU")
        a.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    storage.write_bytes(path, buf.getvalue())


# -------------------------------------------------------------------------------- driver

def _make_tuner(cfg: ExperimentConfig, trainable, concurrency: int):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    t = cfg.tune
    if t.sampler == "tpe":
        # constant_liar: running trials count as pending results, so concurrent trials are
        # not all sampled at the same point.
        sampler = optuna.samplers.TPESampler(seed=t.seed, n_startup_trials=t.startup_trials,
                                             constant_liar=concurrency > 1)
    else:
        sampler = optuna.samplers.RandomSampler(seed=t.seed)
    baseline = baseline_params(cfg) if t.start_from_config else None
    # metric and mode go to the searcher and the scheduler themselves: given to TuneConfig
    # only, they did not reach OptunaSearch with a define-by-run space here.
    searcher = OptunaSearch(space=SearchSpace(t), metric=METRIC, mode="max", sampler=sampler,
                            points_to_evaluate=[baseline] if baseline else None)
    epochs = t.epochs or cfg.train.epochs
    scheduler = ASHAScheduler(time_attr="epoch", metric=METRIC, mode="max", max_t=epochs,
                              grace_period=min(t.grace_period, epochs),
                              reduction_factor=t.reduction_factor)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher,
                                    scheduler=scheduler, num_samples=t.num_samples,
                                    max_concurrent_trials=concurrency,
                                    trial_name_creator=trial_dirname,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=t.name, storage_path=storage_root(cfg), verbose=1))


def trial_checkpoints(run_dir: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """(folder, history) of each checkpoint Ray Train kept of one trial's training run. The
    latest checkpoint's history is the trial's whole history, also across an interruption
    (Tune itself only keeps what a resumed trial reported after resuming)."""
    if not storage.is_dir(run_dir):
        return []
    out = []
    for path in storage.list_files(run_dir):
        folder, name = path.rsplit("/", 1)
        if name == "history.json" and folder.rsplit("/", 1)[-1].startswith("checkpoint_"):
            out.append((folder, json.loads(storage.read_bytes(path))))
    return out


def _grid_results(grid, train_runs: str | None = None) -> list[dict[str, Any]]:
    """Each trial's id, params, error, full epoch history and best kept checkpoint: from its
    training run's checkpoints when there are any, else from what it reported to Tune."""
    out = []
    for result in grid:
        trial_id = os.path.basename(result.path.rstrip("/"))
        kept = trial_checkpoints(storage.join(train_runs, trial_id)) if train_runs else []
        if kept:
            history = max((h for _, h in kept), key=len)
            best_folder = max(kept, key=lambda fh: _epoch_rank(fh[1][-1]))[0]
        else:
            df = result.metrics_dataframe
            history = [] if df is None or "val_score" not in df else [
                {k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}
                for rec in df.dropna(subset=["val_score"]).to_dict("records")]
            best_folder = None
        out.append({"trial_id": trial_id, "params": dict(result.config), "history": history,
                    "best_checkpoint": best_folder,
                    "error": None if result.error is None else repr(result.error)})
    return out


def finished_trials(exp_path: str) -> int:
    """Trials that ended (completed, stopped by ASHA, or failed), from the experiment state Tune
    saved. Not from ``tuner.fit()``'s result: after Ctrl+C, Tune marks the trials it interrupted
    as terminated in memory, while the saved state keeps them running (and --resume resumes
    them)."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(exp_path)
    return sum(trial.status in ("TERMINATED", "ERROR") for trial in analysis.trials)


def run_search(cfg: ExperimentConfig, *, resume: bool = False,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or with ``resume`` continue) the search; writes the outputs; returns the summary."""
    import ray
    from ray import tune

    from mammoray.ray_env import init_ray

    if resume:
        cfg = stored_config(cfg)
    info = check_search_config(cfg, resume=resume)
    t = cfg.tune
    size = int(info["image"]["height"])
    output = storage.normalize(t.output)
    os.makedirs(output, exist_ok=True)
    exp_path = experiment_path(cfg)
    base = cfg.to_dict()
    epochs = t.epochs or cfg.train.epochs
    batches = max(t.batch_size or [cfg.train.batch_size]) * cfg.train.num_workers
    started = init_ray(cfg.ray, dashboard=True)
    t0 = time.time()
    try:
        train_ds = split_dataset(cfg.train.data, "train")
        val_ds = split_dataset(cfg.train.data, "val")
        n_train, n_val = train_ds.count(), val_ds.count()
        if n_train < batches:
            raise TrainError(f"--data {cfg.train.data}: {n_train} training rows, fewer than "
                             f"one global batch ({batches}) of the largest batch size")
        concurrency = t.max_concurrent or auto_concurrency(cfg, ray.cluster_resources())
        cpus, gpus = per_trial_resources(cfg)
        log(f"tune: {t.num_samples} trials of up to {epochs} epochs on {n_train} training / "
            f"{n_val} validation rows of {size} x {size}; at most {concurrency} at once, each "
            f"{cfg.train.num_workers} worker(s) with {cpus:g} CPU(s)"
            + (f" and {gpus:g} GPU(s)" if gpus else "") + f"; search state in {exp_path}")
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, base=base, size=size,
                                 preprocessing=info.get("parameters"), train_ds=train_ds,
                                 val_ds=val_ds,
                                 storage_path=storage.join(exp_path, "train_runs")),
            {"memory": t.trial_memory_mb * 2**20})
        if resume:
            log(f"tune: resuming {exp_path} with the config it was started with")
            tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            # Saved with the trials-at-once this search runs with (the restored searcher
            # keeps it), so a resumed search reports what it runs, not today's cluster's.
            stored = dict(base, tune=dict(base["tune"], max_concurrent=concurrency))
            storage.write_bytes(storage.join(exp_path, SEARCH_CONFIG),
                                json.dumps(stored, indent=1).encode())
            tuner = _make_tuner(cfg, trainable, concurrency)
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    wall = time.time() - t0
    finished = finished_trials(exp_path)
    if finished < t.num_samples:
        raise SearchInterrupted(f"the search stopped with {finished} of {t.num_samples} "
                                f"trials finished; continue it with --resume (state in "
                                f"{exp_path})")
    results = _grid_results(grid, storage.join(exp_path, "train_runs"))
    return write_outputs(cfg, results, wall_seconds=wall, log=log)


def write_outputs(cfg: ExperimentConfig, results: list[dict[str, Any]], *,
                  wall_seconds: float, log: Callable[[str], None] = print) -> dict[str, Any]:
    """trials.csv, search.png, best_config.yaml, best/ and (last) summary.json."""
    import ray.train

    from mammoray.train import publish_best

    t = cfg.tune
    output = storage.normalize(t.output)
    base = cfg.to_dict()
    epochs = t.epochs or cfg.train.epochs
    baseline = baseline_params(cfg) if t.start_from_config else None
    rows = trial_rows(results, base, epochs, baseline)
    histories = {r["trial_id"]: r["history"] for r in results}
    summary_path = os.path.join(output, "summary.json")
    if os.path.exists(summary_path):
        os.remove(summary_path)  # the outputs below are of this run; summary.json comes last
    write_csv(rows, os.path.join(output, "trials.csv"))
    opened = [name for name, _ in SEARCHED_CHOICES if getattr(t, name)]
    plot_search(rows, histories, os.path.join(output, "search.png"), opened)
    # Ranked by the validation score: IoU, or minus the validation loss when the validation
    # split has no mass (IoU undefined).
    scored = [r for r in rows if not math.isnan(r["best_val_score"])]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped", "error")}
    summary: dict[str, Any] = {
        "trials": len(rows), **counts,
        "trials_at_once": max_overlap([trial_window(r["history"]) for r in results]),
        "wall_seconds": round(wall_seconds, 1), "epochs_per_trial": epochs,
        "output": output, "best": None, "baseline": None}
    if scored:
        best = max(scored, key=lambda r: r["best_val_score"])
        result = next(r for r in results if r["trial_id"] == best["trial_id"])
        best_cfg = trial_config(base, result["params"], for_search=False)
        write_best_config(best_cfg, best, os.path.join(output, "best_config.yaml"))
        if result["best_checkpoint"]:
            with ray.train.Checkpoint(result["best_checkpoint"]).as_directory() as d:
                publish_best(d, output)
        summary["best"] = {k: best[k] for k in ("trial_id", "levels", "dropout",
                                                  "learning_rate", "base_filters",
                                                  "batch_size", "loss", "best_val_iou",
                                                  "best_val_dice", "best_epoch", "epochs_run")}
    base_row = next((r for r in rows if r["baseline"]), None)
    if base_row:
        summary["baseline"] = {k: base_row[k] for k in ("trial_id", "status", "best_val_iou",
                                                          "best_val_dice", "epochs_run")}
    storage.write_bytes(summary_path, json.dumps(summary, indent=1, default=float).encode())
    log(f"tune: {len(rows)} trials ({counts['completed']} completed, {counts['stopped']} "
        f"stopped early by ASHA, {counts['error']} failed), at most "
        f"{summary['trials_at_once']} at once, {wall_seconds / 60:.1f} min")
    if summary["best"]:
        b = summary["best"]
        log(f"tune: best trial {b['trial_id']}: {b['levels']} levels, dropout {b['dropout']}, "
            f"learning rate {b['learning_rate']:g}: validation IoU {b['best_val_iou']:.3f}, "
            f"Dice {b['best_val_dice']:.3f} (epoch {b['best_epoch']})")
    if base_row:
        log(f"tune: the config's own values (trial {base_row['trial_id']}, "
            f"{base_row['status']}): validation Dice {base_row['best_val_dice']:.3f}")
    log(f"tune: -> {output}/trials.csv, search.png, best_config.yaml, best/")
    if not scored:
        raise TrainError(f"no trial reported a result; see the errors in {output}/trials.csv")
    return summary
