"""Augmented copies of training images, as in the seed study: elastic deformation,
brightness/contrast change and rotation (albumentations).

Image and mask go through the same draw of every transform (albumentations applies one set of
parameters to all targets); the mask is resampled with nearest neighbour so it stays 0/1.
Images are augmented as float32 in [0, 1] (albumentations' native range) and returned as
uint16. Copy ``k`` of an image uses a seed derived from (augment seed, image_id, k), so the
result does not depend on which worker makes it or in which order.
"""

from __future__ import annotations

import hashlib

import albumentations as A
import cv2
import numpy as np

from mammoray.core.config import AugmentConfig

UINT16_MAX = 65535.0


def build_augmenter(cfg: AugmentConfig) -> A.Compose:
    """The seed study's three transforms with the configured parameters and probabilities."""
    return A.Compose([
        A.ElasticTransform(alpha=cfg.elastic_alpha, sigma=cfg.elastic_sigma,
                           border_mode=cv2.BORDER_CONSTANT, p=cfg.elastic_p),
        A.RandomBrightnessContrast(brightness_limit=cfg.brightness_limit,
                                   contrast_limit=cfg.contrast_limit, p=cfg.brightness_p),
        A.Rotate(limit=cfg.rotate_limit, border_mode=cv2.BORDER_CONSTANT, fill=0,
                 fill_mask=0, p=cfg.rotate_p),
    ], seed=cfg.seed)


def copy_seed(seed: int, image_id: str, k: int) -> int:
    digest = hashlib.sha256(f"{seed}\x1f{image_id}\x1f{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def augment(augmenter: A.Compose, image: np.ndarray, mask: np.ndarray, *, seed: int,
            image_id: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Copy ``k`` (1-based) of a (S, S) uint16 image and its (S, S) uint8 0/1 mask."""
    augmenter.set_random_seed(copy_seed(seed, image_id, k))
    out = augmenter(image=image.astype(np.float32) / np.float32(UINT16_MAX), mask=mask)
    aug = np.clip(out["image"], 0.0, 1.0) * np.float32(UINT16_MAX)
    aug_mask = (np.asarray(out["mask"]) > 0).astype(np.uint8)
    return np.rint(aug).astype(np.uint16), aug_mask


def copies_for(n_images: int, *, copies: int, target_total: int) -> list[int]:
    """Copies per image: ``copies`` each, or spread so originals + copies = ``target_total``
    (the first images get one more when it does not divide evenly)."""
    if target_total <= 0 or n_images == 0:
        return [copies] * n_images
    extra = max(0, target_total - n_images)
    base, rest = divmod(extra, n_images)
    return [base + (1 if i < rest else 0) for i in range(n_images)]
