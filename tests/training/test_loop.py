"""The training loop's parts on one process: the learning-rate schedule, checkpoint choice,
each step's inputs, and sharded validation on a real (tiny) replica."""

import numpy as np
import pytest

from mammoray.core.config import ConfigError, config_from_dict
from mammoray.training.loop import batch_inputs, learning_rate_at

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


class _Batches:
    """Validation rows in one numpy batch per ``batch_size`` rows, as Ray Data's
    ``iter_batches(batch_format="numpy")`` yields them."""

    def __init__(self, rows: dict):
        self.rows = rows

    def iter_batches(self, batch_size: int, batch_format: str):
        assert batch_format == "numpy"
        for start in range(0, len(self.rows["image_id"]), batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.rows.items()}


def test_validation_pictures_come_from_the_split_even_when_no_image_is_this_workers():
    """With validation sharded by image id, rank 0 may score none of a small split (the ids
    are salted at random per run); its pictures are still the split's first images, while its
    sums hold only its own share (none here)."""
    import numpy as np

    from mammoray.model.inputs import to_model_input
    from mammoray.training.loop import build_replica, validate_one_epoch, validation_rank

    size = 16
    ids = [f"img{i}" for i in range(40)]
    others = [i for i in ids if validation_rank(i, 2) == 1][:3]
    assert len(others) == 3
    images = [np.full((size, size), 1000 * (k + 1), np.uint16).tobytes() for k in range(3)]
    masks = [np.eye(size, dtype=np.uint8).tobytes() for _ in range(3)]
    rows = {"image_id": np.array(others, object), "image": np.array(images, object),
            "mask": np.array(masks, object)}
    cfg = config_from_dict({"model": {"levels": 2, "base_filters": 4},
                            "train": {"batch_size": 2, "loss": "bce"}})
    replica = build_replica(cfg, size)
    loss, sums, kept = validate_one_epoch(replica, _Batches(rows), cfg.train, size, keep=3,
                                          rank=0, world=2)
    assert sums.images == 0 and loss == 0.0
    x, y = kept
    assert x.shape == (3, size, size, 1) and y.shape == (3, size, size, 1)
    stored = np.stack([np.frombuffer(b, np.uint16).reshape(size, size) for b in images])
    np.testing.assert_array_equal(x, to_model_input(stored))  # the split's order
    np.testing.assert_array_equal(y[..., 0], np.broadcast_to(np.eye(size), (3, size, size)))
    # Rank 1 scores all three and keeps no pictures when none are asked for.
    _, sums1, none = validate_one_epoch(replica, _Batches(rows), cfg.train, size, rank=1, world=2)
    assert sums1.images == 3 and none is None


