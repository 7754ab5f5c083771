"""Typed, validated job configuration loaded from YAML.

A config file has one section per concern (``data``, ``ray``; later ``model``, ``train``, ...).
Every section is a frozen dataclass whose fields carry their allowed range or choices; loading
checks every key, so an unknown key or an out-of-range value stops a job before any work with a
message that names the key (``data.size``) and what is allowed.

Command-line flags override config keys by dotted name (``{"data.size": 256}``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or is out of range."""


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None,
           choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field with its documentation and allowed values attached."""
    meta = {"help": help, "min": min, "max": max, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_value(key: str, value: Any, tp: Any, meta: dict[str, Any]) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_value(key, value, args[0], meta)
    if dataclasses.is_dataclass(tp):
        return section_from_dict(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_check_value(f"{key}[{i}]", v, item_tp, meta) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+",
                                                   value.strip()):
            value = float(value)  # 1e-4: YAML 1.1 (PyYAML) reads it as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    if meta.get("choices") is not None and value not in meta["choices"]:
        allowed = ", ".join(repr(c) for c in meta["choices"])
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {allowed}")
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{key}: {value!r} is out of range; allowed {lo} to {hi}")
    return value


T = typing.TypeVar("T")


def section_from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str) -> T:
    """Build the section dataclass ``cls`` from a plain dict, checking every key."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    def key(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    unknown = sorted(set(data) - set(known))
    if unknown:
        where = f"in '{prefix}'" if prefix else "at the top level"
        raise ConfigError(f"{key(unknown[0])}: unknown key; allowed keys {where} are "
                          + ", ".join(sorted(known)))
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = section_from_dict(hints[name], value, key(name))
        else:
            kwargs[name] = _check_value(key(name), value, hints[name], dict(f.metadata))
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(prefix)
    return obj


@dataclass(frozen=True)
class CropConfig:
    """Breast crop (seed study: Gaussian blur, Otsu threshold, largest contour), film-robust."""

    enabled: bool = option(True, "crop image and mask to the breast's bounding box")
    thumbnail: int = option(512, "long side (px) of the thumbnail the crop is found on",
                            min=64, max=4096)
    blur_kernel: int = option(5, "odd Gaussian blur kernel (thumbnail px) before Otsu",
                              min=1, max=51)
    threshold_fraction: float = option(
        0.5, "foreground threshold between the background level (0) and Otsu's threshold "
        "(1): below 1 keeps the breast's fatty, thinner edge that plain Otsu cuts off; 1.0 is "
        "the seed study's plain Otsu", min=0.05, max=1.0)
    opening_fraction: float = option(
        0.04, "morphological opening, as a fraction of the thumbnail's long side: parts thinner "
        "than this (film borders, tape, label strokes) are cut off the breast", min=0.0, max=0.2)
    border_fill: float = option(
        0.9, "a thumbnail row/column at the top, bottom or non-chest-wall edge whose foreground "
        "fraction is at least this is a scanner/film border, not breast", min=0.5, max=1.0)
    border_depth_fraction: float = option(
        0.15, "how deep (fraction of the side) border bands are searched from each edge",
        min=0.0, max=0.5)
    margin_fraction: float = option(0.01, "margin added around the breast box (fraction of "
                                    "the long side)", min=0.0, max=0.2)
    edge_fraction: float = option(
        0.1, "data.breast_only: the breast's faint fatty edge is kept down to this level between "
        "the background (0) and Otsu's threshold (1)", min=0.0, max=1.0)
    edge_depth_fraction: float = option(
        0.03, "data.breast_only: how far (fraction of the long side) the faint edge may reach "
        "beyond the breast the crop found; labels and markers farther away are never joined",
        min=0.0, max=0.2)

    def check(self, prefix: str) -> None:
        if self.blur_kernel % 2 == 0:
            raise ConfigError(f"{prefix}.blur_kernel: must be odd, got {self.blur_kernel}")


FORMATS = ("folder", "cbis-ddsm", "inbreast")
INBREAST_MASS_ROI_NAMES = ["Mass", "Spiculated Region", "Espiculated Region", "Spiculated region"]


