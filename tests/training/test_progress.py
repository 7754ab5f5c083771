"""The progress callback on hand-made epoch rows: the console line, history.csv rewritten per
epoch, a restarted worker group's rows replaced, TensorBoard events read back."""

from __future__ import annotations

import csv
import glob
import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.unit


def row(epoch: int, val_iou: float, seconds: float = 10.0) -> dict:
    return {"epoch": epoch, "loss": 1.0 / epoch, "val_loss": 1.1 / epoch, "dice": 0.1 * epoch,
            "val_dice": 0.2 * epoch, "iou": 0.05 * epoch, "val_iou": val_iou,
            "pixel_accuracy": 0.9, "val_pixel_accuracy": 0.91, "fp_rate": 0.5,
            "val_fp_rate": 0.25, "learning_rate": 1e-3, "seconds": seconds,
            "val_score": val_iou}


def rows_of(folder) -> list[dict]:
    with open(os.path.join(folder, "history.csv")) as fh:
        return list(csv.DictReader(fh))


def events(folder) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars in ``folder`` (every event file), read with TensorFlow's own
    reader: tag -> [(step, value)] in file order."""
    import tensorflow as tf

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_epoch_line_says_what_a_user_watches():
    from mammoray.training.progress import epoch_line

    line = epoch_line(row(3, 0.42, seconds=41.25), 10, 41.25, {"val_iou": 0.5, "epoch": 2})
    assert line == ("epoch 3/10: loss 0.333, val loss 0.367, val Dice 0.600, IoU 0.420, FP "
                    "images 0.250; 41.2 s/epoch, 4m49s left; best val IoU 0.500 (epoch 2)")


def test_history_and_events_follow_the_run_and_a_restart(tmp_path, capsys):
    import tensorflow as tf

    from mammoray.training.progress import OVERLAYS, RESTORED, EpochProgress, encode_picture

    out = tmp_path / "run"
    progress = EpochProgress(str(out), 4)
    progress.on_epoch(row(1, 0.1))
    assert [r["epoch"] for r in rows_of(out)] == ["1"]  # written while the run goes on
    assert (out / "curves.png").stat().st_size > 10000
    picture = np.zeros((16, 16, 3), np.uint8)
    picture[4:8, 4:8, 1] = 200
    progress.on_epoch({**row(2, 0.3), OVERLAYS: [encode_picture(picture)] * 2})
    progress.on_epoch(row(3, 0.2))
    # The worker group restarts from epoch 2's checkpoint: epoch 3 is done again.
    progress.on_epoch({**row(3, 0.25), RESTORED: [row(1, 0.1), row(2, 0.3)]})
    progress.close()
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/4", "epoch 2/4", "epoch 3/4",
                                                       "epoch 3/4"]
    assert lines[-1].endswith("best val IoU 0.300 (epoch 2)")
    history = rows_of(out)
    assert [(r["epoch"], r["val_iou"]) for r in history] == [("1", "0.1"), ("2", "0.3"),
                                                              ("3", "0.25")]
    assert OVERLAYS not in history[1] and RESTORED not in history[2]
    scalars = events(out / "tensorboard")
    assert scalars["iou/validation"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.3)),
                                         (3, pytest.approx(0.2)), (3, pytest.approx(0.25))]
    assert scalars["loss/train"][0] == (1, pytest.approx(1.0))
    assert {"dice/train", "dice/validation", "fp_rate/validation", "run/learning_rate",
            "pixel_accuracy/train"} <= set(scalars)
    images = [(e.step, v.tag, v.image.height, v.image.width)
              for path in sorted(glob.glob(str(out / "tensorboard" / "events.out.tfevents.*")))
              for e in tf.compat.v1.train.summary_iterator(path) for v in e.summary.value
              if v.HasField("image")]
    assert images == [(2, "validation/overlays", 16, 32)]  # two 16 x 16 pictures side by side
    # The restart opened a new event file that purges epochs >= 3 of the earlier one, so
    # TensorBoard shows epoch 3 once, as redone.
    assert len(glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))) == 2


def test_each_epoch_is_on_disk_when_its_report_returns(tmp_path):
    """Ray Train has no end-of-run hook: the controller can exit right after the last report,
    so that epoch's events must be in the file before on_epoch returns (never closed here).
    A restarted run's file starts with a session start at the epoch redone (TensorBoard's
    purge of the earlier file's later steps)."""
    import tensorflow as tf

    from mammoray.training.progress import RESTORED, EpochProgress

    out = tmp_path / "run"
    progress = EpochProgress(str(out), 2)
    progress.on_epoch(row(1, 0.1))
    progress.on_epoch(row(2, 0.4))
    assert events(out / "tensorboard")["iou/validation"] == [(1, pytest.approx(0.1)),
                                                             (2, pytest.approx(0.4))]
    progress.on_epoch({**row(2, 0.5), RESTORED: [row(1, 0.1)]})
    files = sorted(glob.glob(str(out / "tensorboard" / "events.out.tfevents.*")),
                   key=os.path.getmtime)
    starts = [(e.step, e.session_log.status) for e in tf.compat.v1.train.summary_iterator(files[-1])
              if e.HasField("session_log")]
    assert starts == [(2, tf.compat.v1.SessionLog.START)]
    assert events(out / "tensorboard")["iou/validation"][-1] == (2, pytest.approx(0.5))


