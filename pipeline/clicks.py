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

- unary: a logistic model of "this wrong-side pixel belongs to the click's side" over 14 cues
  (:data:`UNARY_FEATURES`): where it lies relative to the current boundary and to the click, in
  units of the click's depth (the deepest point of an error band of width 2d lies d from the
  current boundary, so its far edge is near 2d: the band's shape); the heat map's level against
  the cut t, against its level at the click, and against its local maximum (a thin part has a
  low but locally high heat map); how much more its Lab colour is found on the click's side of
  the mask around the disc than on the other side; whether a strong image edge lies between it
  and the click; its colour distance to the click. Its weights (:data:`UNARY_WEIGHTS`) were
  fitted once on folds 1-2 of ``pipeline.realdata`` (never on fold 0, the benchmark's) by
  :func:`fit_unary_weights`;
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

#: the unary's cues, in the order of :data:`UNARY_WEIGHTS` (see :func:`click_features`)
UNARY_FEATURES = ("boundary distance / depth", "click distance / depth", "heat - t", "heat - heat at click",
                  "colour log-odds", "edge between pixel and click", "colour distance to click", "log depth",
                  "(boundary distance / depth)^2", "(click distance / depth)^2", "heat / local max - 0.5",
                  "click distance / radius", "boundary distance / radius", "click's heat / local max - 0.5",
                  "bias")
#: logistic weights of the unary, fitted on folds 1-2 by ``fit_unary_weights((1, 2))``
UNARY_WEIGHTS = (-1.0425, -0.7035, 0.2904, 0.0867, 0.5921, -0.2283, -0.1891, -0.58, -0.1354, 0.5628, 0.1061,
                 -1.1788, 0.5299, -0.2436, 3.7547)
_BIG = 1e9


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
    ``weights``: the unary's logistic weights (default :data:`UNARY_WEIGHTS`); ``work_side``:
    images longer than this are decided on a downscaled copy (time per click stays bounded)."""

    name = "clicks"
    takes_points = True

    def __init__(self, selector: str | None = "ridge", reach: float = 3.0, min_radius: float = 0.1,
                 max_radius: float = 0.35, smoothness: float = 1.0, weights=None, work_side: int = 640,
                 cache_size: int = 64):
        if reach <= 0 or not 0 < min_radius <= max_radius <= 1:
            raise ValueError("need reach > 0 and 0 < min_radius <= max_radius <= 1")
        if smoothness < 0:
            raise ValueError("smoothness must be >= 0")
        self.selector_name = selector
        self.reach, self.min_radius, self.max_radius = reach, min_radius, max_radius
        self.smoothness, self.work_side = smoothness, work_side
        self.weights = np.asarray(UNARY_WEIGHTS if weights is None else weights, np.float32)
        if self.weights.shape != (len(UNARY_FEATURES),):
            raise ValueError(f"weights: need {len(UNARY_FEATURES)} numbers, one per UNARY_FEATURES entry")
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
        return np.tensordot(self.weights, feats, 1)

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
# where UNARY_WEIGHTS come from
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
    starter = ClickRefiner(selector=selector, weights=np.zeros(len(UNARY_FEATURES)))
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


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iterations: int = 30) -> np.ndarray:
    """Weights of an L2-regularised logistic regression (Newton's method); x's last column is
    the bias."""
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) / len(y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x / len(y) + l2 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return w


def fit_unary_weights(folds=(1, 2)) -> np.ndarray:
    """The unary's weights fitted on the photos of ``folds`` (UNARY_WEIGHTS: folds 1-2)."""
    from . import realdata

    x, y = unary_training_rows(realdata.split(list(folds)))
    return fit_logistic(x.astype(np.float64), y.astype(np.float64))