@dataclass(frozen=True)
class AugmentConfig:
    """Augmented copies of a source's training images (seed study: elastic, brightness,
    rotation; INbreast only, to 2060 images). Never applied to validation or test rows."""

    copies: int = option(0, "augmented copies per training image", min=0, max=1000)
    target_total: int = option(0, "instead of copies: spread copies so that this source's "
                               "training rows (originals + copies) reach this number; 0 = use "
                               "copies", min=0, max=10_000_000)
    seed: int = option(0, "seed of the augmentation draws", min=0)
    elastic_p: float = option(0.5, "probability of the elastic transform", min=0.0, max=1.0)
    elastic_alpha: float = option(30.0, "elastic displacement scale (albumentations alpha, "
                                  "pixels of the output image)", min=0.0, max=10000.0)
    elastic_sigma: float = option(6.0, "elastic smoothing (albumentations sigma, pixels)",
                                  min=0.1, max=1000.0)
    brightness_p: float = option(0.5, "probability of the brightness/contrast change",
                                 min=0.0, max=1.0)
    brightness_limit: float = option(0.1, "brightness change, fraction of the range",
                                     min=0.0, max=1.0)
    contrast_limit: float = option(0.1, "contrast change, fraction", min=0.0, max=1.0)
    rotate_p: float = option(0.5, "probability of the rotation", min=0.0, max=1.0)
    rotate_limit: float = option(15.0, "largest rotation, degrees", min=0.0, max=180.0)

    def check(self, prefix: str) -> None:
        if self.copies and self.target_total:
            raise ConfigError(f"{prefix}.copies and {prefix}.target_total: give one of them")


