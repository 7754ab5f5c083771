"""Ray Train on a real local Ray (2 CPUs): 2 workers under MultiWorkerMirroredStrategy."""

from __future__ import annotations

import csv
import glob
import json
import os

import numpy as np
import pytest
from conftest import preprocessed

from mammoray.core.config import ConfigError, config_from_dict

pytestmark = pytest.mark.ray
SIZE = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory, local_ray):
    base = tmp_path_factory.mktemp("train")
    preprocessed(base, patients=6, seed=4, size=SIZE)
    return base


def train_cfg(base, output, model=None, **train):
    return config_from_dict({
        "model": {"levels": 3, "base_filters": 8, **(model or {})},
        "train": {"data": str(base / "ds"), "output": str(output), "epochs": 3,
                  "batch_size": 2, "num_workers": 2, "learning_rate": 0.003, "loss": "bce",
                  **train}})


def history(output):
    with open(os.path.join(output, "history.csv")) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(data):
    from mammoray.training.trainer import run_training

    out = data / "run"
    # image_augment: the whole-image augmentation runs on the Ray Train workers too.
    summary = run_training(train_cfg(data, out, tensorboard_images_every=2, image_augment=True,
                                     mlflow_tracking_uri=f"file:{data}/mlruns",
                                     mlflow_experiment="unit"), log=lambda _: None)
    return out, summary, history(out)


def test_split_rows_equal_the_parquet_files(data):
    """The V1-reader read of one split holds exactly that split's rows of the dataset's files,
    and leaves Ray Data's reader switch as it was."""
    import pyarrow.parquet as pq
    import ray

    from mammoray.core.dataset import split_dataset

    table = pq.read_table(data / "ds" / "data", columns=["image", "mask", "split"])
    before = ray.data.DataContext.get_current().use_datasource_v2
    for split in ("train", "val"):
        want = sorted(bytes(r["image"]) + bytes(r["mask"]) for r in table.to_pylist()
                      if r["split"] == split)
        got = sorted(bytes(r["image"]) + bytes(r["mask"])
                     for r in split_dataset(str(data / "ds"), split).take_all())
        assert want and got == want
    assert ray.data.DataContext.get_current().use_datasource_v2 == before


def test_mass_repeat_oversamples_the_training_rows_with_a_mass(data):
    """train.mass_repeat 3: each training row with a mass three times, the others once."""
    import collections

    import pyarrow.parquet as pq

    from mammoray.core.dataset import split_dataset

    table = pq.read_table(data / "ds" / "data", columns=["image_id", "split", "has_mass"])
    want = {r["image_id"]: 3 if r["has_mass"] else 1 for r in table.to_pylist()
            if r["split"] == "train"}
    assert 0 < sum(c == 3 for c in want.values()) < len(want)
    rows = split_dataset(str(data / "ds"), "train", mass_repeat=3).take_all()
    assert set(rows[0]) == {"image_id", "image", "mask"}
    assert collections.Counter(r["image_id"] for r in rows) == want


def test_two_workers_loss_falls(trained):
    out, summary, rows = trained
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0]
    for r in rows:
        assert 0.0 <= float(r["val_pixel_accuracy"]) <= 1.0
        assert 0.0 <= float(r["val_dice"]) <= 1.0 and 0.0 <= float(r["dice"]) <= 1.0
    assert os.path.exists(out / "curves.png") and os.path.getsize(out / "curves.png") > 10000
    assert summary["epochs"] == 3 and 1 <= summary["best_epoch"] <= 3


