"""Work that can kill its process (a decoder that panics, segfaults or aborts, an
out-of-memory kill), done so that one bad input costs only itself.

Ray Data retries a failed task and, by default, forever: one file that always kills its worker
would stop a whole job, or hang it. Jobs therefore run their Ray Data pass with a bounded retry
count and errored blocks tolerated (:func:`tolerant_blocks`), find the inputs whose rows never
came back, and run each of those alone in a task of its own (:func:`run_each_alone`): an input
whose task dies again is rejected with :func:`crash_reason`, the others are done. Nothing of
this costs anything when nothing crashes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

# A Ray Data task that fails is retried this often (a node lost, a spot instance taken back)
# before its inputs go to the one-by-one pass.
TASK_RETRIES = 1


# Ray's errors for a task whose process (or node) went away while it ran.
PROCESS_DIED = ("WorkerCrashedError", "ActorDiedError", "NodeDiedError", "OutOfMemoryError")


def crash_reason(error: str) -> str:
    """The rejection reason of an input run in a task of its own: its processing killed its
    process, or (any other exception name) the task failed."""
    if error in PROCESS_DIED:
        return f"decoder crashed: its worker process died ({error})"
    return f"failed in a task of its own ({error})"


@contextlib.contextmanager
def tolerant_blocks() -> Iterator[None]:
    """Datasets created in this block drop the blocks of tasks that failed (after their
    retries) instead of failing the whole execution; the caller accounts for the lost inputs.
    (A dataset keeps a copy of the DataContext of its creation.)"""
    import ray

    ctx = ray.data.DataContext.get_current()
    previous, ctx.max_errored_blocks = ctx.max_errored_blocks, -1
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            yield
    finally:
        ctx.max_errored_blocks = previous


def retry_args(actors: bool = False) -> dict[str, Any]:
    """``map_batches`` arguments that bound a task's (or an actor task's) retries to
    :data:`TASK_RETRIES`; Ray Data retries forever by default. Ray 2.60 takes them only as
    free remote arguments, which it flags as deprecated (to go in Ray 2.64): the warning is
    silenced where they are used (:func:`tolerant_blocks`)."""
    return {"max_task_retries" if actors else "max_retries": TASK_RETRIES}


def run_each_alone(fn: Callable[[Any], Any], items: list[Any], *, num_cpus: float,
                   num_gpus: float | None = None) -> list[tuple[Any, Any, str | None]]:
    """``fn(item)`` for every item, each in a Ray task of its own that is not retried:
    ``(item, result, None)``, or ``(item, None, error)`` when the task's process died (or the
    task failed in any other way: ``error`` names the exception)."""
    import ray

    if not items:
        return []
    remote = ray.remote(fn).options(max_retries=0, num_cpus=num_cpus, num_gpus=num_gpus)
    refs = [remote.remote(item) for item in items]
    out = []
    for item, ref in zip(items, refs):
        try:
            out.append((item, ray.get(ref), None))
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None)
            out.append((item, None, type(cause or exc).__name__))
    return out
