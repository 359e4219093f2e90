"""Image validation and reading, shared by every stage (store, compose, placement, ...).

Images inside the pipeline are HWC uint8 RGB; these helpers turn what users hand in
(grayscale, RGBA, 16-bit arrays; image files) into that, or raise :class:`ImageError`.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

from .errors import PipelineError


class ImageError(PipelineError, ValueError):
    """An array or file is not an image the pipeline can use."""


# The largest image any stage takes (64 megapixels, e.g. 8000x8000): beyond it placement,
# harmonization and the store would cost more memory than a shared machine has, and a
# small file can declare a huge size (a 875 KB PNG of 30000x30000). Refused with a message.
MAX_IMAGE_PIXELS = 64_000_000


def check_pixels(hw: tuple[int, int], what: str = "image") -> None:
    """ImageError when ``hw`` = (H, W) exceeds :data:`MAX_IMAGE_PIXELS`."""
    if int(hw[0]) * int(hw[1]) > MAX_IMAGE_PIXELS:
        raise ImageError(f"{what} is {hw[1]}x{hw[0]} = {int(hw[0]) * int(hw[1]) / 1e6:.0f} megapixels, over the "
                         f"limit of {MAX_IMAGE_PIXELS / 1e6:.0f}; scale it down first")


def from_pil(im: Image.Image) -> np.ndarray:
    """A PIL image as HWC uint8 RGB by its mode: EXIF orientation applied (as a viewer and the
    studio's upload show it), CMYK converted with K, a palette looked up (its indices are
    not grey levels), 16-bit scaled."""
    check_pixels((im.height, im.width))
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        return check_image((np.asarray(im).astype(np.uint32) // 257).clip(0, 255).astype(np.uint8))
    return np.ascontiguousarray(np.asarray(im.convert("RGB")))


def check_image(image) -> np.ndarray:
    """Accept HW (gray), HWC with 1/3/4 channels (4 = RGBA), uint8 or uint16, or a PIL
    image (converted by its mode, see :func:`from_pil`: pass the PIL image itself for CMYK or
    palette images, whose arrays cannot be told from RGBA or grey); return HWC uint8 RGB."""
    if isinstance(image, Image.Image):
        return from_pil(image)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ImageError(f"an image must be HW or HWC with 1, 3 or 4 channels, got shape {image.shape}")
    check_pixels(image.shape[:2])
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


def open_checked(source, what: str | None = None) -> Image.Image:
    """Open an image file (a path or a binary file object) lazily, checking from its header
    alone that it is an image within :data:`MAX_IMAGE_PIXELS`: the one place every reader
    (store, uploads, every import) checks a size before decoding, since a small file can
    declare gigapixels (a 41 KB PNG decodes to 2.2 GB). The caller closes it (``with``)."""
    what = what or f"image {source}"
    try:
        im = Image.open(source)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, Image.DecompressionBombError):
            raise ImageError(f"{what} declares too many megapixels ({e}); the limit is "
                             f"{MAX_IMAGE_PIXELS / 1e6:.0f}: scale it down first") from e
        raise ImageError(f"cannot read {what}: {e}") from e
    try:
        check_pixels((im.height, im.width), what)
    except ImageError:
        im.close()
        raise
    return im


def image_size(source, what: str | None = None) -> tuple[int, int]:
    """(H, W) of an image file from its header (nothing decoded); ImageError for a file that
    is not an image or is over :data:`MAX_IMAGE_PIXELS`."""
    with open_checked(source, what) as im:
        return im.height, im.width


def load_image_file(path: str | os.PathLike, what: str | None = None) -> np.ndarray:
    """Read an image file as HWC uint8 RGB, with a clear error for corrupt files."""
    what = what or f"image {path}"
    with open_checked(path, what) as im:  # the size is checked before decoding a bomb
        try:
            im.load()
            return from_pil(im)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            if isinstance(e, ImageError):
                raise
            raise ImageError(f"cannot read {what}: {e}") from e


def load_label_map(source, hw: tuple[int, int] | None = None, what: str | None = None) -> np.ndarray:
    """A label map (a VOC SegmentationClass/Object PNG: one index per pixel, P or L mode) as
    HW uint8, its size checked from the header (and against ``hw`` = (H, W) when given)
    before it is decoded."""
    what = what or f"label map {source}"
    with open_checked(source, what) as im:
        if hw is not None and (im.height, im.width) != tuple(hw):
            raise ImageError(f"{what} is {im.width}x{im.height}, its image is {hw[1]}x{hw[0]}")
        if im.mode not in ("P", "L"):
            raise ImageError(f"{what} must be a palette (P) or grey (L) PNG of indices, got mode {im.mode}")
        try:
            return np.asarray(im)
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"cannot read {what}: {e}") from e


def require_rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Strict check for stages that compute on pixels: HWC uint8 RGB exactly (no conversion,
    so a caller's mistake is not silently fixed). Returns ``image``; ImageError otherwise."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(f"{what} must be HWC uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    return image
