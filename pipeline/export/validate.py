"""Checks on dataset files from outside, made before an import writes anything.

An import reads files nobody here wrote: a COCO JSON with an ``inf`` polygon or a
100000x100000 image crashes pycocotools' C code (the interpreter dies, exit 139) and a
duplicate image id silently moves masks onto another image. So every importer first reads
and checks the whole annotation file (types, finite numbers, ids, references, geometry against
the image sizes and :data:`pipeline.images.MAX_IMAGE_PIXELS`, image headers), raising
:class:`DatasetFileError` naming the file, the record and what is wrong; only then does it
write, one sample at a time, each with a uid derived from the source, so an import stopped
half way (an unreadable image, kill -9) is resumed by running the same command again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dataset import StoreError, check_class
from ..images import ImageError, MAX_IMAGE_PIXELS, image_size
from ..limits import MAX_INSTANCES_PER_IMAGE, MAX_MASK_BYTES_PER_IMAGE
from .common import ExportError, confined

MAX_SHOWN = 5  # ids listed in a message


class DatasetFileError(StoreError):
    """A dataset file to import is malformed or hostile; nothing was imported from it."""


def _listed(values) -> str:
    values = list(values)
    more = f" and {len(values) - MAX_SHOWN} more" if len(values) > MAX_SHOWN else ""
    return ", ".join(repr(v) for v in values[:MAX_SHOWN]) + more


# What JSON numbers parse to; exact types (not isinstance with the numbers ABCs, which is slow
# per coordinate and would take a bool for a number)
_NUMBER_TYPES = (int, float)


def is_int(v) -> bool:
    return type(v) is int


def finite_numbers(values) -> np.ndarray | None:
    """``values`` (a list) as float64 when every item is a finite real number, else None."""
    if type(values) is not list or not all(type(v) in _NUMBER_TYPES for v in values):
        return None
    try:
        arr = np.asarray(values, np.float64)
    except OverflowError:  # an integer of 400 digits
        return None
    return arr if np.isfinite(arr).all() else None


def image_header(images_dir: Path, rel, what: str, hw: tuple[int, int] | None = None) -> Path:
    """The confined path of an image named in an annotation file, its size read from the
    header (nothing decoded): within the pixel limit, and ``hw`` = (H, W) when given."""
    if not isinstance(rel, str) or not rel:
        raise DatasetFileError(f"{what}: the file name must be a non-empty string, got {rel!r}")
    try:
        path = confined(images_dir, rel, what)  # ExportError for ../../x, /etc/passwd, a symlink out
        found = path.is_file()
    except ExportError:
        raise
    except (ValueError, OSError) as e:  # a NUL byte, a name too long for the file system
        raise DatasetFileError(f"{what}: {rel[:100]!r} is not a usable file name ({e})") from e
    if not found:
        raise DatasetFileError(f"{what}: no image file {path}")
    try:
        size = image_size(path, f"{what} ({path})")
    except ImageError as e:
        raise DatasetFileError(str(e)) from e
    if hw is not None and size != tuple(hw):
        raise DatasetFileError(f"{what}: the file {path} is {size[1]}x{size[0]}, the annotation file says "
                               f"{hw[1]}x{hw[0]}")
    return path


def check_masks_fit(n: int, hw: tuple[int, int], what: str) -> None:
    """Refuse an image whose masks could not be held at once (instances x H x W bytes)."""
    if n > MAX_INSTANCES_PER_IMAGE or n * hw[0] * hw[1] > MAX_MASK_BYTES_PER_IMAGE:
        raise DatasetFileError(f"{what} has {n} instances on {hw[1]}x{hw[0]} pixels: over the limit of "
                               f"{MAX_INSTANCES_PER_IMAGE} instances or {MAX_MASK_BYTES_PER_IMAGE >> 20} MB of "
                               "masks per image; split the annotations")


# The types of a provenance record's fields (pipeline.export.common.restore_kwargs reads them)
_PROVENANCE_TYPES = {"uid": str, "prompt": str, "model": str, "seed": int, "threshold": (int, float),
                     "tags": list, "meta": dict, "classes": list, "instances": list}


def check_provenance(prov, where: str) -> dict:
    """A provenance record from an export (``{}`` for None): an object whose fields have the
    types an import restores (a tag list of strings, a finite threshold, ...)."""
    if prov is None:
        return {}
    if not isinstance(prov, dict):
        raise DatasetFileError(f"{where}: provenance must be an object, got {type(prov).__name__}")
    for key, kind in _PROVENANCE_TYPES.items():
        v = prov.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, kind):
            raise DatasetFileError(f"{where}: provenance {key!r} has the wrong type ({type(v).__name__})")
    for key in ("tags", "classes"):
        if not all(isinstance(v, str) for v in prov.get(key) or []):
            raise DatasetFileError(f"{where}: provenance {key!r} must be a list of strings")
    if prov.get("threshold") is not None and finite_numbers([prov["threshold"]]) is None:
        raise DatasetFileError(f"{where}: provenance threshold must be a finite number")
    return prov


# -- COCO -------------------------------------------------------------------------------------
def rle_string_counts(s: str) -> list[int] | None:
    """The run lengths of a COCO compressed RLE string (pycocotools' rleFrString, read here in
    Python because the C reader trusts the string: counts not summing to H*W write past the
    mask's buffer). None when the string is not well formed."""
    counts, p, n = [], 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
            if k > 13:  # more than 64 bits: not a count
                return None
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


@dataclass
class CocoAnnotation:
    id: int
    category_id: int
    iscrowd: bool
    source: str
    polygons: list[np.ndarray] = field(default_factory=list)  # each (N, 2) float64, N >= 3
    counts: np.ndarray | None = None  # uncompressed RLE run lengths (column-major)

    def rle(self, h: int, w: int):
        """The annotation as a pycocotools RLE for an (h, w) image (already validated)."""
        from pycocotools import mask as mask_utils

        if self.counts is not None:
            return mask_utils.frPyObjects({"size": [h, w], "counts": self.counts.tolist()}, h, w)
        return mask_utils.merge(mask_utils.frPyObjects([p.reshape(-1).tolist() for p in self.polygons], h, w))

    def mask(self, h: int, w: int) -> np.ndarray:
        from pycocotools import mask as mask_utils

        return mask_utils.decode(self.rle(h, w)).astype(bool)


def _ann_geometry(a: dict, where: str) -> tuple[list[np.ndarray], np.ndarray | None, list | None]:
    """Polygons or RLE counts of annotation ``a`` (checked alone; sizes are checked later)."""
    seg = a.get("segmentation")
    if isinstance(seg, list):
        if not seg:
            raise DatasetFileError(f"{where}: empty segmentation (no polygon)")
        polys = []
        for k, poly in enumerate(seg):
            arr = finite_numbers(poly)
            if arr is None:
                raise DatasetFileError(f"{where}: polygon {k} must be a list of finite numbers x1, y1, x2, y2, ...")
            if len(arr) % 2 or len(arr) < 6:
                raise DatasetFileError(f"{where}: polygon {k} has {len(arr)} coordinates; a polygon needs an even "
                                       "number, at least 6 (3 points)")
            polys.append(arr.reshape(-1, 2))
        return polys, None, None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size)):
            raise DatasetFileError(f"{where}: an RLE segmentation needs size [height, width], got {size!r}")
        if isinstance(counts, str):
            counts = rle_string_counts(counts)
            if counts is None:
                raise DatasetFileError(f"{where}: the RLE counts string is not valid compressed RLE")
        elif not (isinstance(counts, list) and all(is_int(v) for v in counts)):
            raise DatasetFileError(f"{where}: RLE counts must be a list of whole numbers or a compressed string")
        if len(counts) > MAX_IMAGE_PIXELS + 1 or not all(0 <= v <= MAX_IMAGE_PIXELS for v in counts):
            raise DatasetFileError(f"{where}: RLE counts must be run lengths in 0..{MAX_IMAGE_PIXELS} (the pixel "
                                   "limit)")
        return [], np.asarray(counts, np.int64), size
    raise DatasetFileError(f"{where}: segmentation must be a list of polygons or an RLE dict, got "
                           f"{type(seg).__name__}")


