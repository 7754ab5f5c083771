"""Optional per-stage timing of the pure pipeline functions (used by benchmarks)."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator


class StageTimer:
    """``with timer("decode"): ...`` adds the block's wall time to ``seconds["decode"]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


def no_timer(stage: str) -> contextlib.AbstractContextManager[None]:
    """The default: time nothing."""
    return contextlib.nullcontext()
