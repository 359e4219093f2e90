"""Clicks that count: a click refiner that honours every click exactly, and the standard click
simulator of interactive-segmentation papers (NoC@85/90).

The ``clicks`` refiner starts from the heat map cut at the default threshold selector's t
(:mod:`pipeline.thresholds`) and applies the clicks in order. A click (x, y) with label l
(1 object, 0 background) on a pixel the mask has on the wrong side may only turn pixels of
that wrong side into l, and only inside a disc around the click whose radius grows with how
deep the click lies in the wrong region (``reach`` x that depth, at least ``min_radius`` and
at most ``max_radius`` of the image's shorter side). Which of them turn is decided by a
random walk on the image's colours (scikit-image's ``random_walker``) over the wrong side
of the disc. Its features are the pixels' colours and, weighted by ``colour``, how much more
a pixel's Lab colour is found on the click's side of the mask around the disc than on the
other side (so the walk also stops where that colour likelihood changes). Two kinds of seeds:
the click (a small core around it) is l; the wrong-side pixels on the disc's rim, those where the heat map is sure of the other side, and
every click of the other label, are not l. Only the part connected to the click turns. So:

- the clicked pixel is always on the clicked side (it is forced, and no later click can undo
  it: a later click only turns pixels to *its* label, and clicks of the other label are
  fixed seeds of its random walk);
- a click changes nothing outside its disc (``RefineResult.info["radii"]`` gives each one).

A click on a pixel already on its side changes nothing (it still pins that pixel for later
clicks). Replaying the clicks is memoised per (image, heat map, click prefix), so the k-th
click of a session costs one random walk, not k.
"""
from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import cv2
import numpy as np

from .attention import AttentionMaps
from .refine import BaseRefiner, RefinementError, RefineResult, check_inputs


def _random_walker():
    try:
        from skimage.segmentation import random_walker
    except ImportError as e:  # pragma: no cover - in requirements.txt
        from .refine import RefinerUnavailable

        raise RefinerUnavailable("the clicks refiner needs scikit-image (pip install scikit-image)") from e
    return random_walker


