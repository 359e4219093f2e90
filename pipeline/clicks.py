"""Clicks that count: a click refiner that honours every click exactly, and the standard click
simulator of interactive-segmentation papers (NoC@85/90).

The ``clicks`` refiner starts from the heat map cut at the threshold selector's t
(:mod:`pipeline.thresholds`), snapped to the photo near its boundary before any click (one
minimum cut over a band of 2 % of the longer side around the cut's boundary: the heat map
against t, the colours of the object's and the background's rings just beyond the band, a
contrast-sensitive Potts term; :func:`snap_start`), and applies the clicks in order. A click (x, y) with label l
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
  border. The cues are combined by a one-hidden-layer perceptron of 32 units (:data:`UNARY_ASSET`,
  609 numbers) fitted once on folds 1-2 of
  ``pipeline.realdata`` (never on fold 0, the benchmark's) by ``python -m pipeline.clicks_training``, from
  simulated sessions (two soft maps per photo, each photo at 320 and at 640 px) where each
  pixel of a click's disc is labelled by the true mask; 30 % of those clicks are a sloppier
  user's (:func:`sloppy_click`: anywhere in the error region at least half as deep as its
  deepest point), so that the unary does not rely on a click lying exactly where the standard
  simulator puts it;
- pairwise: a contrast-sensitive Potts term on 4-neighbours (``smoothness`` x exp(-beta |dI|^2),
  beta from the window's mean squared colour step, as GrabCut's);
- hard constraints: the click and a core of 0.3 x its depth around it are l; every earlier
  click of the other label, the disc's rim and everything outside the disc stay as they are;
  so does every pixel less than ``other_share`` (0.5) as far from an earlier click of the
  other label as from this click (that click's ground, which wins over the core: without it,
  two nearby clicks of opposite labels on an ambiguous stretch, e.g. a snow-covered leg on
  snow, kept turning each other's pixels back and forth); the pixels already on l are l.

Only the turned part connected to the click is kept. So:

- the clicked pixel is always on the clicked side (it is forced, and no later click can undo
  it: a later click only turns pixels to *its* label, and clicks of the other label are fixed
  to their side in its cut);
- a click changes nothing outside its disc (``RefineResult.info["radii"]`` gives each radius,
  ``info["discs"]`` each disc as (x, y, radius)), nor an earlier click's ground (checked at
  full resolution, also when the cut is decided on a downscaled copy).

Given a ``start`` mask (a mask of one's own), the clicks apply to it instead of the snapped cut,
each changing only its disc of it. The studio does not pass one: from the mask it shows before
the first click (the heat map at the ``mix`` selector's t, not snapped) the clicks need far more
(bench_masks: NoC@90 5.15 against 3.56 from the refiner's own start), so the first click there
brings the refiner's start with it.

A click on a pixel already on its side changes nothing (it still pins that pixel for later
clicks). Replaying the clicks is memoised per (image, heat map, click prefix), so the k-th
click of a session costs one cut, not k. A disc wider than ``work_radius`` pixels is decided on a
copy of the image downscaled to bring it to that radius (time per click stays bounded on large
images and large discs; the result is still clipped to the full-resolution disc and wrong side).
"""
from __future__ import annotations

import functools
import math
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from .attention import AttentionMaps
from .refine import BaseRefiner, RefinementError, RefineResult, check_inputs

#: the unary's cues, the inputs of its perceptron (:data:`UNARY_ASSET`) in this order (see :func:`click_features`)
UNARY_FEATURES = ("boundary distance / depth", "click distance / depth", "heat - t", "heat - heat at click",
                  "colour log-odds", "edge between pixel and click", "colour distance to click", "log depth",
                  "(boundary distance / depth)^2", "(click distance / depth)^2", "heat / local max - 0.5",
                  "click distance / radius", "boundary distance / radius", "click's heat / local max - 0.5",
                  "image border distance / depth", "click's depth is its distance to the border", "bias")
