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


def init_ray(cfg: RayConfig) -> bool:
    """Initialise Ray for a job; returns True if this call started it (caller shuts it down)."""
    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False)
    return True