def test_events_for_an_output_uri_are_copied_each_epoch_and_the_local_copy_goes_at_the_end(
        tmp_path):
    """An output given as a URI (object storage; here file://) gets its events through a
    local folder copied up after every epoch; that folder is removed after the last epoch
    (before, one was left in the temp folder per run)."""
    from mammoray.training.progress import EpochProgress

    out = tmp_path / "run"
    (out / "tensorboard").mkdir(parents=True)  # object storage needs no folders; file:// does
    progress = EpochProgress(f"file://{out}", 2)
    progress.on_epoch(row(1, 0.1))
    local = progress._local_events
    assert local and os.path.isdir(local) and not local.startswith(str(out))
    assert events(out / "tensorboard")["iou/validation"] == [(1, pytest.approx(0.1))]
    progress.on_epoch(row(2, 0.4))
    assert not os.path.exists(local)
    assert events(out / "tensorboard")["iou/validation"] == [(1, pytest.approx(0.1)),
                                                             (2, pytest.approx(0.4))]
    assert [r["epoch"] for r in rows_of(out)] == ["1", "2"]


def test_validation_pictures_outline_truth_and_prediction():
    import keras

    from mammoray.training.progress import decode_pictures, validation_pictures

    inp = keras.Input((32, 32, 1))
    # A fixed model: probability 1 where the image is bright (> 0.7), 0 elsewhere.
    out = keras.layers.Conv2D(1, 1, activation="sigmoid",
                              kernel_initializer=keras.initializers.Constant(100.0),
                              bias_initializer=keras.initializers.Constant(-70.0))(inp)
    model = keras.Model(inp, out)
    x = np.zeros((1, 32, 32, 1), np.float32)
    x[0, 4:12, 4:12] = 1.0       # predicted there
    y = np.zeros_like(x)
    y[0, 20:28, 20:28] = 1.0     # the truth is elsewhere
    pictures = validation_pictures(model, x, y)
    json.dumps(pictures)  # a report's metrics must be JSON
    [picture] = decode_pictures(pictures)
    assert picture.shape == (32, 32, 3) and picture.dtype == np.uint8
    red = (picture[..., 0] > 200) & (picture[..., 1] < 100)
    green = (picture[..., 1] > 150) & (picture[..., 0] < 100)
    assert red[4:12, 4:12].any() and not red[16:, 16:].any()
    assert green[20:28, 20:28].any() and not green[:16, :16].any()
