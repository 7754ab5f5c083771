"""Evaluation metrics of thresholded probability maps: per image, lesion level, FROC, bootstrap.

One definition of each figure, used by ``jobs.evaluate`` (and its tests, on hand-made masks):

- Per image at a threshold ``t`` (prediction = probability >= t): Dice, IoU and pixel accuracy.
  Dice and IoU are defined only for images whose truth has a mass; on an image without a mass
  any predicted pixel makes it a false-positive image (see :mod:`mammoray.model.metrics`,
  whose per-image sums every figure here is built on).
- Aggregates: ``mean_dice`` and ``mean_iou`` over the images with a mass; ``pooled_dice`` =
  2 sum(intersection) / (sum(truth) + sum(prediction)) over all images (large masses weigh
  more); ``pixel_accuracy`` averaged over all images; ``fp_image_rate`` = fraction of images
  without a mass that get any predicted pixel.
- Lesions are 8-connected components. A predicted component HITS a true lesion when their IoU
  is >= 0.1 or the predicted component's centroid lies inside the lesion. A true lesion hit by
  any predicted component is detected; a predicted component that hits no true lesion is a false
  positive. ``sensitivity`` = detected / true lesions; ``fp_per_image`` = false-positive
  components / images. The FROC curve is (fp_per_image, sensitivity) over the thresholds.
- 95% confidence intervals: percentile bootstrap over patients (all of a patient's images are
  drawn together), 1000 resamples by default, seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from mammoray.model.metrics import SUM_NAMES, counts_np, image_sums_np, overlap_np

HIT_IOU = 0.1
HIT_RULE = (f"a predicted component hits a true lesion if their IoU >= {HIT_IOU} or its "
            "centroid lies inside the lesion (8-connected components)")
# Thresholds every image is scored at (FROC, choosing a threshold on validation).
THRESHOLDS = tuple(float(t) for t in np.round(np.concatenate(
    [[0.01, 0.02], np.arange(0.05, 0.951, 0.05), [0.975, 0.99]]), 4))
# Per-image stat columns, one value per threshold (then the threshold-free ones).
STAT_KEYS = ("inter", "pred", "correct", "hits", "fp_lesions")


def components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, labels, centroids (x, y)) of the 8-connected components of a 0/1 mask."""
    n, labels, _, centroids = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return n - 1, labels, centroids[1:]


def match_lesions(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """(true lesions, detected true lesions, false-positive predicted components)."""
    nt, lt, _ = components(truth)
    npred, lp, cp = components(pred)
    if npred == 0:
        return nt, 0, 0
    if nt == 0:
        return 0, 0, npred
    # Joint histogram of (truth label, predicted label): intersections and areas in one pass.
    joint = np.bincount((lt.ravel().astype(np.int64) * (npred + 1) + lp.ravel()),
                        minlength=(nt + 1) * (npred + 1)).reshape(nt + 1, npred + 1)
    inter = joint[1:, 1:].astype(np.float64)
    area_t = joint[1:, :].sum(axis=1, keepdims=True).astype(np.float64)
    area_p = joint[:, 1:].sum(axis=0, keepdims=True).astype(np.float64)
    iou = inter / (area_t + area_p - inter)
    hit = iou >= HIT_IOU
    h, w = lt.shape
    for j, (cx, cy) in enumerate(cp):
        x, y = min(w - 1, int(round(cx))), min(h - 1, int(round(cy)))
        if lt[y, x] > 0:
            hit[lt[y, x] - 1, j] = True
    return nt, int(hit.any(axis=1).sum()), int((~hit.any(axis=0)).sum())


def image_stats(truth: np.ndarray, prob: np.ndarray,
                thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, Any]:
    """Everything the aggregates need from one (H, W) truth and probability map, at every
    threshold: lists ``inter``, ``pred``, ``correct``, ``hits``, ``fp_lesions`` (one value per
    threshold) and scalars ``truth``, ``pixels``, ``lesions``, ``max_prob``."""
    t = truth.reshape(truth.shape[-2:]) > 0 if truth.ndim > 2 else truth > 0
    p = prob.reshape(prob.shape[-2:]) if prob.ndim > 2 else prob
    t_u8 = t.astype(np.uint8)
    out: dict[str, Any] = {k: [] for k in STAT_KEYS}
    lesions = components(t_u8)[0]
    for thr in thresholds:
        counts = counts_np(t[None], p[None], thr)
        out["inter"].append(int(counts["inter"][0]))
        out["pred"].append(int(counts["pred"][0]))
        out["correct"].append(int(counts["correct"][0]))
        _, hits, fps = match_lesions(t_u8, (p >= thr).astype(np.uint8))
        out["hits"].append(hits)
        out["fp_lesions"].append(fps)
    truth_sum = int(t.sum())
    out.update(truth=truth_sum, pixels=int(t.size), lesions=lesions,
               max_prob=float(p.max()) if p.size else 0.0)
    return out


def per_image_metrics(stats: dict[str, Any], k: int) -> dict[str, float]:
    """Dice, IoU (NaN without a mass) and pixel accuracy of one image at threshold index k."""
    inter, pred, truth = stats["inter"][k], stats["pred"][k], stats["truth"]
    dice, iou = (float(v[0]) for v in overlap_np([inter], [truth], [pred]))
    if truth == 0:
        dice = iou = float("nan")
    return {"dice": dice, "iou": iou, "pixel_accuracy": stats["correct"][k] / stats["pixels"]}


@dataclass
class Table:
    """Per-image stats as arrays: (n, k) for the per-threshold keys, (n,) for the rest."""

    inter: np.ndarray
    pred: np.ndarray
    correct: np.ndarray
    hits: np.ndarray
    fp_lesions: np.ndarray
    truth: np.ndarray
    pixels: np.ndarray
    lesions: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> "Table":
        def arr(key: str) -> np.ndarray:
            return np.asarray([r[key] for r in rows], dtype=np.float64)

        return cls(**{k: arr(k) for k in (*STAT_KEYS, "truth", "pixels", "lesions")})

    def subset(self, keep: np.ndarray) -> "Table":
        return Table(**{k: getattr(self, k)[keep] for k in self.__dataclass_fields__})

    def __len__(self) -> int:
        return len(self.truth)


# Sums that every aggregate is a ratio of: the per-image metric sums of mammoray.model.metrics,
# then pooled pixel counts and lesion counts. Per patient they let the bootstrap resample fast.
_SUM_NAMES = (*SUM_NAMES, "inter", "truth", "pred", "lesions", "hits", "fp_lesions")
_COL = {name: i for i, name in enumerate(_SUM_NAMES)}


def _sums(t: Table, k: int) -> np.ndarray:
    """(n, len(_SUM_NAMES)) per-image sums at threshold index k."""
    counts = {"inter": t.inter[:, k], "truth": t.truth, "pred": t.pred[:, k],
              "correct": t.correct[:, k], "pixels": t.pixels}
    return np.concatenate([image_sums_np(counts),
                           np.stack([t.inter[:, k], t.truth, t.pred[:, k], t.lesions,
                                     t.hits[:, k], t.fp_lesions[:, k]], axis=1)], axis=1)


def _figures(s: np.ndarray) -> dict[str, float]:
    """Aggregate figures from summed rows (last axis = _SUM_NAMES)."""
    v = dict(zip(_SUM_NAMES, np.moveaxis(s, -1, 0)))

    def ratio(a, b):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)

    return {"mean_dice": ratio(v["dice_sum"], v["mass_images"]),
            "pooled_dice": ratio(2 * v["inter"], v["truth"] + v["pred"]),
            "mean_iou": ratio(v["iou_sum"], v["mass_images"]),
            "pixel_accuracy": ratio(v["accuracy_sum"], v["images"]),
            "fp_image_rate": ratio(v["false_positive_images"], v["empty_images"]),
            "sensitivity": ratio(v["hits"], v["lesions"]),
            "fp_per_image": ratio(v["fp_lesions"], v["images"])}


