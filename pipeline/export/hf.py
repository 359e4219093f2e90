"""Hugging Face dataset (parquet + dataset card): write and import.

Loads with ``datasets.load_dataset(out)`` (a folder with a card, not ``load_from_disk``).
Every row has the semantic mask (``mask``) and each instance on its own (``objects``).

The parquet files are named after their content hash, and the card lists them by name:
``datasets`` caches a local folder under a key made of the folder's name and the card's
configuration, not of the files' contents or the path, so with fixed file names any later
export in a folder of the same name loaded the first one's rows from the cache.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..dataset import NewSample, Store, StoreError
from ..masks import bbox
from .common import SPLIT_NAMES, ExportError, inside, png_bytes, restore_kwargs


def features(categories: Sequence[str]):
    import datasets

    names = list(categories)
    return datasets.Features({
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "objects": datasets.Sequence({
            "mask": datasets.Image(),
            "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
            "category": datasets.ClassLabel(names=names),
            "source": datasets.Value("string"),
            "iscrowd": datasets.Value("bool")}),
        "label": datasets.ClassLabel(names=names),
        "classes": datasets.Sequence(datasets.ClassLabel(names=names)),
        "prompt": datasets.Value("string"), "seed": datasets.Value("int64"), "model": datasets.Value("string"),
        "threshold": datasets.Value("float32"), "origin": datasets.Value("string"),
        "license": datasets.Value("string"), "source_id": datasets.Value("string"),
        "file_name": datasets.Value("string"), "sample_id": datasets.Value("int64"), "uid": datasets.Value("string"),
        "tags": datasets.Sequence(datasets.Value("string")), "provenance": datasets.Value("string")})


def write(ctx) -> int:
    import datasets

    cats = list(ctx.categories)
    if len(cats) > 255:
        raise ExportError(f"the semantic mask (uint8) holds at most 255 classes; got {len(cats)}")
    feats = features(cats)
    cid = {c: i for i, c in enumerate(cats)}
    n_inst = 0
    files = {}
    models = set()
    for split in ctx.splits:
        rows = {k: [] for k in feats}
        for s in ctx.samples(split):
            rec = s.rec
            inst = [i for i in s.instances if i.mask.any()]
            sem = np.zeros((rec.height, rec.width), np.uint8)  # 0 background, k + 1 = class k
            objects = {"mask": [], "bbox": [], "category": [], "source": [], "iscrowd": []}
            for i in inst:
                sem[i.mask] = cid[i.class_name] + 1
                x1, y1, x2, y2 = bbox(i.mask)
                objects["mask"].append({"bytes": png_bytes(i.mask.astype(np.uint8) * 255), "path": None})
                objects["bbox"].append([float(x1), float(y1), float(x2 - x1), float(y2 - y1)])
                objects["category"].append(cid[i.class_name])
                objects["source"].append(i.source)
                objects["iscrowd"].append(i.iscrowd)
            n_inst += len(inst)
            prov = s.provenance
            if prov["origin"] == "generated":
                models.add(rec.model or "unknown")
            lic = prov.get("license")
            rows["image"].append({"bytes": s.image_bytes, "path": None})
            rows["mask"].append({"bytes": png_bytes(sem), "path": None})
            rows["objects"].append(objects)
            rows["label"].append(cid[rec.classes[0]])
            rows["classes"].append([cid[c] for c in rec.classes])
            rows["prompt"].append(rec.prompt)
            rows["seed"].append(-1 if rec.seed is None else int(rec.seed))
            rows["model"].append(rec.model)
            rows["threshold"].append(prov["threshold"])
            rows["origin"].append(prov["origin"])
            rows["license"].append(json.dumps(lic) if lic else None)
            rows["source_id"].append(None if prov.get("source_id") is None else str(prov["source_id"]))
            rows["file_name"].append(prov.get("file_name"))
            rows["sample_id"].append(rec.id)
            rows["uid"].append(rec.uid)
            rows["tags"].append(rec.tags)
            rows["provenance"].append(json.dumps(prov))
        buf = io.BytesIO()
        datasets.Dataset.from_dict(rows, features=feats).to_parquet(buf)
        data = buf.getvalue()
        rel = f"data/{SPLIT_NAMES[split]}-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
        inside(ctx.root, rel).write_bytes(data)
        files[SPLIT_NAMES[split]] = rel
    data_files = "\n".join(f"  - split: {s}\n    path: {p}" for s, p in files.items())
    names = "\n".join(f"- {i}: {c}" for i, c in enumerate(cats))
    n_rows = {SPLIT_NAMES[k]: n for k, n in ctx.written.items()}
    card = f"""---
