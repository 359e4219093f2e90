"""Paste a generated object into a background with occlusion-exact masks.

The new object occludes what lies behind it: every older instance mask loses exactly the
pixels the new object covers, an instance covered completely is dropped, and a record of
the insertion is kept (the paper's method leaves masks of occluded objects untouched).
Images are HWC uint8 RGB (grayscale, RGBA and 16-bit are converted); masks HW bool; boxes
XYXY pixel coordinates with x2/y2 exclusive.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from .errors import PipelineError
from .images import check_image
from .masks import bbox


class ComposeError(PipelineError, ValueError):
    """The insertion cannot be made as asked (empty mask, bad box, ...)."""


@dataclass
class Composite:
    image: np.ndarray  # HWC uint8
    instances: list[tuple[str, np.ndarray]]  # updated older instances, then the new one (last)
    record: dict = field(default_factory=dict)


def soft_rim(alpha: np.ndarray, mask: np.ndarray, feather: float) -> np.ndarray:
    """Blend weights (H, W) float32 in [0, 1] that fade over ``feather`` px just inside the
    object's outline: ``alpha`` blurred, at least 0.5 inside ``mask`` and exactly 0 outside,
    so a blend never leaks past the mask and never shows a hard seam."""
    alpha = np.asarray(alpha, np.float32)
    if feather <= 0:
        return np.where(mask, alpha, 0.0).astype(np.float32)
    return np.clip(np.where(mask, np.maximum(cv2.GaussianBlur(alpha, (0, 0), feather), 0.5), 0.0), 0, 1).astype(np.float32)


def fit_box(box: Sequence[float], image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Round a box and shift it inside the image (size kept). Raises ComposeError when the
    box is empty or larger than the image, so a box never leaves the image silently cropped."""
    h, w = image_hw
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    bw, bh = x2 - x1, y2 - y1
    if bw < 1 or bh < 1:
        raise ComposeError(f"box {tuple(box)} is empty")
    if bw > w or bh > h:
        raise ComposeError(f"box {bw}x{bh} is larger than the {w}x{h} background; use a smaller scale")
    x1 = min(max(x1, 0), w - bw)
    y1 = min(max(y1, 0), h - bh)
    return x1, y1, x1 + bw, y1 + bh


def cut_out(fg: np.ndarray, fg_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop an object image and its mask to the mask's bounding box."""
    fg = check_image(fg)
    fg_mask = np.asarray(fg_mask).astype(bool)
    if fg_mask.shape != fg.shape[:2]:
        raise ComposeError(f"foreground mask {fg_mask.shape} does not match the foreground image {fg.shape[:2]}")
    b = bbox(fg_mask)
    if b is None:
        raise ComposeError("the foreground mask is empty: nothing to insert")
    x1, y1, x2, y2 = b
    return fg[y1:y2, x1:x2], fg_mask[y1:y2, x1:x2]


def paste(background: np.ndarray, instances: Sequence[tuple[str, np.ndarray]], fg: np.ndarray, fg_mask: np.ndarray,
          box: Sequence[float], class_name: str, harmonizer: Callable | None = None,
          harmonizer_name: str | None = None, feather: float = 1.0) -> Composite:
    """Insert the masked object ``fg`` into ``background`` scaled to ``box``.

    ``instances``: the background's (class, mask) pairs. The object's mask is resized with
    the object and is exact (hard); only the colour blend at its rim is feathered by
    ``feather`` pixels so edges do not look cut out. ``harmonizer(image, mask)`` runs on the
    composite (see pipeline.harmonize); the record names it by its ``name`` (or
    ``harmonizer_name``; "none" without a harmonizer)."""
    if not class_name or not str(class_name).strip():
        raise ComposeError("the inserted object needs a class name")
    bg = check_image(background)
    h, w = bg.shape[:2]
    for name, m in instances:
        if np.asarray(m).shape != (h, w):
            raise ComposeError(f"mask of {name!r} is {np.asarray(m).shape}, the background is {(h, w)}")
    crop, crop_mask = cut_out(fg, fg_mask)
    x1, y1, x2, y2 = fit_box(box, (h, w))
    bw, bh = x2 - x1, y2 - y1
    obj = cv2.resize(crop, (bw, bh), interpolation=cv2.INTER_AREA if bw < crop.shape[1] else cv2.INTER_LINEAR)
    soft = cv2.resize(crop_mask.astype(np.float32), (bw, bh), interpolation=cv2.INTER_LINEAR)
    new_mask = np.zeros((h, w), bool)
    new_mask[y1:y2, x1:x2] = soft >= 0.5
    if not new_mask.any():
        raise ComposeError(f"the object vanishes at box size {bw}x{bh}; use a larger scale")
    # Blend only around the box (alpha is 0 elsewhere), padded by the feather blur's reach: the
    # same pixels as blending the whole image, at a cost that follows the object, not the photo
    pad = int(np.ceil(4 * max(feather, 0))) + 2
    py1, py2, px1, px2 = max(0, y1 - pad), min(h, y2 + pad), max(0, x1 - pad), min(w, x2 + pad)
    alpha = np.zeros((py2 - py1, px2 - px1), np.float32)
    alpha[y1 - py1 : y2 - py1, x1 - px1 : x2 - px1] = soft
    region_mask = new_mask[py1:py2, px1:px2]
    if feather > 0:
        alpha = soft_rim(alpha, region_mask, feather)
    layer = np.zeros((py2 - py1, px2 - px1, 3), np.uint8)
    layer[y1 - py1 : y2 - py1, x1 - px1 : x2 - px1] = obj
    region = bg[py1:py2, px1:px2]
    image = bg.copy()
    image[py1:py2, px1:px2] = (region * (1 - alpha[..., None]) + layer * alpha[..., None]).round().astype(np.uint8)
    if harmonizer is not None:
        image = harmonizer(image, new_mask)
    updated, dropped, occluded = [], [], []
    for name, m in instances:
        m = np.asarray(m, bool)
        rest = m & ~new_mask
        if np.count_nonzero(rest) < np.count_nonzero(m):
            occluded.append(name)
        if rest.any():
            updated.append((name, rest))
        else:
            dropped.append(name)
    if harmonizer_name is None:
        harmonizer_name = getattr(harmonizer, "name", "custom") if harmonizer is not None else "none"
    record = {"class": class_name, "box": [x1, y1, x2, y2], "harmonization": harmonizer_name,
              "area": int(new_mask.sum()), "occluded": occluded, "dropped": dropped}
    return Composite(image, updated + [(class_name, new_mask)], record)
