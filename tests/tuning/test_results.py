"""A search's results from trial histories (pure, exact values)."""

import json
import math

import pytest

from mammoray.core.config import config_from_dict
from mammoray.tuning.results import max_overlap, trial_rows

pytestmark = pytest.mark.unit


def test_trials_at_once_from_their_time_windows():
    assert max_overlap([(0, 10), (5, 15), (12, 20)]) == 2
    assert max_overlap([(0, 10), (1, 9), (2, 8)]) == 3
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1  # one ends as the next starts
    assert max_overlap([(math.nan, math.nan), (0, 4)]) == 1


def test_trial_rows_status_and_best_epoch():
    base = config_from_dict({"model": {"levels": 2}}).to_dict()
    params = {"levels": 2, "dropout_0": 0.1, "dropout_1": 0.2, "learning_rate": 1e-3}

    def epoch(e, score, t):
        return {"epoch": e, "val_score": score, "val_iou": score, "val_dice": score + 0.1,
                "time": t, "seconds": 5.0}

    results = [
        {"trial_id": "a", "params": params, "error": None,
         "history": [epoch(1, 0.2, 105), epoch(2, 0.5, 110), epoch(3, 0.5, 115),
                     epoch(4, 0.4, 120)]},
        {"trial_id": "b", "params": params, "error": None, "history": [epoch(1, 0.1, 106)]},
        {"trial_id": "c", "params": params, "error": "RuntimeError('x')\nOOM", "history": []},
    ]
    rows = trial_rows(results, base, max_epochs=4, baseline=params)
    assert [r["status"] for r in rows] == ["completed", "stopped", "error"]
    assert rows[0]["best_epoch"] == 3 and rows[0]["best_val_iou"] == 0.5  # ties: later
    assert rows[0]["best_val_dice"] == 0.6 and rows[0]["epochs_run"] == 4
    assert rows[0]["minutes"] == round(20 / 60, 2)  # from 100 s (105 - 5) to 120 s
    assert rows[1]["epochs_run"] == 1 and rows[2]["error"] == "OOM"
    assert json.loads(rows[0]["dropout"]) == [0.1, 0.2] and rows[0]["baseline"]
