"""An object bank: every instance in the store as an object to insert (copy-paste).

Any instance of a stored sample (imported COCO/VOC photos, accepted generated samples,
earlier composites) can be cut out with its mask and pasted into another background, the
"simple copy-paste" augmentation of Ghiasi et al. (CVPR 2021), here with this project's
placement and harmonization on top. :meth:`ObjectBank.cut_out` gives what
:func:`pipeline.compose.paste` and the placement scorers take: the object's RGB crop (HWC
uint8) and its mask (HW bool), cropped to the mask's bounding box.

:func:`supply` tells which of the thesaurus' suggestions the current sources can provide
(the generator's vocabulary, the bank's classes) and puts those first, so a user inserting
into a photo of horses is offered what can actually be drawn or cut out.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .dataset import Store
from .errors import PipelineError


EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


class BankError(PipelineError, ValueError):
    """The bank has no object of the class asked for, or the object cannot be cut out."""


@dataclass(frozen=True)
class BankObject:
    """One instance of a stored sample. ``bbox`` XYXY in the sample's pixels (x2/y2 exclusive)."""

    sample_id: int
    index: int  # position in the sample's instance list
    class_name: str
    source: str  # imported | generated | inserted | user
    bbox: tuple[int, int, int, int]

    @property
    def box_area(self) -> int:
        x1, y1, x2, y2 = self.bbox
        return (x2 - x1) * (y2 - y1)


class ObjectBank:
    """The instances of a :class:`pipeline.dataset.Store`, indexed by class.

    ``status``: which samples count (default accepted only, what a user has vetted).
    ``min_side``: objects whose box is narrower or lower than this many pixels are left out
    (they would be blown up when pasted). ``whole_only``: leave out objects whose box
    touches the image border, which are usually cut off by the frame and look truncated
    when pasted elsewhere. ``exclude_ids``: samples left out (a batch run leaves out its own,
    so the bank it draws from does not grow under it). The index is built once; call
    :meth:`refresh` after the store changes."""

    def __init__(self, store: Store, status: str | Sequence[str] = ("accepted",), min_side: int = 24,
                 whole_only: bool = True, sources: Sequence[str] | None = None, exclude_ids: Iterable[int] = ()):
        self.store = store
        self.exclude_ids = frozenset(int(i) for i in exclude_ids)
        self.status = status
        self.min_side = int(min_side)
        self.whole_only = whole_only
        self.sources = tuple(sources) if sources is not None else None
        self.refresh()

    def refresh(self) -> None:
        by_class: dict[str, list[BankObject]] = {}
        for rec in self.store.query(status=self.status):
            if rec.id in self.exclude_ids:
                continue
            for i, inst in enumerate(rec.instances):
                x1, y1, x2, y2 = (int(v) for v in inst.bbox)
                if min(x2 - x1, y2 - y1) < self.min_side:
                    continue
                if self.whole_only and (x1 <= 0 or y1 <= 0 or x2 >= rec.width or y2 >= rec.height):
                    continue
                if self.sources is not None and inst.source not in self.sources:
                    continue
                if inst.iscrowd:  # a crowd region is a group of objects, not one to cut out
                    continue
                by_class.setdefault(inst.class_name, []).append(
                    BankObject(rec.id, i, inst.class_name, inst.source, (x1, y1, x2, y2)))
        self._by_class = by_class

    def classes(self) -> dict[str, int]:
        """Class name -> number of objects, most first (ties by name)."""
        return dict(sorted(((c, len(v)) for c, v in self._by_class.items()), key=lambda kv: (-kv[1], kv[0])))

    def __contains__(self, class_name: str) -> bool:
        return bool(self._by_class.get(class_name))

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_class.values())

    def objects(self, class_name: str) -> list[BankObject]:
        """The objects of a class, largest box first (ties by sample, then index)."""
        return sorted(self._by_class.get(class_name, []), key=lambda o: (-o.box_area, o.sample_id, o.index))

    def pick(self, class_name: str, seed: int | None = None) -> BankObject:
        """One object of the class: the largest when ``seed`` is None, else a seeded draw."""
        objs = self.objects(class_name)
        if not objs:
            have = ", ".join(self.classes()) or "none"
            raise BankError(f"the object bank has no {class_name!r} (classes in the bank: {have})")
        return objs[0] if seed is None else random.Random(seed).choice(objs)

    def cut_out(self, obj: BankObject, margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The object's RGB crop (HWC uint8) and mask (HW bool), cropped to the mask's box
        widened by ``margin`` pixels (clipped to the image). Other objects' pixels in the
        crop stay in the image but are outside the mask."""
        from .masks import bbox

        rec = self.store.get(obj.sample_id)
        if obj.index >= len(rec.instances) or rec.instances[obj.index].class_name != obj.class_name:
            raise BankError(f"sample {obj.sample_id} changed since the bank was built: refresh() it")
        mask = self.store.mask(rec.instances[obj.index].mask)
        box = bbox(mask)
        if box is None:
            raise BankError(f"instance {obj.index} of sample {obj.sample_id} has an empty mask")
        image = self.store.image(rec.image)
        x1, y1, x2, y2 = box
        h, w = mask.shape
        x1, y1, x2, y2 = max(0, x1 - margin), max(0, y1 - margin), min(w, x2 + margin), min(h, y2 + margin)
        return np.ascontiguousarray(image[y1:y2, x1:x2]), np.ascontiguousarray(mask[y1:y2, x1:x2])


@dataclass(frozen=True)
class Suggestion:
    """A thesaurus suggestion and who can supply it: ``"model"`` (the generator's
    vocabulary) and/or ``"bank"`` (objects in the store)."""

    name: str
    score: float
    suppliers: tuple[str, ...]

    @property
    def supplied(self) -> bool:
        return bool(self.suppliers)

    def label(self) -> str:
        """e.g. ``horse (0.31; bank)`` or ``car (0.12; not available)``."""
        who = " + ".join(self.suppliers) if self.suppliers else "not available"
        return f"{self.name} ({self.score:.2f}; {who})"


def supply(suggestions: Iterable, vocabulary: Iterable[str] | None = None,
           bank: ObjectBank | None = None) -> list[Suggestion]:
    """Annotate suggestions (thesaurus ``rank`` tuples ``(name, score, support)`` or names)
    with who can supply each and order them: supplied ones first, in the thesaurus' order.

    ``vocabulary``: the classes the current generator can draw (None: any class, as a real
    Stable Diffusion model draws whatever is named)."""
    vocab = None if vocabulary is None else {v.lower() for v in vocabulary}
    out = []
    for s in suggestions:
        name, score = (s, 0.0) if isinstance(s, str) else (s[0], float(s[1]))
        who = []
        if vocab is None or name.lower() in vocab:
            who.append("model")
        if bank is not None and name in bank:
            who.append("bank")
        out.append(Suggestion(name, score, tuple(who)))
    return [s for s in out if s.supplied] + [s for s in out if not s.supplied]


def import_examples(store: Store, status: str = "accepted") -> list[int]:
    """Add the shipped example photos (assets/examples: four CC BY 2.0 COCO photos with
    their COCO instance masks, see its ATTRIBUTION.md) to ``store``, tagged ``example``;
    idempotent (uids are the file names). Returns the sample ids."""
    from .export import import_coco

    return import_coco(store, EXAMPLES / "instances.json", EXAMPLES / "images", status=status, tags=("example",))
