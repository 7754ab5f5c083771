"""Patient-level train / validation / test split.

Every image of a patient lands in the same split. The assignment depends only on the set of
patient identities, the fractions and the seed (not on the salt or the order of files), so the
same dataset splits the same way on every run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

SPLITS = ("train", "val", "test")


def _count(fraction: float, n: int) -> int:
    """Patients for a split: at least one when the fraction is non-zero and n > 2."""
    if fraction <= 0:
        return 0
    return max(1 if n > 2 else 0, round(fraction * n))


def assign_splits(patients: Iterable[str], val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, str]:
    """Map each distinct patient identity to 'train', 'val' or 'test'."""
    unique = sorted(set(patients))
    order = sorted(unique, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    n = len(order)
    n_test = _count(test_fraction, n)
    n_val = min(_count(val_fraction, n), max(0, n - n_test - 1))
    result = {}
    for i, patient in enumerate(order):
        result[patient] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return result
