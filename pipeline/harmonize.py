"""Harmonization: make a pasted object's colours fit the background.

Every harmonizer follows :class:`Harmonizer`: ``h(composite HWC uint8, mask HW bool) -> HWC
uint8``, and carries its registered ``name`` (recorded with each composite). They are
registered in :data:`HARMONIZERS`; ``get_harmonizer(name, **options)`` builds one:

- ``none``: the composite as is.
- ``global``: the object's Lab mean/std set to the whole background's. The naive idea;
  it makes real composites worse (an object's colours are not the background's), and the
  benchmark shows by how much.
- ``ring``: the object's Lab statistics moved part of the way (``strength``) toward those
  of the background ring around it: the idea of RAIN (region-aware normalisation), at
  pixel level.
- ``learned`` (default when its weights exist): a ridge regression, trained by
  ``python -m pipeline.harmonize train`` on self-supervised perturbations of real COCO
  photos (how iHarmony4 was made), predicts the object's true Lab mean/std from the
  composite's object, ring and background statistics.
- ``poisson``: OpenCV seamless cloning (gradient-domain).
- ``rainnet``: RainNet's published network (:mod:`pipeline.rainnet`), with ``checkpoint=``.

The transform is applied inside the mask with a soft rim (:func:`pipeline.compose.soft_rim`),
so no seam appears.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import cv2
import numpy as np

from .colour import HarmonizeError, check_composite, from_lab, stats, to_lab  # noqa: F401 (re-exported)
from .compose import soft_rim
from .plugins import Registry

ASSET = Path(__file__).resolve().parents[1] / "assets" / "harmonizer_ridge.npz"


RING_WORK_SIDE = 512  # the ring is found at most this many pixels across (see ring_mask)


def ring_mask(mask: np.ndarray, width: int | None = None) -> np.ndarray:
    """The background band around the object, ``width`` px (default: 1/4 of its box size),
    (H, W) bool. Only colour statistics are read from it, which do not need every pixel: on
    a large image the dilation runs on the mask scaled to at most RING_WORK_SIDE across and
    the band is scaled back, so the cost stays linear in pixels (a full-resolution elliptical
    kernel of 1/4 the object's size grows with its square: minutes at 9000x9000)."""
    mask = np.asarray(mask, bool)
    if width is None:
        ys, xs = np.nonzero(mask)
        if not len(ys):
            return ~mask
        width = max(3, int(0.25 * max(np.ptp(ys) + 1, np.ptp(xs) + 1)))
    H, W = mask.shape
    f = min(1.0, RING_WORK_SIDE / max(H, W))
    if f < 1.0:
        size = (max(1, round(W * f)), max(1, round(H * f)))
        small = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0  # any object pixel
        r = max(1, round(width * f))
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        grown = cv2.resize(cv2.dilate(small.astype(np.uint8), k), (W, H), interpolation=cv2.INTER_NEAREST) > 0
    else:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
        grown = cv2.dilate(mask.astype(np.uint8), k) > 0
    ring = grown & ~mask
    return ring if ring.any() else ~mask


def _bands(mask: np.ndarray, width: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Thin bands just inside and just outside the object's outline."""
    k = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    m8 = mask.astype(np.uint8)
    inner = mask & ~(cv2.erode(m8, k) > 0)
    outer = (cv2.dilate(m8, k) > 0) & ~mask
    return (inner if inner.any() else mask), (outer if outer.any() else ~mask)


N_FEATURES = 28


def features(lab: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Lab statistics of the composite, (28,): object mean/std, ring mean/std, background
    mean/std, the means of thin bands just inside/outside the outline (a colour shift of the
    object shows as a jump across it), the object's mean minus its inner band, and 1."""
    inner, outer = _bands(mask)
    fm, fs = stats(lab, mask)
    im, om = lab[inner].mean(0), lab[outer].mean(0)
    f = [fm, fs, *stats(lab, ring_mask(mask)), *stats(lab, ~mask), im, om, fm - im, np.ones(1)]
    return np.concatenate(f).astype(np.float64)


def apply_stats(image: np.ndarray, mask: np.ndarray, mean: np.ndarray, std: np.ndarray, feather: float = 1.5) -> np.ndarray:
    """Set the object's Lab mean/std to (mean, std), blended in over a soft rim.

    Only the object's pixels change, so the work is done on its box, padded by the blur's
    reach (the result is the same as on the whole image; the cost follows the object, not the
    background: a small object on a 64-megapixel photo costs what it costs on a small one)."""
    result = image.copy()  # pixels outside the object stay bit-exact (no Lab round trip)
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return result
    pad = int(np.ceil(4 * max(feather, 0))) + 2  # OpenCV's Gaussian reaches ~4 sigma
    y1, y2 = max(0, ys.min() - pad), min(mask.shape[0], ys.max() + 1 + pad)
    x1, x2 = max(0, xs.min() - pad), min(mask.shape[1], xs.max() + 1 + pad)
    crop, m = image[y1:y2, x1:x2], mask[y1:y2, x1:x2]
    lab = to_lab(crop)
    m0, s0 = stats(lab, m)
    out = (lab - m0) / s0 * std + mean
    out[..., 0] = np.clip(out[..., 0], 0, 100)
    alpha = soft_rim(m.astype(np.float32), m, feather)[..., None]
    blended = from_lab(lab * (1 - alpha) + out * alpha)
    result[y1:y2, x1:x2][m] = blended[m]
    return result


STATS_MAX_PIXELS = 1_000_000  # colour statistics are read from at most this many pixels


def stats_view(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) scaled down to at most STATS_MAX_PIXELS for colour statistics (means and
    spreads do not need every pixel), unchanged when already that small. Keeps statistics'
    cost bounded however large the background (the learned model's features, the ring's)."""
    H, W = mask.shape
    if H * W <= STATS_MAX_PIXELS:
        return image, mask
    f = (STATS_MAX_PIXELS / (H * W)) ** 0.5
    size = (max(1, round(W * f)), max(1, round(H * f)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    if not m.any() or m.all():  # an object too thin to survive the scaling: read it at full size
        return image, mask
    return small, m


@runtime_checkable
class Harmonizer(Protocol):
    """What every harmonizer is: a callable that carries its registered name."""

    name: str

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


class NoHarmonizer:
    """The composite as is."""

    name: ClassVar[str] = "none"

    def __call__(self, image, mask):
        return check_composite(image, mask)[0].copy()


class GlobalHarmonizer:
    """The object's Lab mean/std set to the whole background's (the naive baseline)."""

    name: ClassVar[str] = "global"

    def __call__(self, image, mask):
        image, mask = check_composite(image, mask)
        mean, std = stats(to_lab(stats_view(image, mask)[0]), ~stats_view(image, mask)[1])
        return apply_stats(image, mask, mean, std)


@dataclass
class RingHarmonizer:
    """The object's Lab statistics moved ``strength`` of the way toward the ring around it."""

    name: ClassVar[str] = "ring"
    strength: float = 0.15  # best of 0.15/0.3/0.5 in bench/bench_harmonize.py

    def __call__(self, image, mask):
        image, mask = check_composite(image, mask)
        small, small_mask = stats_view(image, mask)
        lab = to_lab(small)
        fm, fs = stats(lab, small_mask)
        rm, rs = stats(lab, ring_mask(small_mask))
        a = self.strength
        return apply_stats(image, mask, (1 - a) * fm + a * rm, (1 - a) * fs + a * rs)


class LearnedHarmonizer:
    """Ridge regression from composite statistics to the object's true Lab mean/std."""

    name: ClassVar[str] = "learned"
    needs_checkpoint: ClassVar[bool] = not ASSET.exists()  # its weights ship in assets/

    def __init__(self, weights: str | Path = ASSET):
        path = Path(weights)
        if not path.exists():
            raise HarmonizeError(f"no learned harmonizer at {path}; train it with "
                                 "`python -m pipeline.harmonize train --coco ../shared/data/coco-mini`")
        with np.load(path) as z:
            self.W = z["W"]  # (N_FEATURES, 6)
        if self.W.shape != (N_FEATURES, 6):
            raise HarmonizeError(f"{path}: expected weights of shape ({N_FEATURES}, 6), got {self.W.shape}; "
                                 "retrain with `python -m pipeline.harmonize train`")

    def predict(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image, mask = stats_view(image, mask)
        y = features(to_lab(image), mask) @ self.W
        return y[:3], np.maximum(y[3:], 1e-2)

    def __call__(self, image, mask):
        image, mask = check_composite(image, mask)
        mean, std = self.predict(image, mask)
        return apply_stats(image, mask, mean, std)


class PoissonHarmonizer:
    """OpenCV seamless cloning of the object onto the composite itself (gradient domain)."""

    name: ClassVar[str] = "poisson"

    def __call__(self, image, mask):
        return _poisson(*check_composite(image, mask))


def _poisson(image, mask):
    ys, xs = np.nonzero(mask)
    centre = (int((xs.min() + xs.max() + 1) // 2), int((ys.min() + ys.max() + 1) // 2))
    m = cv2.dilate(mask.astype(np.uint8) * 255, np.ones((3, 3), np.uint8))
    m[[0, -1], :] = 0
    m[:, [0, -1]] = 0
    if not m.any():
        return image.copy()
    out = cv2.seamlessClone(image[..., ::-1].copy(), image[..., ::-1].copy(), m, centre, cv2.NORMAL_CLONE)
    return out[..., ::-1].copy()


HARMONIZERS: Registry[Harmonizer] = Registry("harmonization", HarmonizeError)
HARMONIZERS.register("learned", LearnedHarmonizer)
HARMONIZERS.register("ring", RingHarmonizer)
HARMONIZERS.register("poisson", PoissonHarmonizer)
HARMONIZERS.register("global", GlobalHarmonizer)
HARMONIZERS.register("none", NoHarmonizer)
HARMONIZERS.register("rainnet", "pipeline.rainnet:RainNetHarmonizer")  # needs checkpoint=; imported on use
HARMONIZERS.register("pct", "pipeline.harmonize_net:NetHarmonizer")  # a learned colour transform (issue 17)


def available_methods() -> list[str]:
    """Registered harmonizers that run without weights the user must supply (a class says so
    with ``needs_checkpoint = True``)."""
    return [n for n in HARMONIZERS if not HARMONIZERS.needs_checkpoint(n)]


def default_method() -> str:
    # Chosen by bench/bench_harmonize_net.py (bench/RESULTS.md): on photos it never saw, the
    # learned colour transform ("pct") is never worse than doing nothing on any perturbation
    # family and beats it on the real iHarmony4 triple; the ridge model ("learned") is better
    # on strong Lab shifts but 1.5-1.8x worse than nothing on white balance and saturation.
    from .harmonize_net import ASSET_DIR

    if (ASSET_DIR / "config.json").exists() or any(ASSET_DIR.glob("*.safetensors")):
        return "pct"
    return "learned" if ASSET.exists() else "ring"


def get_harmonizer(name: str | None = None, **options) -> Harmonizer:
    """Build a registered harmonizer (default: :func:`default_method`) from the options it
    takes (``checkpoint``/``device`` for rainnet, ``strength`` for ring, ``weights`` for learned)."""
    return HARMONIZERS.create(name or default_method(), **options)


# older names of the function-style methods
harmonize_none, harmonize_global, harmonize_poisson = NoHarmonizer(), GlobalHarmonizer(), PoissonHarmonizer()


# -- self-supervised data, training and metrics ---------------------------------------------
def perturb(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """iHarmony4-style synthetic composite: the object's colours shifted by a random Lab
    gain/offset (lighting and colour cast), the rest of the photo untouched."""
    lab = to_lab(image)
    gain = rng.uniform(0.75, 1.25, 3)
    offset = np.array([rng.uniform(-18, 18), rng.uniform(-14, 14), rng.uniform(-14, 14)])
    m0 = lab[mask].mean(0)
    shifted = (lab - m0) * gain + m0 + offset
    shifted[..., 0] = np.clip(shifted[..., 0], 0, 100)
    result = image.copy()  # the rest of the photo stays bit-exact
    result[mask] = from_lab(shifted)[mask]
    return result


def fmse(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Foreground MSE (RGB, 0-255) over the mask's pixels, as in iHarmony4."""
    d = pred[mask].astype(np.float64) - truth[mask].astype(np.float64)
    return float((d ** 2).mean())


def psnr_in_mask(pred, truth, mask) -> float:
    e = fmse(pred, truth, mask)
    return float("inf") if e == 0 else 10 * np.log10(255 ** 2 / e)


def coco_objects(coco_dir: str | Path, split: str, min_area: float = 0.02, max_side: int = 256):
    """(image, mask) pairs of COCO-mini instances. ``split``: 'train' (even image ids) or
    'test' (odd), so training and benchmark never share a photo. Images resized to
    ``max_side`` to keep it quick."""
    import contextlib
    import io

    from PIL import Image
    from pycocotools.coco import COCO

    coco_dir = Path(coco_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(coco_dir / "instances.json"))
    for img_id in sorted(coco.getImgIds()):
        if (img_id % 2 == 0) != (split == "train"):
            continue
        info = coco.loadImgs(img_id)[0]
        image = np.asarray(Image.open(coco_dir / "images" / info["file_name"]).convert("RGB"))
        scale = max_side / max(image.shape[:2])
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=False)):
            if ann["area"] < min_area * info["width"] * info["height"]:
                continue
            m = cv2.resize(coco.annToMask(ann), size, interpolation=cv2.INTER_NEAREST).astype(bool)
            if m.any() and not m.all():
                yield small, m


def train_ridge(coco_dir: str | Path, out: str | Path = ASSET, per_object: int = 8, lam: float = 1.0,
                seed: int = 0) -> Path:
    """Fit the learned harmonizer on perturbed COCO-mini objects (train split)."""
    rng = np.random.default_rng(seed)
    X, Y = [], []
    for image, mask in coco_objects(coco_dir, "train"):
        true_mean, true_std = stats(to_lab(image), mask)
        for _ in range(per_object):
            comp = perturb(image, mask, rng)
            X.append(features(to_lab(comp), mask))
            Y.append(np.concatenate([true_mean, true_std]))
    X, Y = np.array(X), np.array(Y)
    scale = np.abs(X).mean(0) + 1e-6  # ridge on comparable feature scales
    Xs = X / scale
    W = np.linalg.solve(Xs.T @ Xs + lam * len(X) * 1e-3 * np.eye(X.shape[1]), Xs.T @ Y) / scale[:, None]
    out = Path(out)
    np.savez(out, W=W.astype(np.float64), n_samples=len(X), seed=seed, per_object=per_object, lam=lam)
    return out


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipeline.harmonize")
    ap.add_argument("action", choices=["train"])
    ap.add_argument("--coco", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"))
    ap.add_argument("--out", default=str(ASSET))
    ap.add_argument("--per-object", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(f"wrote {train_ridge(args.coco, args.out, args.per_object, seed=args.seed)}")


if __name__ == "__main__":
    main()
