"""Curation: page through a store's samples, review one at a time, change status (with a
history and undo), notes and threshold, and export what was kept.

The Curate & Export tab is a thin view over :class:`CurateSession` (one per browser session:
filter, page, highlight, the user's own status changes to undo, a threshold being previewed,
the last export) over :class:`Curation` (as the Generate tab is over
:class:`pipeline.inspect.InspectSession`); nothing here knows about widgets, so every rule
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

import numpy as np

from . import viz
from .dataset import STATUSES, DamagedSampleError, Record, StatusAnswer, Store, StoreError
from .errors import PipelineError
from .export import ExportReport, export

from .masks import derive_generated  # the store's rule for re-deriving threshold masks

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


def parse_tags(text: str | Sequence[str] | None) -> list[str]:
    """Tags (or classes) from a form's comma-separated text: stripped, empty ones dropped.
    The one parser of the studio's tag and class boxes."""
    return list(_words(text) or ())


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
                    tiles.append(Tile(r.id, viz.damaged_tile(), f"#{r.id} ⚠ damaged: {reason}", reason))
        return Page(tiles, total, page, pages)

    def review(self, sample_id: int, show_heat: bool = False, threshold: float | None = None) -> Review:
        """One sample's large view: its image with its masks (or its heat map, if it has one).
        ``threshold``: preview the masks as Save would re-derive them at that threshold (the
        store's rule, nothing written)."""
        with self._store() as store:
            r = store.get(sample_id)
            try:
                img = store.load_image(r)
                if show_heat and r.heat_map:
                    view = viz.overlay_heat(img, store.heat(r))
                else:
                    masks = store.masks(r)
                    if threshold is not None and r.heat_map and any(i.source == "generated" for i in r.instances):
                        derived = derive_generated(store.heat(r), float(threshold), [m for _, m in masks],
                                                   [i.source for i in r.instances])
                        masks = [(c, m if d is None else d) for (c, m), d in zip(masks, derived)]
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

    def change_status(self, sample_id: int, status: str, by: str = "curate", expect: str | None = None) -> StatusAnswer:
        """Set one sample's status (only if it is ``expect``, when given), compare-and-set in one
        transaction; the answer is what is stored at its commit (another session may have come first)."""
        with self._store() as store:
            return store.change_status(int(sample_id), status, by=by, expect=expect)

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
        return self.undo(sample_id).status  # the status stored after the undo
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


