"""The inspection session: the rules of "which mask is this sample's", outside any UI.

Modelled on segment-anything's ``SamPredictor``: the expensive work happens once
(:meth:`InspectSession.from_sample` takes a generated sample with its captured attention;
:meth:`InspectSession.refine` runs the refiner once per set of clicks and caches it), then
many cheap calls (threshold, source, strokes, undo/redo) change the *current mask*, which
is what the studio shows large and exactly what :meth:`InspectSession.to_store` saves.

The current mask is ``(source mask | brushed) & ~erased`` where the source mask is either
the heat map at the threshold (``"threshold"``) or the refiner's mask (``"refined"``; with the
user's clicks, the click refiner's mask: ``clicks``, GrabCut or SAM). Every change is one
undoable step.

Arrays: image HWC uint8 RGB; heat (H, W) float32 in [0, 1], rounded as the store keeps it;
masks (H, W) bool; clicks (x, y) in image pixels with label 1 (object) or 0 (background).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from .dataset import NewSample
from .errors import SessionError
from .limits import check_click, check_threshold
from .masks import mask_at, quantize_heat

SOURCES = ("threshold", "refined")
# Where an inspection starts when no refiner chose a threshold (refinement unavailable or failed).
DEFAULT_THRESHOLD = 0.5

__all__ = ["DEFAULT_THRESHOLD", "SOURCES", "InspectSession", "MaskState", "SessionError", "strokes_from_layers"]


FULL_VIEW = ("all", 0, 999)  # the heat view of every resolution and timestep (the sample's own heat map)


@dataclass(frozen=True, eq=False)
class MaskState:
    """One undoable state of the mask being built."""

    source: str = "threshold"  # "threshold" | "refined"
    threshold: float = DEFAULT_THRESHOLD
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
    click_refiner: Callable | None = None  # the refiner that takes the user's clicks (None: ``refiner``)
    refiner_options: dict = field(default_factory=dict)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    stored_id: int | None = None
    choice: object = None  # MaskChoice for the current clicks, or None
    refine_error: str | None = None
    refiner_problem: str | None = None  # why there is no refiner (e.g. SAM weights missing)
    view: tuple = (None, None)  # (resolutions, timesteps) of the heat view
    overlay: bool = True  # show the current mask over the image (False: the mask alone, white on black)
    revision: int = 0  # counts every change of what the session shows (a UI compares it to redraw)
    saved: tuple | None = None  # (MaskState, status) as last saved by to_store
    shown: dict = field(default_factory=dict, repr=False, compare=False)  # a UI's memo of what it last drew
    _state: MaskState = field(default_factory=MaskState)
    _undo: list = field(default_factory=list)
    _redo: list = field(default_factory=list)
    _choices: dict = field(default_factory=dict)  # clicks -> MaskChoice | error text
    _made_at: dict = field(default_factory=dict)  # click -> when it was made (add_click's made_at)

    def __post_init__(self):
        self.image = np.asarray(self.image)
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise SessionError(f"image must be HWC uint8 RGB, got {self.image.shape} {self.image.dtype}")
        self.heat = quantize_heat(self.heat)
        if self.heat.shape != self.image.shape[:2]:
            raise SessionError(f"heat map {self.heat.shape} does not match the image {self.image.shape[:2]}")

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_sample(cls, sample, refiner: Callable | None = None, model: str = "", view: tuple | None = None,
                    **kw) -> "InspectSession":
        """From a :class:`pipeline.generate.Sample`; refines once (when a refiner is given) and
        starts at the refiner's threshold (:data:`DEFAULT_THRESHOLD` when refinement is
        unavailable; ``refiner_problem`` in ``kw`` says why there is no refiner). ``view``:
        (resolution, t_lo, t_hi) of the heat view to start on (None: every layer and step)."""
        ses = cls(sample.image, sample.class_name, sample.heat_map, attention=sample.attention,
                  prompt=sample.prompt, seed=sample.seed, model=model, refiner=refiner, **kw)
        if view is not None and tuple(view) != FULL_VIEW:
            ses.heat, ses.view = quantize_heat(ses.heat_for(*view)), tuple(view)
        ses.start()
        return ses

    def start(self) -> None:
        """The starting point of an inspection: refine (the current heat view, no clicks) and
        begin at the refiner's chosen threshold (DEFAULT_THRESHOLD when refinement is
        unavailable). Nothing to undo: the starting point is not an edit."""
        self.refine()
        self._state = MaskState(threshold=self.choice.threshold if self.choice is not None else DEFAULT_THRESHOLD)
        self._undo.clear()
        self._redo.clear()
        self.revision += 1

    # -- the expensive half --------------------------------------------------------------
    def refine(self) -> None:
        """Run the refiner for the current clicks (cached per set of clicks). On failure the
        choice is None and :attr:`refine_error` says why; the mask source falls back to
        the threshold mask."""
        from .refine import RefinementError, RefinerUnavailable, refine_and_choose

        key = self._state.clicks
        refiner = self.click_refiner if key and self.click_refiner is not None else self.refiner
        if key not in self._choices:
            if refiner is None:
                self._choices[key] = self.refiner_problem or "no refiner chosen"
            else:
                pts = {}
                # a refiner that takes no clicks (otsu, affinity) refines without them
                if key and getattr(refiner, "takes_points", False):
                    pts = {"points": [(x, y) for x, y, _ in key], "labels": [lab for _, _, lab in key]}
                from .thresholds import DEFAULT_SELECTOR

                options = {"selector": DEFAULT_SELECTOR, **self.refiner_options}  # the studio's threshold rule
                try:
                    self._choices[key] = refine_and_choose(self.image, self.heat, refiner, self.attention,
                                                           **pts, **options)
                except (RefinementError, RefinerUnavailable) as e:
                    self._choices[key] = str(e)
        got = self._choices[key]
        self.choice, self.refine_error = (None, got) if isinstance(got, str) else (got, None)
        self.revision += 1

    def set_refiner(self, refiner: Callable | None) -> None:
        """Another refiner: refinements are recomputed (clicks are kept)."""
        self.refiner = refiner
        self._choices.clear()
        self.refine()

    def set_click_refiner(self, refiner: Callable | None) -> None:
        """Another refiner for the clicks (None: ``refiner`` takes them): the refinements with
        clicks are recomputed (the clicks are kept); the one without clicks stays."""
        if refiner is self.click_refiner:
            return
        self.click_refiner = refiner
        self._choices = {k: v for k, v in self._choices.items() if not k}
        if self._state.clicks:
            self.refine()

    def heat_for(self, resolution: str | int | None = "all", t_lo: int = 0, t_hi: int = 999) -> np.ndarray:
        """The heat map from the captured attention at one resolution (``"all"``: every one) over
        the timesteps t_lo..t_hi; (H, W) float32 in [0, 1]. Refused when the range is empty."""
        if t_lo > t_hi:
            raise SessionError("the timestep range is empty: 'timesteps from' is above 'timesteps to'")
        if self.attention is None:
            raise SessionError("this sample has no captured attention: only its stored heat map can be shown")
        res = None if resolution in (None, "", "all") else [int(resolution)]
        return self.attention.heat_map(resolutions=res, timesteps=(t_lo, t_hi))

    def set_heat(self, heat: np.ndarray, view: tuple = (None, None)) -> None:
        """Another heat view (resolutions / timesteps): the threshold mask follows it and
        the refinement is recomputed from it."""
        heat = quantize_heat(heat)
        if heat.shape != self.heat.shape:
            raise SessionError(f"heat map {heat.shape} does not match the image {self.heat.shape}")
        self.heat, self.view = heat, view
        self._choices.clear()
        self.refine()

    def show_view(self, resolution: str | int | None, t_lo: int, t_hi: int, refiner: Callable | None) -> None:
        """The heat view of these resolutions / timesteps (checked before anything changes)
        refined by ``refiner``: each is recomputed only when it changed."""
        heat = self.heat_for(resolution, t_lo, t_hi)
        if (resolution, t_lo, t_hi) != (self.view if self.view != (None, None) else FULL_VIEW):
            self.set_heat(heat, (resolution, t_lo, t_hi))
        if refiner is not self.refiner:
            self.set_refiner(refiner)

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
        self.revision += 1
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

    def add_click(self, x: int, y: int, label: int, made_at: float | None = None) -> None:
        """An object (1) or background (0) click in image pixels: the click refiner (the
        refiner when there is none) runs again with every click so far, and the refined mask
        becomes the mask's source. ``made_at``: when the click was made (any one clock, e.g. a
        web page's): a click made before clicks that were added first (quick clicks sent as
        separate requests can arrive out of order) goes in among them where it was made; None:
        after the last."""
        clicking = self.click_refiner if self.click_refiner is not None else self.refiner
        if clicking is None or not getattr(clicking, "takes_points", False):
            name = getattr(clicking, "name", "no refiner")
            from .refine import point_refiners

            raise SessionError(f"clicks need a refiner that takes points ({', '.join(point_refiners())}); "
                               f"the refiner is {name}")
        click = check_click(x, y, label, self.image.shape[:2], error=SessionError)
        old = self._state.clicks
        at = len(old) if made_at is None else \
            next((i for i, c in enumerate(old) if self._made_at.get(c, float("-inf")) > made_at), len(old))
        if made_at is not None:
            self._made_at[click] = float(made_at)
        self._push(replace(self._state, clicks=old[:at] + (click,) + old[at:], source="refined"))
        if self.choice is None:  # the refiner failed with these clicks: keep the source usable
            self._state = replace(self._state, source="threshold")
            self.revision += 1

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
        self.revision += 1
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
        self.revision += 1
        if clicks_changed:
            self.refine()
        return True

    def set_overlay(self, show: bool) -> None:
        """Show the current mask over the image (True) or alone, white on black (False): a view
        preference, not an edit of the mask (nothing to undo)."""
        if bool(show) != self.overlay:
            self.overlay = bool(show)
            self.revision += 1

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
        self.saved = (self._state, status)
        self.revision += 1
        return sid

    @property
    def unsaved(self) -> bool:
        """Whether the mask on screen differs from what was last saved (or nothing was saved)."""
        return self.saved is None or not self.saved[0].same_as(self._state)

    def save_line(self) -> str:
        """What the store holds of this session, in the user's words (with an unsaved marker)."""
        if self.saved is None:
            return "● not saved yet: Accept (a) or Reject (r) saves this mask"
        state, status = self.saved
        if self.unsaved:
            return f"● unsaved changes: #{self.stored_id} holds the mask as it was when {status}"
        return f"saved as #{self.stored_id} ({status}): {self.describe()}"


