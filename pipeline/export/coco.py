"""COCO instances (RLE masks): write and import.

Layout (read by pycocotools, torchvision ``CocoDetection``, supervision ``from_coco`` and
Datumaro/CVAT ``coco_instances``)::

    annotations/instances_<split>.json
    images/<split>/<sample id>.png

Category ids: a class that came with imported COCO photos keeps its original id and
supercategory (``category_id`` 18 stays "dog"); other classes get ids after the largest kept
one, in name order, supercategory "object" (see ``category_ids``); with no COCO photo, 1..K by
name. Boxes and areas are computed from the final masks. Each image carries its provenance
(``provenance``: a photo's licence, original id and file name; a generated image's prompt,
seed, model, threshold and refiner) and each annotation its ``source``; crowd regions from
an import stay crowd annotations (``iscrowd: 1``).
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..dataset import NewSample, Store, load_image_file
from ..limits import check_whole
from .common import SYNTHETIC_LICENSE, inside, iter_progress, json_dump, restore_kwargs
from .validate import CocoFile, DatasetFileError, image_header, is_int, read_coco


def category_ids(records, categories) -> dict[str, tuple[int, str]]:
    """{class name: (COCO category id, supercategory)} for an export.

    A class that comes with an imported COCO photo keeps that dataset's id and supercategory
    (``meta["photo"]["categories"]``, recorded at import), so ``category_id`` 18 is "dog" in
    and out; where photos disagree, the id most of them give wins and the others' names are
    treated as new. Every other class (generated, or whose id another class holds) gets an id
    after the largest kept one, in name order, and supercategory "object"."""
    from collections import Counter

    votes: dict[str, Counter] = {}
    for rec in records:
        for name, (cid, sup) in (rec.meta.get("photo", {}).get("categories") or {}).items():
            if name in categories and isinstance(cid, int) and cid > 0:
                votes.setdefault(name, Counter())[(cid, sup or "object")] += 1
    out, taken = {}, set()
    for name in sorted(votes, key=lambda n: (-votes[n].most_common(1)[0][1], n)):
        (cid, sup), _ = votes[name].most_common(1)[0]
        if cid not in taken:
            out[name] = (cid, sup)
            taken.add(cid)
    nxt = max(taken, default=0) + 1
    for name in categories:
        if name not in out:
            out[name] = (nxt, "object")
            nxt += 1
    return out


def write(ctx) -> int:
    from pycocotools import mask as mask_utils

    ids = category_ids([r for recs in ctx.splits.values() for r in recs], ctx.categories)
    cat_id = {c: i for c, (i, _) in ids.items()}
    n_ann = 0
    for split in ctx.splits:
        images, anns, licenses = [], [], {}

        def license_id(lic: dict) -> int:
            key = (lic.get("name", ""), lic.get("url", ""))
            if key not in licenses:
                licenses[key] = len(licenses) + 1
            return licenses[key]

        n_photo = n_gen = n_comp = n_on_photo = 0
        models = set()
        for s in ctx.samples(split):
            rec = s.rec
            name = f"{rec.id:08d}.png"
            inside(ctx.root, f"images/{split}/{name}").write_bytes(s.image_bytes)
            prov = s.provenance
            entry = {"id": rec.id, "file_name": name, "width": rec.width, "height": rec.height}
            if prov["origin"] == "photo":
                n_photo += 1
                lic = prov.get("license") or {"name": "unknown (not recorded at import)", "url": ""}
                photo = rec.meta.get("photo", {})
                for k in ("coco_url", "flickr_url", "date_captured"):
                    if photo.get(k):
                        entry[k] = photo[k]
            elif prov["origin"] == "composite":  # a derivative of its background: that one's licence and URLs
                n_comp += 1
                models.add(rec.model or "unknown")
                lic = prov.get("license") or {"name": "unknown (the background's licence was not recorded)", "url": ""}
                n_on_photo += prov["background"].get("origin") == "photo"
                for k in ("coco_url", "flickr_url", "date_captured"):
                    if prov.get(k):
                        entry[k] = prov[k]
            else:
                n_gen += 1
                models.add(rec.model or "unknown")
                lic = SYNTHETIC_LICENSE
            entry["license"] = license_id(lic)
            entry["provenance"] = prov
            images.append(entry)
            for inst in s.instances:
                if not inst.mask.any():
                    continue  # e.g. a user threshold above the whole heat map: nothing to annotate
                rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
                n_ann += 1
                anns.append({"id": n_ann, "image_id": rec.id, "category_id": cat_id[inst.class_name],
                             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                             "area": float(mask_utils.area(rle)), "bbox": [float(x) for x in mask_utils.toBbox(rle)],
                             "iscrowd": int(inst.iscrowd), "source": inst.source})
        parts = []
        if n_gen:
            parts.append(f"{n_gen} images generated by text-to-image diffusion ({', '.join(sorted(models))}) with "
                         "masks from cross-attention")
        if n_photo:
            parts.append(f"{n_photo} real photographs with their imported masks (licence per image)")
        if n_comp:
            parts.append(f"{n_comp} composites ({n_on_photo} on real photographs) with objects pasted in: "
                         "each under its background's licence, its objects' origins and licences in provenance")
        doc = {"info": {"description": "Segmentation data made with DiffuMask-Editor Studio: " + "; ".join(parts) + ".",
                        "synthetic": n_photo + n_on_photo == 0, "n_generated": n_gen, "n_photos": n_photo,
                        "n_composites": n_comp, "n_composites_on_photos": n_on_photo,
                        "models": sorted(models), "version": "1.0", "year": datetime.date.today().year,
                        "contributor": "DiffuMask-Editor Studio",
                        "date_created": datetime.datetime.now(datetime.timezone.utc).isoformat()},
               "licenses": [{"id": i, "name": n, "url": u} for (n, u), i in licenses.items()],
               "categories": [{"id": i, "name": c, "supercategory": sup}
                              for c, (i, sup) in sorted(ids.items(), key=lambda kv: kv[1][0])],
               "images": images, "annotations": anns}
        inside(ctx.root, f"annotations/instances_{split}.json").write_text(json_dump(doc))
    return n_ann


def _original_categories(coco: CocoFile, anns) -> dict[str, list]:
    """{name: [original category id, supercategory]} of the categories an image's annotations
    use, kept with the photo so an export gives them the same ids (see category_ids)."""
    return {coco.categories[a.category_id]: [int(a.category_id), coco.supercategories.get(a.category_id)]
            for a in anns}


def import_coco(store: Store, instances_json: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
                status: str = "accepted", tags: Sequence[str] = ("imported",), limit: int | None = None,
                progress: bool = False) -> list[int]:
    """Add a COCO dataset's images with their instance masks (crowd regions as crowd
    instances). Returns the sample ids, in image id order.

    Images of an export made by this project (they carry ``provenance``) come back as the
    records they were: uid, prompt, seed, model, threshold, meta and instance sources.
    Other images are real photos: their licence, id and file name go into ``meta["photo"]``.
    ``images_dir`` defaults to this project's layout, ``images/<split>/`` beside
    ``annotations/instances_<split>.json``.

    The whole file is read (streamed) and checked first, and every image's header, so a
    malformed or hostile file is refused with :class:`~.validate.DatasetFileError` before
    anything is written (see :mod:`.validate`). Each sample has a uid from its source: an
    import stopped half way is resumed by the same call, which skips what is stored."""
    instances_json = Path(instances_json)
    if limit is not None:
        limit = check_whole(limit, "limit", 0, 2**63 - 1)
    if images_dir is None:
        split = instances_json.stem.removeprefix("instances_")
        images_dir = instances_json.parent.parent / "images" / split
    coco = read_coco(instances_json)
    plan = []
    uids: dict[str, int] = {}
    for img_id in sorted(coco.images)[:limit]:
        info = coco.images[img_id]
        hw = (info["height"], info["width"])
        path = image_header(Path(images_dir), info["file_name"], f"COCO image id {img_id} file_name", hw)
        anns = coco.annotations.get(img_id, [])
        prov = info.get("provenance")
        if prov:  # one of our exports
            kwargs = restore_kwargs(prov)
            sources = [a.source for a in anns]
            classes = prov.get("classes") or sorted({coco.categories[a.category_id] for a in anns}) or ["background"]
        else:
            photo = {"dataset": "coco", "source_id": img_id, "file_name": info["file_name"],
                     "license": coco.licenses.get(info["license"]) if is_int(info.get("license")) else None,
                     "categories": _original_categories(coco, anns),
                     **{k: info[k] for k in ("coco_url", "flickr_url", "date_captured") if info.get(k)}}
            kwargs = dict(model="real (COCO)", tags=tags,
                          meta={"origin": "photo", "photo": photo, "coco_image_id": img_id,
                                "source": str(instances_json)})
            sources = ["imported"] * len(anns)
            classes = sorted({coco.categories[a.category_id] for a in anns}) or ["background"]
        kwargs["uid"] = kwargs.get("uid") or f"coco:{info['file_name']}"  # one sample per source image
        if kwargs["uid"] in uids:
            raise DatasetFileError(f"{instances_json}: images {uids[kwargs['uid']]} and {img_id} are one sample "
                                   f"(uid {kwargs['uid']!r}): each image is listed once")
        uids[kwargs["uid"]] = img_id
        plan.append((img_id, path, hw, anns, classes, sources, kwargs))
    ids = []
    for img_id, path, hw, anns, classes, sources, kwargs in iter_progress(plan, progress, "import coco"):
        done = store.get_by_uid(kwargs["uid"])
        if done is not None:  # stored by an earlier run of this import: resume after it
            ids.append(done.id)
            continue
        image = load_image_file(path, f"COCO image id {img_id} ({path})")
        inst = [(coco.categories[a.category_id], a.mask(*hw)) for a in anns]
        ids.append(store.add(NewSample(image, classes, instances=inst, instance_sources=sources,
                                       instance_crowd=[a.iscrowd for a in anns], status=status, **kwargs)))
    return ids
