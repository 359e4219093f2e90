"""Export curated samples as COCO (RLE), PASCAL VOC, YOLO or a Hugging Face dataset; import
them (and other COCO/VOC/YOLO datasets) back into a store.

One module per format (coco, voc, yolo, hf), each with its writer and importer. Every export
is written into a hidden temporary folder beside ``out`` and renamed into place when
complete, so a killed export leaves no partial ``out``. ``out`` may not be, contain or lie
inside the store (nor be the filesystem root, home or the current directory), and
``force=True`` only ever replaces a previous export unchanged: every file in the folder is
listed in its ``manifest.json`` with the same sha256 (checked before the export and again,
on the folder moved aside, once the new export is complete); anything else (a file added,
edited, a reader's cache, a hand-made manifest) is refused with the list of differences,
and nothing in ``out`` is touched before the new export is complete. A sample whose image or masks cannot be read is skipped and listed (id and
reason) in the report and the manifest. File names inside an export come from sample ids,
never from user text, and every path is checked to stay inside the export folder.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..dataset import Record, Store, check_class, check_tag
from ..processes import process_alive
from . import coco, hf, voc, yolo
from .coco import import_coco
from .common import (VOC_CLASSES, DamagedSample, ExportError, ExportReport, Sample, inside, iter_progress,
                     load_sample, mask_to_polygon, polygon_to_mask, provenance, sample_instances, voc_palette)
from .hf import import_hf
from .voc import import_voc, voc_class_ids
from .yolo import import_yolo

FORMATS = ("coco", "voc", "yolo", "hf")
_WRITERS = {"coco": coco.write, "voc": voc.write, "yolo": yolo.write, "hf": hf.write}

__all__ = ["FORMATS", "VOC_CLASSES", "ExportError", "ExportReport", "export", "import_coco", "import_hf",
           "import_voc", "import_yolo", "mask_to_polygon", "polygon_to_mask", "provenance", "sample_instances",
           "voc_class_ids", "voc_palette"]


class _Context:
    """What a format writer gets: the temporary root, the split records, the categories, its
    options, and ``samples(split)``, which loads each sample or records it as damaged."""

    def __init__(self, store: Store, root: Path, splits: dict[str, list[Record]], categories: list[str], *,
                 void_border: int, yolo_task: str, progress: bool):
        self.store, self.root, self.splits, self.categories = store, root, splits, categories
        self.void_border, self.yolo_task, self.progress = void_border, yolo_task, progress
        self.damaged: list[dict] = []
        self.lost: dict[str, int] = {}
        self.written: dict[str, int] = {}

    def samples(self, split: str) -> Iterator[Sample]:
        self.written[split] = 0
        for rec in iter_progress(self.splits[split], self.progress, f"{split}"):
            try:
                s = load_sample(self.store, rec)
            except DamagedSample as e:
                self.damaged.append({"sample_id": rec.id, "uid": rec.uid, "reason": str(e)})
                continue
            self.written[split] += 1
            yield s


def _split(records: list[Record], val_fraction: float, seed: int) -> dict[str, list[Record]]:
    if not 0 <= val_fraction < 1:
        raise ExportError(f"val fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return {"train": records}
    order = np.random.default_rng(seed).permutation(len(records))
    n_val = max(1, round(val_fraction * len(records)))
    val = {int(i) for i in order[:n_val]}
    return {"train": [r for i, r in enumerate(records) if i not in val],
            "val": [r for i, r in enumerate(records) if i in val]}


def _clean_stale(out: Path) -> None:
    """Remove what killed exports to ``out`` left beside it: ``.<out>.partial-<pid>-*`` (an
    unfinished export; kept while process <pid> still runs) and ``.<out>.old-*`` (a replaced
    export that was about to be checked and deleted: deleted if unchanged, else put back as
    ``out`` where that is free, else left alone)."""
    for p in out.parent.glob(f".{out.name}.partial-*"):
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
        except ValueError:
            continue
        if not process_alive(pid):  # while its writer runs, the partial export is left alone
            shutil.rmtree(p, ignore_errors=True)
    for p in out.parent.glob(f".{out.name}.old-*"):
        if not p.is_dir() or p.is_symlink():
            continue
        if not export_differences(p):  # the unchanged previous export: garbage
            shutil.rmtree(p, ignore_errors=True)
        elif not out.exists() and not out.is_symlink():  # killed before its check: it goes back in place
            p.rename(out)


# files that readers write into a dataset folder they read (glob under the export, what it is)
READER_CACHES = (("labels/*.cache", "an Ultralytics label cache"),
                 ("images/*/*.npy", "an Ultralytics image cache (cache=disk)"))
MAX_LISTED = 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _reader_cache(path: Path, rel: str) -> str | None:
    for pattern, what in READER_CACHES:
        if rel in {p.relative_to(path).as_posix() for p in path.glob(pattern)}:
            return what
    return None


def export_differences(path: Path) -> list[str]:
    """How the folder ``path`` differs from the export its ``manifest.json`` describes: one
    line per file added (reader caches named as such), edited (sha256 differs) or not a plain
    file; an empty list when every file is one the export wrote, unchanged. A folder without
    a readable export manifest gives one line saying so. Files the manifest lists that are
    gone are no difference: nothing would be lost by replacing the folder."""
    try:
        man = json.loads((path / "manifest.json").read_text())
        listed = man["sha256"]
        if man["format"] not in FORMATS or not isinstance(listed, dict) \
                or not all(isinstance(v, str) for v in listed.values()):
            return ["its manifest.json is not an export manifest (no export format or no sha256 per file)"]
    except (OSError, ValueError, KeyError, TypeError):
        return ["it has no readable export manifest.json"]
    diffs = []
    for dirpath, dirnames, filenames in os.walk(path):  # links are not followed: a link is itself a difference
        here = Path(dirpath)
        for name in sorted(filenames) + sorted(d for d in dirnames if (here / d).is_symlink()):
            f = here / name
            rel = f.relative_to(path).as_posix()
            if rel == "manifest.json":
                continue
            if f.is_symlink() or not f.is_file():
                diffs.append(f"not a plain file: {rel}")
            elif rel not in listed:
                what = _reader_cache(path, rel)
                diffs.append(f"added: {rel}" + (f" ({what})" if what else ""))
            elif _sha256(f) != listed[rel]:
                diffs.append(f"edited: {rel} (its sha256 differs from the manifest's)")
    return diffs


def _refusal(out: Path, diffs: list[str]) -> ExportError:
    shown = diffs[:MAX_LISTED] + ([f"... and {len(diffs) - MAX_LISTED} more"] if len(diffs) > MAX_LISTED else [])
    if diffs == ["it has no readable export manifest.json"] or diffs[0].startswith("its manifest.json"):
        return ExportError(f"refusing to replace {out}: {diffs[0]}. --force only replaces a previous export; "
                           "choose another --out")
    caches = any("cache" in d for d in diffs)
    return ExportError(
        f"refusing to replace {out}: it is not the export its manifest.json describes "
        f"({len(diffs)} difference{'s' * (len(diffs) != 1)}):\n  " + "\n  ".join(shown) +
        "\n--force only replaces a previous export unchanged, so nothing of yours is lost. Move those files "
        "elsewhere or delete them" + (" (reader caches are rebuilt by the reader on its next run)" if caches else "")
        + ", or export with --out to another folder.")


def check_out(store: Store, out: Path, force: bool) -> None:
    """Refuse an ``out`` whose writing or replacing could destroy data (ExportError)."""
    o = out.resolve()
    s = store.root.resolve()
    if o == s or s in o.parents:
        raise ExportError(f"refusing to export into the store itself ({out} is inside {store.root})")
    if o in s.parents:
        raise ExportError(f"refusing to export to {out}: it contains the store {store.root}")
    for special, what in ((Path(o.anchor), "the filesystem root"), (Path.home(), "the home folder"),
                          (Path.cwd(), "the current folder")):
        if o == special.resolve():
            raise ExportError(f"refusing to export to {out}: it is {what}; name a new folder")
    if out.parent.is_dir():
        _clean_stale(out)  # first: a killed --force may put a changed previous export back as `out`
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    if out.is_symlink() or not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder (or is a link); refusing to replace it")
    if any(out.iterdir()):
        diffs = export_differences(out)
        if diffs:
            raise _refusal(out, diffs)


def export(store: Store, fmt: str, out: str | os.PathLike, *, status: str | Sequence[str] | None = "accepted",
           classes: Sequence[str] | None = None, tags: Sequence[str] | None = None, val_fraction: float = 0.0,
           seed: int = 0, force: bool = False, void_border: int = 0, yolo_task: str = "segment",
           progress: bool = False) -> ExportReport:
    """Write the samples matching the filters to ``out`` in format ``fmt`` (coco, voc, yolo, hf).

    Samples that cannot be read are skipped and listed in ``report.damaged``; what a format
    cannot hold (hidden VOC objects, crowd regions in YOLO) is counted in ``report.lost``.
    Both are in ``out/manifest.json`` too."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; one of {FORMATS}")
    if yolo_task not in yolo.TASKS:
        raise ExportError(f"unknown YOLO task {yolo_task!r}; one of {yolo.TASKS}")
    classes = [check_class(c) for c in classes] if classes else None
    tags = [check_tag(t) for t in tags] if tags else None
    out = Path(out)
    check_out(store, out, force)
    records = store.query(status=status, classes=classes, tags=tags)
    if not records:
        raise ExportError(f"no samples match status={status} classes={classes} tags={tags}")
    if void_border < 0:
        raise ExportError("void border must be >= 0 pixels")
    splits = _split(records, val_fraction, seed)
    categories = sorted({i.class_name for r in records for i in r.instances} | {c for r in records for c in r.classes})
    try:
        return _write(store, fmt, out, records, splits, categories, status=status, classes=classes, tags=tags,
                      seed=seed, val_fraction=val_fraction, void_border=void_border, yolo_task=yolo_task,
                      progress=progress, force=force)
    except OSError as e:  # disk full, a read-only or forbidden target: the user can act on it
        why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the target is on a read-only file system",
               errno.EACCES: "no permission to write there", errno.EPERM: "no permission to write there"}
        raise ExportError(f"cannot write the export to {out}: {why.get(e.errno, e.strerror or str(e))} "
                          f"({type(e).__name__}); nothing was left behind, free space or choose another folder") from e


