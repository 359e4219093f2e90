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

from ..dataset import NewSample, Store, StoreError, load_image_file
from ..masks import bbox
from .common import inside, json_dump, mask_to_polygon, polygon_to_mask, restore_kwargs

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
    # taken under its own datasets folder). `val` is required; without a val split it names train.
    yaml = (f"# YOLO {task} dataset written by DiffuMask-Editor Studio\n"
            f"train: images/{splits[0]}\nval: images/{'val' if 'val' in splits else splits[0]}\n"
            f"task: {task}\nnc: {len(cid)}\nnames:\n{names}\n")
    inside(ctx.root, "data.yaml").write_text(yaml)
    inside(ctx.root, "provenance.json").write_text(json_dump(prov_all))
    return n_inst


def _read_names(data_yaml: Path) -> list[str]:
    import yaml

    names = yaml.safe_load(data_yaml.read_text())["names"]
    return [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)


def import_yolo(store: Store, root: str | os.PathLike, *, status: str = "accepted", tags: Sequence[str] = ("imported",),
                progress: bool = False) -> list[int]:
    """Add a YOLO segmentation dataset (data.yaml, images/<split>/, labels/<split>/): each
    polygon becomes an instance mask (filled as Ultralytics does). Box-only lines (5 fields)
    cannot give a mask and are refused. Returns the new sample ids."""
    root = Path(root)
    if not (root / "data.yaml").exists():
        raise StoreError(f"no data.yaml in {root}")
    names = _read_names(root / "data.yaml")
    prov_all = json.loads((root / "provenance.json").read_text()) if (root / "provenance.json").exists() else {}
    ids = []
    images = sorted(p for p in (root / "images").glob("*/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not images:
        raise StoreError(f"no images under {root / 'images'}")
    for img_path in images:
        split, stem = img_path.parent.name, img_path.stem
        image = load_image_file(img_path)
        h, w = image.shape[:2]
        label = root / "labels" / split / f"{stem}.txt"
        inst = []
        for ln, line in enumerate(label.read_text().splitlines() if label.exists() else [], start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 7 or len(parts) % 2 == 0:
                raise StoreError(f"{label}:{ln}: not a segmentation polygon (class x1 y1 x2 y2 x3 y3 ...)")
            c = int(parts[0])
            if not 0 <= c < len(names):
                raise StoreError(f"{label}:{ln}: class {c} is not in data.yaml's {len(names)} names")
            xy = np.asarray(parts[1:], np.float64).reshape(-1, 2) * (w, h)
            inst.append((names[c], polygon_to_mask(np.floor(xy), h, w)))
        prov = prov_all.get(f"{split}/{stem}")
        if prov:
            kwargs = restore_kwargs(prov)
            srcs = [i["source"] for i in prov.get("instances", [])]
            sources = srcs if len(srcs) == len(inst) else ["imported"] * len(inst)
            classes = prov.get("classes") or sorted({c for c, _ in inst}) or ["background"]
        else:
            kwargs = dict(uid=f"yolo:{split}/{stem}", tags=tags,
                          meta={"origin": "photo", "photo": {"dataset": "yolo", "source_id": stem,
                                                             "file_name": img_path.name, "license": None}})
            sources = ["imported"] * len(inst)
            classes = sorted({c for c, _ in inst}) or ["background"]
        ids.append(store.add(NewSample(image, classes, instances=inst, instance_sources=sources, status=status,
                                       **kwargs)))
    return ids
