"""YOLO (Ultralytics) segmentation or detection: write and import.

Layout (Ultralytics ``data.yaml``; supervision ``from_yolo``; Datumaro ``yolo`` reads the
detection variant: its YOLO parser takes 5 fields per line, boxes only)::

    data.yaml                  train/val image folders, names {id: class}
    images/<split>/<id>.png
    labels/<split>/<id>.txt    segment: ``class x1 y1 x2 y2 ...`` one polygon per instance;
                               detect: ``class cx cy w h``; all normalised to [0, 1]
    provenance.json

A polygon holds every part and hole of a mask: the contours are joined by zero-width
bridges (see common._bridge), which fill back to the mask up to a line of pixels per
bridge; a small object in far-apart parts can fall below IoU 0.95 (on coco-mini 6 of 731,
all multi-part, 8-617 pixels): those are counted in ``lost``. Vertex x (a pixel index) is
written as (x + 0.25) / width: readers that truncate to ints (Ultralytics) and readers that
round (supervision) both get x back. Crowd regions
are not written (YOLO has none): counted in ``lost``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..dataset import NewSample, Store, StoreError, check_class
from ..images import image_size, load_image_file
from ..masks import bbox
from .common import confined, inside, iter_progress, json_dump, mask_to_polygon, polygon_to_mask, restore_kwargs
from .validate import DatasetFileError, check_masks_fit, check_provenance, image_header

TASKS = ("segment", "detect")
NO_CROWD = "crowd regions (no YOLO equivalent)"
MIN_FILL_IOU = 0.95
LOW_IOU = f"instances whose one polygon fills back with IoU < {MIN_FILL_IOU} (small multi-part objects)"


def write(ctx) -> int:
    task = ctx.yolo_task
    cid = {c: i for i, c in enumerate(ctx.categories)}
    n_inst = 0
    prov_all = {}
    for split in ctx.splits:
        for s in ctx.samples(split):
            rec = s.rec
            name = f"{rec.id:08d}"
            inside(ctx.root, f"images/{split}/{name}.png").write_bytes(s.image_bytes)
            lines, kept = [], []
            for i in s.instances:
                if not i.mask.any():
                    continue
                if i.iscrowd:
                    ctx.lost[NO_CROWD] = ctx.lost.get(NO_CROWD, 0) + 1
                    continue
                if task == "segment":
                    poly, fill_iou = mask_to_polygon(i.mask)
                    if fill_iou < MIN_FILL_IOU:
                        ctx.lost[LOW_IOU] = ctx.lost.get(LOW_IOU, 0) + 1
                    poly = poly.astype(np.float64)
                    if len(poly) < 3:  # a 1-2 pixel object: repeat points, readers want >= 3
                        poly = np.concatenate([poly] * 3)[:3]
                    xy = (poly + 0.25) / (rec.width, rec.height)  # see the module doc
                    coords = " ".join(f"{v:.6f}" for v in xy.reshape(-1))
                else:
                    x1, y1, x2, y2 = bbox(i.mask)
                    coords = (f"{(x1 + x2) / 2 / rec.width:.6f} {(y1 + y2) / 2 / rec.height:.6f} "
                              f"{(x2 - x1) / rec.width:.6f} {(y2 - y1) / rec.height:.6f}")
                lines.append(f"{cid[i.class_name]} {coords}")
                kept.append({"class": i.class_name, "source": i.source})
            n_inst += len(lines)
            inside(ctx.root, f"labels/{split}/{name}.txt").write_text("".join(ln + "\n" for ln in lines))
            prov_all[f"{split}/{name}"] = {**s.provenance, "instances": kept}
    splits = list(ctx.splits)
    names = "\n".join(f"  {i}: {json.dumps(c)}" for c, i in cid.items())
    # no `path:` key: Ultralytics then resolves the folders beside this file (a relative `path` would be
    # taken under its own datasets folder). `val:` names the validation split; without one (no --val)
    # it is left out rather than pointed at the training images, which would score a model on what it
    # was trained on: Ultralytics then asks for it, and the comment says how to get one.
    val = ("val: images/val\n" if "val" in splits else
           "# no validation split was exported: re-export with --val 0.2 (or add `val:` naming your own\n"
           "# validation images) before training; Ultralytics requires one\n")
    yaml = (f"# YOLO {task} dataset written by DiffuMask-Editor Studio\n"
            f"train: images/{splits[0]}\n{val}"
            f"task: {task}\nnc: {len(cid)}\nnames:\n{names}\n")
    inside(ctx.root, "data.yaml").write_text(yaml)
    inside(ctx.root, "provenance.json").write_text(json_dump(prov_all))
    return n_inst


DETECT_REFUSAL = ("a detection box (class cx cy w h): the store holds instance masks and a box is not a mask, "
                  "so a YOLO detect dataset cannot be imported; nothing was imported. Import the segment export "
                  "(--yolo-task segment) or the COCO/VOC/HF export of the same store instead")


def _refuse_detection(root: Path) -> None:
    """A detect dataset (``task: detect`` in data.yaml) is refused whole, before any image."""
    import yaml

    if yaml.safe_load((root / "data.yaml").read_text()).get("task") == "detect":
        raise StoreError(f"{root / 'data.yaml'} says task: detect, {DETECT_REFUSAL}")


def _read_names(data_yaml: Path) -> list[str]:
    import yaml

    try:
        doc = yaml.safe_load(data_yaml.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DatasetFileError(f"{data_yaml}: not a readable YAML file ({e})") from e
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DatasetFileError(f"{data_yaml}: 'names' must be a list of class names or a map {{0: name, ...}}")
    try:
        return [check_class(n) for n in names]
    except StoreError as e:
        raise DatasetFileError(f"{data_yaml}: {e}") from e


# Normalised coordinates are in [0, 1]; other writers round a vertex on the border a little over.
COORD_SLACK = 1e-3


def read_label_file(label: Path, names: list[str], hw: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
    """(class name, polygon as (N, 2) pixel indices) per line of a YOLO segmentation label
    file, every value checked: a message naming the file and line for anything else."""
    try:
        text = label.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetFileError(f"cannot read {label}: {e}") from e
    h, w = hw
    out = []
    for ln, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 5:
            raise DatasetFileError(f"{label}:{ln}: {DETECT_REFUSAL}")
        if len(parts) < 7 or len(parts) % 2 == 0:
            raise DatasetFileError(f"{label}:{ln}: not a segmentation polygon (class x1 y1 x2 y2 x3 y3 ...)")
        try:
            c = int(parts[0])
            xy = np.asarray([float(v) for v in parts[1:]], np.float64).reshape(-1, 2)
        except ValueError:
            raise DatasetFileError(f"{label}:{ln}: a class index and numbers expected, got {line[:80]!r}") from None
        if not 0 <= c < len(names):
            raise DatasetFileError(f"{label}:{ln}: class {c} is not in data.yaml's {len(names)} names")
        if not np.isfinite(xy).all() or (xy < -COORD_SLACK).any() or (xy > 1 + COORD_SLACK).any():
            raise DatasetFileError(f"{label}:{ln}: coordinates must be finite numbers in 0..1 (normalised to the "
                                   "image's width and height)")
        out.append((names[c], np.floor(xy.clip(0, 1) * (w, h))))
    check_masks_fit(len(out), hw, str(label))
    return out


def import_yolo(store: Store, root: str | os.PathLike, *, status: str = "accepted", tags: Sequence[str] = ("imported",),
                progress: bool = False) -> list[int]:
    """Add a YOLO segmentation dataset (data.yaml, images/<split>/, labels/<split>/): each
    polygon becomes an instance mask (filled as Ultralytics does). A detect dataset (``task:
    detect``, or box-only lines of 5 fields) cannot give masks and is refused with a message
    saying so (nothing imported). Returns the sample ids.

    Every image (inside the folder, symlinks resolved; size from its header) and label file
    is checked first, then the samples are written, each with a uid from its split and name:
    a stopped import is resumed by the same call."""
    root = Path(root)
    if not (root / "data.yaml").exists():
        raise StoreError(f"no data.yaml in {root}")
    names = _read_names(root / "data.yaml")
    _refuse_detection(root)
    prov_all = {}
    if (root / "provenance.json").exists():
        try:
            prov_all = json.loads((root / "provenance.json").read_text())
        except (OSError, ValueError) as e:
            raise DatasetFileError(f"{root / 'provenance.json'}: not valid JSON ({e})") from e
        if not isinstance(prov_all, dict):
            raise DatasetFileError(f"{root / 'provenance.json'}: must map each split/name to an object")
        for name, prov in prov_all.items():
            check_provenance(prov, f"{root / 'provenance.json'}: {name!r}")
    images = sorted(p for p in (root / "images").glob("*/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not images:
        raise StoreError(f"no images under {root / 'images'}")
    plan = []
    for img_path in images:
        split, stem = img_path.parent.name, img_path.stem
        rel = img_path.relative_to(root).as_posix()
        path = image_header(root, rel, f"YOLO image {rel!r}")  # a symlink out of the folder is refused
        hw = image_size(path)
        label = root / "labels" / split / f"{stem}.txt"
        polys = read_label_file(confined(root, label.relative_to(root).as_posix(), "YOLO label file"), names, hw) \
            if label.exists() else []
        plan.append((split, stem, img_path.name, path, hw, polys))
    ids = []
    for split, stem, file_name, path, (h, w), polys in iter_progress(plan, progress, "import yolo"):
        prov = prov_all.get(f"{split}/{stem}")
        uid = (prov or {}).get("uid") or f"yolo:{split}/{stem}"
        done = store.get_by_uid(uid)
        if done is not None:  # stored by an earlier run of this import: resume after it
            ids.append(done.id)
            continue
        image = load_image_file(path)
        inst = [(c, polygon_to_mask(xy, h, w)) for c, xy in polys]
        if prov:
            kwargs = restore_kwargs(prov)
            srcs = [i.get("source", "imported") if isinstance(i, dict) else "imported"
                    for i in prov.get("instances") or []]
            sources = srcs if len(srcs) == len(inst) else ["imported"] * len(inst)
            classes = prov.get("classes") or sorted({c for c, _ in inst}) or ["background"]
        else:
            kwargs = dict(tags=tags, meta={"origin": "photo", "photo": {"dataset": "yolo", "source_id": stem,
                                                                         "file_name": file_name, "license": None}})
            sources = ["imported"] * len(inst)
            classes = sorted({c for c, _ in inst}) or ["background"]
        kwargs["uid"] = uid
        ids.append(store.add(NewSample(image, classes, instances=inst, instance_sources=sources, status=status,
                                       **kwargs)))
    return ids
