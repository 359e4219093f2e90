"""The learned harmonizer's resumable trainer (:func:`fit` on precomputed samples, :func:`train`
from the photos of some folds, :func:`save`) and the command line
``python -m pipeline.harmonize_net train`` (flags generated from :class:`HarmonizeTrainConfig`)."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import realdata
from ..errors import ConfigError
from ..flags import add_config_args, config_from_args, csv_ints, csv_strs
from .data import FAMILIES, make_samples, object_list
from .model import ASSET_DIR, apply_params, build_net


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


def _families(text: str) -> tuple[str, ...]:
    """``--families`` parsed: known family names, comma-separated."""
    import argparse

    fams = csv_strs(text)
    bad = [f for f in fams if f not in FAMILIES]
    if bad or not fams:
        raise argparse.ArgumentTypeError(f"unknown families {bad}; choose from {FAMILIES}")
    return fams


@dataclass
class HarmonizeTrainConfig:
    """The trainer's settings; each field is also a flag of ``python -m pipeline.harmonize_net``."""

    out: str = field(default=str(ASSET_DIR), metadata=_help("folder for model.safetensors and config.json"))
    folds: tuple = field(default=(1, 2), metadata=_help(
        "photo folds to train on, comma-separated (pipeline.realdata, k-fold by photo; fold 0 is held out)",
        type=csv_ints))
    k: int = field(default=3, metadata=_help("number of photo folds"))
    # the shipped model sees every family; the cross-validation leaves one out
    families: tuple = field(default=FAMILIES, metadata=_help(
        f"perturbation families to train on, comma-separated ({','.join(FAMILIES)})", type=_families))
    reps: int = field(default=8, metadata=_help("composites per object"))
    epochs: int = field(default=40, metadata=_help("training epochs"))
    batch: int = field(default=128, metadata=_help("composites per step"))
    lr: float = field(default=2e-3, metadata=_help("peak learning rate (cosine schedule)"))
    weight_decay: float = field(default=0.05, metadata=_help("AdamW weight decay"))
    hidden: int = field(default=128, metadata=_help("hidden units of the MLP"))
    dropout: float = field(default=0.2, metadata=_help("dropout of the MLP while training"))
    feature_noise: float = field(default=0.7, metadata=_help(
        "Gaussian noise on the normalised features while training"))
    relative: float = field(default=20.0, metadata=_help(
        "loss per composite: fMSE / (its unharmonized fMSE + relative); 0: plain fMSE"))
    seed: int = field(default=0, metadata=_help("seed of the composites and of the epochs' order"))
    threads: int = field(default=1, metadata=_help("torch CPU threads (1: reproducible)"))
    max_photos: int = field(default=0, metadata=_help("use at most this many photos (0: every photo of the folds)"))
    photos: list = field(default_factory=list, metadata={"cli": False})  # filled in: the keys actually used


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
    add_config_args(ap, HarmonizeTrainConfig)
    a = ap.parse_args(argv)
    try:
        realdata.check_folds(a.folds, a.k)
    except ConfigError as e:
        ap.error(str(e))
    print(f"wrote {train(config_from_args(HarmonizeTrainConfig, a))}")

if __name__ == "__main__":
    main()
