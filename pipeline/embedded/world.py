"""A procedural little world of single objects on plain backgrounds, with exact masks.

It is the training data of the embedded model and the yardstick of mask quality: every
class has its own shape, texture and a saturated hue that no background has, so the true
extent of an object in a *generated* image can be read back from colour alone
(:func:`colour_extent`), independently of any attention map.

All functions are vectorised over a batch; images are NHWC float32 in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WorldClass:
    name: str
    hue: float  # degrees on the HSV wheel; backgrounds are never saturated
    shape: str


CLASSES: tuple[WorldClass, ...] = (
    WorldClass("ball", 0.0, "disc"),
    WorldClass("pumpkin", 28.0, "pumpkin"),
    WorldClass("star", 56.0, "star"),
    WorldClass("leaf", 120.0, "leaf"),
    WorldClass("kite", 182.0, "kite"),
    WorldClass("aeroplane", 226.0, "plane"),  # two CLIP tokens: "aerop" + "lane</w>"
    WorldClass("flower", 275.0, "flower"),
    WorldClass("heart", 322.0, "heart"),
)
CLASS_NAMES = tuple(c.name for c in CLASSES)
_CLASS_HUES = np.array([c.hue for c in CLASSES], np.float32)
BACKGROUNDS = ("on a wall", "on the floor", "on the sand", "in the snow", "at night")
PROMPT_TEMPLATE = "a photograph of a {}"

# Saturation/value bounds that separate objects from backgrounds (see colour_extent).
OBJ_MIN_SAT = 0.45
OBJ_MIN_VAL = 0.3


def caption(class_name: str, background: int | None = None) -> str:
    text = PROMPT_TEMPLATE.format(class_name)
    return text if background is None else f"{text} {BACKGROUNDS[background]}"


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """h in degrees, s and v in [0,1]; any broadcastable shapes -> (..., 3) float32."""
    h, s, v = (np.asarray(a, np.float32) for a in (h, s, v))
    out = []
    for n in (5.0, 3.0, 1.0):  # R, G, B of the standard closed form
        k = np.mod(n + h / 60.0, 6.0)
        out.append(v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.stack(out, axis=-1)


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., 3) RGB in [0,1] -> hue (degrees), saturation, value."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = mx - mn
    safe = np.where(d > 1e-6, d, 1.0)
    h = np.where(mx == r, np.mod((g - b) / safe, 6), np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    h = np.where(d > 1e-6, h, 0.0)
    s = np.where(mx > 1e-6, d / np.where(mx > 1e-6, mx, 1.0), 0.0)
    return h, s, mx


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
    """Bilinear-upsampled uniform noise in [-1, 1], shape (n, size, size)."""
    grid = rng.uniform(-1, 1, (n, cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0, cells, size, dtype=np.float32)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = t - i0
    rows = grid[:, i0] * (1 - f)[None, :, None] + grid[:, i0 + 1] * f[None, :, None]
    return rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f


def _shape_masks(shape: str, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inside-mask and value texture for one shape, in object coords u, v (radius 1)."""
    rr = np.sqrt(u * u + v * v)
    th = np.arctan2(v, u)
    if shape == "disc":
        inside = rr <= 1
        tex = 1.0 - 0.35 * np.clip(np.sqrt((u + 0.4) ** 2 + (v + 0.4) ** 2), 0, 1.4) / 1.4
    elif shape == "pumpkin":
        inside = (u / 1.0) ** 2 + (v / 0.78) ** 2 <= 1
        tex = 0.8 + 0.2 * np.cos(u * np.pi * 3.5)
    elif shape == "star":
        inside = rr <= 0.42 + 0.58 * ((1 + np.cos(5 * (th + np.pi / 2))) / 2) ** 3
        tex = 1.0 - 0.25 * rr
    elif shape == "leaf":
        inside = (np.abs(v) <= 0.55 * (1 - u * u)) & (np.abs(u) <= 1)
        tex = np.where(np.abs(v) < 0.06, 0.7, 0.95)
    elif shape == "kite":
        inside = np.abs(u) / 0.7 + np.abs(v) <= 1
        tex = np.where((np.abs(u) < 0.05) | (np.abs(v + 0.1) < 0.05), 0.65, 1.0)
    elif shape == "plane":
        body = (np.abs(v) <= 0.16) & (np.abs(u) <= 1)
        wings = (np.abs(u - 0.1) <= 0.24 * (1.1 - np.abs(v))) & (np.abs(v) <= 0.95)
        tail = (u >= -1.0) & (u <= -0.72) & (np.abs(v) <= 0.42)
        inside = body | wings | tail
        tex = np.where(body, 1.0, 0.82)
    elif shape == "flower":
        inside = rr <= 0.5 + 0.5 * np.abs(np.cos(2.5 * th))
        tex = np.where(rr < 0.28, 0.6, 1.0)
    elif shape == "heart":
        x, y = u * 1.25, -v * 1.25 + 0.25
        inside = (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
        tex = 1.0 - 0.2 * np.clip(rr, 0, 1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside, tex


@dataclass
class Batch:
    images: np.ndarray  # (N, S, S, 3) float32 in [0,1]
    masks: np.ndarray  # (N, S, S) bool, the object's exact extent
    labels: np.ndarray  # (N,) int class index into CLASSES
    backgrounds: np.ndarray  # (N,) int index into BACKGROUNDS

    def captions(self, rng: np.random.Generator, p_background: float = 0.5) -> list[str]:
        with_bg = rng.random(len(self.labels)) < p_background
        return [caption(CLASS_NAMES[c], int(b) if w else None)
                for c, b, w in zip(self.labels, self.backgrounds, with_bg)]


def sample_batch(rng: np.random.Generator, n: int, size: int = 64, labels: np.ndarray | None = None) -> Batch:
    """Draw ``n`` scenes of ``size``x``size`` with one object each."""
    labels = rng.integers(0, len(CLASSES), n) if labels is None else np.asarray(labels)
    bgs = rng.integers(0, len(BACKGROUNDS), n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size + 0.5 / size

    # Backgrounds: desaturated, textured, kind-dependent brightness.
    base = rng.uniform(0.3, 0.8, n)
    base = np.where(bgs == 3, rng.uniform(0.82, 0.95, n), base)  # snow
    base = np.where(bgs == 4, rng.uniform(0.06, 0.2, n), base)  # night
    tint_h = np.where(bgs == 2, rng.uniform(30, 45, n), rng.uniform(0, 360, n))
    tint_s = np.where(bgs == 2, rng.uniform(0.12, 0.2, n), rng.uniform(0.0, 0.12, n))
    val = base[:, None, None] + 0.08 * _smooth_noise(rng, n, size, 4)
    fine = rng.uniform(-1, 1, (n, size, size)).astype(np.float32)
    val += np.where((bgs == 2) | (bgs == 3), 0.05, 0.015)[:, None, None] * fine
    floor = (bgs == 1)[:, None, None]
    val += floor * (0.15 * (yy[None] - 0.5) + 0.05 * (np.mod(xx[None] * 6 + 0.5 * yy[None], 1) < 0.06))
    val = np.clip(val, 0.02, 0.98)
    img = _hsv_to_rgb(np.broadcast_to(tint_h[:, None, None], val.shape),
                      np.broadcast_to(tint_s[:, None, None], val.shape), val)

    # Objects: a saturated hue per class, random size/position/rotation.
    radius = rng.uniform(0.2, 0.38, n)
    cx = rng.uniform(radius, 1 - radius)
    cy = rng.uniform(radius, 1 - radius)
    ang = rng.uniform(-0.5, 0.5, n)
    dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]
    ca, sa = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
    u = (ca * dx + sa * dy) / radius[:, None, None]
    v = (-sa * dx + ca * dy) / radius[:, None, None]
    masks = np.zeros((n, size, size), bool)
    texture = np.ones((n, size, size), np.float32)
    for k, cls in enumerate(CLASSES):
        sel = labels == k
        if sel.any():
            masks[sel], texture[sel] = _shape_masks(cls.shape, u[sel], v[sel])
    hue = _CLASS_HUES[labels] + rng.uniform(-5, 5, n)
    sat = rng.uniform(0.75, 1.0, n)
    bright = rng.uniform(0.7, 1.0, n)
    obj = _hsv_to_rgb(np.broadcast_to(hue[:, None, None], texture.shape),
                      np.broadcast_to(sat[:, None, None], texture.shape),
                      np.clip(bright[:, None, None] * texture, OBJ_MIN_VAL + 0.15, 1.0))
    img = np.where(masks[..., None], obj, img).astype(np.float32)
    return Batch(img, masks, labels.astype(np.int64), bgs.astype(np.int64))


def colour_extent(image: np.ndarray, class_index: int) -> np.ndarray:
    """True extent of class ``class_index`` in an HWC image (float [0,1] or uint8) -> HW bool.

    Uses only the colour signature of the class (saturated pixels of its hue), never
    attention, so it can grade attention masks of generated images.
    """
    img = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image
    h, s, v = rgb_to_hsv(img)
    return (s >= OBJ_MIN_SAT) & (v >= OBJ_MIN_VAL) & (nearest_hue_class(h) == class_index)


def nearest_hue_class(hue: np.ndarray) -> np.ndarray:
    """Index of the class whose hue is nearest on the colour wheel, per pixel."""
    d = np.abs(np.mod(hue[..., None] - _CLASS_HUES + 180, 360) - 180)
    return d.argmin(-1)


def judge_class(image: np.ndarray, min_fraction: float = 0.02) -> int | None:
    """Class whose colour signature covers the most pixels, or None if none covers
    ``min_fraction`` of the image. Independent of attention maps."""
    img = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image
    h, s, v = rgb_to_hsv(img)
    nearest = nearest_hue_class(h)[(s >= OBJ_MIN_SAT) & (v >= OBJ_MIN_VAL)]
    areas = np.bincount(nearest, minlength=len(CLASSES)) / (img.shape[0] * img.shape[1])
    best = int(np.argmax(areas))
    return best if areas[best] >= min_fraction else None


