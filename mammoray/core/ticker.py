"""Progress lines for long loops that run in one process (``jobs.synthesize``): ``what:
done/total (percent), elapsed, left``, at most every few seconds and at the end, so they read
well in a terminal and in ``ray job logs`` alike (no carriage returns)."""

from __future__ import annotations

import time
from collections.abc import Callable


class Ticker:
    def __init__(self, what: str, total: int, *, unit: str = "",
                 log: Callable[[str], None] = print, every_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total, self.unit, self.log = what, total, unit, log
        self.every_s, self.clock = every_s, clock
        self.start = self.said = clock()
        self.done = 0

    def __call__(self, step: int = 1) -> None:
        self.done += step
        now = self.clock()
        if self.done < self.total and now - self.said < self.every_s:
            return
        self.said = now
        elapsed = now - self.start
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        unit = f" {self.unit}" if self.unit else ""
        self.log(f"{self.what}: {self.done}/{self.total}{unit} "
                 f"({100.0 * self.done / max(1, self.total):.0f}%), {elapsed:.0f} s"
                 + (f", about {left:.0f} s left" if self.done < self.total else ""))
