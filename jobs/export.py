"""Export a checkpoint for serving: a TensorFlow SavedModel, and ONNX.

    python -m jobs.export --checkpoint PATH --output DIR [--no-onnx] [--overwrite]

Writes saved_model/ (signature `serve`: `image`, (N, S, S) uint16 preprocessed images as the
dataset stores them -> `probability`, (N, S, S) float32), model.onnx (the same contract),
preprocessing.json (what a DICOM goes through before the model) and export.json (what was
exported, and each export's largest difference from the checkpoint on a probe batch). Runs
in this process (no Ray); --checkpoint and --output may be local folders or s3:// / gs://.
"""

from __future__ import annotations

import argparse
import os
import sys

from jobs._cli import run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (<train output>/best)")
    p.add_argument("--output", required=True, help="export folder")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                   help="also write model.onnx (needs the export extra: tf2onnx, onnxruntime)")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace an existing export folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # before TensorFlow loads
        from mammoray.inference.export import ExportOptions, export_checkpoint

        export_checkpoint(ExportOptions(checkpoint=args.checkpoint, output=args.output,
                                        onnx=args.onnx, overwrite=args.overwrite))

    from mammoray.inference.export import ExportError

    return run(job, expected=(ExportError,))


if __name__ == "__main__":
    sys.exit(main())
