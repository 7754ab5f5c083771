"""Patient-level splits: no patient in two splits, stable, the configured fractions."""

from preprocessing.splits import assign_splits


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
