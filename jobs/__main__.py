"""``mammoray <job> [flags]`` (the console command pyproject installs) and ``python -m jobs
<job> [flags]``: the same jobs as ``python -m jobs.<job>``, which stays the form for
``ray job submit`` (it needs nothing installed on the cluster but the repository)."""

from __future__ import annotations

import importlib
import sys

JOBS = {
    "synthesize": "write a synthetic DICOM dataset (folder, CBIS-DDSM or INbreast layout)",
    "preprocess": "DICOM dataset -> Parquet, in parallel with Ray Data",
    "train": "train the U-Net with Ray Train",
    "tune": "search hyper-parameters with Ray Tune + Optuna",
    "evaluate": "score a checkpoint on a split: metrics, FROC, overlays, report",
    "predict": "masks for new DICOMs on their original pixel grid (PNG, DICOM SEG)",
    "export": "a checkpoint as a TensorFlow SavedModel and ONNX",
    "demo": "every stage on synthetic data in demo_output/",
}


def usage() -> str:
    width = max(map(len, JOBS))
    return ("usage: mammoray <job> [flags]   (mammoray <job> --help for the job's flags)\n\n"
            "jobs:\n" + "\n".join(f"  {name:<{width}}  {text}" for name, text in JOBS.items()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        print(f"error: unknown job '{job}'; choose one of {', '.join(JOBS)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"jobs.{job}").main(rest)


if __name__ == "__main__":
    sys.exit(main())
