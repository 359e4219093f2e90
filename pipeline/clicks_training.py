"""Where the clicks refiner's unary comes from: simulated click sessions on annotated photos
(folds 1-2 of :mod:`pipeline.realdata`, never the benchmark's fold 0) and a small perceptron
fitted on them. The shipped one is ``assets/clicks_unary.npz``:

    python -m pipeline.clicks_training --out assets/clicks_unary.npz   # about a minute and a half
"""
from __future__ import annotations

import argparse

import numpy as np

from .clicks import (START_BAND, START_BINS, START_COLOUR, UNARY_FEATURES, ClickRefiner, click_features, click_region,
                     disc_and_core, next_click, save_unary, sloppy_click)


#: the photo sizes (longer side, px) the shipped unary's sessions are made at: fitted at 320 px
#: alone it lost half a click of NoC@90 at 640 px and a fifth at 512 (the studio's size); with
#: both it holds at 320 (cross-validated between the halves of folds 1-2, bench_masks' NOTE)
TRAINING_SIDES = (320, 640)


def unary_training_rows(keys: list[str], per_click: int = 400, max_clicks: int = 8, seed: int = 0,
                        selector: str | None = "ridge", sloppy: float = 0.0, maps: int = 1,
                        sides: tuple[int, ...] = (320,)) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, len(UNARY_FEATURES)), labels (n,) bool) from simulated sessions on the
    photos ``keys`` at each size of ``sides`` (longer side in px; the largest object of each,
    ``maps`` independent 16x16 attention-like soft maps of it per size): at each of up to
    ``max_clicks`` simulated clicks, up to ``per_click`` of the disc's wrong-side pixels,
    labelled by whether the truth has them on the click's side. Each click is the standard
    simulator's (:func:`next_click`), or with probability ``sloppy`` a sloppier user's
    (:func:`sloppy_click`: anywhere at least half as deep), so that the unary does not rely on
    the click lying exactly at the deepest point. Sessions start from the refiner's default
    start (:meth:`ClickRefiner.start_mask`, snapped to the photo) and advance as if each click
    turned exactly those pixels (so the states are those of a good refiner, not of the
    weights being fitted)."""
    from . import realdata
    from .masks import iou
    from .thresholds import attention_like

    rng = np.random.default_rng(seed)
    # only its start mask is used (the unary being fitted must not shape its own data)
    starter = ClickRefiner(selector=selector, unary=(np.zeros((1, len(UNARY_FEATURES))), np.zeros(1), np.zeros(1), 0.0))
    xs, ys = [], []
    for i, (key, side) in enumerate((k, s) for k in keys * maps for s in sides):
        p = realdata.load_photo(key, min_area=0.02, max_side=side)
        if not p.masks:
            continue
        gt = p.masks[int(np.argmax([m.sum() for m in p.masks]))]
        heat = attention_like(gt, 16, np.random.default_rng(i), 0.02, 0.05)
        pred, t = starter.start_mask(p.image, heat)
        for _ in range(max_clicks):
            c = sloppy_click(pred, gt, rng) if sloppy and rng.random() < sloppy else next_click(pred, gt)
            if c is None or iou(pred, gt) >= 0.95:
                break
            side = bool(c[2])
            depth, radius, (x0, x1, y0, y1), dist = click_region(pred, c)
            disc, wrong, core = disc_and_core(pred, c, depth, radius, (x0, x1, y0, y1))
            undecided = disc & wrong
            feats = click_features(p.image, pred, heat, t, c, depth, radius, (x0, x1, y0, y1), dist, undecided, core)
            truth = gt[y0:y1, x0:x1] == side
            idx = np.flatnonzero(undecided)
            if len(idx) > per_click:
                idx = rng.choice(idx, per_click, replace=False)
            xs.append(feats.reshape(len(feats), -1)[:, idx].T)
            ys.append(truth.ravel()[idx])
            pred = pred.copy()
            pred[y0:y1, x0:x1][undecided & truth] = side
    return np.concatenate(xs), np.concatenate(ys)


def fit_unary(folds=(1, 2), hidden: int = 32, epochs: int = 30, seed: int = 0, sloppy: float = 0.3,
              maps: int = 2, sides: tuple[int, ...] = TRAINING_SIDES) -> tuple[np.ndarray, ...]:
    """The unary's perceptron (as :func:`pipeline.clicks.load_unary` returns it) fitted on the photos of ``folds`` (the
    shipped one: folds 1-2) with :func:`unary_training_rows` (``sloppy``: share of sloppy
    clicks, ``maps``: soft maps per photo, ``sides``: the photo sizes each session is made at):
    cross-entropy, Adam (lr 3e-3, weight decay 1e-5),
    batches of 2048, ``epochs`` passes, seeded (the global torch RNG is left as it was)."""
    import torch

    from . import realdata

    x, y = unary_training_rows(realdata.split(list(folds)), sloppy=sloppy, maps=maps, sides=tuple(sides))
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: threads only contend (and one thread is reproducible)
    try:
        return _fit_perceptron(torch, xt, yt, hidden, epochs, seed)
    finally:
        torch.set_num_threads(threads)


def _fit_perceptron(torch, xt, yt, hidden: int, epochs: int, seed: int) -> tuple[np.ndarray, ...]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(xt.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        opt = torch.optim.Adam(net.parameters(), 3e-3, weight_decay=1e-5)
        for _ in range(epochs):
            order = torch.randperm(len(xt))
            for i in range(0, len(xt), 2048):
                batch = order[i : i + 2048]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt[batch])[:, 0], yt[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
    w1, b1, w2, b2 = (t.detach().numpy().astype(np.float64) for t in net.parameters())
    return w1, b1, w2[0], float(b2[0])



def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.clicks_training", description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", type=int, nargs="+", default=[1, 2], help="pipeline.realdata folds to fit on")
    ap.add_argument("--out", default="assets/clicks_unary.npz")
    ap.add_argument("--sloppy", type=float, default=0.3, help="share of the sloppier user's clicks")
    ap.add_argument("--maps", type=int, default=2, help="soft maps per photo")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sides", type=int, nargs="+", default=list(TRAINING_SIDES),
                    help="longer sides (px) the photos' sessions are made at")
    a = ap.parse_args(argv)
    from . import realdata
    from .errors import PipelineError

    try:
        folds = realdata.check_folds(a.folds)  # a fold that does not exist: one clear line
        unary = fit_unary(folds, a.hidden, a.epochs, a.seed, a.sloppy, a.maps, tuple(a.sides))
    except PipelineError as e:
        ap.exit(2, f"error: {e}\n")
    save_unary(a.out, unary, folds=folds, sloppy=a.sloppy, maps=a.maps, hidden=a.hidden, epochs=a.epochs,
               seed=a.seed, sides=a.sides, start_band=START_BAND, start_colour=START_COLOUR,
               start_bins=START_BINS)
    print(f"wrote {a.out} (fitted on folds {list(folds)})")


if __name__ == "__main__":
    main()
