"""The U-Net's training step and forward pass with Keras' batch normalisation and with the
fused one (``mammoray.model.batchnorm``), side by side (not a test).

    .venv/bin/python benchmarks/train_step.py [--config jobs/configs/laptop.yaml]
        [--size 256] [--repeats 5] [--steps 10]

For the config's U-Net (with batch normalisation on) at ``--size``, batch ``train.batch_size``,
Adam and the config's loss, in bfloat16 (when the CPU has it: ``mixed_precision: auto``) and in
float32: milliseconds per training step (forward, backward, update) and per forward pass in
inference mode, for each batch normalisation, and without any (a floor). Variants run
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
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results",
                                                  "train_step.json"))
    args = p.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from mammoray.core.config import load_config
    from mammoray.model.batchnorm import standard_layers
    from mammoray.model.losses import LOSSES
    from mammoray.model.runtime import configure_tensorflow, precision_policy
    from mammoray.model.unet import build_unet

    cfg = load_config(args.config)
    configure_tensorflow(cfg.train.cpus_per_worker, use_gpu=False)
    policies = ["float32"]
    bf16 = precision_policy(dataclasses.replace(cfg.train, mixed_precision="auto"))
    if bf16 != "float32":
        policies.insert(0, bf16)
    rng = np.random.default_rng(0)
    batch = cfg.train.batch_size
    x = tf.constant(rng.random((batch, args.size, args.size, 1), np.float32))
    y = tf.constant((rng.random((batch, args.size, args.size, 1)) > 0.97).astype(np.float32))
    loss_fn = LOSSES[cfg.train.loss]

    def variant(policy: str, norm: str):
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(0)
        model = build_unet(dataclasses.replace(cfg.model, batch_norm=norm != "none"), args.size)
        optimizer = keras.optimizers.Adam(1e-4)
        scope = standard_layers(model) if norm == "keras" else contextlib.nullcontext()

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        @tf.function
        def forward():
            return model(x, training=False)

        def timed(fn) -> float:
            fn().numpy()  # a warm-up
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn().numpy()
            return 1000 * (time.perf_counter() - t0) / args.steps

        # The traces (the first calls) see Keras' layer for "keras"; later calls run them.
        with scope:
            step().numpy()
            forward().numpy()
        return lambda: (timed(step), timed(forward))

    names = [(policy, norm) for policy in policies for norm in ("keras", "fused", "none")]
    runners = {name: variant(*name) for name in names}
    times: dict[tuple, list] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name, run in runners.items():
            times[name].append(run())
    rows = []
    for (policy, norm), values in times.items():
        rows.append({"policy": policy, "batch_norm": norm,
                     "train_step_ms": statistics.median(v[0] for v in values),
                     "forward_ms": statistics.median(v[1] for v in values)})
    print(f"\nU-Net {cfg.model.levels} levels, {cfg.model.base_filters} filters, batch {batch} "
          f"of {args.size} x {args.size}, {int(cfg.train.cpus_per_worker)} threads; medians of "
          f"{args.repeats} x {args.steps} steps")
    print(f"{'dtype policy':16} {'batch norm':10} {'train step ms':>14} {'vs keras':>9} "
          f"{'forward ms':>11} {'vs keras':>9}")
    for row in rows:
        base = next(r for r in rows if r["policy"] == row["policy"]
                    and r["batch_norm"] == "keras")
        print(f"{row['policy']:16} {row['batch_norm']:10} {row['train_step_ms']:14.1f} "
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