@dataclass(frozen=True)
class SourceConfig:
    """One dataset of a (possibly multi-source) preprocessing run."""

    format: str = option("folder", "dataset layout", choices=FORMATS)
    input: str | None = option(None, "dataset root (local path or pyarrow-filesystem URI); "
                               "may be left empty in a shared config and given with "
                               "--source-input NAME=DIR")
    name: str | None = option(None, "value of the rows' `source` column (default: format)")
    official_split: bool = option(True, "keep the dataset's official train/test split when "
                                  "it has one (CBIS-DDSM); validation is carved out of train "
                                  "by patient")
    test_patients: list[str] = option([], "patient identities (CBIS-DDSM patient_id such as "
                                      "P_00001, INbreast file-name hash, folder PatientID) that "
                                      "form the test split; never written to any output")
    mass_roi_names: list[str] = option(INBREAST_MASS_ROI_NAMES, "INbreast ROI names that are "
                                       "masses (matched without case); all others are not")
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def source_name(self) -> str:
        return self.name or self.format


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing: raw dataset(s) -> Parquet (``python -m jobs.preprocess``)."""

    format: str | None = option(None, "single-source shorthand: dataset layout (default "
                                "folder)", choices=FORMATS)
    input: str | None = option(None, "single-source shorthand: dataset root")
    sources: list[SourceConfig] = option([], "several datasets in one run (instead of "
                                         "format/input); `source` is kept per row")
    output: str | None = option(None, "output dataset folder (written aside, then renamed)")
    overwrite: bool = option(False, "replace an existing output dataset")
    size: int = option(1024, "output images are size x size (seed study: 1024)", min=16,
                       max=8192)
    pad_to_square: bool = option(False, "pad the breast crop to a square before resizing "
                                 "(keeps the aspect ratio); false stretches as the study did")
    apply_voi_lut: bool = option(True, "apply the DICOM VOI LUT / window when present")
    orientation: str = option("auto", "how the chest-wall side is found: auto = "
                              "PatientOrientation, then laterality, then the image; image = "
                              "from the pixels only; none = never flip",
                              choices=("auto", "image", "none"))
    crop: CropConfig = field(default_factory=CropConfig)
    breast_only: bool = option(True, "set everything outside the breast (labels, markers, film "
                               "edges, tape, background) to 0 before CLAHE and in the output, "
                               "so only the breast reaches the model; the breast region is "
                               "grown by crop.margin_fraction first (false: the seed study's "
                               "whole crop)")
    clahe_clip_limit: float = option(2.0, "CLAHE clip limit; 0 switches CLAHE off", min=0.0,
                                     max=100.0)
    clahe_tile_grid: int = option(8, "CLAHE tiles per side", min=1, max=64)
    clahe_bins: int = option(65536, "CLAHE histogram bins per tile: 65536 = OpenCV's 16-bit "
                             "CLAHE (the seed study; on images of a few megapixels any limit "
                             "below ~10 clips at its strongest); 256 = on the top 8 bits, where "
                             "the limit means what it does on 8-bit images "
                             "(docs/preprocessing.md)", choices=(256, 65536))
    clahe_at: str = option("crop", "where CLAHE runs: crop = on the full-resolution breast crop "
                           "(the seed study); output = after the resize, on the input-size "
                           "image with the same tiles per side (several times cheaper; "
                           "docs/preprocessing.md gives the difference)",
                           choices=("crop", "output"))
    val_fraction: float = option(0.1, "fraction of patients for validation", min=0.0,
                                 max=0.9)
    test_fraction: float = option(0.1, "fraction of patients for test", min=0.0, max=0.9)
    seed: int = option(0, "seed of the patient-level split", min=0)
    rows_per_file: int = option(0, "rows per Parquet file; 0 = about 64 MB per file (bounded "
                                "so that files stay far below Arrow's 2 GiB array limit and "
                                "the writer's memory stays small)", min=0, max=4096)
    parquet_compression: str = option("snappy", "Parquet codec of the rows (the image and mask "
                                      "bytes are most of them): snappy = readable by every "
                                      "Parquet tool; lz4 = 4% smaller and faster to read; "
                                      "zstd = 7% smaller, 2.2x snappy's write CPU; none = "
                                      "least CPU, 1.8x the bytes (benchmarks/RESULTS.md)",
                                      choices=("snappy", "lz4", "zstd", "none"))
    cpus_per_task: float = option(1.0, "CPUs reserved per preprocessing task", min=0.05,
                                  max=64.0)
    images_per_task: int = option(4, "images one preprocessing task processes in a row "
                                  "(amortises Ray's per-task cost; memory holds one image at "
                                  "a time plus the task's output rows)", min=1, max=256)
    salt_env: str = option("MAMMORAY_PATIENT_SALT", "environment variable holding the secret "
                           "salt of patient keys; unset = a random salt for this run")
    qc_samples: int = option(8, "images per source drawn as QC cards in <output>/qc/<source>"
                             ".png (with every decodable rejected file in qc/rejected.png); "
                             "0 = no qc/ folder", min=0, max=1000)

    def resolved_sources(self) -> list[SourceConfig]:
        """The sources of this run: ``sources``, or the single format/input shorthand."""
        if self.sources:
            return list(self.sources)
        return [SourceConfig(format=self.format or "folder", input=self.input)]

    def with_source_inputs(self, inputs: dict[str, str]) -> "DataConfig":
        """A copy whose sources named in ``inputs`` read from the given roots."""
        names = [s.source_name for s in self.sources]
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise ConfigError(f"--source-input {unknown[0]}: no such source; the config's "
                              f"sources are {', '.join(names) or 'none (use --input)'}")
        sources = [dataclasses.replace(s, input=inputs.get(s.source_name, s.input))
                   for s in self.sources]
        return dataclasses.replace(self, sources=sources)

    def check(self, prefix: str) -> None:
        if self.sources and (self.input or self.format):
            raise ConfigError(f"{prefix}.sources: give either {prefix}.sources or "
                              f"{prefix}.format/{prefix}.input (--format/--input), not both")
        names = [s.source_name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"{prefix}.sources: source names must differ, got {names}; "
                              f"set `name` on sources of the same format")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(f"{prefix}.val_fraction + {prefix}.test_fraction: must be below "
                              f"1.0 so that training keeps patients, got "
                              f"{self.val_fraction} + {self.test_fraction}")
        row_bytes = self.size * self.size * 3  # uint16 image + uint8 mask
        if row_bytes * self.rows_per_file > 1 << 30:
            limit = max(1, (1 << 30) // row_bytes)
            raise ConfigError(f"{prefix}.rows_per_file: {self.rows_per_file} rows of "
                              f"{self.size} x {self.size} exceed 1 GiB per file; allowed 1 "
                              f"to {limit} at this size")


LOSS_NAMES = ("iou", "dice", "bce", "bce_dice", "bce_mass_dice", "bce_mass_tversky")
AUGMENT_GEOMETRIES = ("d4", "chest_wall")
DEFAULT_ZOOM = [0.9, 1.1]
AUGMENT_INTENSITIES = ("light", "strong")


@dataclass(frozen=True)
class ModelConfig:
    """The U-Net (``mammoray.model.build_unet``); the input size comes from the dataset."""

    levels: int = option(5, "U-Net levels (the seed study: 7; the original U-Net: 5)", min=2,
                         max=10)
    base_filters: int = option(64, "filters of the first level, doubling per level", min=1,
                               max=1024)
    dropout: list[float] = option([0.0], "dropout rate per level: one value for all levels, "
                                  "or one value per level", min=0.0, max=0.9)
    batch_norm: bool = option(False, "batch normalisation after each convolution")
    deep_supervision: int = option(0, "training only: extra sigmoid heads on this many decoder "
                                   "levels below the top (1/2, 1/4, ... of the input side), "
                                   "each scored against the mask averaged down to its side, "
                                   "with weights halving per level (nnU-Net); the saved model "
                                   "has the one full-size output; 0 = off", min=0, max=8)

    def check(self, prefix: str) -> None:
        if len(self.dropout) not in (1, self.levels):
            raise ConfigError(f"{prefix}.dropout: give one value for all levels or one per "
                              f"level ({self.levels}), got {len(self.dropout)} values")
        if self.deep_supervision > self.levels - 2:
            raise ConfigError(f"{prefix}.deep_supervision: {self.deep_supervision} heads need "
                              f"that many decoder levels below the top; {self.levels} levels "
                              f"allow 0 to {self.levels - 2}")


@dataclass(frozen=True)
class TrainConfig:
    """Training (``python -m jobs.train``): Ray Train (TensorFlow set-up), MultiWorker-
    MirroredStrategy, a custom training loop (see ``mammoray.training.loop``)."""

    data: str | None = option(None, "preprocessed dataset folder (jobs.preprocess output)")
    output: str | None = option(None, "training output folder (best/, history.csv, "
                                "curves.png)")
    epochs: int = option(10, "epochs", min=1, max=100000)
    batch_size: int = option(4, "images per worker per step; the global batch is "
                             "batch_size x num_workers", min=1, max=4096)
    learning_rate: float = option(1e-4, "Adam learning rate", min=1e-8, max=1.0)
    lr_schedule: str = option("constant", "learning rate by epoch: constant, or cosine (from "
                              "learning_rate down to learning_rate x min_lr_fraction at the "
                              "last epoch)", choices=("constant", "cosine"))
    min_lr_fraction: float = option(0.05, "cosine schedule: final learning rate as a fraction "
                                    "of learning_rate", min=0.0, max=1.0)
    ema_momentum: float = option(0.0, "keep an exponential moving average of the weights, "
                                 "updated every step with this momentum (e.g. 0.99: about the "
                                 "last 100 steps), and validate, checkpoint and publish it "
                                 "instead of the last weights; 0 = off", min=0.0, max=0.9999)
    loss: str = option("iou", "loss: iou (1 - soft IoU, the study's), dice, bce, bce_dice "
                       "(soft overlaps pooled over the batch), bce_mass_dice (BCE + the mean "
                       "soft Dice of the images with a mass), bce_mass_tversky (the same with "
                       "the Tversky index: a missed mass pixel weighs 0.7, a false one 0.3)",
                       choices=LOSS_NAMES)
    num_workers: int = option(1, "Ray Train workers (one model replica each)", min=1,
                              max=1024)
    use_gpu: bool = option(False, "one GPU per worker")
    cpus_per_worker: float = option(1.0, "CPUs per worker (TensorFlow's thread pools are "
                                    "sized to this)", min=0.1, max=256.0)
    mixed_precision: str = option("auto", "mixed precision: auto (float16 with GPUs, "
                                  "bfloat16 on CPUs with AVX-512 BF16 or AMX, else off), on "
                                  "(float16), bf16 (bfloat16), off",
                                  choices=("auto", "on", "bf16", "off"))
    max_failures: int = option(1, "worker-group restarts from the latest checkpoint after a "
                               "failure", min=0, max=100)
    checkpoints_to_keep: int = option(2, "checkpoints kept, best by validation IoU (the "
                                      "latest is kept too, for resuming)", min=1, max=1000)
    checkpoint_every: int = option(1, "a checkpoint every this many epochs, and at every new "
                                   "best validation score and the last epoch (a resumed run "
                                   "continues from the latest)", min=1, max=100000)
    run_name: str | None = option(None, "Ray Train run name; a run with the same name and "
                                  "storage resumes from its latest checkpoint (default: "
                                  "derived from the output folder)")
    storage_path: str | None = option(None, "where Ray Train keeps checkpoints (local path or "
                                      "s3://...; several nodes need shared storage); default "
                                      "<output>/ray_results")
    seed: int = option(0, "seed of weight initialisation and shuffling", min=0)
    tensorboard: bool = option(True, "TensorBoard event files under <output>/tensorboard "
                               "(every metric per epoch)")
    tensorboard_images_every: int = option(5, "validation pictures (truth and prediction "
                                           "outlined) in TensorBoard every this many epochs; "
                                           "0 = none", min=0, max=100000)
    tensorboard_images: int = option(4, "validation images per picture set", min=1, max=64)
    mlflow_tracking_uri: str | None = option(None, "log parameters and every epoch's metrics "
                                             "to MLflow (Ray's setup_mlflow) at this tracking "
                                             "URI, e.g. file:/path/mlruns or http://host:5000;"
                                             " none = no MLflow")
    mlflow_experiment: str = option("mammoray", "MLflow experiment name")
    mass_repeat: int = option(1, "each training image with a mass comes this many times per "
                              "epoch (oversampling the masses; an epoch grows by as many rows); "
                              "1 = every image once", min=1, max=64)
    patch_size: int = option(0, "train on patches of this side drawn from the dataset's images "
                             "at their full resolution (nnU-Net's way; validation and "
                             "inference then go through infer.mode); 0 = whole images (the "
                             "seed study)", min=0, max=8192)
    foreground_fraction: float = option(
        0.33, "patch training: fraction of patches centred on a random mass pixel (images "
        "without a mass give a random patch instead); the rest are centred on a random breast "
        "pixel (nnU-Net oversamples one third)", min=0.0, max=1.0)
    patches_per_image: int = option(1, "patch training: patches drawn from each training image "
                                    "per epoch; batch_size counts patches and must be a "
                                    "multiple of it", min=1, max=256)
    patch_augment: bool = option(True, "patch training: each patch flipped/rotated "
                                 "(train.augment_geometry) and its brightness and contrast "
                                 "changed by up to 10% (albumentations)")
    image_augment: bool = option(False, "whole-image training: each image flipped/rotated "
                                 "(train.augment_geometry) and its brightness and "
                                 "contrast changed by up to 10% on the worker, a new draw every "
                                 "epoch (free of preprocessing; off reproduces the seed study, "
                                 "which augmented offline: data.sources[].augment)")
    augment_geometry: str = option(
        "d4", "the flips and turns of patch_augment and image_augment: d4 = one of the "
        "square's 8 symmetries; chest_wall = the ones a mammogram can take with its chest wall "
        "kept on the left, as preprocessing puts it: an up-down mirror, and with probability "
        "1/2 a turn of up to 10 degrees and a zoom (train.augment_zoom)",
        choices=AUGMENT_GEOMETRIES)
    augment_zoom: list[float] = option(
        DEFAULT_ZOOM, "chest_wall: [low, high] of the zoom drawn with the turn (1 = none; a low "
        "of 1 never makes a mass smaller); d4 has no zoom", min=0.5, max=2.0)
    augment_intensity: str = option(
        "light", "the pixel changes of patch_augment and image_augment: light = brightness and "
        "contrast by up to 10%; strong = nnU-Net's set: Gaussian noise, Gaussian blur, "
        "contrast by up to 25%, a lower resolution simulated, gamma 0.7-1.5 (docs/training.md)",
        choices=AUGMENT_INTENSITIES)
    augment_elastic: float = option(
        0.0, "probability of an elastic deformation in patch_augment and image_augment, after "
        "the flip or turn: a smooth random displacement field (median about 0.8% of the side, "
        "smooth over about 8% of it), image and mask moved alike", min=0.0, max=1.0)

    def check(self, prefix: str) -> None:
        if self.patch_size and self.image_augment:
            raise ConfigError(f"{prefix}.image_augment: augments whole images, but "
                              f"{prefix}.patch_size is {self.patch_size} (patch training); "
                              f"patches are augmented by {prefix}.patch_augment")
        _check_range(f"{prefix}.augment_zoom", self.augment_zoom)
        if self.augment_geometry == "d4" and self.augment_zoom != DEFAULT_ZOOM:
            raise ConfigError(f"{prefix}.augment_zoom: {self.augment_zoom} is a zoom of "
                              f"augment_geometry chest_wall; {prefix}.augment_geometry is d4 "
                              f"(the square's 8 symmetries, no zoom)")
        augments = self.patch_augment if self.patch_size else self.image_augment
        switch = "patch_augment" if self.patch_size else "image_augment"
        if self.augment_intensity != "light" and not augments:
            raise ConfigError(f"{prefix}.augment_intensity: {self.augment_intensity} changes "
                              f"augmented images, but {prefix}.{switch} is false (no "
                              f"augmentation)")
        if self.augment_elastic and not augments:
            raise ConfigError(f"{prefix}.augment_elastic: {self.augment_elastic} deforms "
                              f"augmented images, but {prefix}.{switch} is false (no "
                              f"augmentation)")
        if self.patch_size and self.batch_size % self.patches_per_image:
            raise ConfigError(f"{prefix}.batch_size: {self.batch_size} patches per step is not "
                              f"a multiple of {prefix}.patches_per_image "
                              f"({self.patches_per_image})")


@dataclass(frozen=True)
class InferConfig:
    """How a model trained on patches predicts whole images (validation during training,
    jobs.evaluate, jobs.predict); a model trained on whole images takes them as they are."""

    mode: str = option("sliding", "sliding = windows of the training patch size with overlap, "
                       "blended with Gaussian weights (nnU-Net); whole = the whole image in one "
                       "pass through the same weights (the network is fully convolutional: "
                       "fewer operations, more memory)", choices=("sliding", "whole"))
    overlap: float = option(0.5, "sliding: overlap of neighbouring windows as a fraction of the "
                            "patch side (the step is patch x (1 - overlap))", min=0.0,
                            max=0.95)
    sigma_scale: float = option(0.125, "sliding: the Gaussian weight's sigma as a fraction of "
                                "the patch side (nnU-Net: 1/8)", min=0.01, max=10.0)
    batch_size: int = option(4, "sliding: windows per model call", min=1, max=4096)


def _check_range(key: str, values: list[Any]) -> None:
    if len(values) != 2 or values[0] > values[1]:
        raise ConfigError(f"{key}: give [low, high] with low <= high, got {values}")


@dataclass(frozen=True)
class TuneConfig:
    """Hyper-parameter search (``python -m jobs.tune``): Ray Tune + Optuna over the U-Net's
    depth, a dropout rate per level and the learning rate; each trial is one Ray Train run of
    the ``model`` and ``train`` sections with the sampled values put in."""

    output: str | None = option(None, "search output folder (trials.csv, search.png, "
                                "best_config.yaml, best/, summary.json)")
    name: str = option("search", "Tune experiment name: the search lives in "
                       "<storage_path>/<name>, where --resume finds it")
    storage_path: str | None = option(None, "where Ray Tune and the trials' Ray Train runs keep "
                                      "their state (s3://... on a multi-node cluster); default "
                                      "<output>/ray_results")
    num_samples: int = option(16, "trials", min=1, max=100000)
    max_concurrent: int = option(0, "trials running at once; 0 = as many as the cluster's "
                                 "current CPUs/GPUs hold (set it on an autoscaling cluster: "
                                 "pending trials are what makes it add nodes)", min=0,
                                 max=10000)
    sampler: str = option("tpe", "Optuna sampler: tpe, or random", choices=("tpe", "random"))
    seed: int = option(0, "seed of the sampler", min=0)
    startup_trials: int = option(5, "TPE: random trials before TPE models the results",
                                 min=1, max=1000)
    start_from_config: bool = option(True, "the first trial is the config's own model/train "
                                     "values (when inside the ranges): the baseline the "
                                     "search must beat, measured under the same budget")
    levels: list[int] = option([5, 7], "[low, high] U-Net levels (the original U-Net 5, the "
                               "seed study 7)", min=2, max=10)
    dropout: list[float] = option([0.1, 0.5], "[low, high] of each level's dropout rate (the "
                                  "seed study's range)", min=0.0, max=0.9)
    learning_rate: list[float] = option([1e-5, 1e-3], "[low, high] Adam learning rate, "
                                        "sampled on a log scale (the study: 1e-4)", min=1e-8,
                                        max=1.0)
    base_filters: list[int] = option([], "base filters to choose from; empty = "
                                     "model.base_filters", min=1, max=1024)
    batch_size: list[int] = option([], "per-worker batch sizes to choose from; empty = "
                                   "train.batch_size", min=1, max=4096)
    loss: list[str] = option([], "losses to choose from; empty = train.loss",
                             choices=LOSS_NAMES)
    patch_size: list[int] = option([], "patch sides to choose from (0 = whole images); empty "
                                   "= train.patch_size", min=0, max=8192)
    foreground_fraction: list[float] = option([], "patch training's foreground fractions to "
                                              "choose from; empty = train.foreground_fraction",
                                              min=0.0, max=1.0)
    epochs: int | None = option(None, "epochs per trial (unset = train.epochs); also ASHA's "
                                "maximum", min=1, max=100000)
    grace_period: int = option(1, "ASHA: epochs every trial runs before it may be stopped",
                               min=1, max=100000)
    reduction_factor: int = option(2, "ASHA: 1 / this fraction of trials goes on at each rung",
                                   min=2, max=100)
    cpus_per_worker: float | None = option(None, "CPUs per training worker during the search "
                                           "(unset = train.cpus_per_worker): fewer let more "
                                           "trials run at once; best_config.yaml keeps "
                                           "train.cpus_per_worker", min=0.1, max=256.0)
    trial_memory_mb: int = option(1024, "memory reserved for each trial's driver (it holds "
                                  "no CPU, so trials' workers get all CPUs; it imports "
                                  "TensorFlow: about 0.7 GB)", min=16, max=1_000_000)

    def check(self, prefix: str) -> None:
        for name in ("levels", "dropout", "learning_rate"):
            _check_range(f"{prefix}.{name}", getattr(self, name))


@dataclass(frozen=True)
class RayConfig:
    """Where jobs run: a cluster's Ray, or a local Ray the job starts itself."""

    address: str | None = option(None, "Ray address to connect to; unset = RAY_ADDRESS if "
                                 "set (as under `ray job submit`), else start a local Ray")
    num_cpus: int | None = option(None, "CPUs of a local Ray the job starts (unset = all)",
                                  min=1, max=1024)
    resource_wait_s: float = option(600.0, "on a cluster with an autoscaler: how long a job "
                                    "waits for the nodes its workers or actors need before it "
                                    "stops (a cluster without one stops at once)", min=0.0,
                                    max=86400.0)


