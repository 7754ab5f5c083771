"""Ray Train's TensorFlow set-up from mammoray.training.backend: the TF_CONFIG each worker gets,
and no TensorFlow in the processes that build the trainer or unpickle its config (the job's
driver, a search trial's actor, the Train controller). The collective it sets up is exercised
by the two-worker training tests (tests/training/test_train.py, tests/cluster)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mammoray.training.backend import _set_tf_config, tf_config

pytestmark = pytest.mark.unit


def test_tf_config_names_every_worker_and_this_one(monkeypatch):
    addresses = ["10.0.0.1:40001", "10.0.0.2:40002"]
    assert tf_config(addresses, 1) == {"cluster": {"worker": addresses},
                                       "task": {"type": "worker", "index": 1}}
    # setenv records TF_CONFIG's state before the test (absent), which teardown restores: a
    # TF_CONFIG left behind would send every later strategy in this process to these addresses.
    monkeypatch.setenv("TF_CONFIG", "{}")
    _set_tf_config(addresses, 0)
    import os

    assert json.loads(os.environ["TF_CONFIG"])["task"] == {"type": "worker", "index": 0}


def test_building_the_trainer_and_unpickling_its_config_import_no_tensorflow(tmp_path):
    """A fresh interpreter builds a run's trainer (as jobs.train's driver and a trial's actor
    do); another unpickles its backend config (as the Train controller does): neither imports
    TensorFlow. Ray's own TensorflowConfig does, on import."""
    blob = tmp_path / "backend_config.pkl"
    build = f"""
import sys
import ray.cloudpickle as cloudpickle
from mammoray.core.config import config_from_dict
from mammoray.training.trainer import build_trainer
cfg = config_from_dict({{"train": {{"epochs": 1}}}})
trainer = build_trainer(cfg, 64, None, {{}}, name="run", storage_path={str(tmp_path)!r})
open({str(blob)!r}, "wb").write(cloudpickle.dumps(trainer.backend_config))
print("tensorflow" in sys.modules)
"""
    load = f"""
import pickle, sys
config = pickle.loads(open({str(blob)!r}, "rb").read())
print(config.backend_cls.__name__, config.framework.value, "tensorflow" in sys.modules)
from ray.train.tensorflow.config import TensorflowConfig
print("tensorflow" in sys.modules)
"""
    outputs = []
    for code in (build, load):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout.split())
    assert outputs == [["False"], ["_TensorflowBackend", "tensorflow", "False", "True"]]
