"""Where a new object fits in a background: placement scorers and their registry.

Every scorer follows :class:`Scorer`, one signature for all::

    scorer(background, fg, fg_mask, *, scales=None, existing_masks=(), fg_class=None, top_k=5)
        -> PlacementResult

``background`` and ``fg`` HWC uint8, ``fg_mask`` HW bool of ``fg``'s size; the result holds
per-scale maps in [0, 1] and ranked boxes with scores in [0, 1] (the best map value or box
score is 1 for the weight-free scorer; FOPA's are its network's probabilities). Scorers are
registered in :data:`SCORERS`: ``default`` (:class:`HeuristicScorer`, below, no weights) and
``fopa`` (:class:`pipeline.fopa.FopaScorer`, FOPA's published network). A scorer may ignore
inputs it has no use for (FOPA ignores ``existing_masks``; the default ignores ``fg``'s pixels).

The default, ``heatmap(background, fg_mask, ...)``, scores every box centre at every scale; the best box
follows the paper's eq. 4: centre = argmax of the map, size = scale x object size. Scores
combine, at a working resolution of at most 128 px:

- free space: the box should not cover existing objects (their masks) or busy,
  high-detail regions (edge density);
- a support prior: objects rest on surfaces, so lower positions score higher; flying
  classes (birds, planes, kites, ...) prefer the upper part of the image instead;
- scale consistency: when objects are present, boxes near their typical size score higher.

Scales are the object's longer side as a fraction of the background's shorter side; the
default is FOPA's i/18 for i = 2..16. Boxes never leave the image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, Sequence, runtime_checkable

import cv2
import numpy as np

from .errors import PipelineError
from .images import check_image
from .masks import bbox
from .plugins import Registry

FLYING = {"bird", "aeroplane", "airplane", "kite", "frisbee", "plane", "balloon"}
DEFAULT_SCALES = tuple(round(i / 18, 4) for i in range(2, 17))
WORK_SIDE = 128
MAP_MAX_PIXELS = 1_000_000  # placement maps larger than this are kept scaled (PlacementResult.map_at)


class PlacementError(PipelineError, ValueError):
    """The object cannot be placed as asked (empty mask, does not fit, bad inputs)."""


@dataclass
class PlacementResult:
    """What a scorer returns. ``maps``: (S, H, W) float32 in [0, 1] at background size (or,
    for a background over MAP_MAX_PIXELS, scaled: read them with :meth:`map_at`), the
    score of a box centred at each pixel, per scale (0 = the box would not fit there);
    ``boxes``: ranked ``(scale, XYXY box in background pixels, score in [0, 1])``."""

    scales: tuple[float, ...]
    maps: np.ndarray
    boxes: list[tuple[float, tuple[int, int, int, int], float]]

    def map_at(self, index: int, hw: tuple[int, int]) -> np.ndarray:
        """Map ``index`` at size ``hw`` = (H, W) (the weight-free scorer keeps maps of a large
        background scaled to at most MAP_MAX_PIXELS; they are resized only for display)."""
        m = self.maps[index]
        if m.shape == tuple(hw):
            return m
        return cv2.resize(m, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)

    @property
    def best(self) -> tuple[float, int, int]:
        """(scale, x, y) of the best box centre, in background pixels."""
        s, (x1, y1, x2, y2), _ = self.boxes[0]
        return s, (x1 + x2) // 2, (y1 + y2) // 2


GROUND = 0.85  # where a standing object's box bottom scores best, as a fraction of the height


def box_size(scale: float, fg_hw: tuple[int, int], bg_hw: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of the box for an object of size fg_hw at ``scale`` in a background bg_hw."""
    fh, fw = fg_hw
    longer = scale * min(bg_hw)
    k = longer / max(fh, fw)
    return max(1, round(fw * k)), max(1, round(fh * k))


