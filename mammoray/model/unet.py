"""The U-Net, built from a typed config as one pure function.

Level i (0-based) has ``base_filters * 2**i`` filters: two 3x3 convolutions with ReLU
('same' padding; optional batch normalisation before the ReLU: Keras' layer computed by
TensorFlow's fused kernel, :mod:`mammoray.model.batchnorm`), then dropout at that level's
rate. The encoder max-pools 2x2 between levels; the last level is the bottleneck. The decoder
up-samples with a 2x2 transposed convolution (stride 2) to the level's filters, concatenates
the encoder's skip, and applies the level's two convolutions and dropout. A 1x1 convolution
with a sigmoid gives the mass probability.

Layer names: ``enc{i}_conv{j}``, ``enc{i}_drop``, ``enc{i}_pool``, ``dec{i}_up``,
``dec{i}_concat``, ``dec{i}_conv{j}``, ``dec{i}_drop``, ``head``.

Deep supervision (``model.deep_supervision: k``, training only): :func:`training_model` adds
a 1x1 sigmoid head ``aux{i}`` on decoder level i = 1..k (1/2**i of the input side) to the same
layers; the model that is saved and predicts keeps the one output ``head``.

The seed study's model (1024 x 1024 x 1, 7 levels, 64 base filters) has 497,668,417 trainable
parameters; the standard 5-level, 64-filter U-Net has 31,030,593.
"""

from __future__ import annotations

import math

from mammoray.core.config import ConfigError, ModelConfig


def dropout_rates(cfg: ModelConfig) -> list[float]:
    """One dropout rate per level (a single configured value applies to every level)."""
    if len(cfg.dropout) == 1:
        return list(cfg.dropout) * cfg.levels
    return list(cfg.dropout)


def check_input_size(cfg: ModelConfig, size: int, patch_size: int = 0,
                     whole: bool = True) -> None:
    """The input side must halve cleanly at every pooling step: the patch side in patch
    training (and the image side too when whole images go through, ``infer.mode: whole``)."""
    factor = 2 ** (cfg.levels - 1)
    if patch_size:
        if patch_size > size:
            raise ConfigError(f"train.patch_size: {patch_size} is larger than the data's "
                              f"{size} x {size} images; allowed 0 (whole images) or up to "
                              f"{size}")
        if patch_size % factor:
            raise ConfigError(f"train.patch_size: {cfg.levels} levels need a patch side "
                              f"divisible by 2^{cfg.levels - 1} = {factor}, got {patch_size}")
        if not whole:
            return
    if size % factor:
        raise ConfigError(f"model.levels: {cfg.levels} levels need an input size divisible by "
                          f"2^{cfg.levels - 1} = {factor}; the data is {size} x {size} "
                          f"(use fewer levels or preprocess to a multiple of {factor})")


def _conv_block(x, filters: int, name: str, batch_norm: bool, rate: float, layers):
    from mammoray.model.batchnorm import BatchNormalization

    for j in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm,
                          kernel_initializer="he_normal", name=f"{name}_conv{j}")(x)
        if batch_norm:
            x = BatchNormalization(name=f"{name}_bn{j}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{j}")(x)
    if rate > 0:
        x = layers.Dropout(rate, name=f"{name}_drop")(x)
    return x


def build_unet(cfg: ModelConfig, size: int):
    """A compiled-free ``keras.Model`` mapping (N, size, size, 1) float32 in [0, 1] to
    (N, size, size, 1) mass probabilities."""
    import keras
    from keras import layers

    check_input_size(cfg, size)
    rates = dropout_rates(cfg)
    inputs = keras.Input((size, size, 1), name="image")
    skips = []
    x = inputs
    for i in range(cfg.levels):
        x = _conv_block(x, cfg.base_filters * 2 ** i, f"enc{i}", cfg.batch_norm, rates[i],
                        layers)
        if i < cfg.levels - 1:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"enc{i}_pool")(x)
    for i in range(cfg.levels - 2, -1, -1):
        filters = cfg.base_filters * 2 ** i
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{i}_up")(x)
        x = layers.Concatenate(name=f"dec{i}_concat")([x, skips[i]])
        x = _conv_block(x, filters, f"dec{i}", cfg.batch_norm, rates[i], layers)
    # The head stays float32 under mixed precision: a sigmoid in float16 saturates.
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="head")(x)
    return keras.Model(inputs, outputs, name=f"unet{cfg.levels}_{cfg.base_filters}")


def _block_output(model, name: str):
    """The output tensor of a level's block: its dropout, or its second activation."""
    names = {layer.name for layer in model.layers}
    return model.get_layer(f"{name}_drop" if f"{name}_drop" in names else f"{name}_relu2").output


def training_model(model, cfg: ModelConfig):
    """The model the training steps call: ``model`` itself, or with ``cfg.deep_supervision``
    a model of the same layers whose outputs are [``head``, ``aux1``, ..., ``aux{k}``] (the
    auxiliary heads' weights belong to it alone)."""
    if not cfg.deep_supervision:
        return model
    import keras
    from keras import layers

    aux = [layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name=f"aux{i}")(
        _block_output(model, f"dec{i}")) for i in range(1, cfg.deep_supervision + 1)]
    return keras.Model(model.inputs, [model.outputs[0], *aux], name=f"{model.name}_deep")


def count_trainable(model) -> int:
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))
