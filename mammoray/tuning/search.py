"""Hyper-parameter search: Ray Tune + Optuna over the U-Net's depth, per-level dropout and the
learning rate (``python -m jobs.tune``).

Shape of a search (Ray 2.60 runs Ray Train V2, where a ``Tuner`` cannot take a trainer):
- each Tune trial is a function trainable that builds the same Ray Train trainer as
  ``jobs.train`` (``mammoray.training.trainer.build_trainer``: its own workers, CPU or GPU per
  the config) and calls ``fit()``; ``TuneReportCallback`` forwards every epoch's metrics to Tune;
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

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

from mammoray.core import resources, storage
from mammoray.core.config import ConfigError, ExperimentConfig, config_from_dict
from mammoray.core.dataset import image_size, read_dataset_json, split_dataset
from mammoray.core.ray_session import ray_session
from mammoray.model import checkpoint as ckpt
from mammoray.training.trainer import TrainError, build_trainer
from mammoray.tuning.results import (
    epoch_rank,
    max_overlap,
    plot_search,
    trial_rows,
    trial_window,
    write_best_config,
    write_csv,
)
from mammoray.tuning.space import SEARCHED_CHOICES, SearchSpace, baseline_params, trial_config

METRIC = "best_val_score"


class SearchInterrupted(RuntimeError):
    """The search stopped before all its trials finished (Ctrl+C); --resume continues it."""


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
    from mammoray.model.unet import check_input_size

    t = cfg.tune
    if not cfg.train.data:
        raise ConfigError("train.data: required (the jobs.preprocess output); pass --data DIR")
    if not t.output:
        raise ConfigError("tune.output: required (the search output); pass --output DIR")
    info = read_dataset_json(cfg.train.data)
    size = image_size(info)
    whole = cfg.infer.mode == "whole"
    for levels in range(t.levels[0], t.levels[1] + 1):
        for patch in (t.patch_size or [cfg.train.patch_size]):
            try:
                check_input_size(dataclasses.replace(cfg.model, levels=levels), size, patch,
                                 whole=whole)
            except ConfigError as exc:
                factor = 2 ** (levels - 1)
                if patch > size:
                    raise ConfigError(f"tune.patch_size: {t.patch_size} includes {patch}, "
                                      f"larger than the data's {size} x {size} images") from None
                side = f"a patch side ({patch})" if patch and not whole else f"input size"
                raise ConfigError(f"tune.levels: {t.levels} includes {levels} levels, which "
                                  f"need {side} divisible by {factor}; the data is {size} x "
                                  f"{size}: {exc}") from None
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
    return storage.normalize(t.storage_path or storage.join(storage.normalize(t.output),
                                                             "ray_results"))


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
        run_config=tune.RunConfig(name=t.name, storage_path=storage_root(cfg), verbose=1,
                                  callbacks=mlflow_callbacks(cfg)))


def mlflow_callbacks(cfg: ExperimentConfig) -> list[Any]:
    """One MLflow run per trial (Ray Tune's ``MLflowLoggerCallback``: the trial's sampled
    values as parameters, every reported epoch's metrics) when ``train.mlflow_tracking_uri``
    is set. Tune's own loggers (CSV, JSON, TensorBoard) stay on beside it."""
    uri = cfg.train.mlflow_tracking_uri
    if not uri:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's opt-in
    return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=cfg.train.mlflow_experiment,
                                 save_artifact=False)]


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
            best_folder = max(kept, key=lambda fh: epoch_rank(fh[1][-1]))[0]
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

    if resume:
        cfg = stored_config(cfg)
    info = check_search_config(cfg, resume=resume)
    t = cfg.tune
    size = image_size(info)
    if not storage.is_uri(t.output):
        os.makedirs(storage.normalize(t.output), exist_ok=True)
    exp_path = experiment_path(cfg)
    base = cfg.to_dict()
    batches = max(t.batch_size or [cfg.train.batch_size]) * cfg.train.num_workers
    t0 = time.time()
    with ray_session(cfg.ray):
        cpus, gpus = per_trial_resources(cfg)
        workers = cfg.train.num_workers
        resources.ensure_units("each search trial", workers, "worker", cpus / workers,
                               gpus / workers, count_flag="train.num_workers:",
                               cpus_flag="--cpus-per-worker", wait_s=cfg.ray.resource_wait_s,
                               log=log)
        train_ds = split_dataset(cfg.train.data, "train",
                                 mass_repeat=cfg.train.mass_repeat)
        val_ds = split_dataset(cfg.train.data, "val")
        n_train, n_val = train_ds.count(), val_ds.count()
        if n_train < batches:
            raise TrainError(f"--data {cfg.train.data}: {n_train} training rows, fewer than "
                             f"one global batch ({batches}) of the largest batch size")
        concurrency = t.max_concurrent or auto_concurrency(cfg, ray.cluster_resources())
        log_plan(cfg, concurrency, f"{n_train} training / {n_val} validation rows of {size} x "
                 f"{size}", exp_path, log)
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
    wall = time.time() - t0
    finished = finished_trials(exp_path)
    if finished < t.num_samples:
        raise SearchInterrupted(f"the search stopped with {finished} of {t.num_samples} "
                                f"trials finished; continue it with --resume (state in "
                                f"{exp_path})")
    results = _grid_results(grid, storage.join(exp_path, "train_runs"))
    return write_outputs(cfg, results, wall_seconds=wall, log=log)


def log_plan(cfg: ExperimentConfig, concurrency: int, data: str, exp_path: str,
             log: Callable[[str], None]) -> None:
    """The search's plan, in one line: trials, epochs, data, trials at once, resources."""
    t = cfg.tune
    cpus, gpus = per_trial_resources(cfg)
    log(f"tune: {t.num_samples} trials of up to {t.epochs or cfg.train.epochs} epochs on "
        f"{data}; at most {concurrency} at once, each {cfg.train.num_workers} worker(s) with "
        f"{cpus:g} CPU(s)" + (f" and {gpus:g} GPU(s)" if gpus else "")
        + f"; search state in {exp_path}")


def write_outputs(cfg: ExperimentConfig, results: list[dict[str, Any]], *,
                  wall_seconds: float, log: Callable[[str], None] = print) -> dict[str, Any]:
    """trials.csv, search.png, best_config.yaml, best/ and (last) summary.json."""
    import ray.train

    t = cfg.tune
    output = storage.normalize(t.output)
    base = cfg.to_dict()
    epochs = t.epochs or cfg.train.epochs
    baseline = baseline_params(cfg) if t.start_from_config else None
    rows = trial_rows(results, base, epochs, baseline)
    histories = {r["trial_id"]: r["history"] for r in results}
    summary_path = storage.join(output, "summary.json")
    storage.delete(summary_path)  # the outputs below are of this run; summary.json comes last
    write_csv(rows, storage.join(output, "trials.csv"))
    opened = [name for name, _ in SEARCHED_CHOICES if getattr(t, name)]
    plot_search(rows, histories, storage.join(output, "search.png"), opened)
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
        write_best_config(best_cfg, best, storage.join(output, "best_config.yaml"))
        if result["best_checkpoint"]:
            with ray.train.Checkpoint(result["best_checkpoint"]).as_directory() as d:
                ckpt.publish_best(d, output)
        summary["best"] = {k: best[k] for k in ("trial_id", "levels", "dropout",
                                                  "learning_rate", "base_filters",
                                                  "batch_size", "loss", "patch_size",
                                                  "foreground_fraction", "best_val_iou",
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
