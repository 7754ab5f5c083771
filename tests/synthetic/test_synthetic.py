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
    assert len(truth["images"]) == 8 and len(truth["defects"]) == 7
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


def test_scanned_film_with_margins_and_labels(tmp_path):
    """The scanned-film trait: the breast touches no edge of the frame, labels and markers
    are off the breast (inside its bounding box for some), the header says nothing of the
    side, and the truth records the chest wall's side, the label boxes and pixels."""
    import cv2

    from mammoray.synthetic.images import LABEL_GAP_FRACTION

    truth = write_folder_dataset(FolderOptions(output=str(tmp_path), patients=3, seed=9,
                                               height=320, width=256, scanned=True))
    inside_box = 0
    for image in truth["images"]:
        ds = pydicom.dcmread(tmp_path / image["relpath"])
        for keyword in ("PatientOrientation", "ImageLaterality", "Laterality"):
            assert keyword not in ds
        assert image["chest_wall"] == ("left" if image["laterality"] == "L" else "right")
        breast = cv2.imread(str(tmp_path / image["breast"]), cv2.IMREAD_GRAYSCALE) > 0
        labels = cv2.imread(str(tmp_path / image["labels"]), cv2.IMREAD_GRAYSCALE) > 0
        assert not (breast[0].any() or breast[-1].any() or breast[:, 0].any()
                    or breast[:, -1].any())
        assert labels.any() and len(image["label_boxes"]) >= 2
        gap = int(LABEL_GAP_FRACTION * 320)
        near = cv2.dilate(breast.astype(np.uint8), cv2.getStructuringElement(
            cv2.MORPH_ELLIPSE, (2 * gap - 1, 2 * gap - 1)))  # closer than the gap
        assert not (labels & (near > 0)).any()
        x0, y0, x1, y1 = image["breast_box"]
        inside_box += sum(bx0 >= x0 and bx1 <= x1 and by0 >= y0 and by1 <= y1
                          for bx0, by0, bx1, by1 in image["label_boxes"])
        # Labels are burnt in bright on the dark film background.
        pixels = ds.pixel_array
        assert pixels[labels].min() >= 0.9 * 65535 - 1
        assert np.median(pixels[~breast & ~labels]) < 0.15 * 65535
    assert inside_box >= 3  # some labels sit inside the breast's bounding box
    assert {i["chest_wall"] for i in truth["images"]} == {"left", "right"}


def test_a_damaged_rle_segment_table_really_panics(tmp_path):
    from mammoray.synthetic import dicom_write
    from preprocessing.dicom_io import read_dicom

    truth = write_folder_dataset(FolderOptions(output=str(tmp_path), patients=1, seed=3,
                                               height=96, width=80, defects=True))
    assert {"relpath": "defects/corrupt_rle.dcm", "expect": "decoder crashed"} in \
        truth["defects"]
    data = (tmp_path / "defects" / "corrupt_rle.dcm").read_bytes()
    assert dicom_write.TRANSFER_SYNTAXES["rle"][0].encode() in data
    with pytest.raises(BaseException) as info:
        read_dicom(data)
    assert type(info.value).__name__ == "PanicException"
    assert not isinstance(info.value, Exception)
