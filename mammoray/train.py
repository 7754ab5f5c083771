"""Distributed U-Net training on Ray Train (TensorflowTrainer + MultiWorkerMirroredStrategy).

Why a custom training loop: Keras 3's ``model.fit`` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585, ray-project/ray#47464). Legacy Keras 2 (``tf-keras``) would need the
full ``tensorflow`` wheel and an environment variable set before TensorFlow is imported in
every process; patching Keras internals breaks with any release. The loop below uses only
stable APIs: ``strategy.run`` of a ``tf.function`` step with ``tf.GradientTape``, gradients
all-reduced by the optimizer under the strategy, and ``strategy.reduce`` for metric sums. All
version-sensitive Ray/TensorFlow calls live in this module.

Batches: each worker reads its shard of the training rows (Ray Train splits the dataset
equally; the last incomplete batch is dropped, so every worker runs the same number of steps,
which the per-step all-reduce requires). ``train.batch_size`` is per worker: the global batch
is ``batch_size x num_workers``, and the loss is scaled by 1 / num_workers so the summed
gradients are those of the global mean. Every worker evaluates the whole validation split
(validation is not split, so no image is dropped to even out shards).

Checkpoints: every epoch, worker 0 reports a checkpoint holding ``model.keras`` (opens with
``keras.models.load_model``), ``config.json`` (the resolved config and the input size),
``state.npz`` (model and optimizer variables, to resume) and ``history.json``; Ray keeps the
best by validation IoU and the latest. A run with the same name and storage resumes from its
latest checkpoint; ``FailureConfig(max_failures)`` restarts a failed worker group from it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mammoray import storage
from mammoray.config import ConfigError, DataConfig, ExperimentConfig, config_from_dict
from mammoray.metrics import METRIC_NAMES, MetricSums

UINT16_MAX = 65535.0
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"


class TrainError(RuntimeError):
    """The training job cannot run (missing dataset, empty split); says what to fix."""


# ----------------------------------------------------------------------------- data

def read_dataset_json(data: str) -> dict[str, Any]:
    path = storage.join(storage.normalize(data), "dataset.json")
    if not storage.exists(path):
        raise TrainError(f"--data {data}: no dataset.json; give the output folder of "
                         f"jobs.preprocess")
    return json.loads(storage.read_bytes(path))


def read_rows(data: str, columns: list[str], *, v2: bool = False):
    """The ``columns`` of a preprocessed dataset's rows (``<data>/data``) as a Ray Dataset.

    Read with Ray Data's V1 Parquet reader unless ``v2`` (Ray 2.60's default V2 reader: a
    ListFiles task, then ReadFiles, which ``benchmarks/read.py`` compares): reading a training
    split took 1.55 s with V2 against 0.51 s with V1 on a local Ray, and 13.97 s against 0.72 s
    from a job on the two-node test cluster (medians; README). The switch is read at
    ``read_parquet`` time only, so it is restored at once.
    """
    import ray

    ctx = ray.data.DataContext.get_current()
    previous, ctx.use_datasource_v2 = ctx.use_datasource_v2, v2
    try:
        return ray.data.read_parquet(storage.join(storage.normalize(data), "data"),
                                     columns=columns)
    finally:
        ctx.use_datasource_v2 = previous


def split_dataset(data: str, split: str, *, v2: bool = False):
    """The rows of one split as a Ray Dataset (image/mask bytes only), materialized: training
    workers then iterate without needing CPUs for read tasks. ``v2``: see ``read_rows``."""
    from ray.data.expressions import col

    ds = read_rows(data, ["image", "mask", "split"], v2=v2)
    ds = ds.filter(expr=col("split") == split).select_columns(["image", "mask"])
    return ds.materialize()


def decode_batch(batch: dict[str, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row bytes -> (N, size, size, 1) float32 images in [0, 1] and 0/1 float32 masks."""
    n = len(batch["image"])
    images = np.empty((n, size, size, 1), np.float32)
    masks = np.empty((n, size, size, 1), np.float32)
    for i in range(n):
        images[i, ..., 0] = np.frombuffer(batch["image"][i], np.uint16).reshape(size, size)
        masks[i, ..., 0] = np.frombuffer(batch["mask"][i], np.uint8).reshape(size, size)
    images *= np.float32(1.0 / UINT16_MAX)
    return images, masks