def check_coco_annotation(a, index: int, path: Path) -> tuple[int, CocoAnnotation, list | None]:
    """One annotation record alone: (image id, compact annotation, RLE size or None)."""
    if not isinstance(a, dict):
        raise DatasetFileError(f"{path}: annotation #{index} must be an object, got {type(a).__name__}")
    where = f"{path}: annotation id {a.get('id')!r}"
    for key in ("id", "image_id", "category_id"):
        if key not in a:
            raise DatasetFileError(f"{path}: annotation #{index} has no {key!r}")
        if not is_int(a[key]):
            raise DatasetFileError(f"{where}: {key} must be a whole number, got {a[key]!r}")
    crowd = a.get("iscrowd", 0)
    if crowd not in (0, 1):
        raise DatasetFileError(f"{where}: iscrowd must be 0 or 1, got {crowd!r}")
    if "bbox" in a and (finite_numbers(a["bbox"]) is None or len(a["bbox"]) != 4
                        or min(a["bbox"][2:]) < 0):
        raise DatasetFileError(f"{where}: bbox must be four finite numbers x, y, width >= 0, height >= 0, "
                               f"got {a['bbox']!r}")
    if "area" in a and finite_numbers([a["area"]]) is None:
        raise DatasetFileError(f"{where}: area must be a finite number, got {a['area']!r}")
    source = a.get("source", "imported")
    if not isinstance(source, str):
        raise DatasetFileError(f"{where}: source must be a string, got {source!r}")
    polys, counts, size = _ann_geometry(a, where)
    return a["image_id"], CocoAnnotation(a["id"], a["category_id"], bool(crowd), source, polys, counts), size


