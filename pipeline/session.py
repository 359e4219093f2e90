"""Inspection sessions: the rules of "which mask is this sample's", outside any UI.

Modelled on segment-anything's ``SamPredictor``: the expensive work happens once
(:meth:`InspectSession.from_sample` takes a generated sample with its captured attention;
:meth:`InspectSession.refine` runs the refiner once per set of clicks and caches it), then
many cheap calls (threshold, source, strokes, undo/redo) change the *current mask*, which
is what the studio shows large and exactly what :meth:`InspectSession.to_store` saves.

The current mask is ``(source mask | brushed) & ~erased`` where the source mask is either
the heat map at the threshold (``"threshold"``) or the refiner's mask (``"refined"``, GrabCut
or SAM with the user's clicks). Every change is one undoable step.

Arrays: image HWC uint8 RGB; heat (H, W) float32 in [0, 1], rounded as the store keeps it;
masks (H, W) bool; clicks (x, y) in image pixels with label 1 (object) or 0 (background).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from .dataset import NewSample
from .errors import PipelineError
from .limits import MAX_SCALE, MIN_SCALE, check_box, check_click, check_point, check_threshold
from .masks import mask_at, quantize_heat

SOURCES = ("threshold", "refined")


class SessionError(PipelineError, ValueError):
    """An action that does not apply in the session's current state (message for the user)."""


@dataclass(frozen=True, eq=False)
class MaskState:
    """One undoable state of the mask being built."""

    source: str = "threshold"  # "threshold" | "refined"
    threshold: float = 0.5
    clicks: tuple = ()  # ((x, y, label), ...)
    added: np.ndarray | None = None  # (H, W) bool, brushed in
    erased: np.ndarray | None = None  # (H, W) bool, erased

    def same_as(self, other: "MaskState") -> bool:
        def eq(a, b):
            return a is b or (a is not None and b is not None and np.array_equal(a, b))

        return (self.source, self.threshold, self.clicks) == (other.source, other.threshold, other.clicks) \
            and eq(self.added, other.added) and eq(self.erased, other.erased)

    @property
    def edited(self) -> bool:
        return (self.added is not None and bool(self.added.any())) or (self.erased is not None and bool(self.erased.any()))


