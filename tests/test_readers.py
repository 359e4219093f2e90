"""Every row of the README's format table, read by the readers it names, compared with
``Store.masks`` (#27.1).

One store: coco-mini's 80 real photos (739 instances, 8 of them crowd regions, many with holes
and several parts) plus generated samples with a ring (a hole), a two-part object and tiny
objects (1 pixel, a 2-pixel line, 8 pixels). Each format is exported once with a validation
split (``--val 0.2``); each reader's result is counted mask by mask against the store, and the
count (exact/total) must be the one the README states for that reader, so the README cannot
say more than the readers give.
"""
import collections
import contextlib
import io
import json
import os
import re
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, shared
from pipeline.dataset import NewSample, Store
from pipeline.export import export, import_coco

pytestmark = pytest.mark.slow
VOC = "VOCdevkit/VOC2012"
README = (ROOT / "README.md").read_text()


def quiet():
    return contextlib.redirect_stdout(io.StringIO())


def generated_objects(rng, h=64, w=80):
    """A ring (a hole), a two-part object and three tiny ones, not overlapping."""
    yy, xx = np.mgrid[:h, :w]
    cy, cx = int(rng.integers(20, 40)), int(rng.integers(18, 28))
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    ring = (d2 <= 14 ** 2) & (d2 > int(rng.integers(3, 7)) ** 2)
    two = (((yy - 10) ** 2 + (xx - 66) ** 2) <= 36) | ((yy > 24) & (yy < 40) & (xx > 56) & (xx < 76))
    dot = np.zeros((h, w), bool)
    dot[58, 4] = True
    line = np.zeros((h, w), bool)
    line[60, 40:42] = True
    ell = np.zeros((h, w), bool)
    ell[50:54, 60] = True
    ell[53, 61:65] = True
    return [("ball", ring), ("kite", two), ("star", dot), ("star", line), ("dog", ell)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(store, export root, {sample id: [(class, mask, iscrowd)]} of the accepted samples)."""
    src = shared("coco-mini")
    root = tmp_path_factory.mktemp("readers")
    s = Store(root / "store")
    import_coco(s, src / "instances.json", src / "images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :80]
    for k in range(6):
        img = np.stack([xx * 3 + k * 10, yy * 3, (xx + yy) * 2 + k], -1).clip(0, 255).astype(np.uint8)
        objs = generated_objects(rng)
        s.add(NewSample(img, sorted({c for c, _ in objs}), instances=objs, instance_sources=["generated"] * len(objs),
              prompt="a photograph of a ball", seed=k, model="embedded", status="accepted"))
    for fmt in ("coco", "voc", "yolo", "hf"):
        export(s, fmt, root / fmt, val_fraction=0.2, seed=0)
    export(s, "yolo", root / "yolo_det", val_fraction=0.2, seed=0, yolo_task="detect")
    want = {}
    for r in s.query(status="accepted"):
        want[r.id] = [(c, m, i.iscrowd) for (c, m), i in zip(s.masks(r), r.instances) if m.any()]
    return s, root, want


def count_exact(got, want) -> int:
    """How many of ``want``'s (class, mask) pairs ``got`` holds exactly (a multiset match,
    so readers may reorder objects)."""
    def key(c, m):
        return c, np.packbits(np.asarray(m, bool)).tobytes(), np.asarray(m).shape

    have = collections.Counter(key(c, m) for c, m in got)
    n = 0
    for c, m in want:
        k = key(c, m)
        if have[k]:
            have[k] -= 1
            n += 1
    return n


def stated(reader: str, exact: int, total: int) -> None:
    """The README's row for ``reader`` states exactly ``exact/total``."""
    rows = [ln for ln in README.splitlines() if ln.startswith("|") and reader in ln]
    assert rows, f"README has no row for {reader}"
    assert any(f"{exact}/{total}" in ln for ln in rows), f"README's row for {reader} should say {exact}/{total}"


def totals(want, crowd=True):
    pairs = {rid: [(c, m) for c, m, iscrowd in objs if crowd or not iscrowd] for rid, objs in want.items()}
    return pairs, sum(len(v) for v in pairs.values())


def test_the_store_has_what_the_readers_are_tested_on(world):
    s, _, want = world
    objs = [o for v in want.values() for o in v]
    from scipy.ndimage import binary_fill_holes, label

    assert sum(o[2] for o in objs) == 8 and len(want) == 86
    assert sum(not np.array_equal(m, binary_fill_holes(m)) for _, m, _ in objs) > 20  # holes
    assert sum(label(m)[1] > 1 for _, m, _ in objs) > 20  # several parts
    assert sum(m.sum() <= 8 for _, m, _ in objs) >= 18  # tiny


