"""Threshold selectors: where to cut a soft heat map into an object mask, chosen by name.

A heat map is (H, W) float in [0, 1]; the mask is ``heat >= t`` for one t of the sweep
(:data:`pipeline.masks.DEFAULT_THRESHOLDS`). Every selector follows :class:`ThresholdSelector`:
``selector(image, heat, refined=None, thresholds=...) -> ThresholdChoice`` with ``image`` HWC
uint8 RGB and ``refined`` a refiner's (H, W) bool mask, used only by selectors whose class says
``needs_refined``. They are registered in :data:`SELECTORS` (:class:`pipeline.plugins.Registry`):

- ``paper``: the paper's rule, the threshold whose mask best matches the refiner's mask;
- ``fixed``: t = 0.5 (no choice: a baseline);
- ``edges``: the threshold whose mask boundary best follows image edges (mean gradient
  magnitude along the contour, i.e. normalised by the contour's length);
- ``ridge``: a ridge regression of t from one row of heat-map and image statistics
  per object (the edge curve among them). Its coefficients are a tiny asset,
  ``assets/threshold_ridge.npz``, fitted on annotated real photos with soft maps made from
  their true masks (``python -m pipeline.thresholds train``, see :func:`main`);
- ``mix``: the ridge model's predicted IoU gains plus the paper's IoU curve.

:data:`DEFAULT_SELECTOR` is the one bench/bench_masks.py measured best overall (see
bench/RESULTS.md); the paper's rule stays selectable as ``paper``.

A choice carries the ``rule`` that made it, so the studio's IoU-curve panel can say which
rule chose the threshold. Everything here is a few numpy passes over the image (well under
0.1 s for 512x512): a selector is cheap enough to run on every sample.
"""
from __future__ import annotations

import argparse
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import cv2
import numpy as np

from .errors import PipelineError
from .masks import DEFAULT_THRESHOLDS, check_heat, choose_threshold, iou_curve, otsu_threshold
from .plugins import Registry

ALPHA = 3000.0  # chosen by 3-fold cross-validation by photo (bench/bench_masks.py)
ASSET = Path(__file__).resolve().parents[1] / "assets" / "threshold_ridge.npz"


class SelectorError(PipelineError, ValueError):
    """A threshold cannot be chosen (unknown selector, missing refined mask, bad inputs)."""


@dataclass
class ThresholdChoice:
    """The threshold a selector chose for one heat map."""

    threshold: float
    thresholds: np.ndarray  # (T,) the sweep
    scores: np.ndarray  # (T,) the selector's score of each threshold (higher is better; NaN: not scored)
    rule: str  # the selector's name, shown beside the IoU curve
    info: dict = field(default_factory=dict)


@runtime_checkable
class ThresholdSelector(Protocol):
    name: str
    needs_refined: bool  # needs a refiner's mask (the paper's rule); others look at image + heat only

    def __call__(self, image: np.ndarray, heat: np.ndarray, refined: np.ndarray | None = None,
                 thresholds=DEFAULT_THRESHOLDS) -> ThresholdChoice: ...


class BaseSelector:
    name: ClassVar[str] = ""
    needs_refined: ClassVar[bool] = False


def _sweep(thresholds) -> np.ndarray:
    thr = np.asarray(DEFAULT_THRESHOLDS if thresholds is None else thresholds, np.float64)
    if thr.ndim != 1 or not len(thr) or np.any(np.diff(thr) <= 0):
        raise SelectorError("thresholds must be a non-empty ascending 1-D sequence")
    return thr


# --------------------------------------------------------------------------------------------
# image edges along every threshold's contour, in one pass
# --------------------------------------------------------------------------------------------

