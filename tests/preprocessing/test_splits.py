"""Patient-level splits: no patient in two splits, stable, the configured fractions."""

import pytest

from preprocessing.splits import assign_splits

pytestmark = pytest.mark.unit


def test_fractions_and_determinism():
    patients = [f"p{i:03d}" for i in range(100)]
    a = assign_splits(patients, 0.1, 0.2, seed=5)
    b = assign_splits(list(reversed(patients)) + patients[:10], 0.1, 0.2, seed=5)
    assert a == b  # order and duplicates do not matter
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 70, "val": 10, "test": 20}
    c = assign_splits(patients, 0.1, 0.2, seed=6)
    assert c != a  # the seed matters


def test_small_datasets_keep_train_and_get_one_each():
    three = assign_splits(["a", "b", "c"], 0.1, 0.1, seed=0)
    assert sorted(three.values()) == ["test", "train", "val"]
    two = assign_splits(["a", "b"], 0.1, 0.1, seed=0)
    assert sorted(two.values()) == ["train", "train"]


def test_zero_fractions():
    assert set(assign_splits(["a", "b", "c", "d"], 0.0, 0.0, seed=0).values()) == {"train"}


def _img(patient, official=None, test_patient=False, n=0):
    from preprocessing.sources import SourceImage

    return SourceImage(source="s", relpath=f"{patient}/{official}/{n}.dcm", dicom_path="",
                       mask=None, patient=patient, official_split=official,
                       official_test_patient=test_patient)


def test_official_split_is_kept_and_patients_stay_together():
    from mammoray.core.config import DataConfig, SourceConfig
    from preprocessing.pipeline import split_source

    images = ([_img(f"p{i}", "train", n=k) for i in range(20) for k in range(2)]
              + [_img("t1", "test"), _img("t2", "test")]
              + [_img("both", "train"), _img("both", "test")]      # in both official splits
              + [_img("calc", "train", test_patient=True)])        # test case in another table
    split_of, notes = split_source(SourceConfig(format="cbis-ddsm", input="x"), images,
                                   DataConfig(val_fraction=0.1, test_fraction=0.3))
    assert {p for p, s in split_of.items() if s == "test"} == {"t1", "t2", "both", "calc"}
    assert sum(s == "val" for s in split_of.values()) == 2  # 10% of the 20 train patients
    assert notes["train_images_moved_to_test_with_their_patient"] == 2
    ignored, _ = split_source(SourceConfig(format="cbis-ddsm", input="x",
                                           official_split=False), images,
                              DataConfig(val_fraction=0.1, test_fraction=0.3))
    assert sum(s == "test" for s in ignored.values()) == round(0.3 * 24)


def test_test_patients_list():
    from mammoray.core.config import DataConfig, SourceConfig
    from preprocessing.pipeline import split_source

    images = [_img(f"p{i}") for i in range(10)]
    src = SourceConfig(format="folder", input="x", test_patients=["p3", "p7"])
    split_of, notes = split_source(src, images, DataConfig(val_fraction=0.2))
    assert {p for p, s in split_of.items() if s == "test"} == {"p3", "p7"}
    assert sum(s == "val" for s in split_of.values()) == 2 and notes["listed_test_patients"] == 2
