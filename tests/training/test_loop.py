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


def test_checkpoints_every_n_epochs_at_a_new_best_and_at_the_last_epoch():
    from mammoray.training.loop import wants_checkpoint

    tcfg = config_from_dict({"train": {"epochs": 7, "checkpoint_every": 3}}).train
    history, saved = [], []
    for epoch, score in enumerate([0.1, 0.3, 0.2, 0.25, 0.2, 0.4, 0.1], start=1):
        best = max([h["val_score"] for h in history] + [score])
        history.append({"epoch": epoch, "val_score": score, "best_val_score": best})
        if wants_checkpoint(tcfg, history):
            saved.append(epoch)
    # 1, 2 and 6 are new bests; 3 and 6 the every-3rd; 7 the last.
    assert saved == [1, 2, 3, 6, 7]
    every = config_from_dict({"train": {"epochs": 3}}).train
    assert all(wants_checkpoint(every, [{"epoch": e, "val_score": 0.0, "best_val_score": 1.0}])
               for e in (1, 2, 3))
