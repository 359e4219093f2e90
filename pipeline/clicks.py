"""Clicks that count: a click refiner that honours every click exactly, and the standard click
simulator of interactive-segmentation papers (NoC@85/90).

The ``clicks`` refiner starts from the heat map cut at the threshold selector's t
(:mod:`pipeline.thresholds`) and applies the clicks in order. A click (x, y) with label l
(1 object, 0 background) on a pixel the mask has on the wrong side may only turn pixels of
that wrong side into l, and only inside a disc around the click whose radius grows with how
deep the click lies in the wrong region (``reach`` x that depth, at least ``min_radius`` and at
most ``max_radius`` of the image's shorter side; the image border counts as an edge of the
wrong region, so a click in a thin strip along the border is shallow). Which of them turn is a
minimum cut (PyMaxflow) of an explicit energy over the disc's window:

- unary: the log-odds that a wrong-side pixel belongs to the click's side, from 16 cues
  (:data:`UNARY_FEATURES`): where it lies relative to the current boundary and to the click, in
  units of the click's depth (the deepest point of an error band of width 2d lies d from the
  current boundary, so its far edge is near 2d: the band's shape); the heat map's level against
  the cut t, against its level at the click, and against its local maximum (a thin part has a
  low but locally high heat map); how much more its Lab colour is found on the click's side of
  the mask around the disc than on the other side; whether a strong image edge lies between it
  and the click; its colour distance to the click; how close it and the click lie to the image
  border. The cues are combined by a one-hidden-layer perceptron of 32 units (:data:`UNARY_MLP`,
  609 numbers) fitted once on folds 1-2 of
  ``pipeline.realdata`` (never on fold 0, the benchmark's) by :func:`fit_unary`, from
  simulated sessions (two soft maps per photo) where each pixel of a click's disc is labelled
  by the true mask; 30 % of those clicks are a sloppier user's (:func:`sloppy_click`: anywhere
  in the error region at least half as deep as its deepest point), so that the unary does not
  rely on a click lying exactly where the standard simulator puts it;
- pairwise: a contrast-sensitive Potts term on 4-neighbours (``smoothness`` x exp(-beta |dI|^2),
  beta from the window's mean squared colour step, as GrabCut's);
- hard constraints: the click and a core of 0.3 x its depth around it are l; every earlier
  click of the other label, the disc's rim and everything outside the disc stay as they are;
  the pixels already on l are l.

Only the turned part connected to the click is kept. So:

- the clicked pixel is always on the clicked side (it is forced, and no later click can undo
  it: a later click only turns pixels to *its* label, and clicks of the other label are fixed
  to their side in its cut);
- a click changes nothing outside its disc (``RefineResult.info["radii"]`` gives each radius,
  ``info["discs"]`` each disc as (x, y, radius)).

A click on a pixel already on its side changes nothing (it still pins that pixel for later
clicks). Replaying the clicks is memoised per (image, heat map, click prefix), so the k-th
click of a session costs one cut, not k. A disc wider than ``work_radius`` pixels is decided on a
copy of the image downscaled to bring it to that radius (time per click stays bounded on large
images and large discs; the result is still clipped to the full-resolution disc and wrong side).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import cv2
import numpy as np

from .attention import AttentionMaps
from .refine import BaseRefiner, RefinementError, RefineResult, check_inputs

#: the unary's cues, the inputs of :data:`UNARY_MLP` in this order (see :func:`click_features`)
UNARY_FEATURES = ("boundary distance / depth", "click distance / depth", "heat - t", "heat - heat at click",
                  "colour log-odds", "edge between pixel and click", "colour distance to click", "log depth",
                  "(boundary distance / depth)^2", "(click distance / depth)^2", "heat / local max - 0.5",
                  "click distance / radius", "boundary distance / radius", "click's heat / local max - 0.5",
                  "image border distance / depth", "click's depth is its distance to the border", "bias")
#: the unary: a one-hidden-layer perceptron (32 ReLU units) over the cues, fitted on folds 1-2 by
#: ``fit_unary((1, 2))``; filled in at the end of this module (UNARY_MLP)
_BIG = 1e9
UNARY_MLP = None  # set at the end of this module


def _maxflow():
    try:
        import maxflow
    except ImportError as e:  # pragma: no cover - in requirements.txt
        from .refine import RefinerUnavailable

        raise RefinerUnavailable("the clicks refiner needs PyMaxflow (pip install PyMaxflow)") from e
    return maxflow


class ClickRefiner(BaseRefiner):
    """Every click honoured exactly, each changing only a disc around it (see the module doc).

    ``selector``: the threshold selector that makes the starting mask (None: t = 0.5);
    ``reach``: disc radius over the click's depth in the wrong region; ``min_radius`` /
    ``max_radius``: bounds of the radius as fractions of the shorter image side;
    ``smoothness``: weight of the contrast-sensitive Potts term against the learned unary;
    ``unary``: the unary's perceptron (hidden weights (k, F), hidden bias (k,), output weights
    (k,), output bias; default :data:`UNARY_MLP`); ``work_radius``: a disc of a larger radius (px)
    is decided on a copy downscaled to this radius (time per click stays bounded)."""

    name = "clicks"
    takes_points = True

    def __init__(self, selector: str | None = "ridge", reach: float = 3.0, min_radius: float = 0.1,
                 max_radius: float = 0.35, smoothness: float = 1.0, unary=None, work_radius: int = 112,
                 cache_size: int = 64):
        if reach <= 0 or not 0 < min_radius <= max_radius <= 1:
            raise ValueError("need reach > 0 and 0 < min_radius <= max_radius <= 1")
        if smoothness < 0:
            raise ValueError("smoothness must be >= 0")
        self.selector_name = selector
        self.reach, self.min_radius, self.max_radius = reach, min_radius, max_radius
        self.smoothness, self.work_radius = smoothness, work_radius
        self.unary = tuple(np.asarray(a, np.float32) for a in (UNARY_MLP if unary is None else unary))
        if len(self.unary) != 4 or self.unary[0].shape[1:] != (len(UNARY_FEATURES),):
            raise ValueError(f"unary: (hidden weights (k, {len(UNARY_FEATURES)}), hidden bias, output weights, output bias)")
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
        # the longest memoised prefix of these clicks, then one cut per new click
        k = len(clicks)
        while k > 0 and (key, tuple(clicks[:k])) not in self._cache:
            k -= 1
        if k == 0 and (key, ()) not in self._cache:
            self._remember((key, ()), (*self.start_mask(image, heat), []))
        mask, t, discs = self._cache[(key, tuple(clicks[:k]))]
        mask, discs = mask.copy(), list(discs)
        for i in range(k, len(clicks)):
            mask, r = apply_click(image, mask, clicks[i], clicks[:i], self, heat, t)
            discs.append((clicks[i][0], clicks[i][1], r))
            self._remember((key, tuple(clicks[: i + 1])), (mask.copy(), t, list(discs)))
        return RefineResult(mask, self.name, {"start_threshold": t, "radii": [r for _, _, r in discs],
                                              "discs": discs})

    def unary_logit(self, feats: np.ndarray) -> np.ndarray:
        """log P(click's side) / P(other side) of each pixel from its cues (F, H, W) -> (H, W)."""
        w1, b1, w2, b2 = self.unary
        hidden = np.maximum(np.tensordot(w1, feats, 1) + b1[:, None, None], 0)
        return np.tensordot(w2, hidden, 1) + b2

    def _remember(self, key, value) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def click_region(mask: np.ndarray, click: tuple[int, int, int], reach: float = 3.0, min_radius: float = 0.1,
                 max_radius: float = 0.35) -> tuple[float, float, tuple[int, int, int, int], np.ndarray]:
    """(depth, radius, window (x0, x1, y0, y1), distance map) of a click on (H, W) bool ``mask``:
    depth = the click's distance to the clicked side or to the image border (at least 1 px);
    radius = ``reach`` x depth within [min_radius, max_radius] x the shorter side; the window
    bounds the disc; the distance map is each pixel's distance (px, float32) to the clicked side
    or the image border."""
    x, y, label = click
    h, w = mask.shape
    wrong = np.pad((mask != bool(label)).astype(np.uint8), 1)  # the image border is an edge too
    dist = cv2.distanceTransform(wrong, cv2.DIST_L2, 5)[1:-1, 1:-1]
    depth = max(float(dist[y, x]), 1.0)
    short = min(h, w)
    radius = float(np.clip(reach * depth, min_radius * short, max_radius * short))
    r = int(math.ceil(radius))
    return depth, radius, (max(0, x - r), min(w, x + r + 1), max(0, y - r), min(h, y + r + 1)), dist


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
    if heat is None:
        heat = mask.astype(np.float32)
    depth, radius, (x0, x1, y0, y1), _ = click_region(mask, click, cfg.reach, cfg.min_radius, cfg.max_radius)
    f = min(1.0, cfg.work_radius / radius)
    if f < 1:  # decide on a downscaled copy, then clip to the full-resolution disc below
        size = (max(2, round(w * f)), max(2, round(h * f)))
        s_img = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        s_mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        s_heat = cv2.resize(heat, size, interpolation=cv2.INTER_AREA)
        sx, sy = min(size[0] - 1, int(x * f)), min(size[1] - 1, int(y * f))
        s_mask[sy, sx] = not side
        s_earlier = [(min(size[0] - 1, int(ex * f)), min(size[1] - 1, int(ey * f)), el) for ex, ey, el in earlier]
        s_turn, (sx0, sx1, sy0, sy1) = decide_click(s_img, s_mask, (sx, sy, label), s_earlier, cfg, s_heat, t)
        full = np.zeros(size[::-1], bool)
        full[sy0:sy1, sx0:sx1] = s_turn
        turn = cv2.resize(full.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)[y0:y1, x0:x1] > 0
    else:
        turn, _ = decide_click(image, mask, click, earlier, cfg, heat, t)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    keep = ((xx - x) ** 2 + (yy - y) ** 2 <= radius * radius) & (mask[y0:y1, x0:x1] != side)
    for ex, ey, el in earlier:  # earlier clicks of the other label are never turned
        if el != label and x0 <= ex < x1 and y0 <= ey < y1:
            keep[ey - y0, ex - x0] = False
    turn &= keep
    turn[y - y0, x - x0] = True
    # only the part connected to the click turns (a click fixes the region it is in)
    _, comp = cv2.connectedComponents(turn.astype(np.uint8), connectivity=4)
    mask[y0:y1, x0:x1][comp == comp[y - y0, x - x0]] = side
    return mask, radius


def decide_click(image: np.ndarray, mask: np.ndarray, click: tuple[int, int, int], earlier: list, cfg: ClickRefiner,
                 heat: np.ndarray, t: float) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The minimum cut of one click (see the module doc): (turn, window) where ``turn`` is a
    bool array over the window (x0, x1, y0, y1), True where the pixel takes the click's side."""
    x, y, label = click
    side = bool(label)
    depth, radius, box, dist = click_region(mask, click, cfg.reach, cfg.min_radius, cfg.max_radius)
    x0, x1, y0, y1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1]
    disc = (xx - x) ** 2 + (yy - y) ** 2 <= radius * radius
    wrong = mask[y0:y1, x0:x1] != side
    # fixed: 1 = the click's side, 2 = stays as it is, 0 = decided by the cut
    fixed = np.zeros(disc.shape, np.uint8)
    fixed[~wrong] = 1
    fixed[wrong & ~disc] = 2
    rim = wrong & disc & (cv2.dilate((~disc).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    fixed[rim] = 2  # the disc's rim on the wrong side stays as it is: the change is local
    core_img = np.zeros(disc.shape, np.uint8)
    cv2.circle(core_img, (x - x0, y - y0), max(1, int(round(0.3 * depth))), 1, -1)
    core = (core_img > 0) & wrong
    feats = click_features(image, mask, heat, t, click, depth, radius, box, dist, disc & wrong, core)
    cost = -cfg.unary_logit(feats)  # > 0: keeping is cheaper, < 0: turning
    fixed[core & (fixed != 2)] = 1
    for ex, ey, el in earlier:
        if el != label and x0 <= ex < x1 and y0 <= ey < y1:
            fixed[ey - y0, ex - x0] = 2
    fixed[y - y0, x - x0] = 1
    maxflow = _maxflow()
    graph = maxflow.Graph[float]()
    ids = graph.add_grid_nodes(disc.shape)
    if cfg.smoothness > 0:
        crop = image[y0:y1, x0:x1].astype(np.float32)
        step_x = ((crop[:, 1:] - crop[:, :-1]) ** 2).sum(-1)
        step_y = ((crop[1:] - crop[:-1]) ** 2).sum(-1)
        beta = 1.0 / (2 * max(float(np.mean(np.concatenate([step_x.ravel(), step_y.ravel()]))), 1e-6))
        wx = np.zeros(disc.shape, np.float32)
        wx[:, :-1] = cfg.smoothness * np.exp(-beta * step_x)
        wy = np.zeros(disc.shape, np.float32)
        wy[:-1] = cfg.smoothness * np.exp(-beta * step_y)
        graph.add_grid_edges(ids, weights=wx, structure=np.array([[0, 0, 0], [0, 0, 1], [0, 0, 0]]), symmetric=True)
        graph.add_grid_edges(ids, weights=wy, structure=np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0]]), symmetric=True)
    # the sink segment turns: a node's source capacity is what turning costs, its sink capacity
    # what keeping costs
    to_source = np.where(cost > 0, cost, 0).astype(np.float64)
    to_sink = np.where(cost < 0, -cost, 0).astype(np.float64)
    to_source[fixed == 2], to_sink[fixed == 2] = _BIG, 0
    to_sink[fixed == 1], to_source[fixed == 1] = _BIG, 0
    graph.add_grid_tedges(ids, to_source, to_sink)
    graph.maxflow()
    turn = graph.get_grid_segments(ids) & disc & wrong & (fixed != 2)
    return turn, box