def test_the_epochs_whole_images_are_augmented_only_with_image_augment():
    """batch_inputs, what each training step takes: with train.image_augment off, exactly the
    stored images; on, the same images turned or flipped with their masks (some draw of 8
    moves the asymmetric mass), the draws repeated for the same epoch and rank (a resumed
    epoch) and different for another epoch."""
    from mammoray.model.inputs import decode_rows

    image = np.full((16, 16), 2000, np.uint16)
    image[2:5, 9:14] = 60000
    mask = (image == 60000).astype(np.uint8)
    batch = {"image": np.array([image.tobytes()] * 8, object),
             "mask": np.array([mask.tobytes()] * 8, object)}
    stored_x, stored_y = decode_rows(batch["image"], batch["mask"], 16)

    rows, plain = batch_inputs(config_from_dict({"train": {"batch_size": 8}}).train, 16, 0)
    x, y = plain(batch)
    assert rows == 8 and np.array_equal(x, stored_x) and np.array_equal(y, stored_y)

    tcfg = config_from_dict({"train": {"batch_size": 8, "image_augment": True}}).train
    x, y = batch_inputs(tcfg, 16, epoch=3, rank=1)[1](batch)
    assert np.array_equal(x[..., 0] > 0.5, y[..., 0] > 0.5)
    assert any(not np.array_equal(y[i], stored_y[i]) for i in range(8))
    again, _ = batch_inputs(tcfg, 16, epoch=3, rank=1)[1](batch)
    other, _ = batch_inputs(tcfg, 16, epoch=4, rank=1)[1](batch)
    assert np.array_equal(again, x) and not np.array_equal(other, x)

    # train.augment_geometry reaches the workers' draws: with chest_wall the mass at the
    # right (columns 9-13) is never mirrored left-right, and some draws mirror it up-down.
    tcfg = config_from_dict({"train": {"batch_size": 8, "image_augment": True,
                                       "augment_geometry": "chest_wall"}}).train
    ys = np.concatenate([batch_inputs(tcfg, 16, epoch=e)[1](batch)[1] for e in range(10)])
    assert all(np.nonzero(m[..., 0])[1].mean() > 9 for m in ys)
    assert any(np.array_equal(m, stored_y[0][::-1]) for m in ys)

    # train.augment_zoom reaches them too, for whole images and patches alike: at a zoom of
    # 1.5 a turned 15-px mass covers about 34 px (at most about 18 with the default 0.9-1.1).
    centred = np.zeros((16, 16), np.uint8)
    centred[6:9, 6:11] = 1  # inside the frame at that zoom
    batch = {"image": np.array([np.where(centred, 60000, 2000).astype(np.uint16).tobytes()] * 8,
                               object), "mask": np.array([centred.tobytes()] * 8, object)}
    for extra in ({"image_augment": True}, {"patch_size": 16, "foreground_fraction": 1.0}):
        tcfg = config_from_dict({"train": {"batch_size": 8, "augment_geometry": "chest_wall",
                                           "augment_zoom": [1.5, 1.5], **extra}}).train
        ys = np.concatenate([batch_inputs(tcfg, 16, epoch=e)[1](batch)[1] for e in range(4)])
        areas = ys.sum(axis=(1, 2, 3))
        assert set(areas[areas != 15]) and all(28 <= a <= 40 for a in areas if a != 15), extra

    # train.augment_elastic reaches them as well: with d4 alone every mask is one of the
    # block's 8 symmetries; with the elastic step always on, some are none of them.
    square = np.zeros((64, 64), np.uint8)
    square[20:40, 16:44] = 1
    symmetries = [np.rot90(m, k) for m in (square, square[::-1]) for k in range(4)]
    batch = {"image": np.array([np.where(square, 60000, 2000).astype(np.uint16).tobytes()] * 8,
                               object), "mask": np.array([square.tobytes()] * 8, object)}
    for elastic, extra in ((0.0, {"image_augment": True}), (1.0, {"image_augment": True}),
                           (1.0, {"patch_size": 64, "foreground_fraction": 1.0})):
        tcfg = config_from_dict({"train": {"batch_size": 8, "augment_elastic": elastic,
                                           **extra}}).train
        ys = batch_inputs(tcfg, 64, epoch=0)[1](batch)[1][..., 0].astype(np.uint8)
        plain = [any(np.array_equal(m, s) for s in symmetries) for m in ys]
        assert all(plain) if elastic == 0 else not any(plain), (elastic, extra)