_BIG = 1e9
#: the start's snap (:func:`snap_start`): band (fraction of the longer side), colour weight and
#: Lab histogram bins per axis of its rings, chosen by cross-validation between the halves of
#: folds 1-2; the shipped unary's sessions start there
START_BAND, START_COLOUR, START_BINS = 0.02, 0.3, 32
#: a click leaves alone the pixels less than this share as far from an earlier click of the
#: other label as from itself (that click's ground; chosen by cross-validation between the
#: halves of folds 1-2, see bench/bench_masks.py's NOTE)
OTHER_SHARE = 0.5
#: the shipped unary: a one-hidden-layer perceptron (32 ReLU units) over the cues, fitted on folds
#: 1-2 of ``pipeline.realdata`` by ``python -m pipeline.clicks_training`` (see assets/README.md)
UNARY_ASSET = Path(__file__).resolve().parents[1] / "assets" / "clicks_unary.npz"
RETRAIN = "python -m pipeline.clicks_training --out assets/clicks_unary.npz"


def load_unary(path: str | Path = UNARY_ASSET) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The unary's perceptron from an .npz written by :func:`save_unary`: (hidden weights
    (k, F), hidden bias (k,), output weights (k,), output bias), F = len(UNARY_FEATURES).
    Raises ``RefinerUnavailable`` naming the file and the command that remakes it when the file
    is missing, unreadable, or fitted on other cues than this code computes."""
    from .refine import RefinerUnavailable

    try:
        with np.load(path, allow_pickle=False) as d:
            names = tuple(str(x) for x in d["features"])
            w1, b1, w2, b2 = (np.asarray(d[k], np.float64) for k in ("w1", "b1", "w2", "b2"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise RefinerUnavailable(f"cannot read the clicks refiner's unary {path}: {e}; remake it with `{RETRAIN}`") from e
    if names != UNARY_FEATURES or w1.ndim != 2 or w1.shape[1] != len(UNARY_FEATURES) or b1.shape != w1.shape[:1] \
            or w2.shape != w1.shape[:1] or b2.shape != ():
        raise RefinerUnavailable(f"{path} was fitted on other cues than this code computes: remake it with `{RETRAIN}`")
    return w1, b1, w2, float(b2)


def save_unary(path: str | Path, unary, **provenance) -> None:
    """Write ``unary`` (as :func:`load_unary` returns it) with the cue names and ``provenance``
    (e.g. folds, settings of the fit) to an .npz."""
    w1, b1, w2, b2 = unary
    np.savez(path, w1=np.asarray(w1, np.float64), b1=np.asarray(b1, np.float64), w2=np.asarray(w2, np.float64),
             b2=np.float64(b2), features=np.array(UNARY_FEATURES), **{k: np.asarray(v) for k, v in provenance.items()})


@functools.lru_cache(maxsize=1)
def shipped_unary() -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """:func:`load_unary` of :data:`UNARY_ASSET`, read once per process."""
    return load_unary()


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
    ``other_share``: a pixel less than this share as far from an earlier click of the other
    label as from the click being applied stays as it is (0: no such ground);
    ``unary``: the unary's perceptron (hidden weights (k, F), hidden bias (k,), output weights
    (k,), output bias; default: the shipped one, :data:`UNARY_ASSET`); ``work_radius``: a disc of a larger radius (px)
    is decided on a copy downscaled to this radius (time per click stays bounded); ``start_band`` /
    ``start_colour``: the start's snap to the photo (:func:`snap_start`; ``start_band=0``: the plain
    cut). The shipped unary was fitted on sessions from the default start: another start wants
    it refitted."""

    name = "clicks"
    takes_points = True

    def __init__(self, selector: str | None = "ridge", reach: float = 3.0, min_radius: float = 0.1,
                 max_radius: float = 0.35, smoothness: float = 1.0, unary=None, work_radius: int = 112,
                 cache_size: int = 64, start_band: float = START_BAND, start_colour: float = START_COLOUR,
                 other_share: float = OTHER_SHARE):
        if reach <= 0 or not 0 < min_radius <= max_radius <= 1:
            raise ValueError("need reach > 0 and 0 < min_radius <= max_radius <= 1")
        if not 0 <= other_share < 1:
            raise ValueError("other_share must be in [0, 1)")
        self.other_share = other_share
        if smoothness < 0 or start_band < 0 or start_colour < 0:
            raise ValueError("smoothness, start_band and start_colour must be >= 0")
        self.selector_name = selector
        self.start_band, self.start_colour = start_band, start_colour
        self.reach, self.min_radius, self.max_radius = reach, min_radius, max_radius
        self.smoothness, self.work_radius = smoothness, work_radius
        self.unary = tuple(np.asarray(a, np.float32) for a in (shipped_unary() if unary is None else unary))
        if len(self.unary) != 4 or self.unary[0].shape[1:] != (len(UNARY_FEATURES),):
            raise ValueError(f"unary: (hidden weights (k, {len(UNARY_FEATURES)}), hidden bias, output weights, output bias)")
        self._selector = None
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.cache_size = cache_size

    def cut_threshold(self, image: np.ndarray, heat: np.ndarray) -> float:
        """The selector's t for this heat map (0.5 without a selector)."""
        if self.selector_name is None:
            return 0.5
        if self._selector is None:
            from .thresholds import get_selector

            self._selector = get_selector(self.selector_name)
        return self._selector(image, heat).threshold

    def start_mask(self, image: np.ndarray, heat: np.ndarray) -> tuple[np.ndarray, float]:
        """The mask before any click and the cut t: ``heat >= t`` with the selector's t (0.5
        without a selector), snapped to the photo near its boundary (:func:`snap_start`)."""
        t = self.cut_threshold(image, heat)
        cut = heat >= t
        if not cut.any():
            t, cut = 0.5, heat >= 0.5
        if self.start_band > 0 and cut.any() and not cut.all():
            return snap_start(image, heat, t, self.start_band, self.start_colour), t
        return cut, t

    def __call__(self, image, heat, attention: AttentionMaps | None = None, points=None, labels=None,
                 start: np.ndarray | None = None, start_threshold: float | None = None) -> RefineResult:
        """The mask after the clicks ``points`` (N, 2) XY / ``labels`` (N,) 1 object, 0 background,
        applied in order to ``start`` ((H, W) bool, a mask of one's own, of which each click
        changes only its disc; None: :meth:`start_mask`, what the unary was fitted from).
        ``start_threshold``: the cut t the unary's heat cues take with ``start`` (None: the
        selector's)."""
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
        if start is not None:
            start = np.asarray(start, bool)
            if start.shape != (h, w):
                raise RefinementError(f"the start mask is {start.shape}, the image {(h, w)}")
        key = (image.shape, hash(image.tobytes()), hash(heat.tobytes()),
               None if start is None else (hash(np.packbits(start).tobytes()), start_threshold))
        # the longest memoised prefix of these clicks, then one cut per new click
        with self._lock:  # one refiner may serve many studio sessions at once: the memo is shared
            k = len(clicks)
            while k > 0 and (key, tuple(clicks[:k])) not in self._cache:
                k -= 1
            known = self._cache.get((key, tuple(clicks[:k])))
        if known is None:  # no click of these memoised: the start
            if start is None:
                known = (*self.start_mask(image, heat), [])
            else:
                t = self.cut_threshold(image, heat) if start_threshold is None else float(start_threshold)
                known = (start.copy(), t, [])
            self._remember((key, ()), known)
        mask, t, discs = known
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
        with self._lock:
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


