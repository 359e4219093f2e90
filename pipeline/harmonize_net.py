"""A learned parametric colour-transform harmonizer (the PCT-Net idea, for a CPU).

A small MLP reads Lab and RGB statistics of the composite (the object, thin bands just
inside and outside its outline, the ring around it, the whole background) and predicts one
colour transform for the object: per-channel gamma, then a 3x3 matrix and an offset in RGB,

    out = clip(M @ x ** gamma + b),   x the object's RGB in [0, 1]

applied to the object's pixels only (the rest of the photo stays bit-exact). How far to
move (the strength) is learned, not tuned: the last layer starts at zero, i.e. the identity.

Trained by ``python -m pipeline.harmonize_net train`` on self-supervised composites of the
annotated real photos of :mod:`pipeline.realdata`: an object's colours perturbed by one of
``FAMILIES`` (or two chained), the original photo being the truth; the loss is the object's
RGB MSE (fMSE). Leave-one-family-out cross-validation (bench/bench_harmonize_net.py) trains
without a family and measures on it.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "harmonize_net"
FAMILIES = ("lab", "tone", "wb", "saturation", "transfer", "combo")
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
    from .harmonize import to_lab

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

        from .harmonize import HarmonizeError

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
        from .harmonize import check_composite

        image, mask = check_composite(image, mask)
        p = self.params(image, mask)
        out = image.copy()
        out[mask] = (apply_params(image[mask].astype(np.float32) / 255.0, p) * 255).round().astype(np.uint8)
        return out


# -- perturbation families (self-supervised composites) -----------------------------------------
def _fg_lab_change(image, mask, fn):
    """Recolour the object's pixels with ``fn`` acting on their Lab values, (N, 1, 3)."""
    from .harmonize import from_lab, to_lab

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


# -- data, training --------------------------------------------------------------------------------
N_PIXELS = 384  # object pixels sampled per composite for the loss


def object_list(keys: list[str], max_side: int = 256, min_area: float = 0.01):
    """[(key, image, mask, Lab mean, Lab std)] for every object of the given photos."""
    from . import realdata
    from .harmonize import stats, to_lab

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


@dataclass
class HarmonizeTrainConfig:
    out: str = str(ASSET_DIR)
    folds: tuple = (1, 2)  # photo folds of pipeline.realdata to train on (fold 0 is held out)
    k: int = 3
    families: tuple = FAMILIES  # the shipped model sees every family; the CV leaves one out
    reps: int = 8  # composites per object
    epochs: int = 40
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    hidden: int = 128
    dropout: float = 0.2
    feature_noise: float = 0.7  # Gaussian noise on the normalised features while training
    relative: float = 20.0  # loss per composite: fMSE / (its unharmonized fMSE + relative)
    seed: int = 0
    threads: int = 1
    max_photos: int = 0
    photos: list = field(default_factory=list)


def fit(X, A, B, cfg: HarmonizeTrainConfig, log=print, state_path: Path | None = None):
    """Train the MLP on precomputed samples; returns (net, feature mean, feature std).
    Resumable per epoch through ``state_path``; the order of epoch ``e`` comes from
    ``default_rng([seed, e])``."""
    import torch

    torch.manual_seed(cfg.seed)
    mu, sigma = X.mean(0), X.std(0) + 1e-4
    Xn = torch.from_numpy((X - mu) / sigma)
    A, B = torch.from_numpy(A), torch.from_numpy(B)
    net = build_net(cfg.hidden, cfg.dropout)
    base = ((A - B) ** 2).mean((1, 2)) * 255 ** 2  # each composite's unharmonized fMSE
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epoch = 0
    if state_path is not None and state_path.exists():
        st = torch.load(state_path, weights_only=True)  # a crafted state file must not run code
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        epoch = st["epoch"]
        log(f"resumed at epoch {epoch}")
    net.train()  # dropout on
    n = len(Xn)
    steps_per_epoch = math.ceil(n / cfg.batch)
    total = cfg.epochs * steps_per_epoch
    while epoch < cfg.epochs:
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        losses = []
        for s in range(steps_per_epoch):
            step = epoch * steps_per_epoch + s
            for g in opt.param_groups:
                g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            idx = torch.from_numpy(order[s * cfg.batch : (s + 1) * cfg.batch])
            x = Xn[idx]
            if cfg.feature_noise:
                x = x + cfg.feature_noise * torch.randn_like(x)
            per = ((apply_params(A[idx], net(x)) - B[idx]) ** 2).mean((1, 2)) * 255 ** 2  # fMSE, 0-255 units
            # relative to doing nothing: a slightly recoloured object counts as much as a repainted one,
            # so the net learns to leave alone what it cannot tell apart (the strength is learned)
            loss = (per / (base[idx] + cfg.relative)).mean() if cfg.relative else per.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        epoch += 1
        if state_path is not None:
            tmp = state_path.with_suffix(".tmp")
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "epoch": epoch}, tmp)
            tmp.replace(state_path)  # atomic: a kill mid-save keeps the previous state
        if epoch % 10 == 0 or epoch == cfg.epochs:
            log(f"epoch {epoch}/{cfg.epochs} train loss {np.mean(losses):.3f}")
    net.eval()
    return net, mu.astype(np.float32), sigma.astype(np.float32)


def save(net, mu, sigma, out: Path, cfg: HarmonizeTrainConfig | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    sd["feature_mean"], sd["feature_std"] = torch.from_numpy(mu), torch.from_numpy(sigma)
    save_file(sd, str(out / "model.safetensors"))
    if cfg is not None:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    return out


def train(cfg: HarmonizeTrainConfig, log=print) -> Path:
    """Build the composites of the training photos (cached in ``<out>/_train``), fit, save."""
    from . import realdata

    out, work, keys = realdata.training_setup(cfg)
    cfg.photos = keys
    cache = work / "samples.npz"
    t0 = time.time()
    if cache.exists():
        z = np.load(cache)
        X, A, B = z["X"], z["A"], z["B"]
    else:
        objects = object_list(keys)
        X, A, B, _ = make_samples(objects, tuple(cfg.families), cfg.reps, cfg.seed)
        np.savez(cache, X=X, A=A, B=B)
    log(f"{len(X)} composites of {len(keys)} photos ({time.time() - t0:.0f} s); families {list(cfg.families)}")
    net, mu, sigma = fit(X, A, B, cfg, log, work / "state.pt")
    return save(net, mu, sigma, out, cfg)


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipeline.harmonize_net",
                                 description="train the learned colour-transform harmonizer on the annotated photos")
    ap.add_argument("action", choices=["train"])
    ap.add_argument("--out", default=str(ASSET_DIR))
    ap.add_argument("--folds", default="1,2")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--reps", type=int, default=HarmonizeTrainConfig.reps)
    ap.add_argument("--epochs", type=int, default=HarmonizeTrainConfig.epochs)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-photos", type=int, default=0)
    a = ap.parse_args(argv)
    fams = tuple(a.families.split(","))
    bad = [f for f in fams if f not in FAMILIES]
    if bad:
        ap.error(f"unknown families {bad}; choose from {FAMILIES}")
    cfg = HarmonizeTrainConfig(out=a.out, folds=tuple(int(f) for f in a.folds.split(",")), k=a.k, families=fams,
                               reps=a.reps, epochs=a.epochs, seed=a.seed, threads=a.threads, max_photos=a.max_photos)
    print(f"wrote {train(cfg)}")


if __name__ == "__main__":
    main()
