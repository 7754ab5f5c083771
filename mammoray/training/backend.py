"""Ray Train's TensorFlow set-up without TensorFlow in the processes that do not train.

``ray.train.tensorflow.TensorflowTrainer`` is a ``DataParallelTrainer`` whose backend config,
``TensorflowConfig``, sets ``TF_CONFIG`` on each worker before the training function starts
(what ``MultiWorkerMirroredStrategy`` reads to form its collective). That config lives in the
package ``ray.train.tensorflow``, whose ``__init__`` imports TensorFlow; so every process that
builds the trainer or unpickles its config imported TensorFlow: the job's driver, each search
trial's actor, and each run's Train controller: 4-8 s each on the way to the first step, and
about 470 MiB held for the whole run by processes that never touch a tensor (the controller's
peak 711 MiB against 239 MiB without it: benchmarks/train_startup.py, RESULTS.md 2026-12-05).

:class:`TensorflowBackendConfig` is the same set-up from a module that imports no TensorFlow:
the workers' addresses gathered, then ``TF_CONFIG`` = {cluster: {worker: addresses}, task:
{type: worker, index: rank}} set on each (Ray 2.60's ``_TensorflowBackend.on_start``), with
``framework`` reported as TensorFlow as Ray's is. One difference, on purpose: Ray's also sets
``TF_USE_LEGACY_KERAS=1``, which only matters with ``tf-keras`` installed; this platform uses
Keras 3 (see docs/decisions.md), so it is not set."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ray.train.backend import Backend, BackendConfig


def tf_config(addresses: list[str], index: int) -> dict:
    """The ``TF_CONFIG`` of worker ``index`` among workers at ``addresses``."""
    return {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}


def _worker_address() -> str:
    from ray._common.network_utils import build_address
    from ray.train._internal.utils import get_address_and_port

    return build_address(*get_address_and_port())


def _set_tf_config(addresses: list[str], index: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps(tf_config(addresses, index))


class _TensorflowBackend(Backend):
    def on_start(self, worker_group, backend_config) -> None:
        import ray

        addresses = worker_group.execute(_worker_address)
        ray.get([worker_group.execute_single_async(i, _set_tf_config, addresses, i)
                 for i in range(len(worker_group))])


@dataclass
class TensorflowBackendConfig(BackendConfig):
    """Ray's ``TensorflowConfig`` without importing TensorFlow (see the module's docstring)."""

    @property
    def backend_cls(self):
        return _TensorflowBackend

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TENSORFLOW
