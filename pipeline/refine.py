"""Refiners: turn (image, heat map) into a refined object mask, chosen by name.

Every refiner follows :class:`Refiner`: a callable
``refiner(image, heat, attention=None, points=None, labels=None) -> RefineResult`` with
``image`` HWC uint8 RGB, ``heat`` (H, W) float in [0, 1], ``attention`` the
:class:`~pipeline.attention.AttentionMaps` of the image, and class attributes that say what it
needs: ``name``, ``takes_points`` (user clicks), ``needs_self_attention`` (capture the UNet's
self-attention with the image), ``stateful`` (holds per-image state, e.g. SAM's embedding: one
image at a time per instance). They are registered in :data:`REFINERS`
(:class:`pipeline.plugins.Registry`); a new refiner is a subclass of :class:`BaseRefiner` plus
``REFINERS.register("name", Class)``.

- ``grabcut`` (default): OpenCV GrabCut deciding only a band around the heat map's object
  boundary; no weights.
- ``sam``: SAM prompted with a box and positive/negative points derived from the heat
  map; needs weights: a segment-anything ``.pth`` (run by segment-anything) or the same
  weights in transformers' format, a folder or hub id (run by transformers' SamModel).
- ``affinity``: attention only. The heat map is propagated with the captured
  self-attention (the pixel affinity the UNet itself computed), as Dataset Diffusion does
  and in the spirit of the paper's AffinityNet, then split with Otsu's threshold.
- ``otsu``: Otsu's threshold of the heat map itself, i.e. no refinement (a baseline).
- ``clicks``: the heat map cut by a threshold selector and snapped to the photo near its edge,
  then every user click honoured exactly, each changing only a disc around it (:mod:`pipeline.clicks`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar, Protocol, runtime_checkable

import cv2
import numpy as np

from .attention import AttentionMaps, CaptureConfig
from .devices import ModelLoadError, resolve_device
from .errors import PipelineError
from .images import ImageError, require_rgb
from .masks import HeatMapError, bbox, check_heat, otsu_threshold, upsample  # otsu_threshold re-exported
from .plugins import Registry


class RefinementError(PipelineError, ValueError):
    """The inputs cannot be refined (empty/NaN heat map, wrong shapes, missing attention)."""


class RefinerUnavailable(PipelineError, RuntimeError):
    """A refiner needs something that is not here (a checkpoint, a package)."""


@dataclass
class RefineResult:
    mask: np.ndarray  # (H, W) bool
    refiner: str
    info: dict = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())


@runtime_checkable
class Refiner(Protocol):
    """What every refiner is. Class attributes describe it without building it (the registry
    holds classes), so the CLI and the studio can ask ``REFINERS["sam"].takes_points``."""

    name: str
    takes_points: bool  # accepts user clicks (points XY, labels 1 object / 0 background)
    needs_self_attention: bool  # needs AttentionMaps.affinity: capture self-attention with the image
    stateful: bool  # keeps per-image state between calls: share an instance with one session at a time

    def __call__(self, image: np.ndarray, heat: np.ndarray, attention: AttentionMaps | None = None,
                 points: np.ndarray | None = None, labels: np.ndarray | None = None) -> RefineResult: ...


class BaseRefiner:
    """Defaults of the :class:`Refiner` attributes; subclasses set what differs."""

    name: ClassVar[str] = ""
    takes_points: ClassVar[bool] = False
    needs_self_attention: ClassVar[bool] = False
    stateful: ClassVar[bool] = False


def check_inputs(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Validate (HWC uint8, HW float) and return the heat map as float32; raise RefinementError."""
    try:
        require_rgb(image)
    except ImageError as e:
        raise RefinementError(str(e)) from e
    if np.shape(heat) != image.shape[:2]:
        raise RefinementError(f"heat map {np.shape(heat)} does not match image size {image.shape[:2]}")
    try:
        heat = check_heat(heat)
    except HeatMapError as e:
        raise RefinementError(str(e)) from e
    if float(heat.max()) - float(heat.min()) < 1e-6:
        raise RefinementError("heat map is flat (no attention on any region): nothing to refine")
    return heat