def disc_and_core(mask: np.ndarray, click: tuple[int, int, int], depth: float, radius: float,
                  box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(disc, wrong, core), bool arrays over the window ``box`` = (x0, x1, y0, y1) of
    :func:`click_region`: the click's disc, the pixels the mask has on the wrong side, and the
    click's core (a disc of 0.3 x depth around it, wrong side only), which the click turns for sure."""
    x, y, label = click
    x0, x1, y0, y1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1]
    disc = (xx - x) ** 2 + (yy - y) ** 2 <= radius * radius
    wrong = mask[y0:y1, x0:x1] != bool(label)
    core = np.zeros(disc.shape, np.uint8)
    cv2.circle(core, (x - x0, y - y0), max(1, int(round(0.3 * depth))), 1, -1)
    return disc, wrong, (core > 0) & wrong


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
    # nor their ground (decided at full resolution: a cut on a downscaled copy only approximates it)
    keep &= ~other_clicks_ground(click, earlier, (x0, x1, y0, y1), cfg.other_share)
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
    depth, radius, box, dist = click_region(mask, click, cfg.reach, cfg.min_radius, cfg.max_radius)
    x0, x1, y0, y1 = box
    disc, wrong, core = disc_and_core(mask, click, depth, radius, box)
    # fixed: 1 = the click's side, 2 = stays as it is, 0 = decided by the cut
    fixed = np.zeros(disc.shape, np.uint8)
    fixed[~wrong] = 1
    fixed[wrong & ~disc] = 2
    rim = wrong & disc & (cv2.dilate((~disc).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    fixed[rim] = 2  # the disc's rim on the wrong side stays as it is: the change is local
    feats = click_features(image, mask, heat, t, click, depth, radius, box, dist, disc & wrong, core)
    cost = -cfg.unary_logit(feats)  # > 0: keeping is cheaper, < 0: turning
    fixed[core & (fixed != 2)] = 1
    for ex, ey, el in earlier:
        if el != label and x0 <= ex < x1 and y0 <= ey < y1:
            fixed[ey - y0, ex - x0] = 2
    # an earlier click's ground stays as it is, even inside this click's core
    fixed[wrong & other_clicks_ground(click, earlier, box, cfg.other_share)] = 2
    fixed[y - y0, x - x0] = 1
    maxflow = _maxflow()
    graph = maxflow.Graph[float]()
    ids = graph.add_grid_nodes(disc.shape)
    if cfg.smoothness > 0:
        add_contrast_potts(graph, ids, image[y0:y1, x0:x1], cfg.smoothness)
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


def other_clicks_ground(click: tuple[int, int, int], earlier: list, box: tuple[int, int, int, int],
                        share: float) -> np.ndarray:
    """(y1 - y0, x1 - x0) bool over ``box`` = (x0, x1, y0, y1): the pixels less than ``share`` as
    far from one of the ``earlier`` clicks of the other label as from ``click`` (x, y, label).
    A click there would undo what that earlier click said about its own surroundings; all False
    when ``share`` is 0 or there is no such click."""
    x, y, label = click
    x0, x1, y0, y1 = box
    ground = np.zeros((y1 - y0, x1 - x0), bool)
    others = [(ex, ey) for ex, ey, el in earlier if el != label]
    if share <= 0 or not others:
        return ground
    yy, xx = np.mgrid[y0:y1, x0:x1]
    to_this = (xx - x) ** 2 + (yy - y) ** 2
    for ex, ey in others:
        ground |= (xx - ex) ** 2 + (yy - ey) ** 2 < share * share * to_this
    return ground


def add_contrast_potts(graph, ids: np.ndarray, image: np.ndarray, weight: float) -> None:
    """Add to a PyMaxflow grid graph over (H, W) ``ids`` the contrast-sensitive Potts term of
    the (H, W, 3) ``image`` on 4-neighbours: ``weight`` x exp(-beta |dI|^2), beta from the
    image's mean squared colour step (as GrabCut's)."""
    crop = image.astype(np.float32)
    step_x = ((crop[:, 1:] - crop[:, :-1]) ** 2).sum(-1)
    step_y = ((crop[1:] - crop[:-1]) ** 2).sum(-1)
    beta = 1.0 / (2 * max(float(np.mean(np.concatenate([step_x.ravel(), step_y.ravel()]))), 1e-6))
    wx = np.zeros(ids.shape, np.float32)
    wx[:, :-1] = weight * np.exp(-beta * step_x)
    wy = np.zeros(ids.shape, np.float32)
    wy[:-1] = weight * np.exp(-beta * step_y)
    graph.add_grid_edges(ids, weights=wx, structure=np.array([[0, 0, 0], [0, 0, 1], [0, 0, 0]]), symmetric=True)
    graph.add_grid_edges(ids, weights=wy, structure=np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0]]), symmetric=True)


