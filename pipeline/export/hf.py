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

from ..dataset import NewSample, SOURCES, Store, StoreError
from ..masks import bbox
from .common import SPLIT_NAMES, ExportError, inside, iter_progress, png_bytes, restore_kwargs
from .validate import DatasetFileError, check_masks_fit, check_provenance


def features(categories: Sequence[str]):
    import datasets

    names = list(categories)
    return datasets.Features({
        "image": datasets.Image(),
        "mask": datasets.Image(),
        # a dict of lists; bbox an (n, 4) array: a list of fixed-length lists made datasets 5.2's numpy and
        # torch formats fail ("truth value of an array ... is ambiguous") on every row with an object
        "objects": {
            "mask": datasets.List(datasets.Image()),
            "bbox": datasets.Array2D(shape=(None, 4), dtype="float32"),
            "category": datasets.List(datasets.ClassLabel(names=names)),
            "source": datasets.List(datasets.Value("string")),
            "iscrowd": datasets.List(datasets.Value("bool"))},
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
card, not a `save_to_disk` folder, so `load_from_disk` does not apply). Rows load as Python objects, or
with `.with_format("numpy")` / `.with_format("torch")` as arrays / tensors.

Generated images ({', '.join(sorted(models)) or 'none here'}) come from a text-to-image diffusion model; their
masks from its cross-attention maps, thresholded and curated by hand. Check them before use and follow
the generating model's licence. Rows with `origin` = `photo` are real photographs imported with their
masks; `license`, `source_id` and `file_name` say where each comes from.

Columns:
- `image`: RGB image.
- `mask`: semantic mask, mode L: 0 = background, v > 0 = class `v - 1` of the class list below (where
  objects overlap, the later one).
- `objects`: per instance, lists of: `mask` (L, 255 = object), `bbox` (an (n, 4) array: x, y, width, height in pixels),
  `category` (class id), `source` (generated, inserted, imported, user), `iscrowd`.
- `label` (main class id), `classes` (class ids of the sample), `prompt`, `seed` (-1: none), `model`,
  `threshold`, `origin` (generated or photo), `license`, `source_id`, `file_name`, `sample_id`, `uid`,
  `tags`, `provenance` (all of the above as JSON).

Class ids:
{names}
"""
    inside(ctx.root, "README.md").write_text(card)
    return n_inst


# What an import reads: a dataset of another schema is refused naming these
EXPECTED_COLUMNS = ("image", "objects", "classes")
EXPECTED_OBJECT_FIELDS = ("mask", "category", "source", "iscrowd")


def _class_names(feature) -> list[str] | None:
    """The names of a ClassLabel, or of the ClassLabel inside a list feature."""
    for f in (feature, getattr(feature, "feature", None)):
        if getattr(f, "names", None):
            return list(f.names)
    return None


def _check_schema(folder: Path, split: str, features) -> tuple[list[str], list[str]]:
    """(object category names, sample class names) of a split, or DatasetFileError naming
    the expected columns."""
    objects = features.get("objects")
    fields = objects if isinstance(objects, dict) else getattr(objects, "feature", None)
    missing = [c for c in EXPECTED_COLUMNS if c not in features]
    if not missing and not (isinstance(fields, dict) and all(k in fields for k in EXPECTED_OBJECT_FIELDS)):
        missing = [f"objects.{k}" for k in EXPECTED_OBJECT_FIELDS if not isinstance(fields, dict) or k not in fields]
    names = _class_names(fields["category"]) if not missing else None
    classes = _class_names(features["classes"]) if not missing else None
    if missing or names is None or classes is None:
        raise DatasetFileError(
            f"{folder} ({split}): not a dataset exported by this project: expected the columns "
            f"{', '.join(EXPECTED_COLUMNS)} with objects.{{{', '.join(EXPECTED_OBJECT_FIELDS)}}} (category and "
            f"classes as class labels); missing or of another type: {', '.join(missing) or 'category/classes'}; "
            f"it has {', '.join(features)}")
    return names, classes


def _image_bytes(value, what: str) -> bytes:
    """The encoded bytes of an Image cell: a cell naming only a ``path`` is refused (it would
    read a file outside the dataset folder)."""
    if not isinstance(value, dict) or not isinstance(value.get("bytes"), bytes):
        raise DatasetFileError(f"{what}: the image is not stored in the file (only a path, or nothing)")
    return value["bytes"]


def _check_row(row: dict, names: list[str], classes: list[str], where: str) -> tuple:
    """A row's image, masks and labels checked from headers (nothing decoded)."""
    from ..images import ImageError, image_size

    data = _image_bytes(row.get("image"), f"{where} image")
    try:
        hw = image_size(io.BytesIO(data), f"{where} image")
    except ImageError as e:
        raise DatasetFileError(str(e)) from e
    obj = row.get("objects") or {}
    lists = [obj.get(k) or [] for k in EXPECTED_OBJECT_FIELDS]
    if len({len(v) for v in lists}) != 1:
        raise DatasetFileError(f"{where}: objects' mask, category, source and iscrowd lists differ in length")
    masks, cats, sources, crowd = lists
    check_masks_fit(len(masks), hw, where)
    for k, (m, c, src) in enumerate(zip(masks, cats, sources)):
        if not (isinstance(c, int) and 0 <= c < len(names)):
            raise DatasetFileError(f"{where}: object {k}'s category {c!r} is not one of the {len(names)} classes")
        if src not in SOURCES:
            raise DatasetFileError(f"{where}: object {k}'s source {src!r} is not one of {SOURCES}")
        try:
            mhw = image_size(io.BytesIO(_image_bytes(m, f"{where} object {k} mask")), f"{where} object {k} mask")
        except ImageError as e:
            raise DatasetFileError(str(e)) from e
        if mhw != hw:
            raise DatasetFileError(f"{where}: object {k}'s mask is {mhw[1]}x{mhw[0]}, the image {hw[1]}x{hw[0]}")
    row_classes = row.get("classes") or []
    if not all(isinstance(c, int) and 0 <= c < len(classes) for c in row_classes):
        raise DatasetFileError(f"{where}: classes {row_classes!r} are not all among the {len(classes)} class ids")
    prov = {}
    if row.get("provenance"):
        try:
            prov = json.loads(row["provenance"])
        except (TypeError, ValueError):
            prov = None
        if not isinstance(prov, dict):
            raise DatasetFileError(f"{where}: provenance is not a JSON object")
        check_provenance(prov, where)
    return data, hw, prov


def _rows(d, batch: int = 32):
    """A split's rows as stored (images as {bytes, path}, nothing decoded)."""
    for b in d.data.to_batches(max_chunksize=batch):
        yield from b.to_pylist()


def import_hf(store: Store, folder: str | os.PathLike, *, status: str = "accepted", tags: Sequence[str] = ("imported",),
              progress: bool = False) -> list[int]:
    """Add the rows of a Hugging Face dataset folder exported by this project (every split),
    with their instance masks, classes and provenance. Returns the sample ids.

    Every row is checked first (the schema, images and masks stored in the file, their sizes
    from the headers, labels in range), then written, each with its uid (or one from its
    split, row and image hash): a stopped import is resumed by the same call."""
    import datasets
    from pyarrow import ArrowException
    from PIL import Image

    from ..images import load_image_file

    folder = Path(folder)
    if not (folder / "README.md").exists():
        raise StoreError(f"no dataset card (README.md) in {folder}")
    # a private, temporary cache: the user's cache may hold an older export of a folder of the same
    # name (see the module doc), and an import should leave nothing behind
    with tempfile.TemporaryDirectory(prefix="hf-import-") as cache:
        try:
            ds = datasets.load_dataset(str(folder), cache_dir=cache)
        except (ValueError, OSError, ArrowException, datasets.exceptions.DatasetsError) as e:
            raise DatasetFileError(f"{folder}: not a readable Hugging Face dataset folder ({type(e).__name__}: "
                                   f"{str(e)[:300]})") from e
        plan = []
        for split in ds:
            names, class_names = _check_schema(folder, split, ds[split].features)
            for k, row in enumerate(_rows(ds[split])):
                where = f"{folder} ({split}) row {k}"
                _, hw, prov = _check_row(row, names, class_names, where)
                plan.append((split, k, hw, prov))
        ids = []
        rows = (row for split in ds for row in _rows(ds[split]))
        for (split, k, hw, prov), row in zip(iter_progress(plan, progress, "import hf"), rows):
            where = f"{folder} ({split}) row {k}"
            data = row["image"]["bytes"]
            kwargs = restore_kwargs(prov) if prov else dict(uid=row.get("uid"), tags=tags)
            kwargs["uid"] = kwargs.get("uid") or f"hf:{split}/{k}:{hashlib.sha256(data).hexdigest()[:16]}"
            done = store.get_by_uid(kwargs["uid"])
            if done is not None:  # stored by an earlier run of this import: resume after it
                ids.append(done.id)
                continue
            names, class_names = _check_schema(folder, split, ds[split].features)
            image = load_image_file(io.BytesIO(data), f"{where} image")
            obj = row["objects"]
            inst = []
            for c, m in zip(obj["category"], obj["mask"]):
                with Image.open(io.BytesIO(m["bytes"])) as im:  # its size was checked from the header
                    inst.append((names[c], np.asarray(im.convert("L")) > 127))
            classes = prov.get("classes") or [class_names[c] for c in row["classes"]] or ["background"]
            ids.append(store.add(NewSample(image, classes, instances=inst, instance_sources=list(obj["source"]),
                                           instance_crowd=[bool(c) for c in obj["iscrowd"]], status=status,
                                           **kwargs)))
        del ds  # release the memory-mapped cache files before the folder goes
    return ids
