"""A light learned refiner: a small CNN that turns (RGB photo, coarse map) into an object mask.

CascadePSP/SegFix-style: the coarse map (a heat map in [0, 1]) chooses a square crop around
its object (the box of ``heat >= 0.5`` grown by ``MARGIN`` on every side), the crop is
resampled to ``CROP`` x ``CROP``, and a small U-Net (~0.1 M parameters) reads RGB + coarse
map + "inside the photo" and predicts the object's logit; the logit is mapped back to the
photo, its probability blended with the coarse map (``blend``, chosen after training by
``python -m pipeline.refine_net calibrate`` on the training photos and stored in the weights'
config.json) and thresholded at 0.5. Pixels outside the crop keep only the coarse map's share.

It is trained by ``python -m pipeline.refine_net train`` on self-supervised degradations of
the annotated real photos of :mod:`pipeline.realdata` (random morphology, elastic warps, blur,
low-resolution resampling, shape priors, shifts, spurious blobs and holes, then random
contrast of the map; photos flipped, rescaled and colour-jittered). Training is resumable
(``<out>/_train/state.pt``, kill it and run the same command again) and reproducible (the
batch of step ``s`` is drawn from ``numpy.random.default_rng([seed, s])``; torch on one thread).

``LearnedRefiner`` follows the refiner call shape of :mod:`pipeline.refine`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "refine_net"
CROP = 96
MARGIN = 0.25
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet statistics: the usual photo normalisation
STD = np.array([0.229, 0.224, 0.225], np.float32)


# -- crops ------------------------------------------------------------------------------------
def crop_box(heat: np.ndarray, margin: float = MARGIN) -> tuple[float, float, float]:
    """(centre x, centre y, side) in pixels of the square crop a (H, W) [0, 1] map selects:
    the box of ``heat >= 0.5`` (or of ``heat >= max/2`` when nothing reaches 0.5), grown by
    ``margin`` of its longer side on each side (at least 4 px)."""
    fg = heat >= 0.5
    if not fg.any():
        fg = heat >= 0.5 * float(heat.max())
    ys, xs = np.nonzero(fg)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin) + 8
    return (x0 + x1) / 2, (y0 + y1) / 2, float(side)


def crop_matrix(cx: float, cy: float, side: float, size: int = CROP) -> np.ndarray:
    """2x3 affine map from photo pixels to crop pixels (for cv2.warpAffine)."""
    s = size / side
    return np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]], np.float32)


def net_input(image: np.ndarray, heat: np.ndarray, M: np.ndarray, size: int = CROP) -> np.ndarray:
    """(5, size, size) float32: normalised RGB, coarse map, inside-the-photo flag, cropped by M."""
    interp = cv2.INTER_AREA if M[0, 0] < 1 else cv2.INTER_LINEAR
    rgb = cv2.warpAffine(image, M, (size, size), flags=interp, borderMode=cv2.BORDER_REFLECT)
    h = cv2.warpAffine(heat.astype(np.float32), M, (size, size), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = cv2.warpAffine(np.ones(heat.shape, np.float32), M, (size, size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    rgb = (rgb.astype(np.float32) / 255.0 - MEAN) / STD
    return np.concatenate([rgb.transpose(2, 0, 1), h[None], inside[None]]).astype(np.float32)


# -- the network ------------------------------------------------------------------------------
def build_net():
    import torch
    from torch import nn

    def block(cin, cout, stride=1, dilation=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class RefineNet(nn.Module):
        """Small U-Net working at half the crop's resolution (48 -> 24 -> 12 and back), with a
        full-resolution head that sees the RGB crop and the coarse map again, so edges are
        placed at full crop resolution; input (B, 5, S, S), output logits (B, 1, S, S)."""

        def __init__(self):
            super().__init__()
            self.stem = block(5, 24, 2)
            self.d1 = nn.Sequential(block(24, 32, 2), block(32, 32))
            self.d2 = nn.Sequential(block(32, 48, 2), block(48, 48, dilation=2), block(48, 48, dilation=4))
            self.u1 = block(48 + 32, 32)
            self.u0 = block(32 + 24, 16)
            self.full = block(16 + 5, 8)
            self.head = nn.Conv2d(8 + 1, 1, 3, padding=1)

        def forward(self, x):
            up = lambda t, ref: nn.functional.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)
            s0 = self.stem(x)
            s1 = self.d1(s0)
            y = self.d2(s1)
            y = self.u1(torch.cat([up(y, s1), s1], 1))
            y = self.u0(torch.cat([up(y, s0), s0], 1))
            y = self.full(torch.cat([up(y, x), x], 1))
            # the coarse map itself reaches the last layer: keeping a good mask is an easy path
            return self.head(torch.cat([y, x[:, 3:4] * 2 - 1], 1))

    return RefineNet()


# -- the refiner ------------------------------------------------------------------------------
class LearnedRefiner:
    """``refiner(image HWC uint8, heat (H, W) float [0, 1]) -> RefineResult`` with the small CNN.

    ``weights``: a folder with ``model.safetensors`` (default ``assets/refine_net``)."""

    name = "learned"
    takes_points = False
    needs_self_attention = False
    stateful = False

    def __init__(self, weights: str | Path = ASSET_DIR):
        import torch
        from safetensors.torch import load_file

        from .refine import RefinerUnavailable

        path = Path(weights) / "model.safetensors" if Path(weights).is_dir() else Path(weights)
        if not path.exists():
            raise RefinerUnavailable(f"no learned refiner weights at {path}; train them with "
                                     "`python -m pipeline.refine_net train --out assets/refine_net`")
        self.net = build_net()
        try:
            self.net.load_state_dict(load_file(str(path)))
        except RuntimeError as e:
            raise RefinerUnavailable(f"{path} does not hold this refiner's weights ({e}); retrain it") from e
        self.net.eval()
        self._torch = torch
        cfg = path.parent / "config.json"
        # the share of the network in the final map (see ``calibrate``); 1: the network alone
        self.blend = float(json.loads(cfg.read_text()).get("blend", 1.0)) if cfg.exists() else 1.0

    def logits(self, image: np.ndarray, heat: np.ndarray) -> np.ndarray:
        """(H, W) float32 object logits over the whole photo (very negative outside the crop)."""
        torch = self._torch
        M = crop_matrix(*crop_box(heat))
        x = torch.from_numpy(net_input(image, heat, M))[None]
        with torch.inference_mode():
            y = self.net(x)[0, 0].numpy()
        h, w = heat.shape
        return cv2.warpAffine(y, M, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=-20.0)

    def probability(self, image: np.ndarray, heat: np.ndarray, blend: float | None = None) -> np.ndarray:
        """(H, W) float32 in [0, 1]: ``blend`` x the network's probability + (1 - ``blend``) x the
        coarse map (``blend`` None: the calibrated value of the weights' config.json)."""
        w = self.blend if blend is None else blend
        p = 1.0 / (1.0 + np.exp(-np.clip(self.logits(image, heat), -30, 30)))
        return w * p + (1 - w) * heat if w < 1 else p

    def __call__(self, image, heat, attention=None, points=None, labels=None):
        from .refine import RefinementError, RefineResult, check_inputs

        heat = check_inputs(image, heat)
        if points is not None and len(points):
            raise RefinementError("the learned refiner does not take clicks; use grabcut or sam")
        mask = self.probability(image, heat) > 0.5
        info = {} if mask.any() else {"warning": "the learned refiner found no object in the crop"}
        return RefineResult(mask, self.name, info)


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


# -- training ---------------------------------------------------------------------------------
@dataclass
class RefineTrainConfig:
    out: str = str(ASSET_DIR)
    folds: tuple = (1, 2)  # photo folds of pipeline.realdata to train on (fold 0 is held out)
    k: int = 3
    steps: int = 900
    batch: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 100
    threads: int = 1
    max_photos: int = 0  # 0: every photo of the folds (tests use a few)
    photos: list = field(default_factory=list)  # filled in: the keys actually used


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

    from . import realdata

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
    from . import realdata
    from .masks import iou

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
    ap.add_argument("--out", default=str(ASSET_DIR))
    ap.add_argument("--folds", default="1,2", help="photo folds to train on (pipeline.realdata, k-fold by photo)")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--steps", type=int, default=RefineTrainConfig.steps)
    ap.add_argument("--batch", type=int, default=RefineTrainConfig.batch)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-photos", type=int, default=0)
    a = ap.parse_args(argv)
    if a.action == "calibrate":
        print(f"blend {calibrate(a.out)} written to {Path(a.out) / 'config.json'}")
        return
    folds = tuple(int(f) for f in a.folds.split(","))
    if any(not 0 <= f < a.k for f in folds):
        ap.error(f"--folds must be in [0, {a.k})")
    cfg = RefineTrainConfig(out=a.out, folds=folds, k=a.k, steps=a.steps, batch=a.batch, seed=a.seed,
                            threads=a.threads, max_photos=a.max_photos)
    print(f"wrote {train(cfg)}")


if __name__ == "__main__":
    main()