@dataclass(frozen=True)
class ExperimentConfig:
    """All sections of one config file."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: cannot set a key below a non-mapping value")
    node[parts[-1]] = value


def config_from_dict(data: dict[str, Any] | None,
                     overrides: dict[str, Any] | None = None,
                     sets: dict[str, Any] | None = None) -> ExperimentConfig:
    """Validate a config tree after applying dotted ``overrides`` (a job's flags: None values,
    flags not given, are skipped) and then ``sets`` (``--set KEY=VALUE``: applied as given,
    null included, after the flags)."""
    tree = dict(data or {})
    tree = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, key, value)
    for key, value in (sets or {}).items():
        _set_dotted(tree, key, value)
    return section_from_dict(ExperimentConfig, tree, "")


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` items -> {dotted key: value}: the value is read as YAML (``5``,
    ``1e-3``, ``true``, ``null``, ``[0.1, 0.2]``, ``cosine``), so it is typed exactly as in a
    config file; the keys are checked when the config is built."""
    sets: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", key):
            raise ConfigError(f"--set {item}: give SECTION.KEY=VALUE, e.g. --set train.epochs=5")
        try:
            sets[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({exc})") from None
    return sets


def load_config(path: str | os.PathLike[str] | None,
                overrides: dict[str, Any] | None = None,
                sets: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load and validate a YAML config file (None = all defaults), then apply the flags'
    ``overrides`` and ``--set`` values (see :func:`config_from_dict`)."""
    data: dict[str, Any] = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"--config {path}: no such file")
        with open(path, encoding="utf-8") as fh:
            try:
                data = yaml.safe_load(fh) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"--config {path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--config {path}: the top level must be a mapping of sections")
    return config_from_dict(data, overrides, sets)