def test_tensorboard_and_mlflow_get_every_epoch(data, trained):
    """Events under <output>/tensorboard (scalars per epoch, validation pictures at epoch 2)
    and an MLflow run in the file: store with the same validation IoU per epoch."""
    import tensorflow as tf

    out, _, rows = trained
    scalars, images = {}, []
    for path in glob.glob(str(out / "tensorboard" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif value.HasField("image"):
                    images.append((event.step, value.tag))
    want = [(int(r["epoch"]), pytest.approx(float(r["val_iou"]), abs=1e-6)) for r in rows]
    assert sorted(scalars["iou/validation"]) == want
    assert images == [(2, "validation/overlays")]

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow

    client = mlflow.tracking.MlflowClient(f"file:{data}/mlruns")
    [run] = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert run.data.params["model.levels"] == "3"
    logged = client.get_metric_history(run.info.run_id, "val_iou")
    assert sorted((m.step, m.value) for m in logged) == want
    assert run.info.status == "FINISHED"


def test_best_checkpoint_reloads_and_predicts_like_its_weights(trained):
    import keras

    from mammoray.core.config import ModelConfig
    from mammoray.model import checkpoint as ckpt
    from mammoray.model.unet import build_unet

    out, summary, _ = trained
    model, cfg, size = ckpt.load_checkpoint_model(str(out / "best"))
    assert size == SIZE and cfg.model.levels == 3
    assert (out / "best" / "_COMPLETE").is_file()  # published whole
    same = keras.models.load_model(str(out / "best" / "model.keras"), compile=False)
    # The best epoch's Ray Train checkpoint, restored into a freshly built model and
    # optimizer as a resumed run restores it, predicts the same.
    states = [d for d in glob.glob(str(out / "ray_results" / "*" / "checkpoint_*"))
              if os.path.isdir(d) and len(json.load(open(os.path.join(d, "history.json"))))
              == summary["best_epoch"]]
    assert len(states) == 1
    # Built under the checkpoint's dtype policy (bfloat16 compute on CPUs that have it).
    policy = model.get_layer("enc0_conv1").dtype_policy.name
    keras.mixed_precision.set_global_policy(policy)
    try:
        fresh = build_unet(ModelConfig(levels=3, base_filters=8), SIZE)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    optimizer = keras.optimizers.Adam()
    history = ckpt.load_state(states[0], fresh, optimizer)
    assert len(history) == summary["best_epoch"]
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 1)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), fresh.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict(x, verbose=0), same.predict(x, verbose=0))
    # Lean: the weights are stored once (model.keras); the state file holds the optimizer's
    # variables only (Adam: two slots per weight, plus its step counter and learning rate).
    assert sorted(os.listdir(states[0])) == ["config.json", "history.json", "model.keras",
                                             "optimizer.npz"]
    with np.load(os.path.join(states[0], "optimizer.npz")) as state:
        assert len(state.files) == len(optimizer.variables)
        sizes = sorted(state[f].size for f in state.files)
    weights = sorted(int(np.prod(w.shape)) for w in fresh.trainable_weights)
    assert sizes[-2 * len(weights):] == sorted(weights + weights)


@pytest.mark.slow
def test_a_killed_worker_recovers_from_the_checkpoint(data, monkeypatch, tmp_path):
    from mammoray.core import faults
    from mammoray.training.trainer import run_training

    fault = tmp_path / "fault"
    monkeypatch.setenv(faults.ENV, json.dumps([{"at": "train.epoch", "action": "crash",
                                                "dir": str(fault), "epoch": 2, "rank": 1}]))
    out = data / "crash"
    # With a moving average of the weights: the restarted workers restore the trained weights
    # and the average from the checkpoint (swapped in it: see loop.restore); and with deep
    # supervision, whose extra head comes back from the optimizer state.
    summary = run_training(train_cfg(data, out, model={"deep_supervision": 1}, max_failures=1,
                                     ema_momentum=0.9), log=lambda _: None)
    # Worker 1 reached epoch 2 twice: it died there once, then the restarted group resumed
    # from epoch 1's checkpoint and went on.
    assert sorted(os.listdir(fault)) == ["arrival-1", "arrival-2", "fired"]
    assert [int(r["epoch"]) for r in history(out)] == [1, 2, 3]
    assert summary["epochs"] == 3
    import keras

    best = keras.models.load_model(os.path.join(out, "best", "model.keras"), compile=False)
    assert [tuple(o.shape) for o in best.outputs] == [(None, SIZE, SIZE, 1)]
    assert not any(layer.name.startswith("aux") for layer in best.layers)


def test_model_that_does_not_fit_the_data(data):
    from mammoray.training.trainer import run_training

    cfg = config_from_dict({"model": {"levels": 8},
                            "train": {"data": str(data / "ds"), "output": str(data / "x")}})
    with pytest.raises(ConfigError, match=r"model.levels: 8 levels need an input size "
                                          r"divisible by 2\^7 = 128; the data is 64 x 64"):
        run_training(cfg)
    assert not (data / "x").exists()


