"""The insertion session: a background, an object, where it goes, the harmonized composite
and its occlusion-exact masks, outside any UI (the Insert tab and ``pipeline.batch``).

Also the Insert tab's rules that are not widgets: which objects to suggest for a scene and who
can supply them (:func:`suggest_objects`), which classes a generator can draw
(:func:`model_vocabulary`, checked before generating by :func:`check_drawable`), and how a
generated object gets its mask (:data:`OBJECT_REFINER`, :func:`object_from_sample`).

Arrays: images HWC uint8 RGB; masks (H, W) bool; boxes XYXY background pixels (x2/y2 exclusive).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .dataset import NewSample
from .errors import SessionError
from .limits import MAX_SCALE, MIN_SCALE, check_box, check_point, check_scale

__all__ = ["InsertSession", "OBJECT_REFINER", "SessionError", "check_drawable", "model_vocabulary",
           "object_from_sample", "store_composite", "suggest_objects"]

# The refiner that cuts a generated object out of its picture (one object on a plain scene:
# GrabCut seeded by the heat map needs no weights and no clicks).
OBJECT_REFINER = "grabcut"


def model_vocabulary(model: str | None) -> tuple[str, ...] | None:
    """The classes ``model`` can draw: the embedded model's eight, or None for a real diffusion
    model (it draws whatever the prompt names)."""
    if (model or "embedded").strip() in ("", "embedded"):
        from .embedded.world import CLASS_NAMES

        return tuple(CLASS_NAMES)
    return None


def check_drawable(class_name: str, model: str | None) -> str:
    """``class_name`` stripped, or SessionError before any generation when ``model`` cannot draw it."""
    from .dataset import check_class

    name = check_class((class_name or "").strip())
    vocab = model_vocabulary(model)
    if vocab is not None and name.lower() not in {v.lower() for v in vocab}:
        raise SessionError(f"the embedded model cannot draw {name!r}: it draws {', '.join(vocab)}; pick one of "
                           "those, cut one from a photo (object bank), or load a real model")
    return name


def suggest_objects(scene: str, thesaurus=None, vocabulary: Iterable[str] | None = None,
                    bank_classes: Iterable[str] = (), k: int = 10) -> tuple[list, str | None]:
    """Objects to insert into a scene (``scene``: a caption or the background's class names),
    what can be supplied first: the thesaurus' suggestions that the model or the bank can
    supply, then the bank's other classes and the model's other classes, then the
    thesaurus' suggestions nobody can supply. Returns ([Suggestion], note) where ``note``
    says why the thesaurus had nothing to say (None when it did)."""
    from .bank import Suggestion, supply
    from .thesaurus import ThesaurusError

    ranked, note = [], None
    if thesaurus is not None and scene.strip():
        try:
            ranked = thesaurus.rank(scene, k=k, min_support=3)
        except (ThesaurusError, ValueError):
            note = f"no COCO class found in {scene!r}: describe the scene in 'scene caption' for suggestions"
    bank = set(bank_classes)
    rows = supply(ranked, vocabulary=vocabulary, bank=bank)
    have = {s.name for s in rows}
    supplied = [s for s in rows if s.supplied]
    extra = [Suggestion(c, 0.0, ("model", "bank") if vocabulary is not None and c in vocabulary else ("bank",))
             for c in sorted(bank - have)]
    have |= bank
    extra += [Suggestion(c, 0.0, ("model",)) for c in (vocabulary or ()) if c not in have]
    return supplied + extra + [s for s in rows if not s.supplied], note


def object_from_sample(sample, refiner=None) -> tuple[np.ndarray, np.ndarray]:
    """A generated object's picture and mask: the sample refined by ``refiner`` (default
    :data:`OBJECT_REFINER`) at its chosen threshold. (HWC uint8, (H, W) bool)."""
    from .refine import get_refiner, refine_and_choose

    choice = refine_and_choose(sample.image, sample.heat_map, refiner or get_refiner(OBJECT_REFINER),
                               sample.attention)
    return sample.image, choice.mask(sample.heat_map)


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
    suggestions: list = field(default_factory=list)  # [bank.Suggestion] for this background
    note: str = ""  # why there are no suggestions, if so
    stored_id: int | None = None  # the sample the current composite was saved as
    revision: int = 0  # counts every change (a UI compares it to redraw)
    shown: dict = field(default_factory=dict, repr=False, compare=False)  # a UI's memo of what it last drew

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
        self.placement = self.composite = self.stored_id = None
        self.revision += 1

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
        self._moved()
        return self.placement

    def _moved(self) -> None:
        # a composite shows the object where it was: once it moves, Preview makes the new one
        self.composite = self.stored_id = None
        self.revision += 1

    def set_scale(self, scale: float) -> None:
        """The object's longer side over the background's shorter side, in (0, 1]."""
        scale = check_scale(scale, error=SessionError)
        if scale != self.scale:
            self.scale = scale
            self._moved()

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
        self._moved()
        return self.scale

    def move_centre(self, x: float, y: float) -> None:
        h, w = self.background.shape[:2]
        self.centre = check_point(x, y, (h, w), "centre", error=SessionError)
        self._moved()

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
        self.composite, self.stored_id = comp, None
        self.revision += 1
        return comp

    def to_store(self, store, status: str = "accepted", tags=(), uid: str | None = None, meta: dict | None = None,
                 prompt: str | None = None, seed: int | None = None, model: str = "composite") -> int:
        """Store the composite as a new sample; the background's instances keep their kinds,
        the object is ``inserted``. Returns its id."""
        if self.composite is None:
            raise SessionError("Preview a composite first.")
        comp = self.composite
        self.stored_id = store_composite(
            store, comp.image, [(n, m, s, c) for (n, m), s, c in
                                zip(comp.instances, self.composite_sources, self.composite_crowd)],
            comp.record, uid=uid, status=status, tags=tags, model=model, seed=seed,
            prompt=prompt if prompt is not None else f"{self.origin} + {self.fg_class}",
            meta={"background": self.origin, "object": self.fg_origin,
                  "background_provenance": self.background_provenance or {"origin": self.origin, "license": None},
                  **(meta or {})})
        self.revision += 1
        return self.stored_id


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
