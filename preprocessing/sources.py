"""Source adapters: a dataset tree -> one :class:`SourceImage` per image.

An adapter names the files of each image, its patient (a raw identity that stays in the
driver: the driver turns it into a salted key before anything reaches Ray workers), the
dataset's official split when it has one, and how the worker builds the image's mask
(``mask``: a small JSON-able spec read by ``preprocessing.masks``). An image an adapter cannot
resolve (a CSV row whose files are missing, a file name outside the dataset's convention) gets
``reject`` set: it is counted and reported like any other rejected file.

Formats:
- ``folder``: every ``*.dcm`` below the root; optional ``<stem>_mask.png`` beside it
  (0 = background, non-zero = mass); the patient is the DICOM PatientID. A ``<stem>_seg.dcm``
  beside ``<stem>.dcm`` (a jobs.predict DICOM SEG) is skipped.
- ``cbis-ddsm``: the TCIA download tree plus ``mass_case_description_{train,test}_set.csv``
  (and the calc tables, read for patient grouping). CSV rows are linked to files by the CSV's
  subject folder (``Mass-Training_P_00001_LEFT_CC``), accepting the CSV's own
  ``<UID>/<UID>/000000.dcm`` paths and the ``1-1.dcm`` / ``1-2.dcm`` names of downloads; the ROI
  mask is told from the cropped lesion by its size (the worker reads both headers); several
  abnormalities of one image become one image whose mask is their union. Patient = ``P_00001``.
- ``inbreast``: ``AllDICOMs/<FileName>_<hash>_MG_<L|R>_<CC|ML>_ANON.dcm``,
  ``AllXML/<FileName>.xml`` (OsiriX plist ROIs), ``INbreast.xls`` or its CSV export; the
  patient is the hash in the file name (repeat exams share it). An image without an XML file
  has no findings: its mask is annotated and empty.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mammoray.core import storage
from preprocessing.dicom_io import read_patient_id


class SourceError(ValueError):
    """A dataset root that does not look like its format (missing tables, wrong layout)."""


@dataclass
class SourceImage:
    """One image found by an adapter. ``patient`` is a raw identity (driver-side only)."""

    source: str
    relpath: str
    dicom_path: str
    mask: dict[str, Any] | None
    patient: str | None
    official_split: str | None = None
    laterality: str | None = None
    view: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    reject: str | None = None
    # The patient has a case in the dataset's official test split (possibly in another table,
    # such as CBIS-DDSM's calcification cases): all of the patient's images go to test.
    official_test_patient: bool = False


def _relpath(path: str, root: str) -> str:
    return posixpath.relpath(path.replace("\\", "/"), root.replace("\\", "/").rstrip("/"))


def _header_patient_id(path: str) -> str | None:
    try:
        with storage.open_input(path) as fh:
            return read_patient_id(fh)
    except OSError:
        return None


# --------------------------------------------------------------------------------- folder

def scan_folder(root: str, source: str, options: Any = None) -> list[SourceImage]:
    """Folder-format images below ``root``, sorted by relative path."""
    files = storage.list_files(root)
    present = set(files)
    # ``<stem>_seg.dcm`` beside ``<stem>.dcm`` is jobs.predict's DICOM SEG, not a mammogram.
    dicoms = [f for f in files if f.lower().endswith(".dcm")
              and not (f.lower().endswith("_seg.dcm") and f[: -len("_seg.dcm")] + ".dcm"
                       in present)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        patients = list(pool.map(_header_patient_id, dicoms))
    images = []
    for path, patient in zip(dicoms, patients):
        mask = path[: -len(".dcm")] + "_mask.png"
        images.append(SourceImage(
            source=source, relpath=_relpath(path, root), dicom_path=path,
            mask={"kind": "png", "path": mask} if mask in present else None, patient=patient))
    return images


# ------------------------------------------------------------------------------ CBIS-DDSM

CBIS_SUBJECT = re.compile(r"^(Mass|Calc)-(Training|Test)_(P_\d+)_(LEFT|RIGHT)_(CC|MLO)(?:_(\d+))?$")
_PATHOLOGY_RANK = {"BENIGN_WITHOUT_CALLBACK": 0, "BENIGN": 1, "MALIGNANT": 2}


def _read_csv(path: str) -> list[dict[str, str]]:
    text = storage.read_bytes(path).decode("utf-8-sig")
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()}
            for row in csv.DictReader(io.StringIO(text))]


def _subject_of(csv_path: str) -> str:
    return csv_path.strip().replace("\\", "/").split("/")[0]


def _cbis_tables(files: list[str], root: str) -> dict[tuple[str, str], list[dict[str, str]]]:
    tables: dict[tuple[str, str], list[dict[str, str]]] = {}
    for path in files:
        m = re.match(r"^(mass|calc)_case_description_(train|test)_set\.csv$",
                     posixpath.basename(path), re.I)
        if m:
            tables[(m.group(1).lower(), m.group(2).lower())] = _read_csv(path)
    if not any(kind == "mass" for kind, _ in tables):
        raise SourceError(f"--input {root}: no mass_case_description_{{train,test}}_set.csv "
                          f"found; a CBIS-DDSM root holds the case description CSVs and the "
                          f"CBIS-DDSM/ image tree")
    return tables


def _files_by_subject(files: list[str]) -> dict[str, list[str]]:
    by_subject: dict[str, list[str]] = defaultdict(list)
    for path in files:
        if not path.lower().endswith(".dcm"):
            continue
        for part in path.replace("\\", "/").split("/"):
            if CBIS_SUBJECT.match(part):
                by_subject[part].append(path)
                break
    return by_subject


def _worst(values: list[str], rank: dict[str, int]) -> str | None:
    known = [v for v in values if v in rank]
    return max(known, key=rank.__getitem__) if known else (values[0] if values else None)


def _max_int(values: list[str]) -> int | None:
    ints = [int(v) for v in values if v.strip().lstrip("-").isdigit()]
    return max(ints) if ints else None


def _max_text(values: list[str]) -> str | None:
    value = _max_int(values)
    return None if value is None else str(value)


def _joined(values: list[str]) -> str | None:
    unique = list(dict.fromkeys(v for v in values if v))
    return ";".join(unique) if unique else None


def scan_cbis_ddsm(root: str, source: str, options: Any = None) -> list[SourceImage]:
    files = storage.list_files(root)
    tables = _cbis_tables(files, root)
    by_subject = _files_by_subject(files)
    # CSV paths are <subject>/<study UID>/<series UID>/<file>: index files by their last four
    # path components to find the exact file of a "classic" (UID-named) download.
    by_tail = {"/".join(f.replace("\\", "/").split("/")[-4:]): f for f in files}
    images = []
    for split in ("train", "test"):
        grouped: dict[str, list[dict[str, str]]] = defaultdict(list)
        for row in tables.get(("mass", split), []):
            grouped[_subject_of(row["image file path"])].append(row)
        for subject in sorted(grouped):
            rows = sorted(grouped[subject], key=lambda r: r.get("abnormality id", ""))
            first = rows[0]
            csv_path = first["image file path"].strip()
            exact = by_tail.get(csv_path)
            candidates = by_subject.get(subject, [])
            full = exact or (candidates[0] if len(candidates) == 1 else None)
            image = SourceImage(
                source=source, relpath=_relpath(full, root) if full else csv_path,
                dicom_path=full or "", mask=None, patient=first.get("patient_id") or None,
                official_split=split,
                laterality={"LEFT": "L", "RIGHT": "R"}.get(first.get("left or right breast")),
                view=first.get("image view") or None,
                extra={"pathology": _worst([r.get("pathology", "") for r in rows],
                                           _PATHOLOGY_RANK),
                       "assessment": _max_text([r.get("assessment", "") for r in rows]),
                       "subtlety": _max_int([r.get("subtlety", "") for r in rows]),
                       "mass_shape": _joined([r.get("mass shape", "") for r in rows]),
                       "mass_margins": _joined([r.get("mass margins", "") for r in rows]),
                       "abnormality_count": len(rows),
                       "breast_density": (first.get("breast_density")
                                          or first.get("breast density") or None)})
            if full is None:
                image.reject = (f"full image of {subject} not found (expected one DICOM in "
                                f"its folder, found {len(candidates)})")
            rois = []
            for row in rows:
                roi_subject = _subject_of(row["ROI mask file path"])
                roi_files = sorted(by_subject.get(roi_subject, []))
                if not roi_files and image.reject is None:
                    image.reject = f"ROI files of {roi_subject} not found"
                rois.append(roi_files)
            image.mask = {"kind": "cbis-roi", "candidates": rois}
            images.append(image)
    # Group on the patient across the mass and calc tables: a patient with any official test
    # case (mass or calcification) is a test patient.
    test_patients = {row.get("patient_id", "") for (_, split), rows in tables.items()
                     if split == "test" for row in rows} - {""}
    for image in images:
        image.official_test_patient = image.patient in test_patients
    return images


# ------------------------------------------------------------------------------- INbreast

INBREAST_NAME = re.compile(r"^(\d+)_([0-9A-Za-z]+)_MG_([LR])_(CC|ML|MLO)_ANON\.dcm$", re.I)


def _inbreast_table(files: list[str]) -> dict[str, dict[str, str]]:
    """INbreast.xls (or its CSV export), by File Name; empty when absent."""
    xls = [f for f in files if posixpath.basename(f).lower() == "inbreast.xls"]
    rows: list[list[str]] = []
    if xls:
        import xlrd

        sheet = xlrd.open_workbook(file_contents=storage.read_bytes(xls[0])).sheet_by_index(0)
        rows = [[_cell(sheet.cell_value(r, c)) for c in range(sheet.ncols)]
                for r in range(sheet.nrows)]
    else:
        found = [f for f in files if posixpath.basename(f).lower() == "inbreast.csv"]
        if found:
            text = storage.read_bytes(found[0]).decode("utf-8-sig")
            dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=";,\t")
            rows = [[c.strip() for c in row] for row in csv.reader(io.StringIO(text), dialect)]
    if not rows:
        return {}
    header = [h.strip() for h in rows[0]]
    table = {}
    for row in rows[1:]:
        record = dict(zip(header, row))
        name = record.get("File Name", "").strip()
        if name:
            table[name] = record
    return table


def _cell(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def scan_inbreast(root: str, source: str, options: Any = None) -> list[SourceImage]:
    files = storage.list_files(root)
    dicoms = [f for f in files if "/alldicoms/" in f.replace("\\", "/").lower()
              and f.lower().endswith(".dcm")]
    if not dicoms:
        raise SourceError(f"--input {root}: no AllDICOMs/*.dcm found; an INbreast root holds "
                          f"AllDICOMs/, AllXML/ and INbreast.xls")
    xmls = {posixpath.basename(f)[:-4]: f for f in files
            if "/allxml/" in f.replace("\\", "/").lower() and f.lower().endswith(".xml")}
    table = _inbreast_table(files)
    names = list(getattr(options, "mass_roi_names", None) or [])
    images = []
    for path in dicoms:
        name = posixpath.basename(path)
        m = INBREAST_NAME.match(name)
        image = SourceImage(source=source, relpath=_relpath(path, root), dicom_path=path,
                            mask=None, patient=None)
        if not m:
            image.reject = ("file name does not follow INbreast's "
                            "<FileName>_<hash>_MG_<L|R>_<CC|ML>_ANON.dcm")
            images.append(image)
            continue
        file_name, patient_hash, lat, view = m.groups()
        row = table.get(file_name, {})
        image.patient = patient_hash
        image.laterality = lat.upper()
        image.view = "MLO" if view.upper() in ("ML", "MLO") else view.upper()
        image.extra = {"assessment": row.get("Bi-Rads") or None,
                       "breast_density": row.get("ACR") or None}
        xml = xmls.get(file_name)
        image.mask = ({"kind": "inbreast-xml", "path": xml, "names": names} if xml
                      else {"kind": "empty"})
        images.append(image)
    return images


Scanner = Callable[[str, str, Any], list[SourceImage]]
SCANNERS: dict[str, Scanner] = {"folder": scan_folder, "cbis-ddsm": scan_cbis_ddsm,
                                "inbreast": scan_inbreast}