def check_coco_geometry(ann: CocoAnnotation, rle_size, hw: tuple[int, int], where: str) -> None:
    """An annotation against its image's size: RLE size equal and counts summing to H*W;
    polygon points within one image side of the image and of bounded length (pycocotools
    allocates 5 ints per pixel of outline)."""
    h, w = hw
    if ann.counts is not None:
        if list(rle_size) != [h, w]:
            raise DatasetFileError(f"{where}: RLE size {rle_size} is not the image's [{h}, {w}]")
        total = int(ann.counts.sum())
        if total != h * w:
            raise DatasetFileError(f"{where}: RLE counts sum to {total}, the image has {h * w} pixels (H*W)")
        return
    for k, p in enumerate(ann.polygons):
        if (p[:, 0] < -w).any() or (p[:, 0] > 2 * w).any() or (p[:, 1] < -h).any() or (p[:, 1] > 2 * h).any():
            raise DatasetFileError(f"{where}: polygon {k} has points far outside the {w}x{h} image")
        closed = np.concatenate([p, p[:1]])
        if np.abs(np.diff(closed, axis=0)).max(1).sum() > 100 * (h + w):
            raise DatasetFileError(f"{where}: polygon {k}'s outline is over 100 times the image's perimeter")


@dataclass
class CocoFile:
    """A validated COCO instances file: what an import needs, nothing else kept."""
    images: dict[int, dict]  # image id -> the image record
    categories: dict[int, str]  # category id -> name
    licenses: dict
    annotations: dict[int, list[CocoAnnotation]]  # image id -> its annotations, by annotation id
    supercategories: dict[int, str | None] = field(default_factory=dict)  # category id -> supercategory


# Files up to this size are parsed by the json module at once (about 6x their size in memory,
# 5-7x faster); larger ones are streamed with json-stream, one annotation at a time.
STREAM_ABOVE_BYTES = 32 << 20


def _coco_events(path: Path):
    """("annotation", dict) per annotation and (key, value) for the images, categories and
    licenses lists of a COCO file, from json.load (small files) or json-stream (large ones)."""
    if path.stat().st_size <= STREAM_ABOVE_BYTES:
        with open(path, "rb") as f:
            doc = json.load(f)
        if not isinstance(doc, dict):
            raise DatasetFileError(f"{path}: a COCO file is a JSON object with images, annotations and categories")
        for key, value in doc.items():
            if key == "annotations":
                if not isinstance(value, list):
                    raise DatasetFileError(f"{path}: 'annotations' must be a list")
                for a in value:
                    yield "annotation", a
            elif key in ("images", "categories", "licenses"):
                yield key, value
        return
    import json_stream

    with open(path, "rb") as f:
        doc = json_stream.load(f)
        if not isinstance(doc, json_stream.base.StreamingJSONObject):
            raise DatasetFileError(f"{path}: a COCO file is a JSON object with images, annotations and categories")
        for key, value in doc.items():
            if key == "annotations":
                if not isinstance(value, json_stream.base.StreamingJSONList):
                    raise DatasetFileError(f"{path}: 'annotations' must be a list")
                for a in value:
                    yield "annotation", json_stream.to_standard_types(a)
            elif key in ("images", "categories", "licenses"):
                yield key, json_stream.to_standard_types(value)
            # other keys (info, ...) are read past unparsed


def _stream_coco(path: Path):
    """(images, categories, licenses, annotations by image) of ``path``, each annotation
    checked as it is read and kept as compact arrays, not as parsed JSON: a file of 100k
    annotations is never held as Python objects all at once when it is streamed."""
    lists = {}
    anns: dict[int, list[tuple[CocoAnnotation, list | None]]] = {}
    n_ann = 0
    try:
        for key, value in _coco_events(path):
            if key == "annotation":
                image_id, ann, size = check_coco_annotation(value, n_ann, path)
                anns.setdefault(image_id, []).append((ann, size))
                n_ann += 1
            elif not isinstance(value, list):
                raise DatasetFileError(f"{path}: {key!r} must be a list, got {type(value).__name__}")
            else:
                lists[key] = value
    except (ValueError, UnicodeDecodeError, EOFError, StopIteration, RecursionError) as e:
        # json and json-stream syntax errors are ValueErrors; an empty file ends json-stream early
        if isinstance(e, DatasetFileError):
            raise
        raise DatasetFileError(f"{path}: not a valid JSON file ({type(e).__name__}: {str(e)[:200]})") from e
    except OSError as e:
        raise DatasetFileError(f"cannot read {path}: {e}") from e
    if "images" not in lists:
        raise DatasetFileError(f"{path}: no 'images' list: not a COCO instances file")
    return lists["images"], lists.get("categories", []), lists.get("licenses", []), anns


