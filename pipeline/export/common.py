"""What every export format shares: errors, the report, loading a sample (or saying why it
is damaged), per-image provenance, and mask <-> polygon conversion."""
from __future__ import annotations

import io
import os
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image

from ..errors import PipelineError
from ..dataset import Record, Store

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
SPLIT_NAMES = {"train": "train", "val": "validation"}  # ours -> Hugging Face's


class ExportError(PipelineError, ValueError):
    """The export cannot be made as asked; nothing was written."""


class DamagedSample(PipelineError):
    """A stored sample whose image or masks cannot be read; the export skips it."""


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
    n_images: int  # written (damaged samples excluded)
    n_instances: int  # instances written as annotations (see ``lost`` for what a format could not hold)
    splits: dict[str, int]
    categories: list[str]
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    damaged: list[dict] = field(default_factory=list)  # {"sample_id", "uid", "reason"}, skipped
    lost: dict[str, int] = field(default_factory=dict)  # what the format dropped, e.g. hidden VOC objects


def sample_instances(store: Store, rec: Record) -> list[tuple[str, np.ndarray]]:
    """The instance masks to export for a sample (class name, HW bool), in the order of
    ``rec.instances``, later ones on top: exactly what the store holds
    (:meth:`pipeline.dataset.Store.masks`), which is also what the gallery shows."""
    return store.masks(rec)


@dataclass
class ExportInstance:
    class_name: str
    mask: np.ndarray  # HW bool
    source: str  # generated | inserted | imported | user
    iscrowd: bool = False


@dataclass
class Sample:
    """A record with its blobs read and checked."""

    rec: Record
    image_bytes: bytes  # the stored PNG, copied as is where a format takes PNG
    instances: list[ExportInstance]
    provenance: dict  # see provenance()

    @property
    def image(self) -> np.ndarray:
        """HWC uint8 RGB (decoded on use: COCO, YOLO and HF only copy the PNG)."""
        with Image.open(io.BytesIO(self.image_bytes)) as im:
            return np.asarray(im.convert("RGB"))


def load_sample(store: Store, rec: Record) -> Sample:
    """Read a sample's image and masks; DamagedSample (with the reason) when any is missing,
    unreadable or of the wrong size. The image is checked by its PNG checksums and header
    (PIL's verify), which is several times cheaper than decoding it."""
    try:
        data = store.blob_bytes(rec.image)
    except (OSError, ValueError) as e:
        raise DamagedSample(f"image blob {rec.image} unreadable: {e}") from e
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
            im.verify()
    except (OSError, SyntaxError, ValueError) as e:
        raise DamagedSample(f"image blob {rec.image} is not a readable image: {e}") from e
    if size != (rec.width, rec.height):
        raise DamagedSample(f"image is {size[1]}x{size[0]}, the record says {rec.height}x{rec.width}")
    try:
        masks = sample_instances(store, rec)
    except (OSError, SyntaxError, ValueError) as e:  # missing/corrupt PNG or .npy blob
        raise DamagedSample(f"a mask or heat map blob is unreadable: {e}") from e
    inst = []
    for k, (cls, m) in enumerate(masks):
        if m.shape != (rec.height, rec.width):
            raise DamagedSample(f"mask {k} ({cls}) is {m.shape}, the image is {(rec.height, rec.width)}")
        meta = rec.instances[k] if len(rec.instances) == len(masks) else None
        inst.append(ExportInstance(cls, m.astype(bool), meta.source if meta else "generated",
                                   bool(getattr(meta, "iscrowd", False))))
    return Sample(rec, data, inst, provenance(rec, store))


SYNTHETIC_LICENSE = {"name": "Synthetic data; subject to the licence of the generating model", "url": ""}
UPLOAD_LICENSE = {"name": "unknown (uploaded by the user; not recorded)", "url": ""}
_PHOTO_KEYS = ("source_id", "file_name", "dataset", "coco_url", "flickr_url", "date_captured")


def is_photo(rec: Record) -> bool:
    """Real photographs imported from a dataset (as opposed to generated images)."""
    return rec.meta.get("origin") == "photo" or rec.model.startswith("real") or "coco_image_id" in rec.meta