def aggregate(t: Table, k: int) -> dict[str, Any]:
    """The aggregate figures at threshold index k, with the counts behind them."""
    s = _sums(t, k).sum(axis=0)
    out: dict[str, Any] = {name: float(value) for name, value in _figures(s).items()}
    out.update(images=int(len(t)), mass_images=int(s[_COL["mass_images"]]),
               empty_images=int(s[_COL["empty_images"]]), lesions=int(s[_COL["lesions"]]))
    return out


def bootstrap(t: Table, k: int, patients: list[str], *, resamples: int = 1000,
              seed: int = 0) -> dict[str, list[float]]:
    """95% percentile intervals of every aggregate figure, resampling patients."""
    keys = sorted(set(patients))
    index = {p: i for i, p in enumerate(keys)}
    per_patient = np.zeros((len(keys), len(_SUM_NAMES)))
    np.add.at(per_patient, [index[p] for p in patients], _sums(t, k))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(keys), np.full(len(keys), 1.0 / len(keys)), size=resamples)
    figures = _figures(counts @ per_patient)
    out = {}
    for name, values in figures.items():
        values = values[~np.isnan(values)]
        out[name] = ([float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
                     if values.size else [float("nan"), float("nan")])
    return out


def froc(t: Table, thresholds: tuple[float, ...] = THRESHOLDS) -> list[dict[str, float]]:
    """(threshold, fp_per_image, sensitivity) for every threshold, by increasing threshold."""
    out = []
    for k, thr in enumerate(thresholds):
        a = aggregate(t, k)
        out.append({"threshold": thr, "fp_per_image": a["fp_per_image"],
                    "sensitivity": a["sensitivity"]})
    return out


def choose_threshold(t: Table, thresholds: tuple[float, ...] = THRESHOLDS) -> tuple[float, int]:
    """The threshold with the best mean Dice (ties: the one nearest 0.5) and its index."""
    best, best_k = -1.0, 0
    for k, thr in enumerate(thresholds):
        dice = aggregate(t, k)["mean_dice"]
        if np.isnan(dice):
            continue
        if dice > best + 1e-12 or (abs(dice - best) <= 1e-12
                                   and abs(thr - 0.5) < abs(thresholds[best_k] - 0.5)):
            best, best_k = dice, k
    if best < 0:
        raise ValueError("no image with a mass: a threshold cannot be chosen on this split")
    return thresholds[best_k], best_k


def size_bin(diameter_mm: float | None, diameter_px: float) -> str:
    """Lesion-size group of an image's truth (equivalent diameter of all its mass pixels)."""
    if diameter_mm is not None and not np.isnan(diameter_mm):
        return ("< 10 mm" if diameter_mm < 10 else "10-20 mm" if diameter_mm < 20
                else ">= 20 mm")
    return ("< 16 px" if diameter_px < 16 else "16-48 px" if diameter_px < 48
            else ">= 48 px")
