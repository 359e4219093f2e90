"""PASCAL VOC segmentation: write and import.

Layout (torchvision ``VOCSegmentation(root=out)``, supervision ``from_pascal_voc``,
Datumaro/CVAT ``voc`` on ``out/VOCdevkit/VOC2012``)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg             re-encoded: JPEG quality 95, 4:4:4 (VOC is JPEG)
    VOCdevkit/VOC2012/Annotations/<id>.xml            objects in SegmentationObject order, boxes
                                                     (1-based, inclusive) and outline polygons
    VOCdevkit/VOC2012/SegmentationClass/<id>.png      P mode, class index per pixel, 255 = void
    VOCdevkit/VOC2012/SegmentationObject/<id>.png     P mode, object k (1-based) per pixel
    VOCdevkit/VOC2012/ImageSets/{Segmentation,Main}/<split>.txt
    VOCdevkit/VOC2012/labelmap.txt                    name:r,g,b:parts:actions, line i = index i, then
                                                     "ignored" (Datumaro's name for void, 255)
    VOCdevkit/VOC2012/class_ids.json, provenance.json

One object map per image cannot hold overlapping objects: a later object hides what it
covers. The export counts fully and partly hidden objects (``lost``); crowd regions are
written as void (255) since VOC has no crowd annotation.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from ..dataset import NewSample, Store, StoreError, check_class
from ..images import ImageError, image_size, load_image_file, load_label_map
from ..masks import bbox
from .common import (VOC_CLASSES, ExportError, confined, inside, iter_progress, json_dump, part_polygons,
                     restore_kwargs, voc_palette)
from .validate import DatasetFileError, check_masks_fit, check_provenance, image_header

BASE = "VOCdevkit/VOC2012"
VOID_LABEL = "ignored"  # Datumaro's name for index 255 (VocLabel.ignored), colour (224, 224, 192)


def voc_class_ids(categories: Sequence[str]) -> dict[str, int]:
    """VOC's own indices when every class is a VOC class, else 1..K in name order."""
    if all(c in VOC_CLASSES for c in categories):
        return {c: VOC_CLASSES.index(c) for c in categories}
    return {c: i + 1 for i, c in enumerate(categories)}


def _void_band(masks: list[np.ndarray], width: int) -> np.ndarray:
    band = np.zeros(masks[0].shape, bool)
    k = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    for m in masks:
        u8 = m.astype(np.uint8)
        band |= (cv2.dilate(u8, k) > 0) & ~(cv2.erode(u8, k) > 0)
    return band


def _xml(name: str, w: int, h: int, objects: list[tuple[str, np.ndarray, bool]]) -> bytes:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "VOC2012"
    ET.SubElement(ann, "filename").text = f"{name}.jpg"
    ET.SubElement(ET.SubElement(ann, "source"), "database").text = "DiffuMask-Editor Studio"
    size = ET.SubElement(ann, "size")
    for k, v in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, k).text = str(v)
    ET.SubElement(ann, "segmented").text = "1"
    for cls, m, hidden in objects:
        x1, y1, x2, y2 = bbox(m)
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = cls
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "occluded").text = str(int(hidden))
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")  # VOC boxes are 1-based with inclusive ends
        for k, v in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box, k).text = str(v)
        # outlines, 1-based like the box: one <polygon> per part with its holes joined in by bridges
        # (supervision fills each polygon and ORs the parts, so holes and parts come back; the PNGs
        # hold the exact masks)
        for poly in part_polygons(m):
            pe = ET.SubElement(obj, "polygon")
            for i, (x, y) in enumerate(poly, start=1):
                ET.SubElement(pe, f"x{i}").text = str(int(x) + 1)
                ET.SubElement(pe, f"y{i}").text = str(int(y) + 1)
    ET.indent(ann)
    return ET.tostring(ann, encoding="utf-8", xml_declaration=True)