def box_at(centre_xy: tuple[float, float], size_wh: tuple[int, int], bg_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Box of ``size_wh`` centred at ``centre_xy``, shifted to lie inside the image."""
    h, w = bg_hw
    bw, bh = min(size_wh[0], w), min(size_wh[1], h)
    x1 = int(round(centre_xy[0] - bw / 2))
    y1 = int(round(centre_xy[1] - bh / 2))
    x1, y1 = min(max(x1, 0), w - bw), min(max(y1, 0), h - bh)
    return x1, y1, x1 + bw, y1 + bh


def _box_mean(integral: np.ndarray, bw: int, bh: int) -> np.ndarray:
    """Mean of a map over every bw x bh box, indexed by the box's top-left corner."""
    s = integral[bh:, bw:] - integral[:-bh, bw:] - integral[bh:, :-bw] + integral[:-bh, :-bw]
    return s / float(bw * bh)


def heatmap(background: np.ndarray, fg_mask: np.ndarray, scales: Sequence[float] = DEFAULT_SCALES,
            existing_masks: Sequence[np.ndarray] = (), fg_class: str | None = None, top_k: int = 5,
            weights: tuple[float, float, float, float] = (1.0, 0.5, 0.6, 0.4)) -> PlacementResult:
    """Score placements of an object with mask ``fg_mask`` (its own image's HW bool).

    ``background`` HWC uint8; ``existing_masks`` HW bool masks of objects already there.
    Returns per-scale maps in [0, 1] at background size and the ``top_k`` boxes, ranked
    (deterministic: ties break by scale, then position)."""
    bg = check_image(background)
    H, W = bg.shape[:2]
    if np.ndim(fg_mask) != 2:
        raise PlacementError(f"the object mask must be (H, W) bool, got shape {np.shape(fg_mask)}")
    fb = bbox(np.asarray(fg_mask).astype(bool))
    if fb is None:
        raise PlacementError("the object mask is empty")
    fg_hw = (fb[3] - fb[1], fb[2] - fb[0])
    for m in existing_masks:
        if np.asarray(m).shape != (H, W):
            raise PlacementError(f"an existing mask is {np.asarray(m).shape}, the background is {(H, W)}")
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise PlacementError("scales must be positive")

    f = WORK_SIDE / max(H, W)
    h, w = max(8, round(H * f)), max(8, round(W * f))
    small = cv2.resize(bg, (w, h), interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    edges = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    edges = np.clip(edges / (np.percentile(edges, 95) + 1e-6), 0, 1)
    occupied = np.zeros((h, w), np.float32)
    areas = []
    for m in existing_masks:
        m = np.asarray(m, bool)
        areas.append(m.sum() / (H * W))
        occupied = np.maximum(occupied, cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA))
    i_edges = cv2.integral(edges)
    i_occ = cv2.integral(occupied)
    flying = (fg_class or "").lower() in FLYING
    typical = float(np.median(areas)) if areas else None

    w_free, w_detail, w_support, w_scale = weights
    # the maps are only looked at: beyond MAP_MAX_PIXELS they are kept at a scaled size (S maps
    # of a 64-megapixel photo at full size would be 4 GB); boxes are always in background pixels
    g = min(1.0, (MAP_MAX_PIXELS / (H * W)) ** 0.5)
    MH, MW = (H, W) if g == 1.0 else (max(1, round(H * g)), max(1, round(W * g)))
    maps = np.zeros((len(scales), MH, MW), np.float32)
    cands = []
    for si, s in enumerate(scales):
        bw_full, bh_full = box_size(s, fg_hw, (H, W))
        if bw_full > W or bh_full > H:
            continue  # this scale does not fit: its map stays 0
        bw, bh = max(1, round(bw_full * f)), max(1, round(bh_full * f))
        if bw > w or bh > h:
            continue
        occ = _box_mean(i_occ, bw, bh)  # (h - bh + 1, w - bw + 1), by top-left corner
        det = _box_mean(i_edges, bw, bh)
        ys = (np.arange(occ.shape[0]) + bh) / h  # box bottom, 0 top .. 1 bottom
        centre_y = (np.arange(occ.shape[0]) + bh / 2) / h
        # standing objects rest low in the picture, but not on its bottom edge (a box there is
        # cut by the frame): support rises to 1 at 85 % of the height and falls below it
        standing = np.where(ys <= GROUND, ys / GROUND, 1 - (ys - GROUND) / (1 - GROUND) * 0.5)
        support = (1 - centre_y if flying else standing)[:, None]
        score = w_free * (1 - occ) + w_detail * (1 - det) + w_support * support
        if typical is not None:
            rel = (bw_full * bh_full) / (H * W) / max(typical, 1e-6)
            score = score + w_scale * np.exp(-0.5 * (np.log(rel) / 0.7) ** 2)
        score = score / (w_free + w_detail + w_support + (w_scale if typical is not None else 0))
        # back to (map) pixels, by box centre
        full = np.zeros((MH, MW), np.float32)
        if g == 1.0:
            cy0, cx0 = bh_full // 2, bw_full // 2
            ch, cw = H - bh_full + 1, W - bw_full + 1
        else:
            cy0, cx0 = min(MH - 1, int(bh_full * g) // 2), min(MW - 1, int(bw_full * g) // 2)
            ch, cw = max(1, min(MH - cy0, round((H - bh_full + 1) * g))), max(1, min(MW - cx0, round((W - bw_full + 1) * g)))
        full[cy0 : cy0 + ch, cx0 : cx0 + cw] = cv2.resize(score.astype(np.float32), (cw, ch), interpolation=cv2.INTER_LINEAR)
        maps[si] = full
        # the boxes are ranked on the map the user is shown, not on the working-resolution
        # score it was resized from: the best box's centre is the shown map's argmax (eq. 4),
        # never a peak that resizing moved or cooled (tests/test_placement.py, real photos)
        for yy, xx in _peaks(full, 3):
            cx, cy = (xx + 0.5) / g - 0.5, (yy + 0.5) / g - 0.5  # map pixel -> background pixel centre
            cands.append((float(full[yy, xx]), si, box_at((cx, cy), (bw_full, bh_full), (H, W))))
    if not cands:
        raise PlacementError(f"the object does not fit the {W}x{H} background at any of the scales {scales}")
    hi = float(maps.max())  # the best box scores 1, as the hottest pixel of the maps
    if hi > 0:
        maps /= hi
    cands.sort(key=lambda c: (-c[0], c[1], c[2]))
    boxes, taken = [], []
    for sc, si, box in cands:
        if all(_iou(box, b) < 0.5 for b in taken):
            taken.append(box)
            boxes.append((scales[si], box, float(sc / hi) if hi > 0 else 0.0))
        if len(boxes) >= top_k:
            break
    return PlacementResult(scales, maps, boxes)


def rank_boxes(maps: np.ndarray, scales: tuple[float, ...], sizes: Sequence[tuple[int, int]],
               bg_hw: tuple[int, int], top_k: int = 5, peaks_per_scale: int = 3):
    """Ranked, non-overlapping (IoU < 0.5) boxes from per-scale centre maps (S, H, W).

    ``sizes``: the (w, h) box of each scale. Deterministic: ties break by scale, then box."""
    cands = []
    for si, (score, size) in enumerate(zip(maps, sizes)):
        if score.max() <= 0:
            continue
        for yy, xx in _peaks(score, peaks_per_scale):
            cands.append((float(score[yy, xx]), si, box_at((xx, yy), size, bg_hw)))
    cands.sort(key=lambda c: (-c[0], c[1], c[2]))
    boxes, taken = [], []
    for sc, si, box in cands:
        if all(_iou(box, b) < 0.5 for b in taken):
            taken.append(box)
            boxes.append((scales[si], box, sc))
        if len(boxes) >= top_k:
            break
    if not boxes:
        raise PlacementError(f"the object does not fit the {bg_hw[1]}x{bg_hw[0]} background at any of the scales {scales}")
    return boxes


@runtime_checkable
class Scorer(Protocol):
    """What every placement scorer is (see the module docstring for the contract)."""

    name: str

    def __call__(self, background: np.ndarray, fg: np.ndarray, fg_mask: np.ndarray, *,
                 scales: Sequence[float] | None = None, existing_masks: Sequence[np.ndarray] = (),
                 fg_class: str | None = None, top_k: int = 5) -> PlacementResult: ...


class HeuristicScorer:
    """The weight-free scorer (free space, support, scale consistency): :func:`heatmap` behind
    the common signature. ``fg`` is checked against ``fg_mask`` but only the mask's shape is used."""

    name: ClassVar[str] = "default"

    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 0.5, 0.6, 0.4)):
        self.weights = tuple(weights)

    def __call__(self, background, fg, fg_mask, *, scales=None, existing_masks=(), fg_class=None, top_k=5):
        fg = check_image(fg)
        fg_mask = np.asarray(fg_mask)
        if fg_mask.shape != fg.shape[:2]:
            raise PlacementError(f"foreground mask {fg_mask.shape} does not match its image {fg.shape[:2]}")
        return heatmap(background, fg_mask, DEFAULT_SCALES if scales is None else scales, existing_masks,
                       fg_class, top_k, self.weights)


SCORERS: Registry[Scorer] = Registry("placement scorer", PlacementError)
SCORERS.register("default", HeuristicScorer)
SCORERS.register("fopa", "pipeline.fopa:FopaScorer")  # imported on first use (torch network)
DEFAULT_SCORER = "default"


def get_scorer(name: str = DEFAULT_SCORER, checkpoint: str | None = None, **options) -> Scorer:
    """Build a registered scorer from ``checkpoint`` and ``options`` (``device``...); each
    scorer takes the ones it uses (fopa: checkpoint, device; default: none)."""
    return SCORERS.create(name, checkpoint=checkpoint, **options)


def _peaks(score: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Up to n local maxima (3x3) of a map, highest first (zeros, where a box does not fit, are none)."""
    dil = cv2.dilate(score.astype(np.float32), np.ones((3, 3), np.uint8))
    ys, xs = np.nonzero((score >= dil - 1e-9) & (score > 0))
    order = np.lexsort((xs, ys, -score[ys, xs]))[:n]
    return [(int(ys[i]), int(xs[i])) for i in order]


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0
