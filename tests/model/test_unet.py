"""The U-Net builder: exact parameter counts, shapes, layer names, dropout, bad configs."""

import numpy as np
import pytest

from mammoray.core.config import ConfigError, ModelConfig, config_from_dict
from mammoray.model.unet import build_unet, check_input_size, count_trainable, dropout_rates

pytestmark = pytest.mark.unit


def test_standard_unet_has_31030593_parameters():
    model = build_unet(ModelConfig(levels=5, base_filters=64), 64)
    assert count_trainable(model) == 31_030_593


def test_seed_study_unet_has_497668417_parameters():
    import keras

    # The count does not depend on the input size; 64 x 64 keeps the test light. The weights
    # (2 GB) are never drawn: filling them took 13 s of this test, and only their shapes count.
    cfg = config_from_dict({"model": {"levels": 7, "base_filters": 64,
                                      "dropout": [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5]}}).model
    with keras.StatelessScope(initialize_variables=False):
        model = build_unet(cfg, 64)
    assert count_trainable(model) == 497_668_417
    rates = {layer.name: layer.rate for layer in model.layers if layer.name.endswith("_drop")}
    assert rates["enc0_drop"] == 0.1 and rates["enc6_drop"] == 0.5
    assert rates["dec0_drop"] == 0.1 and rates["dec5_drop"] == 0.5
    assert len(rates) == 7 + 6  # dropout in every level, encoder and decoder


@pytest.mark.parametrize("levels,filters,size,batch_norm", [
    (2, 4, 16, False), (3, 8, 32, True), (4, 2, 40, False)])
def test_shapes_and_names(levels, filters, size, batch_norm):
    model = build_unet(ModelConfig(levels=levels, base_filters=filters, batch_norm=batch_norm),
                       size)
    out = model(np.random.default_rng(0).random((2, size, size, 1)).astype("float32"))
    assert tuple(out.shape) == (2, size, size, 1)
    names = {layer.name for layer in model.layers}
    assert {f"enc{levels - 1}_conv2", "dec0_up", "dec0_concat", "dec0_conv1", "head"} <= names
    assert (f"enc0_bn1" in names) == batch_norm
    assert model.get_layer(f"enc{levels - 1}_conv2").filters == filters * 2 ** (levels - 1)


def test_small_count_by_hand():
    # 2 levels, 1 base filter: enc0 (1->1, 1->1: 10+10), enc1 (1->2, 2->2: 20+38),
    # dec0 up (2->1: 9), dec0 convs (2->1, 1->1: 19+10), head (1->1: 2) = 118.
    assert count_trainable(build_unet(ModelConfig(levels=2, base_filters=1), 8)) == 118


def test_input_size_must_divide():
    with pytest.raises(ConfigError, match=r"model.levels: 7 levels need an input size divisible "
                                          r"by 2\^6 = 64; the data is 100 x 100"):
        check_input_size(ModelConfig(levels=7), 100)


def test_dropout_one_value_for_all():
    assert dropout_rates(ModelConfig(levels=3, dropout=[0.2])) == [0.2, 0.2, 0.2]