def check_generation_request(class_name: str | None, t_lo: int = 0, t_hi: int = 999) -> str:
    """The class name to generate (stripped), refused before a minute of generating: empty, a
    name the store would refuse at Accept ("cat/dog"), or an empty heat-view timestep range."""
    from .dataset import check_class

    class_name = (class_name or "").strip()
    if not class_name:
        raise SessionError("Type a class name in the 'class' box, e.g. 'ball'.")
    check_class(class_name)
    if t_lo > t_hi:
        raise SessionError("'timesteps from' is above 'timesteps to': the range is empty.")
    return class_name


def strokes_from_layers(layers, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The touch-up rule: (added, erased) (H, W) bool at image size from a mask editor's RGBA
    layers (HWC uint8, any size: the editor shows the image enlarged; nearest sampling).
    White strokes add to the mask, black strokes erase it."""
    import cv2

    add, erase = np.zeros(shape, bool), np.zeros(shape, bool)
    for layer in layers or []:
        arr = np.asarray(layer)
        if arr.ndim == 3 and arr.shape[2] == 4:
            alpha = cv2.resize(arr[..., 3], shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
            bright = cv2.resize(arr[..., :3].mean(2), shape[::-1], interpolation=cv2.INTER_NEAREST)
            add |= alpha & (bright >= 128)
            erase |= alpha & (bright < 128)
    return add, erase
