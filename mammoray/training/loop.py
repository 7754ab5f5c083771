"""The per-worker training loop (runs in each Ray Train worker), in named steps as in Ray's own
``train_func`` examples: build the replica, then per epoch train one epoch, validate one epoch,
report (with a checkpoint from rank 0).

Why a custom training loop: Keras 3's ``model.fit`` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585, ray-project/ray#47464); see docs/decisions.md. The loop uses only
stable APIs: ``strategy.run`` of a ``tf.function`` step with ``tf.GradientTape``, gradients
all-reduced by the optimizer under the strategy, and ``strategy.reduce`` for metric sums.

Batches: each worker reads its shard of the training rows (Ray Train splits the dataset
equally; the last incomplete batch is dropped, so every worker runs the same number of steps,
which the per-step all-reduce requires). ``train.batch_size`` is per worker: the global batch
is ``batch_size x num_workers``, and the loss is scaled by 1 / num_workers so the summed
gradients are those of the global mean. With ``train.patch_size`` the model is built for
patches and each step takes ``batch_size`` patches drawn from ``batch_size /
patches_per_image`` rows (:mod:`mammoray.model.patches`).

Validation is sharded: each worker scores the validation images whose id hashes to its rank
(the same on every worker, whatever order its reader yields), and the loss and metric sums
are all-reduced, so the figures are those of the whole split, each image scored once. A
patch-trained model scores whole images as prediction will (:class:`~mammoray.model.window.
Segmenter`: sliding window or whole image, ``infer``).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from mammoray.core import faults
from mammoray.core.config import TrainConfig, config_from_dict
from mammoray.model import checkpoint as ckpt
from mammoray.model.metrics import SUM_NAMES, MetricSums

# A step's output vector: the batch loss (or loss x images for validation), then SUM_NAMES.
STEP_WIDTH = 1 + len(SUM_NAMES)


def learning_rate_at(tcfg: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based) under ``train.lr_schedule``. Set at the start
    of each epoch, so a resumed run continues the same schedule."""
    if tcfg.lr_schedule == "constant" or tcfg.epochs == 1:
        return tcfg.learning_rate
    low = tcfg.learning_rate * tcfg.min_lr_fraction
    progress = min(1.0, epoch / (tcfg.epochs - 1))
    return low + 0.5 * (tcfg.learning_rate - low) * (1.0 + math.cos(math.pi * progress))


@dataclass
class Replica:
    """One worker's model replica and its compiled steps."""

    model: Any
    optimizer: Any
    strategy: Any
    train_step: Any   # (x, y) -> [loss, *sums] of this replica's batch
    eval_step: Any    # (x, y) -> [loss x images, *sums]
    all_reduce: Any   # np vector -> the element-wise sum over all workers
    segmenter: Any    # whole validation images -> probabilities, as prediction computes them
    loss_fn: Any
    trainer: Any      # what train_step calls: model, or it with deep supervision's heads

    @property
    def adam(self):
        """The Adam optimizer (inside the float16 loss-scale wrapper when there is one)."""
        return getattr(self.optimizer, "inner_optimizer", self.optimizer)

    @property
    def ema(self) -> bool:
        """Whether the optimizer keeps a moving average of the weights."""
        return bool(self.adam.use_ema)

    def set_learning_rate(self, rate: float) -> None:
        self.adam.learning_rate.assign(rate)

    def swap_average(self) -> None:
        """Swap the model's trainable weights with the optimizer's moving averages of them
        (``train.ema_momentum``; Keras' ``use_ema``), one variable at a time, on every replica
        (an assignment outside ``strategy.run`` writes all of them). The averages are where
        keras.callbacks.SwapEMAWeights finds them; the optimizer was built on the training
        model's trainable variables, in their order."""
        import keras

        for var, average in zip(self.trainer.trainable_variables,
                                self.adam._model_variables_moving_average, strict=True):
            trained = keras.ops.convert_to_numpy(var)
            var.assign(keras.ops.convert_to_numpy(average))
            average.assign(trained)

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """Inside, the model holds the weights' moving average when there is one (validation,
        checkpoints and pictures see it); the trained weights come back on leaving."""
        if not self.ema:
            yield
            return
        self.swap_average()
        try:
            yield
        finally:
            self.swap_average()


