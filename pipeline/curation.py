"""Curation: page through a store's samples, review one at a time, change status (with a
history and undo), notes and threshold, and export what was kept.

The Curate & Export tab is a thin view over :class:`Curation` (as the Generate tab is over
:class:`pipeline.session.InspectSession`); nothing here knows about widgets, so every rule
(what a page holds, what a review shows, which status an undo restores, when a threshold
re-derives masks) is unit-tested without a browser. Pictures are numpy ``HWC uint8 RGB``
drawn from :meth:`Store.masks`, the masks every exporter writes, so what the reviewer sees
is what is exported.
"""
from __future__ import annotations

import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from . import viz
from .dataset import STATUSES, DamagedSampleError, Record, StatusAnswer, Store, StoreError
from .errors import PipelineError
from .export import ExportReport, export

PAGE_SIZE = 48
THUMB_CACHE_SIZE = 4096


class CurationError(PipelineError):
    """A curation request that cannot be carried out (no such change to undo, bad filter)."""


@dataclass(frozen=True)
class SampleFilter:
    """Which samples a page, a count or an export covers. ``None`` fields match everything."""

    status: str | None = None
    classes: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, status: str | None = None, classes: str | Sequence[str] | None = None,
              tags: str | Sequence[str] | None = None) -> "SampleFilter":
        """From a form: status (``"any"`` or empty = every status), comma-separated classes and tags."""
        status = None if status in (None, "", "any") else str(status)
        if status is not None and status not in STATUSES:
            raise CurationError(f"unknown status {status!r}; one of any, {', '.join(STATUSES)}")
        return cls(status, _words(classes), _words(tags))

    def query(self) -> dict:
        """Keyword arguments for :meth:`Store.query` / :meth:`Store.count` / :func:`export`."""
        return dict(status=self.status, classes=list(self.classes) if self.classes else None,
                    tags=list(self.tags) if self.tags else None)

    def describe(self) -> str:
        what = f"{self.status} samples" if self.status else "samples of every status (including rejected)"
        if self.classes:
            what += f" of classes {', '.join(self.classes)}"
        if self.tags:
            what += f" tagged {', '.join(self.tags)}"
        return what


