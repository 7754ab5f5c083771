"""The checkpoint format, in one place: written by training, published as ``<output>/best``,
read by evaluation and prediction, shipped to inference actors on any node.

A checkpoint folder holds:
- ``model.keras``: the Keras model (``keras.models.load_model`` opens it): the weights, once;
- ``config.json``: ``{"config": the resolved experiment config, "size": input side,
  "preprocessing": the dataset's preprocessing parameters}``: what ``jobs.predict`` applies
  to new DICOMs;
- in Ray Train's checkpoints only (to resume): ``optimizer.npz`` (the optimizer's variables:
  Adam's two slots per weight and its step, and the weights of deep supervision's training-only
  heads; the model's weights themselves come from ``model.keras``) and ``history.json`` (the
  epochs so far).

A published checkpoint (``<output>/best``) is a folder of :mod:`mammoray.core.storage` (a
local path or a URI), published only when complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from mammoray.core import storage
from mammoray.core.config import ConfigError, DataConfig, ExperimentConfig, config_from_dict

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
STATE_FILE = "optimizer.npz"
HISTORY_FILE = "history.json"
PUBLISHED_FILES = (MODEL_FILE, CONFIG_FILE)


# ------------------------------------------------------------------------------ writing

def write_checkpoint(folder: str, model, config: dict[str, Any], size: int,
                     preprocessing: dict[str, Any] | None) -> None:
    """The published part of a checkpoint: the Keras model file (a standard Keras model:
    the fused batch normalisation is saved as Keras' own layer) and config.json."""
    from mammoray.model.batchnorm import standard_layers

    with standard_layers(model):
        model.save(os.path.join(folder, MODEL_FILE))
    with open(os.path.join(folder, CONFIG_FILE), "w") as fh:
        json.dump({"config": config, "size": size, "preprocessing": preprocessing}, fh,
                  indent=1)


def training_heads(model, trainer) -> list:
    """The weights the training model has beyond the saved model (deep supervision's heads),
    in the training model's order."""
    own = {id(v) for v in model.weights}
    return [v for v in trainer.weights if id(v) not in own]


def save_state(folder: str, optimizer, history: list[dict[str, Any]],
               heads: list | tuple = ()) -> None:
    """What a resumed run needs besides ``model.keras``: the optimizer's variables, the
    training-only ``heads`` (:func:`training_heads`) and the history (the model's weights are
    not stored a second time)."""
    arrays = {f"o{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    arrays.update({f"h{i}": np.asarray(v.numpy()) for i, v in enumerate(heads)})
    np.savez(os.path.join(folder, STATE_FILE), **arrays)
    with open(os.path.join(folder, HISTORY_FILE), "w") as fh:
        json.dump(history, fh)


def load_state(folder: str, model, optimizer, trainer=None) -> list[dict[str, Any]]:
    """Restore a checkpoint's weights (from ``model.keras``), the training model's own heads
    and the optimizer variables into a built model (``trainer``: the training model, when it
    is not ``model``) and optimizer; returns the history."""
    trainer = model if trainer is None else trainer
    model.load_weights(os.path.join(folder, MODEL_FILE))
    optimizer.build(trainer.trainable_variables)
    with np.load(os.path.join(folder, STATE_FILE)) as state:
        for i, var in enumerate(training_heads(model, trainer)):
            var.assign(state[f"h{i}"])
        for i, var in enumerate(optimizer.variables):
            var.assign(state[f"o{i}"])
    return read_history(folder)


def read_history(folder: str) -> list[dict[str, Any]]:
    with open(os.path.join(folder, HISTORY_FILE)) as fh:
        return json.load(fh)


def publish_best(checkpoint_folder: str, output: str) -> str:
    """Copy a (local) checkpoint's model and config to ``<output>/best`` (a local folder or a
    URI), published only when complete; returns the published folder."""
    with storage.StagedOutput.create(storage.join(output, "best"), overwrite=True) as staged:
        for name in PUBLISHED_FILES:
            with open(os.path.join(checkpoint_folder, name), "rb") as fh:
                storage.write_bytes(staged.path(name), fh.read())
    return staged.final


# ------------------------------------------------------------------------------ reading

def check_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint's config.json, or a clear error naming --checkpoint (a local folder or
    a URI)."""
    path = storage.normalize(path)
    missing = [f for f in PUBLISHED_FILES if not storage.exists(storage.join(path, f))]
    if missing:
        raise ConfigError(f"--checkpoint {path}: not a checkpoint folder (missing "
                          f"{', '.join(missing)}); give <train output>/best")
    try:
        storage.require_complete(path, "--checkpoint", "checkpoint")
    except storage.IncompleteOutput as exc:
        raise ConfigError(str(exc)) from None
    return json.loads(storage.read_bytes(storage.join(path, CONFIG_FILE)))


def load_checkpoint_model(path: str):
    """(Keras model, ExperimentConfig, input size) of a checkpoint folder; its batch
    normalisation computed by the fused kernel, as in training."""
    import keras

    from mammoray.model.batchnorm import use_fused

    with open(os.path.join(path, CONFIG_FILE)) as fh:
        meta = json.load(fh)
    model = use_fused(keras.models.load_model(os.path.join(path, MODEL_FILE), compile=False))
    return model, config_from_dict(meta["config"]), int(meta["size"])


def checkpoint_data_config(path: str) -> DataConfig:
    """The preprocessing settings of the dataset a checkpoint was trained on (dataset.json's
    parameters, saved with the checkpoint): what jobs.predict applies to new DICOMs."""
    with open(os.path.join(path, CONFIG_FILE)) as fh:
        meta = json.load(fh)
    params = dict(meta.get("preprocessing") or meta["config"]["data"])
    # Checkpoints from before data.breast_only were trained on whole crops.
    params.setdefault("breast_only", False)
    # Only what shapes an image; paths and sources (whose test lists are not written) stay.
    known = {f.name for f in dataclasses.fields(DataConfig)} - {"sources", "input", "output",
                                                                 "overwrite"}
    return config_from_dict({"data": {k: v for k, v in params.items() if k in known}}).data


def checkpoint_config(path: str) -> ExperimentConfig:
    """The experiment config a checkpoint was trained with."""
    with open(os.path.join(path, CONFIG_FILE)) as fh:
        return config_from_dict(json.load(fh)["config"])


# ---------------------------------------------------------------- shipping to actors

def share_checkpoint(path: str):
    """The checkpoint's published files in Ray's object store: actors on any node load it from
    there, while the folder itself is usually on the driver's node only (where the training job
    wrote it)."""
    import ray

    path = storage.normalize(path)
    return ray.put({name: storage.read_bytes(storage.join(path, name))
                    for name in PUBLISHED_FILES})


class LocalCheckpoint:
    """``with LocalCheckpoint(shared) as folder:`` a local folder of a checkpoint: a local path
    as it is, or a temporary copy of one on object storage (a URI) or shared through Ray's
    object store (an object reference from :func:`share_checkpoint`)."""

    def __init__(self, shared) -> None:
        self.shared, self.folder = shared, None

    def __enter__(self) -> str:
        import ray

        if isinstance(self.shared, str) and not storage.is_uri(self.shared):
            return self.shared
        if isinstance(self.shared, str):
            files = {name: storage.read_bytes(storage.join(self.shared, name))
                     for name in PUBLISHED_FILES}
        else:
            files = (ray.get(self.shared) if isinstance(self.shared, ray.ObjectRef)
                     else self.shared)
        self.folder = tempfile.mkdtemp(prefix="mammoray-ckpt-")
        for name, data in files.items():
            with open(os.path.join(self.folder, name), "wb") as fh:
                fh.write(data)
        return self.folder

    def __exit__(self, *exc) -> None:
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