# -- COCO --------------------------------------------------------------------------------------------
def coco_splits(root):
    return [(split, root / f"coco/annotations/instances_{split}.json", root / f"coco/images/{split}")
            for split in ("train", "val")]


def test_pycocotools(world):
    from pycocotools.coco import COCO

    _, root, want = world
    pairs, total = totals(want)
    n = 0
    for _, ann, _ in coco_splits(root):
        with quiet():
            gt = COCO(str(ann))
        for img in gt.getImgIds():
            got = [(gt.loadCats(a["category_id"])[0]["name"], gt.annToMask(a)) for a in
                   gt.loadAnns(gt.getAnnIds(imgIds=img))]
            n += count_exact(got, pairs[img])
    stated("pycocotools", n, total)


def test_torchvision_coco_detection_v2(world):
    import torchvision
    from torchvision.datasets import wrap_dataset_for_transforms_v2

    _, root, want = world
    pairs, total = totals(want)
    n = 0
    for _, ann, images in coco_splits(root):
        with quiet():
            ds = torchvision.datasets.CocoDetection(str(images), str(ann))
        names = {c["id"]: c["name"] for c in ds.coco.dataset["categories"]}
        wrapped = wrap_dataset_for_transforms_v2(ds, target_keys=("image_id", "masks", "labels"))
        for k in range(len(ds)):
            _, t = wrapped[k]
            got = [(names[int(c)], m.numpy()) for c, m in zip(t.get("labels", []), t.get("masks", []))]
            n += count_exact(got, pairs[int(t["image_id"])])
    stated("torchvision `CocoDetection`", n, total)


def test_supervision_from_coco(world):
    import supervision as sv

    _, root, want = world
    pairs, total = totals(want)
    n = 0
    for _, ann, images in coco_splits(root):
        ds = sv.DetectionDataset.from_coco(str(images), str(ann), force_masks=True)
        for path, _, det in ds:
            rid = int(os.path.basename(path)[:8])
            n += count_exact([(ds.classes[c], m) for c, m in zip(det.class_id, det.mask)], pairs[rid])
    stated("supervision `from_coco", n, total)


def datumaro_import(path, fmt):
    import datumaro as dm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dm.Dataset.import_from(str(path), fmt)
    return ds, [c.name for c in ds.categories()[dm.AnnotationType.label]]


def test_datumaro_coco_instances(world):
    import datumaro as dm

    _, root, want = world
    pairs, total = totals(want)
    ds, labels = datumaro_import(root / "coco", "coco_instances")
    assert len(ds) == len(want)
    n = 0
    for item in ds:
        got = [(labels[a.label], a.image) for a in item.annotations if isinstance(a, dm.Mask)]
        n += count_exact(got, pairs[int(item.id)])
    stated("Datumaro/CVAT `coco_instances`", n, total)


# -- VOC ---------------------------------------------------------------------------------------------
def voc_labels(root):
    lines = [ln for ln in (root / "voc" / VOC / "labelmap.txt").read_text().splitlines() if not ln.startswith("#")]
    return [ln.split(":")[0] for ln in lines]


def test_torchvision_voc_segmentation(world):
    """The class map per image: background 0, class k, 255 where a crowd region is (void)."""
    import torchvision

    _, root, want = world
    labels = voc_labels(root)
    n = total = 0
    for split in ("train", "val"):
        ds = torchvision.datasets.VOCSegmentation(str(root / "voc"), year="2012", image_set=split)
        for k in range(len(ds)):
            rid = int(os.path.basename(ds.images[k])[:8])
            _, target = ds[k]
            expect = np.zeros(want[rid][0][1].shape if want[rid] else np.asarray(target).shape, np.uint8)
            for c, m, crowd in want[rid]:
                if not crowd:
                    expect[m] = labels.index(c)
            for c, m, crowd in want[rid]:
                if crowd:
                    expect[m] = 255
            n += np.array_equal(np.asarray(target), expect)
            total += 1
    stated("torchvision `VOCSegmentation", n, total)


def test_supervision_from_pascal_voc(world):
    """supervision rebuilds each object from the XML's outlines (one per part, holes bridged in)."""
    import supervision as sv

    _, root, want = world
    pairs, total = totals(want, crowd=False)
    ds = sv.DetectionDataset.from_pascal_voc(str(root / "voc" / VOC / "JPEGImages"), str(root / "voc" / VOC / "Annotations"),
                                             force_masks=True)
    n = 0
    for path, _, det in ds:
        rid = int(os.path.basename(path)[:8])
        n += count_exact([(ds.classes[c], m) for c, m in zip(det.class_id, det.mask)], pairs[rid])
    stated("supervision `from_pascal_voc", n, total)