def is_composite(rec: Record) -> bool:
    """A sample made by pasting objects into a background (the Insert tab, batch insertion)."""
    return bool(rec.inserted)


def source_provenance(rec: Record) -> dict:
    """Who made the image of ``rec`` and under what licence, in a few keys: what a composite
    records of its background and of each object pasted into it (JSON-serialisable).

    A photo: origin "photo", its licence, original id, file name, dataset and URLs; a
    generated image: origin "generated", prompt, seed, model and the synthetic-data licence;
    a composite: origin "composite" with its own background's and objects' provenance."""
    if is_composite(rec):
        return {"origin": "composite", "uid": rec.uid, **composite_provenance(rec)}
    if is_photo(rec):
        photo = rec.meta.get("photo", {})
        return {"origin": "photo", "uid": rec.uid, "license": photo.get("license"),
                **{k: photo.get(k, rec.meta.get("coco_image_id") if k == "source_id" else None)
                   for k in _PHOTO_KEYS if photo.get(k) is not None or k == "source_id"}}
    return {"origin": "generated", "uid": rec.uid, "prompt": rec.prompt, "seed": rec.seed, "model": rec.model,
            "license": SYNTHETIC_LICENSE}


def composite_provenance(rec: Record) -> dict:
    """A composite's ``background`` (the provenance recorded when it was made: see
    :func:`source_provenance`; an upload's licence is unknown) and ``inserted`` (per pasted
    object: class, how it was made, and its own provenance and licence), and, at the top,
    the background's licence: the composite is a derivative of the background photo, so it
    carries that photo's licence and attribution, the objects' beside it."""
    bg = rec.meta.get("background_provenance")
    if bg is None:  # made before composites recorded their background, or from an upload
        bg = {"origin": "unknown (not recorded when the composite was made)", "license": None}
    objects = []
    for r in rec.inserted:
        o = r.get("object_provenance") or (r.get("bank") or {}).get("provenance")
        if o is None and r.get("object_source") == "generated":  # a batch's generated object
            o = {"origin": "generated", "prompt": r.get("object_prompt"), "seed": r.get("object_seed"),
                 "model": rec.model, "license": SYNTHETIC_LICENSE}
        o = dict(o or {"origin": "unknown (not recorded when the composite was made)", "license": None})
        objects.append({"class": r.get("class"), "made": r.get("object_origin") or r.get("object_source"), **o})
    out = {"background": bg, "inserted": objects, "license": bg.get("license")}
    if bg.get("origin") == "upload" and out["license"] is None:
        out["license"] = UPLOAD_LICENSE
    for k in _PHOTO_KEYS:
        if bg.get(k) is not None:
            out[k] = bg[k]
    return out


def provenance(rec: Record, store: Store | None = None) -> dict:
    """Where an image comes from, as written into every export (JSON-serialisable).

    Photos keep their licence, original id and file name; generated images their prompt,
    seed, model, threshold and refiner (a batch sample's refiner is in its run's
    ``batch-<run>.json`` beside the store); composites (origin "composite") their
    background's licence and attribution at the top level and, beside it, ``background`` and
    ``inserted`` (each pasted object's origin and licence, see :func:`composite_provenance`).
    ``threshold`` is the one the masks were made with (a Curate change included). ``meta``
    is the record's own, so an import of the export restores the record as it was."""
    origin = "composite" if is_composite(rec) else "photo" if is_photo(rec) else "generated"
    p = {"uid": rec.uid, "origin": origin, "classes": list(rec.classes), "prompt": rec.prompt,
         "seed": rec.seed, "model": rec.model, "threshold": rec.effective_threshold, "tags": list(rec.tags),
         "meta": _current_meta(rec)}
    if origin == "photo":
        photo = rec.meta.get("photo", {})
        p.update(license=photo.get("license"), source_id=photo.get("source_id", rec.meta.get("coco_image_id")),
                 file_name=photo.get("file_name"), dataset=photo.get("dataset"))
    elif origin == "composite":
        p.update(composite_provenance(rec))
    if origin != "photo":
        run = rec.meta.get("batch", {}).get("run")
        spec = _batch_spec(str(store.root), run) if store is not None and run else {}
        # the run's spec keeps the refiner in its generation settings (flat in older runs)
        p["refiner"] = rec.meta.get("refiner") or spec.get("generation", {}).get("refiner") or spec.get("refiner")
    return p


