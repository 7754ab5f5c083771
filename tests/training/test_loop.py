"""The training loop's pure parts: the learning-rate schedule."""

import pytest

from mammoray.core.config import ConfigError, config_from_dict
from mammoray.training.loop import learning_rate_at

pytestmark = pytest.mark.unit


def test_learning_rate_schedules():
    const = config_from_dict({"train": {"learning_rate": 0.01, "epochs": 5}}).train
    assert [learning_rate_at(const, e) for e in range(5)] == [0.01] * 5
    cos = config_from_dict({"train": {"learning_rate": 0.01, "epochs": 5,
                                      "lr_schedule": "cosine", "min_lr_fraction": 0.1}}).train
    rates = [learning_rate_at(cos, e) for e in range(5)]
    assert rates[0] == pytest.approx(0.01) and rates[-1] == pytest.approx(0.001)
    assert rates[2] == pytest.approx(0.0055)  # halfway: the mean of the two ends
    assert all(a > b for a, b in zip(rates, rates[1:]))
    with pytest.raises(ConfigError, match="train.lr_schedule: 'step' is not allowed; "
                                          "choose one of 'constant', 'cosine'"):
        config_from_dict({"train": {"lr_schedule": "step"}})