# --------------------------------------------------------------------------- worker

def _sums_from_vector(v: np.ndarray) -> MetricSums:
    """MetricSums from the 7 sums the worker step returns (see ``sums_tf``), in that order."""
    return MetricSums(images=int(round(v[0])), accuracy_sum=float(v[1]),
                      mass_images=int(round(v[2])), iou_sum=float(v[3]), dice_sum=float(v[4]),
                      empty_images=int(round(v[5])), false_positive_images=int(round(v[6])))


def _save_state(model, optimizer, path: str) -> None:
    arrays = {f"m{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    arrays.update({f"o{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    np.savez(path, **arrays)


def _load_state(model, optimizer, path: str) -> None:
    with np.load(path) as state:
        model.set_weights([state[f"m{i}"] for i in range(len(model.get_weights()))])
        optimizer.build(model.trainable_variables)
        for i, var in enumerate(optimizer.variables):
            var.assign(state[f"o{i}"])


def cpu_has_bf16() -> bool:
    """Whether this machine's CPU computes bfloat16 natively (AVX-512 BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_policy(tcfg, cpu_bf16: bool | None = None) -> str:
    """The Keras dtype policy of ``train.mixed_precision`` on this worker: float16 with GPUs
    (``auto`` with ``use_gpu``, or ``on``); bfloat16 with ``bf16``, or ``auto`` on a CPU that
    computes bfloat16 natively (1.36x the float32 step rate here; emulated bfloat16 would be
    slower, so other CPUs stay float32); else float32. Variables stay float32 in both mixed
    policies."""
    mode = tcfg.mixed_precision
    if mode == "on" or (mode == "auto" and tcfg.use_gpu):
        return "mixed_float16"
    if mode == "bf16" or (mode == "auto" and (cpu_has_bf16() if cpu_bf16 is None
                                              else cpu_bf16)):
        return "mixed_bfloat16"
    return "float32"


def write_checkpoint(folder: str, model, config: dict[str, Any], size: int,
                     preprocessing: dict[str, Any] | None) -> None:
    """What jobs.evaluate and jobs.predict need: the Keras model file, the resolved config,
    the input size and the dataset's preprocessing parameters."""
    model.save(os.path.join(folder, MODEL_FILE))
    with open(os.path.join(folder, CONFIG_FILE), "w") as fh:
        json.dump({"config": config, "size": size, "preprocessing": preprocessing}, fh,
                  indent=1)


def learning_rate_at(tcfg, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based) under ``train.lr_schedule``. Set at the start
    of each epoch, so a resumed run continues the same schedule."""
    if tcfg.lr_schedule == "constant" or tcfg.epochs == 1:
        return tcfg.learning_rate
    low = tcfg.learning_rate * tcfg.min_lr_fraction
    progress = min(1.0, epoch / (tcfg.epochs - 1))
    return low + 0.5 * (tcfg.learning_rate - low) * (1.0 + math.cos(math.pi * progress))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The per-worker loop (runs in each Ray Train worker)."""
    started = time.time()
    import ray.train

    cfg = config_from_dict(config["config"])
    size = int(config["size"])
    tcfg = cfg.train
    from mammoray.inference import configure_tensorflow

    # TensorFlow ignores OMP_NUM_THREADS: its pools are sized to the worker's CPUs, or two
    # workers on two cores oversubscribe them.
    configure_tensorflow(tcfg.cpus_per_worker, tcfg.use_gpu)
    import keras
    import tensorflow as tf

    from mammoray.metrics import LOSSES, per_image_tf
    from mammoray.model import build_unet

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    node = ray.get_runtime_context().get_node_id()
    print(f"train: worker rank {rank} of {world} on node {node[:12]} "
          f"({ray.util.get_node_ip_address()})", flush=True)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    policy = precision_policy(tcfg)
    keras.mixed_precision.set_global_policy(policy)
    mixed = policy == "mixed_float16"  # float16 needs loss scaling; bfloat16 does not
    keras.utils.set_random_seed(tcfg.seed)
    with strategy.scope():
        model = build_unet(cfg.model, size)
        optimizer = keras.optimizers.Adam(tcfg.learning_rate)
        if mixed:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    loss_fn = LOSSES[tcfg.loss]

    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            with strategy.scope():
                _load_state(model, optimizer, os.path.join(d, "state.npz"))
            with open(os.path.join(d, "history.json")) as fh:
                history = json.load(fh)
        start_epoch = len(history)

    def sums_tf(truth, prob):
        parts = per_image_tf(truth, prob)
        has = parts["truth"] > 0
        union = parts["truth"] + parts["pred"] - parts["inter"]
        zero = tf.zeros_like(parts["inter"])
        iou = tf.where(has, parts["inter"] / tf.maximum(union, 1.0), zero)
        dice = tf.where(has, 2 * parts["inter"] / tf.maximum(parts["truth"] + parts["pred"],
                                                              1.0), zero)
        empty = tf.logical_not(has)
        return tf.stack([
            tf.cast(tf.size(parts["inter"]), tf.float32),
            tf.reduce_sum(parts["correct"] / parts["pixels"]),
            tf.reduce_sum(tf.cast(has, tf.float32)), tf.reduce_sum(iou), tf.reduce_sum(dice),
            tf.reduce_sum(tf.cast(empty, tf.float32)),
            tf.reduce_sum(tf.cast(tf.logical_and(empty, parts["pred"] > 0), tf.float32))])

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            prob = model(x, training=True)
            loss = loss_fn(y, prob)
            scaled = loss / strategy.num_replicas_in_sync
            if mixed:
                scaled = optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return tf.concat([[loss], sums_tf(y, prob)], axis=0)

    @tf.function
    def eval_step(x, y):
        prob = model(x, training=False)
        return tf.concat([[loss_fn(y, prob) * tf.cast(tf.shape(x)[0], tf.float32)],
                          sums_tf(y, prob)], axis=0)

    @tf.function
    def _all_reduce(value):
        return strategy.reduce(tf.distribute.ReduceOp.SUM,
                               strategy.run(tf.identity, args=(value,)), axis=None)

    def all_reduce(vector: np.ndarray) -> np.ndarray:
        return _all_reduce(tf.constant(vector, tf.float32)).numpy().astype(np.float64)

    train_shard = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val")
    for epoch in range(start_epoch, tcfg.epochs):
        getattr(optimizer, "inner_optimizer", optimizer).learning_rate.assign(
            learning_rate_at(tcfg, epoch))
        if epoch == tcfg.crash_once_at_epoch and rank == min(1, world - 1):
            marker = config["crash_marker"]
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)  # a worker dies: Ray Train restarts the group from the checkpoint
        t0 = time.time()
        train_total = np.zeros(8)
        steps = 0
        for batch in train_shard.iter_batches(batch_size=tcfg.batch_size, batch_format="numpy",
                                              drop_last=True, local_shuffle_buffer_size=64,
                                              local_shuffle_seed=tcfg.seed + epoch):
            x, y = decode_batch(batch, size)
            out = strategy.run(train_step, args=(tf.constant(x), tf.constant(y)))
            train_total += strategy.experimental_local_results(out)[0].numpy()
            steps += 1
        train_seconds = time.time() - t0
        # Loss: mean over this worker's steps; sums: this worker's images. Then all workers.
        train_vec = all_reduce(np.concatenate([[train_total[0], steps], train_total[1:]]))
        val_total = np.zeros(8)
        for batch in val_data.iter_batches(batch_size=tcfg.batch_size, batch_format="numpy"):
            x, y = decode_batch(batch, size)
            val_total += eval_step(tf.constant(x), tf.constant(y)).numpy()
        train_sums, val_sums = _sums_from_vector(train_vec[2:]), _sums_from_vector(val_total[1:])
        metrics = {"epoch": epoch + 1,
                   "loss": float(train_vec[0] / max(1.0, train_vec[1])),
                   "val_loss": float(val_total[0] / max(1, val_sums.images)),
                   "train_images": train_sums.images, "val_images": val_sums.images,
                   "train_seconds": round(train_seconds, 3),
                   "learning_rate": learning_rate_at(tcfg, epoch),
                   "seconds": round(time.time() - t0, 2), "time": round(time.time(), 3),
                   "worker_started": round(started, 3)}
        metrics.update({k: v for k, v in train_sums.result().items()})
        metrics.update({f"val_{k}": v for k, v in val_sums.result().items()})
        # Ray keeps checkpoints by val_iou; a NaN (no mass in validation) must still compare.
        metrics["val_score"] = (metrics["val_iou"] if not math.isnan(metrics["val_iou"])
                                else -metrics["val_loss"])
        # The best so far: what a search ranks trials by (a trial that peaked early is not
        # judged by a worse last epoch).
        metrics["best_val_score"] = max([h["val_score"] for h in history]
                                        + [metrics["val_score"]])
        history.append(metrics)
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                write_checkpoint(d, model, config["config"], size, config.get("preprocessing"))
                _save_state(model, optimizer, os.path.join(d, "state.npz"))
                with open(os.path.join(d, "history.json"), "w") as fh:
                    json.dump(history, fh)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


# --------------------------------------------------------------------------- driver

def _run_name(cfg: ExperimentConfig) -> str:
    if cfg.train.run_name:
        return cfg.train.run_name
    base = os.path.basename(storage.normalize(cfg.train.output).rstrip("/")) or "run"
    return "train-" + re.sub(r"[^A-Za-z0-9_.-]", "_", base)


def check_train_config(cfg: ExperimentConfig, *, need_output: bool = True) -> dict[str, Any]:
    """Stop before any work on a bad path or a model the data cannot take; returns the
    dataset's dataset.json."""
    from mammoray.model import check_input_size

    tcfg = cfg.train
    if not tcfg.data:
        raise ConfigError("train.data: required (the jobs.preprocess output); pass --data DIR")
    if need_output and not tcfg.output:
        raise ConfigError("train.output: required (the training output); pass --output DIR")
    info = read_dataset_json(tcfg.data)
    check_input_size(cfg.model, int(info["image"]["height"]))
    return info


def write_history(history: list[dict[str, Any]], output: str) -> None:
    """history.csv (one row per epoch) and curves.png (accuracy, loss, IoU; train and val)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["epoch", "loss", "val_loss", *METRIC_NAMES,
               *(f"val_{m}" for m in METRIC_NAMES), "learning_rate", "train_images",
               "train_seconds", "seconds"]
    with open(os.path.join(output, "history.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (name, title) in zip(axes, (("pixel_accuracy", "pixel accuracy"),
                                        ("loss", "loss"), ("iou", "IoU (images with a mass)"))):
        ax.plot(epochs, [h[name] for h in history], marker="o", label="train")
        ax.plot(epochs, [h[f"val_{name}"] for h in history], marker="o", label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(output, "curves.png"), dpi=100)
    plt.close(fig)


def publish_best(best_dir: str, output: str) -> None:
    """Copy the best checkpoint's model and config to <output>/best (atomically)."""
    final = os.path.join(output, "best")
    partial = final + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    for name in (MODEL_FILE, CONFIG_FILE):
        shutil.copy2(os.path.join(best_dir, name), os.path.join(partial, name))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)


