"""The fused batch normalisation: Keras' arithmetic (outputs, gradients, moving averages),
Keras' own code where the kernel does not apply, and checkpoints that stay standard Keras
models."""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from mammoray.core.config import ModelConfig
from mammoray.model import batchnorm
from mammoray.model import checkpoint as ckpt
from mammoray.model.batchnorm import BatchNormalization, kernel_dtype, standard_layers, use_fused
from mammoray.model.unet import build_unet
from mammoray.model.window import resized_model

pytestmark = pytest.mark.unit


def pair(shape, momentum=0.9, dtype=None):
    """Keras' layer and the fused one, built with the same non-trivial weights (``dtype``: a
    Keras dtype policy such as ``mixed_bfloat16``)."""
    rng = np.random.default_rng(1)
    weights = [rng.normal(1, 0.5, shape[-1]), rng.normal(0, 0.5, shape[-1]),
               np.full(shape[-1], 0.3), np.full(shape[-1], 2.0)]
    layers = (keras.layers.BatchNormalization(momentum=momentum, dtype=dtype),
              BatchNormalization(momentum=momentum, dtype=dtype))
    for layer in layers:
        layer.build(shape)
        layer.set_weights([w.astype("float32") for w in weights])
    return layers


def forward_backward(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * tf.sin(y))
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return y.numpy(), [g.numpy() for g in grads], [layer.moving_mean.numpy(),
                                                   layer.moving_variance.numpy()]


def test_training_step_matches_keras_outputs_gradients_and_moving_averages():
    x = tf.constant(np.random.default_rng(0).normal(2, 3, (4, 16, 16, 8)).astype("float32"))
    keras_bn, fused = pair(x.shape)
    y_k, grads_k, moving_k = forward_backward(keras_bn, x)
    y_f, grads_f, moving_f = forward_backward(fused, x)
    np.testing.assert_allclose(y_f, y_k, atol=1e-5)
    for g_f, g_k in zip(grads_f, grads_k):
        np.testing.assert_allclose(g_f, g_k, atol=1e-5 * np.abs(g_k).max())
    # Moving averages with the biased batch variance, as Keras: 0.9 * 2 + 0.1 * var(x)
    np.testing.assert_allclose(moving_f[1], moving_k[1], rtol=1e-6)
    np.testing.assert_allclose(moving_f[1], 0.9 * 2.0 + 0.1 * x.numpy().var(axis=(0, 1, 2)),
                               rtol=1e-5)
    np.testing.assert_allclose(moving_f[0], moving_k[0], atol=1e-6)
    # Inference uses the moving averages, as Keras does.
    np.testing.assert_allclose(fused(x, training=False).numpy(),
                               keras_bn(x, training=False).numpy(), atol=1e-5)


@pytest.mark.parametrize("channels", [4, 16])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_matches_keras(dtype, channels):
    # 4 channels: the kernel computes in float32 on a CPU; 16 in bfloat16 (kernel_dtype).
    x = tf.cast(np.random.default_rng(2).normal(0, 1, (2, 8, 8, channels)), dtype)
    keras_bn, fused = pair(x.shape, dtype=f"mixed_{dtype}")
    y_f = fused(x, training=True)
    assert y_f.dtype == x.dtype
    tol = 0.01 if dtype == "float16" else 0.04  # one unit in the last place near 4
    np.testing.assert_allclose(tf.cast(y_f, "float32").numpy(),
                               tf.cast(keras_bn(x, training=True), "float32").numpy(),
                               atol=tol)


def test_kernel_dtype_on_a_cpu_and_a_gpu(monkeypatch):
    # On a CPU, bfloat16 only with a multiple of 16 channels; float16 never; float32 always.
    assert not batchnorm._has_gpu()
    assert kernel_dtype("bfloat16", 16) == tf.bfloat16
    assert kernel_dtype("bfloat16", 64) == tf.bfloat16
    assert kernel_dtype("bfloat16", 8) == tf.float32
    assert kernel_dtype("bfloat16", 24) == tf.float32
    assert kernel_dtype("float16", 16) == tf.float32
    assert kernel_dtype("float32", 8) == tf.float32
    # On a GPU (cuDNN), 16-bit inputs as they are.
    monkeypatch.setattr(batchnorm, "_has_gpu", lambda: True)
    assert kernel_dtype("bfloat16", 8) == tf.bfloat16
    assert kernel_dtype("float16", 24) == tf.float16


