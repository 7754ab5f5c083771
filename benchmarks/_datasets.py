"""What the benchmarks share: synthetic datasets generated once and cached under
benchmarks/data/, and ``--set KEY=VALUE`` config overrides."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from typing import Any


def parse_sets(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` flags as dotted config overrides (values parsed as YAML)."""
    import yaml

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    return overrides


def cached_dataset(root: str, name: str, *, patients: int, seed: int,
                   data: dict[str, Any]) -> tuple[str, str]:
    """(raw folder, preprocessed dataset) of ``patients`` synthetic patients (800 x 640 folder
    format, 4 images each), preprocessed with the ``data`` section on a local Ray of 2 CPUs.
    Both are reused when present: the preprocessed folder is named by the size and a hash of
    the rest of the section, so that a run with other preprocessing (``--set
    data.clahe_at=output``) never trains on another run's rows."""
    from mammoray.core.config import config_from_dict
    from mammoray.synthetic.folder import FolderOptions, write_folder_dataset
    from preprocessing.pipeline import run_preprocess

    raw = os.path.join(root, f"{name}_raw_{patients}p")
    if not os.path.exists(os.path.join(raw, "truth.json")):
        write_folder_dataset(FolderOptions(output=raw, patients=patients, seed=seed, height=800,
                                           width=640, workers=2))
    settings = {k: v for k, v in data.items() if k not in ("input", "output", "sources")}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    out = os.path.join(root, f"{name}_{patients}p_{data['size']}_{digest[:8]}")
    if not os.path.exists(os.path.join(out, "dataset.json")):
        tree = {"data": dict(data, input=raw, output=out), "ray": {"num_cpus": 2}}
        run_preprocess(config_from_dict(tree), log=lambda _: None)
    return raw, out
