"""Fault injection for tests: one environment variable, read in one place (:func:`from_env`).

``MAMMORAY_FAULTS`` holds a JSON list of faults. A job's driver reads it (:func:`from_env`)
and ships the faults with the work (the training loop's config, the preprocessing map's
arguments); the code at a fault point calls
:func:`fire` with the facts of the moment. Nothing is read or done when the variable is unset.

A fault is a mapping::

    {"at": "train.epoch", "action": "crash", "dir": "/tmp/x", "epoch": 2, "rank": 1}

- ``at``: the point: ``train.epoch`` (a training worker about to start an epoch; facts
  ``epoch``, 1-based as in history.csv, and ``rank``) or ``preprocess.image`` (a
  preprocessing task about to read an image; fact ``relpath``) or ``predict.image`` (a
  prediction actor about to read a DICOM; fact ``relpath``) or ``storage.publish`` (an
  output on an object store, its files moved into place, its marker not yet written; fact
  ``final``, the output folder's name);
- every other key except ``action``, ``dir``, ``arrival`` and ``every`` must equal the fact of
  that name;
- ``arrival`` (default 1): the fault fires the n-th time a matching point is reached, counted
  across processes and restarts with files in ``dir`` (so a crash fires once, and a worker
  group restarted from its checkpoint does not crash again); ``"every": true`` fires it at
  every arrival instead (a file that always kills its process);
- ``action``: ``crash`` ends the process at once (``os._exit(1)``, as a killed worker would);
  ``abort`` aborts it (``os.abort()``: SIGABRT, as a C decoder's failed assertion does);
  ``hold`` waits until the file ``dir/release`` exists (a job stopped mid-epoch, for
  interrupt tests). Each first writes ``dir/fired``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

ENV = "MAMMORAY_FAULTS"
ACTIONS = ("crash", "abort", "hold")
_RESERVED = {"at", "action", "dir", "arrival", "every"}


def from_env() -> list[dict[str, Any]]:
    """The faults of ``MAMMORAY_FAULTS`` (empty when unset); a malformed value is an error."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return []
    faults = json.loads(raw)
    if not isinstance(faults, list) or not all(
            isinstance(f, dict) and f.get("action") in ACTIONS and f.get("at") and f.get("dir")
            for f in faults):
        raise ValueError(f"{ENV}: expected a JSON list of faults with 'at', 'action' "
                         f"({', '.join(ACTIONS)}) and 'dir'")
    return faults


def fire(faults: list[dict[str, Any]], at: str, **facts: Any) -> None:
    """Carry out every fault of ``faults`` set for point ``at`` whose conditions ``facts``
    meet, on its arrival."""
    for fault in faults:
        if fault["at"] != at or any(facts.get(k) != v for k, v in fault.items()
                                    if k not in _RESERVED):
            continue
        if _arrival(fault["dir"]) != int(fault.get("arrival", 1)) and not fault.get("every"):
            continue
        with open(os.path.join(fault["dir"], "fired"), "w"):
            pass
        if fault["action"] == "crash":
            os._exit(1)
        if fault["action"] == "abort":
            os.abort()
        release = os.path.join(fault["dir"], "release")
        while not os.path.exists(release):
            time.sleep(0.1)


def _arrival(folder: str) -> int:
    """This arrival's number: the first free ``arrival-<n>`` file, created atomically."""
    os.makedirs(folder, exist_ok=True)
    n = 1
    while True:
        try:
            os.close(os.open(os.path.join(folder, f"arrival-{n}"), os.O_CREAT | os.O_EXCL))
            return n
        except FileExistsError:
            n += 1
