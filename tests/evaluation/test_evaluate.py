"""jobs.evaluate on a real local Ray and real Parquet, with the fixed-weight checkpoint of
``conftest.fixed_checkpoint``: the Ray Data pipeline's figures against a direct in-process
computation."""

from __future__ import annotations

import csv
import glob
import json
import os

import cv2
import numpy as np
import pytest
from conftest import WORLD_PATIENTS, WORLD_SEED, WORLD_SIZE, patient_strings

from mammoray.core.config import ConfigError, RayConfig
from mammoray.evaluation import figures as ev

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def world(fixed_checkpoint, local_ray):
    return fixed_checkpoint


def direct_stats(ckpt, data, split):
    """Per-image stats computed in this process, without Ray."""
    import pyarrow.parquet as pq

    from mammoray.model.checkpoint import load_checkpoint_model
    from mammoray.model.inputs import decode_rows

    model, _, size = load_checkpoint_model(str(ckpt))
    t = pq.read_table(glob.glob(os.path.join(data, "data", "*.parquet"))).to_pylist()
    rows = sorted((r for r in t if r["split"] == split and r["augment_index"] == 0),
                  key=lambda r: r["image_id"])
    x, y = decode_rows([r["image"] for r in rows], [r["mask"] for r in rows], size)
    prob = np.asarray(model(x))[..., 0]
    return rows, [ev.image_stats(y[i, ..., 0], prob[i]) for i in range(len(rows))]


def test_evaluate_matches_direct_computation(world):
    from mammoray.evaluation.job import EvaluateOptions, run_evaluation

    base, ckpt = world
    data = str(base / "ds")
    out = base / "eval"
    result = run_evaluation(EvaluateOptions(checkpoint=str(ckpt), data=data, split="test",
                                            output=str(out), threshold="val", bootstrap=200),
                            RayConfig(), log=lambda _: None)
    # The threshold comes from the validation split, never from the test split.
    _, val_stats = direct_stats(ckpt, data, "val")
    expected_t, k = ev.choose_threshold(ev.Table.from_rows(val_stats))
    assert result["protocol"]["threshold"] == expected_t
    assert result["protocol"]["split"] == "test" and result["protocol"]["input_size"] == WORLD_SIZE
    assert "validation" in result["protocol"]["threshold_source"]
    rows, stats = direct_stats(ckpt, data, "test")
    expected = ev.aggregate(ev.Table.from_rows(stats), k)
    for key in ("mean_dice", "pooled_dice", "mean_iou", "sensitivity", "fp_per_image",
                "pixel_accuracy"):
        assert result["figures"][key] == pytest.approx(expected[key], nan_ok=True)
    assert result["figures"]["images"] == len(rows)
    with open(out / "metrics.json") as fh:
        saved = json.load(fh)  # strict JSON (NaN written as null)
    assert saved["figures"]["images"] == len(rows)
    lo, hi = saved["confidence_intervals"]["mean_dice"]
    assert lo <= saved["figures"]["mean_dice"] <= hi
    with open(out / "per_image.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["image_id"] for r in table] == [r["image_id"] for r in rows]
    for r, s in zip(table, stats):
        m = ev.per_image_metrics(s, k)
        if s["truth"] > 0:
            assert float(r["dice"]) == pytest.approx(m["dice"], abs=1e-5)
        else:
            assert r["dice"] == ""
        assert int(r["detected"]) == s["hits"][k] and int(r["lesions"]) == s["lesions"]
    assert len(saved["froc"]) == len(ev.THRESHOLDS)
    for name in ("froc.png", "report.html"):
        assert (out / name).stat().st_size > 0
    overlays = sorted(os.listdir(out / "overlays"))
    assert overlays and all(cv2.imread(str(out / "overlays" / f)) is not None for f in overlays)
    assert "split <b>test</b>" in (out / "report.html").read_text()
    assert not glob.glob(str(base / "eval.partial-*"))
    # No patient field anywhere in the outputs.
    blob = b"".join(open(f, "rb").read() for f in glob.glob(str(out / "**" / "*"),
                                                             recursive=True)
                    if os.path.isfile(f))
    for s in patient_strings(WORLD_SEED, range(WORLD_PATIENTS)):
        assert s.encode() not in blob


def test_evaluate_bad_inputs_stop_before_work(world, tmp_path):
    from mammoray.evaluation.job import EvaluateOptions, run_evaluation

    base, ckpt = world
    data = str(base / "ds")

    def go(**kw):
        opts = dict(checkpoint=str(ckpt), data=data, output=str(tmp_path / "o"))
        opts.update(kw)
        run_evaluation(EvaluateOptions(**opts), RayConfig(), log=lambda _: None)

    with pytest.raises(ConfigError, match="--checkpoint .*not a checkpoint folder"):
        go(checkpoint=str(tmp_path))
    with pytest.raises(ConfigError, match="--split holdout: allowed train, val, test"):
        go(split="holdout")
    with pytest.raises(ConfigError, match="--threshold val: the threshold is chosen on the "
                                          "validation split"):
        go(split="val", threshold="val")
    with pytest.raises(ConfigError, match="--threshold 1.5"):
        go(threshold="1.5")
    with pytest.raises(ConfigError, match="--data .*no dataset.json"):
        go(data=str(tmp_path))
    assert not (tmp_path / "o").exists()