def snap_start(image: np.ndarray, heat: np.ndarray, t: float, band: float = START_BAND, colour: float = START_COLOUR,
               heat_weight: float = 8.0, smoothness: float = 1.0, bins: int = START_BINS) -> np.ndarray:
    """The start mask, (H, W) bool: the cut ``heat >= t`` re-decided near its boundary by one
    minimum cut before any click. Only pixels within ``band`` x the longer image side of the
    cut's boundary may change. Their unary is ``heat_weight`` x (heat - t) plus ``colour`` x the
    Lab log-odds of two histograms (``bins`` per axis, half a count added to each bin; 32
    per axis tells apart near colours of object and background that 12 lumps together: about
    0.3 NoC@90 better in cross-validation) taken from rings of the cut: the object
    ring between 1 and 3 band widths inside the boundary, the background ring as far outside
    (the object against its surroundings, not against the whole photo's clutter, which made a
    global GrabCut-like start worse); the pairwise term is :func:`add_contrast_potts` with
    ``smoothness``. Parts of the result that do not touch the cut are dropped and holes it
    opened are filled, so the start stays one shape with the cut's topology. The plain cut is
    returned when a ring has fewer than 20 pixels with either fallback."""
    cut = heat >= t
    width = max(2.0, band * max(heat.shape))
    inside = cv2.distanceTransform(cut.astype(np.uint8), cv2.DIST_L2, 5)
    outside = cv2.distanceTransform((~cut).astype(np.uint8), cv2.DIST_L2, 5)
    obj, bg = cut & (inside >= width) & (inside <= 3 * width), ~cut & (outside >= width) & (outside <= 3 * width)
    if obj.sum() < 20 or bg.sum() < 20:  # a thin object or background: the whole of each side beyond the band
        obj, bg = cut & (inside >= width), ~cut & (outside >= width)
    if obj.sum() < 20 or bg.sum() < 20:
        return cut
    q = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB).astype(np.int32) * bins // 256
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    h_obj = np.bincount(idx[obj], minlength=bins ** 3) + 0.5
    h_bg = np.bincount(idx[bg], minlength=bins ** 3) + 0.5
    log_odds = np.clip(np.log(h_obj / h_obj.sum()) - np.log(h_bg / h_bg.sum()), -4, 4)[idx]
    unary = heat_weight * (heat - t) + colour * log_odds  # > 0: object
    free = np.where(cut, inside, outside) < width
    unary = np.where(free, unary, np.where(cut, _BIG, -_BIG))
    maxflow = _maxflow()
    graph = maxflow.Graph[float]()
    ids = graph.add_grid_nodes(cut.shape)
    if smoothness > 0:
        add_contrast_potts(graph, ids, image, smoothness)
    graph.add_grid_tedges(ids, np.maximum(unary, 0), np.maximum(-unary, 0))  # the source side is the object
    graph.maxflow()
    snapped = ~graph.get_grid_segments(ids)
    # one shape with the cut's topology: components touching the cut, holes not in the cut's background filled
    _, comp = cv2.connectedComponents(snapped.astype(np.uint8), connectivity=4)
    kept = np.unique(comp[snapped & cut])
    snapped = np.isin(comp, kept[kept > 0])
    _, comp = cv2.connectedComponents((~snapped).astype(np.uint8), connectivity=4)
    open_ = np.unique(comp[~snapped & ~cut])
    snapped |= ~np.isin(comp, open_[open_ > 0])
    return snapped if snapped.any() else cut


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
    rel = heat_over_local_max(heat, box)  # over the window
    post = colour_likelihood(image, mask, bool(label), box, undecided, core)
    log_odds = np.clip(np.log(post + 1e-4) - np.log(1 - post + 1e-4), -5, 5) / 2
    lab = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2LAB).astype(np.float32)
    grad = np.sqrt((cv2.Sobel(lab, cv2.CV_32F, 1, 0, ksize=3) ** 2 + cv2.Sobel(lab, cv2.CV_32F, 0, 1, ksize=3) ** 2).sum(-1))
    grad /= float(np.percentile(grad, 90)) + 1e-3
    between = np.clip(max_on_segments_to(grad, x - x0, y - y0, radius), 0, 4)
    ref = lab[core].mean(0) if core.any() else lab[y - y0, x - x0]
    colour_dist = np.clip(np.sqrt(((lab - ref) ** 2).sum(-1)) / 20.0, 0, 5)
    feats = [bd, cd, sign * (hw - t) * 5, sign * (hw - float(heat[y, x])) * 5, log_odds, between, colour_dist,
             np.full(bd.shape, math.log(depth)), bd ** 2 / 6, cd ** 2 / 8, sign * (rel - 0.5) * 4,
             cd * depth / radius, np.clip(bd * depth / radius, 0, 2), np.full(bd.shape, sign * (rel[y - y0, x - x0] - 0.5) * 4),
             np.clip(border / depth, 0, 6), np.full(bd.shape, float(min(x + 1, y + 1, w - x, h - y) <= depth + 0.5)),
             np.ones(bd.shape)]
    return np.stack(feats).astype(np.float32)