# -- one browser session's curation ------------------------------------------------------------
@dataclass
class CurateSession:
    """What one user's Curate & Export tab holds: the filter and page, the highlighted sample,
    the status changes this user made (undo takes back the last one, wherever the highlight
    went since), a threshold being previewed before Save, and the last export."""

    curation: Curation
    where: SampleFilter = field(default_factory=SampleFilter)
    page_no: int = 0
    page: Page | None = None
    index: int | None = None
    show_heat: bool = False
    preview: float | None = None  # a threshold shown for the highlighted sample, not saved yet
    changes: list = field(default_factory=list)  # the user's status changes, newest last: {id: status before}
    export_status: str = "accepted"  # which samples an export takes (with the gallery's classes and tags)
    last_export: tuple | None = None  # (zip path, description) of the last export that worked
    message: str = ""  # the last action's outcome, in the user's words
    revision: int = 0  # counts every change (a UI compares it to redraw)
    shown: dict = field(default_factory=dict, repr=False, compare=False)  # a UI's memo of what it last drew

    @classmethod
    def open(cls, store_dir: str | Path, page_size: int = PAGE_SIZE) -> "CurateSession":
        ses = cls(Curation(store_dir, page_size))
        ses.refresh()
        return ses

    # -- what is shown ------------------------------------------------------------------------
    @property
    def ids(self) -> list[int]:
        return self.page.ids if self.page is not None else []

    @property
    def current(self) -> int | None:
        """The highlighted sample's id (None: nothing highlighted)."""
        return self.ids[self.index] if self.index is not None and self.index < len(self.ids) else None

    def review(self) -> Review | None:
        """The highlighted sample's large view (at the previewed threshold, if any)."""
        sid = self.current
        return None if sid is None else self.curation.review(sid, self.show_heat, self.preview)

    @property
    def export_where(self) -> SampleFilter:
        return SampleFilter(None if self.export_status == "any" else self.export_status, self.where.classes,
                            self.where.tags)

    def export_summary(self) -> str:
        return self.curation.export_summary(self.export_where)

    # -- navigation ---------------------------------------------------------------------------
    def _touch(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        self.revision += 1

    def refresh(self) -> None:
        """Read the page again (the store may have changed); the highlight stays on its position."""
        self.page = self.curation.page(self.where, self.page_no)
        self.page_no = self.page.page
        if self.index is not None:
            self.index = min(self.index, len(self.ids) - 1) if self.ids else None
        self._touch()

    def set_filter(self, status: str | None, classes: str | None, tags: str | None) -> None:
        where = SampleFilter.parse(status, classes, tags)  # refused before anything changes
        self.where, self.page_no, self.index, self.preview = where, 0, None, None
        self.refresh()

    def turn_page(self, delta: int) -> None:
        self.page_no, self.index, self.preview = max(0, self.page_no + int(delta)), None, None
        self.refresh()

    def select(self, index: int | None) -> None:
        if index is not None and not 0 <= int(index) < len(self.ids):
            raise CurationError(f"no sample at position {index} on this page")
        if index != self.index:
            self.index, self.preview = (None if index is None else int(index)), None
        self._touch()

    def step(self, delta: int) -> None:
        """Highlight the next (+1) or previous (-1) sample of the page."""
        if not self.ids:
            raise CurationError("No samples on this page: change the filters or press Refresh.")
        index = 0 if self.index is None else min(max(self.index + int(delta), 0), len(self.ids) - 1)
        self.select(index)

    def set_show_heat(self, show: bool) -> None:
        self.show_heat = bool(show)
        self._touch()

    # -- changes ------------------------------------------------------------------------------
    def _need_current(self) -> int:
        if self.current is None:
            raise CurationError("Select a sample in the gallery first.")
        return self.current

    def _statuses(self, ids) -> dict:
        with self.curation._store() as store:
            return {i: store.get(i).status for i in ids}

    def set_status(self, status: str) -> None:
        """The highlighted sample gets ``status`` (compare-and-set: the message says what is
        stored, another session's change may have come first); the highlight moves on."""
        sid = self._need_current()
        before = self._statuses([sid])
        answer = self.curation.change_status(sid, status, expect=before[sid])
        if answer.changed:
            self.changes.append(before)
        self.refresh()
        if self.ids:
            self.index, self.preview = min((self.index or 0) + 1, len(self.ids) - 1), None
        self._touch(f"#{sid} {answer.status}" + ("" if answer.status == status else
                                                  " (changed by someone else meanwhile: not set)"))

    def bulk(self, status: str) -> int:
        """Every sample on the page gets ``status`` (one change for undo)."""
        ids = self.ids
        before = self._statuses(ids)
        n = self.curation.set_status(ids, status)
        if ids:
            self.changes.append(before)
        self.refresh()
        self._touch(f"{n} samples {status}")
        return n

    def undo(self) -> str:
        """Take back this user's last status change (one sample or a page), wherever the
        highlight is now; the highlight goes to the sample it changed. Returns what was done."""
        if not self.changes:
            raise CurationError("Nothing to undo: you have not changed a status here yet.")
        before = self.changes.pop()
        by_status: dict[str, list[int]] = {}
        for sid, status in before.items():
            by_status.setdefault(status, []).append(sid)
        for status, ids in by_status.items():
            self.curation.set_status(ids, status, by="undo")
        self.refresh()
        if len(before) == 1:
            sid = next(iter(before))
            if sid in self.ids:
                self.index, self.preview = self.ids.index(sid), None
            text = f"#{sid} back to {before[sid]}"
        else:
            text = f"{len(before)} samples back to their status before"
        self._touch(text)
        return text

    def preview_threshold(self, threshold: float | None) -> None:
        """Show the highlighted sample's masks re-derived at ``threshold`` (not saved)."""
        sid = self._need_current()
        rev = self.curation.review(sid)
        if threshold is not None and not rev.threshold_applies:
            raise CurationError(f"#{sid}'s mask is not a threshold mask (hand-edited, refined or imported): "
                                "the threshold does not change it")
        self.preview = None if threshold is None or (rev.threshold is not None and
                                                     abs(float(threshold) - rev.threshold) < 1e-6) else float(threshold)
        self._touch()

    def save(self, notes: str, threshold: float | None) -> str:
        """Save the notes and, for a threshold mask, the threshold shown (re-deriving its masks)."""
        sid = self._need_current()
        rev = self.curation.review(sid)
        t = threshold if rev.threshold_applies else None
        if self.curation.save_details(sid, notes, t):
            text = f"#{sid}: notes saved, masks re-derived at threshold {float(t):.2f}"
        elif rev.threshold_applies:
            text = f"#{sid}: notes saved (threshold unchanged)"
        else:
            text = f"#{sid}: notes saved (its mask is not a threshold mask: no threshold to save)"
        self.preview = None
        self.refresh()
        self._touch(text)
        return text

    def set_export_status(self, status: str | None) -> None:
        SampleFilter.parse(status)  # refused before anything changes
        self.export_status = status or "any"
        self._touch()

    def exported(self, path: str, description: str) -> None:
        self.last_export = (str(path), description)
        self._touch(description)


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
