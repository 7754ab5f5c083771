"""The training driver (``python -m jobs.train``): Ray Train (TensorFlow set-up) with
MultiWorkerMirroredStrategy workers running :func:`mammoray.training.loop.train_loop_per_worker`.

Checkpoints: worker 0 reports a checkpoint (:mod:`mammoray.model.checkpoint`) every
``train.checkpoint_every`` epochs, at each new best and at the last epoch; Ray keeps the best
by validation IoU and the latest. While the run goes on, :class:`EpochProgress` prints a line
per epoch and keeps ``history.csv``, ``curves.png`` and TensorBoard events up to date. A run
with the same name and storage resumes from its latest checkpoint;
``FailureConfig(max_failures)`` restarts a failed worker group from it. When training ends
the best checkpoint is published as ``<output>/best``, with ``history.csv``, ``curves.png``
and ``summary.json`` beside it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from mammoray.core import faults, resources, storage
from mammoray.core.config import ConfigError, ExperimentConfig
from mammoray.core.dataset import image_size, read_dataset_json, split_dataset
from mammoray.core.ray_session import ray_session
from mammoray.model import checkpoint as ckpt
from mammoray.training.history import write_history
from mammoray.training.loop import train_loop_per_worker
from mammoray.training.progress import EpochProgress


class TrainError(RuntimeError):
    """The training job cannot run (e.g. an empty split); says what to fix."""


def run_name(cfg: ExperimentConfig) -> str:
    if cfg.train.run_name:
        return cfg.train.run_name
    base = os.path.basename(storage.normalize(cfg.train.output).rstrip("/")) or "run"
    return "train-" + re.sub(r"[^A-Za-z0-9_.-]", "_", base)


def check_train_config(cfg: ExperimentConfig, *, need_output: bool = True) -> dict[str, Any]:
    """Stop before any work on a bad path or a model the data cannot take; returns the
    dataset's dataset.json."""
    from mammoray.model.unet import check_input_size

    tcfg = cfg.train
    if not tcfg.data:
        raise ConfigError("train.data: required (the jobs.preprocess output); pass --data DIR")
    if need_output and not tcfg.output:
        raise ConfigError("train.output: required (the training output); pass --output DIR")
    info = read_dataset_json(tcfg.data)
    check_input_size(cfg.model, image_size(info), tcfg.patch_size,
                     whole=cfg.infer.mode == "whole")
    return info


def check_batches(n_train: int, batch_size: int, num_workers: int, data: str) -> None:
    if n_train < batch_size * num_workers:
        raise TrainError(f"--data {data}: {n_train} training rows, fewer than one global batch "
                         f"({batch_size} x {num_workers} workers)")


def build_trainer(cfg: ExperimentConfig, size: int, preprocessing: dict[str, Any] | None,
                  datasets: dict[str, Any], *, name: str, storage_path: str,
                  callbacks: list[Any] | None = None, live: bool = False):
    """The Ray Train trainer of one training run (jobs.train, and each jobs.tune trial): a
    ``DataParallelTrainer`` with TensorFlow's set-up (what ``TensorflowTrainer`` is, without
    importing TensorFlow here or in the Train controller: see mammoray.training.backend);
    ``train.num_workers`` workers with ``train.cpus_per_worker`` CPUs (and a GPU each with
    ``train.use_gpu``), the "train" dataset split between them, checkpoints kept by
    validation IoU under ``storage_path/name``. ``live``: rank 0 sends what the progress
    callback shows (restored history, validation pictures) and logs to MLflow (jobs.train;
    a search reports through Tune instead)."""
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from mammoray.training.backend import TensorflowBackendConfig

    tcfg = cfg.train
    loop_config = {"config": cfg.to_dict(), "size": size, "preprocessing": preprocessing,
                   "faults": faults.from_env(), "live": live, "run_name": name}
    resources = {"CPU": tcfg.cpus_per_worker}
    if tcfg.use_gpu:
        resources["GPU"] = 1
    return DataParallelTrainer(
        train_loop_per_worker,
        backend_config=TensorflowBackendConfig(),
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=tcfg.num_workers,
                                               use_gpu=tcfg.use_gpu,
                                               resources_per_worker=resources),
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        datasets=datasets,
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=tcfg.checkpoints_to_keep,
                checkpoint_score_attribute="val_score", checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=tcfg.max_failures)))


