"""The learned refiner's resumable, reproducible trainer, the blend calibration, and the
command line ``python -m pipeline.refine_net train|calibrate`` (flags generated from
:class:`RefineTrainConfig`)."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import realdata
from ..errors import ConfigError
from ..flags import add_config_args, config_from_args, csv_ints
from ..masks import iou
from .data import random_coarse, training_sample
from .model import ASSET_DIR, CROP, MARGIN, LearnedRefiner, build_net


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass
class RefineTrainConfig:
    """The trainer's settings; each field is also a flag of ``python -m pipeline.refine_net``."""

    out: str = field(default=str(ASSET_DIR), metadata=_help("folder for model.safetensors and config.json"))
    folds: tuple = field(default=(1, 2), metadata=_help(
        "photo folds to train on, comma-separated (pipeline.realdata, k-fold by photo; fold 0 is held out)",
        type=csv_ints))
    k: int = field(default=3, metadata=_help("number of photo folds"))
    steps: int = field(default=900, metadata=_help("training steps"))
    batch: int = field(default=16, metadata=_help("objects per step"))
    lr: float = field(default=3e-3, metadata=_help("peak learning rate (warm-up, then cosine)"))
    weight_decay: float = field(default=1e-4, metadata=_help("AdamW weight decay"))
    seed: int = field(default=0, metadata=_help("seed: the batch of step s comes from default_rng([seed, s])"))
    checkpoint_every: int = field(default=100, metadata=_help("steps between resumable checkpoints"))
    threads: int = field(default=1, metadata=_help("torch CPU threads (1: reproducible)"))
    max_photos: int = field(default=0, metadata=_help("use at most this many photos (0: every photo of the folds)"))
    photos: list = field(default_factory=list, metadata={"cli": False})  # filled in: the keys actually used


def _lr(step: int, cfg: RefineTrainConfig) -> float:
    warm = min(100, cfg.steps // 10 + 1)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))


def train(cfg: RefineTrainConfig, log=print) -> Path:
    """Train (or resume) the refiner; writes ``<out>/model.safetensors`` and ``config.json``."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    out, work, keys = realdata.training_setup(cfg)
    photos = [p for p in realdata.load_photos(keys) if p.masks]
    objects = [(i, j) for i, p in enumerate(photos) for j in range(len(p.masks))]
    cfg.photos = [p.key for p in photos]
    log(f"{len(photos)} photos, {len(objects)} objects (folds {list(cfg.folds)} of {cfg.k})")
    torch.manual_seed(cfg.seed)
    net = build_net()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state_path = work / "state.pt"
    step = 0
    if state_path.exists():
        st = torch.load(state_path, weights_only=True)  # a crafted state file must not run code
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        log(f"resumed at step {step}")
    net.train()
    t0, c0, run_loss = time.time(), time.process_time(), []
    while step < cfg.steps:
        rng = np.random.default_rng([cfg.seed, step])
        picks = rng.integers(0, len(objects), cfg.batch)
        xs, ts, vs = zip(*(training_sample(photos[objects[p][0]], objects[p][1], rng) for p in picks))
        x, t, v = (torch.from_numpy(np.stack(a)) for a in (xs, ts, vs))
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        y = net(x)[:, 0]
        bce = (F.binary_cross_entropy_with_logits(y, t, reduction="none") * v).sum() / v.sum().clamp(min=1)
        p = torch.sigmoid(y) * v
        inter, union = (p * t).sum((1, 2)), (p + t - p * t).sum((1, 2))
        loss = bce + (1 - (inter + 1) / (union + 1)).mean()  # + soft IoU: the metric itself
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        run_loss.append(loss.item())
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            tmp = state_path.with_suffix(".tmp")
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
            tmp.replace(state_path)  # atomic: a kill mid-save keeps the previous state
            log(f"step {step}/{cfg.steps} loss {np.mean(run_loss):.4f} wall {time.time() - t0:.0f} s "
                f"cpu {time.process_time() - c0:.0f} s (this session)")
            run_loss = []
    net.eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({**asdict(cfg), "crop": CROP, "margin": MARGIN}, indent=1))
    return out


BLENDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def calibrate(weights: str | Path = ASSET_DIR, seed: int = 1, log=print) -> float:
    """Choose how much of the network to trust against the coarse map (``blend``) on the photos
    the weights were trained on (their config.json lists them), with fresh random degradations
    (``random_coarse``, never the benchmark's kinds): the blend of best mean IoU is written into
    config.json. Returns it."""
    weights = Path(weights)
    cfg_path = weights / "config.json"
    cfg = json.loads(cfg_path.read_text())
    refiner = LearnedRefiner(weights)
    rng = np.random.default_rng(seed)
    scores = {w: [] for w in BLENDS}
    for key in cfg["photos"]:
        p = realdata.load_photo(key)
        for gt in p.masks:
            heat = random_coarse(gt, rng)
            if float(heat.max() - heat.min()) < 1e-6:
                continue
            prob = refiner.probability(p.image, heat, blend=1.0)
            for w in BLENDS:
                scores[w].append(iou((w * prob + (1 - w) * heat) > 0.5, gt))
    means = {w: float(np.mean(v)) for w, v in scores.items()}
    best = max(means, key=means.get)
    cfg["blend"], cfg["blend_scores"] = best, {str(w): round(m, 4) for w, m in means.items()}
    cfg_path.write_text(json.dumps(cfg, indent=1))
    log(f"mean IoU by blend on {len(scores[1.0])} training objects: {cfg['blend_scores']}; chose {best}")
    return best


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipeline.refine_net",
                                 description="train the learned refiner on the annotated photos")
    ap.add_argument("action", choices=["train", "calibrate"],
                    help="train, then calibrate (choose the network/coarse-map blend on the training photos)")
    add_config_args(ap, RefineTrainConfig)
    a = ap.parse_args(argv)
    if a.action == "calibrate":
        print(f"blend {calibrate(a.out)} written to {Path(a.out) / 'config.json'}")
        return
    try:
        realdata.check_folds(a.folds, a.k)
    except ConfigError as e:
        ap.error(str(e))
    print(f"wrote {train(config_from_args(RefineTrainConfig, a))}")

if __name__ == "__main__":
    main()