def build_replica(cfg, size: int) -> Replica:
    """Strategy, dtype policy, U-Net (for ``size`` images, or for ``train.patch_size``
    patches) and Adam under the strategy's scope, and the tf.function steps (the loss scaled
    for the global batch; float16 also scales it against underflow)."""
    import keras
    import tensorflow as tf

    from mammoray.model.losses import LOSSES, deep_supervision_loss
    from mammoray.model.metrics import sums_tf
    from mammoray.model.runtime import precision_policy
    from mammoray.model.unet import build_unet, training_model
    from mammoray.model.window import Segmenter

    tcfg = cfg.train
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    policy = precision_policy(tcfg)
    keras.mixed_precision.set_global_policy(policy)
    mixed = policy == "mixed_float16"  # float16 needs loss scaling; bfloat16 does not
    keras.utils.set_random_seed(tcfg.seed)
    with strategy.scope():
        model = build_unet(cfg.model, tcfg.patch_size or size)
        trainer = training_model(model, cfg.model)
        optimizer = keras.optimizers.Adam(tcfg.learning_rate, use_ema=tcfg.ema_momentum > 0,
                                          ema_momentum=tcfg.ema_momentum or 0.99)
        if mixed:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    loss_fn = LOSSES[tcfg.loss]
    heads = cfg.model.deep_supervision
    train_loss = deep_supervision_loss(loss_fn, heads) if heads else loss_fn

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            out = trainer(x, training=True)
            loss = train_loss(y, out)
            scaled = loss / strategy.num_replicas_in_sync
            if mixed:
                scaled = optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled, trainer.trainable_variables)
        optimizer.apply_gradients(zip(grads, trainer.trainable_variables))
        return tf.concat([[loss], sums_tf(y, out[0] if heads else out)], axis=0)

    @tf.function
    def eval_step(x, y):
        prob = model(x, training=False)
        images = tf.cast(tf.shape(x)[0], tf.float32)
        return tf.concat([[loss_fn(y, prob) * images], sums_tf(y, prob)], axis=0)

    @tf.function
    def _all_reduce(value):
        return strategy.reduce(tf.distribute.ReduceOp.SUM,
                               strategy.run(tf.identity, args=(value,)), axis=None)

    def all_reduce(vector: np.ndarray) -> np.ndarray:
        return _all_reduce(tf.constant(vector, tf.float32)).numpy().astype(np.float64)

    return Replica(model, optimizer, strategy, train_step, eval_step, all_reduce,
                   Segmenter(model, cfg, size), loss_fn, trainer)