def test_cli_dry_run_and_errors(data, capsys):
    from jobs import train

    assert train.main(["--dry-run", "--data", str(data / "ds")]) == 0
    assert "trainable parameters: 31030593" in capsys.readouterr().out
    assert train.main(["--data", str(data / "nope"), "--output", str(data / "o")]) == 2
    assert "no dataset.json" in capsys.readouterr().err
    cfg = data / "bad.yaml"
    cfg.write_text("train:\n  epoch: 3\n")
    assert train.main(["--config", str(cfg)]) == 2
    assert "train.epoch: unknown key" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_stops_training_in_seconds_and_the_same_command_resumes(data, tmp_path):
    """A fault holds the worker at the start of epoch 2 (epoch 1's checkpoint saved); SIGTERM
    (as `ray job stop` sends) ends the job within 30 s with code 130 and how to continue; the
    same command then resumes from epoch 2."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO, job_env, start_held, stop

    config = tmp_path / "c.yaml"
    config.write_text("model: {levels: 3, base_filters: 8}\n"
                      "train: {epochs: 2, batch_size: 2, learning_rate: 0.003, loss: bce, "
                      "cpus_per_worker: 2}\n")
    out, hold, log = tmp_path / "run", tmp_path / "hold", tmp_path / "train.log"
    args = ["jobs.train", "--config", str(config), "--data", str(data / "ds"), "--output",
            str(out), "--num-cpus", "2"]
    proc = start_held(args, job_env({"at": "train.epoch", "action": "hold", "dir": str(hold),
                                     "epoch": 2}), hold, log, timeout=240)
    # Rank 0 has reported epoch 1's checkpoint; Ray Train's controller registers it (in its
    # snapshot) when it next polls the workers. Interrupt after that, not in the gap.
    deadline = time.time() + 60
    while time.time() < deadline and not registered_checkpoints(out / "ray_results"):
        time.sleep(0.2)
    assert registered_checkpoints(out / "ray_results") == 1, log.read_text()[-3000:]
    stopped = stop(proc, signal.SIGTERM)
    text = log.read_text()
    assert proc.returncode == 130 and stopped <= 30, (stopped, text[-3000:])
    assert "interrupted: the checkpoints saved so far are kept" in text
    # The progress callback wrote a line and history.csv for epoch 1 while the run went on.
    assert "epoch 1/2: loss " in text
    assert [int(r["epoch"]) for r in history(out)] == [1]
    assert not (out / "best").exists()
    [kept] = glob.glob(str(out / "ray_results" / "*" / "checkpoint_*" / "history.json"))
    epoch1 = json.load(open(kept))
    assert [h["epoch"] for h in epoch1] == [1]
    # Resumed with a fault that never fires and counts the starts of epoch 1: none.
    count = tmp_path / "epoch1"
    resumed = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=job_env(
        {"at": "train.epoch", "action": "hold", "dir": str(count), "epoch": 1, "arrival": 99}),
        capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    rows = history(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert not count.exists()  # it went on from epoch 1's checkpoint ...
    assert float(rows[0]["loss"]) == epoch1[0]["loss"]  # ... and kept epoch 1 as it was


def registered_checkpoints(storage_path) -> int:
    """The checkpoints Ray Train's controller has registered for the run under
    ``storage_path`` (its checkpoint manager's snapshot), 0 before the first."""
    found = 0
    for snapshot in storage_path.glob("*/checkpoint_manager_snapshot.json"):
        try:
            found += len(json.loads(snapshot.read_text()).get("checkpoint_results", []))
        except ValueError:  # being written
            pass
    return found


def test_patch_training_validates_as_prediction_does(data, tmp_path):
    """Two workers train on 32-px patches of the 64-px images; validation is sharded between
    them (each image scored once: val_images is the split's size) and goes through the
    sliding window, so the best epoch's validation figures are what jobs.evaluate computes
    with the published checkpoint on the same split."""
    import pyarrow.parquet as pq

    from mammoray.evaluation.job import EvaluateOptions, run_evaluation
    from mammoray.model import checkpoint as ckpt
    from mammoray.training.trainer import run_training

    out = tmp_path / "patches"
    summary = run_training(train_cfg(data, out, epochs=2, batch_size=4, patch_size=32,
                                     patches_per_image=2, foreground_fraction=0.5,
                                     tensorboard=False), log=lambda _: None)
    rows = history(out)
    table = pq.read_table(data / "ds" / "data", columns=["split", "augment_index"])
    n_val = sum(1 for s, a in zip(table["split"].to_pylist(), table["augment_index"].to_pylist())
                if s == "val" and a == 0)
    assert [int(r["val_images"]) for r in rows] == [n_val, n_val]
    model, cfg, size = ckpt.load_checkpoint_model(str(out / "best"))
    assert model.input_shape[1:3] == (32, 32) and size == SIZE and cfg.train.patch_size == 32
    result = run_evaluation(EvaluateOptions(checkpoint=str(out / "best"), data=str(data / "ds"),
                                            split="val", output=str(tmp_path / "eval"),
                                            threshold="0.5", bootstrap=10),
                            config_from_dict({}).ray, log=lambda _: None)
    assert result["protocol"]["inference"].startswith("sliding 32-px windows over 64 x 64")
    best = rows[summary["best_epoch"] - 1]
    assert result["figures"]["images"] == n_val
    # The same model and windows; only float rounding between the two runtimes differs.
    assert result["figures"]["mean_dice"] == pytest.approx(float(best["val_dice"]), abs=0.01,
                                                           nan_ok=True)
    assert result["figures"]["mean_iou"] == pytest.approx(float(best["val_iou"]), abs=0.01,
                                                          nan_ok=True)


def test_patch_config_errors_name_the_key(data):
    from mammoray.training.trainer import run_training

    for train, match in (({"patch_size": 128}, r"train.patch_size: 128 is larger than the "
                                               r"data's 64 x 64 images"),
                         ({"patch_size": 30}, r"train.patch_size: 3 levels need a patch side "
                                              r"divisible by 2\^2 = 4, got 30"),
                         ({"patch_size": 32, "batch_size": 3, "patches_per_image": 2},
                          r"train.batch_size: 3 patches per step is not a multiple of "
                          r"train.patches_per_image \(2\)")):
        with pytest.raises(ConfigError, match=match):
            run_training(train_cfg(data, data / "never", **train))
    assert not (data / "never").exists()
