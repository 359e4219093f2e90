"""Export accepted samples as COCO (RLE), PASCAL VOC or a Hugging Face dataset; import
COCO/VOC datasets as backgrounds.

Every export is written into a hidden temporary folder beside ``out`` and renamed into
place when complete, so a killed export leaves no partial ``out``; an existing ``out`` is
replaced only with ``force=True``. File names inside an export come from sample ids, never
from user text, and every path is checked to stay inside the export folder.
"""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from .dataset import Record, Store, StoreError, check_class, check_tag, load_image_file
from .errors import PipelineError
from .vocab import VOC20

FORMATS = ("coco", "voc", "hf")
VOC_CLASSES = ("background", *VOC20)  # PASCAL VOC's label order: index = class id in the PNGs


class ExportError(PipelineError, ValueError):
    """The export cannot be made as asked; nothing was written."""


def voc_palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC's colour map, (n, 3) uint8 (the devkit's bit-interleaving rule)."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


@dataclass
class ExportReport:
    out: Path
    format: str
    n_images: int
    n_instances: int
    splits: dict[str, int]
    categories: list[str]
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256


def sample_instances(store: Store, rec: Record) -> list[tuple[str, np.ndarray]]:
    """The instance masks to export for a sample, later ones on top.

    Generated instances follow the user's threshold override (re-thresholding the stored
    heat map); masks a user drew or that came from compose/import are taken as stored."""
    out = []
    heat = store.array(rec.heat_map).astype(np.float32) if rec.heat_map and rec.user_threshold is not None else None
    for inst in rec.instances:
        if inst.source == "generated" and heat is not None:
            out.append((inst.class_name, heat >= rec.user_threshold))
        else:
            out.append((inst.class_name, store.mask(inst.mask)))
    if not out and rec.heat_map and rec.effective_threshold is not None:
        out.append((rec.classes[0], store.array(rec.heat_map).astype(np.float32) >= rec.effective_threshold))
    elif not out and rec.refined_mask:
        out.append((rec.classes[0], store.mask(rec.refined_mask)))
    return out


def _inside(root: Path, rel: str) -> Path:
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise ExportError(f"refusing to write {rel!r} outside the export folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


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


def _clean_stale_partials(out: Path) -> None:
    for p in out.parent.glob(f".{out.name}.partial-*"):
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)  # still running: leave it
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def export(store: Store, fmt: str, out: str | os.PathLike, *, status: str | Sequence[str] | None = "accepted",
           classes: Sequence[str] | None = None, tags: Sequence[str] | None = None, val_fraction: float = 0.0,
           seed: int = 0, force: bool = False, void_border: int = 0, progress: bool = False) -> ExportReport:
    """Write the samples matching the filters to ``out`` in format ``fmt`` (coco, voc, hf)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; one of {FORMATS}")
    classes = [check_class(c) for c in classes] if classes else None
    tags = [check_tag(t) for t in tags] if tags else None
    out = Path(out)
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    records = store.query(status=status, classes=classes, tags=tags)
    if not records:
        raise ExportError(f"no samples match status={status} classes={classes} tags={tags}")
    if void_border < 0:
        raise ExportError("void border must be >= 0 pixels")
    splits = _split(records, val_fraction, seed)
    categories = sorted({c for r in records for c, _ in ((i.class_name, 0) for i in r.instances)} |
                        {c for r in records for c in r.classes})
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_partials(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        writer = {"coco": _write_coco, "voc": _write_voc, "hf": _write_hf}[fmt]
        n_inst = writer(store, splits, categories, tmp, void_border=void_border, progress=progress)
        report = ExportReport(out, fmt, len(records), n_inst, {k: len(v) for k, v in splits.items()}, categories)
        report.files = _manifest(tmp, report, status=status, classes=classes, tags=tags, seed=seed,
                                 val_fraction=val_fraction)
        if out.exists():  # force: swap in the new export, then drop the old one
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
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
                "splits": report.splits, "categories": report.categories,
                "filters": {k: v for k, v in filters.items()},
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(), "sha256": files}
    _inside(root, "manifest.json").write_text(json.dumps(manifest, indent=1))
    return files


def _iter(records, progress, desc):
    if not progress:
        return records
    from tqdm.auto import tqdm

    return tqdm(records, desc=desc, unit="image")


def _models(splits) -> list[str]:
    return sorted({r.model or "unknown" for rs in splits.values() for r in rs})


def _write_coco(store, splits, categories, root: Path, void_border=0, progress=False) -> int:
    from pycocotools import mask as mask_utils

    cat_id = {c: i + 1 for i, c in enumerate(categories)}
    n_ann = 0
    for split, records in splits.items():
        images, anns = [], []
        for rec in _iter(records, progress, f"coco {split}"):
            name = f"{rec.id:08d}.png"
            shutil.copyfile(store.blob_path(rec.image), _inside(root, f"{split}/{name}"))
            images.append({"id": rec.id, "file_name": name, "width": rec.width, "height": rec.height, "license": 1,
                           "prompt": rec.prompt, "seed": rec.seed, "model": rec.model, "tags": rec.tags})
            for cls, m in sample_instances(store, rec):
                if not m.any():
                    continue  # fully occluded
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                n_ann += 1
                anns.append({"id": n_ann, "image_id": rec.id, "category_id": cat_id[cls],
                             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                             "area": float(mask_utils.area(rle)), "bbox": [float(x) for x in mask_utils.toBbox(rle)],
                             "iscrowd": 0})
        doc = {"info": {"description": "Synthetic segmentation data made with DiffuMask-Editor Studio: images "
                                       "generated by text-to-image diffusion, masks from cross-attention.",
                        "synthetic": True, "models": _models(splits), "version": "1.0",
                        "year": datetime.date.today().year, "contributor": "DiffuMask-Editor Studio",
                        "date_created": datetime.datetime.now(datetime.timezone.utc).isoformat()},
               "licenses": [{"id": 1, "name": "Synthetic data; subject to the licence of the generating model",
                             "url": ""}],
               "categories": [{"id": i, "name": c, "supercategory": "object"} for c, i in cat_id.items()],
               "images": images, "annotations": anns}
        _inside(root, f"annotations/instances_{split}.json").write_text(json.dumps(doc))
    return n_ann


def _void_band(masks: list[np.ndarray], width: int) -> np.ndarray:
    band = np.zeros(masks[0].shape, bool) if masks else None
    k = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    for m in masks:
        u8 = m.astype(np.uint8)
        band |= (cv2.dilate(u8, k) > 0) & ~(cv2.erode(u8, k) > 0)
    return band


def voc_class_ids(categories: Sequence[str]) -> dict[str, int]:
    """VOC's own indices when every class is a VOC class, else 1..K in name order."""
    if all(c in VOC_CLASSES for c in categories):
        return {c: VOC_CLASSES.index(c) for c in categories}
    return {c: i + 1 for i, c in enumerate(categories)}


