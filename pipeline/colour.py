"""Colour primitives shared by the harmonizers (:mod:`pipeline.harmonize`,
:mod:`pipeline.harmonize_net`): Lab conversion, region statistics, the composite check and
the family's error. A leaf: it imports no other harmonizer module, so both can build on it.

Lab here is OpenCV's float Lab of RGB in [0, 1]: L in [0, 100], a and b about [-128, 127].
"""
from __future__ import annotations

import cv2
import numpy as np

from .errors import PipelineError
from .images import ImageError, require_rgb


class HarmonizeError(PipelineError, ValueError):
    """The composite cannot be harmonized as given (bad shapes, empty or full mask, weights)."""


def to_lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def from_lab(lab: np.ndarray) -> np.ndarray:
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def check_composite(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(HWC uint8 RGB composite, HW bool mask of the object) checked; HarmonizeError otherwise."""
    mask = np.asarray(mask).astype(bool)
    try:
        image = require_rgb(image, "composite")
    except ImageError as e:
        raise HarmonizeError(str(e)) from e
    if mask.shape != image.shape[:2]:
        raise HarmonizeError(f"mask {mask.shape} does not match the composite {image.shape[:2]}")
    if not mask.any():
        raise HarmonizeError("the mask is empty: no object to harmonize")
    if mask.all():
        raise HarmonizeError("the mask covers the whole image: there is no background to match")
    return image, mask


def stats(lab: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    px = lab[region]
    return px.mean(0), px.std(0) + 1e-3
