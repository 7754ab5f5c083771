"""Shared fixtures and helpers: a real local Ray (2 CPUs, stopped after the module), synthetic
data, and the test tiers.

Tiers (pytest markers declared in pyproject.toml), one per test, checked at collection:
- ``unit``: no Ray; pure functions, real files, TensorFlow on tiny arrays. The fast tier:
  ``bash scripts/test.sh -m unit``.
- ``ray``: a real local Ray (a fixture's, or a job's own).
- ``cluster``: real nodes started with ``ray start`` (a two-node cluster, Ray's fake
  autoscaler), jobs submitted with ``ray job submit``.
``slow`` marks tests over about 30 s (searches, resumes, restarts) on top of their tier.
"""

from __future__ import annotations

import os

import pytest

# Keras writes ~/.keras/keras.json on first import; keep tests independent of the home folder.
os.environ.setdefault("KERAS_HOME", os.path.join(os.path.dirname(__file__), ".keras-home"))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_SALT = "test-salt-not-secret"
TIERS = ("unit", "ray", "cluster")


def pytest_collection_modifyitems(config, items):
    """Every test belongs to exactly one tier, so that ``-m unit`` really is the Ray-free set."""
    wrong = [f"{item.nodeid}: {sorted(m for m in TIERS if item.get_closest_marker(m))}"
             for item in items
             if sum(item.get_closest_marker(m) is not None for m in TIERS) != 1]
    if wrong:
        raise pytest.UsageError("tests need exactly one tier marker of "
                                f"{', '.join(TIERS)}:\n  " + "\n  ".join(wrong))


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
    ``base/ds`` at ``size`` (on the Ray already running, or a local Ray of its own)."""
    from mammoray.core.config import config_from_dict
    from mammoray.synthetic.folder import FolderOptions, write_folder_dataset
    from preprocessing.pipeline import run_preprocess

    write_folder_dataset(FolderOptions(output=str(base / "raw"), patients=patients, seed=seed,
                                       height=256, width=208))
    run_preprocess(config_from_dict({"data": {
        "input": str(base / "raw"), "output": str(base / "ds"), "size": size,
        "val_fraction": val, "test_fraction": test}, "ray": {"num_cpus": 2}}),
        log=lambda _: None)


# A checkpoint with fixed weights for the evaluation and prediction tests: a 1x1 convolution,
# sigmoid(20 x - 14), which marks the bright tissue. It is deterministic and gives masks with
# real outlines, so the Ray Data pipelines' figures can be checked against a direct in-process
# computation, and the DICOM SEG against the PNG mask.
WORLD_SIZE = 64
WORLD_SEED = 5
WORLD_PATIENTS = 8


@pytest.fixture(scope="session")
def fixed_checkpoint(tmp_path_factory):
    """(base folder with raw/ and ds/, checkpoint folder) of the fixed-weight model above."""
    import keras

    from mammoray.core.config import config_from_dict
    from mammoray.core.dataset import read_dataset_json
    from mammoray.model.checkpoint import write_checkpoint

    base = tmp_path_factory.mktemp("fixed_checkpoint")
    preprocessed(base, patients=WORLD_PATIENTS, seed=WORLD_SEED, size=WORLD_SIZE, val=0.25,
                 test=0.25)
    inp = keras.Input((WORLD_SIZE, WORLD_SIZE, 1))
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", name="head",
                              kernel_initializer=keras.initializers.Constant(20.0),
                              bias_initializer=keras.initializers.Constant(-14.0))(inp)
    ckpt = base / "run" / "best"
    ckpt.mkdir(parents=True)
    write_checkpoint(str(ckpt), keras.Model(inp, out), config_from_dict({}).to_dict(),
                     WORLD_SIZE, read_dataset_json(str(base / "ds"))["parameters"])
    return base, ckpt


def patient_strings(seed: int, indices) -> list[str]:
    """The fake patient fields of the generator's patients ``indices`` (they must reach no
    output)."""
    from mammoray.synthetic.common import fake_patient

    out = []
    for i in indices:
        p = fake_patient(seed, i)
        out += [p["PatientName"], p["PatientID"], p["PatientBirthDate"], p["AccessionNumber"],
                p["InstitutionName"]]
    return out
