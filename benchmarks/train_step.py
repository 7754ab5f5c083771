"""The U-Net's training step and forward pass with Keras' batch normalisation and with the
fused one (``mammoray.model.batchnorm``), side by side (not a test).

    .venv/bin/python benchmarks/train_step.py [--config jobs/configs/laptop.yaml]
        [--size 256] [--repeats 5] [--steps 10] [--filters 8,16] [--set k=v ...]

For the config's U-Net (with batch normalisation on) at ``--size``, batch ``train.batch_size``,
the training loop's own steps (``build_replica``: Adam, the config's loss, the metric sums), in
bfloat16 (when the CPU has it) and in float32: milliseconds per training step (forward,
backward, update) and per validation step (a forward pass in inference mode), for each batch
normalisation, and without any (a floor); all of it for each ``--filters`` base filter count
(the fused kernel's speed in bfloat16 depends on the channel counts). Variants run
alternately, ``--repeats`` rounds of ``--steps`` steps each, after a warm-up; medians. Prints a
table and writes ``benchmarks/results/train_step.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(REPO, "jobs", "configs", "laptop.yaml"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--filters", help="comma-separated base filter counts (default: the "
                   "config's model.base_filters)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. model.levels=4")
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results",
                                                  "train_step.json"))
    args = p.parse_args(argv)
    import numpy as np
    import tensorflow as tf
    from _datasets import parse_sets

    from mammoray.core.config import load_config
    from mammoray.model.batchnorm import standard_layers
    from mammoray.model.runtime import configure_tensorflow, cpu_has_bf16
    from mammoray.training.loop import build_replica

    cfg = load_config(args.config, parse_sets(p, args.set))
    widths = ([int(f) for f in args.filters.split(",")] if args.filters
              else [cfg.model.base_filters])
    configure_tensorflow(cfg.train.cpus_per_worker, use_gpu=False)
    policies = ["bf16", "off"] if cpu_has_bf16() else ["off"]
    rng = np.random.default_rng(0)
    batch = cfg.train.batch_size
    x = tf.constant(rng.random((batch, args.size, args.size, 1), np.float32))
    y = tf.constant((rng.random((batch, args.size, args.size, 1)) > 0.97).astype(np.float32))

    def variant(filters: int, precision: str, norm: str):
        """The training loop's own replica and steps (``build_replica``)."""
        run_cfg = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, batch_norm=norm != "none",
                                           base_filters=filters),
            train=dataclasses.replace(cfg.train, mixed_precision=precision, patch_size=0))
        replica = build_replica(run_cfg, args.size)

        def step():
            out = replica.strategy.run(replica.train_step, args=(x, y))
            return replica.strategy.experimental_local_results(out)[0]

        def forward():
            return replica.eval_step(x, y)

        def timed(fn) -> float:
            fn().numpy()  # a warm-up
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn().numpy()
            return 1000 * (time.perf_counter() - t0) / args.steps

        # The traces (the first calls) see Keras' layer for "keras"; later calls run them.
        scope = standard_layers(replica.model) if norm == "keras" else contextlib.nullcontext()
        with scope:
            step().numpy()
            forward().numpy()
        return lambda: (timed(step), timed(forward))

    names = [(filters, precision, norm) for filters in widths for precision in policies
             for norm in ("keras", "fused", "none")]
    runners = {name: variant(*name) for name in names}
    times: dict[tuple, list] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name, run in runners.items():
            times[name].append(run())
    rows = []
    labels = {"bf16": "mixed_bfloat16", "off": "float32"}
    for (filters, precision, norm), values in times.items():
        rows.append({"base_filters": filters, "policy": labels[precision], "batch_norm": norm,
                     "train_step_ms": statistics.median(v[0] for v in values),
                     "forward_ms": statistics.median(v[1] for v in values)})
    print(f"\nU-Net {cfg.model.levels} levels, batch {batch} of {args.size} x {args.size}, "
          f"{int(cfg.train.cpus_per_worker)} threads; medians of {args.repeats} x {args.steps} "
          "steps")
    print(f"{'filters':>7} {'dtype policy':16} {'batch norm':10} {'train step ms':>14} "
          f"{'vs keras':>9} {'forward ms':>11} {'vs keras':>9}")
    for row in rows:
        base = next(r for r in rows if r["policy"] == row["policy"]
                    and r["base_filters"] == row["base_filters"] and r["batch_norm"] == "keras")
        print(f"{row['base_filters']:7d} {row['policy']:16} {row['batch_norm']:10} "
              f"{row['train_step_ms']:14.1f} "
              f"{row['train_step_ms'] / base['train_step_ms']:9.2f} {row['forward_ms']:11.1f} "
              f"{row['forward_ms'] / base['forward_ms']:9.2f}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"config": args.config, "size": args.size, "batch": batch, "rows": rows}, fh,
                  indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
