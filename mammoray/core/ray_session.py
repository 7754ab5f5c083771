"""Connecting a job to Ray: the cluster's Ray when there is one, else a local Ray of its own.

Under ``ray job submit`` Ray sets RAY_ADDRESS in the job's environment, so the same command
line works on a laptop and on a cluster. Without an address we start a fresh local instance
(``address="local"``) rather than letting ``ray.init()`` attach to whatever cluster a stale
``ray_current_cluster`` file points to.

The job's workers are told their cluster's address (RAY_ADDRESS): Ray Train V2's placement-group
cleaner finds its cluster through the State API, which without an address looks for running
Ray instances and fails ("Found multiple active Ray instances") when this machine runs two (a
local job beside another job or a test cluster); see docs/decisions.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from mammoray.core.config import RayConfig

# glibc returns freed memory to the OS and serves large arrays with fresh mmaps, so a worker
# page-faults every full-field image's buffers in again. Keeping freed memory in the worker
# (the next image reuses it) removes that cost. Set for the whole job: a per-operator
# runtime_env made Ray Data much slower (no worker reuse). Measured: benchmarks/RESULTS.md.
WORKER_ENV = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(1 << 28),
              # TensorFlow's start-up notices (CPU features) from every worker and actor stay
              # out of the job's log; its warnings and errors still show. So do Ray's own
              # deprecation notices from inside its actors (nothing a user can act on).
              "TF_CPP_MIN_LOG_LEVEL": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def init_ray(cfg: RayConfig, *, dashboard: bool = True) -> bool:
    """Initialise Ray for a job; returns True if this call started it (caller shuts it down).

    The job's workers get :data:`WORKER_ENV` through the job's runtime environment. A local Ray
    runs with the dashboard (on 127.0.0.1), as a cluster's does: Ray's State API needs it, and
    Ray Train's placement-group cleaner and Ray Tune rely on that (without it the cleaner warned
    every few seconds, and placement groups of trials Tune stopped were never released, so the
    next trial's workers waited forever).
    """
    import ray

    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    env_vars = dict(WORKER_ENV)
    if address:
        if re.fullmatch(r"[\w.\-]+:\d+", address):
            env_vars["RAY_ADDRESS"] = address
        ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": env_vars})
        return True
    # A local Ray on a port chosen here, so that its workers can be given the address.
    port = _free_port()
    env_vars["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    saved = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=dashboard,
                 dashboard_host="127.0.0.1", runtime_env={"env_vars": env_vars})
    finally:
        if saved is None:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = saved
    return True


def sigterm_as_sigint(signum, frame) -> None:
    """A SIGTERM handler: the signal goes to whatever handles Ctrl+C at the time (Tune's
    graceful stop during a search, else Python's KeyboardInterrupt)."""
    os.kill(os.getpid(), signal.SIGINT)


@contextlib.contextmanager
def ray_session(cfg: RayConfig, *, dashboard: bool = True) -> Iterator[None]:
    """``with ray_session(cfg.ray): ...``: Ray for the block (see :func:`init_ray`); a Ray that
    this block started is shut down when it ends, one that was running is left running.

    ``ray.init`` installs Ray's own SIGTERM handler (it aborts the process); when a job asked
    for SIGTERM to stop it like Ctrl+C (``jobs._cli.run``), that is put back."""
    job_handler = signal.getsignal(signal.SIGTERM)
    started = init_ray(cfg, dashboard=dashboard)
    quiet_logs()
    if job_handler is sigterm_as_sigint and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm_as_sigint)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


@dataclass(frozen=True)
class ActorPool:
    """How many inference actors to start, and whether each takes a GPU."""

    size: int
    use_gpu: bool


def actor_pool(requested: int | None, cpus_per_actor: float, *,
               items: int | None = None) -> ActorPool:
    """The inference actors of a job: ``requested``, or one per GPU when the cluster has GPUs,
    else as many as the cluster's CPUs hold at ``cpus_per_actor``; never more than ``items``
    (an actor without work only costs its start-up)."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    use_gpu = gpus > 0
    size = requested or (gpus if use_gpu else max(1, math.floor(cpus / cpus_per_actor + 1e-9)))
    if items is not None:
        size = min(size, max(1, items))
    return ActorPool(size=max(1, size), use_gpu=use_gpu)


def quiet_logs() -> None:
    """In this process (a job's driver, a training worker): keep Ray's per-read notices (a
    dataset read's progress-bar notice, "execution finished", a checkpoint "successfully
    created" and the whole metrics of every report) out of the job's log; warnings and errors
    still show. Preprocessing, evaluation and prediction keep Ray Data's progress bars."""
    import logging

    for name, level in (("ray.data._internal.progress", logging.ERROR),
                        ("ray.train", logging.WARNING)):
        logging.getLogger(name).setLevel(level)
    try:  # Ray Train 2.60 logs every report under a logger named by its file's path
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