def edge_strength(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 colour gradient magnitude of an HWC uint8 image, scaled so its 99th
    percentile is 1 (then clipped to [0, 2]): comparable between photos of any contrast."""
    img = cv2.GaussianBlur(np.asarray(image, np.float32), (0, 0), 1.0)
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt(gx * gx + gy * gy)
    mag = mag.max(axis=2) if mag.ndim == 3 else mag
    scale = float(np.percentile(mag, 99))
    return np.clip(mag / max(scale, 1e-6), 0, 2).astype(np.float32)


def contour_curves(heat: np.ndarray, weight: np.ndarray, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """For every threshold t: (sum of ``weight`` over the contour pixels of ``heat >= t``,
    number of contour pixels), each (T,). A pixel is on the contour of t when it is in the
    mask (heat >= t) and a 4-neighbour is not (its 3x3 cross minimum < t), so it lies on the
    contours of all t in (min, heat]: a difference array over threshold indices gives all T
    curves from two bincounts. The photo's own border is not a contour."""
    thr = np.asarray(thresholds, np.float32)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    low = cv2.erode(heat, cross, borderType=cv2.BORDER_REPLICATE)  # min over the 4-neighbourhood
    hi = np.searchsorted(thr, heat, side="right").ravel()  # thresholds passed by the pixel
    lo = np.searchsorted(thr, low, side="right").ravel()  # ... by its darkest neighbour
    n = len(thr) + 1
    w = weight.ravel().astype(np.float64)
    s = np.bincount(lo, w, n) - np.bincount(hi, w, n)  # contour of index k: lo <= k < hi
    c = np.bincount(lo, None, n) - np.bincount(hi, None, n)
    return np.cumsum(s)[:-1], np.cumsum(c)[:-1]


def edge_curve(image: np.ndarray, heat: np.ndarray, thresholds=DEFAULT_THRESHOLDS,
               edges: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean edge strength along each threshold's contour, contour length in pixels), (T,) each;
    NaN where a threshold has no contour."""
    edges = edge_strength(image) if edges is None else edges
    s, c = contour_curves(heat, edges, thresholds)
    return np.where(c > 0, s / np.maximum(c, 1), np.nan), c


# --------------------------------------------------------------------------------------------
# selectors
# --------------------------------------------------------------------------------------------

class PaperSelector(BaseSelector):
    """The paper's rule: the threshold whose mask best matches the refiner's mask."""

    name = "paper"
    needs_refined = True

    def __call__(self, image, heat, refined=None, thresholds=DEFAULT_THRESHOLDS) -> ThresholdChoice:
        if refined is None:
            raise SelectorError("the paper's rule needs a refiner's mask to match (refined=...)")
        thr = _sweep(thresholds)
        try:
            t, ious = choose_threshold(heat, refined, thr)
        except ValueError as e:
            raise SelectorError(str(e)) from e
        return ThresholdChoice(t, thr, ious, self.name)


class FixedSelector(BaseSelector):
    """Always ``t`` (0.5): no choice, a baseline. The sweep's nearest threshold is used."""

    name = "fixed"

    def __init__(self, t: float = 0.5):
        self.t = float(t)

    def __call__(self, image, heat, refined=None, thresholds=DEFAULT_THRESHOLDS) -> ThresholdChoice:
        thr = _sweep(thresholds)
        k = int(np.argmin(np.abs(thr - self.t)))
        scores = np.full(len(thr), np.nan)
        scores[k] = 1.0
        return ThresholdChoice(float(thr[k]), thr, scores, self.name)


class EdgeSelector(BaseSelector):
    """The threshold whose contour follows image edges best: the mean colour-gradient
    magnitude along the contour of ``heat >= t``, among contours at least ``min_length``
    of the longest one (tiny contours around the heat peak land on texture by chance)."""

    name = "edges"

    def __init__(self, min_length: float = 0.3):
        self.min_length = min_length

    def __call__(self, image, heat, refined=None, thresholds=DEFAULT_THRESHOLDS) -> ThresholdChoice:
        thr = _sweep(thresholds)
        heat = check_heat(heat, np.shape(image)[:2])
        score, length = edge_curve(image, heat, thr)
        ok = np.isfinite(score) & (length >= self.min_length * max(float(length.max()), 1.0))
        if not ok.any():
            return ThresholdChoice(0.5, thr, score, self.name, {"warning": "no contour: the heat map is flat"})
        k = int(np.argmax(np.where(ok, score, -np.inf)))
        return ThresholdChoice(float(thr[k]), thr, score, self.name)


STATS = ("t_edges", "t_edges_soft", "edge_gain", "t_otsu", "soft_fraction", "area_0.5", "thinness",
         "mean_inside", "mean_outside", "colour_contrast_gain", "t_colour")
FEATURES = STATS + tuple(f"log_area_ratio@{t:.2f}" for t in DEFAULT_THRESHOLDS) \
    + tuple(f"steepness@{t:.2f}" for t in DEFAULT_THRESHOLDS)


def object_features(image: np.ndarray, heat: np.ndarray, edges: np.ndarray | None = None) -> np.ndarray:
    """One row of statistics of (image, heat map) over the standard sweep, (len(FEATURES),)
    float64 in the order of :data:`FEATURES`: where the image's edges and colours say the
    contour is (``t_edges``, its soft-argmax, how much better than at 0.5, ``t_colour``: the
    threshold that best separates inside from outside colours) and how the heat map is shaped
    (Otsu's threshold, the fraction of unsure pixels, area and thinness of the 0.5 mask, mean
    heat inside and outside it; per threshold, the log of its mask's area over the 0.5 mask's
    and the heat map's steepness along its contour in units of the object's size)."""
    thr = np.asarray(DEFAULT_THRESHOLDS, np.float64)
    heat = np.asarray(heat, np.float32)
    edges = edge_strength(image) if edges is None else edges
    score, length = edge_curve(image, heat, DEFAULT_THRESHOLDS, edges)
    ok = np.isfinite(score) & (length >= 0.3 * max(float(length.max()), 1.0))
    sc = np.where(ok, score, np.nan)
    k5 = int(np.argmin(np.abs(thr - 0.5)))
    if ok.any():
        t_e = thr[int(np.nanargmax(sc))]
        w = np.exp(np.where(ok, (np.nan_to_num(sc) - np.nanmax(sc)) * 10.0, -np.inf))
        t_soft = float((w * thr).sum() / w.sum())
        gain = float(np.nanmax(sc) - (sc[k5] if np.isfinite(sc[k5]) else np.nanmin(sc)))
    else:
        t_e = t_soft = 0.5
        gain = 0.0

    t_otsu = otsu_threshold(heat)
    m = heat >= 0.5
    area = max(int(m.sum()), 1)
    soft = float(np.count_nonzero((heat > 0.1) & (heat < 0.9))) / area
    perim = float(np.count_nonzero(m & ~cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)))
    thin = perim / math.sqrt(area)
    inside = float(heat[m].mean()) if m.any() else 0.0
    outside = float(heat[~m].mean()) if (~m).any() else 0.0
    t_col, col_gain = colour_split(image, heat, thr)
    # per threshold: area relative to the 0.5 mask, and how steep the heat map is where it is cut
    level = np.searchsorted(thr.astype(np.float32), heat, side="right")
    areas = np.cumsum(np.bincount(level.ravel(), minlength=len(thr) + 1)[::-1])[::-1][1:].astype(np.float64)
    log_ratio = np.log(areas / max(areas[k5], 1.0) + 1e-3)
    gy, gx = np.gradient(heat)
    s2, c2 = contour_curves(heat, np.sqrt(gx * gx + gy * gy), DEFAULT_THRESHOLDS)
    steep = np.where(c2 > 0, s2 / np.maximum(c2, 1), 0.0) * math.sqrt(area)
    stats = [t_e, t_soft, gain, t_otsu, soft, area / heat.size, thin, inside, outside, col_gain, t_col]
    return np.concatenate([np.array(stats, np.float64), log_ratio, steep])


def colour_split(image: np.ndarray, heat: np.ndarray, thresholds) -> tuple[float, float]:
    """(the threshold whose inside/outside mean colours differ most relative to their spread,
    that separation minus the one at 0.5), over a 64-pixel-side thumbnail (cheap)."""
    h, w = heat.shape
    f = 64.0 / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    img = cv2.resize(np.asarray(image, np.float32), size, interpolation=cv2.INTER_AREA).reshape(-1, 3)
    hm = cv2.resize(heat, size, interpolation=cv2.INTER_AREA).ravel()
    seps = []
    for t in thresholds:
        m = hm >= t
        n = int(m.sum())
        if n < 4 or n > len(hm) - 4:
            seps.append(np.nan)
            continue
        a, b = img[m], img[~m]
        spread = math.sqrt(float(a.var(0).sum() + b.var(0).sum()) / 2 + 1.0)
        seps.append(float(np.linalg.norm(a.mean(0) - b.mean(0))) / spread)
    seps = np.array(seps)
    if not np.isfinite(seps).any():
        return 0.5, 0.0
    k5 = int(np.argmin(np.abs(np.asarray(thresholds) - 0.5)))
    base = seps[k5] if np.isfinite(seps[k5]) else np.nanmin(seps)
    return float(np.asarray(thresholds)[int(np.nanargmax(seps))]), float(np.nanmax(seps) - base)


@dataclass
class RidgeModel:
    """A multi-output ridge regression: features (F,) -> the IoU gain of every threshold of
    the sweep over t = 0.5, (T,). The selector cuts at the threshold of highest predicted
    gain; heavy regularisation keeps it close to a smooth prior shift (see :func:`main`)."""

    mean: np.ndarray  # (F,)
    std: np.ndarray  # (F,)
    coef: np.ndarray  # (F, T)
    intercept: np.ndarray  # (T,)
    alpha: float
    features: tuple[str, ...] = FEATURES

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, T) predicted IoU gains for (N, F) (or (F,)) feature rows."""
        x = np.atleast_2d(x)
        return self.intercept + ((x - self.mean) / self.std) @ self.coef

    def save(self, path: str | Path, **provenance) -> None:
        np.savez(path, mean=self.mean, std=self.std, coef=self.coef, intercept=self.intercept, alpha=self.alpha,
                 features=np.array(self.features), **{k: np.array(v) for k, v in provenance.items()})

    @classmethod
    def load(cls, path: str | Path) -> "RidgeModel":
        try:
            d = np.load(path, allow_pickle=False)
            names = tuple(str(x) for x in d["features"])
            model = cls(d["mean"], d["std"], d["coef"], d["intercept"], float(d["alpha"]), names)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # a truncated .npz: BadZipFile
            raise SelectorError(f"cannot read the threshold regressor {path}: {e}; retrain it with "
                                "`python -m pipeline.thresholds train`") from e
        if names != FEATURES or model.coef.shape != (len(FEATURES), len(DEFAULT_THRESHOLDS)):
            raise SelectorError(f"{path} was fitted on other features or thresholds than this code computes: "
                                "retrain it with `python -m pipeline.thresholds train`")
        return model

    @classmethod
    def fit(cls, x: np.ndarray, gains: np.ndarray, alpha: float = ALPHA) -> "RidgeModel":
        """``x`` (N, F) feature rows, ``gains`` (N, T) IoU-with-truth of each threshold minus
        that of 0.5."""
        x, y = np.asarray(x, np.float64), np.asarray(gains, np.float64)
        mean, std = x.mean(0), x.std(0) + 1e-6
        z = (x - mean) / std
        ym = y.mean(0)
        coef = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - ym))
        return cls(mean, std, coef, ym, alpha)


class RidgeSelector(BaseSelector):
    """The threshold of highest IoU gain predicted from :func:`object_features` by a ridge
    model (``model``: a path to its ``.npz`` or a :class:`RidgeModel`; default the shipped
    asset). Its scores are the predicted gains over t = 0.5, interpolated onto the sweep."""

    name = "ridge"

    def __init__(self, model: str | Path | RidgeModel | None = None):
        self.model = model if isinstance(model, RidgeModel) else RidgeModel.load(model or ASSET)

    work_side = 320  # features are computed at the training photos' size (and stay cheap)

    def __call__(self, image, heat, refined=None, thresholds=DEFAULT_THRESHOLDS) -> ThresholdChoice:
        thr = _sweep(thresholds)
        heat = check_heat(heat, np.shape(image)[:2])
        h, w = heat.shape
        f = self.work_side / max(h, w)
        if f < 1:  # the features are scale-free (fractions, per-size ratios): measure them smaller
            size = (max(1, round(w * f)), max(1, round(h * f)))
            image = cv2.resize(np.asarray(image), size, interpolation=cv2.INTER_AREA)
            heat = np.clip(cv2.resize(heat, size, interpolation=cv2.INTER_AREA), 0, 1)
        gains = self.model.predict(object_features(image, heat))[0]
        scores = np.interp(thr, DEFAULT_THRESHOLDS, gains)
        return ThresholdChoice(float(thr[int(np.argmax(scores))]), thr, scores, self.name)


class MixSelector(BaseSelector):
    """The ridge model's predicted IoU gain plus the paper's IoU with the refiner's mask, per
    threshold (both in IoU units): the image statistics and the refiner vote together."""

    name = "mix"
    needs_refined = True

    def __init__(self, model: str | Path | RidgeModel | None = None):
        self.ridge = RidgeSelector(model)

    def __call__(self, image, heat, refined=None, thresholds=DEFAULT_THRESHOLDS) -> ThresholdChoice:
        paper = PaperSelector()(image, heat, refined, thresholds)
        ridge = self.ridge(image, heat, None, thresholds)
        scores = paper.scores + ridge.scores
        return ThresholdChoice(float(paper.thresholds[int(np.argmax(scores))]), paper.thresholds, scores, self.name)


SELECTORS: Registry[ThresholdSelector] = Registry("threshold selector", SelectorError)
SELECTORS.register("mix", MixSelector)
SELECTORS.register("paper", PaperSelector)
SELECTORS.register("ridge", RidgeSelector)
SELECTORS.register("edges", EdgeSelector)
SELECTORS.register("fixed", FixedSelector)
DEFAULT_SELECTOR = "mix"


def get_selector(name: str = DEFAULT_SELECTOR, **options) -> ThresholdSelector:
    return SELECTORS.create(name, **options)


# --------------------------------------------------------------------------------------------
# soft maps made from true masks (attention-like), and the regressor's training
# --------------------------------------------------------------------------------------------

def attention_like(gt: np.ndarray, side: int, rng: np.random.Generator | None = None, blur: float = 0.02,
                   noise: float = 0.05) -> np.ndarray:
    """An attention-like soft map of a true (H, W) bool mask, (H, W) float32 in [0, 1]: the mask
    blurred (Gaussian, sigma ``blur`` x the longer side), averaged down to ``side`` x ``side``
    (as cross-attention sees the image), plus Gaussian noise of std ``noise`` there (``rng``;
    None: no noise), bilinear back up, min-max normalised."""
    h, w = gt.shape
    g = gt.astype(np.float32)
    if blur > 0:
        g = cv2.GaussianBlur(g, (0, 0), blur * max(h, w))
    small = cv2.resize(g, (side, side), interpolation=cv2.INTER_AREA)
    if rng is not None and noise > 0:
        small = small + rng.normal(0, noise, small.shape).astype(np.float32)
    small = np.clip(small, 0, None)
    up = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    lo, hi = float(up.min()), float(up.max())
    return ((up - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def random_soft_map(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The regressor's training maps: attention-like maps with random resolution (8-96), blur
    and noise, half of them also pushed out or in (dilated/eroded) first: broad random
    families, never the benchmark's fixed settings."""
    g = gt
    if rng.random() < 0.5:
        r = int(round(rng.uniform(0.02, 0.15) * math.sqrt(max(float(gt.sum()), 1.0))))
        if r:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2)
            g2 = (cv2.dilate if rng.random() < 0.5 else cv2.erode)(gt.astype(np.uint8), k).astype(bool)
            g = g2 if g2.any() else gt
    side = int(rng.integers(8, 97))
    return attention_like(g, side, rng, blur=float(rng.uniform(0.0, 0.05)), noise=float(rng.uniform(0.0, 0.12)))