def test_datumaro_voc(world):
    """Datumaro reads the object map (SegmentationObject): each object's visible part; void as
    the declared label "ignored"."""
    import datumaro as dm

    _, root, want = world
    pairs, total = totals(want, crowd=False)
    ds, labels = datumaro_import(root / "voc" / VOC, "voc")
    assert labels[-1] == "ignored" and len(ds) == len(want)
    n = n_visible = 0
    for item in ds:
        rid = int(item.id)
        got = [(labels[a.label], a.image) for a in item.annotations
               if isinstance(a, dm.Mask) and labels[a.label] != "ignored"]
        n += count_exact(got, pairs[rid])
        objs = [(c, m) for c, m, crowd in want[rid] if not crowd]
        void = np.zeros(objs[0][1].shape, bool) if objs else None
        for c, m, crowd in want[rid]:
            if crowd:
                void |= m
        visible = []
        for k, (c, m) in enumerate(objs):
            v = m & ~void
            for _, later in objs[k + 1:]:
                v &= ~later
            if v.any():
                visible.append((c, v))
        n_visible += count_exact(got, visible)
        assert len(got) == len(visible)
    assert n_visible == n_visible_total(want)  # every visible part exactly as the store has it
    stated("Datumaro/CVAT `voc`", n, total)


def n_visible_total(want) -> int:
    """Objects (not crowd) with some pixel left in VOC's one-object-per-pixel map."""
    n = 0
    for objs in want.values():
        plain = [m for _, m, crowd in objs if not crowd]
        void = np.zeros(plain[0].shape, bool) if plain else None
        for _, m, crowd in objs:
            if crowd:
                void |= m
        for k, m in enumerate(plain):
            v = m & ~void
            for later in plain[k + 1:]:
                v &= ~later
            n += bool(v.any())
    return n


def test_voc_images_are_jpeg_and_their_difference_is_stated(world):
    s, root, want = world
    worst = 99.0
    for rid in want:
        jpg = np.asarray(Image.open(root / "voc" / VOC / f"JPEGImages/{rid:08d}.jpg").convert("RGB")).astype(float)
        diff = jpg - s.image(s.get(rid).image)
        worst = min(worst, 10 * np.log10(255 ** 2 / max((diff ** 2).mean(), 1e-9)))
    m = re.search(r"JPEG \(quality 95; PSNR >= (\d+) dB", README)
    assert m and worst >= int(m.group(1))


# -- YOLO --------------------------------------------------------------------------------------------
def test_supervision_from_yolo(world):
    import supervision as sv

    _, root, want = world
    pairs, total = totals(want, crowd=False)
    n = 0
    for split in ("train", "val"):
        ds = sv.DetectionDataset.from_yolo(str(root / f"yolo/images/{split}"), str(root / f"yolo/labels/{split}"),
                                           str(root / "yolo/data.yaml"), force_masks=True)
        for path, _, det in ds:
            rid = int(os.path.basename(path)[:8])
            n += count_exact([(ds.classes[c], m) for c, m in zip(det.class_id, det.mask)], pairs[rid])
    stated("supervision `from_yolo", n, total)


def test_datumaro_yolo_detect_boxes(world):
    import datumaro as dm

    _, root, want = world
    ds, labels = datumaro_import(root / "yolo_det", "yolo")
    n = total = 0
    for item in ds:
        rid = int(item.id)
        boxes = [a for a in item.annotations if isinstance(a, dm.Bbox)]
        plain = [(c, m) for c, m, crowd in want[rid] if not crowd]
        total += len(plain)
        got = collections.Counter((labels[a.label], tuple(np.round(a.points, 3))) for a in boxes)
        for c, m in plain:
            ys, xs = np.nonzero(m)
            k = (c, tuple(np.round([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], 3).astype(float)))
            if got[k]:
                got[k] -= 1
                n += 1
    stated("Datumaro `yolo`", n, total)


# -- HF ----------------------------------------------------------------------------------------------
def test_datasets_load_dataset_numpy_and_torch(world, tmp_path):
    import datasets
    import torch

    _, root, want = world
    pairs, total = totals(want)
    ds = datasets.load_dataset(str(root / "hf"), cache_dir=str(tmp_path / "cache"))
    n = 0
    for split in ds:
        d = ds[split]
        names = d.features["objects"]["category"].feature.names
        for k, row in enumerate(d.with_format("numpy")):
            got = [(names[c], m > 127) for c, m in zip(row["objects"]["category"], row["objects"]["mask"])]
            n += count_exact(got, pairs[int(row["sample_id"])])
            if k < 3:
                t = d.with_format("torch")[k]
                assert isinstance(t["image"], torch.Tensor) and isinstance(t["objects"]["bbox"], (torch.Tensor, list))
    stated("`datasets.load_dataset", n, total)
