"""What a sample is: its statuses and instance kinds, the value objects the store hands out
(:class:`Record`, :class:`Instance`, :class:`StatusAnswer`) and takes (:class:`NewSample`),
and the validators of what a user may put in a record (tags, class names, thresholds, images)."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, fields
from typing import Iterable, Sequence

import numpy as np

from ..images import ImageError, check_image
from .errors import StoreError

STATUSES = ("pending", "accepted", "rejected")
# Where an instance mask came from. Only "generated" masks (the heat map at the sample's
# threshold) are re-derived when the threshold changes; the others are kept as stored.
SOURCES = ("generated", "refined", "user", "inserted", "imported")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
_CLASS = re.compile(r"^[^\x00-\x1f/\\:,]{1,64}$")



def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG.match(tag) or ".." in tag:
        raise StoreError(f"bad tag {tag!r}: use letters, digits, space, '_', '-', '.' (at most 64), no '..'")
    return tag


def check_class(name: str) -> str:
    if not isinstance(name, str) or not _CLASS.match(name.strip()) or name.strip() in (".", ".."):
        raise StoreError(f"bad class name {name!r}: 1-64 characters, no '/' '\\' ':' ',' or control characters "
                         "(':' and ',' separate fields of the exports' label maps)")
    return name.strip()


@dataclass
class Instance:
    """One object in a sample: its class, its mask (a blob key) and where it came from."""

    class_name: str
    mask: str
    bbox: list[int]  # XYXY, x2/y2 exclusive
    source: str = "generated"  # one of SOURCES
    iscrowd: bool = False  # a COCO crowd region (one mask over a group of objects), kept from an import


@dataclass
class Record:
    """A stored sample as read back (blobs by key; load them with Store.image/mask/array)."""

    id: int
    uid: str
    image: str
    width: int
    height: int
    classes: list[str]
    prompt: str
    seed: int | None
    model: str
    heat_map: str | None
    threshold: float | None
    user_threshold: float | None
    refined_mask: str | None
    instances: list[Instance]
    inserted: list[dict]
    status: str
    tags: list[str]
    notes: str
    meta: dict
    created: float
    updated: float
    run: str | None = None  # batch candidates: the run key, class and k (indexed columns)
    run_class: str | None = None
    run_k: int | None = None

    @property
    def effective_threshold(self) -> float | None:
        return self.user_threshold if self.user_threshold is not None else self.threshold


RECORD_FIELDS = {f.name for f in fields(Record)}


@dataclass(frozen=True)
class StatusAnswer:
    """What a status change left stored, read in the transaction that decided it: the
    sample's ``status`` after the call, whether this call ``changed`` it, and how many status
    changes its history holds then (``history_len``: this change's place in the history)."""

    sample_id: int
    status: str
    changed: bool
    history_len: int


def check_threshold(t, label: str) -> float | None:
    """A stored threshold: None (not recorded) or the range of :func:`pipeline.limits.check_threshold`."""
    from ..limits import check_threshold as in_range

    return None if t is None else in_range(t, label, error=StoreError)


def history_entry(old: str, new: str, by: str) -> dict:
    return {"from": old, "to": new, "by": by, "time": round(time.time(), 3)}


def store_image(image: np.ndarray) -> np.ndarray:
    """check_image with the store's error (nothing is written for a bad image)."""
    try:
        return check_image(image)
    except ImageError as e:
        raise StoreError(str(e)) from e


@dataclass
class NewSample:
    """A sample to store, as :meth:`Store.add <pipeline.store.database.Store.add>` takes it.

    ``image`` HWC uint8 RGB; ``instances`` (class name, HW bool mask) pairs, back to front,
    with ``instance_sources`` (where each came from, :data:`SOURCES`; default all
    ``generated``) and ``instance_crowd`` (per instance, a COCO crowd region; default none);
    ``heat_map`` HW float in [0, 1]; ``threshold`` the refiner's, ``user_threshold`` the
    user's (both in [0, 1]); ``refined_mask`` HW bool; ``run`` (run key, class, k) of a batch
    candidate; ``uid`` makes adding idempotent (default: a new random one). Nothing here is
    validated until the store adds it (then all of it, before anything is written)."""

    image: np.ndarray
    classes: Sequence[str]
    instances: Sequence[tuple[str, np.ndarray]] = ()
    uid: str | None = None
    prompt: str = ""
    seed: int | None = None
    model: str = ""
    heat_map: np.ndarray | None = None
    threshold: float | None = None
    refined_mask: np.ndarray | None = None
    status: str = "pending"
    tags: Iterable[str] = ()
    notes: str = ""
    meta: dict | None = None
    inserted: Sequence[dict] = ()
    instance_sources: Sequence[str] | None = None
    user_threshold: float | None = None
    instance_crowd: Sequence[bool] | None = None
    run: tuple[str, str, int] | None = None