def click_features(image: np.ndarray, mask: np.ndarray, heat: np.ndarray, t: float, click: tuple[int, int, int],
                   depth: float, radius: float, box: tuple[int, int, int, int], dist: np.ndarray,
                   undecided: np.ndarray, core: np.ndarray) -> np.ndarray:
    """The unary's cues (:data:`UNARY_FEATURES`) for each pixel of ``box`` = (x0, x1, y0, y1):
    a (len(UNARY_FEATURES), y1 - y0, x1 - x0) float32 array. ``dist``: each pixel's distance to
    the clicked side or the border (:func:`click_region`); ``undecided``: the window's wrong-side
    pixels in the disc; ``core``: the click's core (both bool over the window). Signs are such
    that "more like the click's side" is the same direction for object and background clicks."""
    x, y, label = click
    sign = 1.0 if label else -1.0
    x0, x1, y0, y1 = box
    h, w = mask.shape
    yy, xx = np.mgrid[y0:y1, x0:x1]
    border = np.minimum(np.minimum(xx + 1, yy + 1), np.minimum(w - xx, h - yy)).astype(np.float32)
    bd = np.clip(dist[y0:y1, x0:x1] / depth, 0, 6)
    cd = np.clip(np.sqrt((xx - x) ** 2 + (yy - y) ** 2) / depth, 0, 8)
    hw = heat[y0:y1, x0:x1]
    rel = heat_over_local_max(heat)
    post = colour_likelihood(image, mask, bool(label), box, undecided, core)
    log_odds = np.clip(np.log(post + 1e-4) - np.log(1 - post + 1e-4), -5, 5) / 2
    lab = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2LAB).astype(np.float32)
    grad = np.sqrt((cv2.Sobel(lab, cv2.CV_32F, 1, 0, ksize=3) ** 2 + cv2.Sobel(lab, cv2.CV_32F, 0, 1, ksize=3) ** 2).sum(-1))
    grad /= float(np.percentile(grad, 90)) + 1e-3
    between = np.clip(max_on_segments_to(grad, x - x0, y - y0, radius), 0, 4)
    ref = lab[core].mean(0) if core.any() else lab[y - y0, x - x0]
    colour_dist = np.clip(np.sqrt(((lab - ref) ** 2).sum(-1)) / 20.0, 0, 5)
    feats = [bd, cd, sign * (hw - t) * 5, sign * (hw - float(heat[y, x])) * 5, log_odds, between, colour_dist,
             np.full(bd.shape, math.log(depth)), bd ** 2 / 6, cd ** 2 / 8, sign * (rel[y0:y1, x0:x1] - 0.5) * 4,
             cd * depth / radius, np.clip(bd * depth / radius, 0, 2), np.full(bd.shape, sign * (rel[y, x] - 0.5) * 4),
             np.clip(border / depth, 0, 6), np.full(bd.shape, float(min(x + 1, y + 1, w - x, h - y) <= depth + 0.5)),
             np.ones(bd.shape)]
    return np.stack(feats).astype(np.float32)


