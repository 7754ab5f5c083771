"""Whole images through a model trained on patches: a sliding window with Gaussian blending,
or the whole image in one pass (``infer.mode``).

Sliding window (nnU-Net's): windows of the patch side, ``overlap`` of it shared with each
neighbour; the last window of a row or column is aligned with the image's edge, so the image
is covered without padding. Each window's probabilities are weighted by a Gaussian centred on
the window (sigma = ``sigma_scale`` x patch; its zeros raised to its smallest non-zero value,
so every pixel has weight) that trusts a window's centre more than its edges, where the
network saw less context; the blended probability is sum(w x p) / sum(w) per pixel, so the
weights at each pixel are normalised to 1 whatever the overlap.

Whole: the network is fully convolutional, so the patch-trained weights are put in the same
model built for the whole image (same layers, other input size) and the image goes through
once.

:class:`Segmenter` is what evaluation, prediction, the validation of patch training and the
progress pictures call: ``segmenter(x)`` like a Keras model, for any model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def describe_inference(cfg, size: int, patch: int) -> str:
    """How a model taking ``patch``-px inputs predicts ``size`` x ``size`` images, in words
    (prediction JSON, the evaluation protocol)."""
    if patch == size:
        return f"whole {size} x {size} images"
    infer = cfg.infer
    if infer.mode == "whole":
        return f"whole {size} x {size} images through the weights of {patch}-px patch training"
    return (f"sliding {patch}-px windows over {size} x {size} images (overlap "
            f"{infer.overlap:g}, Gaussian sigma {infer.sigma_scale:g} x patch)")


def window_starts(length: int, patch: int, step: int) -> list[int]:
    """Start offsets covering ``length`` with windows of ``patch`` every ``step``; the last
    one ends at ``length``."""
    if patch >= length:
        return [0]
    count = math.ceil((length - patch) / step) + 1
    starts = [min(i * step, length - patch) for i in range(count)]
    return sorted(set(starts))


def gaussian_weights(patch: int, sigma_scale: float) -> np.ndarray:
    """(patch, patch) float32 Gaussian importance map, 1 at the centre, no zeros."""
    centre = (patch - 1) / 2.0
    axis = np.exp(-0.5 * ((np.arange(patch) - centre) / (sigma_scale * patch)) ** 2)
    weights = np.outer(axis, axis).astype(np.float32)
    weights /= weights.max()
    smallest = weights[weights > 0].min()
    weights[weights == 0] = smallest
    return weights


def sliding_window(predict, images: np.ndarray, patch: int, *, overlap: float = 0.5,
                   sigma_scale: float = 0.125, batch_size: int = 4) -> np.ndarray:
    """(N, H, W, 1) model input -> (N, H, W) float32 blended probabilities. ``predict`` maps
    (B, patch, patch, 1) float32 windows to (B, patch, patch) float32 probabilities."""
    n, height, width = images.shape[:3]
    step = max(1, int(round(patch * (1.0 - overlap))))
    corners = [(top, left) for top in window_starts(height, patch, step)
               for left in window_starts(width, patch, step)]
    weights = gaussian_weights(patch, sigma_scale)
    total = np.zeros((n, height, width), np.float32)
    norm = np.zeros((height, width), np.float32)
    for top, left in corners:
        norm[top:top + patch, left:left + patch] += weights
    windows = [(i, top, left) for i in range(n) for top, left in corners]
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        x = np.stack([images[i, top:top + patch, left:left + patch] for i, top, left in chunk])
        prob = predict(x)
        for (i, top, left), p in zip(chunk, prob):
            total[i, top:top + patch, left:left + patch] += p * weights
    return total / norm


class Segmenter:
    """Probabilities for whole images of ``size`` from any checkpoint's model: as they are
    when the model takes ``size``; else by ``infer.mode`` (see the module's docstring).
    Called like a Keras model: ``segmenter(x, training=False)`` -> (N, S, S, 1)."""

    def __init__(self, model, cfg, size: int) -> None:
        self.model, self.cfg, self.size = model, cfg, size
        self.patch = int(model.input_shape[1])
        self._whole = None
        self._predict = None

    @property
    def windowed(self) -> bool:
        return self.patch != self.size

    def describe(self) -> str:
        return describe_inference(self.cfg, self.size, self.patch)

    def sync(self) -> None:
        """Take the model's current weights (training changes them between validations)."""
        if self._whole is not None:
            self._whole.set_weights(self.model.get_weights())

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if not self.windowed:
            return np.asarray(self.model(x, training=False), np.float32)
        infer = self.cfg.infer
        if infer.mode == "whole":
            return np.asarray(self._whole_model()(x, training=False), np.float32)
        prob = sliding_window(self._window_predict(), np.asarray(x, np.float32), self.patch,
                              overlap=infer.overlap, sigma_scale=infer.sigma_scale,
                              batch_size=infer.batch_size)
        return prob[..., None]

    def _whole_model(self):
        if self._whole is None:
            self._whole = resized_model(self.model, self.size)
        return self._whole

    def _window_predict(self):
        if self._predict is None:
            import tensorflow as tf

            model = self.model
            call = tf.function(lambda w: model(w, training=False), reduce_retracing=True)

            def predict(windows: np.ndarray) -> np.ndarray:
                return np.asarray(call(tf.constant(windows)), np.float32)[..., 0]

            self._predict = predict
        return self._predict


def with_infer(cfg, infer: dict[str, Any] | None):
    """``cfg`` with its ``infer`` keys replaced by ``infer`` (a job's ``--set infer.*``),
    checked like a config file's (a bad value names ``infer.<key>``)."""
    if not infer:
        return cfg
    from mammoray.core.config import config_from_dict

    tree = cfg.to_dict()
    tree["infer"] = {**tree["infer"], **infer}
    return config_from_dict(tree)


def check_infer(infer: dict[str, Any] | None) -> None:
    """Stop a job before any work on a bad ``--set infer.*`` value."""
    from mammoray.core.config import config_from_dict

    config_from_dict({"infer": dict(infer or {})})


def resized_model(model, size: int):
    """The same functional model (layers, dtype policies, weights) taking ``size`` x ``size``
    inputs: every layer of a fully convolutional network works at any size its poolings
    divide."""
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            shape = list(layer["config"]["batch_shape"])
            layer["config"]["batch_shape"] = [shape[0], size, size, *shape[3:]]
    resized = model.__class__.from_config(config)
    resized.set_weights(model.get_weights())
    return resized


def segmenter_of(folder: str, infer: dict[str, Any] | None = None
                 ) -> tuple[Segmenter, Any, int]:
    """(Segmenter, ExperimentConfig, image size) of a local checkpoint folder; ``infer``
    overrides the checkpoint's own ``infer`` keys."""
    from mammoray.model.checkpoint import load_checkpoint_model

    model, cfg, size = load_checkpoint_model(folder)
    cfg = with_infer(cfg, infer)
    return Segmenter(model, cfg, size), cfg, size
