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

- unary: the log-odds that a wrong-side pixel belongs to the click's side, from 14 cues
  (:data:`UNARY_FEATURES`): where it lies relative to the current boundary and to the click, in
  units of the click's depth (the deepest point of an error band of width 2d lies d from the
  current boundary, so its far edge is near 2d: the band's shape); the heat map's level against
  the cut t, against its level at the click, and against its local maximum (a thin part has a
  low but locally high heat map); how much more its Lab colour is found on the click's side of
  the mask around the disc than on the other side; whether a strong image edge lies between it
  and the click; its colour distance to the click. The cues are combined by a one-hidden-layer
  perceptron of 16 units (:data:`UNARY_MLP`, 273 numbers) fitted once on folds 1-2 of
  ``pipeline.realdata`` (never on fold 0, the benchmark's) by :func:`fit_unary`, from
  simulated sessions where each pixel of a click's disc is labelled by the true mask;
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
click of a session costs one cut, not k. Images longer than ``work_side`` are decided on a
downscaled copy (the result is still clipped to the full-resolution disc and wrong side).
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
                  "bias")
#: the unary: a one-hidden-layer perceptron (16 ReLU units) over the cues, fitted on folds 1-2 by
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
    ``unary``: the unary's perceptron (hidden weights (16, F), hidden bias (16,), output weights
    (16,), output bias; default :data:`UNARY_MLP`); ``work_side``:
    images longer than this are decided on a downscaled copy (time per click stays bounded)."""

    name = "clicks"
    takes_points = True

    def __init__(self, selector: str | None = "ridge", reach: float = 3.0, min_radius: float = 0.1,
                 max_radius: float = 0.35, smoothness: float = 1.0, unary=None, work_side: int = 640,
                 cache_size: int = 64):
        if reach <= 0 or not 0 < min_radius <= max_radius <= 1:
            raise ValueError("need reach > 0 and 0 < min_radius <= max_radius <= 1")
        if smoothness < 0:
            raise ValueError("smoothness must be >= 0")
        self.selector_name = selector
        self.reach, self.min_radius, self.max_radius = reach, min_radius, max_radius
        self.smoothness, self.work_side = smoothness, work_side
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
    f = min(1.0, cfg.work_side / max(h, w))
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
    yy, xx = np.mgrid[y0:y1, x0:x1]
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


# --------------------------------------------------------------------------------------------
# where UNARY_MLP comes from
# --------------------------------------------------------------------------------------------

def unary_training_rows(keys: list[str], per_click: int = 400, max_clicks: int = 8, seed: int = 0,
                        selector: str | None = "ridge") -> tuple[np.ndarray, np.ndarray]:
    """(features (n, len(UNARY_FEATURES)), labels (n,) bool) from simulated sessions on the
    photos ``keys`` (the largest object of each, its 16x16 attention-like soft map): at each of
    up to ``max_clicks`` simulated clicks, up to ``per_click`` of the disc's wrong-side pixels,
    labelled by whether the truth has them on the click's side. Sessions advance as if each click
    turned exactly those pixels (so the states are those of a good refiner, not of the weights
    being fitted)."""
    from . import realdata
    from .masks import iou
    from .thresholds import attention_like

    rng = np.random.default_rng(seed)
    # only its start mask is used (the unary being fitted must not shape its own data)
    starter = ClickRefiner(selector=selector, unary=(np.zeros((1, len(UNARY_FEATURES))), np.zeros(1), np.zeros(1), 0.0))
    xs, ys = [], []
    for i, key in enumerate(keys):
        p = realdata.load_photo(key, min_area=0.02)
        if not p.masks:
            continue
        gt = p.masks[int(np.argmax([m.sum() for m in p.masks]))]
        heat = attention_like(gt, 16, np.random.default_rng(i), 0.02, 0.05)
        pred, t = starter.start_mask(p.image, heat)
        for _ in range(max_clicks):
            c = next_click(pred, gt)
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


def fit_unary(folds=(1, 2), hidden: int = 16, epochs: int = 30, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The unary's perceptron (as :data:`UNARY_MLP`) fitted on the photos of ``folds`` (the
    shipped one: folds 1-2): cross-entropy, Adam (lr 3e-3, weight decay 1e-5), batches of 2048,
    ``epochs`` passes, seeded (the global torch RNG is left as it was)."""
    import torch

    from . import realdata

    x, y = unary_training_rows(realdata.split(list(folds)))
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
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


