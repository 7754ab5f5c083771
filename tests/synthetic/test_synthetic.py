"""The synthetic generator: deterministic, masks inside the breast, real-world traps present."""

import json

import numpy as np
import pydicom
import pytest

from mammoray.synthetic.common import fake_patient
from mammoray.synthetic.folder import FolderOptions, write_folder_dataset
from mammoray.synthetic.images import synthesize_image

pytestmark = pytest.mark.unit


def test_deterministic_by_seed():
    a = synthesize_image(np.random.default_rng(4), 256, 208, "L", "MLO", n_masses=2)
    b = synthesize_image(np.random.default_rng(4), 256, 208, "L", "MLO", n_masses=2)
    np.testing.assert_array_equal(a.stored, b.stored)
    np.testing.assert_array_equal(a.mask, b.mask)
    c = synthesize_image(np.random.default_rng(5), 256, 208, "L", "MLO", n_masses=2)
    assert not np.array_equal(a.stored, c.stored)


def test_masses_inside_breast_and_brighter():
    img = synthesize_image(np.random.default_rng(1), 400, 320, "L", "CC", n_masses=2)
    assert len(img.masses) == 2 and img.mask.sum() > 0
    assert np.all(img.breast[img.mask > 0] == 1)
    ring = (img.breast > 0) & (img.mask == 0)
    assert img.stored[img.mask > 0].mean() > img.stored[ring].mean()


def test_right_breast_is_mirrored():
    left = synthesize_image(np.random.default_rng(2), 256, 208, "L", "CC", n_masses=0)
    right = synthesize_image(np.random.default_rng(2), 256, 208, "R", "CC", n_masses=0)
    np.testing.assert_array_equal(right.stored, left.stored[:, ::-1])
    assert left.breast[:, 0].any() and not left.breast[:, -1].any()
    assert right.breast[:, -1].any() and not right.breast[:, 0].any()


def test_film_has_bright_borders_and_labels():
    img = synthesize_image(np.random.default_rng(3), 400, 320, "L", "CC", film=True)
    assert img.bits_stored == 16
    outer_column = img.stored[:, -1]
    assert outer_column.min() > 0.85 * 65535  # bright border along the outer edge
    assert (img.stored[: 400 // 4, 320 // 2:] > 0.95 * 65535).sum() > 50  # the label


def test_monochrome1_inverts_stored_values():
    m2 = synthesize_image(np.random.default_rng(6), 128, 96, "L", "CC")
    m1 = synthesize_image(np.random.default_rng(6), 128, 96, "L", "CC", monochrome1=True)
    assert m1.photometric == "MONOCHROME1"
    np.testing.assert_array_equal(m1.stored, (1 << 14) - 1 - m2.stored.astype(int))


def test_folder_dataset_layout(tmp_path):
    truth = write_folder_dataset(FolderOptions(output=str(tmp_path), patients=2, seed=3,
                                               height=160, width=128, defects=True,
                                               transfer_syntax="mixed"))
    assert len(truth["images"]) == 8 and len(truth["defects"]) == 6
    first = truth["images"][0]
    ds = pydicom.dcmread(tmp_path / first["relpath"])
    patient = fake_patient(3, 0)
    assert str(ds.PatientName) == patient["PatientName"]
    assert ds.ImageLaterality == first["laterality"] and ds.ViewPosition == first["view"]
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    mask_png = tmp_path / first["relpath"].replace(".dcm", "_mask.png")
    assert mask_png.exists()
    on_disk = json.loads((tmp_path / "truth.json").read_text())
    assert on_disk["images"][0]["breast_box"] == first["breast_box"]