@dataclass
class InspectSession:
    """One inspected sample: image, attention heat map, refinement and the user's mask.

    ``refiner`` is any refiner callable (``pipeline.refine`` protocol); ``attention`` the
    captured :class:`~pipeline.attention.AttentionMaps` (or None when only a heat map is
    known). One session is one row in the store (its ``uid``): accepting twice or
    rejecting after accepting changes that row's status, never adds another.
    """

    image: np.ndarray
    class_name: str
    heat: np.ndarray
    attention: object = None
    prompt: str = ""
    seed: int | None = None
    model: str = ""
    refiner: Callable | None = None
    refiner_options: dict = field(default_factory=dict)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    stored_id: int | None = None
    choice: object = None  # MaskChoice for the current clicks, or None
    refine_error: str | None = None
    refiner_problem: str | None = None  # why there is no refiner (e.g. SAM weights missing)
    view: tuple = (None, None)  # (resolutions, timesteps) of the heat view
    _state: MaskState = field(default_factory=MaskState)
    _undo: list = field(default_factory=list)
    _redo: list = field(default_factory=list)
    _choices: dict = field(default_factory=dict)  # clicks -> MaskChoice | error text

    def __post_init__(self):
        self.image = np.asarray(self.image)
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise SessionError(f"image must be HWC uint8 RGB, got {self.image.shape} {self.image.dtype}")
        self.heat = quantize_heat(self.heat)
        if self.heat.shape != self.image.shape[:2]:
            raise SessionError(f"heat map {self.heat.shape} does not match the image {self.image.shape[:2]}")

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_sample(cls, sample, refiner: Callable | None = None, model: str = "", **kw) -> "InspectSession":
        """From a :class:`pipeline.generate.Sample`; refines once if a refiner is given and
        starts at the refiner's threshold (0.5 when refinement is unavailable)."""
        ses = cls(sample.image, sample.class_name, sample.heat_map, attention=sample.attention,
                  prompt=sample.prompt, seed=sample.seed, model=model, refiner=refiner, **kw)
        if refiner is not None:
            ses.start()
        return ses

    def start(self) -> None:
        """The starting point of an inspection: refine (the current heat view, no clicks) and
        begin at the refiner's chosen threshold (0.5 when refinement is unavailable). Nothing
        to undo: the starting point is not an edit."""
        self.refine()
        self._state = MaskState(threshold=self.choice.threshold if self.choice is not None else 0.5)
        self._undo.clear()
        self._redo.clear()

    # -- the expensive half --------------------------------------------------------------
    def refine(self) -> None:
        """Run the refiner for the current clicks (cached per set of clicks). On failure the
        choice is None and :attr:`refine_error` says why; the mask source falls back to
        the threshold mask."""
        from .refine import RefinementError, RefinerUnavailable, refine_and_choose

        key = self._state.clicks
        if key not in self._choices:
            if self.refiner is None:
                self._choices[key] = self.refiner_problem or "no refiner chosen"
            else:
                pts = {}
                # a refiner that takes no clicks (otsu, affinity) refines without them
                if key and getattr(self.refiner, "takes_points", False):
                    pts = {"points": [(x, y) for x, y, _ in key], "labels": [lab for _, _, lab in key]}
                from .thresholds import DEFAULT_SELECTOR

                options = {"selector": DEFAULT_SELECTOR, **self.refiner_options}  # the studio's threshold rule
                try:
                    self._choices[key] = refine_and_choose(self.image, self.heat, self.refiner, self.attention,
                                                           **pts, **options)
                except (RefinementError, RefinerUnavailable) as e:
                    self._choices[key] = str(e)
        got = self._choices[key]
        self.choice, self.refine_error = (None, got) if isinstance(got, str) else (got, None)

    def set_refiner(self, refiner: Callable | None) -> None:
        """Another refiner: refinements are recomputed (clicks are kept)."""
        self.refiner = refiner
        self._choices.clear()
        self.refine()

    def set_heat(self, heat: np.ndarray, view: tuple = (None, None)) -> None:
        """Another heat view (resolutions / timesteps): the threshold mask follows it and
        the refinement is recomputed from it."""
        heat = quantize_heat(heat)
        if heat.shape != self.heat.shape:
            raise SessionError(f"heat map {heat.shape} does not match the image {self.heat.shape}")
        self.heat, self.view = heat, view
        self._choices.clear()
        self.refine()

    # -- the cheap half: mask state --------------------------------------------------------
    @property
    def state(self) -> MaskState:
        return self._state

    @property
    def threshold(self) -> float:
        return self._state.threshold

    @property
    def source(self) -> str:
        """Where the current mask comes from now: "refined" only while a refined mask exists."""
        return "refined" if self._state.source == "refined" and self.choice is not None else "threshold"

    @property
    def clicks(self) -> tuple:
        return self._state.clicks

    def _push(self, new: MaskState, merge: bool = False) -> None:
        old = self._state
        if new.same_as(old):
            return
        # consecutive threshold moves (a dragged slider) are one undo step
        if not (merge and self._undo and self._undo[-1][1] == "threshold" and not self._redo):
            self._undo.append((old, "threshold" if merge else "other"))
        self._state = new
        self._redo.clear()
        if new.clicks != old.clicks:
            self.refine()

    def set_threshold(self, threshold: float) -> None:
        """Move the threshold (consecutive moves are one undo step). Does not change the
        source: with the refined mask chosen, the threshold only changes the threshold view."""
        t = check_threshold(threshold, error=SessionError)
        self._push(replace(self._state, threshold=round(t, 4)), merge=True)

    def use_source(self, source: str) -> None:
        """Choose where the mask comes from: "threshold" (heat >= t) or "refined"."""
        if source not in SOURCES:
            raise SessionError(f"mask source {source!r}: one of {SOURCES}")
        if source == "refined" and self.choice is None:
            raise SessionError(f"there is no refined mask to use ({self.refine_error or 'not refined'})")
        self._push(replace(self._state, source=source))

    def add_click(self, x: int, y: int, label: int) -> None:
        """An object (1) or background (0) click in image pixels: the refiner runs again
        with every click so far, and the refined mask becomes the mask's source."""
        if self.refiner is None or not getattr(self.refiner, "takes_points", False):
            name = getattr(self.refiner, "name", "no refiner")
            raise SessionError(f"clicks need a refiner that takes points (grabcut or sam); the refiner is {name}")
        x, y, label = check_click(x, y, label, self.image.shape[:2], error=SessionError)
        clicks = self._state.clicks + ((x, y, label),)
        self._push(replace(self._state, clicks=clicks, source="refined"))
        if self.choice is None:  # the refiner failed with these clicks: keep the source usable
            self._state = replace(self._state, source="threshold")

    def clear_clicks(self) -> None:
        self._push(replace(self._state, clicks=()))
        if self.choice is None and self._state.source == "refined":
            self._state = replace(self._state, source="threshold")

    def apply_strokes(self, add: np.ndarray | None = None, erase: np.ndarray | None = None) -> None:
        """Brush (``add``) and eraser (``erase``) pixels, (H, W) bool, on top of the current
        source; erasing wins where both are set."""
        shape = self.image.shape[:2]
        a = self._state.added.copy() if self._state.added is not None else np.zeros(shape, bool)
        e = self._state.erased.copy() if self._state.erased is not None else np.zeros(shape, bool)
        for name, m in (("brush", add), ("eraser", erase)):
            if m is not None and np.asarray(m).shape != shape:
                raise SessionError(f"{name} strokes are {np.asarray(m).shape}, the image is {shape}")
        if add is not None:
            add = np.asarray(add, bool)
            a |= add
            e &= ~add
        if erase is not None:
            erase = np.asarray(erase, bool)
            e |= erase
            a &= ~erase
        if not (a.any() or e.any()) and not self._state.edited:
            return
        self._push(replace(self._state, added=a, erased=e))

    def discard_edits(self) -> None:
        """Drop every brush/eraser stroke (undoable)."""
        self._push(replace(self._state, added=None, erased=None))

    def undo(self) -> bool:
        if not self._undo:
            return False
        prev, _ = self._undo.pop()
        self._redo.append(self._state)
        clicks_changed = prev.clicks != self._state.clicks
        self._state = prev
        if clicks_changed:
            self.refine()
        return True

    def redo(self) -> bool:
        if not self._redo:
            return False
        nxt = self._redo.pop()
        self._undo.append((self._state, "other"))
        clicks_changed = nxt.clicks != self._state.clicks
        self._state = nxt
        if clicks_changed:
            self.refine()
        return True

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    # -- what is shown and saved ---------------------------------------------------------
    def threshold_mask(self, threshold: float | None = None) -> np.ndarray:
        return mask_at(self.heat, self.threshold if threshold is None else threshold)

    def source_mask(self) -> np.ndarray:
        if self._state.source == "refined" and self.choice is not None:
            return np.asarray(self.choice.refined, bool)
        return self.threshold_mask()

    def current_mask(self) -> np.ndarray:
        """The sample's mask as it stands: (H, W) bool. Accept saves exactly this."""
        m = self.source_mask().copy()
        if self._state.added is not None:
            m |= self._state.added
        if self._state.erased is not None:
            m &= ~self._state.erased
        return m

    @property
    def mask_kind(self) -> str:
        """How the store labels the mask: generated (threshold), refined, or user (edited)."""
        if self._state.edited:
            return "user"
        return "refined" if self._state.source == "refined" and self.choice is not None else "generated"

    def describe(self) -> str:
        """Where the current mask comes from, in the user's words."""
        st = self._state
        if st.source == "refined" and self.choice is not None:
            n = len(st.clicks)
            text = f"refined by {self.choice.refiner}" + (f" with {n} click{'s' * (n != 1)}" if n else "")
        else:
            text = f"attention heat map at threshold {st.threshold:.2f}"
        if st.edited:
            text += ", touched up by hand"
        return text

    def to_store(self, store, status: str, tags: Sequence[str] = (), meta: dict | None = None) -> int:
        """Save the current mask as this session's one row (created or replaced), with the
        heat map, the refiner's threshold and mask, and the user's threshold. Returns its id."""
        kind = self.mask_kind
        chosen = self.choice.threshold if self.choice is not None else None
        user_t = None  # the user's threshold, where it differs from the refiner's choice
        if kind == "generated" and (chosen is None or abs(self.threshold - chosen) > 1e-9):
            user_t = self.threshold
        base = {"refiner": self.choice.refiner if self.choice is not None else None, "mask": self.describe(),
                "clicks": [list(c) for c in self.clicks]}
        sample = NewSample(self.image, [self.class_name], instances=[(self.class_name, self.current_mask())],
                           instance_sources=[kind], uid=self.uid, prompt=self.prompt, seed=self.seed, model=self.model,
                           heat_map=self.heat, threshold=chosen, user_threshold=user_t,
                           refined_mask=self.choice.refined if self.choice is not None else None,
                           status=status, tags=list(tags), meta={**base, **(meta or {})})
        sid = store.add(sample, replace=True)
        self.stored_id = sid
        return sid