def oracle_threshold(heat: np.ndarray, truth: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> tuple[float, float]:
    """(the single threshold with the best IoU against the true mask, that IoU)."""
    ious = iou_curve(heat, truth, thresholds)
    k = int(np.argmax(ious))
    return float(np.asarray(thresholds)[k]), float(ious[k])


def training_rows(keys: list[str], maps_per_object: int = 3, seed: int = 0, max_per_photo: int = 2,
                  min_area: float = 0.02):
    """(X (N, F), gains (N, T), photo index (N,)) over the largest ``max_per_photo`` objects of
    the photos ``keys``: ``maps_per_object`` random soft maps each (:func:`random_soft_map`);
    gains = IoU with the true mask of every threshold minus that of t = 0.5."""
    from . import realdata

    rng = np.random.default_rng(seed)
    k5 = int(np.argmin(np.abs(DEFAULT_THRESHOLDS - 0.5)))
    xs, ys, ph = [], [], []
    for i, key in enumerate(keys):
        p = realdata.load_photo(key, min_area=min_area)
        edges = edge_strength(p.image)
        for j in np.argsort([-m.sum() for m in p.masks])[:max_per_photo]:
            for _ in range(maps_per_object):
                heat = random_soft_map(p.masks[j], rng)
                curve = iou_curve(heat, p.masks[j], DEFAULT_THRESHOLDS)
                xs.append(object_features(p.image, heat, edges))
                ys.append(curve - curve[k5])
                ph.append(i)
    return np.array(xs), np.array(ys), np.array(ph)


def main(argv=None) -> int:
    """``python -m pipeline.thresholds train [--folds 1 2] [--out assets/threshold_ridge.npz]``:
    fit the ridge selector on the photos of the given folds (:mod:`pipeline.realdata`: 180
    annotated photos, 3 folds by photo), 3 random soft maps per object. The shipped asset is
    fitted on folds 1 and 2, so fold 0 (``realdata.HELD_OUT_FOLD``) stays unseen for the
    tests; bench/bench_masks.py fits one model per fold itself. About a minute on one core."""
    from . import realdata

    ap = argparse.ArgumentParser(prog="python -m pipeline.thresholds")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="fit the ridge threshold selector on annotated photos")
    tr.add_argument("--folds", type=int, nargs="+", default=[f for f in range(realdata.K_FOLDS)
                                                              if f != realdata.HELD_OUT_FOLD])
    tr.add_argument("--maps-per-object", type=int, default=3)
    tr.add_argument("--alpha", type=float, default=ALPHA)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", default=str(ASSET))
    a = ap.parse_args(argv)
    keys = realdata.split(a.folds)
    x, gains, _ = training_rows(keys, a.maps_per_object, a.seed)
    model = RidgeModel.fit(x, gains, a.alpha)
    model.save(a.out, folds=np.array(a.folds), n_rows=len(gains), seed=a.seed, maps_per_object=a.maps_per_object)
    k = np.argmax(model.predict(x), 1)
    got = gains[np.arange(len(gains)), k].mean()
    print(f"fitted on {len(gains)} soft maps of {len(keys)} photos (folds {a.folds}); mean IoU gain over t = 0.5 on "
          f"them {got:+.4f} (oracle {gains.max(1).mean():+.4f}) -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
