"""Bytes per training checkpoint, before and after lean checkpoints (not a test).

    .venv/bin/python benchmarks/checkpoint.py [--config jobs/configs/thesis.yaml] [--size 128]

Builds the config's U-Net (the seed study's 7-level, 64-filter model by default: 497,668,417
parameters) with its Adam optimizer built, as a training worker has them after its first step,
and writes one Ray Train checkpoint folder in each format side by side:

- before: ``model.keras`` + ``state.npz`` holding every weight again and the optimizer's
  variables (the format up to 2026-12-01);
- now: ``model.keras`` + ``optimizer.npz`` holding the optimizer's variables only
  (``mammoray.model.checkpoint.save_state``);

plus the published ``best/`` (model.keras and config.json). Prints a table and writes
``benchmarks/results/checkpoint.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(REPO, "jobs", "configs", "thesis.yaml"))
    p.add_argument("--size", type=int, default=128, help="input side (the sizes do not "
                   "depend on it)")
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results",
                                                  "checkpoint.json"))
    args = p.parse_args(argv)

    import keras
    import numpy as np

    from mammoray.core.config import load_config
    from mammoray.model import checkpoint as ckpt
    from mammoray.model.unet import build_unet, count_trainable

    cfg = load_config(args.config)
    model = build_unet(cfg.model, args.size)
    optimizer = keras.optimizers.Adam(cfg.train.learning_rate)
    optimizer.build(model.trainable_variables)
    params = count_trainable(model)
    results = {"config": os.path.relpath(args.config, REPO), "trainable_parameters": params}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as work:
        rows = {}
        for name in ("before", "now", "published best/"):
            folder = os.path.join(work, name.split()[0])
            os.makedirs(folder)
            t0 = time.perf_counter()
            ckpt.write_checkpoint(folder, model, cfg.to_dict(), args.size, None)
            if name == "before":
                arrays = {f"m{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
                arrays.update({f"o{i}": np.asarray(v.numpy())
                               for i, v in enumerate(optimizer.variables)})
                np.savez(os.path.join(folder, "state.npz"), **arrays)
                del arrays
            elif name == "now":
                ckpt.save_state(folder, optimizer, [])
            rows[name] = {"bytes": folder_bytes(folder),
                          "files": {f: os.path.getsize(os.path.join(folder, f))
                                    for f in sorted(os.listdir(folder))},
                          "seconds": time.perf_counter() - t0}
            shutil.rmtree(folder)
    results["checkpoints"] = rows
    results["now_over_before"] = rows["now"]["bytes"] / rows["before"]["bytes"]
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(results, fh, indent=2)
    gb = 1e9
    print(f"Checkpoint bytes, {results['config']}: {params:,} trainable parameters")
    print(f"{'checkpoint':18} {'GB':>8} {'seconds':>8}  files")
    for name, row in rows.items():
        files = ", ".join(f"{f} {b / gb:.2f} GB" for f, b in row["files"].items())
        print(f"{name:18} {row['bytes'] / gb:8.2f} {row['seconds']:8.1f}  {files}")
    print(f"now / before: {results['now_over_before']:.2f}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