def test_the_moving_average_is_validated_checkpointed_and_restored(tmp_path):
    """train.ema_momentum 0.5: after three steps the average is w1 / 4 + w2 / 4 + w3 / 2 (the
    first step sets it to w1). Inside ``averaged`` the model holds it, and a checkpoint written
    there restores both: the trained weights to go on training, the average to validate."""
    import tensorflow as tf

    from mammoray.model import checkpoint as ckpt
    from mammoray.training.loop import build_replica, restore_from

    size = 16
    cfg = config_from_dict({"model": {"levels": 2, "base_filters": 4},
                            "train": {"batch_size": 2, "loss": "bce", "learning_rate": 0.01,
                                      "ema_momentum": 0.5}})
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((2, size, size, 1), np.float32))
    y = tf.constant((rng.random((2, size, size, 1)) > 0.7).astype(np.float32))

    def weights(replica):
        return [v.numpy().astype(np.float64) for v in replica.model.trainable_variables]

    replica = build_replica(cfg, size)
    steps = []
    for _ in range(3):
        replica.strategy.run(replica.train_step, args=(x, y))
        steps.append(weights(replica))
    w1, w2, w3 = steps
    average = [a / 4 + b / 4 + c / 2 for a, b, c in zip(w1, w2, w3)]
    assert max(np.abs(a - c).max() for a, c in zip(average, w3)) > 1e-4  # they differ
    with replica.averaged():
        for got, want in zip(weights(replica), average):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        ckpt.write_checkpoint(str(tmp_path), replica.model, cfg.to_dict(), size, None)
        ckpt.save_state(str(tmp_path), replica.optimizer, [{"epoch": 1}])
    for got, want in zip(weights(replica), w3):
        np.testing.assert_array_equal(got, want)
    fresh = build_replica(cfg, size)
    assert restore_from(fresh, str(tmp_path)) == [{"epoch": 1}]
    for got, want in zip(weights(fresh), w3):
        np.testing.assert_array_equal(got, want)
    with fresh.averaged():
        for got, want in zip(weights(fresh), average):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # Adam's moments came back too: one more step moves both replicas alike.
    for r in (replica, fresh):
        r.strategy.run(r.train_step, args=(x, y))
    for got, want in zip(weights(fresh), weights(replica)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_deep_supervision_trains_extra_heads_that_checkpoints_restore_and_the_model_omits(
        tmp_path):
    """model.deep_supervision 1: the training steps call a model with a second, half-size
    head; the saved model has the one full-size output; a checkpoint restores the head's
    weights and Adam's moments for it (one more step moves a restored replica as the
    original)."""
    import keras
    import tensorflow as tf

    from mammoray.model import checkpoint as ckpt
    from mammoray.training.loop import build_replica, restore_from

    size = 16
    cfg = config_from_dict({"model": {"levels": 3, "base_filters": 4, "deep_supervision": 1},
                            "train": {"batch_size": 2, "loss": "bce_mass_dice",
                                      "learning_rate": 0.01}})
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((2, size, size, 1), np.float32))
    y = tf.constant((rng.random((2, size, size, 1)) > 0.7).astype(np.float32))
    replica = build_replica(cfg, size)
    heads = ckpt.training_heads(replica.model, replica.trainer)
    assert [tuple(v.shape) for v in heads] == [(1, 1, 8, 1), (1,)]  # aux1 on 8 filters
    assert [tuple(o.shape) for o in replica.trainer.outputs] == [(None, 16, 16, 1),
                                                                 (None, 8, 8, 1)]
    before = [v.numpy().copy() for v in heads]
    for _ in range(2):
        replica.strategy.run(replica.train_step, args=(x, y))
    assert all(np.abs(v.numpy() - b).max() > 0 for v, b in zip(heads, before))
    ckpt.write_checkpoint(str(tmp_path), replica.model, cfg.to_dict(), size, None)
    ckpt.save_state(str(tmp_path), replica.optimizer, [{"epoch": 1}], heads)
    saved = keras.models.load_model(str(tmp_path / "model.keras"), compile=False)
    assert [tuple(o.shape) for o in saved.outputs] == [(None, 16, 16, 1)]
    fresh = build_replica(cfg, size)
    assert restore_from(fresh, str(tmp_path)) == [{"epoch": 1}]
    for got, want in zip(fresh.trainer.weights, replica.trainer.weights, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    for r in (replica, fresh):
        r.strategy.run(r.train_step, args=(x, y))
    for got, want in zip(fresh.trainer.trainable_variables,
                         replica.trainer.trainable_variables, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="model.deep_supervision: 2 heads need that many "
                                          "decoder levels below the top; 3 levels allow 0 to 1"):
        config_from_dict({"model": {"levels": 3, "deep_supervision": 2}})