class OtsuRefiner(BaseRefiner):
    """Otsu's threshold of the heat map: no refinement, a baseline."""

    name = "otsu"

    def __call__(self, image, heat, attention: AttentionMaps | None = None, points=None, labels=None) -> RefineResult:
        heat = check_inputs(image, heat)
        t = otsu_threshold(heat)
        return RefineResult(heat > t, self.name, {"threshold": t})


class GrabCutRefiner(BaseRefiner):
    """GrabCut confined to a band around the heat map's object boundary.

    Plain GrabCut seeded from a coarse map re-decides every pixel from two colour models,
    and on cluttered photos those overlap: measured on COCO, it made masks worse than the
    coarse map itself. Here the heat map's mask (``heat >= level``) is trusted away from its
    boundary: pixels deeper inside than ``band`` x sqrt(object area) are sure object,
    pixels farther outside are sure background, and GrabCut (``iterations``, bounded)
    decides only the band between, plus wherever the heat map itself is unsure
    (``soft[0] < heat < soft[1]``). It runs on the image scaled to at most ``max_side``
    pixels (the band is the only undecided part, and colour models need no more), then
    the band's labels are upsampled; sure pixels stay exact at full resolution.
    """

    name = "grabcut"
    takes_points = True

    def __init__(self, band: float = 0.1, level: float = 0.5, soft: tuple[float, float] = (0.15, 0.7),
                 iterations: int = 3, max_side: int = 320):
        if not 0 < band <= 1 or not 0 <= soft[0] < level < soft[1] <= 1:
            raise ValueError(f"need 0 < band <= 1 and 0 <= soft[0] < level < soft[1] <= 1, got band={band}, "
                             f"level={level}, soft={soft}")
        if iterations < 1 or max_side < 16:
            raise ValueError("iterations must be >= 1 and max_side >= 16")
        self.band, self.level, self.soft = band, level, tuple(soft)
        self.iterations, self.max_side = iterations, max_side

    def seeds(self, heat: np.ndarray) -> np.ndarray:
        """(H, W) uint8 GrabCut labels: GC_FGD / GC_PR_FGD / GC_PR_BGD / GC_BGD."""
        mask = (heat >= self.level).astype(np.uint8)
        r = max(2, int(round(self.band * np.sqrt(max(int(mask.sum()), 1)))))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        seed = np.where(mask > 0, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        seed[cv2.erode(mask, kernel) > 0] = cv2.GC_FGD
        seed[cv2.dilate(mask, kernel) == 0] = cv2.GC_BGD
        unsure = (heat > self.soft[0]) & (heat < self.soft[1])
        seed[unsure] = np.where(mask[unsure] > 0, cv2.GC_PR_FGD, cv2.GC_PR_BGD)
        if np.count_nonzero((seed == cv2.GC_BGD) | (seed == cv2.GC_PR_BGD)) < 16:
            # The object covers (nearly) everything: GrabCut needs background samples, so the
            # image border becomes probable background rather than failing.
            seed[[0, -1], :] = cv2.GC_PR_BGD
            seed[:, [0, -1]] = cv2.GC_PR_BGD
        return seed

    def __call__(self, image, heat, attention: AttentionMaps | None = None, points=None, labels=None) -> RefineResult:
        """``points``: optional user clicks, (K, 2) XY in image pixels with ``labels`` (K,)
        1 = object, 0 = background; each becomes a small disc of sure object/background."""
        heat = check_inputs(image, heat)
        seed = self.seeds(heat)
        if points is not None and len(points):
            radius = max(2, round(0.02 * min(heat.shape)))
            for (x, y), label in zip(np.asarray(points, float), np.asarray(labels)):
                cv2.circle(seed, (int(round(x)), int(round(y))), radius,
                           int(cv2.GC_FGD if label else cv2.GC_BGD), -1)
        n_fg = int(np.count_nonzero((seed == cv2.GC_FGD) | (seed == cv2.GC_PR_FGD)))
        if n_fg == 0:
            raise RefinementError(f"no pixel of the heat map reaches {self.level}; nothing to refine")
        h, w = heat.shape
        f = min(1.0, self.max_side / max(h, w))
        small_img, small_seed = image, seed
        if f < 1:
            size = (max(1, round(w * f)), max(1, round(h * f)))
            small_img = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            small_seed = cv2.resize(seed, size, interpolation=cv2.INTER_NEAREST)
        info = {"seed_pixels": n_fg, "scale": round(f, 4)}
        has_fg = np.any((small_seed == cv2.GC_FGD) | (small_seed == cv2.GC_PR_FGD))
        has_bg = np.any((small_seed == cv2.GC_BGD) | (small_seed == cv2.GC_PR_BGD))
        if not (has_fg and has_bg):  # nothing left to decide at this size: the seeds are the answer
            mask = (seed == cv2.GC_FGD) | (seed == cv2.GC_PR_FGD)
            info["warning"] = "GrabCut skipped: the heat map leaves no undecided band at this size"
            return RefineResult(mask, self.name, info)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        work = small_seed.copy()
        # GrabCut initialises its colour models with k-means on OpenCV's (per-thread) RNG: seed
        # it, so the same image and heat map always give the same mask
        cv2.setRNGSeed(0)
        cv2.grabCut(cv2.cvtColor(small_img, cv2.COLOR_RGB2BGR), work, None, bgd, fgd, self.iterations,
                    cv2.GC_INIT_WITH_MASK)
        fg = ((work == cv2.GC_FGD) | (work == cv2.GC_PR_FGD)).astype(np.float32)
        if f < 1:
            fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR)
        mask = fg >= 0.5
        mask[seed == cv2.GC_FGD] = True  # sure labels stay exact at full resolution
        mask[seed == cv2.GC_BGD] = False
        if not mask.any():
            info["warning"] = "GrabCut removed every object pixel"
        return RefineResult(mask, self.name, info)


