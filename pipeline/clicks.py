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


def fit_unary(folds=(1, 2), hidden: int = 32, epochs: int = 30, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The unary's perceptron (as :data:`UNARY_MLP`) fitted on the photos of ``folds`` (the
    shipped one: folds 1-2): cross-entropy, Adam (lr 3e-3, weight decay 1e-5), batches of 2048,
    ``epochs`` passes, seeded (the global torch RNG is left as it was)."""
    import torch

    from . import realdata

    x, y = unary_training_rows(realdata.split(list(folds)))
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


#: the unary's perceptron fitted on folds 1-2 (``fit_unary((1, 2))``, rounded to 4 decimals):
#: hidden weights (32, 17) over UNARY_FEATURES, hidden bias, output weights, output bias
UNARY_MLP = (
    np.array([
        [0.1251, 0.2326, 0.0487, -0.2317, -0.0898, 0.1192, 0.0296, 0.3115, 0.0083,
         0.0768, -0.0872, -0.0694, -0.0968, -0.2493, -0.0704, 0.2079, 0.0477],
        [0.2277, -0.1119, 0.1667, 0.0452, 0.1796, -0.0454, 0.1285, 0.0171, 0.0657,
         0.2217, -0.4482, -0.1892, 0.0143, -0.3595, 0.2331, -0.3259, -0.2559],
        [-0.4206, -0.8350, 0.2782, -0.0399, 0.0040, -0.0978, 0.0192, -0.3203, -0.7179,
         -0.8515, -0.2194, -1.0738, 0.3305, 0.4349, 0.1693, 0.4489, 1.2169],
        [0.1559, 0.0857, 0.0295, 0.1637, -0.1344, 0.4442, -0.5894, -0.2136, -0.2894,
         0.0897, -0.1951, -0.2117, -0.0506, -0.0156, -0.1974, -0.1685, -0.0020],
        [0.2671, 0.3355, 0.0872, -0.1415, 0.0441, 0.2362, 0.2277, 0.3014, 0.0700,
         -0.1841, -0.0126, -0.1635, -0.1000, 0.0577, 0.1717, 0.0340, -0.0291],
        [0.0191, 0.1118, 0.1712, -0.0046, -0.1101, 0.2607, 0.1983, 0.3378, -0.0239,
         -0.2313, -0.0704, 0.1967, 0.1294, -0.1343, -0.1197, 0.5627, 0.1118],
        [0.0748, 0.0254, 0.0914, -0.0907, -0.2126, -0.0775, 0.0804, 0.2735, -0.0507,
         0.1344, -0.3075, 0.1909, 0.2737, -0.3176, 0.0716, -0.0475, -0.0615],
        [-0.4328, 0.2148, -0.5040, -0.2388, -0.0079, -0.7131, -0.0821, -0.3788, -0.8091,
         -0.1788, -0.3024, 0.4443, 0.0466, -0.0002, 0.1555, 0.7496, 0.4417],
        [0.7372, 0.1822, 0.3618, -0.0699, 0.0655, -0.0703, 0.0036, -0.6738, -0.4211,
         -0.0488, -0.8480, -0.4979, -0.0480, -0.4798, -1.3733, -0.1742, 0.4839],
        [0.5219, 0.0176, 0.0808, 0.4042, -0.1625, 0.0265, -0.0074, 0.1283, 0.2161,
         -0.4193, -0.2513, -0.1215, 0.3211, 0.1946, 0.1029, 0.1242, -0.2355],
        [0.5487, -0.5027, 0.1292, 0.0849, 0.0734, -0.2158, 0.0038, 0.1078, 0.5078,
         -0.5480, -0.0069, -0.2985, 1.0414, -0.2102, -0.1042, -1.1017, -0.0321],
        [-0.0797, -0.2201, -1.0038, 0.4088, 0.2035, -0.1152, -0.0645, -0.1016, 0.3812,
         0.1569, 0.4669, -0.0073, 0.4599, 0.0437, 0.5398, -1.0543, 0.1576],
        [-0.4077, 0.0865, -0.2421, 0.6704, -0.1588, -0.9811, -0.1484, -0.1623, -0.1360,
         -0.0804, 0.5720, -0.1458, -0.5701, -0.1721, 0.2182, -0.8838, 0.1214],
        [0.2342, -0.1270, 1.0292, -0.6468, 0.2377, -0.0915, 0.0111, 0.7889, 0.4630,
         0.0673, -0.2198, 0.9394, 0.8984, 0.1672, -0.2077, 0.5061, -0.1830],
        [0.3803, 0.1334, 1.4418, 0.3202, -0.1469, 0.0992, -0.0426, -0.1817, -0.1419,
         -0.4317, -0.4797, 0.3347, 0.3489, -0.0992, 0.2872, 0.4705, -0.3809],
        [0.2471, -0.1498, 0.3464, -0.0860, -0.5685, -0.0745, -0.0336, 0.2941, -0.0409,
         0.1823, 0.4506, -0.0025, 0.6774, 1.2623, 0.2548, 0.2379, -0.2327],
        [-0.1292, 0.1476, -1.9094, -1.6314, 0.0351, -0.0559, 0.0425, 0.3265, 0.1785,
         -0.1218, -0.0996, -0.1946, -0.8427, -0.1699, 0.0253, 0.6470, -0.1609],
        [-0.4139, -0.0958, -0.7912, -0.5939, -0.2540, 0.2231, -0.2133, 0.4714, -0.6780,
         -0.0415, -0.5069, 0.3533, -0.1052, 0.1433, 0.2573, -0.3889, 0.2800],
        [0.0498, 0.0641, -0.0083, 0.0524, -0.2678, -0.1141, 0.1326, -0.3134, 0.0494,
         0.1282, -0.1396, -0.0523, 0.0800, 0.0146, 0.0318, 0.1006, -0.2516],
        [-0.0460, 0.0494, 0.0441, 0.4565, 0.1009, -0.6744, -0.1494, -0.6744, -0.1379,
         0.2373, 0.0943, -0.5067, -0.1566, -0.0017, 0.2077, 0.7058, 0.1555],
        [0.1854, 0.0382, 0.6245, 0.0787, -0.2299, 0.2447, 0.1151, 0.2738, -0.1201,
         0.0843, -0.3197, 0.1145, 0.0867, -0.2784, 0.0831, 0.3428, -0.1852],
        [0.0881, -0.2614, -0.1787, 0.1053, -0.1782, -0.1361, 0.1040, -0.2531, 0.2020,
         0.1058, -0.2339, -0.2736, 0.0047, -0.6845, 0.1829, -0.4430, -0.0944],
        [-0.4128, -0.1766, -0.7014, 0.4250, 0.0626, 0.4222, 0.4011, -0.3900, 0.0881,
         0.3263, 0.0998, 0.1644, -0.5285, 0.3092, -0.0311, 0.8884, 0.2820],
        [0.5241, 0.0245, 0.3179, -0.1588, -0.0922, -0.0983, -0.0012, -0.5551, -0.2103,
         0.0417, -0.8259, -0.3878, 0.2496, -0.3966, -1.3410, 0.2683, 0.9598],
        [0.0141, 0.2052, 0.0029, -0.1033, 0.1236, 0.0363, -0.1115, -0.0375, -0.0108,
         -0.0305, -0.0352, 0.1841, 0.0951, -0.2218, 0.0295, 0.2060, 0.0750],
        [-0.2242, 0.1771, 0.2336, 0.2394, -0.0372, -0.1363, 0.0559, 0.9044, -0.6772,
         -0.1506, -0.5163, 0.4434, 0.5578, 0.6288, -0.0252, -0.9470, -0.5232],
        [0.0827, 0.2708, -0.0257, 0.1381, -0.1074, 0.1286, 0.0455, -0.0702, 0.2325,
         0.1545, 0.1481, 0.1071, -0.0472, -0.0441, 0.0557, 0.4223, -0.1921],
        [0.2136, -1.3563, 0.0164, -0.6109, -0.1681, -0.0860, 0.0336, -0.2205, 0.0599,
         -1.5936, -0.0538, -0.5817, 1.4019, 0.0137, 0.0071, 0.0043, 0.5985],
        [-0.2671, 0.1150, 0.5401, 0.3806, -0.5112, 0.0943, -0.2024, 0.4853, -0.1831,
         0.2726, 0.0275, -0.0823, 0.2431, -0.4777, -0.0054, 0.0525, -0.0812],
        [-0.0329, 0.3092, 0.1649, -0.2423, -0.1028, 0.2607, 0.2492, -0.0617, 0.2006,
         0.1409, 0.0870, 0.1803, -0.0074, -0.0861, 0.1182, 0.2623, 0.0686],
        [0.5322, 0.2452, 0.3903, 0.0010, -0.0989, 0.0575, -0.0196, -0.7760, 0.0510,
         -0.0847, -0.6067, -0.3926, 0.3373, -0.3321, -0.9294, -0.4321, 0.4129],
        [0.1819, 0.1946, 0.1207, 0.3296, -0.0820, -0.3504, -0.8102, -0.8330, 0.0821,
         0.0085, -0.4019, -0.3280, -0.5663, -1.1944, -0.0584, 0.5402, -0.1021],
    ]),
    np.array([-0.0106, 0.0437, 0.9077, -0.0424, -0.1536, 0.1832, -0.3159, 0.2385, 0.7577,
              -0.3665, 0.0583, 0.3000, 0.0893, -0.0697, -0.1043, -0.1109, -0.3391, 0.3161,
              -0.1555, 0.0962, -0.2576, 0.2362, 0.2021, 0.7392, 0.1403, -0.1741, 0.1909,
              0.9660, -0.2617, -0.1589, 0.1849, 0.1081]),
    np.array([-0.1147, -0.2094, 1.7795, 0.5595, -0.1056, -0.2312, -0.1991, 0.8775, 1.5985,
              -0.4036, 0.6758, 0.6543, 0.7650, 1.6604, -0.6307, -0.7971, -1.6282, 0.8232,
              0.1032, 0.3046, -0.3579, 0.2295, 0.7002, 2.0537, -0.0929, -1.1614, -0.1554,
              2.2636, -0.3612, -0.1247, 1.5446, -1.0585]),
    -0.0610,
)
