"""No file can stop a dataset: a decoder that really panics (a damaged RLE segment table makes
pylibjpeg-rle panic in Rust: a BaseException) and a file whose processing really kills its
process (``os.abort()``, through a fault) are each rejected with the reason, every other file
is written, and ``jobs.preprocess`` exits 0 with inputs = written + rejected."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import REPO

from mammoray.core import faults
from mammoray.synthetic.folder import FolderOptions, write_folder_dataset

pytestmark = pytest.mark.ray

ABORTED = "patient_0001/R_CC.dcm"


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("crashes") / "raw"
    truth = write_folder_dataset(FolderOptions(output=str(root), patients=3, seed=31,
                                               height=256, width=208, defects=True,
                                               transfer_syntax="rle"))
    return root, truth


def test_a_panicking_decoder_and_a_dying_process_reject_only_their_file(raw, tmp_path):
    root, truth = raw
    out = tmp_path / "ds"
    fault = tmp_path / "abort"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **{faults.ENV: json.dumps([
        {"at": "preprocess.image", "action": "abort", "dir": str(fault), "relpath": ABORTED,
         "every": True}])})
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "jobs.preprocess", "--input", str(root),
                           "--output", str(out), "--size", "64", "--num-cpus", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    # The file really killed its process: in its task, its retry and its task of its own.
    assert len([f for f in os.listdir(fault) if f.startswith("arrival-")]) == 3
    info = json.loads((out / "dataset.json").read_text())
    images, defects = len(truth["images"]), len(truth["defects"])
    assert info["counts"] == {"input": images + defects, "written": images - 1,
                              "rejected": defects + 1, "augmented_rows": 0}
    reasons = {r["relpath"]: r["reason"]
               for r in pq.read_table(out / "rejected.parquet").to_pylist()}
    assert reasons["defects/corrupt_rle.dcm"] == (
        "decoder crashed (PanicException: index out of bounds: the len is 106496 but the "
        "index is 106496)")
    assert reasons[ABORTED] == "decoder crashed: its worker process died (WorkerCrashedError)"
    for defect in truth["defects"]:
        assert defect["expect"] in reasons[defect["relpath"]]
    rows = pq.read_table(out / "data").num_rows
    assert rows == images - 1
    # The aborted file took the other images of its task with it; they were done one by one.
    lost = re.search(r"preprocess: (\d+) input\(s\) lost with a task whose process died, "
                     r"processed one by one: (\d+) written, 1 rejected", done.stdout)
    assert lost and 1 <= int(lost.group(1)) <= 4 and int(lost.group(2)) == int(lost.group(1)) - 1
    assert f"preprocess: {images + defects} inputs = {images - 1} written + {defects + 1} " \
           "rejected" in done.stdout
