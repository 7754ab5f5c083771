"""Augmentation: image and mask move together, deterministic, only on training rows."""

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from mammoray.core.config import AugmentConfig, DataConfig
from preprocessing.augment import augment, build_augmenter, copies_for
from preprocessing.transform import image_from_row, process_batch

pytestmark = pytest.mark.unit

OFF = dict(elastic_p=0.0, brightness_p=0.0, rotate_p=0.0)


def structure(size=128):
    """A bright off-centre disk on a dark ramp; the mask marks the disk."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = (xx * 80).astype(np.uint16) + 5000
    disk = (xx - 80) ** 2 + (yy - 50) ** 2 <= 15 ** 2
    image[disk] = 60000
    return image, disk.astype(np.uint8)


@pytest.mark.parametrize("name,params", [
    ("elastic", dict(elastic_p=1.0, elastic_alpha=60.0, elastic_sigma=6.0)),
    ("rotate", dict(rotate_p=1.0, rotate_limit=40.0)),
    ("brightness", dict(brightness_p=1.0, brightness_limit=0.3, contrast_limit=0.3)),
    ("all", dict(elastic_p=1.0, rotate_p=1.0, brightness_p=1.0)),
])
def test_mask_still_covers_the_structure(name, params):
    image, mask = structure()
    cfg = AugmentConfig(**{**OFF, **params})
    aug = build_augmenter(cfg)
    for k in range(1, 4):
        out_image, out_mask = augment(aug, image, mask, seed=1, image_id="x", k=k)
        assert out_image.dtype == np.uint16 and out_mask.dtype == np.uint8
        assert set(np.unique(out_mask)) <= {0, 1}
        bright = out_image > np.percentile(out_image[out_mask == 0], 99.5)
        iou = np.logical_and(bright, out_mask).sum() / np.logical_or(bright, out_mask).sum()
        assert iou >= 0.85, (name, k, iou)
        if name in ("rotate", "elastic"):
            assert not np.array_equal(out_mask, mask)  # it really moved


def test_deterministic_per_image_and_copy():
    image, mask = structure()
    aug = build_augmenter(AugmentConfig(elastic_p=1.0, rotate_p=1.0, brightness_p=1.0))
    a = augment(aug, image, mask, seed=3, image_id="img-1", k=1)
    other = augment(aug, image, mask, seed=3, image_id="img-1", k=2)
    again = augment(build_augmenter(AugmentConfig(elastic_p=1.0, rotate_p=1.0,
                                                  brightness_p=1.0)),
                    image, mask, seed=3, image_id="img-1", k=1)
    np.testing.assert_array_equal(a[0], again[0])
    np.testing.assert_array_equal(a[1], again[1])
    assert not np.array_equal(a[0], other[0])


def test_copies_for():
    assert copies_for(5, copies=2, target_total=0) == [2, 2, 2, 2, 2]
    assert copies_for(4, copies=0, target_total=10) == [2, 2, 1, 1]
    assert sum(copies_for(7, copies=0, target_total=2060)) + 7 == 2060
    assert copies_for(10, copies=0, target_total=5) == [0] * 10
    assert copies_for(0, copies=3, target_total=0) == []


def test_only_training_rows_get_copies(tmp_path):
    from mammoray.synthetic import dicom_write

    image, mask = structure(96)
    path = tmp_path / "a.dcm"
    path.write_bytes(dicom_write.encode(dicom_write.image_dataset(image, bits_stored=16),
                                        "explicit-le"))
    import cv2

    cv2.imwrite(str(tmp_path / "a_mask.png"), mask * 255)
    base = {"patient_key": "p", "source": "s", "relpath": "a.dcm", "dicom_path": str(path),
            "mask": '{"kind": "png", "path": "%s"}' % (tmp_path / "a_mask.png"),
            "reject": "", "laterality_hint": "L", "view_hint": "CC", "augment_copies": 3}
    records = [dict(base, image_id=f"i-{split}", split=split)
               for split in ("train", "val", "test")]
    cfg = AugmentConfig(rotate_p=1.0)
    table = process_batch(pa.Table.from_pylist(records), DataConfig(size=64),
                          {"s": cfg})
    rows = table.to_pylist()
    by_split = {}
    for row in rows:
        by_split.setdefault(row["split"], []).append(row["augment_index"])
    assert by_split == {"train": [0, 1, 2, 3], "val": [0], "test": [0]}
    originals = [r for r in rows if r["augment_index"] == 0 and r["split"] == "train"]
    copies = [r for r in rows if r["augment_index"] > 0]
    assert all(r["image_id"] == originals[0]["image_id"] for r in copies)
    assert all(image_from_row(r)[1].sum() == r["mass_pixels"] for r in rows)
    assert table.schema.field("augment_index").type == pa.int32()


def test_augment_config_checks():
    from mammoray.core.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="copies and .*target_total: give one of them"):
        config_from_dict({"data": {"sources": [{"format": "folder", "input": "x",
                                                "augment": {"copies": 1,
                                                            "target_total": 9}}]}})
    assert dataclasses.is_dataclass(AugmentConfig)
