"""Connecting a job to Ray: the cluster's Ray when there is one, else a local Ray of its own.

Under ``ray job submit`` Ray sets RAY_ADDRESS in the job's environment, so the same command
line works on a laptop and on a cluster. Without an address we start a fresh local instance
(``address="local"``) rather than letting ``ray.init()`` attach to whatever cluster a stale
``ray_current_cluster`` file points to.
"""

from __future__ import annotations

import os

import ray

from mammoray.config import RayConfig

# glibc returns freed memory to the OS and serves 24 MB arrays with fresh mmaps, so a worker
# page-faults every full-field image's buffers in again: measured 30% of the per-image time.
# Keeping freed memory in the worker (the next image reuses it) removes that cost. Set for the
# whole job: a per-operator runtime_env made Ray Data 2.5x slower here (no worker reuse).
WORKER_ENV = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(1 << 28)}


def init_ray(cfg: RayConfig) -> bool:
    """Initialise Ray for a job; returns True if this call started it (caller shuts it down).

    The job's workers get :data:`WORKER_ENV` through the job's runtime environment.
    """
    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": dict(WORKER_ENV)}
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    else:
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False,
                 runtime_env=runtime_env)
    return True
