"""Config loading: every key checked, errors name the key and what is allowed."""

import os

import pytest
from conftest import REPO

from mammoray.core.config import ConfigError, DataConfig, config_from_dict, load_config

pytestmark = pytest.mark.unit

CONFIGS = os.path.join(REPO, "jobs", "configs")


def test_defaults_are_the_documented_ones():
    cfg = config_from_dict({})
    assert cfg.data.size == 1024 and cfg.data.format is None
    (only,) = cfg.data.resolved_sources()
    assert only.format == "folder" and only.source_name == "folder" and only.augment.copies == 0
    assert cfg.data.crop.enabled and cfg.data.clahe_clip_limit == 2.0
    assert cfg.data.breast_only  # only the breast reaches the model
    assert cfg.ray.address is None


def test_overrides_win_and_none_is_skipped():
    cfg = config_from_dict({"data": {"size": 512}}, {"data.size": 128, "data.input": None,
                                                      "data.crop.thumbnail": 256})
    assert cfg.data.size == 128 and cfg.data.input is None and cfg.data.crop.thumbnail == 256


@pytest.mark.parametrize("tree,message", [
    ({"data": {"sise": 5}}, "data.sise: unknown key; allowed keys in 'data' are "),
    ({"dta": {}}, "dta: unknown key; allowed keys at the top level are data, infer, model, ray, "
                  "train, tune"),
    ({"model": {"levels": 7, "dropout": [0.1, 0.2]}},
     "model.dropout: give one value for all levels or one per level (7), got 2 values"),
    ({"model": {"dropout": [0.95]}}, "model.dropout[0]: 0.95 is out of range; allowed 0.0 to 0.9"),
    ({"train": {"loss": "focal"}}, "train.loss: 'focal' is not allowed; choose one of"),
    ({"train": {"learning_rate": 0}}, "train.learning_rate: 0.0 is out of range"),
    ({"train": {"mass_repeat": 0}}, "train.mass_repeat: 0 is out of range; allowed 1 to 64"),
    ({"train": {"augment_geometry": "chest_wall", "augment_zoom": [1.1, 1.0]}},
     "train.augment_zoom: give [low, high] with low <= high, got [1.1, 1.0]"),
    ({"train": {"augment_geometry": "chest_wall", "augment_zoom": [0.4, 1.0]}},
     "train.augment_zoom[0]: 0.4 is out of range; allowed 0.5 to 2.0"),
    ({"train": {"augment_zoom": [1.0, 1.1]}},
     "train.augment_zoom: [1.0, 1.1] is a zoom of augment_geometry chest_wall; "
     "train.augment_geometry is d4 (the square's 8 symmetries, no zoom)"),
    ({"train": {"augment_intensity": "strong"}},
     "train.augment_intensity: strong changes augmented images, but train.image_augment is "
     "false (no augmentation)"),
    ({"train": {"augment_elastic": 0.5}},
     "train.augment_elastic: 0.5 deforms augmented images, but train.image_augment is false "
     "(no augmentation)"),
    ({"train": {"augment_elastic": 0.5, "patch_size": 32, "patch_augment": False}},
     "train.augment_elastic: 0.5 deforms augmented images, but train.patch_augment is false"),
    ({"train": {"augment_elastic": 1.5, "image_augment": True}},
     "train.augment_elastic: 1.5 is out of range; allowed 0.0 to 1.0"),
    ({"train": {"augment_intensity": "heavy", "image_augment": True}},
     "train.augment_intensity: 'heavy' is not allowed; choose one of"),
    ({"data": {"size": 8}}, "data.size: 8 is out of range; allowed 16 to 8192"),
    ({"data": {"size": "big"}}, "data.size: expected an integer, got 'big'"),
    ({"data": {"size": 256.0}}, "data.size: expected an integer"),
    ({"data": {"overwrite": "yes"}}, "data.overwrite: expected true or false"),
    ({"data": {"format": "dicomdir"}}, "data.format: 'dicomdir' is not allowed; choose one of"),
    ({"data": {"clahe_bins": 4096}}, "data.clahe_bins: 4096 is not allowed; choose one of"),
    ({"data": {"crop": {"blur_kernel": 4}}}, "data.crop.blur_kernel: must be odd"),
    ({"data": {"crop": {"nope": 1}}}, "data.crop.nope: unknown key"),
    ({"data": {"val_fraction": 0.5, "test_fraction": 0.5}},
     "data.val_fraction + data.test_fraction: must be below 1.0"),
    ({"data": {"size": 4096, "rows_per_file": 64}},
     "data.rows_per_file: 64 rows of 4096 x 4096 exceed 1 GiB per file; allowed 1 to 21"),
    ({"data": [1, 2]}, "data: expected a mapping of keys"),
])
def test_bad_values_name_the_key(tree, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(tree)
    assert message in str(info.value)


def test_floats_accept_integers():
    assert config_from_dict({"data": {"clahe_clip_limit": 3}}).data.clahe_clip_limit == 3.0


def test_load_yaml_and_errors(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("data:\n  size: 64\n")
    assert load_config(str(good)).data.size == 64
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(listy))


def test_sources_and_shorthand_are_exclusive():
    with pytest.raises(ConfigError, match="give either data.sources or data.format/data.input"):
        config_from_dict({"data": {"input": "a", "sources": [{"format": "folder",
                                                               "input": "b"}]}})
    shared = config_from_dict({"data": {"sources": [{"format": "inbreast"}]}}).data
    assert shared.with_source_inputs({"inbreast": "/d"}).sources[0].input == "/d"
    with pytest.raises(ConfigError, match="--source-input cbis: no such source; the config's "
                                          "sources are inbreast"):
        shared.with_source_inputs({"cbis": "/d"})
    with pytest.raises(ConfigError, match="source names must differ"):
        config_from_dict({"data": {"sources": [{"format": "folder", "input": "a"},
                                               {"format": "folder", "input": "b"}]}})
    two = config_from_dict({"data": {"sources": [
        {"format": "folder", "input": "a"}, {"format": "folder", "input": "b", "name": "x"}]}})
    assert [s.source_name for s in two.data.resolved_sources()] == ["folder", "x"]


@pytest.mark.parametrize("name", ["laptop.yaml", "laptop-patches.yaml", "thesis.yaml"])
def test_shipped_configs_load(name):
    from mammoray.model.unet import check_input_size

    cfg = load_config(os.path.join(CONFIGS, name))
    assert isinstance(cfg.data, DataConfig)
    check_input_size(cfg.model, cfg.data.size, cfg.train.patch_size,
                     whole=cfg.infer.mode == "whole")
    # The study's setup stays whole-image; the patch config keeps the laptop U-Net's shape.
    if name == "thesis.yaml":
        assert cfg.train.patch_size == 0
    if name == "laptop-patches.yaml":
        laptop = load_config(os.path.join(CONFIGS, "laptop.yaml"))
        shape = ("levels", "base_filters", "batch_norm")
        assert [getattr(cfg.model, k) for k in shape] == [getattr(laptop.model, k) for k in shape]
        assert cfg.train.patch_size == 256
        assert cfg.data.size == 512 and cfg.data.pad_to_square


def test_thesis_data_setup():
    data = load_config(os.path.join(CONFIGS, "thesis.yaml")).data
    assert data.size == 1024 and not data.pad_to_square and data.crop.enabled
    assert data.crop.threshold_fraction == 1.0 and data.crop.opening_fraction == 0.0
    assert data.clahe_clip_limit > 0 and data.val_fraction == 0.1
    assert not data.breast_only  # the study fed the whole crop, labels included
    inbreast, cbis = data.resolved_sources()
    assert (inbreast.format, cbis.format) == ("inbreast", "cbis-ddsm")
    assert inbreast.augment.target_total == 2060 and cbis.augment.target_total == 0
    aug = inbreast.augment
    assert aug.elastic_p > 0 and aug.brightness_p > 0 and aug.rotate_p > 0


def documented(page: str) -> str:
    with open(os.path.join(REPO, "docs", page), encoding="utf-8") as fh:
        return fh.read()


def names(cls, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    import dataclasses

    return [f"{prefix}{f.name}" for f in dataclasses.fields(cls) if f.name not in skip]


def test_docs_document_every_config_key():
    """Each key of each section appears, as `key`, on its section's doc page (keys that share
    a table row are written `a`, `b`)."""
    from mammoray.core.config import (
        AugmentConfig,
        CropConfig,
        InferConfig,
        ModelConfig,
        RayConfig,
        SourceConfig,
        TrainConfig,
        TuneConfig,
    )

    pages = {
        "preprocessing.md": (names(DataConfig, skip=("crop",)) + names(CropConfig, "crop.")
                             + names(SourceConfig, "sources[].", skip=("augment",))
                             + names(AugmentConfig, "augment.") + names(RayConfig)),
        "training.md": names(ModelConfig) + names(TrainConfig) + names(InferConfig, "infer."),
        "search.md": names(TuneConfig),
    }
    missing = {page: [k for k in keys if f"`{k}`" not in documented(page)]
               for page, keys in pages.items()}
    assert not any(missing.values()), f"undocumented config keys: {missing}"


def test_whole_image_augmentation_with_patches_is_an_error():
    """train.image_augment augments whole images; with patch_size set it would be ignored, so
    the config stops, naming both keys."""
    assert config_from_dict({"train": {"image_augment": True}}).train.image_augment
    with pytest.raises(ConfigError, match=r"train.image_augment: augments whole images, but "
                                          r"train.patch_size is 256 \(patch training\); "
                                          r"patches are augmented by train.patch_augment"):
        config_from_dict({"train": {"image_augment": True, "patch_size": 256}})
