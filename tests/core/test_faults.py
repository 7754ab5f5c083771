"""Fault injection: conditions, arrivals counted across processes, crash and hold."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time

import pytest

from mammoray.core import faults

pytestmark = pytest.mark.unit


def _crash_at(folder: str, epoch: int) -> None:
    faults.fire([{"at": "train.epoch", "action": "crash", "dir": folder, "epoch": 2}],
                "train.epoch", epoch=epoch, rank=0)


def test_unset_is_empty_and_a_bad_value_is_an_error(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.from_env() == []
    monkeypatch.setenv(faults.ENV, json.dumps([{"at": "x", "action": "explode", "dir": "/t"}]))
    with pytest.raises(ValueError, match="MAMMORAY_FAULTS: expected a JSON list"):
        faults.from_env()
    good = [{"at": "train.epoch", "action": "hold", "dir": "/t", "epoch": 2}]
    monkeypatch.setenv(faults.ENV, json.dumps(good))
    assert faults.from_env() == good


def test_a_crash_ends_the_process_once(tmp_path):
    folder = str(tmp_path / "f")
    ctx = multiprocessing.get_context("spawn")
    codes = []
    for epoch in (1, 2, 2, 3):  # the other epochs do not match; epoch 2 fires only once
        proc = ctx.Process(target=_crash_at, args=(folder, epoch))
        proc.start()
        proc.join(30)
        codes.append(proc.exitcode)
    assert codes == [0, 1, 0, 0]
    assert sorted(os.listdir(folder)) == ["arrival-1", "arrival-2", "fired"]


def test_hold_waits_for_release_on_its_arrival(tmp_path):
    fault = [{"at": "preprocess.image", "action": "hold", "dir": str(tmp_path), "arrival": 2}]
    faults.fire(fault, "preprocess.image")  # arrival 1: goes on
    faults.fire(fault, "train.epoch", epoch=1)  # another point: not counted
    done = threading.Event()
    worker = threading.Thread(target=lambda: (faults.fire(fault, "preprocess.image"),
                                              done.set()))
    worker.start()
    deadline = time.time() + 10
    while not (tmp_path / "fired").exists() and time.time() < deadline:
        time.sleep(0.01)
    assert (tmp_path / "fired").exists() and not done.wait(0.3)  # held
    (tmp_path / "release").touch()
    assert done.wait(5)
    worker.join()
