"""The learned harmonizer's model: composite features, the colour transform, the MLP and
:class:`NetHarmonizer` (the ``pct`` harmonizer of :mod:`pipeline.harmonize`). See
:mod:`pipeline.harmonize_net` for the method; :mod:`.data` makes its training composites and
:mod:`.training` fits it."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..colour import HarmonizeError, check_composite, to_lab

ASSET_DIR = Path(__file__).resolve().parents[2] / "assets" / "harmonize_net"
N_FEATURES = 5 * 6 * 5 + 1
N_PARAMS = 15  # 3 log-gammas, 3x3 matrix (minus identity), 3 offsets


# -- features and the transform -----------------------------------------------------------------
def regions(mask: np.ndarray) -> list[np.ndarray]:
    """Object, inner band (3 px), outer band (3 px), ring (1/4 of the box size), background:
    (H, W) bool each. Distance transforms rather than big dilations keep it fast at 512 px."""
    m8 = mask.astype(np.uint8)
    d_out = cv2.distanceTransform(1 - m8, cv2.DIST_L2, 5)  # distance of background pixels to the object
    d_in = cv2.distanceTransform(m8, cv2.DIST_L2, 5)
    ys, xs = np.nonzero(mask)
    width = max(3, int(0.25 * max(np.ptp(ys) + 1, np.ptp(xs) + 1)))
    inner, outer, ring = mask & (d_in <= 3), ~mask & (d_out <= 3), ~mask & (d_out <= width)
    return [mask, inner if inner.any() else mask, outer if outer.any() else ~mask, ring if ring.any() else ~mask,
            ~mask]


FEATURE_SIDE = 160


def canonical(image: np.ndarray, mask: np.ndarray, side: int = FEATURE_SIDE):
    """The composite and mask resized so the longer side is ``side`` px (area / nearest), so
    features mean the same at any input size and cost the same; the mask stays non-empty."""
    h, w = mask.shape
    f = side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    if size == (w, h):
        return image, mask
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    if not m.any() or m.all():  # a sliver lost (or everything kept) by resizing: fall back to area weights
        m = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
        if m.all():
            return image, mask
    return small, m


def features(image: np.ndarray, mask: np.ndarray, regs: list | None = None) -> np.ndarray:
    """(N_FEATURES,) float32 of a composite (HWC uint8) and object mask (HW bool), both first
    brought to ``FEATURE_SIDE`` px (``regs``: precomputed ``regions`` of that canonical mask):
    for the object, inner band, outer band, ring and background, the mean, std and
    10/50/90 % quantiles of L/100, a/128, b/128, R, G, B (all ~[0, 1]), then the object's
    share of the photo."""
    image, mask = canonical(image, mask)

    lab = to_lab(image) / np.array([100.0, 128.0, 128.0], np.float32)
    six = np.concatenate([lab, image.astype(np.float32) / 255.0], 2)
    f = []
    for r in regs if regs is not None else regions(mask):
        px = six[r]
        if len(px) > 4096:  # quantiles of a strided subsample: same statistics, a fraction of the time
            px = px[:: len(px) // 4096]
        q = np.quantile(px, [0.1, 0.5, 0.9], axis=0)
        f += [px.mean(0), px.std(0), *q]
    f.append(np.array([mask.mean()], np.float32))
    return np.concatenate(f).astype(np.float32)


def apply_params(rgb01, params):
    """Apply transform params (..., 15) to pixels rgb01 (..., P, 3) in [0, 1]; torch or numpy."""
    lib = np if isinstance(rgb01, np.ndarray) else __import__("torch")
    gamma = lib.exp(params[..., None, 0:3])
    M = params[..., 3:12].reshape(*params.shape[:-1], 3, 3) + lib.eye(3, dtype=rgb01.dtype)
    b = params[..., None, 12:15]
    x = lib.clip(rgb01, 1e-4, 1.0) ** gamma
    y = x @ lib.swapaxes(M, -1, -2) + b if lib is np else x @ M.transpose(-1, -2) + b
    return lib.clip(y, 0.0, 1.0)


def build_net(hidden: int = 128, dropout: float = 0.2):
    import torch
    from torch import nn

    # dropout: with ~120 training photos, the background statistics identify each photo and a free
    # MLP memorises the answer per photo (train fMSE 83, held-out photos worse than doing nothing)
    net = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden),
                        nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, N_PARAMS))
    with torch.no_grad():  # start at the identity transform: doing nothing is the first guess
        net[-1].weight.zero_()
        net[-1].bias.zero_()
    return net


class NetHarmonizer:
    """``f(composite HWC uint8 RGB, mask (H, W) bool) -> HWC uint8``; ``weights``: a folder with
    ``model.safetensors`` (the MLP plus the feature normalisation), default ``assets/harmonize_net``."""

    name = "pct"

    def __init__(self, weights: str | Path = ASSET_DIR):
        import torch
        from safetensors.torch import load_file

        path = Path(weights) / "model.safetensors" if Path(weights).is_dir() else Path(weights)
        if not path.exists():
            raise HarmonizeError(f"no learned colour-transform harmonizer at {path}; train it with "
                                 "`python -m pipeline.harmonize_net train`")
        sd = load_file(str(path))
        self.mu, self.sigma = sd.pop("feature_mean").numpy(), sd.pop("feature_std").numpy()
        self.net = build_net(sd["0.weight"].shape[0])  # dropout is off in eval mode
        self.net.load_state_dict(sd)
        self.net.eval()
        self._torch = torch

    @classmethod
    def from_parts(cls, net, feature_mean: np.ndarray, feature_std: np.ndarray) -> "NetHarmonizer":
        """A harmonizer around a network fresh from :func:`fit` (cross-validation measures
        each fold's model without writing weights to disk)."""
        import torch

        model = cls.__new__(cls)
        model.net, model.mu, model.sigma, model._torch = net.eval(), feature_mean, feature_std, torch
        return model

    def params(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(15,) float32 transform parameters for this composite."""
        x = (features(image, mask) - self.mu) / self.sigma
        with self._torch.inference_mode():
            return self.net(self._torch.from_numpy(x[None]))[0].numpy()

    def __call__(self, image, mask):
        image, mask = check_composite(image, mask)
        p = self.params(image, mask)
        out = image.copy()
        out[mask] = (apply_params(image[mask].astype(np.float32) / 255.0, p) * 255).round().astype(np.uint8)
        return out