def build_trainer(cfg: ExperimentConfig, size: int, preprocessing: dict[str, Any] | None,
                  datasets: dict[str, Any], *, name: str, storage_path: str,
                  callbacks: list[Any] | None = None):
    """The TensorflowTrainer of one training run (jobs.train, and each jobs.tune trial):
    ``train.num_workers`` workers with ``train.cpus_per_worker`` CPUs (and a GPU each with
    ``train.use_gpu``), the "train" dataset split between them, checkpoints kept by
    validation IoU under ``storage_path/name``."""
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    tcfg = cfg.train
    loop_config = {"config": cfg.to_dict(), "size": size, "preprocessing": preprocessing,
                   "crash_marker": os.path.join(storage_path, f"{name}.crashed-once")}
    resources = {"CPU": tcfg.cpus_per_worker}
    if tcfg.use_gpu:
        resources["GPU"] = 1
    return TensorflowTrainer(
        train_loop_per_worker,
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


def run_training(cfg: ExperimentConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train with Ray Train; writes <output>/best, history.csv and curves.png."""
    import ray

    from mammoray.ray_env import init_ray

    info = check_train_config(cfg)
    tcfg = cfg.train
    size = int(info["image"]["height"])
    output = storage.normalize(tcfg.output)
    if storage.is_uri(output):
        raise ConfigError("train.output: must be a local folder (checkpoints may go to object "
                          "storage through train.storage_path)")
    os.makedirs(output, exist_ok=True)
    storage_path = tcfg.storage_path or os.path.join(output, "ray_results")
    name = _run_name(cfg)
    started = init_ray(cfg.ray)
    try:
        train_ds = split_dataset(tcfg.data, "train")
        val_ds = split_dataset(tcfg.data, "val")
        n_train, n_val = train_ds.count(), val_ds.count()
        if n_train < tcfg.batch_size * tcfg.num_workers:
            raise TrainError(f"--data {tcfg.data}: {n_train} training rows, fewer than one "
                             f"global batch ({tcfg.batch_size} x {tcfg.num_workers} workers)")
        log(f"train: {n_train} training / {n_val} validation rows of {size} x {size}; "
            f"{tcfg.num_workers} worker(s) x batch {tcfg.batch_size}; run '{name}' in "
            f"{storage_path}")
        if not storage.is_uri(storage_path):
            os.makedirs(storage_path, exist_ok=True)
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            if nodes > 1 and tcfg.num_workers > 1:
                log(f"train: warning: train.storage_path {storage_path} is a local path and "
                    f"this cluster has {nodes} nodes; workers on other nodes write their "
                    "checkpoints there too, so it must be the same shared folder on every node "
                    "(NFS, or one machine); otherwise set train.storage_path to s3://... or "
                    "gs://...")
        trainer = build_trainer(cfg, size, info.get("parameters"),
                                {"train": train_ds, "val": val_ds}, name=name,
                                storage_path=storage_path)
        result = trainer.fit()
    finally:
        if started:
            ray.shutdown()
    if result.error:
        raise result.error
    best = max(result.best_checkpoints, key=lambda cm: cm[1]["val_score"])
    with result.checkpoint.as_directory() as latest:
        with open(os.path.join(latest, "history.json")) as fh:
            history = json.load(fh)
    with best[0].as_directory() as best_dir:
        publish_best(best_dir, output)
    write_history(history, output)
    summary = {"best_epoch": best[1]["epoch"], "best": {k: best[1][k] for k in (
        "val_loss", "val_iou", "val_dice", "val_pixel_accuracy", "val_fp_rate")},
        "epochs": len(history), "output": output}
    with open(os.path.join(output, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    log(f"train: best epoch {summary['best_epoch']} of {len(history)}: validation IoU "
        f"{best[1]['val_iou']:.3f}, Dice {best[1]['val_dice']:.3f} -> {output}/best")
    return summary


def checkpoint_data_config(path: str) -> DataConfig:
    """The preprocessing settings of the dataset a checkpoint was trained on (dataset.json's
    parameters, saved with the checkpoint): what jobs.predict applies to new DICOMs."""
    with open(os.path.join(path, CONFIG_FILE)) as fh:
        meta = json.load(fh)
    params = meta.get("preprocessing") or meta["config"]["data"]
    # Only what shapes an image; paths and sources (whose test lists are not written) stay.
    known = {f.name for f in dataclasses.fields(DataConfig)} - {"sources", "input", "output",
                                                                 "overwrite"}
    return config_from_dict({"data": {k: v for k, v in params.items() if k in known}}).data


def load_checkpoint_model(path: str):
    """``keras.models.load_model`` of a checkpoint folder (<output>/best) and its config."""
    import keras

    with open(os.path.join(path, CONFIG_FILE)) as fh:
        meta = json.load(fh)
    model = keras.models.load_model(os.path.join(path, MODEL_FILE), compile=False)
    return model, config_from_dict(meta["config"]), int(meta["size"])