def _warn_local_storage(storage_path: str, num_workers: int,
                        log: Callable[[str], None]) -> None:
    """Workers on other nodes write checkpoints to the storage path too: a local path must then
    be the same shared folder on every node."""
    import ray

    os.makedirs(storage_path, exist_ok=True)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes > 1 and num_workers > 1:
        log(f"train: warning: train.storage_path {storage_path} is a local path and this "
            f"cluster has {nodes} nodes; workers on other nodes write their checkpoints there "
            "too, so it must be the same shared folder on every node (NFS, or one machine); "
            "otherwise set train.storage_path to s3://... or gs://...")


def run_training(cfg: ExperimentConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train with Ray Train; writes <output>/best, history.csv, curves.png, summary.json."""
    info = check_train_config(cfg)
    tcfg = cfg.train
    size = image_size(info)
    output = storage.normalize(tcfg.output)
    if not storage.is_uri(output):
        os.makedirs(output, exist_ok=True)
    storage_path = storage.normalize(tcfg.storage_path or storage.join(output, "ray_results"))
    name = run_name(cfg)
    with ray_session(cfg.ray):
        resources.ensure_units("training", tcfg.num_workers, "worker", tcfg.cpus_per_worker,
                               1.0 if tcfg.use_gpu else 0.0, count_flag="--num-workers",
                               cpus_flag="--cpus-per-worker", wait_s=cfg.ray.resource_wait_s,
                               log=log)
        train_ds = split_dataset(tcfg.data, "train", mass_repeat=tcfg.mass_repeat)
        val_ds = split_dataset(tcfg.data, "val")
        n_train, n_val = train_ds.count(), val_ds.count()
        check_batches(n_train, tcfg.batch_size, tcfg.num_workers, tcfg.data)
        log(f"train: {n_train} training / {n_val} validation rows of {size} x {size}; "
            f"{tcfg.num_workers} worker(s) x batch {tcfg.batch_size}; run '{name}' in "
            f"{storage_path}")
        if not storage.is_uri(storage_path):
            _warn_local_storage(storage_path, tcfg.num_workers, log)
        progress = EpochProgress(output, tcfg.epochs, tensorboard=tcfg.tensorboard)
        trainer = build_trainer(cfg, size, info.get("parameters"),
                                {"train": train_ds, "val": val_ds}, name=name,
                                storage_path=storage_path, callbacks=[progress], live=True)
        result = fit(trainer)
    if result.error:
        raise result.error
    return publish_run(result, output, log)


def fit(trainer):
    """``trainer.fit()``, stopped by Ctrl+C or SIGTERM as every job is (KeyboardInterrupt).

    During ``fit`` Ray Train handles SIGINT itself: it aborts the run's workers gracefully,
    then ends the process with ``sys.exit``. That exit is turned back into the interrupt, so
    the job reports it as an interrupt (what was kept, how to continue) instead of ending
    with a bare exit code."""
    try:
        return trainer.fit()
    except SystemExit:
        raise KeyboardInterrupt from None


def publish_run(result, output: str, log: Callable[[str], None]) -> dict[str, Any]:
    """<output>/best (the best checkpoint), history.csv, curves.png and summary.json."""
    best_checkpoint, best = max(result.best_checkpoints, key=lambda cm: cm[1]["val_score"])
    with result.checkpoint.as_directory() as latest:
        history = ckpt.read_history(latest)
    with best_checkpoint.as_directory() as folder:
        ckpt.publish_best(folder, output)
    write_history(history, output)
    summary = {"best_epoch": best["epoch"], "best": {k: best[k] for k in (
        "val_loss", "val_iou", "val_dice", "val_pixel_accuracy", "val_fp_rate")},
        "epochs": len(history), "output": output}
    storage.write_bytes(storage.join(output, "summary.json"),
                        json.dumps(summary, indent=1).encode())
    log(f"train: best epoch {summary['best_epoch']} of {len(history)}: validation IoU "
        f"{best['val_iou']:.3f}, Dice {best['val_dice']:.3f} -> {output}/best")
    return summary
