"""Reading preprocessed datasets: the oversampling of rows with a mass (no Ray needed)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mammoray.core.dataset import repeat_mass_rows

pytestmark = pytest.mark.unit


def test_repeat_mass_rows_repeats_each_mass_row_in_place():
    batch = pa.table({"image_id": ["a", "b", "c", "d"], "image": [b"1", b"2", b"3", b"4"],
                      "has_mass": [True, False, True, False]})
    out = repeat_mass_rows(batch, 3)
    assert out.column_names == ["image_id", "image"]
    assert out.column("image_id").to_pylist() == ["a", "a", "a", "b", "c", "c", "c", "d"]
    assert out.column("image").to_pylist() == [b"1", b"1", b"1", b"2", b"3", b"3", b"3", b"4"]


def test_repeat_mass_rows_once_keeps_the_rows():
    batch = pa.table({"image_id": ["a", "b"], "has_mass": [True, False]})
    assert repeat_mass_rows(batch, 1).column("image_id").to_pylist() == ["a", "b"]
