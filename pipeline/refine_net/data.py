"""The learned refiner's data: the benchmark's fixed coarse-map kinds, the trainer's random
degradations of true masks, photo augmentation and one training sample (input, target, valid)."""
from __future__ import annotations

import math

import cv2
import numpy as np

from .model import CROP, crop_box, crop_matrix, net_input


# -- coarse maps: the benchmark's fixed kinds and the trainer's random degradations ----------
TEST_KINDS = ("box", "dilated", "eroded", "blurred", "shifted", "attention16")


def _norm(g: np.ndarray) -> np.ndarray:
    return ((g - g.min()) / max(float(g.max() - g.min()), 1e-6)).astype(np.float32)


def coarse_map(gt: np.ndarray, kind: str) -> np.ndarray:
    """A fixed coarse map of kind ``kind`` made from a true (H, W) bool mask, (H, W) float32
    in [0, 1]. ``box``, ``dilated``, ``blurred``, ``shifted`` and ``attention16`` are the
    definitions of bench/bench_core.py; ``eroded`` shrinks the object by a tenth of
    sqrt(area) and softens it like ``dilated``."""
    h, w = gt.shape
    g = gt.astype(np.float32)
    s = max(h, w)
    if kind == "attention16":
        g = cv2.resize(cv2.resize(g, (16, 16), interpolation=cv2.INTER_AREA), (w, h))
    elif kind == "blurred":
        g = cv2.GaussianBlur(g, (0, 0), 0.03 * s)
    elif kind == "dilated":
        g = cv2.GaussianBlur(cv2.dilate(g, np.ones((s // 15,) * 2, np.uint8)), (0, 0), 0.01 * s)
    elif kind == "eroded":
        r = max(1, round(0.1 * math.sqrt(gt.sum())))
        er = cv2.erode(g, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
        g = cv2.GaussianBlur(er if er.any() else g, (0, 0), 0.01 * s)
    elif kind == "shifted":
        g = np.roll(cv2.GaussianBlur(g, (0, 0), 0.01 * s), (h // 20, w // 20), axis=(0, 1))
    elif kind == "box":
        ys, xs = np.nonzero(gt)
        g = np.zeros_like(g)
        g[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = 1
        g = cv2.GaussianBlur(g, (0, 0), 0.01 * s)
    else:
        raise ValueError(f"unknown coarse kind {kind!r}; one of {TEST_KINDS}")
    return _norm(g)


def _smooth_field(shape, rng, amp: float, scale: int = 4) -> np.ndarray:
    h, w = shape
    f = rng.normal(0, 1, (scale, scale)).astype(np.float32)
    return cv2.resize(f, (w, h), interpolation=cv2.INTER_CUBIC) * amp


def random_coarse(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random degradation of a true (H, W) bool mask into a coarse (H, W) float32 [0, 1] map
    (the trainer's generator: broad random families, never the benchmark's fixed settings)."""
    h, w = gt.shape
    g = gt.astype(np.float32)
    size = math.sqrt(max(float(gt.sum()), 1.0))  # object scale, px
    mode = rng.choice(["morph", "shape", "lowres", "blur", "warp", "near"], p=[0.25, 0.15, 0.17, 0.13, 0.2, 0.1])
    if mode == "morph":
        r = int(round(rng.uniform(0.03, 0.35) * size))
        k = cv2.getStructuringElement(int(rng.choice([cv2.MORPH_ELLIPSE, cv2.MORPH_RECT])), (2 * r + 1,) * 2)
        g2 = cv2.dilate(g, k) if rng.random() < 0.55 else cv2.erode(g, k)
        g = g2 if g2.any() else g
    elif mode == "shape":
        ys, xs = np.nonzero(gt)
        pts = np.stack([xs, ys], 1).astype(np.float32)
        pad = rng.uniform(-0.05, 0.2) * size
        g = np.zeros_like(g)
        kind = rng.integers(0, 3)
        if kind == 0:  # rotated rectangle
            (cx, cy), (bw, bh), ang = cv2.minAreaRect(pts)
            box = cv2.boxPoints(((cx, cy), (max(bw + 2 * pad, 2), max(bh + 2 * pad, 2)), ang + rng.uniform(-15, 15)))
            cv2.fillPoly(g, [box.astype(np.int32)], 1.0)
        elif kind == 1:  # ellipse over the box
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
            cv2.ellipse(g, (int((x0 + x1) / 2), int((y0 + y1) / 2)),
                        (max(1, int((x1 - x0) / 2 * 1.2 + pad)), max(1, int((y1 - y0) / 2 * 1.2 + pad))),
                        0, 0, 360, 1.0, -1)
        else:  # convex hull, grown or shrunk
            cv2.fillPoly(g, [cv2.convexHull(pts).astype(np.int32)], 1.0)
            r = int(abs(pad))
            if r:
                k = np.ones((2 * r + 1,) * 2, np.uint8)
                g = cv2.dilate(g, k) if pad > 0 else cv2.erode(g, k)
        if not g.any():
            g = gt.astype(np.float32)
    elif mode == "lowres":
        n = int(rng.integers(6, 41))
        g = cv2.resize(cv2.resize(g, (n, max(2, round(n * h / w))), interpolation=cv2.INTER_AREA), (w, h),
                       interpolation=cv2.INTER_LINEAR if rng.random() < 0.7 else cv2.INTER_CUBIC)
    elif mode == "blur":
        g = cv2.GaussianBlur(g, (0, 0), rng.uniform(0.05, 0.5) * size)
    elif mode == "warp":
        amp = rng.uniform(0.05, 0.3) * size
        mx = np.arange(w, dtype=np.float32)[None].repeat(h, 0) + _smooth_field((h, w), rng, amp, int(rng.integers(3, 7)))
        my = np.arange(h, dtype=np.float32)[:, None].repeat(w, 1) + _smooth_field((h, w), rng, amp, int(rng.integers(3, 7)))
        g2 = cv2.remap(g, mx, my, cv2.INTER_LINEAR)
        g = g2 if g2.max() > 0.5 else g
    # "near": the truth, only softened below
    if rng.random() < 0.4:  # shift / rescale about the centre
        ys, xs = np.nonzero(g > 0.5) if (g > 0.5).any() else np.nonzero(gt)
        c = (float(xs.mean()), float(ys.mean()))
        sc = rng.uniform(0.85, 1.18)
        M = cv2.getRotationMatrix2D(c, rng.uniform(-8, 8), sc)
        M[:, 2] += rng.uniform(-0.18, 0.18, 2) * size
        g2 = cv2.warpAffine(g, M, (w, h))
        g = g2 if g2.max() > 0.5 else g
    if rng.random() < 0.25:  # a spurious blob or a hole
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rad = max(2, int(rng.uniform(0.05, 0.3) * size))
        cv2.circle(g, (int(cx), int(cy)), rad, float(rng.random() < 0.5), -1)
    g = cv2.GaussianBlur(g, (0, 0), rng.uniform(0.3, 0.12 * size + 0.5))
    if rng.random() < 0.3:  # attention-like noise
        g = g + _smooth_field((h, w), rng, rng.uniform(0.02, 0.15), int(rng.integers(4, 12)))
    g = _norm(np.clip(g, 0, None))
    return _norm(g ** rng.uniform(0.5, 2.0))  # the object's level in the map varies too


def jitter_photo(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour augmentation: brightness, contrast, saturation, per-channel gain, grey, noise."""
    x = image.astype(np.float32) / 255.0
    x = (x - x.mean()) * rng.uniform(0.6, 1.4) + x.mean() * rng.uniform(0.6, 1.4)
    grey = x.mean(2, keepdims=True)
    x = grey + (x - grey) * (0.0 if rng.random() < 0.08 else rng.uniform(0.4, 1.6))
    x = x * rng.uniform(0.85, 1.15, 3)
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.005, 0.04), x.shape)
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def training_sample(photo, obj: int, rng: np.random.Generator, size: int = CROP):
    """(input (5, S, S) float32, target (S, S) float32, valid (S, S) float32) for one object of a
    :class:`~pipeline.realdata.Photo`, with random photo and coarse-map augmentation."""
    image, gt = photo.image, photo.masks[obj]
    if rng.random() < 0.5:
        image, gt = image[:, ::-1], gt[:, ::-1]
    f = rng.uniform(0.45, 1.0)  # train at several photo scales (objects of many pixel sizes)
    if f < 0.97:
        sz = (max(8, round(image.shape[1] * f)), max(8, round(image.shape[0] * f)))
        image = cv2.resize(np.ascontiguousarray(image), sz, interpolation=cv2.INTER_AREA)
        gt = cv2.resize(gt.astype(np.uint8), sz, interpolation=cv2.INTER_NEAREST).astype(bool)
        if not gt.any():
            gt = photo.masks[obj]
            image = photo.image
    image = jitter_photo(np.ascontiguousarray(image), rng)
    gt = np.ascontiguousarray(gt)
    heat = random_coarse(gt, rng)
    M = crop_matrix(*crop_box(heat), size)
    x = net_input(image, heat, M, size)
    t = cv2.warpAffine(gt.astype(np.float32), M, (size, size), flags=cv2.INTER_LINEAR)
    return x, t, x[4]
