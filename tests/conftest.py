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

import json
import os
import subprocess
import sys
import time

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


# ------------------------------------------------------------------ object storage (S3)

S3_BUCKET = "mammo-test"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server on 127.0.0.1: moto's standalone server, started as a
    subprocess in a process group of its own and stopped by its pid. Yields the endpoint
    URL; the bucket ``S3_BUCKET`` exists."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)],
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True,
                          access_key=S3_KEYS["AWS_ACCESS_KEY_ID"],
                          secret_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
                          region=S3_KEYS["AWS_DEFAULT_REGION"]).create_dir(S3_BUCKET)
        yield endpoint
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def s3_env(s3_server):
    """The standard AWS variables pointing at the test server, for this module (set before
    any Ray the module starts, so its workers inherit them); restored afterwards."""
    saved = {k: os.environ.get(k) for k in (*S3_KEYS, "AWS_ENDPOINT_URL")}
    os.environ.update(S3_KEYS, AWS_ENDPOINT_URL=s3_server)
    try:
        yield f"s3://{S3_BUCKET}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def job_env(*injected: dict) -> dict[str, str]:
    """The environment of a job a test starts as a subprocess: its own local Ray (no
    RAY_ADDRESS), no usage stats, and the given faults (``MAMMORAY_FAULTS``)."""
    from mammoray.core import faults

    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    if injected:
        env[faults.ENV] = json.dumps(list(injected))
    return env


def start_held(args: list[str], env: dict[str, str], hold, log, *,
               timeout: float) -> subprocess.Popen:
    """Start ``python -m <args>`` in a process session of its own, its output to the file
    ``log`` (a pipe nobody reads while the test waits fills up and blocks the job), and return
    once the fault whose ``dir`` is ``hold`` fired: the job is where the test wants it. If it
    never gets there, end its session and fail with the log's end."""
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env,
                                start_new_session=True, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not (hold / "fired").exists():
        time.sleep(0.1)
    if not (hold / "fired").exists():
        end_session(proc)
        pytest.fail(f"{args[0]} never reached its fault at {hold}:\n" +
                    log.read_text(errors="replace")[-3000:])
    return proc


def stop(proc: subprocess.Popen, sig: int, *, timeout: float = 60) -> float:
    """Send ``sig`` to a job and wait for it to end; the seconds it took."""
    t0 = time.time()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    finally:
        end_session(proc)
    return time.time() - t0


def end_session(proc: subprocess.Popen) -> None:
    """End what is left of a job's process session (the job, its local Ray): the processes
    whose session id is the job's pid, and only those."""
    import psutil

    if proc.poll() is None:
        proc.kill()
    left = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == proc.pid:
                left.append(p)
        except OSError:
            pass
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)
    if proc.poll() is None or proc.returncode is None:
        proc.wait(timeout=30)