def restore(replica: Replica) -> list[dict[str, Any]]:
    """The history so far, with model and optimizer restored from Ray Train's checkpoint when
    this run resumes (a restarted worker group, or a run started again with the same name).
    With a moving average, checkpoints are written inside ``Replica.averaged``: the model file
    holds the average and the optimizer's average slots the trained weights, so they are
    swapped back."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return []
    with checkpoint.as_directory() as folder:
        return restore_from(replica, folder)


def restore_from(replica: Replica, folder: str) -> list[dict[str, Any]]:
    """``restore`` from a checkpoint folder."""
    with replica.strategy.scope():
        history = ckpt.load_state(folder, replica.model, replica.optimizer, replica.trainer)
    if replica.ema:
        replica.swap_average()
    return history


def batch_inputs(tcfg: TrainConfig, size: int, epoch: int,
                 rank: int = 0) -> tuple[int, Callable[[dict], tuple[np.ndarray, np.ndarray]]]:
    """(rows per step, a function from a batch of rows to the step's model input and truth)
    for one worker's epoch: whole images, augmented with ``train.image_augment``, or patches
    drawn by :class:`~mammoray.model.patches.PatchSampler`. Seeded by run, worker and epoch:
    a resumed epoch draws the same patches and transforms."""
    from mammoray.model.inputs import decode_rows, stored_rows
    from mammoray.model.patches import PatchSampler, augment_batch, augmenter

    seed = (tcfg.seed * 1_000_003 + epoch) * 1009 + rank
    if tcfg.patch_size:
        sampler = PatchSampler(tcfg.patch_size, tcfg.foreground_fraction,
                               tcfg.patches_per_image, augment=tcfg.patch_augment, seed=seed,
                               geometry=tcfg.augment_geometry, zoom=tcfg.augment_zoom,
                               intensity=tcfg.augment_intensity,
                               elastic=tcfg.augment_elastic)
        return (tcfg.batch_size // tcfg.patches_per_image,
                lambda batch: sampler(*stored_rows(batch["image"], batch["mask"], size)))
    transform = (augmenter(seed, tcfg.augment_geometry, tcfg.augment_zoom,
                           tcfg.augment_intensity, tcfg.augment_elastic, side=size)
                 if tcfg.image_augment else None)

    def whole(batch: dict) -> tuple[np.ndarray, np.ndarray]:
        x, y = decode_rows(batch["image"], batch["mask"], size)
        return (x, y) if transform is None else augment_batch(transform, x, y)

    return tcfg.batch_size, whole


def train_one_epoch(replica: Replica, shard, tcfg: TrainConfig, size: int,
                    epoch: int, rank: int = 0) -> tuple[float, MetricSums, float]:
    """One pass over this worker's shard; returns (mean loss, metric sums, seconds), both
    all-reduced over the workers. Patch training: the sums are those of the patches."""
    import tensorflow as tf

    t0 = time.time()
    total = np.zeros(STEP_WIDTH)
    steps = 0
    rows_per_step, inputs = batch_inputs(tcfg, size, epoch, rank)
    for batch in shard.iter_batches(batch_size=rows_per_step, batch_format="numpy",
                                    drop_last=True, local_shuffle_buffer_size=64,
                                    local_shuffle_seed=tcfg.seed + epoch):
        x, y = inputs(batch)
        out = replica.strategy.run(replica.train_step, args=(tf.constant(x), tf.constant(y)))
        total += replica.strategy.experimental_local_results(out)[0].numpy()
        steps += 1
    seconds = time.time() - t0
    # Loss: the mean over all workers' steps; sums: all workers' images.
    reduced = replica.all_reduce(np.concatenate([[total[0], steps], total[1:]]))
    return float(reduced[0] / max(1.0, reduced[1])), MetricSums.from_vector(reduced[2:]), seconds


def validation_rank(image_id: str, world: int) -> int:
    """The worker that scores a validation image: a hash of its id (stable across workers and
    runs, unlike the order a reader yields rows in)."""
    return zlib.crc32(image_id.encode()) % world


def validate_one_epoch(replica: Replica, val_data, tcfg: TrainConfig, size: int, *,
                       keep: int = 0, rank: int = 0,
                       world: int = 1) -> tuple[float, MetricSums, tuple | None]:
    """This worker's share of the validation split, the sums all-reduced over the workers;
    returns (mean loss, metric sums, the split's first ``keep`` images and truths as model
    input, whichever worker scores them, or None)."""
    import tensorflow as tf

    from mammoray.model.inputs import decode_rows
    from mammoray.model.metrics import sums_np

    total = np.zeros(STEP_WIDTH)
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    segmenter = replica.segmenter
    segmenter.sync()
    for batch in val_data.iter_batches(batch_size=tcfg.batch_size, batch_format="numpy"):
        wanted = keep - sum(len(k[0]) for k in kept)
        if wanted > 0:
            # Pictures come from the split's first images whichever worker scores them: with
            # random-salted ids a small split can hash wholly to other workers.
            kept.append(decode_rows(list(batch["image"][:wanted]), list(batch["mask"][:wanted]),
                                    size))
        mine = [i for i, image_id in enumerate(batch["image_id"])
                if validation_rank(str(image_id), world) == rank]
        if not mine:
            continue
        x, y = decode_rows([batch["image"][i] for i in mine], [batch["mask"][i] for i in mine],
                           size)
        if segmenter.windowed:
            prob = segmenter(x)
            loss = float(replica.loss_fn(tf.constant(y), tf.constant(prob)))
            total += np.concatenate([[loss * len(x)], sums_np(y, prob)])
        else:
            total += replica.eval_step(tf.constant(x), tf.constant(y)).numpy()
    total = replica.all_reduce(total)
    sums = MetricSums.from_vector(total[1:])
    first = None
    if kept:
        first = (np.concatenate([k[0] for k in kept])[:keep],
                 np.concatenate([k[1] for k in kept])[:keep])
    return float(total[0] / max(1.0, sums.images)), sums, first


def epoch_metrics(epoch: int, history: list[dict[str, Any]], train: tuple, val: tuple,
                  tcfg: TrainConfig, t0: float, started: float) -> dict[str, Any]:
    """The epoch's row of history.csv (and what Ray Train, Tune and ASHA see)."""
    (loss, train_sums, train_seconds), (val_loss, val_sums, _) = train, val
    metrics: dict[str, Any] = {
        "epoch": epoch + 1, "loss": loss, "val_loss": val_loss,
        "train_images": int(train_sums.images), "val_images": int(val_sums.images),
        "train_seconds": round(train_seconds, 3),
        "learning_rate": learning_rate_at(tcfg, epoch),
        "seconds": round(time.time() - t0, 2), "time": round(time.time(), 3),
        "worker_started": round(started, 3)}
    metrics.update(train_sums.result())
    metrics.update({f"val_{k}": v for k, v in val_sums.result().items()})
    # Ray keeps checkpoints by val_score; a NaN (no mass in validation) must still compare.
    metrics["val_score"] = (metrics["val_iou"] if not math.isnan(metrics["val_iou"])
                            else -metrics["val_loss"])
    # The best so far: what a search ranks trials by (a trial that peaked early is not judged
    # by a worse last epoch).
    metrics["best_val_score"] = max([h["val_score"] for h in history] + [metrics["val_score"]])
    return metrics


def wants_checkpoint(tcfg: TrainConfig, history: list[dict[str, Any]]) -> bool:
    """Whether the epoch just ended (the last of ``history``) gets a checkpoint: every
    ``train.checkpoint_every`` epochs, at a new best validation score, and at the last epoch."""
    epoch = int(history[-1]["epoch"])
    return (epoch % tcfg.checkpoint_every == 0 or epoch == tcfg.epochs
            or history[-1]["val_score"] >= history[-1]["best_val_score"])


def report_epoch(replica: Replica, metrics: dict[str, Any], history: list[dict[str, Any]],
                 config: dict[str, Any], size: int, rank: int, checkpoint: bool) -> None:
    """``ray.train.report`` on every worker (it is a barrier); rank 0 adds the checkpoint
    when there is one to save."""
    import ray.train

    if rank != 0 or not checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        ckpt.write_checkpoint(folder, replica.model, config["config"], size,
                              config.get("preprocessing"))
        ckpt.save_state(folder, replica.optimizer, history,
                        ckpt.training_heads(replica.model, replica.trainer))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function. ``config``: ``config`` (the experiment config as a dict),
    ``size`` (input side), ``preprocessing`` (the dataset's parameters, saved with checkpoints)
    and ``faults`` (:mod:`mammoray.core.faults`, tests only)."""
    started = time.time()
    import ray.train

    from mammoray.core.ray_session import quiet_logs
    from mammoray.model.runtime import configure_tensorflow

    quiet_logs()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the per-epoch reads
    cfg = config_from_dict(config["config"])
    size, tcfg = int(config["size"]), cfg.train
    configure_tensorflow(tcfg.cpus_per_worker, tcfg.use_gpu)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    print(f"train: worker rank {rank} of {world} on node "
          f"{ray.get_runtime_context().get_node_id()[:12]} ({ray.util.get_node_ip_address()})",
          flush=True)
    replica = build_replica(cfg, size)
    history = restore(replica)
    shard, val_data = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    injected = config.get("faults") or []
    live = LiveReport.start(config, cfg, rank, restored=history)
    for epoch in range(len(history), tcfg.epochs):
        replica.set_learning_rate(learning_rate_at(tcfg, epoch))
        if injected:
            faults.fire(injected, "train.epoch", epoch=epoch + 1, rank=rank)
        t0 = time.time()
        train = train_one_epoch(replica, shard, tcfg, size, epoch, rank)
        with replica.averaged():
            val = validate_one_epoch(replica, val_data, tcfg, size,
                                     keep=live.images_due(epoch), rank=rank, world=world)
            history.append(epoch_metrics(epoch, history, train, val, tcfg, t0, started))
            report_epoch(replica, live.metrics(history[-1], replica.segmenter, val[2]),
                         history, config, size, rank, wants_checkpoint(tcfg, history))
        live.log_mlflow(history[-1])
    live.end()


@dataclass
class LiveReport:
    """What rank 0 adds to its reports for the driver's progress callback
    (:mod:`mammoray.training.progress`; jobs.train only, not search trials): the history
    restored from a checkpoint with the first report, validation pictures every
    ``train.tensorboard_images_every`` epochs; and every epoch's metrics to MLflow when
    ``train.mlflow_tracking_uri`` is set (Ray's ``setup_mlflow``, on rank 0)."""

    enabled: bool
    images_every: int
    images: int
    restored: list[dict[str, Any]] | None
    mlflow: Any = None

    @classmethod
    def start(cls, config: dict[str, Any], cfg, rank: int,
              restored: list[dict[str, Any]]) -> "LiveReport":
        tcfg = cfg.train
        enabled = bool(config.get("live")) and rank == 0
        report = cls(enabled=enabled, images_every=tcfg.tensorboard_images_every
                     if tcfg.tensorboard else 0, images=tcfg.tensorboard_images,
                     restored=list(restored) if restored else None)
        if enabled and tcfg.mlflow_tracking_uri:
            from mammoray.training.progress import start_mlflow

            report.mlflow = start_mlflow(cfg, config.get("run_name") or "train")
        return report

    def images_due(self, epoch: int) -> int:
        """Validation images to keep this epoch (0-based) for pictures."""
        due = self.enabled and self.images_every and (epoch + 1) % self.images_every == 0
        return self.images if due else 0

    def metrics(self, row: dict[str, Any], model, kept) -> dict[str, Any]:
        if not self.enabled:
            return row
        from mammoray.training.progress import OVERLAYS, RESTORED, validation_pictures

        out = dict(row)
        if self.restored is not None:
            out[RESTORED], self.restored = self.restored, None
        if kept is not None:
            out[OVERLAYS] = validation_pictures(model, *kept)
        return out

    def log_mlflow(self, row: dict[str, Any]) -> None:
        if self.mlflow is not None:
            self.mlflow.log_metrics({k: float(v) for k, v in row.items()
                                     if isinstance(v, (int, float)) and math.isfinite(v)
                                     and k not in ("epoch", "time", "worker_started")},
                                    step=int(row["epoch"]))

    def end(self) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run()