def _write(store, fmt, out, records, splits, categories, *, status, classes, tags, seed, val_fraction,
           void_border, yolo_task, progress, force) -> ExportReport:
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        ctx = _Context(store, tmp, splits, categories, void_border=void_border, yolo_task=yolo_task,
                       progress=progress)
        n_inst = _WRITERS[fmt](ctx)
        report = ExportReport(out, fmt, sum(ctx.written.values()), n_inst, dict(ctx.written), categories,
                              damaged=ctx.damaged, lost=ctx.lost)
        report.files = _manifest(tmp, report, status=status, classes=classes, tags=tags, seed=seed,
                                 val_fraction=val_fraction, **({"yolo_task": yolo_task} if fmt == "yolo" else {}))
        if out.exists() or out.is_symlink():  # force: swap in the new one, then drop the old
            if not force:  # made while this export ran
                raise ExportError(f"{out} appeared while the export ran; nothing was replaced (pass --force to "
                                  "replace a previous export)")
            _swap(out, tmp)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.out = out
    return report


def _swap(out: Path, new: Path) -> None:
    """Put the complete export ``new`` in place of the previous export ``out``. The old one is
    first moved aside (one rename), then checked again against its manifest: a file written
    or edited in it while the new export was being made is found there, the old folder goes
    back in place untouched and the export is refused (ExportError, ``new`` left for the
    caller to remove). Only an unchanged old export is deleted."""
    trash = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not out.is_dir() or out.is_symlink():
        raise ExportError(f"{out} changed while the export ran (it is no longer a folder); nothing was replaced")
    out.rename(trash)
    diffs = export_differences(trash) if any(trash.iterdir()) else []
    if diffs:
        try:
            trash.rename(out)
        except OSError:  # something made a new `out` meanwhile: keep both, say where the old one is
            kept = out.parent / f"{out.name}.previous-{uuid.uuid4().hex[:8]}"
            trash.rename(kept)
            raise ExportError(f"{out} changed while the export ran; the previous folder is kept as {kept}, "
                              "nothing was deleted") from None
        raise _refusal(out, diffs)
    new.rename(out)
    shutil.rmtree(trash, ignore_errors=True)


def _manifest(root: Path, report: ExportReport, **filters) -> dict[str, str]:
    files = {p.relative_to(root).as_posix(): _sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = {"format": report.format, "n_images": report.n_images, "n_instances": report.n_instances,
                "splits": report.splits, "categories": report.categories, "damaged": report.damaged,
                "lost": report.lost, "filters": dict(filters),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(), "sha256": files}
    inside(root, "manifest.json").write_text(json.dumps(manifest, indent=1))
    return files