def heat_over_local_max(heat: np.ndarray) -> np.ndarray:
    """(H, W) float32: the heat map over its maximum within a disc of 8 % of the longer side
    (at least 0.05): a thin part of the object has a low heat map that is still a local peak."""
    k = max(3, int(0.08 * max(heat.shape)) | 1)
    local = cv2.dilate(heat, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return heat / np.maximum(local, 0.05)


def max_on_segments_to(values: np.ndarray, cx: int, cy: int, radius: float) -> np.ndarray:
    """For each pixel of (H, W) float32 ``values``, the maximum of ``values`` on the segment from
    (cx, cy) to it (a polar warp around (cx, cy), a running maximum along each ray, warped back)."""
    h, w = values.shape
    r = float(radius) + 2
    polar = cv2.warpPolar(values, (int(r) + 1, 360), (float(cx), float(cy)), r, cv2.WARP_POLAR_LINEAR + cv2.INTER_LINEAR)
    polar = np.maximum.accumulate(polar, axis=1)
    back = cv2.warpPolar(polar, (w, h), (float(cx), float(cy)), r,
                         cv2.WARP_POLAR_LINEAR + cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP)
    return np.nan_to_num(back, nan=0.0)  # the inverse warp leaves an odd pixel undefined


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


def sloppy_click(pred: np.ndarray, truth: np.ndarray, rng: np.random.Generator,
                 depth_share: float = 0.5) -> tuple[int, int, int] | None:
    """A sloppier user's next click: in the region :func:`next_click` picks, a pixel drawn
    uniformly (``rng``) among those at least ``depth_share`` x as deep (distance to the region's
    boundary or the image border) as its deepest point; None when the masks agree."""
    c = next_click(pred, truth)
    if c is None:
        return None
    label = c[2]
    err = (truth & ~pred) if label else (pred & ~truth)
    _, comp = cv2.connectedComponents(err.astype(np.uint8), connectivity=4)
    region = comp == comp[c[1], c[0]]
    dist = cv2.distanceTransform(np.pad(region, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    ys, xs = np.nonzero(dist >= depth_share * dist.max())
    k = int(rng.integers(len(ys)))
    return int(xs[k]), int(ys[k]), label


def simulate(refiner, image: np.ndarray, heat: np.ndarray, truth: np.ndarray, max_clicks: int = 20,
             stop_at: float = 0.90, clicker=None) -> list[float]:
    """IoU with ``truth`` before any click and after each simulated click, stopping once IoU
    reaches ``stop_at`` or after ``max_clicks``: a list of 1 + (clicks made) values.
    ``clicker(pred, truth)`` gives each click (default :func:`next_click`, the standard user;
    e.g. ``lambda p, t: sloppy_click(p, t, rng)`` for a sloppier one)."""
    from .masks import iou

    clicker = next_click if clicker is None else clicker
    pts, labs = [], []
    pred = refiner(image, heat).mask
    ious = [iou(pred, truth)]
    while ious[-1] < stop_at and len(pts) < max_clicks:
        c = clicker(pred, truth)
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


# --------------------------------------------------------------------------------------------
# where UNARY_MLP comes from
# --------------------------------------------------------------------------------------------

def unary_training_rows(keys: list[str], per_click: int = 400, max_clicks: int = 8, seed: int = 0,
                        selector: str | None = "ridge", sloppy: float = 0.0, maps: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, len(UNARY_FEATURES)), labels (n,) bool) from simulated sessions on the
    photos ``keys`` (the largest object of each, ``maps`` independent 16x16 attention-like soft
    maps of it): at each of up to ``max_clicks`` simulated clicks, up to ``per_click`` of the
    disc's wrong-side pixels, labelled by whether the truth has them on the click's side. Each
    click is the standard simulator's (:func:`next_click`), or with probability ``sloppy`` a
    sloppier user's (:func:`sloppy_click`: anywhere at least half as deep), so that the unary
    does not rely on the click lying exactly at the deepest point. Sessions advance as if each
    click turned exactly those pixels (so the states are those of a good refiner, not of the
    weights being fitted)."""
    from . import realdata
    from .masks import iou
    from .thresholds import attention_like

    rng = np.random.default_rng(seed)
    # only its start mask is used (the unary being fitted must not shape its own data)
    starter = ClickRefiner(selector=selector, unary=(np.zeros((1, len(UNARY_FEATURES))), np.zeros(1), np.zeros(1), 0.0))
    xs, ys = [], []
    for i, key in enumerate(keys * maps):
        p = realdata.load_photo(key, min_area=0.02)
        if not p.masks:
            continue
        gt = p.masks[int(np.argmax([m.sum() for m in p.masks]))]
        heat = attention_like(gt, 16, np.random.default_rng(i), 0.02, 0.05)
        pred, t = starter.start_mask(p.image, heat)
        for _ in range(max_clicks):
            c = sloppy_click(pred, gt, rng) if sloppy and rng.random() < sloppy else next_click(pred, gt)
            if c is None or iou(pred, gt) >= 0.95:
                break
            x, y, label = c
            side = bool(label)
            depth, radius, (x0, x1, y0, y1), dist = click_region(pred, c)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            undecided = ((xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2) & (pred[y0:y1, x0:x1] != side)
            core_img = np.zeros(undecided.shape, np.uint8)
            cv2.circle(core_img, (x - x0, y - y0), max(1, int(round(0.3 * depth))), 1, -1)
            feats = click_features(p.image, pred, heat, t, c, depth, radius, (x0, x1, y0, y1), dist, undecided,
                                   (core_img > 0) & undecided)
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
              maps: int = 2) -> tuple[np.ndarray, ...]:
    """The unary's perceptron (as :data:`UNARY_MLP`) fitted on the photos of ``folds`` (the
    shipped one: folds 1-2) with :func:`unary_training_rows` (``sloppy``: share of sloppy
    clicks, ``maps``: soft maps per photo): cross-entropy, Adam (lr 3e-3, weight decay 1e-5),
    batches of 2048, ``epochs`` passes, seeded (the global torch RNG is left as it was)."""
    import torch

    from . import realdata

    x, y = unary_training_rows(realdata.split(list(folds)), sloppy=sloppy, maps=maps)
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


#: the unary's perceptron fitted on folds 1-2 (``fit_unary((1, 2))``: 30 % sloppy clicks, 2 soft
#: maps per photo; rounded to 4 decimals):
#: hidden weights (32, 17) over UNARY_FEATURES, hidden bias, output weights, output bias
UNARY_MLP = (
    np.array([[0.0715, 0.2383, 0.2095, 0.0678, -0.1244, 0.1110, -0.0891, 0.2751, 0.0111, 0.0556, -0.0147,
      -0.0837, 0.0153, -0.3042, -0.0387, -0.1097, 0.1111],
     [0.2392, -0.1750, 0.1922, 0.0620, 0.1099, -0.0618, 0.0161, 0.1714, 0.1306, 0.1108, -0.5520,
      -0.1271, 0.2702, -0.3376, 0.2764, -0.1450, -0.2768],
     [-0.4298, -0.6130, 0.0960, 0.0310, -0.1932, -0.3342, -0.0089, -0.1768, 0.4747, -0.3481, -0.2266,
      -0.5293, 1.1688, 0.3502, 0.0720, 0.3401, 1.0644],
     [0.3840, 0.0291, -0.0336, 0.0980, -0.2494, 0.3856, -0.5251, -0.1798, -0.1876, 0.0924, -0.4772,
      -0.3405, -0.2058, -0.2463, -0.4958, -0.4797, -0.1475],
     [0.1470, 0.2875, 0.2317, 0.0943, -0.1125, 0.1553, -0.0135, 0.1474, 0.0391, -0.2041, -0.0544,
      -0.1957, -0.0558, -0.1699, 0.0942, -0.1987, -0.0575],
     [0.0740, 0.1648, 0.3181, 0.2869, -0.1579, 0.1425, -0.0194, 0.2358, 0.1392, -0.1408, -0.1073,
      0.1122, 0.2044, -0.4213, -0.0758, -0.0062, 0.1449],
     [0.0908, 0.0871, 0.2056, 0.1886, 0.0530, -0.0739, -0.0284, 0.2671, 0.0435, 0.1590, -0.3334,
      0.2310, 0.3538, -0.6111, 0.0811, -0.3439, -0.0400],
     [-0.4259, 0.2690, -0.7143, -0.3720, 0.0290, -0.5563, -0.2921, -0.4213, -0.5715, -0.0116, -0.0319,
      0.6115, 0.3103, -0.2838, 0.1020, -0.1303, 0.3197],
     [-0.6112, 0.0448, -0.7448, -0.2537, 0.1344, 0.6585, -0.0920, -0.0246, -0.7490, -0.0170, -0.2985,
      0.3040, -0.8893, 0.0964, -0.0985, -0.0367, 0.4854],
     [0.5605, -0.1304, 0.2287, 0.2396, -0.3749, 0.1449, 0.0883, 0.2761, 0.3221, -0.7065, -0.2595,
      0.1541, 0.6897, 0.0412, 0.0208, 0.5047, -0.1764],
     [0.6665, -0.3586, 0.5820, -0.8261, -0.0740, -0.1150, 0.0012, 0.2800, 0.0602, -0.1222, 0.1030,
      0.0317, 1.4917, -0.4534, -0.1351, -1.7250, -0.2695],
     [-0.3175, -0.3728, -1.3295, 0.0594, 0.2553, -0.2103, 0.0906, 0.1716, 0.0630, 0.1222, 0.7957,
      0.1238, 0.2784, 0.3928, 0.5692, 0.4250, 0.0817],
     [-0.4592, 0.0795, -0.1688, 0.8164, 0.0336, -1.0446, 0.0735, -0.4259, 0.0520, -0.1238, 0.5128,
      -0.4455, -1.1733, -0.1455, 0.2643, -1.3411, 0.2956],
     [0.3519, -0.1313, 0.9670, -0.6477, 0.1952, -0.0389, -0.0138, 0.8543, 0.2676, 0.0796, 0.0000,
      0.6789, 0.6657, 0.1673, -0.1971, 0.8123, -0.2266],
     [0.2545, 0.0966, 1.1219, 0.2050, 0.0408, -0.0752, -0.0551, 0.0175, 0.1744, -0.6128, 0.1667,
      0.4286, 0.5377, -0.0176, 0.4123, 0.0749, -0.2823],
     [0.1352, -0.1857, 0.5873, -0.1181, -0.7388, -0.3000, 0.0264, 0.3223, -0.0245, 0.2078, -0.1261,
      -0.0482, 0.6017, 0.8209, 0.2319, 0.2229, -0.2707],
     [-0.6596, 0.1172, -2.2027, -1.3396, 0.0579, 0.0802, -0.0031, 0.3948, 0.4283, -0.0417, -0.0649,
      -0.2715, -0.9760, -0.1275, 0.0156, 0.9644, -0.1548],
     [-0.2836, -0.1652, -0.7198, -0.6369, 0.0208, 0.0806, -0.2240, 0.5207, -0.2582, 0.0612, -0.0444,
      0.1567, -0.0736, 0.3798, 0.3825, -0.8091, 0.1627],
     [0.0949, 0.0229, -0.0300, 0.0397, -0.5723, -0.0396, 0.0052, -0.3203, -0.1310, 0.1791, 0.1684,
      -0.4787, -0.1481, 0.9117, 0.0838, 0.8737, -0.1603],
     [0.1501, 0.0639, -0.2098, 0.2955, 0.7402, -0.3020, -0.0195, -0.4043, -0.0020, 0.2805, 0.1924,
      -0.6062, -0.1511, 0.8398, 0.0899, -0.0167, 0.0961],
     [0.1607, 0.0828, 0.6419, 0.2628, 0.0402, 0.2362, -0.0114, 0.2550, -0.0789, 0.0927, -0.4187,
      0.1468, 0.2095, -0.4991, 0.1012, -0.1846, -0.1191],
     [-0.0498, -0.3527, -0.3352, -0.2426, -0.3370, -0.4409, 0.1575, -0.1726, -0.0183, 0.1271, -0.3332,
      -0.0294, 0.0739, -0.8204, 0.2478, -0.6319, -0.1436],
     [-0.2738, -0.2501, -0.8312, 0.4617, 0.0184, 0.6282, 0.5536, -0.2920, 0.2415, 0.1952, 0.2350,
      0.2509, -0.6231, 0.3961, -0.0683, 1.0747, 0.3080],
     [0.5222, 0.1473, 0.3786, -0.5211, -0.0176, -0.1835, -0.0071, -0.5328, 0.0408, -0.0546, -0.9657,
      -0.4767, -0.4572, -0.3360, -1.5770, 0.4737, 1.0877],
     [0.0449, 0.2899, 0.1681, -0.2093, 0.1150, 0.4022, -0.3409, -0.1177, 0.1933, 0.0025, 0.4151,
      0.1867, 0.2428, 0.2965, 0.0059, -0.0230, 0.1937],
     [-0.0359, 0.0816, 0.2592, -0.0610, 0.2014, 0.1820, 0.5750, 1.0843, -0.0135, -0.1029, 0.3531,
      0.2523, 0.3858, 1.4458, -0.0679, -0.2167, -0.3108],
     [0.0057, 0.3025, 0.1492, 0.4237, -0.0705, 0.0644, -0.1126, -0.1473, 0.1992, 0.1537, 0.0105,
      0.0819, -0.1014, -0.4364, 0.0507, 0.1707, -0.1061],
     [-0.1807, -1.0875, 0.2347, -0.3912, -0.0326, 0.0531, 0.0393, -0.3325, -0.1851, -1.1283, -0.0212,
      -0.5867, 1.1467, 0.0141, 0.0387, -0.0064, 0.7577],
     [-0.1363, 0.1032, 0.2871, -0.2377, -0.9610, 0.1325, -0.2309, 0.3195, -0.1399, 0.1140, 0.2567,
      -0.1721, 0.2998, -0.2117, 0.1290, -0.3325, 0.1801],
     [-0.0965, 0.3010, 0.3319, -0.0442, -0.1809, 0.1350, 0.0200, -0.1237, 0.1783, 0.1215, -0.0747,
      0.1142, 0.0381, -0.3672, 0.1011, -0.0925, 0.0695],
     [0.5211, 0.3013, 0.5017, 0.0377, -0.0450, 0.0699, 0.0105, -0.8407, 0.3028, -0.1675, -0.8169,
      -0.4675, -0.2964, -0.3942, -1.2006, -0.3189, 0.5060],
     [-0.0015, -0.0214, 0.0003, 0.0000, 0.0022, -0.0005, -0.0023, -0.0083, 0.0006, -0.0091, -0.0004,
      -0.0000, -0.0000, -0.0008, -0.0374, -0.0000, -0.0022]]),
    np.array([0.0581, 0.0072, 0.7605, -0.1809, -0.1648, 0.2121, -0.2821, 0.1216, 0.7564, -0.3027, -0.1801,
     0.2223, 0.2643, -0.1152, -0.0172, -0.1518, -0.3318, 0.1981, -0.0721, 0.0418, -0.1892, 0.1729,
     0.2293, 0.8709, 0.2546, 0.0345, 0.2539, 1.1153, 0.0073, -0.1377, 0.2827, 0.0005]),
    np.array([-0.0867, -0.2231, 1.4371, 0.9019, -0.0416, -0.1438, -0.2352, 0.6819, 0.6402, -0.6161, 1.1341,
     0.7955, 1.1375, 1.4648, -0.6174, -0.7268, -2.0215, 0.7571, 0.3281, 0.3020, -0.3283, 0.3963, 0.8880,
     2.3469, -0.3124, -1.1480, -0.1862, 2.1312, -0.3045, -0.1047, 1.8810, -0.0319]),
    -0.0985,
)
