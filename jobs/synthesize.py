"""Write a synthetic mammography dataset (DICOM + masks) in a real dataset layout.

    python -m jobs.synthesize --output DIR [--format folder|cbis-ddsm|inbreast] [--patients N]
        [--seed N] [--height H --width W] [--film | --scanned-film]
        [--transfer-syntax NAME|mixed] [--defects]

cbis-ddsm and inbreast write those datasets' real layouts with their traps (scanned film for
CBIS-DDSM, digital for INbreast; --film, --scanned-film and --defects apply to the folder
format).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from jobs._cli import run
from mammoray.core.config import ConfigError
from mammoray.core.ticker import Ticker
from mammoray.synthetic import dicom_write
from mammoray.synthetic.cbis_ddsm import write_cbis_ddsm
from mammoray.synthetic.common import SynthOptions
from mammoray.synthetic.folder import FolderOptions, write_folder_dataset
from mammoray.synthetic.inbreast import write_inbreast

FORMATS = ("folder", "cbis-ddsm", "inbreast")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.synthesize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="folder to write (must not exist or be "
                   "empty)")
    p.add_argument("--format", default="folder", help=f"layout: {', '.join(FORMATS)}")
    p.add_argument("--patients", type=int, default=4, help="patients (4 images each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=512, help="image rows (full field: 4084)")
    p.add_argument("--width", type=int, default=416, help="image columns (full field: 3328)")
    p.add_argument("--film", action=argparse.BooleanOptionalAction, default=False, help="scanned-film look: 16-bit, labels, "
                   "bright borders, tape (CBIS-DDSM-like)")
    p.add_argument("--scanned-film", action=argparse.BooleanOptionalAction, default=False,
                   help="film digitised with background margins on every side, labels and "
                        "lead markers anywhere (inside the breast's box included), no "
                        "orientation or laterality in the header; truth/ keeps the label "
                        "pixels and the breast")
    p.add_argument("--transfer-syntax", default="explicit-le",
                   help="mixed, or one of: " + ", ".join(dicom_write.TRANSFER_SYNTAXES))
    p.add_argument("--monochrome1-fraction", type=float, default=0.15,
                   help="fraction of images written as MONOCHROME1")
    p.add_argument("--defects", action=argparse.BooleanOptionalAction, default=False, help="add unusable files (truncated, "
                   "colour, SR, multi-frame, non-DICOM, mismatched mask) under defects/")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    return p.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> FolderOptions | SynthOptions:
    if args.format not in FORMATS:
        raise ConfigError(f"--format {args.format}: choose one of {', '.join(FORMATS)}")
    if not 1 <= args.patients <= 100000:
        raise ConfigError(f"--patients {args.patients}: allowed 1 to 100000")
    if not (64 <= args.height <= 16384 and 64 <= args.width <= 16384):
        raise ConfigError(f"--height/--width {args.height} x {args.width}: allowed 64 to 16384")
    if (args.transfer_syntax != "mixed"
            and args.transfer_syntax not in dicom_write.TRANSFER_SYNTAXES):
        raise ConfigError(f"--transfer-syntax {args.transfer_syntax}: choose mixed or one of "
                          + ", ".join(dicom_write.TRANSFER_SYNTAXES))
    if not 0.0 <= args.monochrome1_fraction <= 1.0:
        raise ConfigError(f"--monochrome1-fraction {args.monochrome1_fraction}: allowed 0 to 1")
    if os.path.isdir(args.output) and os.listdir(args.output):
        raise ConfigError(f"--output {args.output}: exists and is not empty")
    if args.format != "folder":
        return SynthOptions(output=os.path.abspath(args.output), patients=args.patients,
                             seed=args.seed, height=args.height, width=args.width,
                             transfer_syntax=args.transfer_syntax)
    return FolderOptions(output=os.path.abspath(args.output), patients=args.patients,
                         seed=args.seed, height=args.height, width=args.width, film=args.film,
                         scanned=args.scanned_film,
                         transfer_syntax=args.transfer_syntax,
                         monochrome1_fraction=args.monochrome1_fraction, defects=args.defects,
                         workers=max(1, args.workers))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> None:
        opts = options_from_args(args)
        t0 = time.time()
        writers = {"folder": write_folder_dataset, "cbis-ddsm": write_cbis_ddsm,
                   "inbreast": write_inbreast}
        ticker = Ticker(f"synthesize: {args.format}", opts.patients, unit="patients")
        truth = writers[args.format](opts, ticker)
        defects = len(truth.get("defects", []))
        print(f"synthesize: {len(truth['images'])} {args.format} images of {opts.patients} "
              f"patients ({opts.height} x {opts.width}) + {defects} defect files "
              f"-> {opts.output} in {time.time() - t0:.1f} s")

    return run(job)


if __name__ == "__main__":
    sys.exit(main())
