"""What a job asks of Ray, checked against what the cluster can give before any worker starts.

Ray waits for resources that never come: a Ray Train worker group larger than the cluster
retries its start every minute, forever, and an actor pool too large for the cluster never
starts. So every job states its request (:class:`Request`: so many workers, actors or tasks,
each with so many CPUs and GPUs) and calls :func:`ensure`:

- on a cluster without an autoscaler (the job's own local Ray included), a request that cannot
  fit stops the job at once, with the numbers and the fix;
- on an autoscaling cluster the job waits for the nodes, saying what it waits for, up to
  ``ray.resource_wait_s``, then stops the same way.

"Fits" means every unit fits on some node (a worker is never split over nodes) and all of them
fit at once: the units are placed node by node, as many as each node holds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

POLL_S = 5.0
SAY_EVERY_S = 30.0


class ResourceError(RuntimeError):
    """A request the cluster cannot meet; the message names the numbers and the fix."""


@dataclass(frozen=True)
class Request:
    """``count`` units (``unit``: worker, actor, task, trial), each ``cpus`` CPUs and ``gpus``
    GPUs, for ``what`` (the message's subject); ``fix`` says how to ask for less."""

    what: str
    count: int
    unit: str
    cpus: float
    gpus: float = 0.0
    fix: str = ""

    def describe(self) -> str:
        parts = [f"{_num(self.cpus)} CPU{_s(self.cpus)}"]
        if self.gpus:
            parts.append(f"{_num(self.gpus)} GPU{_s(self.gpus)}")
        each = " + ".join(parts)
        total = [f"{_num(self.count * self.cpus)} CPU{_s(self.count * self.cpus)}"]
        if self.gpus:
            total.append(f"{_num(self.count * self.gpus)} GPU{_s(self.count * self.gpus)}")
        return (f"{self.what} asks {self.count} {self.unit}{_s(self.count)} x {each} = "
                f"{' + '.join(total)}")


def _num(value: float) -> str:
    return f"{value:g}"


def _s(value: float) -> str:
    return "" if value == 1 else "s"


def nodes() -> list[dict[str, float]]:
    """The alive nodes' total resources (CPU, GPU, ...)."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def placeable(cpus: float, gpus: float, capacity: list[dict[str, float]]) -> int:
    """How many units of ``cpus`` CPUs and ``gpus`` GPUs these nodes hold at once."""
    placed = 0
    for node in capacity:
        per_node = (math.floor(node.get("CPU", 0.0) / cpus + 1e-9) if cpus > 0
                    else 1 << 30)
        if gpus > 0:
            per_node = min(per_node, math.floor(node.get("GPU", 0.0) / gpus + 1e-9))
        placed += per_node
    return placed


def fits(request: Request, capacity: list[dict[str, float]]) -> bool:
    """Whether ``request``'s units can all be placed at once on these nodes."""
    return placeable(request.cpus, request.gpus, capacity) >= request.count


def cpus_that_fit(count: int, gpus: float, capacity: list[dict[str, float]]) -> float:
    """The most CPUs per unit (a whole number, or 0.5) at which ``count`` units fit."""
    largest = int(max((n.get("CPU", 0.0) for n in capacity), default=0.0))
    for cpus in [*range(largest, 0, -1), 0.5]:
        if placeable(cpus, gpus, capacity) >= count:
            return cpus
    return 0.0


def has_autoscaler() -> bool:
    """Whether the cluster has an autoscaler (``ray up``, or ``ray start --head
    --autoscaling-config``). Every head's monitor publishes a status in the cluster's key-value
    store; with an autoscaler it maps each node to a node type of its config (such as
    ``ray.head.default``), without one each node to a name made of its own id (``node_<id>``). Version-sensitive (Ray 2.60's
    status format): kept here alone; anything unexpected reads as no autoscaler, which fails
    fast rather than waiting."""
    import json

    import ray
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    if not ray.is_initialized():
        return False
    try:
        status = json.loads(_internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) or b"{}")
        mapping = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    except Exception:
        return False
    return any(kind not in (node, f"node_{node}") for node, kind in mapping.items())


def describe_capacity(capacity: list[dict[str, float]]) -> str:
    cpus = sum(n.get("CPU", 0.0) for n in capacity)
    gpus = sum(n.get("GPU", 0.0) for n in capacity)
    largest = max((n.get("CPU", 0.0) for n in capacity), default=0.0)
    text = f"this Ray has {_num(cpus)} CPU{_s(cpus)}"
    if gpus:
        text += f" and {_num(gpus)} GPU{_s(gpus)}"
    if len(capacity) > 1:
        text += f" on {len(capacity)} nodes (at most {_num(largest)} CPUs on one)"
    return text


def ensure(request: Request, *, wait_s: float, log: Callable[[str], None] = print) -> None:
    """Return when ``request`` fits the cluster; raise :class:`ResourceError` when it cannot
    (at once without an autoscaler; after ``wait_s`` seconds with one)."""
    capacity = nodes()
    if fits(request, capacity):
        return
    fix = f" ({request.fix})" if request.fix else ""
    if not has_autoscaler() or wait_s <= 0:
        raise ResourceError(f"{request.describe()}; {describe_capacity(capacity)}{fix}")
    from ray.autoscaler.sdk import request_resources

    start = said = time.monotonic()
    log(f"waiting for the autoscaler: {request.describe()}; {describe_capacity(capacity)} "
        f"(waiting up to {wait_s:g} s: ray.resource_wait_s)")
    bundle = {"CPU": request.cpus, **({"GPU": request.gpus} if request.gpus else {})}
    # The autoscaler adds nodes for pending demand: state it, then watch the nodes come.
    request_resources(bundles=[bundle] * request.count)
    try:
        while time.monotonic() - start < wait_s:
            time.sleep(POLL_S)
            capacity = nodes()
            if fits(request, capacity):
                log(f"the cluster holds it now: {describe_capacity(capacity)}")
                return
            if time.monotonic() - said >= SAY_EVERY_S:
                said = time.monotonic()
                log(f"still waiting ({time.monotonic() - start:.0f} s): {request.describe()}; "
                    f"{describe_capacity(capacity)}")
    finally:
        request_resources(bundles=[])  # the job's own tasks and workers hold the nodes now
    raise ResourceError(f"{request.describe()}; after {wait_s:g} s of waiting "
                        f"{describe_capacity(capacity)}{fix}")


def ensure_units(what: str, count: int, unit: str, cpus: float, gpus: float, *,
                 count_flag: str, cpus_flag: str, wait_s: float,
                 log: Callable[[str], None] = print) -> None:
    """:func:`ensure` for ``count`` workers or actors of ``cpus`` CPUs (and ``gpus`` GPUs),
    the fix naming the flags that ask for fewer (``count_flag``) or smaller (``cpus_flag``)
    units, with values this cluster holds."""
    capacity = nodes()
    fixes = []
    if gpus and not sum(n.get("GPU", 0.0) for n in capacity):
        fixes.append("a cluster with GPUs, or train.use_gpu: false (and no --use-gpu)")
    else:
        most = placeable(cpus, gpus, capacity)
        if count_flag and 1 <= most < count:
            fixes.append(f"{count_flag} {most}")
        smaller = cpus_that_fit(count, gpus, capacity)
        if cpus_flag and 0 < smaller < cpus:
            fixes.append(f"{cpus_flag} {smaller:g}")
    ensure(Request(what, count, unit, cpus, gpus, fix="use " + " or ".join(fixes) if fixes
                   else ""), wait_s=wait_s, log=log)