HEAT_MASK_NOTE = "attention heat map at threshold"  # how InspectSession.describe() names a threshold mask


def _current_meta(rec: Record) -> dict:
    """``rec.meta`` with its note on the mask (``meta["mask"]``, written when the sample was
    saved) brought up to date: a threshold changed later in Curate (Store.set_threshold)
    re-derives the threshold masks, so the note names the threshold they have now."""
    note = rec.meta.get("mask")
    t = rec.effective_threshold
    if isinstance(note, str) and note.startswith(HEAT_MASK_NOTE) and t is not None \
            and any(i.source == "generated" for i in rec.instances):
        current = f"{HEAT_MASK_NOTE} {t:.2f}"
        if note != current:
            return {**rec.meta, "mask": current}
    return rec.meta


_SPECS: dict[tuple[str, str], dict] = {}


def _batch_spec(store_root: str, run: str) -> dict:
    """A batch run's spec, cached once read (a run's file appears when its first pass ends)."""
    key = (store_root, run)
    if key not in _SPECS:
        try:
            _SPECS[key] = json.loads((Path(store_root) / f"batch-{run}.json").read_text())["spec"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
    return _SPECS[key]


def restore_kwargs(prov: dict) -> dict:
    """Store.add keyword arguments that re-create a record from its exported provenance."""
    return dict(uid=prov.get("uid"), prompt=prov.get("prompt") or "", seed=prov.get("seed"),
                model=prov.get("model") or "", threshold=prov.get("threshold"), tags=prov.get("tags") or (),
                meta=prov.get("meta") or {})


def inside(root: Path, rel: str) -> Path:
    """``root/rel``, refusing anything that would land outside ``root``; parents created."""
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise ExportError(f"refusing to write {rel!r} outside the export folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def safe_stem(name: str) -> str:
    """A file-name stem from free text (a class name): letters, digits, '_' and '-' only, so "../../escaped" cannot leave the output folder. A name that had to be
    changed gets 6 hex digits of its hash, so "a/b" and "a_b" stay two files."""
    import hashlib
    import re

    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name.strip().replace(" ", "_")).strip("_") or "class"
    if stem != name.strip().replace(" ", "_"):
        stem = f"{stem[:48]}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"
    return stem


def confined(root: str | os.PathLike, rel: str, what: str = "file") -> Path:
    """``root/rel`` for reading, refusing a ``rel`` (a file name from an annotation file) that
    leads outside ``root`` (``../../etc/passwd``, an absolute path, a symlink out): ExportError."""
    root = Path(root).resolve()
    path = (root / str(rel)).resolve()
    if root not in path.parents:
        raise ExportError(f"{what} {rel!r} lies outside {root}; annotation file names must be relative to it")
    return path


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# -- polygons -----------------------------------------------------------------------------
def _bridge(parts: list[np.ndarray], inside: np.ndarray | None = None) -> np.ndarray:
    """Join closed contours into one polygon by zero-width bridges between their closest
    points (as Ultralytics merges multi-part COCO polygons), so a format with one polygon per
    object keeps every part. Hole contours run the other way round (OpenCV's RETR_CCOMP), so
    filling the joined polygon leaves the holes empty.

    ``inside`` (HW bool): take, of the closest pairs, the first whose bridge line lies on
    these pixels only (a bridge from a part to its own hole need not cross background)."""
    poly = parts[0]
    for seg in parts[1:]:
        d = ((poly[:, None, :].astype(np.int64) - seg[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        if inside is not None and not _on(inside, poly[i], seg[j]):
            for flat in np.argsort(d, axis=None, kind="stable")[:2000]:
                a, b = np.unravel_index(int(flat), d.shape)
                if _on(inside, poly[a], seg[b]):
                    i, j = a, b
                    break
        seg = np.roll(seg, -j, axis=0)
        poly = np.concatenate([poly[:i + 1], seg, seg[:1], poly[i:]])
    return poly


def _on(mask: np.ndarray, p: np.ndarray, q: np.ndarray) -> bool:
    """Whether the pixels of the line p -> q (x, y) all lie on ``mask``."""
    x0, y0 = int(min(p[0], q[0])), int(min(p[1], q[1]))
    x1, y1 = int(max(p[0], q[0])), int(max(p[1], q[1]))
    canvas = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    cv2.line(canvas, (int(p[0]) - x0, int(p[1]) - y0), (int(q[0]) - x0, int(q[1]) - y0), 1)
    return bool(mask[y0:y1 + 1, x0:x1 + 1][canvas > 0].all())


def mask_to_polygons(mask: np.ndarray, holes: bool = True) -> list[np.ndarray]:
    """Contours of an HW bool mask as (N, 2) int arrays of pixel indices (x, y).

    holes=True: outer contours and hole contours (OpenCV RETR_CCOMP); False: outer only."""
    mode = cv2.RETR_CCOMP if holes else cv2.RETR_EXTERNAL
    contours, _ = cv2.findContours(mask.astype(np.uint8), mode, cv2.CHAIN_APPROX_SIMPLE)
    # largest first, so the bridging starts from the main part
    return sorted((c.reshape(-1, 2) for c in contours), key=lambda c: -cv2.contourArea(c))


def part_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """One polygon (N >= 3, 2) of pixel indices (x, y) per part of an HW bool mask, each with
    its own holes joined in by zero-width bridges (see :func:`_bridge`): filling each and
    OR-ing them gives the mask back, holes included (a bridge to a hole runs over the part's
    own pixels, so it costs nothing). Contours of 1-2 points (a part one pixel thick) are
    repeated to 3, as readers drop shorter polygons."""
    mask = np.asarray(mask, bool)
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    hierarchy = hierarchy.reshape(-1, 4)  # next, previous, first child, parent
    out = []
    for k, c in enumerate(contours):
        if hierarchy[k][3] != -1:
            continue  # a hole: joined into its part below
        holes = [contours[j].reshape(-1, 2) for j in range(len(contours)) if hierarchy[j][3] == k]
        poly = _bridge([c.reshape(-1, 2), *holes], inside=mask)
        if len(poly) < 3:
            poly = np.concatenate([poly] * 3)[:3]
        out.append(poly)
    return sorted(out, key=lambda p: -len(p))


def mask_to_polygon(mask: np.ndarray) -> tuple[np.ndarray | None, float]:
    """One polygon (N, 2) of pixel indices for ``mask`` and the IoU with which it fills back
    (``polygon_to_mask``); (None, 0.0) for an empty mask.

    Every part and hole joined by bridges; or, for a multi-part object whose bridges cost more
    than its small parts are worth (each bridge fills a line of background pixels), the
    largest part with its holes: whichever fills back closer (Ultralytics' "all" or "largest")."""
    parts = mask_to_polygons(mask)
    if not parts:
        return None, 0.0
    h, w = mask.shape
    best, best_iou = None, -1.0
    candidates = [_bridge(parts)]
    if len(parts) > 1:
        candidates.append(_bridge([parts[0], *[p for p in parts[1:] if _inside_part(p, parts[0])]]))
    for poly in candidates:
        filled = polygon_to_mask(poly, h, w)
        inter, union = np.logical_and(filled, mask).sum(), np.logical_or(filled, mask).sum()
        score = float(inter / union) if union else 1.0
        if score > best_iou:
            best, best_iou = poly, score
    return best, best_iou


def _inside_part(contour: np.ndarray, part: np.ndarray) -> bool:
    """Whether ``contour`` (a hole) lies inside ``part``'s outline."""
    x, y = contour[0]
    return cv2.pointPolygonTest(part.reshape(-1, 1, 2).astype(np.int32), (float(x), float(y)), False) >= 0


def polygon_to_mask(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fill a polygon of pixel indices (x, y) into an HW bool mask (OpenCV's fill, as
    Ultralytics and supervision draw YOLO polygons)."""
    m = np.zeros((height, width), np.uint8)
    cv2.fillPoly(m, [np.asarray(poly, np.int32).reshape(-1, 1, 2)], 1)
    return m.astype(bool)


def json_dump(obj) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False)


def iter_progress(items: Sequence, progress: bool, desc: str) -> Iterator:
    if not progress:
        return iter(items)
    from tqdm.auto import tqdm

    return iter(tqdm(items, desc=desc, unit="image"))
