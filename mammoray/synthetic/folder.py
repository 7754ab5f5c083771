"""The ``folder`` layout of ``jobs.synthesize``: ``patient_<n>/<L|R>_<CC|MLO>.dcm`` with the
exact ground truth beside each image (``<stem>_mask.png``), optional unusable files under
``defects/``, and ``truth.json`` (masses, breast boxes, transfer syntaxes, headers dropped).

Each patient has 4 images written as DICOM (Digital Mammography X-Ray Image Storage) with fake
patient fields. Some images lack PatientOrientation or laterality (so every orientation path is
used) and a fraction are MONOCHROME1.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pydicom import uid

from mammoray.synthetic import dicom_write
from mammoray.synthetic.common import VIEWS, SynthOptions, fake_patient, truth_png, write_mask_png
from mammoray.synthetic.images import SyntheticImage, synthesize_image, synthesize_scanned

# The transfer syntaxes a "mixed" folder dataset draws from.
FOLDER_SYNTAXES = ("explicit-le", "rle", "jpeg-ls", "jpeg2000-lossless", "deflated",
                   "jpeg-lossless-sv1")


@dataclass(frozen=True)
class FolderOptions(SynthOptions):
    """What ``jobs.synthesize --format folder`` writes."""

    transfer_syntax: str = "explicit-le"
    film: bool = False
    # Film digitised with background margins on every side, labels and lead markers anywhere
    # (next to the breast and inside its box included), no orientation or laterality in the
    # header: the image alone must tell the chest wall's side. Implies film.
    scanned: bool = False
    monochrome1_fraction: float = 0.15
    defects: bool = False
    workers: int = 1


def _header(img: SyntheticImage, patient: dict[str, Any], study_uid: str,
            frame_uid: str, drop: str) -> dict[str, Any]:
    orient_row = "A" if img.laterality == "L" else "P"
    orient_col = ("F" if img.view == "CC" else "FL" if img.laterality == "L" else "FR")
    attrs: dict[str, Any] = dict(patient)
    attrs.update(
        StudyInstanceUID=study_uid, FrameOfReferenceUID=frame_uid,
        SeriesNumber=1, InstanceNumber=1, ViewPosition=img.view,
        ImageLaterality=img.laterality, PatientOrientation=[orient_row, orient_col],
        PixelSpacing=[round(img.pixel_spacing_mm, 6)] * 2,
        ImagerPixelSpacing=[round(img.pixel_spacing_mm, 6)] * 2,
        PresentationIntentType="FOR PRESENTATION", BodyPartExamined="BREAST",
        BreastImplantPresent="NO", Manufacturer="mammoray synthetic",
        BurnedInAnnotation="NO", ImageType=["ORIGINAL", "PRIMARY"],
    )
    if img.window is not None:
        attrs.update(WindowCenter=round(img.window[0], 1), WindowWidth=round(img.window[1], 1),
                     VOILUTFunction="LINEAR")
    if drop in ("orientation", "all"):
        del attrs["PatientOrientation"]
    if drop == "all":
        del attrs["ImageLaterality"]
    return attrs


def _patient_images(args: tuple[FolderOptions, int]) -> list[dict[str, Any]]:
    opts, index = args
    rng = np.random.default_rng([opts.seed, index])
    patient = fake_patient(opts.seed, index)
    study_uid = uid.generate_uid(entropy_srcs=[str(opts.seed), str(index), "study"])
    folder = os.path.join(opts.output, f"patient_{index:04d}")
    os.makedirs(folder, exist_ok=True)
    density = rng.uniform(0.1, 0.9)
    truth = []
    for laterality, view in VIEWS:
        n_masses = int(rng.choice([0, 1, 2], p=[0.35, 0.5, 0.15]))
        mono1 = bool(rng.random() < opts.monochrome1_fraction)
        if opts.scanned:
            img = synthesize_scanned(rng, opts.height, opts.width, laterality, view,
                                     n_masses=n_masses, density=density)
        else:
            img = synthesize_image(rng, opts.height, opts.width, laterality, view,
                                   film=opts.film, n_masses=n_masses, density=density,
                                   monochrome1=mono1)
        syntax = (FOLDER_SYNTAXES[int(rng.integers(len(FOLDER_SYNTAXES)))]
                  if opts.transfer_syntax == "mixed" else opts.transfer_syntax)
        roll = rng.random()
        drop = "all" if roll < 0.05 or opts.scanned else "orientation" if roll < 0.15 else "none"
        frame_uid = uid.generate_uid(entropy_srcs=[str(opts.seed), str(index), laterality])
        attrs = _header(img, patient, study_uid, frame_uid, drop)
        attrs["SeriesInstanceUID"] = uid.generate_uid(
            entropy_srcs=[str(opts.seed), str(index), laterality, view, "series"])
        attrs["SOPInstanceUID"] = uid.generate_uid(
            entropy_srcs=[str(opts.seed), str(index), laterality, view, "image"])
        ds = dicom_write.image_dataset(img.stored, bits_stored=img.bits_stored,
                                       photometric=img.photometric, attributes=attrs)
        stem = f"{laterality}_{view}"
        with open(os.path.join(folder, stem + ".dcm"), "wb") as fh:
            fh.write(dicom_write.encode(ds, syntax))
        write_mask_png(os.path.join(folder, stem + "_mask.png"), img.mask)
        relpath = f"patient_{index:04d}/{stem}.dcm"
        entry = {
            "relpath": relpath, "patient": index,
            "laterality": laterality, "view": view, "height": opts.height,
            "width": opts.width, "film": opts.film or opts.scanned,
            "photometric": img.photometric, "transfer_syntax": syntax,
            "header_dropped": drop, "chest_wall": img.chest_wall,
            "breast_box": list(img.breast_box), "mass_pixels": int(img.mask.sum()),
            "masses": [asdict(m) for m in img.masses],
        }
        if opts.scanned:
            # What a test needs to check label removal and breast loss: every label pixel,
            # and the breast itself.
            entry.update(label_boxes=[list(b) for b in img.label_boxes],
                         labels=truth_png(opts.output, relpath, img.labels, "labels"),
                         breast=truth_png(opts.output, relpath, img.breast, "breast"))
        truth.append(entry)
    return truth


def write_defects(folder: str, seed: int) -> list[dict[str, str]]:
    """Files a real archive contains that are not usable mammograms, each with the reason the
    reader must give (a substring of it)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng([seed, 99])
    patient = fake_patient(seed, 9999)
    good = synthesize_image(rng, 256, 208, "L", "CC", n_masses=1)
    ds = dicom_write.image_dataset(good.stored, bits_stored=14, attributes=patient)
    defects = []

    def put(name: str, data: bytes, expect: str) -> None:
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(data)
        defects.append({"relpath": f"defects/{name}", "expect": expect})

    put("not_dicom.dcm", b"this is a text file, not a DICOM object\n" * 20, "not a DICOM")
    full = dicom_write.encode(ds, "explicit-le")
    put("truncated.dcm", full[: len(full) * 6 // 10], "truncated")
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 200
    sc = dicom_write.image_dataset(rgb[..., 0], bits_stored=8,
                                   sop_class=uid.SecondaryCaptureImageStorage,
                                   attributes=patient)
    sc.SamplesPerPixel, sc.PhotometricInterpretation, sc.PlanarConfiguration = 3, "RGB", 0
    sc.PixelData = rgb.tobytes()
    put("secondary_capture_rgb.dcm", dicom_write.encode(sc, "explicit-le"), "colour")
    sr = dicom_write.image_dataset(good.stored, bits_stored=14, sop_class=uid.BasicTextSRStorage,
                                   attributes=patient)
    del sr.PixelData
    sr.Modality = "SR"
    put("structured_report.dcm", dicom_write.encode(sr, "explicit-le"), "no pixel data")
    frames = np.stack([good.stored[:64, :64]] * 3)
    mf = dicom_write.image_dataset(good.stored[:64, :64], bits_stored=14, attributes=patient)
    mf.NumberOfFrames = 3
    mf.PixelData = frames.tobytes()
    put("multiframe.dcm", dicom_write.encode(mf, "explicit-le"), "multi-frame")
    put("mask_mismatch.dcm", full, "does not match")
    # A damaged RLE segment table: the decoder panics (a BaseException) instead of raising.
    put("corrupt_rle.dcm", dicom_write.corrupt_rle_segments(dicom_write.encode(ds, "rle")),
        "decoder crashed")
    write_mask_png(os.path.join(folder, "mask_mismatch_mask.png"), np.ones((100, 80), np.uint8))
    return defects


def write_folder_dataset(opts: FolderOptions,
                         progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """Write ``opts.patients`` patients x 4 views (+ defects) and ``truth.json``;
    ``progress()`` after each patient."""
    if (opts.transfer_syntax != "mixed"
            and opts.transfer_syntax not in dicom_write.TRANSFER_SYNTAXES):
        raise ValueError(f"transfer syntax {opts.transfer_syntax!r}: choose mixed or one of "
                         + ", ".join(dicom_write.TRANSFER_SYNTAXES))
    os.makedirs(opts.output, exist_ok=True)
    jobs = [(opts, i) for i in range(opts.patients)]
    per_patient = []
    with ProcessPoolExecutor(max_workers=opts.workers) if opts.workers > 1 else \
            contextlib.nullcontext() as pool:
        for group in (pool.map(_patient_images, jobs) if pool else map(_patient_images, jobs)):
            per_patient.append(group)
            if progress is not None:
                progress()
    images = [t for group in per_patient for t in group]
    defects = write_defects(os.path.join(opts.output, "defects"), opts.seed) if opts.defects else []
    truth = {"format": "folder", "options": asdict(opts), "images": images, "defects": defects}
    with open(os.path.join(opts.output, "truth.json"), "w", encoding="utf-8") as fh:
        json.dump(truth, fh, indent=1)
    return truth
