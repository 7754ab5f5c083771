"""Patch training's input: patches drawn on the fly from whole preprocessed images.

nnU-Net's recipe, on the worker (after ``iter_batches`` decodes the rows, before the step):
each patch is centred on a random mass pixel with probability ``foreground_fraction``
(an image without a mass gives a random patch instead), otherwise on a random breast pixel
(a pixel above 0: preprocessing with ``data.breast_only`` sets everything else to 0; an image
with no such pixel gives a uniformly placed patch). A centre near the border moves the patch
inwards, so every patch lies inside the image and no padding is invented. Image and mask are
cut at the same place; augmentation (albumentations) transforms both with one draw.

Everything here is NumPy on uint16/uint8 arrays; the draws come from a
``numpy.random.Generator`` the caller seeds (per worker and epoch), so a run is repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mammoray.core.config import AUGMENT_GEOMETRIES, AUGMENT_INTENSITIES, DEFAULT_ZOOM
from mammoray.model.inputs import to_model_input


@dataclass(frozen=True)
class Patch:
    """Where one patch was cut: top-left corner (row, column) and whether it was drawn as a
    foreground (mass-centred) patch."""

    top: int
    left: int
    foreground: bool


def _random_pixel(where: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """A uniformly drawn (row, col) among the True pixels of ``where``, or None."""
    flat = np.flatnonzero(where)
    if flat.size == 0:
        return None
    index = int(flat[rng.integers(flat.size)])
    return divmod(index, where.shape[1])


def place_patch(centre: tuple[int, int], shape: tuple[int, int], patch: int) -> tuple[int, int]:
    """The top-left corner of a ``patch`` x ``patch`` window centred on ``centre`` (row, col)
    moved inwards so that it lies inside an image of ``shape``."""
    height, width = shape
    top = min(max(centre[0] - patch // 2, 0), height - patch)
    left = min(max(centre[1] - patch // 2, 0), width - patch)
    return int(top), int(left)


def draw_patch(image: np.ndarray, mask: np.ndarray, patch: int, foreground_fraction: float,
               rng: np.random.Generator) -> Patch:
    """Where to cut one patch of ``image``/``mask`` (see the module's docstring)."""
    height, width = image.shape
    if patch > height or patch > width:
        raise ValueError(f"train.patch_size {patch} is larger than the images "
                         f"({height} x {width})")
    centre = None
    foreground = bool(rng.random() < foreground_fraction)
    if foreground:
        centre = _random_pixel(mask > 0, rng)
        foreground = centre is not None
    if centre is None:
        centre = _random_pixel(image > 0, rng)
    if centre is None:
        centre = (int(rng.integers(height)), int(rng.integers(width)))
    return Patch(*place_patch(centre, (height, width), patch), foreground=foreground)


def augmenter(seed: int, geometry: str = "d4", zoom: tuple[float, float] = tuple(DEFAULT_ZOOM),
              intensity: str = "light", elastic: float = 0.0, side: int = 256):
    """The on-the-fly augmentation of patches (``train.patch_augment``) and of whole images
    (``train.image_augment``): a flip or turn (``train.augment_geometry``), with probability
    ``elastic`` an elastic deformation (``train.augment_elastic``, :func:`elastic_deformation`
    for images or patches of ``side`` pixels), then intensity changes
    (``train.augment_intensity``), on float32 images in [0, 1] (albumentations' range).

    ``d4``: one of the square's 8 symmetries. ``chest_wall``: only what keeps the chest wall on
    the left, where preprocessing puts it: an up-down mirror (p = 1/2), and with p = 1/2 a turn
    of up to 10 degrees and a zoom drawn from ``zoom`` (``train.augment_zoom``) about the
    centre (the mask nearest-neighbour, uncovered corners 0, the background's value).

    ``light``: brightness and contrast changed by up to 10% (p = 1/2). ``strong``: nnU-Net's
    intensity set, each with its own probability: Gaussian noise (sigma up to 0.03, p = 0.15),
    Gaussian blur (sigma 0.5-1, p = 0.2), brightness by up to 10% and contrast by up to 25%
    (p = 1/2), a resolution of 0.5-1x simulated (down and back up, p = 0.25) and a gamma of
    0.7-1.5 (p = 0.3). The mask never changes with them."""
    import albumentations as A
    import cv2

    if geometry == "d4":
        shape = [A.D4(p=1.0)]
    elif geometry == "chest_wall":
        shape = [A.VerticalFlip(p=0.5),
                 A.Affine(scale=tuple(zoom), rotate=(-10, 10), interpolation=cv2.INTER_LINEAR,
                          mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
                          fill=0, fill_mask=0, p=0.5)]
    else:
        raise ValueError(f"augment geometry {geometry!r}: expected one of "
                         f"{', '.join(AUGMENT_GEOMETRIES)}")
    if elastic:
        shape.append(elastic_deformation(side, elastic))
    if intensity == "light":
        pixels = [A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5)]
    elif intensity == "strong":
        linear = {"downscale": cv2.INTER_LINEAR, "upscale": cv2.INTER_LINEAR}
        pixels = [A.GaussNoise(std_range=(0.0, 0.03), p=0.15),
                  A.GaussianBlur(blur_limit=0, sigma_limit=(0.5, 1.0), p=0.2),
                  A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.25, p=0.5),
                  A.Downscale(scale_range=(0.5, 1.0), interpolation_pair=linear, p=0.25),
                  A.RandomGamma(gamma_limit=(70, 150), p=0.3)]
    else:
        raise ValueError(f"augment intensity {intensity!r}: expected one of "
                         f"{', '.join(AUGMENT_INTENSITIES)}")
    return A.Compose(shape + pixels, seed=seed)