@dataclass
class InsertSession:
    """One insertion being built on the Insert tab (or by ``pipeline.batch``): a background
    with its instances, an object with its mask, where it goes, and the composite.

    ``background`` HWC uint8; ``instances`` (class, (H, W) bool) back to front with their
    ``sources`` (the store's instance kinds) and ``crowd`` flags (COCO crowd regions of an
    imported photo stay crowd regions in the composite); the object ``fg`` HWC uint8 with ``fg_mask``
    (h, w) bool in its own image. Boxes are XYXY background pixels (x2/y2 exclusive);
    ``scale`` is the object's longer side over the background's shorter side.
    """

    background: np.ndarray
    instances: list = field(default_factory=list)
    sources: list = field(default_factory=list)
    classes: list = field(default_factory=list)
    origin: str = "upload"  # where the background came from: "upload", "sample #12"
    fg: np.ndarray | None = None
    fg_mask: np.ndarray | None = None
    fg_class: str = ""
    fg_origin: str = ""  # "generated (seed 3)", "bank: sample #7 instance 2"
    placement: object = None  # pipeline.placement.PlacementResult
    centre: tuple | None = None  # (x, y) background pixels
    scale: float = 0.3
    composite: object = None  # pipeline.compose.Composite
    composite_sources: list = field(default_factory=list)
    crowd: list = field(default_factory=list)  # per background instance: a COCO crowd region?
    composite_crowd: list = field(default_factory=list)
    # who made the background and the object, and under what licence (see
    # pipeline.export.common.source_provenance): the composite's exports carry both
    background_provenance: dict | None = None
    fg_provenance: dict | None = None

    def __post_init__(self):
        from .images import check_image

        self.background = check_image(self.background)
        h, w = self.background.shape[:2]
        self.sources = list(self.sources) or ["imported"] * len(self.instances)
        if len(self.sources) != len(self.instances):
            raise SessionError(f"{len(self.instances)} instances but {len(self.sources)} sources")
        self.crowd = [bool(c) for c in self.crowd] or [False] * len(self.instances)
        if len(self.crowd) != len(self.instances):
            raise SessionError(f"{len(self.instances)} instances but {len(self.crowd)} crowd flags")
        for name, m in self.instances:
            if np.asarray(m).shape != (h, w):
                raise SessionError(f"mask of {name!r} is {np.asarray(m).shape}, the background is {(h, w)}")
        self.classes = list(self.classes) or sorted({c for c, _ in self.instances})

    @classmethod
    def from_record(cls, store, rec) -> "InsertSession":
        """A stored sample as the background, with its masks exactly as stored."""
        from .export.common import source_provenance

        return cls(store.load_image(rec), store.masks(rec), [i.source for i in rec.instances], list(rec.classes),
                   f"sample #{rec.id}", crowd=[i.iscrowd for i in rec.instances],
                   background_provenance=source_provenance(rec))

    def set_object(self, fg: np.ndarray, fg_mask: np.ndarray, class_name: str, origin: str = "generated",
                   provenance: dict | None = None) -> None:
        """The object to insert: HWC uint8 image, (h, w) bool mask, its class, ``origin`` (how
        it was made, in words) and ``provenance`` (who made it, under what licence: see
        pipeline.export.common.source_provenance), which the composite's exports carry."""
        from .images import check_image

        fg = check_image(fg)
        fg_mask = np.asarray(fg_mask, bool)
        if fg_mask.shape != fg.shape[:2]:
            raise SessionError(f"the object's mask is {fg_mask.shape}, its image {fg.shape[:2]}")
        if not fg_mask.any():
            raise SessionError("the object's mask is empty: nothing to insert")
        if not str(class_name or "").strip():
            raise SessionError("the object needs a class name")
        self.fg, self.fg_mask, self.fg_class, self.fg_origin = fg, fg_mask, class_name.strip(), origin
        self.fg_provenance = provenance
        self.placement = self.composite = None

    def _need_object(self):
        if self.fg is None:
            raise SessionError("Make or pick an object first.")

    @property
    def object_hw(self) -> tuple[int, int]:
        ys, xs = np.nonzero(self.fg_mask)
        return int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1

    def propose(self, scorer=None, top_k: int = 5):
        """Score placements (``scorer``: a placement scorer; default the weight-free one) and
        move the object to the best box. Returns the PlacementResult."""
        from .placement import get_scorer

        self._need_object()
        scorer = scorer or get_scorer("default")
        self.placement = scorer(self.background, self.fg, self.fg_mask, existing_masks=[m for _, m in self.instances],
                                fg_class=self.fg_class, top_k=top_k)
        s, (x1, y1, x2, y2), _ = self.placement.boxes[0]
        self.scale, self.centre = float(s), ((x1 + x2) / 2, (y1 + y2) / 2)
        return self.placement

    def box_for(self, scale: float | None = None, centre: tuple | None = None) -> tuple[int, int, int, int]:
        """The object's XYXY box at ``scale`` around ``centre`` (defaults: the session's),
        shifted to lie inside the background."""
        from .placement import box_at, box_size

        self._need_object()
        scale = self.scale if scale is None else float(scale)
        centre = centre or self.centre
        if centre is None:
            h, w = self.background.shape[:2]
            centre = (w / 2, h / 2)
        return box_at(centre, box_size(scale, self.object_hw, self.background.shape[:2]), self.background.shape[:2])

    def move_to(self, box) -> float:
        """Take a user-drawn XYXY box: centre the object in it and set the largest scale at
        which the object, keeping its aspect ratio, fits inside. Returns that scale."""
        self._need_object()
        h, w = self.background.shape[:2]
        x1, y1, x2, y2 = check_box(box, (h, w), error=SessionError)
        if x2 - x1 < 2 or y2 - y1 < 2:
            raise SessionError("the box is too small")
        fh, fw = self.object_hw
        fit = min((x2 - x1) / fw, (y2 - y1) / fh)  # object pixels -> box pixels
        self.centre = ((x1 + x2) / 2, (y1 + y2) / 2)
        self.scale = float(np.clip(fit * max(fh, fw) / min(h, w), MIN_SCALE, MAX_SCALE))
        return self.scale

    def move_centre(self, x: float, y: float) -> None:
        h, w = self.background.shape[:2]
        self.centre = check_point(x, y, (h, w), "centre", error=SessionError)

    def compose(self, harmonizer=None, harmonizer_name: str = "none"):
        """Paste the object into its box, harmonize, and update the background's masks
        (occlusion exact: covered pixels leave the instances below; fully covered ones go)."""
        from .compose import paste

        self._need_object()
        box = self.box_for()
        comp = paste(self.background, self.instances, self.fg, self.fg_mask, box, self.fg_class,
                     harmonizer=harmonizer, harmonizer_name=harmonizer_name)
        new_mask = comp.instances[-1][1]
        # paste() keeps, in order, the instances with pixels left uncovered: their kinds and
        # crowd flags follow them (a fully covered instance leaves with its flags)
        kept = [(np.asarray(m, bool) & ~new_mask).any() for _, m in self.instances]
        self.composite_sources = [s for s, k in zip(self.sources, kept) if k] + ["inserted"]
        self.composite_crowd = [c for c, k in zip(self.crowd, kept) if k] + [False]
        comp.record["object_origin"] = self.fg_origin
        if self.fg_provenance is not None:
            comp.record["object_provenance"] = self.fg_provenance
        self.composite = comp
        return comp

    def to_store(self, store, status: str = "accepted", tags=(), uid: str | None = None, meta: dict | None = None,
                 prompt: str | None = None, seed: int | None = None, model: str = "composite") -> int:
        """Store the composite as a new sample; the background's instances keep their kinds,
        the object is ``inserted``. Returns its id."""
        if self.composite is None:
            raise SessionError("Preview a composite first.")
        comp = self.composite
        return store_composite(store, comp.image, [(n, m, s, c) for (n, m), s, c in
                                                   zip(comp.instances, self.composite_sources, self.composite_crowd)],
                               comp.record, uid=uid, status=status, tags=tags, model=model, seed=seed,
                               prompt=prompt if prompt is not None else f"{self.origin} + {self.fg_class}",
                               meta={"background": self.origin, "object": self.fg_origin,
                                     "background_provenance": self.background_provenance
                                     or {"origin": self.origin, "license": None}, **(meta or {})})


def store_composite(store, image: np.ndarray, instances, record: dict, *, uid: str | None = None,
                    status: str = "accepted", tags=(), prompt: str = "", seed: int | None = None,
                    model: str = "composite", meta: dict | None = None) -> int:
    """The one way a composite becomes a sample (the Insert tab and ``pipeline.batch``):
    ``instances`` (class, (H, W) bool, source[, iscrowd]) back to front, the background's
    keeping their kinds and crowd flags and the pasted object ``inserted``; ``record`` the
    paste's description."""
    instances = [tuple(i) if len(i) == 4 else (*i, False) for i in instances]
    return store.add(NewSample(image, list(dict.fromkeys(i[0] for i in instances)),
                               instances=[(i[0], i[1]) for i in instances],
                               instance_sources=[i[2] for i in instances], instance_crowd=[bool(i[3]) for i in instances],
                               uid=uid, prompt=prompt, seed=seed, model=model, status=status, tags=list(tags),
                               inserted=[record], meta=meta or {}))