def test_inputs_the_kernel_does_not_take_go_to_keras():
    # A 2-D input: Keras' own code (the fused kernel takes 4-D only), same results.
    x = tf.constant(np.random.default_rng(3).normal(1, 2, (32, 5)).astype("float32"))
    keras_bn, fused = pair(x.shape)
    assert not fused.fused(x)
    np.testing.assert_allclose(fused(x, training=True).numpy(),
                               keras_bn(x, training=True).numpy(), atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance.numpy(),
                               keras_bn.moving_variance.numpy(), rtol=1e-6)
    assert not BatchNormalization(axis=1).fused(tf.zeros((1, 2, 2, 2)))


def test_checkpoint_is_a_standard_keras_model_and_loads_fused(tmp_path):
    model = build_unet(ModelConfig(levels=2, base_filters=4, batch_norm=True), 16)
    x = np.random.default_rng(4).random((2, 16, 16, 1)).astype("float32")
    model(x, training=True)  # moving averages away from their initial values
    ckpt.write_checkpoint(str(tmp_path), model, {}, 16, None)
    assert all(type(layer) is not keras.layers.BatchNormalization for layer in model.layers)
    with zipfile.ZipFile(tmp_path / ckpt.MODEL_FILE) as zf:
        config = zf.read("config.json").decode()
    assert "mammoray" not in config  # nothing of this package in the saved architecture
    bn_classes = {(layer["module"], layer["class_name"])
                  for layer in json.loads(config)["config"]["layers"]
                  if layer["class_name"] == "BatchNormalization"}
    assert bn_classes == {("keras.layers", "BatchNormalization")}
    plain = keras.models.load_model(str(tmp_path / ckpt.MODEL_FILE), compile=False)
    assert {type(layer) for layer in plain.layers} >= {keras.layers.BatchNormalization}
    fused = use_fused(keras.models.load_model(str(tmp_path / ckpt.MODEL_FILE), compile=False))
    assert BatchNormalization in {type(layer) for layer in fused.layers}
    expected = model(x, training=False).numpy()
    np.testing.assert_allclose(plain(x, training=False).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(fused(x, training=False).numpy(), expected, atol=1e-5)


def test_weights_of_either_layer_load_into_the_other(tmp_path):
    """Checkpoints from before the fused layer resume into today's model: the weights' paths
    in a .keras file are the same for both classes."""
    model = build_unet(ModelConfig(levels=2, base_filters=4, batch_norm=True), 16)
    x = np.random.default_rng(5).random((2, 16, 16, 1)).astype("float32")
    model(x, training=True)
    with standard_layers(model):
        model.save(str(tmp_path / "old.keras"))  # what a checkpoint of before held
    fresh = build_unet(ModelConfig(levels=2, base_filters=4, batch_norm=True), 16)
    fresh.load_weights(str(tmp_path / "old.keras"))
    np.testing.assert_array_equal(fresh.get_layer("enc0_bn1").moving_variance.numpy(),
                                  model.get_layer("enc0_bn1").moving_variance.numpy())
    np.testing.assert_allclose(fresh(x, training=False).numpy(),
                               model(x, training=False).numpy(), atol=1e-6)


def test_a_model_rebuilt_from_its_config_keeps_the_fused_layers():
    """What whole-image inference of a patch-trained model does (``resized_model``)."""
    model = build_unet(ModelConfig(levels=2, base_filters=4, batch_norm=True), 16)
    x = np.random.default_rng(6).random((1, 32, 32, 1)).astype("float32")
    model(x[:, :16, :16], training=True)
    resized = resized_model(model, 32)
    assert type(resized.get_layer("enc0_bn1")) is BatchNormalization
    built = build_unet(ModelConfig(levels=2, base_filters=4, batch_norm=True), 32)
    built.set_weights(model.get_weights())
    np.testing.assert_allclose(resized(x, training=False).numpy(),
                               built(x, training=False).numpy(), atol=1e-6)
