"""The learned harmonizer's data: the perturbation families that make self-supervised
composites of real photos (the original photo is the truth), and the training samples
(features, perturbed and true object pixels) drawn from them."""
from __future__ import annotations

import math

import numpy as np

from .. import realdata
from ..colour import from_lab, stats, to_lab
from .model import canonical, features, regions

FAMILIES = ("lab", "tone", "wb", "saturation", "transfer", "combo")


# -- perturbation families (self-supervised composites) -----------------------------------------
def _fg_lab_change(image, mask, fn):
    """Recolour the object's pixels with ``fn`` acting on their Lab values, (N, 1, 3)."""
    lab = to_lab(image[mask][:, None])
    new = fn(lab)
    new[..., 0] = np.clip(new[..., 0], 0, 100)
    out = image.copy()
    out[mask] = from_lab(new)[:, 0]
    return out


def _fg_rgb_change(image, mask, fn):
    out = image.copy()
    x = image[mask].astype(np.float32) / 255.0
    out[mask] = (np.clip(fn(x), 0, 1) * 255).round().astype(np.uint8)
    return out


def _srgb_to_linear(x):
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x):
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


def perturb(image: np.ndarray, mask: np.ndarray, family: str, rng: np.random.Generator,
            donor: tuple | None = None) -> np.ndarray:
    """A synthetic composite: HWC uint8 with only the object's pixels (``mask``) recoloured by
    ``family``:

    - ``lab``: Lab gain 0.7-1.3 about the object's mean and offsets up to +-25 (L, a, b);
    - ``tone``: RGB tone curves: a global gamma exp(+-0.6) with per-channel jitter and an S-curve;
    - ``wb``: white balance / colour temperature: linear-RGB gains (warm-cool, tint) and exposure;
    - ``saturation``: chroma scaled by 0.25-0.75 or 1.35-2.0 and a small lightness change;
    - ``transfer``: the object's Lab mean/std set to those of ``donor`` (another photo's
      object: (mean (3,), std (3,)) in Lab), as iHarmony4's HCOCO composites were made;
    - ``combo``: two different ones of the above chained.
    """
    if family == "lab":
        gain = rng.uniform(0.7, 1.3, 3)
        off = rng.uniform(-25, 25, 3)

        def fn(lab):
            m0 = lab.mean((0, 1))
            return (lab - m0) * gain + m0 + off
        return _fg_lab_change(image, mask, fn)
    if family == "tone":
        g = math.exp(rng.uniform(-0.6, 0.6)) * np.exp(rng.normal(0, 0.12, 3))
        s = rng.uniform(-0.25, 0.25)
        return _fg_rgb_change(image, mask, lambda x: (lambda y: y + s * np.sin(2 * np.pi * y) / (2 * np.pi))(x ** g))
    if family == "wb":
        t, tint, ev = rng.uniform(-0.45, 0.45), rng.uniform(-0.15, 0.15), rng.uniform(-0.35, 0.35)
        gains = np.exp(np.array([t, tint, -t]) + ev)
        return _fg_rgb_change(image, mask, lambda x: _linear_to_srgb(_srgb_to_linear(x) * gains))
    if family == "saturation":
        s = rng.uniform(0.25, 0.75) if rng.random() < 0.5 else rng.uniform(1.35, 2.0)
        dl = rng.uniform(-6, 6)

        def fn(lab):
            out = lab.copy()
            out[..., 1:] *= s
            out[..., 0] += dl
            return out
        return _fg_lab_change(image, mask, fn)
    if family == "transfer":
        if donor is None:
            raise ValueError("the transfer family needs donor=(mean, std), Lab statistics of another object")
        dm, ds = donor

        def fn(lab):
            m0, s0 = lab.mean((0, 1)), lab.std((0, 1)) + 1e-3
            return (lab - m0) / s0 * ds + dm
        return _fg_lab_change(image, mask, fn)
    if family == "combo":
        a, b = rng.choice([f for f in FAMILIES if f != "combo"], 2, replace=False)
        return perturb(perturb(image, mask, a, rng, donor), mask, b, rng, donor)
    raise ValueError(f"unknown perturbation family {family!r}; one of {FAMILIES}")


def combo_of(families: tuple) -> list[str]:
    return [f for f in families if f != "combo"]


def perturb_from(image, mask, families: tuple, rng, donor=None, p_combo: float = 0.3) -> np.ndarray:
    """One random member of ``families`` (combo: two chained *from those families only*)."""
    singles = combo_of(families)
    if "combo" in families and len(singles) >= 2 and rng.random() < p_combo:
        a, b = rng.choice(singles, 2, replace=False)
        return perturb(perturb(image, mask, a, rng, donor), mask, b, rng, donor)
    return perturb(image, mask, str(rng.choice(singles)), rng, donor)


# -- training samples --------------------------------------------------------------------------------
N_PIXELS = 384  # object pixels sampled per composite for the loss


def object_list(keys: list[str], max_side: int = 256, min_area: float = 0.01):
    """[(key, image, mask, Lab mean, Lab std)] for every object of the given photos."""
    out = []
    for p in realdata.load_photos(keys, max_side=max_side, min_area=min_area):
        lab = to_lab(p.image)
        for m in p.masks:
            out.append((p.key, p.image, m, *stats(lab, m)))
    return out


def make_samples(objects, families: tuple, reps: int, seed: int, single: str | None = None, p_combo: float = 0.3):
    """Features (N, F), perturbed pixels (N, P, 3), true pixels (N, P, 3) in [0, 1], families (N,).
    ``single``: draw only that family (for evaluation sets); donors come from other photos."""
    rng = np.random.default_rng(seed)
    X, A, B, fam = [], [], [], []
    for i, (key, image, mask, _, _) in enumerate(objects):
        regs = regions(canonical(image, mask)[1])
        for _ in range(reps):
            j = int(rng.integers(len(objects)))
            while objects[j][0] == key and len(objects) > 1:
                j = int(rng.integers(len(objects)))
            donor = objects[j][3:5]
            if single:
                comp, f = perturb(image, mask, single, rng, donor), single
            else:
                comp, f = perturb_from(image, mask, families, rng, donor, p_combo), "mix"
            X.append(features(comp, mask, regs))
            idx = rng.integers(0, int(mask.sum()), N_PIXELS)
            A.append(comp[mask][idx].astype(np.float32) / 255.0)
            B.append(image[mask][idx].astype(np.float32) / 255.0)
            fam.append(f)
    return np.stack(X), np.stack(A), np.stack(B), fam


