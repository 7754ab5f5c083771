"""Predict breast-mass masks for DICOM mammograms, on their original pixel grid.

    python -m jobs.predict --checkpoint PATH --input FILE_OR_DIR [--output DIR]
        [--threshold T] [--no-dicom-seg] [--overwrite | --skip-existing] [--actors N]
        [--address ADDR] [--num-cpus N] [--set ray.KEY=VALUE]

For each DICOM (*.dcm, *.dicom or a name without an extension, recursively): <stem>_prob.png,
<stem>_mask.png, <stem>_overlay.png, <stem>_seg.dcm (DICOM Segmentation) and <stem>.json, by
default beside the DICOM (so the folder is then a folder-format dataset); predict_summary.json
lists every input with its status. A file that cannot be read is reported with its reason and
the others are predicted.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_ray_flags, infer_overrides, ray_config, run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (<train output>/best)")
    p.add_argument("--input", required=True, help="a DICOM file or a folder of them")
    p.add_argument("--output", help="output root (default: beside the input DICOMs)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="probability threshold in (0, 1) (default 0.5)")
    p.add_argument("--dicom-seg", action=argparse.BooleanOptionalAction, default=True,
                   help="write <stem>_seg.dcm, a DICOM Segmentation (default: yes)")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace existing prediction files (by default an existing "
                        "<stem>_mask.png etc. stops the job before any work)")
    p.add_argument("--skip-existing", action=argparse.BooleanOptionalAction, default=False,
                   help="predict only the inputs whose outputs are not all there yet, and "
                        "keep the others (resumes a large prediction run)")
    p.add_argument("--actors", type=int, help="inference actors (default: one per CPU, or one "
                   "per GPU when the cluster has GPUs)")
    add_ray_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mammoray.inference.job import PredictOptions, run_prediction

    def job() -> None:
        if args.actors is not None and args.actors < 1:
            raise ValueError("--actors must be at least 1")
        ray_cfg = ray_config(args, "jobs.predict", ("ray", "infer"))
        summary = run_prediction(PredictOptions(
            checkpoint=args.checkpoint, input=args.input, output=args.output,
            threshold=args.threshold, dicom_seg=args.dicom_seg, overwrite=args.overwrite,
            skip_existing=args.skip_existing, actors=args.actors,
            infer=infer_overrides(args)), ray_cfg)
        if summary["predicted"] == 0 and summary["skipped"] == 0:
            raise ValueError(f"--input {args.input}: no file could be predicted "
                             f"({summary['rejected']} rejected; see predict_summary.json)")

    return run(job, expected=(ValueError,), interrupted=(
        "the predictions written so far are kept, each file whole; run the same command with "
        "--skip-existing to predict the rest"))


if __name__ == "__main__":
    sys.exit(main())
