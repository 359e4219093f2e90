"""Masks from heat maps: threshold sweeps, IoU curves, the refined-threshold rule.

Heat maps are (H, W) float in [0, 1]; masks are (H, W) bool. Everything here is a cheap
numpy comparison, so re-thresholding a 512x512 map for an interactive slider costs well
under a millisecond; the expensive parts (generation, refinement) are done once upstream.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .errors import PipelineError

DEFAULT_THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)


HEAT_DTYPE = np.float16  # how the curation store keeps heat maps (512 KB per 512x512 sample)


class HeatMapError(PipelineError, ValueError):
    """A heat map is not (H, W) finite values in [0, 1]."""


def check_heat(heat: np.ndarray, hw: tuple[int, int] | None = None, what: str = "heat map") -> np.ndarray:
    """``heat`` as (H, W) float32 with every value finite and in [0, 1] (and of size ``hw``
    if given); HeatMapError otherwise. A 0-255 uint8 map or a NaN map is refused rather than
    thresholded: every threshold of such a map would be silently wrong."""
    heat = np.asarray(heat)
    if heat.ndim != 2:
        raise HeatMapError(f"{what} must be (H, W), got shape {heat.shape}")
    if hw is not None and heat.shape != tuple(hw):
        raise HeatMapError(f"{what} is {heat.shape}, the image is {tuple(hw)}")
    if heat.dtype.kind not in "fb":
        raise HeatMapError(f"{what} must be float in [0, 1], got dtype {heat.dtype} (scale a 0-255 map by 1/255)")
    heat = heat.astype(np.float32)
    if heat.size and not np.all(np.isfinite(heat)):
        raise HeatMapError(f"{what} contains NaN or inf: the attention capture failed for this image")
    if heat.size and (float(heat.min()) < 0 or float(heat.max()) > 1):
        raise HeatMapError(f"{what} must lie in [0, 1], got [{float(heat.min()):.3g}, {float(heat.max()):.3g}]")
    return heat


def quantize_heat(heat: np.ndarray) -> np.ndarray:
    """The heat map exactly as the curation store holds it, as (H, W) float32.

    The studio thresholds this, not the full-precision map, so that a mask shown at
    threshold t is pixel for pixel the mask re-derived later from the stored heat."""
    return np.asarray(heat, np.float32).astype(HEAT_DTYPE).astype(np.float32)


def upsample(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (h, w) map to ``size`` = (H, W)."""
    if m.shape == tuple(size):
        return m.astype(np.float32)
    import torch  # only here: the rest of this module is numpy
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def mask_at(heat: np.ndarray, threshold: float) -> np.ndarray:
    """Binary mask ``heat >= threshold``, (H, W) bool."""
    return np.asarray(heat) >= threshold


def masks_at(heat: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> np.ndarray:
    """(T, H, W) bool, one mask per threshold."""
    return np.asarray(heat)[None] >= np.asarray(thresholds, np.float32)[:, None, None]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks; two empty masks have IoU 1."""
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def iou_curve(heat: np.ndarray, reference: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> np.ndarray:
    """IoU of ``heat >= t`` with ``reference`` for every threshold t, (T,) float.

    One histogram pass instead of T mask comparisons: pixels are binned by the index of
    the highest threshold they pass, then cumulative sums give every intersection/area.
    """
    heat = np.asarray(heat, np.float32)
    reference = np.asarray(reference, bool)
    if heat.shape != reference.shape:
        raise ValueError(f"heat map {heat.shape} and reference mask {reference.shape} differ in size")
    thr = np.asarray(thresholds, np.float32)
    if np.any(np.diff(thr) < 0):
        raise ValueError("thresholds must be ascending")
    level = np.searchsorted(thr, np.nan_to_num(heat, nan=-1.0), side="right")  # #thresholds passed
    n = len(thr) + 1
    all_counts = np.bincount(level.ravel(), minlength=n)
    ref_counts = np.bincount(level[reference], minlength=n)
    # pixels passing threshold k are those with level >= k + 1
    area = np.cumsum(all_counts[::-1])[::-1][1:]
    inter = np.cumsum(ref_counts[::-1])[::-1][1:]
    union = area + np.count_nonzero(reference) - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def choose_threshold(heat: np.ndarray, refined: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> tuple[float, np.ndarray]:
    """The paper's rule: the threshold whose mask best matches the refined mask.

    Returns (threshold, ious). Ties go to the lower threshold. An empty refined mask has no
    best threshold: ValueError.
    """
    if not np.any(refined):
        raise ValueError("the refined mask is empty: there is no object to match a threshold to")
    heat = check_heat(heat)
    ious = iou_curve(heat, refined, thresholds)
    return float(np.asarray(thresholds)[int(np.argmax(ious))]), ious


@dataclass
class ThresholdCalibrator:
    """Per-class threshold over many images: the threshold with the highest mean IoU.

    ``add(class, ious)`` takes the per-image IoU curve from ``choose_threshold``.
    """

    thresholds: np.ndarray = field(default_factory=lambda: DEFAULT_THRESHOLDS.copy())

    def __post_init__(self):
        self._sum: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(self.thresholds)))
        self._n: dict[str, int] = defaultdict(int)

    def add(self, class_name: str, ious: np.ndarray) -> None:
        ious = np.asarray(ious, float)
        if ious.shape != (len(self.thresholds),):
            raise ValueError(f"expected {len(self.thresholds)} IoUs, got shape {ious.shape}")
        self._sum[class_name] += ious
        self._n[class_name] += 1

    def count(self, class_name: str) -> int:
        return self._n.get(class_name, 0)

    def mean_curve(self, class_name: str) -> np.ndarray:
        if not self._n.get(class_name):
            raise KeyError(f"no images of class {class_name!r} were added")
        return self._sum[class_name] / self._n[class_name]

    def threshold(self, class_name: str) -> float:
        return float(self.thresholds[int(np.argmax(self.mean_curve(class_name)))])

    def to_dict(self) -> dict[str, dict]:
        return {c: {"threshold": self.threshold(c), "n": self._n[c], "mean_iou": self.mean_curve(c).tolist()}
                for c in self._n}


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """XYXY box (x2, y2 exclusive) of a bool mask, or None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def otsu_threshold(heat: np.ndarray) -> float:
    """Otsu's threshold of a (H, W) [0, 1] map, in [0, 1] (a mask rule: the refiners and selectors both use it)."""
    import cv2  # opencv only where this rule runs

    t, _ = cv2.threshold((np.clip(heat, 0, 1) * 255).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t) / 255.0


def derive_generated(heat: np.ndarray, threshold: float, masks: list[np.ndarray],
                     sources: list[str]) -> list[np.ndarray | None]:
    """The rule the store keeps its ``generated`` masks to (on add, and when a threshold
    changes): for each instance (``masks`` HW bool, back to front, with their ``sources``),
    its mask re-derived from ``heat`` (HW float, the stored float16-rounded heat) if it is
    ``generated``: ``heat >= threshold`` minus every later ``inserted`` instance, which lies
    on top; else None (kept as stored)."""
    out: list[np.ndarray | None] = []
    for k, source in enumerate(sources):
        if source != "generated":
            out.append(None)
            continue
        m = mask_at(heat, threshold)
        for later, s in zip(masks[k + 1:], sources[k + 1:]):
            if s == "inserted":
                m = m & ~later
        out.append(m)
    return out