def _duplicates(values) -> list:
    seen, dup = set(), []
    for v in values:
        if v in seen and v not in dup:
            dup.append(v)
        seen.add(v)
    return dup


def read_coco(path: Path) -> CocoFile:
    """Read and check a whole COCO instances file; :class:`DatasetFileError` at the first problem."""
    images, categories, licenses, anns = _stream_coco(path)
    for k, im in enumerate(images):
        if not isinstance(im, dict):
            raise DatasetFileError(f"{path}: image #{k} must be an object, got {type(im).__name__}")
        for key in ("id", "width", "height", "file_name"):
            if key not in im:
                raise DatasetFileError(f"{path}: image #{k} has no {key!r}")
        where = f"{path}: image id {im['id']!r}"
        if not is_int(im["id"]):
            raise DatasetFileError(f"{where}: the id must be a whole number")
        if not (is_int(im["width"]) and is_int(im["height"]) and im["width"] >= 1 and im["height"] >= 1):
            raise DatasetFileError(f"{where}: width and height must be whole numbers >= 1, got "
                                   f"{im['width']!r} x {im['height']!r}")
        if im["width"] * im["height"] > MAX_IMAGE_PIXELS:
            raise DatasetFileError(f"{where} is {im['width']}x{im['height']} = "
                                   f"{im['width'] * im['height'] / 1e6:.0f} megapixels, over the limit of "
                                   f"{MAX_IMAGE_PIXELS / 1e6:.0f}")
        if not isinstance(im["file_name"], str) or not im["file_name"]:
            raise DatasetFileError(f"{where}: file_name must be a non-empty string")
        check_provenance(im.get("provenance"), where)
    dup = _duplicates(im["id"] for im in images)
    if dup:
        raise DatasetFileError(f"{path}: duplicate image ids {_listed(dup)}: each image needs its own id")
    dup = _duplicates(im["file_name"] for im in images)
    if dup:
        raise DatasetFileError(f"{path}: duplicate image file names {_listed(dup)}: each image is listed once")
    cats, supers = {}, {}
    for k, c in enumerate(categories):
        if not (isinstance(c, dict) and is_int(c.get("id")) and isinstance(c.get("name"), str)):
            raise DatasetFileError(f"{path}: category #{k} needs a whole-number id and a name, got {c!r}")
        if c["id"] in cats:
            raise DatasetFileError(f"{path}: duplicate category id {c['id']!r}")
        try:
            cats[c["id"]] = check_class(c["name"])
        except StoreError as e:
            raise DatasetFileError(f"{path}: category id {c['id']!r}: {e}") from e
        sup = c.get("supercategory")
        supers[c["id"]] = sup if isinstance(sup, str) and len(sup) <= 200 else None
    lic = {}
    for c in licenses:  # (a licence id that is not a whole number matches no image: none recorded)
        if isinstance(c, dict) and is_int(c.get("id")):
            lic[c["id"]] = {"name": str(c.get("name", "")), "url": str(c.get("url", ""))}
    by_id = {im["id"]: im for im in images}
    dup = _duplicates(ann.id for group in anns.values() for ann, _ in group)
    if dup:
        raise DatasetFileError(f"{path}: duplicate annotation ids {_listed(dup)}: each annotation needs its own id")
    out: dict[int, list[CocoAnnotation]] = {}
    for image_id, group in anns.items():
        if image_id not in by_id:
            raise DatasetFileError(f"{path}: annotation id {group[0][0].id!r} refers to image id {image_id!r}, "
                                   "which is not in 'images'")
        hw = (by_id[image_id]["height"], by_id[image_id]["width"])
        check_masks_fit(len(group), hw, f"{path}: image id {image_id!r}")
        for ann, size in group:
            where = f"{path}: annotation id {ann.id!r}"
            if ann.category_id not in cats:
                raise DatasetFileError(f"{where}: category id {ann.category_id!r} is not in 'categories'")
            check_coco_geometry(ann, size, hw, where)
        out[image_id] = sorted((ann for ann, _ in group), key=lambda a: a.id)
    return CocoFile(by_id, cats, lic, out, supers)