configs:
- config_name: default
  data_files:
{data_files}
task_categories:
- image-segmentation
tags:
- diffumask
---
# Segmentation dataset (DiffuMask-Editor Studio)

{sum(n_rows.values())} images ({', '.join(f'{k}: {v}' for k, v in n_rows.items())}), {len(cats)} classes:
{', '.join(cats)}.

Load it with `datasets.load_dataset("path/to/this/folder")` (it is a folder of parquet files with this
card, not a `save_to_disk` folder, so `load_from_disk` does not apply).

Generated images ({', '.join(sorted(models)) or 'none here'}) come from a text-to-image diffusion model; their
masks from its cross-attention maps, thresholded and curated by hand. Check them before use and follow
the generating model's licence. Rows with `origin` = `photo` are real photographs imported with their
masks; `license`, `source_id` and `file_name` say where each comes from.

Columns:
- `image`: RGB image.
- `mask`: semantic mask, mode L: 0 = background, v > 0 = class `v - 1` of the class list below (where
  objects overlap, the later one).
- `objects`: one entry per instance: `mask` (L, 255 = object), `bbox` (x, y, width, height in pixels),
  `category` (class id), `source` (generated, inserted, imported, user), `iscrowd`.
- `label` (main class id), `classes` (class ids of the sample), `prompt`, `seed` (-1: none), `model`,
  `threshold`, `origin` (generated or photo), `license`, `source_id`, `file_name`, `sample_id`, `uid`,
  `tags`, `provenance` (all of the above as JSON).

Class ids:
{names}
"""
    inside(ctx.root, "README.md").write_text(card)
    return n_inst


def import_hf(store: Store, folder: str | os.PathLike, *, status: str = "accepted", tags: Sequence[str] = ("imported",),
              progress: bool = False) -> list[int]:
    """Add the rows of a Hugging Face dataset folder exported by this project (every split),
    with their instance masks, classes and provenance. Returns the new sample ids."""
    import datasets

    folder = Path(folder)
    if not (folder / "README.md").exists():
        raise StoreError(f"no dataset card (README.md) in {folder}")
    # a private, temporary cache: the user's cache may hold an older export of a folder of the same
    # name (see the module doc), and an import should leave nothing behind
    with tempfile.TemporaryDirectory(prefix="hf-import-") as cache:
        ds = datasets.load_dataset(str(folder), cache_dir=cache)
        ids = []
        for split in ds:
            d = ds[split]
            objects = d.features["objects"]  # a dict of lists (datasets >= 4) or a Sequence of a dict
            names = (objects if isinstance(objects, dict) else objects.feature)["category"]
            names = getattr(names, "names", None) or names.feature.names
            for row in d:
                image = np.asarray(row["image"].convert("RGB"))
                obj = row["objects"]
                inst = [(names[c], np.asarray(m.convert("L")) > 127) for c, m in zip(obj["category"], obj["mask"])]
                prov = json.loads(row["provenance"]) if row.get("provenance") else {}
                kwargs = restore_kwargs(prov) if prov else dict(uid=row.get("uid"), tags=tags)
                classes = prov.get("classes") or [names[c] for c in row["classes"]] or ["background"]
                ids.append(store.add(NewSample(image, classes, instances=inst, instance_sources=list(obj["source"]),
                                               instance_crowd=list(obj["iscrowd"]), status=status, **kwargs)))
        del ds  # release the memory-mapped cache files before the folder goes
    return ids
