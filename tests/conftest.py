"""Shared fixtures: a real local Ray (2 CPUs, stopped after the module) and synthetic data."""

from __future__ import annotations

import os

import pytest

# Keras writes ~/.keras/keras.json on first import; keep tests independent of the home folder.
os.environ.setdefault("KERAS_HOME", os.path.join(os.path.dirname(__file__), ".keras-home"))

TEST_SALT = "test-salt-not-secret"


@pytest.fixture(scope="module")
def local_ray():
    """A fresh local Ray with 2 CPUs for this module; shut down afterwards."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def salt_env(monkeypatch):
    monkeypatch.setenv("MAMMORAY_PATIENT_SALT", TEST_SALT)
    return TEST_SALT


def preprocessed(base, *, patients: int, seed: int, size: int, val: float = 0.2,
                 test: float = 0.2) -> None:
    """A synthetic folder dataset in ``base/raw`` (256 x 208 DICOMs), preprocessed to
    ``base/ds`` at ``size`` on the Ray already running."""
    from mammoray.config import config_from_dict
    from mammoray.synthetic import FolderOptions, write_folder_dataset
    from preprocessing.pipeline import run_preprocess

    write_folder_dataset(FolderOptions(output=str(base / "raw"), patients=patients, seed=seed,
                                       height=256, width=208))
    run_preprocess(config_from_dict({"data": {
        "input": str(base / "raw"), "output": str(base / "ds"), "size": size,
        "val_fraction": val, "test_fraction": test}}), log=lambda _: None)