class AffinityRefiner(BaseRefiner):
    """Propagate the heat map with the UNet's own self-attention, then Otsu."""

    name = "affinity"
    needs_self_attention = True

    def __init__(self, iterations: int = 2):
        self.iterations = iterations

    def __call__(self, image, heat, attention: AttentionMaps | None = None, points=None, labels=None) -> RefineResult:
        heat = check_inputs(image, heat)
        if attention is None or attention.affinity is None:
            raise RefinementError("the affinity refiner needs the self-attention captured with the image: "
                                  "generate again with the affinity refiner selected "
                                  "(pipeline.refine.capture_for(refiner))")
        h, w = attention.affinity_hw
        small = cv2.resize(heat, (w, h), interpolation=cv2.INTER_AREA).reshape(-1)
        aff = attention.affinity.astype(np.float32)
        for _ in range(self.iterations):
            small = aff @ small
        prop = upsample(small.reshape(h, w), heat.shape)
        prop = (prop - prop.min()) / max(float(prop.max() - prop.min()), 1e-12)
        t = otsu_threshold(prop)
        return RefineResult(prop > t, self.name, {"threshold": t, "propagated": prop})


def sam_prompts(heat: np.ndarray, n_negative: int = 2, level: float = 0.5):
    """Prompts for SAM from a heat map: (box XYXY float, points (K, 2) xy, labels (K,) 1/0).

    Box: the bounding box of ``heat >= level``. Positive point: the heat map's maximum.
    Negative points: among the coldest tenth of the pixels outside the box, the ones
    farthest from the points already chosen (farthest-point sampling, deterministic).
    """
    box = bbox(heat >= level)
    if box is None:
        raise RefinementError(f"no pixel of the heat map reaches {level}: no box for SAM")
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    points, labels = [(x, y)], [1]
    outside = np.ones(heat.shape, bool)
    outside[box[1] : box[3], box[0] : box[2]] = False
    if outside.any() and n_negative > 0:
        cold = outside & (heat <= np.quantile(heat[outside], 0.1))
        cy, cx = np.nonzero(cold)
        step = max(1, len(cx) // 4096)  # subsample: distances stay cheap on large images
        cand = np.stack([cx[::step], cy[::step]], 1).astype(np.float32)
        for _ in range(min(n_negative, len(cand))):
            d = np.min([((cand - p) ** 2).sum(1) for p in np.array(points, np.float32)], axis=0)
            px, py = cand[int(np.argmax(d))]
            points.append((int(px), int(py)))
            labels.append(0)
    return np.array(box, np.float32), np.array(points, np.float32), np.array(labels, np.int64)


class SamRefiner(BaseRefiner):
    """SAM prompted from the heat map (plus optional user clicks); see :mod:`pipeline.sam`.

    As with SamPredictor, the image embedding is computed once per image (cached by
    content), so repeated calls with extra clicks are cheap; that cache is per-image state.
    """

    name = "sam"
    takes_points = True
    stateful = True

    def __init__(self, checkpoint: str | None = None, model_type: str | None = None, device: str = "auto"):
        """``checkpoint``: a segment-anything file, a transformers SAM folder or a hub id;
        ``model_type``: vit_b/vit_l/vit_h to insist on (None: what the file holds);
        ``device``: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1"..."""
        from .sam import SamUnavailable, load_sam_predictor  # segment-anything/transformers: only when asked for

        if not checkpoint:
            raise RefinerUnavailable(
                "the SAM refiner needs weights: a segment-anything checkpoint file (sam_vit_b_01ec64.pth, "
                "vit_l or vit_h) or a transformers SAM folder / hub id (facebook/sam-vit-base); "
                "pass it with --sam-checkpoint")
        try:
            self.predictor = load_sam_predictor(checkpoint, model_type, resolve_device(device))
        except (SamUnavailable, ModelLoadError) as e:  # ModelLoadError: CUDA asked for, none here
            raise RefinerUnavailable(str(e)) from e
        self._image_key = None

    def __call__(self, image, heat, attention: AttentionMaps | None = None, points=None, labels=None) -> RefineResult:
        heat = check_inputs(image, heat)
        box, pts, lab = sam_prompts(heat)
        if points is not None and len(points):
            pts = np.concatenate([pts, np.asarray(points, np.float32)])
            lab = np.concatenate([lab, np.asarray(labels, np.int64)])
        key = (image.shape, hash(image.tobytes()))
        if key != self._image_key:
            self.predictor.set_image(image)
            self._image_key = key
        masks, scores, _ = self.predictor.predict(point_coords=pts, point_labels=lab, box=box, multimask_output=True)
        best = int(np.argmax(scores))
        return RefineResult(masks[best].astype(bool), self.name, {"score": float(scores[best]), "box": box.tolist()})


REFINERS: Registry[Refiner] = Registry("refiner", RefinementError)
REFINERS.register("grabcut", GrabCutRefiner)
REFINERS.register("sam", SamRefiner)
REFINERS.register("affinity", AffinityRefiner)
REFINERS.register("otsu", OtsuRefiner)
REFINERS.register("learned", "pipeline.refine_net:LearnedRefiner")  # a small CNN (issue 17); imported on use
REFINERS.register("clicks", "pipeline.clicks:ClickRefiner")  # every click honoured exactly (issue 26)
DEFAULT_REFINER = "grabcut"
#: the refiner the studio's clicks go to (the 'clicks refine with' choice): bench_masks measures it
#: at NoC@90 3.56 against grabcut's 7.07 on photos neither was fitted on, and it honours every click
DEFAULT_CLICK_REFINER = "clicks"


def get_refiner(name: str = DEFAULT_REFINER, **options) -> Refiner:
    """Build a registered refiner by name from ``options``; each refiner takes the ones it
    uses (``checkpoint``/``device`` for sam) and ignores the rest."""
    return REFINERS.create(name, **options)


AFFINITY_MAX_TOKENS = 1024  # self-attention is recorded at the largest resolution with at most this many pixels


def capture_for(refiner, config: CaptureConfig | None = None) -> CaptureConfig:
    """``config`` (default: everything) with the self-attention capture on exactly when the
    refiner needs it: ``refiner`` is a refiner, its class, or its registered name, and says so
    by its ``needs_self_attention`` attribute (see :class:`Refiner`)."""
    if isinstance(refiner, str):
        refiner = REFINERS[refiner]
    needs = bool(getattr(refiner, "needs_self_attention", False))
    config = config or CaptureConfig()
    return replace(config, self_attention_max_tokens=AFFINITY_MAX_TOKENS if needs else 0)


def point_refiners() -> list[str]:
    """Names of the registered refiners that take user clicks."""
    return [n for n in REFINERS if REFINERS[n].takes_points]


@dataclass
class MaskChoice:
    """The result of refining one heat map and choosing its threshold (paper step 2)."""

    refined: np.ndarray  # (H, W) bool, the refiner's mask
    threshold: float  # the threshold whose heat-map mask best matches ``refined``
    thresholds: np.ndarray  # (T,) the sweep
    ious: np.ndarray  # (T,) IoU of each thresholded mask with ``refined``
    refiner: str
    info: dict = field(default_factory=dict)
    rule: str = "paper"  # the threshold selector that chose ``threshold`` (pipeline.thresholds.SELECTORS)
    scores: np.ndarray | None = None  # (T,) that selector's score of each threshold (None: the ious)

    def describe(self) -> str:
        """The choice in the user's words: which refiner chose which threshold, and how well."""
        return (f"{self.refiner} chose threshold {self.threshold:.2f} (its mask overlaps the refined mask with "
                f"IoU {self.best_iou:.2f})" + (f" · rule: {self.rule}" if self.rule else ""))

    @property
    def best_iou(self) -> float:
        return float(self.ious.max())

    def mask(self, heat: np.ndarray) -> np.ndarray:
        return heat >= self.threshold


def refine_and_choose(image: np.ndarray, heat: np.ndarray, refiner, attention: AttentionMaps | None = None,
                      thresholds=None, points=None, labels=None, selector=None) -> MaskChoice:
    """Refine, then pick the threshold: by default the paper's rule (the highest IoU against
    the refined mask); ``selector``, a name of :data:`pipeline.thresholds.SELECTORS` or a
    selector, picks it otherwise. ``ious`` is always the IoU curve against the refined mask
    (the studio's IoU-curve panel), ``rule`` names the selector that chose.

    ``points``/``labels``: user clicks (XY image pixels; 1 object, 0 background) for the
    refiners that take them (grabcut, sam, clicks). Raises RefinementError when the heat map
    is unusable or the refined mask is empty."""
    from .masks import DEFAULT_THRESHOLDS, choose_threshold
    from .thresholds import SelectorError, get_selector

    thresholds = DEFAULT_THRESHOLDS if thresholds is None else np.asarray(thresholds, np.float32)
    if points is not None and len(points):
        if not getattr(refiner, "takes_points", False):
            raise RefinementError(f"the {refiner.name} refiner does not take clicks; use one of "
                                  f"{', '.join(point_refiners())}")
        points = np.asarray(points, np.float32).reshape(-1, 2)
        labels = np.asarray(labels, np.int64).reshape(-1)
        if len(labels) != len(points):
            raise RefinementError(f"{len(points)} clicks but {len(labels)} labels")
        h, w = heat.shape
        if (points < 0).any() or (points[:, 0] >= w).any() or (points[:, 1] >= h).any():
            raise RefinementError(f"a click lies outside the {w}x{h} image")
        result = refiner(image, heat, attention, points=points, labels=labels)
    else:
        result = refiner(image, heat, attention)
    if result.empty:
        raise RefinementError(f"the {result.refiner} refiner found no object pixels "
                              f"({result.info.get('warning', 'empty mask')}); try another refiner or seed")
    threshold, ious = choose_threshold(heat, result.mask, thresholds)
    info = {k: v for k, v in result.info.items() if not isinstance(v, np.ndarray)}
    rule, scores = "paper", None
    if selector is not None and selector != "paper":
        try:
            chooser = get_selector(selector) if isinstance(selector, str) else selector
            choice = chooser(image, heat, refined=result.mask, thresholds=thresholds)
        except SelectorError as e:
            raise RefinementError(str(e)) from e
        threshold, rule, scores = choice.threshold, choice.rule, choice.scores
    return MaskChoice(result.mask, threshold, np.asarray(thresholds), ious, result.refiner, info, rule, scores)