def elastic_deformation(side: int, p: float):
    """Albumentations' elastic deformation (Simard et al. 2003, as the U-Net paper used it) for
    images of ``side`` pixels, with probability ``p``: Gaussian noise smoothed over 8% of the
    side (sigma = side / 12.8) displaces each pixel by a median of about 0.8% of the side (2 px
    at 256, measured; alpha grows with the side squared because the smoothing shrinks the
    field as 1 / sigma). The image is resampled linearly, the mask nearest-neighbour, and
    what comes in from outside is 0 (the background's value). Not albumentations'
    ``approximate`` field: its 17 x 17 blur leaves the field rough at this sigma (neighbouring
    pixels moved 0.4 px apart, measured), a jitter rather than a deformation."""
    import albumentations as A
    import cv2

    scale = side / 256.0
    return A.ElasticTransform(alpha=550.0 * scale ** 2, sigma=20.0 * scale, approximate=False,
                              interpolation=cv2.INTER_LINEAR,
                              mask_interpolation=cv2.INTER_NEAREST,
                              border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=p)


def augment_batch(transform, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each (S, S, 1) image of the model input ``x`` and its truth ``y`` transformed in place
    by one draw of ``transform`` (:func:`augmenter`); images clipped to [0, 1]."""
    side = x.shape[1]
    for i in range(len(x)):
        out = transform(image=x[i], mask=y[i])
        x[i] = np.clip(out["image"], 0.0, 1.0).reshape(side, side, 1)
        y[i] = out["mask"].reshape(side, side, 1)
    return x, y


class PatchSampler:
    """Batches of patches from batches of decoded rows, for one worker."""

    def __init__(self, patch: int, foreground_fraction: float, per_image: int, *,
                 augment: bool, seed: int, geometry: str = "d4",
                 zoom: tuple[float, float] = tuple(DEFAULT_ZOOM),
                 intensity: str = "light", elastic: float = 0.0) -> None:
        self.patch, self.foreground_fraction, self.per_image = patch, foreground_fraction, per_image
        self.rng = np.random.default_rng(seed)
        self.augment = (augmenter(seed, geometry, zoom, intensity, elastic, side=patch)
                        if augment else None)
        self.drawn = self.foreground = 0

    def __call__(self, images: np.ndarray,
                 masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S) uint16 images and (N, S, S) uint8 masks -> the model's (N x per_image,
        P, P, 1) float32 input and 0/1 float32 truth."""
        p = self.patch
        x = np.empty((len(images) * self.per_image, p, p), np.uint16)
        y = np.empty((len(images) * self.per_image, p, p), np.uint8)
        k = 0
        for image, mask in zip(images, masks):
            for _ in range(self.per_image):
                where = draw_patch(image, mask, p, self.foreground_fraction, self.rng)
                x[k] = image[where.top:where.top + p, where.left:where.left + p]
                y[k] = mask[where.top:where.top + p, where.left:where.left + p]
                self.drawn += 1
                self.foreground += where.foreground
                k += 1
        xf, yf = to_model_input(x), y[..., None].astype(np.float32)
        if self.augment is not None:
            augment_batch(self.augment, xf, yf)
        return xf, yf