def _words(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    items = text.split(",") if isinstance(text, str) else (text or [])
    return tuple(w.strip() for w in items if w and w.strip()) or None


@dataclass
class Tile:
    """One gallery picture: ``picture`` HWC uint8 (the sample with its masks, or a crossed
    tile for a damaged sample) and its caption."""

    sample_id: int
    picture: np.ndarray
    caption: str
    damaged: str | None = None


@dataclass
class Page:
    """One page of samples matching a filter (``page`` is 0-based and clamped to the pages there are)."""

    tiles: list[Tile]
    total: int
    page: int
    pages: int

    @property
    def ids(self) -> list[int]:
        return [t.sample_id for t in self.tiles]

    @property
    def summary(self) -> str:
        return f"{self.total} samples · page {self.page + 1} of {self.pages}"


@dataclass
class Review:
    """The large view of one sample. ``picture``: HWC uint8, the image with its instance masks
    (or its heat map), at least 384 px on its longer side; ``damaged``: why it cannot be shown."""

    record: Record
    picture: np.ndarray | None
    history: list[dict] = field(default_factory=list)
    damaged: str | None = None

    @property
    def threshold(self) -> float | None:
        return self.record.effective_threshold

    @property
    def threshold_applies(self) -> bool:
        """Whether a threshold change means anything: only masks derived from the heat map follow it."""
        return any(i.source == "generated" for i in self.record.instances)

    def details(self) -> list[str]:
        """Lines describing the sample (markdown)."""
        r = self.record
        if self.damaged:
            return [f"#{r.id} is damaged: {self.damaged}"]
        kinds = ", ".join(sorted({i.source for i in r.instances})) or "no mask"
        lines = [f"**#{r.id}** · {', '.join(r.classes)} · **{r.status}** · mask: {kinds}",
                 f"prompt “{r.prompt}”" + (f" · seed {r.seed}" if r.seed is not None else "") + f" · model {r.model}"
                 if r.prompt else f"model {r.model}"]
        t = self.threshold
        if t is not None:
            lines.append(f"threshold {t:.2f}" + (f" (yours; the refiner chose {r.threshold:.2f})"
                                                  if r.user_threshold is not None and r.threshold is not None else ""))
        if r.tags:
            lines.append("tags: " + ", ".join(r.tags))
        if self.history:
            lines.append("history: " + " → ".join(h["to"] for h in self.history))
        return lines


class Curation:
    """Curation over one store folder. Each call opens the store for its own work (a studio
    serves many sessions and the batch runner may write meanwhile); thumbnails are cached by
    the sample's image and mask blobs, so a changed mask is never shown stale."""

    def __init__(self, store_dir: str | Path, page_size: int = PAGE_SIZE):
        self.store_dir = Path(store_dir)
        self.page_size = int(page_size)

    def _store(self) -> Store:
        return Store(self.store_dir)

    # -- reading ----------------------------------------------------------------------------
    def count(self, where: SampleFilter = SampleFilter()) -> int:
        with self._store() as store:
            return store.count(**where.query())

    def page(self, where: SampleFilter = SampleFilter(), page: int = 0) -> Page:
        """The ``page``-th page of samples matching ``where``, with their thumbnails."""
        with self._store() as store:
            total = store.count(**where.query())
            pages = max(1, -(-total // self.page_size))
            page = min(max(int(page or 0), 0), pages - 1)
            recs = store.query(**where.query(), limit=self.page_size, offset=page * self.page_size)
            tiles = []
            for r in recs:
                try:
                    tiles.append(Tile(r.id, thumbnail(store, r), caption(r)))
                except StoreError as e:
                    reason = e.reason if isinstance(e, DamagedSampleError) else str(e)
                    tiles.append(Tile(r.id, damaged_tile(), f"#{r.id} ⚠ damaged: {reason}", reason))
        return Page(tiles, total, page, pages)

    def review(self, sample_id: int, show_heat: bool = False) -> Review:
        """One sample's large view: its image with its masks (or its heat map, if it has one)."""
        with self._store() as store:
            r = store.get(sample_id)
            try:
                img = store.load_image(r)
                if show_heat and r.heat_map:
                    view = viz.overlay_heat(img, store.heat(r))
                else:
                    masks = store.masks(r)
                    view = viz.overlay_instances(img, [m for _, m in masks]) if masks else img
            except DamagedSampleError as e:
                return Review(r, None, damaged=e.reason)
            history = store.status_history(r.id)
        return Review(r, viz.upscale_for_display(view, 384), history)

    # -- changes ------------------------------------------------------------------------------
    def set_status(self, ids: int | Sequence[int], status: str, by: str = "curate") -> int:
        """Set the status of one sample or several (recorded in each one's history); returns how many changed."""
        ids = [ids] if isinstance(ids, (int, np.integer)) else list(ids or [])
        with self._store() as store:
            return store.set_status(ids, status, by=by)

    def change_status(self, sample_id: int, status: str, by: str = "curate") -> StatusAnswer:
        """Set one sample's status, compare-and-set in one transaction; the answer is what is
        stored at its commit (another session's change may have come first)."""
        with self._store() as store:
            return store.change_status(int(sample_id), status, by=by)

    def undo(self, sample_id: int) -> StatusAnswer:
        """Put back the status a sample had before its last change, in one transaction; the answer is what is stored."""
        with self._store() as store:
            try:
                return store.undo_status(int(sample_id))
            except StoreError as e:
                if "no status change to undo" in str(e):
                    raise CurationError(str(e)) from None
                raise

    def undo_status(self, sample_id: int) -> str:
        """Put back the status a sample had before its last change; returns the status stored after it."""
        return self.undo(sample_id).status

    def save_details(self, sample_id: int, notes: str, threshold: float | None = None) -> bool:
        """Save the notes and, when ``threshold`` differs from the sample's, re-derive its masks
        at that threshold (the store's one rule; a hand-edited mask refuses). Returns whether
        the masks were re-derived."""
        with self._store() as store:
            rec = store.get(sample_id)
            store.update(sample_id, notes=notes or "")
            if threshold is not None and rec.effective_threshold is not None \
                    and abs(float(threshold) - rec.effective_threshold) > 1e-6:
                store.set_threshold(sample_id, float(threshold))
                return True
        return False

    # -- export -------------------------------------------------------------------------------
    def export_summary(self, where: SampleFilter) -> str:
        """What an export with this filter will include, said before anything is written."""
        return f"The export will include {self.count(where)} {where.describe()}."

    def export_archive(self, fmt: str, where: SampleFilter, work_dir: str | Path,
                       val_fraction: float = 0.0) -> tuple[Path, ExportReport]:
        """Export into ``work_dir/dataset-<fmt>``, zip it to ``work_dir/dataset-<fmt>.zip`` and
        remove the folder (the zip is what a user downloads). Nothing is left on failure."""
        work_dir = Path(work_dir)
        out = work_dir / f"dataset-{fmt}"
        try:
            with self._store() as store:
                rep = export(store, fmt, out, **where.query(), val_fraction=float(val_fraction or 0))
            archive = Path(shutil.make_archive(str(out), "zip", rep.out))
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            (work_dir / f"dataset-{fmt}.zip").unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(out, ignore_errors=True)
        return archive, rep


def describe_export(rep: ExportReport) -> str:
    """One line: what an export wrote, what its format could not hold, what was damaged."""
    splits = ", ".join(f"{k} {v}" for k, v in rep.splits.items())
    info = f"{rep.n_images} images, {rep.n_instances} instances ({splits})"
    info += "".join(f"; not held by {rep.format}: {n} {what}" for what, n in rep.lost.items())
    if rep.damaged:  # all of them, with reasons, are in the export's manifest.json
        info += f"; **{len(rep.damaged)} damaged samples skipped**: " + ", ".join(
            f"#{d['sample_id']} ({d['reason']})" for d in rep.damaged[:5])
    return info


def caption(r: Record) -> str:
    return f"#{r.id} {', '.join(r.classes)} · {r.status}"


# -- thumbnails ---------------------------------------------------------------------------------
_THUMBS: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
_THUMBS_LOCK = threading.Lock()


def thumbnail(store: Store, rec: Record) -> np.ndarray:
    """A sample's gallery picture (HWC uint8: the image with the union of its masks, 128-256 px),
    cached by its store, image and instance-mask blobs: any change to a mask changes the key."""
    key = (str(store.root), rec.id, rec.image, ",".join(i.mask for i in rec.instances))
    with _THUMBS_LOCK:
        if key in _THUMBS:
            _THUMBS.move_to_end(key)
            return _THUMBS[key]
    img = store.load_image(rec)
    masks = store.masks(rec)
    if masks:
        img = viz.overlay_mask(img, np.any([m for _, m in masks], axis=0))
    pic = viz.upscale_for_display(img, 128) if max(img.shape[:2]) < 128 else viz.fit_within(img, 256)
    with _THUMBS_LOCK:
        _THUMBS[key] = pic
        while len(_THUMBS) > THUMB_CACHE_SIZE:
            _THUMBS.popitem(last=False)
    return pic


def clear_thumbnails() -> None:
    """Forget every cached thumbnail (benchmarks measure a cold gallery with it)."""
    with _THUMBS_LOCK:
        _THUMBS.clear()


def damaged_tile(size: int = 128) -> np.ndarray:
    """A grey tile crossed in red: the gallery's picture for a sample that cannot be read."""
    tile = np.full((size, size, 3), 70, np.uint8)
    cv2.line(tile, (0, 0), (size - 1, size - 1), (200, 60, 60), 3)
    cv2.line(tile, (size - 1, 0), (0, size - 1), (200, 60, 60), 3)
    return tile
