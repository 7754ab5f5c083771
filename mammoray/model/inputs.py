"""What the model takes and gives, in one place for training, evaluation and prediction alike
(so the three cannot drift apart): preprocessed uint16 images become float32 in [0, 1] with a
channel axis; the model's output is a (N, S, S) float32 probability map."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

UINT16_MAX = 65535.0


def to_model_input(images: np.ndarray) -> np.ndarray:
    """(S, S) or (N, S, S) uint16 preprocessed images -> (N, S, S, 1) float32 in [0, 1]."""
    if images.dtype != np.uint16:
        raise TypeError(f"expected preprocessed uint16 images, got {images.dtype}")
    x = images[None] if images.ndim == 2 else images
    return (x.astype(np.float32) * np.float32(1.0 / UINT16_MAX))[..., None]


def stored_rows(images: Sequence[bytes], masks: Sequence[bytes],
                size: int) -> tuple[np.ndarray, np.ndarray]:
    """Parquet rows' image/mask bytes -> (N, size, size) uint16 images and uint8 masks, as
    stored."""
    n = len(images)
    stored = np.empty((n, size, size), np.uint16)
    truth = np.empty((n, size, size), np.uint8)
    for i in range(n):
        stored[i] = np.frombuffer(images[i], np.uint16).reshape(size, size)
        truth[i] = np.frombuffer(masks[i], np.uint8).reshape(size, size)
    return stored, truth


def decode_rows(images: Sequence[bytes], masks: Sequence[bytes],
                size: int) -> tuple[np.ndarray, np.ndarray]:
    """Parquet rows' image/mask bytes (row-major (size, size) uint16 and uint8) -> the model's
    (N, size, size, 1) float32 input and the (N, size, size, 1) float32 0/1 truth."""
    stored, truth = stored_rows(images, masks, size)
    return to_model_input(stored), truth[..., None].astype(np.float32)


def predict_probabilities(model, x: np.ndarray) -> np.ndarray:
    """(N, S, S, 1) model input -> (N, S, S) float32 probabilities."""
    prob = model(x, training=False)
    return np.asarray(prob, dtype=np.float32)[..., 0]
