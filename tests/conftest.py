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