#: the unary's perceptron fitted on folds 1-2 (``fit_unary((1, 2))``, rounded to 4 decimals):
#: hidden weights (16, 15) over UNARY_FEATURES, hidden bias, output weights, output bias
UNARY_MLP = (
    np.array([
        [-0.0767, 0.1036, -1.1298, -0.6976, 0.0585, -0.0548, 0.0106, 0.2053,
         0.0097, -0.0412, 0.3270, -0.5569, -0.9727, -0.4027, -0.1818],
        [-0.0120, -0.0762, -0.0956, -0.5044, 0.7255, 0.1720, 0.3797, -0.0932,
         0.2711, 0.0116, -0.2475, 0.4598, 0.3737, 0.0579, -0.1683],
        [0.0209, 0.2868, 0.4757, 0.9447, -0.5798, 0.0210, -0.1796, 0.7630,
         -0.1617, -0.0559, 0.3251, -0.3535, -0.0275, -0.6460, -0.1748],
        [0.2202, 0.2616, 0.8465, 0.5350, -0.0178, 0.1605, 0.0726, 0.0810,
         0.1978, 0.0416, -0.1479, -0.1817, -0.4396, -0.7653, -0.1431],
        [0.2019, 0.2011, 0.2442, 0.3483, -0.0006, 0.0119, -0.0729, -0.0402,
         0.1378, 0.1461, 0.0784, -0.2152, -0.2584, 0.1303, 0.1379],
        [0.1450, -0.0215, -0.1102, 0.0973, -0.0539, -0.3031, 0.1020, 0.0341,
         -0.3020, -0.0006, 0.0244, -0.1161, -0.1618, 0.0230, -0.2147],
        [0.0342, 0.0420, 0.1261, 0.0224, -0.1904, -0.1939, 0.0430, -0.0163,
         -0.1759, -0.1880, 0.1406, 0.0423, -0.0789, 0.0043, -0.1836],
        [0.2087, -0.3749, 0.2943, 0.8141, 0.2683, -0.4466, 0.4852, -1.5531,
         0.3816, 0.4055, 0.7170, -0.7068, 0.1513, -0.2621, -0.4678],
        [-0.5612, 0.1147, -0.5951, -0.0135, -0.2341, -0.1165, -0.0917, -0.4101,
         -1.1359, -0.0371, -0.8012, -0.2432, -0.7174, 0.2099, 1.1642],
        [0.1065, 0.1798, 0.2760, -0.3585, -0.3782, -0.1266, 0.3301, 1.0380,
         -0.2276, -0.1138, -0.1139, 0.3512, -0.2668, 1.4040, -0.3984],
        [-0.0002, -0.0164, 0.0001, -0.0000, -0.0000, -0.0008, 0.0003, -0.0009,
         -0.0000, -0.0038, 0.0002, -0.0000, -0.0000, 0.0003, -0.0002],
        [0.1291, -0.6825, 0.1221, -0.9407, 0.4666, -0.3423, -0.1283, 0.5323,
         0.6210, 0.3591, 0.7025, 0.1523, 1.7458, 0.2498, 0.4179],
        [-0.1698, -0.1131, -0.3141, 0.8976, 0.1320, -0.1608, 0.0525, 0.2042,
         -0.0029, 0.1069, 1.1808, -0.0532, -1.3058, 0.2067, 0.4455],
        [-0.0418, -1.3488, 0.1953, -0.3357, -0.1285, -0.0026, 0.0342, -0.3784,
         -0.0542, -1.7244, -0.1086, -0.9995, 1.5004, 0.1078, 1.3838],
        [0.3604, -0.0086, -1.6864, -0.9203, 0.1579, -0.0254, -0.0770, 0.4246,
         0.3614, -0.1841, 0.4611, -0.1679, -1.1846, 0.2780, -0.2193],
        [0.5062, -0.0429, 0.6271, 0.5087, -0.0433, -0.0098, 0.0339, 0.0064,
         0.3485, 0.0316, -0.1730, -0.1322, -0.5472, -0.6817, 0.0043],
    ]),
    np.array([0.0056, 0.0728, -0.0747, -0.0144, 0.0516, -0.2955, 0.0958, -0.7234,
              0.9852, -0.2483, -0.0002, 0.6555, 0.8320, 1.2779, -0.1502, -0.1592]),
    np.array([-0.8358, 0.3496, -0.6370, -0.4280, -0.1495, 0.0747, 0.0384, 1.7634,
              1.5613, -0.9558, -0.0048, 1.1766, 0.9869, 2.4444, -1.2353, -0.4061]),
    -0.1716,
)
