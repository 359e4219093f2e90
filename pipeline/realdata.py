"""The 180 annotated real photos in ``../shared/data`` and their k-fold split by photo.

- ``coco-mini``: 80 COCO photos with COCO instance annotations (polygons / RLE, read by
  pycocotools);
- ``coco128``: the 100 of its photos that have COCO panoptic annotations (pixel-exact
  per-instance PNGs, segment id = R + 256 G + 256^2 B; only ``isthing`` non-crowd segments).

Photos are identified as ``"coco-mini/<id>"`` / ``"coco128/<id>"``. ``fold_of`` assigns each
photo to one of ``k`` folds by a fixed seeded permutation of the sorted ids, so a photo's
objects are never split between train and test. The learned refiner and harmonizer
(:mod:`pipeline.refine_net`, :mod:`pipeline.harmonize_net`) ship weights trained on the
photos outside fold ``HELD_OUT_FOLD`` of ``K_FOLDS``; that fold stays unseen for their tests.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

# DIFFUMASK_SHARED_DATA points elsewhere (a git worktree does not lie beside ../shared)
SHARED = Path(os.environ.get("DIFFUMASK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
K_FOLDS = 3
HELD_OUT_FOLD = 0
SPLIT_SEED = 17


class DataMissing(FileNotFoundError):
    """The shared photo folders are not beside the project."""


@dataclass
class Photo:
    key: str  # "coco-mini/<image id>" or "coco128/<image id>"
    image: np.ndarray  # HWC uint8 RGB, resized so its longer side is <= max_side
    masks: list  # list of (H, W) bool instance masks (non-crowd objects), same size as image
    categories: list  # COCO category id of each mask


def photo_keys(root: str | Path = SHARED) -> list[str]:
    """Sorted keys of every annotated photo found (180 with both folders present)."""
    root = Path(root)
    keys = []
    mini = root / "coco-mini" / "instances.json"
    if mini.exists():
        keys += [f"coco-mini/{i['id']}" for i in json.loads(mini.read_text())["images"]]
    pan = root / "coco128" / "panoptic.json"
    if pan.exists():
        keys += [f"coco128/{a['image_id']}" for a in json.loads(pan.read_text())["annotations"]]
    if not keys:
        raise DataMissing(f"no annotated photos under {root} (expected coco-mini/instances.json and "
                          "coco128/panoptic.json)")
    return sorted(keys)


def fold_of(keys: list[str], k: int = K_FOLDS, seed: int = SPLIT_SEED) -> dict[str, int]:
    """{photo key: fold in [0, k)}: a seeded permutation of the sorted keys dealt round-robin."""
    order = np.random.default_rng(seed).permutation(len(keys))
    keys = sorted(keys)
    return {keys[j]: int(r % k) for r, j in enumerate(order)}


def split(folds: list[int] | tuple[int, ...], root: str | Path = SHARED, k: int = K_FOLDS) -> list[str]:
    """Keys of the photos in the given folds."""
    f = fold_of(photo_keys(root), k)
    return [key for key, v in f.items() if v in set(folds)]


@lru_cache(maxsize=2)
def _coco_mini(root: str):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(Path(root) / "coco-mini" / "instances.json"))


@lru_cache(maxsize=2)
def _panoptic(root: str):
    d = json.loads((Path(root) / "coco128" / "panoptic.json").read_text())
    things = {c["id"] for c in d["categories"] if c["isthing"]}
    return {a["image_id"]: a for a in d["annotations"]}, things


def load_photo(key: str, root: str | Path = SHARED, max_side: int = 320, min_area: float = 0.01) -> Photo:
    """One photo and its object masks, resized so the longer side is ``max_side`` (INTER_AREA
    for the image, nearest for masks); objects under ``min_area`` of the photo are dropped."""
    from PIL import Image

    root = Path(root)
    source, ident = key.split("/")
    if source == "coco-mini":
        coco = _coco_mini(str(root))
        info = coco.loadImgs(int(ident))[0]
        image = np.asarray(Image.open(root / "coco-mini" / "images" / info["file_name"]).convert("RGB"))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=int(ident), iscrowd=False))
        full = [(coco.annToMask(a).astype(np.uint8), a["category_id"]) for a in anns]
    elif source == "coco128":
        anns, things = _panoptic(str(root))
        a = anns[int(ident)]
        image = np.asarray(Image.open(root / "coco128" / "images" / a["file_name"].replace(".png", ".jpg"))
                           .convert("RGB"))
        png = np.asarray(Image.open(root / "coco128" / "panoptic" / a["file_name"]).convert("RGB")).astype(np.int64)
        ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
        full = [((ids == s["id"]).astype(np.uint8), s["category_id"]) for s in a["segments_info"]
                if s["category_id"] in things and not s["iscrowd"]]
    else:
        raise ValueError(f"unknown photo source in {key!r}; expected coco-mini/<id> or coco128/<id>")
    h, w = image.shape[:2]
    f = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if f < 1 else image.copy()
    masks, cats = [], []
    for m, c in full:
        if m.sum() < min_area * h * w:
            continue
        ms = (cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) if f < 1 else m).astype(bool)
        if ms.any() and not ms.all():
            masks.append(ms)
            cats.append(c)
    return Photo(key, small, masks, cats)


def load_photos(keys: list[str], root: str | Path = SHARED, **kw) -> list[Photo]:
    return [load_photo(k, root, **kw) for k in keys]


def training_setup(cfg) -> tuple[Path, Path, list[str]]:
    """Shared by the learned models' trainers: torch threads, the output folder, its
    ``_train`` work folder and the photo keys of ``cfg.folds`` (at most ``cfg.max_photos``)."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    work = out / "_train"
    work.mkdir(parents=True, exist_ok=True)
    keys = split(cfg.folds, k=cfg.k)
    return out, work, keys[: cfg.max_photos] if cfg.max_photos else keys
