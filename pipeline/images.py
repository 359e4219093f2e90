"""Image validation and reading, shared by every stage (store, compose, placement, ...).

Images inside the pipeline are HWC uint8 RGB; these helpers turn what users hand in
(grayscale, RGBA, 16-bit arrays; image files) into that, or raise :class:`ImageError`.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .errors import PipelineError


class ImageError(PipelineError, ValueError):
    """An array or file is not an image the pipeline can use."""


def check_image(image: np.ndarray) -> np.ndarray:
    """Accept HW (gray), HWC with 1/3/4 channels, uint8 or uint16; return HWC uint8 RGB."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ImageError(f"an image must be HW or HWC with 1, 3 or 4 channels, got shape {image.shape}")
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"an image must be uint8 or uint16, got {image.dtype}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[..., :3]  # alpha is dropped: samples are opaque photographs
    return np.ascontiguousarray(image)


def check_mask(mask: np.ndarray, hw: tuple[int, int], what: str = "mask") -> np.ndarray:
    """``mask`` as HW bool of size ``hw``; ImageError naming ``what`` otherwise."""
    mask = np.asarray(mask)
    if mask.shape != tuple(hw):
        raise ImageError(f"{what} is {mask.shape}, the image is {tuple(hw)}")
    return mask.astype(bool)


def load_image_file(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as HWC uint8 RGB, with a clear error for corrupt files."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):
                return check_image((np.asarray(im).astype(np.uint32) // 257).clip(0, 255).astype(np.uint8))
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from e


def require_rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Strict check for stages that compute on pixels: HWC uint8 RGB exactly (no conversion,
    so a caller's mistake is not silently fixed). Returns ``image``; ImageError otherwise."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(f"{what} must be HWC uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    return image
