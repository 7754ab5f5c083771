"""Keras' batch normalisation, computed by TensorFlow's fused kernel.

Keras 3 computes ``BatchNormalization`` from separate operations: it casts the input to
float32, takes the moments, normalises, and casts back (keras-team/keras-core#225: "BatchNorm
is slow", notably without XLA). On this project's CPUs that made up half of a U-Net training
step: 585 against 290 ms for the laptop U-Net's step (batch 4 of 256 x 256, bfloat16; 785
against 557 in float32; ``benchmarks/train_step.py``). The layer below is the same layer, with
the same weights, the same config and the same arithmetic, computed by one
``tf.compat.v1.nn.fused_batch_norm`` (FusedBatchNormV3, the kernel ``tf.keras`` used): in
float32 for the statistics whatever the input's dtype, as Keras does. The moving averages are
updated as Keras updates them (with the biased batch variance: the kernel returns the
unbiased one, which is rescaled).

On a CPU the kernel is fast in bfloat16 only for channel counts that are multiples of 16
(oneDNN's blocked layout): with 8 or 24 channels a training pass of one layer took 10-20 times
as long as in float32 (172 against 14 ms for 4 x 256 x 256 x 8), which made a U-Net of 8 base
filters train 2.1 times slower than with Keras' layer; float16 is slower than float32 at any
channel count. There the kernel takes the input in float32 (:func:`kernel_dtype`); a GPU
(cuDNN) takes 16-bit inputs as they are.

What the fused kernel does not cover (not 4-D, a channel axis other than the last,
``synchronized``, ``renorm``, a mask, no ``center`` or ``scale``) goes to Keras' own code.

Saved models stay standard Keras models: the class has Keras' name, so the weights' paths in
a ``.keras`` file are those of ``keras.layers.BatchNormalization`` either way (a checkpoint of
either loads into the other), and :func:`standard_layers` saves the layers as Keras' own, so
``keras.models.load_model`` opens a checkpoint without this package.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import keras
import tensorflow as tf

_FUSED_DTYPES = (tf.float32, tf.bfloat16, tf.float16)
_MIN_EPSILON = 1.001e-5  # the kernel's (cuDNN's) smallest: fused_batch_norm raises a smaller one


@functools.lru_cache(maxsize=1)
def _has_gpu() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


def kernel_dtype(dtype, channels: int) -> tf.DType:
    """The dtype the fused kernel computes a ``dtype`` input of ``channels`` in: as it is on a
    GPU and for float32; on a CPU float32 unless bfloat16 with a multiple of 16 channels (see
    the module's docstring)."""
    dtype = tf.as_dtype(dtype)
    if dtype == tf.float32 or _has_gpu():
        return dtype
    return dtype if dtype == tf.bfloat16 and channels % 16 == 0 else tf.float32


@keras.saving.register_keras_serializable(package="mammoray")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel (registered,
    so a model's config rebuilds it in this process: ``resized_model``, ``clone_model``)."""

    def fused(self, inputs, mask=None) -> bool:
        return (mask is None and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and self.center and self.scale and not self.renorm
                and not getattr(self, "synchronized", False) and self.epsilon >= _MIN_EPSILON
                and tf.as_dtype(inputs.dtype) in _FUSED_DTYPES)

    def call(self, inputs, training=None, mask=None):
        if not self.fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        gamma = tf.cast(self.gamma, tf.float32)
        beta = tf.cast(self.beta, tf.float32)
        inputs = tf.cast(inputs, kernel_dtype(inputs.dtype, int(inputs.shape[-1])))
        if training and self.trainable:
            y, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC",
                is_training=True)
            count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
            variance = unbiased * ((count - 1.0) / tf.maximum(count, 1.0))
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(self.moving_variance * momentum
                                        + variance * (1.0 - momentum))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
                data_format="NHWC", is_training=False)
        return tf.cast(y, self.compute_dtype)


def _layers(model) -> Iterator:
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


@contextlib.contextmanager
def standard_layers(model) -> Iterator[None]:
    """While inside, the model's fused layers are Keras' own class (the same weights and
    config; only the class changes): what ``model.save`` then writes is a standard Keras
    model."""
    layers = [layer for layer in _layers(model) if type(layer) is BatchNormalization]
    try:
        for layer in layers:
            layer.__class__ = keras.layers.BatchNormalization
        yield
    finally:
        for layer in layers:
            layer.__class__ = BatchNormalization


def use_fused(model):
    """A loaded model's Keras batch normalisation layers computed by the fused kernel (in
    place; returns the model)."""
    for layer in _layers(model):
        if type(layer) is keras.layers.BatchNormalization:
            layer.__class__ = BatchNormalization
    return model