def write(ctx) -> int:
    if VOID_LABEL in ctx.categories:
        raise ExportError(f"VOC's label map names void (index 255) {VOID_LABEL!r}, as Datumaro/CVAT do; rename "
                          f"the class {VOID_LABEL!r} (or export it with --class to leave it out)")
    ids = voc_class_ids(ctx.categories)
    if max(ids.values(), default=0) > 254:
        raise ExportError(f"VOC class maps hold at most 254 classes (255 is void); got {len(ids)}")
    labels = list(VOC_CLASSES) if all(c in VOC_CLASSES for c in ctx.categories) else ["background", *ctx.categories]
    pal = voc_palette()
    pal_list = pal.reshape(-1).tolist()
    root = ctx.root
    n_inst = 0
    prov_all = {}
    lost = ctx.lost
    for split in ctx.splits:
        names = []
        for s in ctx.samples(split):
            rec = s.rec
            name = f"{rec.id:08d}"
            names.append(name)
            # VOC readers (torchvision) want .jpg: quality 95 without chroma subsampling (4:4:4) keeps
            # PSNR >= 40 dB on coco-mini and the generated samples (26 dB with the default 4:2:0)
            Image.fromarray(s.image).save(inside(root, f"{BASE}/JPEGImages/{name}.jpg"), quality=95, subsampling=0)
            inst = [i for i in s.instances if i.mask.any()]
            objs = [i for i in inst if not i.iscrowd]
            crowd = [i for i in inst if i.iscrowd]
            if len(objs) > 254:
                lost["objects beyond 254 in one image (not written)"] = \
                    lost.get("objects beyond 254 in one image (not written)", 0) + len(objs) - 254
                objs = objs[:254]
            cls_map = np.zeros((rec.height, rec.width), np.uint8)
            obj_map = np.zeros((rec.height, rec.width), np.uint8)
            for k, i in enumerate(objs, start=1):
                cls_map[i.mask] = ids[i.class_name]
                obj_map[i.mask] = k
            for i in crowd:
                cls_map[i.mask] = 255
                obj_map[i.mask] = 255
            if crowd:
                lost["crowd regions written as void"] = lost.get("crowd regions written as void", 0) + len(crowd)
            hidden = []
            for k, i in enumerate(objs, start=1):
                visible = int((obj_map == k).sum())
                hidden.append(visible < int(i.mask.sum()))
                if visible == 0:
                    lost["objects fully hidden in SegmentationObject"] = \
                        lost.get("objects fully hidden in SegmentationObject", 0) + 1
                elif hidden[-1]:
                    lost["objects partly hidden in SegmentationObject"] = \
                        lost.get("objects partly hidden in SegmentationObject", 0) + 1
            if ctx.void_border and inst:
                band = _void_band([i.mask for i in inst], ctx.void_border)
                cls_map[band] = 255
                obj_map[band] = 255
            n_inst += len(objs)
            for folder, arr in (("SegmentationClass", cls_map), ("SegmentationObject", obj_map)):
                im = Image.fromarray(arr, mode="P")
                im.putpalette(pal_list)
                im.save(inside(root, f"{BASE}/{folder}/{name}.png"))
            inside(root, f"{BASE}/Annotations/{name}.xml").write_bytes(
                _xml(name, rec.width, rec.height, [(i.class_name, i.mask, h) for i, h in zip(objs, hidden)]))
            prov_all[name] = {**s.provenance, "instances": [{"class": i.class_name, "source": i.source}
                                                               for i in objs]}
        for sets in ("Segmentation", "Main"):
            inside(root, f"{BASE}/ImageSets/{sets}/{split}.txt").write_text("".join(n + "\n" for n in names))
    # no trainval.txt: Datumaro (so CVAT) reads every list as a subset and would load each image twice
    # Datumaro/CVAT's labelmap: one line per class index, name:r,g,b:parts:actions; then void (index 255,
    # crowd regions and --void-border) under Datumaro's own name for it, so its colour is declared
    lines = [f"{c}:{','.join(map(str, pal[i]))}::" for i, c in enumerate(labels)]
    lines.append(f"{VOID_LABEL}:{','.join(map(str, pal[255]))}::")
    inside(root, f"{BASE}/labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "\n".join(lines) + "\n")
    inside(root, f"{BASE}/class_ids.json").write_text(json_dump({"background": 0, **ids, "void": 255}))
    inside(root, f"{BASE}/provenance.json").write_text(json_dump(prov_all))
    return n_inst


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetFileError(f"cannot read {what} {path}: {e}") from e


def read_labels(root: Path) -> list[str]:
    """Class names by index: labelmap.txt (``name:r,g,b[:parts:actions]``, line i = index i),
    else class_ids.json, else the 21 PASCAL classes."""
    if (root / "labelmap.txt").exists():
        void = f"{VOID_LABEL}:{','.join(map(str, voc_palette()[255]))}"
        names = [ln.split(":", 1)[0] for ln in _read_text(root / "labelmap.txt", "label map").splitlines()
                 if ln.strip() and not ln.startswith("#") and not ln.startswith(void)]  # void is 255, not a line
        if names:
            return names
    if (root / "class_ids.json").exists():
        try:
            ids = {k: v for k, v in json.loads(_read_text(root / "class_ids.json", "class ids")).items() if v != 255}
            if not all(isinstance(v, int) and 0 <= v < 255 for v in ids.values()):
                raise ValueError("class ids must be whole numbers 0..254 (255 = void)")
        except (ValueError, AttributeError) as e:
            raise DatasetFileError(f"{root / 'class_ids.json'}: not a map of class name to index ({e})") from e
        names = ["background"] * (max(ids.values(), default=0) + 1)
        for c, i in ids.items():
            names[i] = c
        return names
    return list(VOC_CLASSES)


def find_voc_root(path: str | os.PathLike) -> Path:
    """The folder holding JPEGImages/: ``path`` itself or ``path/VOCdevkit/VOC20xx``."""
    root = Path(path)
    if (root / "JPEGImages").is_dir():
        return root
    found = sorted(p for p in (root / "VOCdevkit").glob("VOC*") if (p / "JPEGImages").is_dir())
    if not found:
        raise StoreError(f"no VOC dataset under {root} (looked for JPEGImages/ and VOCdevkit/VOC*/JPEGImages/)")
    return found[-1]


def read_object_names(xml_path: Path) -> list[str]:
    """The <object><name>s of a VOC annotation XML, in order, parsed with defusedxml: a DTD,
    entities (billion laughs) or external references (XXE) are refused, not expanded."""
    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException

    try:
        root = DET.parse(xml_path, forbid_dtd=True).getroot()
    except DefusedXmlException as e:
        raise DatasetFileError(f"{xml_path}: refused: VOC annotations have no DTD or entities ({e!r})") from e
    except (ET.ParseError, OSError) as e:
        raise DatasetFileError(f"{xml_path}: not a readable XML file ({e})") from e
    names = [o.findtext("name") for o in root.iter("object")]
    bad = [k for k, n in enumerate(names) if not n or not n.strip()]
    if bad:
        raise DatasetFileError(f"{xml_path}: object {bad[0] + 1} has no <name>")
    try:
        return [check_class(n.strip()) for n in names]
    except StoreError as e:
        raise DatasetFileError(f"{xml_path}: {e}") from e


def import_voc(store: Store, voc_root: str | os.PathLike, *, split: str | None = None, status: str = "accepted",
               tags: Sequence[str] = ("imported",), progress: bool = False) -> list[int]:
    """Add a PASCAL VOC segmentation dataset (SegmentationObject + SegmentationClass, class
    names from labelmap.txt). Object k's class is the k-th object of Annotations/<id>.xml
    when there is one, else the class most of its pixels have. Returns the sample ids.

    ``voc_root`` is the VOC folder (with JPEGImages/) or one holding VOCdevkit/VOC20xx/.
    Every name's files are checked first (inside the folder, image and label-map headers
    within the pixel limit and of one size, the XML parsed safely), then the samples are
    written, each with a uid from its name: a stopped import is resumed by the same call."""
    root = find_voc_root(voc_root)
    labels = read_labels(root)
    prov_all = {}
    if (root / "provenance.json").exists():
        try:
            prov_all = json.loads(_read_text(root / "provenance.json", "provenance"))
        except ValueError as e:
            raise DatasetFileError(f"{root / 'provenance.json'}: not valid JSON ({e})") from e
        if not isinstance(prov_all, dict):
            raise DatasetFileError(f"{root / 'provenance.json'}: must map each image name to an object")
        for name, prov in prov_all.items():
            check_provenance(prov, f"{root / 'provenance.json'}: {name!r}")
    if split:
        names = _read_text(confined(root / "ImageSets" / "Segmentation", f"{split}.txt", "VOC split"),
                           "VOC split list").split()
    else:
        names = sorted(p.stem for p in (root / "SegmentationObject").glob("*.png"))
    if not names:
        raise StoreError(f"no VOC segmentation samples under {root}")
    plan = []
    for name in names:
        img = image_header(root / "JPEGImages", f"{name}.jpg", f"VOC image {name!r}")  # a list naming ../../x
        hw = image_size(img)
        maps = [image_header(root / folder, f"{name}.png", f"VOC {folder} {name!r}", hw)
                for folder in ("SegmentationObject", "SegmentationClass")]
        xml_path = confined(root / "Annotations", f"{name}.xml", "VOC annotation")
        xml_names = read_object_names(xml_path) if xml_path.exists() else []
        plan.append((name, img, hw, maps, xml_names))
    ids = []
    for name, img, hw, (obj_path, cls_path), xml_names in iter_progress(plan, progress, "import voc"):
        prov = prov_all.get(name)
        uid = (prov or {}).get("uid") or f"voc:{name}"
        done = store.get_by_uid(uid)
        if done is not None:  # stored by an earlier run of this import: resume after it
            ids.append(done.id)
            continue
        image = load_image_file(img)
        try:
            obj = load_label_map(obj_path, hw)
            cls = load_label_map(cls_path, hw)
        except ImageError as e:
            raise DatasetFileError(str(e)) from e
        inst, ks = [], sorted(set(np.unique(obj).tolist()) - {0, 255})
        check_masks_fit(len(ks), hw, f"VOC image {name!r}")
        for k in ks:
            m = obj == k
            if k - 1 < len(xml_names):
                inst.append((xml_names[k - 1], m))
                continue
            votes = np.bincount(cls[m][cls[m] != 255], minlength=len(labels))
            idx = int(votes.argmax())
            if idx >= len(labels):
                raise DatasetFileError(f"{name}: class index {idx} is not in the label map ({len(labels)} classes)")
            inst.append((labels[idx], m))
        if prov:
            kwargs = restore_kwargs(prov)
            written = [i.get("source", "imported") if isinstance(i, dict) else "imported"
                       for i in prov.get("instances") or []]  # object k is written[k - 1]
            sources = [written[k - 1] if k - 1 < len(written) else "imported" for k in ks]
            classes = prov.get("classes") or sorted({c for c, _ in inst}) or ["background"]
        else:
            kwargs = dict(model="real (VOC)", tags=tags,
                          meta={"origin": "photo", "photo": {"dataset": "voc", "source_id": name,
                                                             "file_name": f"{name}.jpg", "license": None}})
            sources = ["imported"] * len(inst)
            classes = sorted({c for c, _ in inst}) or ["background"]
        kwargs["uid"] = uid
        ids.append(store.add(NewSample(image, classes, instances=inst, instance_sources=sources, status=status,
                                       **kwargs)))
    return ids