def _write_voc(store, splits, categories, root: Path, void_border=0, progress=False) -> int:
    ids = voc_class_ids(categories)
    pal = voc_palette().reshape(-1).tolist()
    n_inst = 0
    for split, records in splits.items():
        names = []
        for rec in _iter(records, progress, f"voc {split}"):
            name = f"{rec.id:08d}"
            names.append(name)
            Image.fromarray(store.image(rec.image)).save(_inside(root, f"JPEGImages/{name}.jpg"), quality=95)
            inst = [(c, m) for c, m in sample_instances(store, rec) if m.any()]
            cls_map = np.zeros((rec.height, rec.width), np.uint8)
            obj_map = np.zeros((rec.height, rec.width), np.uint8)
            for k, (c, m) in enumerate(inst, start=1):
                cls_map[m] = ids[c]
                obj_map[m] = k
            if void_border and inst:
                band = _void_band([m for _, m in inst], void_border)
                cls_map[band] = 255
                obj_map[band] = 255
            n_inst += len(inst)
            for folder, arr in (("SegmentationClass", cls_map), ("SegmentationObject", obj_map)):
                im = Image.fromarray(arr, mode="P")
                im.putpalette(pal)
                im.save(_inside(root, f"{folder}/{name}.png"))
        _inside(root, f"ImageSets/Segmentation/{split}.txt").write_text("\n".join(names) + "\n")
    if len(splits) > 1:
        all_names = sorted(f"{r.id:08d}" for rs in splits.values() for r in rs)
        _inside(root, "ImageSets/Segmentation/trainval.txt").write_text("\n".join(all_names) + "\n")
    palette = voc_palette()
    lines = ["background:0,0,0"] + [f"{c}:{','.join(map(str, palette[i]))}" for c, i in sorted(ids.items(), key=lambda x: x[1])]
    _inside(root, "labelmap.txt").write_text("# class:r,g,b (index = position in SegmentationClass PNGs, 255 = void)\n"
                                             + "\n".join(lines) + "\n")
    _inside(root, "class_ids.json").write_text(json.dumps({"background": 0, **ids, "void": 255}, indent=1))
    return n_inst


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _write_hf(store, splits, categories, root: Path, void_border=0, progress=False) -> int:
    import datasets

    features = datasets.Features({
        "image": datasets.Image(), "mask": datasets.Image(),
        "label": datasets.ClassLabel(names=list(categories)),
        "classes": datasets.Sequence(datasets.ClassLabel(names=list(categories))),
        "prompt": datasets.Value("string"), "seed": datasets.Value("int64"), "model": datasets.Value("string"),
        "sample_id": datasets.Value("int64"), "tags": datasets.Sequence(datasets.Value("string"))})
    cid = {c: i for i, c in enumerate(categories)}
    n_inst = 0
    split_names = {"train": "train", "val": "validation"}
    for split, records in splits.items():
        rows = {k: [] for k in features}
        for rec in _iter(records, progress, f"hf {split}"):
            inst = [(c, m) for c, m in sample_instances(store, rec) if m.any()]
            sem = np.zeros((rec.height, rec.width), np.uint8)  # 0 background, k+1 = categories[k]
            for c, m in inst:
                sem[m] = cid[c] + 1
            n_inst += len(inst)
            rows["image"].append({"bytes": store.blob_bytes(rec.image), "path": None})
            rows["mask"].append({"bytes": _png(sem), "path": None})
            rows["label"].append(cid[rec.classes[0]])
            rows["classes"].append([cid[c] for c in rec.classes])
            rows["prompt"].append(rec.prompt)
            rows["seed"].append(-1 if rec.seed is None else int(rec.seed))
            rows["model"].append(rec.model)
            rows["sample_id"].append(rec.id)
            rows["tags"].append(rec.tags)
        ds = datasets.Dataset.from_dict(rows, features=features)
        ds.to_parquet(str(_inside(root, f"data/{split_names[split]}-00000-of-00001.parquet")))
    data_files = "\n".join(f"  - split: {split_names[s]}\n    path: data/{split_names[s]}-*.parquet" for s in splits)
    names = "\n".join(f"          '{i}': {json.dumps(c)}" for i, c in enumerate(categories))
    card = f"""---
configs:
- config_name: default
  data_files:
{data_files}
task_categories:
- image-segmentation
tags:
- synthetic
- diffumask
---
# Synthetic segmentation dataset (DiffuMask-Editor Studio)

{sum(len(v) for v in splits.values())} images ({', '.join(f'{split_names[k]}: {len(v)}' for k, v in splits.items())}),
{len(categories)} classes: {', '.join(categories)}.

Images were generated by a text-to-image diffusion model ({', '.join(_models(splits))}); masks come from its
cross-attention maps, thresholded at the threshold that best matched a refined mask, and curated by hand.
They are synthetic: check them before use and cite the generating model's licence.

Columns: `image` (RGB), `mask` (L, 0 = background, k = `label` names[k-1] + 1), `label` (main class),
`classes`, `prompt`, `seed`, `model`, `sample_id`, `tags`.

Class ids for `label`/`classes`:
{names}
"""
    _inside(root, "README.md").write_text(card)
    return n_inst


