"""Export curated samples as COCO (RLE), PASCAL VOC, YOLO or a Hugging Face dataset; import
them (and other COCO/VOC/YOLO datasets) back into a store.

One module per format (coco, voc, yolo, hf), each with its writer and importer. Every export
is written into a hidden temporary folder beside ``out`` and renamed into place when
complete, so a killed export leaves no partial ``out``. ``out`` may not be, contain or lie
inside the store (nor be the filesystem root, home or the current directory), and
``force=True`` only ever replaces a previous export: a folder whose ``manifest.json`` lists
every file in it. A sample whose image or masks cannot be read is skipped and listed (id and
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
    export that was about to be deleted: always garbage, whoever made it)."""
    for p in out.parent.glob(f".{out.name}.partial-*"):
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
        except ValueError:
            continue
        if not process_alive(pid):  # while its writer runs, the partial export is left alone
            shutil.rmtree(p, ignore_errors=True)
    for p in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(p, ignore_errors=True)


def _is_previous_export(path: Path) -> tuple[bool, str]:
    """Whether ``path`` is an export this module wrote: a manifest.json naming a format and
    listing every file in the folder (so nothing the user put there is lost)."""
    try:
        man = json.loads((path / "manifest.json").read_text())
        listed = set(man["sha256"])
        if man["format"] not in FORMATS:
            return False, "its manifest.json names no export format"
    except (OSError, ValueError, KeyError, TypeError):
        return False, "it has no readable export manifest.json"
    extra = [p.relative_to(path).as_posix() for p in path.rglob("*")
             if not p.is_dir() and p.relative_to(path).as_posix() not in listed | {"manifest.json"}]
    if extra:
        return False, f"it holds files the export did not write: {', '.join(sorted(extra)[:5])}"
    return True, ""


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
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; refusing to replace it")
    if any(out.iterdir()):
        ok, why = _is_previous_export(out)
        if not ok:
            raise ExportError(f"refusing to replace {out}: {why}. --force only replaces a previous export")


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
                      progress=progress)
    except OSError as e:  # disk full, a read-only or forbidden target: the user can act on it
        why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the target is on a read-only file system",
               errno.EACCES: "no permission to write there", errno.EPERM: "no permission to write there"}
        raise ExportError(f"cannot write the export to {out}: {why.get(e.errno, e.strerror or str(e))} "
                          f"({type(e).__name__}); nothing was left behind, free space or choose another folder") from e


def _write(store, fmt, out, records, splits, categories, *, status, classes, tags, seed, val_fraction,
           void_border, yolo_task, progress) -> ExportReport:
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
        if out.exists():  # force (a previous export, checked above): swap in the new one, then drop the old
            trash = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            out.rename(trash)
            tmp.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.out = out
    return report


def _manifest(root: Path, report: ExportReport, **filters) -> dict[str, str]:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            files[p.relative_to(root).as_posix()] = h.hexdigest()
    manifest = {"format": report.format, "n_images": report.n_images, "n_instances": report.n_instances,
                "splits": report.splits, "categories": report.categories, "damaged": report.damaged,
                "lost": report.lost, "filters": dict(filters),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(), "sha256": files}
    inside(root, "manifest.json").write_text(json.dumps(manifest, indent=1))
    return files
