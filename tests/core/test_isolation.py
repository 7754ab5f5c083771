"""The reason given to an input that was run in a task of its own."""

import pytest

from mammoray.core.isolation import crash_reason

pytestmark = pytest.mark.unit


def test_a_dead_process_and_a_failed_task_are_told_apart():
    assert crash_reason("WorkerCrashedError") == (
        "decoder crashed: its worker process died (WorkerCrashedError)")
    assert crash_reason("OutOfMemoryError") == (
        "decoder crashed: its worker process died (OutOfMemoryError)")
    assert crash_reason("TypeError") == "failed in a task of its own (TypeError)"