def heat_over_local_max(heat: np.ndarray, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """(H, W) float32: the heat map over its maximum within a disc of 8 % of the longer side
    (at least 0.05): a thin part of the object has a low heat map that is still a local peak.
    With ``box`` = (x0, x1, y0, y1), only that window, (y1 - y0, x1 - x0): the same values, from
    the window and a margin of the disc's radius (a click's cues need its window only, and the
    whole map cost 2.2 s per click at 2048 x 2048)."""
    k = max(3, int(0.08 * max(heat.shape)) | 1)
    if box is not None:
        x0, x1, y0, y1 = box
        r = k // 2
        X0, Y0 = max(0, x0 - r), max(0, y0 - r)
        part = heat[Y0:min(heat.shape[0], y1 + r), X0:min(heat.shape[1], x1 + r)]
        local = cv2.dilate(part, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        win = (slice(y0 - Y0, y1 - Y0), slice(x0 - X0, x1 - X0))
        return part[win] / np.maximum(local[win], 0.05)
    local = cv2.dilate(heat, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return heat / np.maximum(local, 0.05)


def max_on_segments_to(values: np.ndarray, cx: int, cy: int, radius: float) -> np.ndarray:
    """For each pixel of (H, W) float32 ``values``, the maximum of ``values`` on the segment from
    (cx, cy) to it, for pixels within ``radius`` + 2 of it (farther ones take their ray's value
    at that distance): a polar resampling around (cx, cy) (360 rays, one sample per pixel of
    radius, bilinear, 0 outside the image), a running maximum along each ray, resampled back.
    Both resamplings are explicit remaps with a border rule (``cv2.warpPolar`` leaves pixels
    beyond its radius, and samples outside the image, uninitialised: the cue then changed from
    run to run)."""
    h, w = values.shape
    r = float(radius) + 2
    n_rho, n_theta = int(r) + 1, 360
    rho = np.arange(n_rho, dtype=np.float32) * (r / n_rho)
    theta = np.arange(n_theta, dtype=np.float32) * np.float32(2 * math.pi / n_theta)
    map_x = (cx + rho[None, :] * np.cos(theta)[:, None]).astype(np.float32)
    map_y = (cy + rho[None, :] * np.sin(theta)[:, None]).astype(np.float32)
    polar = cv2.remap(np.ascontiguousarray(values, np.float32), map_x, map_y, cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    polar = np.maximum.accumulate(polar, axis=1)
    polar = np.vstack([polar, polar[:1]])  # the ray at 360 degrees is the one at 0: angles wrap
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    col = np.sqrt(dx * dx + dy * dy) * np.float32(n_rho / r)
    row = np.mod(np.arctan2(dy, dx), np.float32(2 * math.pi)) * np.float32(n_theta / (2 * math.pi))
    return cv2.remap(polar, col, row, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


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
