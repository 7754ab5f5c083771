"""Progress lines on a fake clock: at most one per interval, always the last one."""

import pytest

from mammoray.core.ticker import Ticker

pytestmark = pytest.mark.unit


def test_lines_at_most_every_interval_and_at_the_end():
    now = [0.0]
    lines: list[str] = []
    tick = Ticker("synthesize: folder", 4, unit="patients", log=lines.append, every_s=5.0,
                  clock=lambda: now[0])
    for t in (2.0, 6.0, 7.0, 8.0):
        now[0] = t
        tick()
    assert lines == ["synthesize: folder: 2/4 patients (50%), 6 s, about 6 s left",
                     "synthesize: folder: 4/4 patients (100%), 8 s"]