class ClickRefiner(BaseRefiner):
    """Every click honoured exactly, each changing only a disc around it (see the module doc).

    ``selector``: the threshold selector that makes the starting mask (None: t = 0.5);
    ``reach``: disc radius over the click's depth in the wrong region; ``min_radius`` /
    ``max_radius``: bounds of the radius as fractions of the shorter image side; ``beta``:
    the random walk's edge sensitivity; ``method``: "walker" (random walk) or "grabcut" (GrabCut
    in the disc with the same hard constraints; measured worse); ``side_seeds``: let the pixels
    already on the click's side take part in the walk as its seeds (measured worse: their large
    area pulls the disc over); ``sure``: wrong-side pixels where the heat map is sure of the
    other side (below ``sure`` x t for an object click, above t + (1 - ``sure``)(1 - t) for a
    background click) are kept as they are (None: only the rim is kept); ``colour``: weight of
    the colour-likelihood channel in the walk's features (0: colours only; ``colour_bins``: Lab
    histogram bins per axis); ``work_side``: discs larger than this many pixels
    across are decided on a downscaled copy (time per click stays bounded on big images)."""

    name = "clicks"
    takes_points = True

    def __init__(self, selector: str | None = "ridge", reach: float = 3.0, min_radius: float = 0.1,
                 max_radius: float = 0.35, beta: float = 130.0, work_side: int = 96, cache_size: int = 64,
                 method: str = "walker", side_seeds: bool = False, sure: float | None = 0.35,
                 colour: float = 0.5, colour_bins: int = 12):
        if reach <= 0 or not 0 < min_radius <= max_radius <= 1:
            raise ValueError("need reach > 0 and 0 < min_radius <= max_radius <= 1")
        self.selector_name = selector
        self.reach, self.min_radius, self.max_radius = reach, min_radius, max_radius
        self.beta, self.work_side = beta, work_side
        if method not in ("walker", "grabcut"):
            raise ValueError(f"method is 'walker' or 'grabcut', not {method!r}")
        self.method, self.side_seeds, self.sure = method, side_seeds, sure
        self.colour, self.colour_bins = colour, colour_bins
        self._selector = None
        self._cache: OrderedDict = OrderedDict()
        self.cache_size = cache_size

    def start_mask(self, image: np.ndarray, heat: np.ndarray) -> tuple[np.ndarray, float]:
        """The mask before any click: ``heat >= t`` with the selector's t."""
        if self.selector_name is None:
            return heat >= 0.5, 0.5
        if self._selector is None:
            from .thresholds import get_selector

            self._selector = get_selector(self.selector_name)
        t = self._selector(image, heat).threshold
        mask = heat >= t
        return (mask, t) if mask.any() else (heat >= 0.5, 0.5)

    def __call__(self, image, heat, attention: AttentionMaps | None = None, points=None, labels=None) -> RefineResult:
        heat = check_inputs(image, heat)
        pts = np.zeros((0, 2)) if points is None else np.asarray(points, float).reshape(-1, 2)
        labs = np.zeros(0, int) if labels is None else np.asarray(labels).reshape(-1).astype(int)
        if len(pts) != len(labs):
            raise RefinementError(f"{len(pts)} clicks but {len(labs)} labels")
        h, w = heat.shape
        clicks = [(int(round(x)), int(round(y)), int(bool(l))) for (x, y), l in zip(pts, labs)]
        for x, y, _ in clicks:
            if not (0 <= x < w and 0 <= y < h):
                raise RefinementError(f"a click ({x}, {y}) lies outside the {w}x{h} image")
        key = (image.shape, hash(image.tobytes()), hash(heat.tobytes()))
        # the longest memoised prefix of these clicks, then one random walk per new click
        k = len(clicks)
        while k > 0 and (key, tuple(clicks[:k])) not in self._cache:
            k -= 1
        if k == 0 and (key, ()) not in self._cache:
            self._remember((key, ()), (*self.start_mask(image, heat), []))
        mask, t, radii = self._cache[(key, tuple(clicks[:k]))]
        mask, radii = mask.copy(), list(radii)
        for i in range(k, len(clicks)):
            mask, r = apply_click(image, mask, clicks[i], clicks[:i], self, heat, t)
            radii.append(r)
            self._remember((key, tuple(clicks[: i + 1])), (mask.copy(), t, list(radii)))
        return RefineResult(mask, self.name, {"start_threshold": t, "radii": radii})

    def _remember(self, key, value) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def apply_click(image: np.ndarray, mask: np.ndarray, click: tuple[int, int, int], earlier: list, cfg: ClickRefiner,
                heat: np.ndarray | None = None, t: float = 0.5) -> tuple[np.ndarray, float]:
    """``mask`` after one click (x, y, label), given the ``earlier`` clicks; returns (mask, the
    radius of the disc it may change, 0 when the click was already on its side)."""
    x, y, label = click
    side = bool(label)
    mask = mask.copy()
    if mask[y, x] == side:
        return mask, 0.0
    h, w = mask.shape
    wrong = (mask != side).astype(np.uint8)
    depth = float(cv2.distanceTransform(wrong, cv2.DIST_L2, 5)[y, x])  # distance to the clicked side
    short = min(h, w)
    radius = float(np.clip(cfg.reach * depth, cfg.min_radius * short, cfg.max_radius * short))
    r = int(math.ceil(radius))
    x0, x1, y0, y1 = max(0, x - r), min(w, x + r + 1), max(0, y - r), min(h, y + r + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    disc = (xx - x) ** 2 + (yy - y) ** 2 <= radius * radius
    win_wrong = wrong[y0:y1, x0:x1] > 0
    # seeds: 1 = the click's side, 2 = the other side; 0 = to decide (wrong side inside the disc)
    seeds = np.zeros(disc.shape, np.int32)
    # the click's side is left out of the walk (-1): as seeds, its large area next to the
    # wrong region would pull the whole disc over; the walk runs on the wrong side only
    seeds[~win_wrong] = 1 if cfg.side_seeds else -1
    seeds[win_wrong & ~disc] = 2
    rim = win_wrong & disc & (cv2.dilate((~disc).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    seeds[rim] = 2  # the disc's rim on the wrong side stays as it is: the change is local
    if heat is not None and cfg.sure is not None:
        # where the heat map is sure of the other side (far below / above the cut), it stays:
        # a click corrects the heat map's unsure edge, not its confident core or far background
        hw = heat[y0:y1, x0:x1]
        sure = hw < cfg.sure * t if side else hw > t + (1 - cfg.sure) * (1 - t)
        seeds[win_wrong & sure] = 2
    for ex, ey, el in earlier:
        if el != label and x0 <= ex < x1 and y0 <= ey < y1:
            seeds[ey - y0, ex - x0] = 2
    core = max(1, int(round(0.3 * depth)))
    cv2.circle(seeds, (x - x0, y - y0), core, 1, -1)  # the click and its immediate neighbourhood
    for ex, ey, el in earlier:  # ... but never over an earlier click of the other label
        if el != label and x0 <= ex < x1 and y0 <= ey < y1:
            seeds[ey - y0, ex - x0] = 2
    seeds[y - y0, x - x0] = 1
    crop = image[y0:y1, x0:x1]
    f = min(1.0, cfg.work_side / max(crop.shape[:2]))
    if f < 1:
        size = (max(2, round(crop.shape[1] * f)), max(2, round(crop.shape[0] * f)))
        small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        small_seeds = cv2.resize(seeds, size, interpolation=cv2.INTER_NEAREST)
        small_seeds[min(size[1] - 1, round((y - y0) * f)), min(size[0] - 1, round((x - x0) * f))] = 1
    else:
        small, small_seeds = crop, seeds
    if not (small_seeds == 0).any() or not (small_seeds == 2).any():
        turn_small = small_seeds == 1
    elif cfg.method == "walker" and not cfg.side_seeds:
        feat = small.astype(np.float32) / 255.0
        if cfg.colour > 0:
            post = colour_likelihood(image, mask, side, (x0, x1, y0, y1), disc & (seeds != 2),
                                     seeds == 1, cfg.colour_bins)
            if f < 1:
                post = cv2.resize(post, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
            feat = np.concatenate([feat, cfg.colour * post[..., None]], -1)
        with warnings.catch_warnings():  # "probability range outside [0, 1] given the tolerance": cg's rounding
            warnings.simplefilter("ignore", UserWarning)
            labels = _random_walker()(feat, small_seeds, beta=cfg.beta, mode="cg_j",
                                      tol=1e-3, channel_axis=-1)
        turn_small = labels == 1
    elif cfg.method == "grabcut":
        # the click's side plays GrabCut's object: sure at the click, probable where the mask
        # already has it; the undecided wrong side is probable other side, its rim sure
        gc = np.full(small_seeds.shape, cv2.GC_PR_BGD, np.uint8)
        gc[(small_seeds == 1) | (small_seeds == -1)] = cv2.GC_PR_FGD
        gc[small_seeds == 2] = cv2.GC_BGD
        core_small = np.zeros(small_seeds.shape, np.uint8)
        cv2.circle(core_small, (min(small_seeds.shape[1] - 1, round((x - x0) * f)),
                                min(small_seeds.shape[0] - 1, round((y - y0) * f))), max(1, round(core * f)), 1, -1)
        gc[(core_small > 0) & (small_seeds != 2)] = cv2.GC_FGD
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)
        try:
            cv2.grabCut(cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2BGR), gc, None, bgd, fgd, 3,
                        cv2.GC_INIT_WITH_MASK)
            turn_small = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
        except cv2.error:  # too few samples of one side for its colour model: the click's core only
            turn_small = core_small > 0
    else:
        with warnings.catch_warnings():  # "probability range outside [0, 1] given the tolerance": cg's rounding
            warnings.simplefilter("ignore", UserWarning)
            prob = _random_walker()(small.astype(np.float32) / 255.0, small_seeds, beta=cfg.beta, mode="cg_j",
                                    tol=1e-3, channel_axis=-1, return_full_prob=True)[0]
        turn_small = prob >= 0.5
    turn = turn_small if f >= 1 else cv2.resize(turn_small.astype(np.uint8), (crop.shape[1], crop.shape[0]),
                                                interpolation=cv2.INTER_NEAREST) > 0
    turn &= disc & win_wrong & (seeds != 2)
    turn[y - y0, x - x0] = True
    # only the part connected to the click turns (a click fixes the region it is in)
    n, comp = cv2.connectedComponents(turn.astype(np.uint8), connectivity=4)
    turn = comp == comp[y - y0, x - x0]
    mask[y0:y1, x0:x1][turn] = side
    return mask, radius


def colour_likelihood(image: np.ndarray, mask: np.ndarray, side: bool, box: tuple[int, int, int, int],
                      undecided: np.ndarray, clicked: np.ndarray, bins: int = 12) -> np.ndarray:
    """P(the click's side | Lab colour) in [0, 1] for each pixel of ``box`` = (x0, x1, y0, y1),
    an (y1 - y0, x1 - x0) float32 array. Learned from a window twice the box's size: the click's
    side = the mask's pixels on ``side`` and the box's ``clicked`` pixels (the click's core);
    the other side = the rest, less the ``undecided`` pixels of the box (the disc being
    decided). Each side's Lab histogram (``bins`` per axis) is
    normalised, so the two sides weigh the same whatever their areas."""
    x0, x1, y0, y1 = box
    h, w = mask.shape
    r = max(x1 - x0, y1 - y0) // 2
    X0, X1, Y0, Y1 = max(0, x0 - r), min(w, x1 + r), max(0, y0 - r), min(h, y1 + r)
    q = cv2.cvtColor(np.ascontiguousarray(image[Y0:Y1, X0:X1]), cv2.COLOR_RGB2LAB).astype(np.int32) * bins // 256
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    pos = mask[Y0:Y1, X0:X1] == side
    inner = np.zeros(pos.shape, bool)
    win = (slice(y0 - Y0, y1 - Y0), slice(x0 - X0, x1 - X0))
    inner[win] = undecided
    pos[win] |= clicked
    hp = np.bincount(idx[pos], minlength=bins ** 3).astype(np.float32)
    hn = np.bincount(idx[~pos & ~inner], minlength=bins ** 3).astype(np.float32)
    hp /= max(hp.sum(), 1.0)
    hn /= max(hn.sum(), 1.0)
    p, n = hp[idx[win]] + 1e-4, hn[idx[win]] + 1e-4
    return (p / (p + n)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# the standard click simulator and NoC
# --------------------------------------------------------------------------------------------

def next_click(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int] | None:
    """The simulated user's next click (x, y, label) for a predicted and a true (H, W) bool
    mask, or None when they agree: the largest error region (4-connected component of the
    missed or of the false pixels, by area; ties: missed first) is clicked at its point
    farthest from its boundary (Euclidean distance transform, the image border counting as
    boundary; ties: first in raster order); label 1 (object) for a missed region, 0 for a
    false one."""
    best = None
    for label, err in ((1, truth & ~pred), (0, pred & ~truth)):
        if not err.any():
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats(err.astype(np.uint8), connectivity=4)
        j = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        area = int(stats[j, cv2.CC_STAT_AREA])
        if best is None or area > best[0]:
            best = (area, label, comp == j)
    if best is None:
        return None
    _, label, region = best
    padded = np.pad(region, 1).astype(np.uint8)  # the image border is a boundary too
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y), label


def simulate(refiner, image: np.ndarray, heat: np.ndarray, truth: np.ndarray, max_clicks: int = 20,
             stop_at: float = 0.90) -> list[float]:
    """IoU with ``truth`` before any click and after each simulated click, stopping once IoU
    reaches ``stop_at`` or after ``max_clicks``: a list of 1 + (clicks made) values."""
    from .masks import iou

    pts, labs = [], []
    pred = refiner(image, heat).mask
    ious = [iou(pred, truth)]
    while ious[-1] < stop_at and len(pts) < max_clicks:
        c = next_click(pred, truth)
        if c is None:
            break
        pts.append(c[:2])
        labs.append(c[2])
        pred = refiner(image, heat, points=np.array(pts, np.float32), labels=np.array(labs)).mask
        ious.append(iou(pred, truth))
    return ious


def noc(ious: list[float], target: float, max_clicks: int = 20) -> int:
    """Number of clicks to reach IoU ``target`` (0: the start already does), ``max_clicks``
    when never reached (the papers' convention: a failure counts as the maximum)."""
    for k, v in enumerate(ious):
        if v >= target:
            return k
    return max_clicks