# -- import ----------------------------------------------------------------------------
def import_coco(store: Store, instances_json: str | os.PathLike, images_dir: str | os.PathLike, *,
                status: str = "accepted", tags: Sequence[str] = ("imported",), limit: int | None = None,
                progress: bool = False) -> list[int]:
    """Add a COCO dataset's images with their instance masks (crowd regions skipped)."""
    import contextlib

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(instances_json))
    ids = []
    img_ids = sorted(coco.getImgIds())[:limit]
    for img_id in _iter(img_ids, progress, "import coco"):
        info = coco.loadImgs(img_id)[0]
        image = load_image_file(Path(images_dir) / info["file_name"])
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=False))]
        inst = [(coco.loadCats(a["category_id"])[0]["name"], coco.annToMask(a).astype(bool)) for a in anns]
        classes = sorted({c for c, _ in inst}) or ["background"]
        ids.append(store.add(image, classes, instances=inst, instance_sources=["imported"] * len(inst),
                             uid=f"coco:{info['file_name']}", status=status, tags=tags, model="real (COCO)",
                             meta={"coco_image_id": img_id, "source": str(instances_json)}))
    return ids


def import_voc(store: Store, voc_root: str | os.PathLike, *, split: str | None = None, status: str = "accepted",
               tags: Sequence[str] = ("imported",), progress: bool = False) -> list[int]:
    """Add a PASCAL VOC segmentation dataset (SegmentationObject + SegmentationClass)."""
    root = Path(voc_root)
    if split:
        names = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    else:
        names = sorted(p.stem for p in (root / "SegmentationObject").glob("*.png"))
    if not names:
        raise StoreError(f"no VOC segmentation samples under {root}")
    ids = []
    for name in _iter(names, progress, "import voc"):
        image = load_image_file(root / "JPEGImages" / f"{name}.jpg")
        obj = np.asarray(Image.open(root / "SegmentationObject" / f"{name}.png"))
        cls = np.asarray(Image.open(root / "SegmentationClass" / f"{name}.png"))
        inst = []
        for k in sorted(set(np.unique(obj)) - {0, 255}):
            m = obj == k
            votes = np.bincount(cls[m][cls[m] != 255], minlength=len(VOC_CLASSES))
            inst.append((VOC_CLASSES[int(votes.argmax())], m))
        classes = sorted({c for c, _ in inst}) or ["background"]
        ids.append(store.add(image, classes, instances=inst, instance_sources=["imported"] * len(inst),
                             uid=f"voc:{name}", status=status, tags=tags, model="real (VOC)"))
    return ids
