"""Exports (COCO, VOC, YOLO, HF) read by third-party readers and by our own importers; export
safety (where it may write, what --force may remove), damaged samples, killed exports."""
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SHARED
from pipeline.dataset import NewSample, Store, StoreError
from pipeline.export import (FORMATS, VOC_CLASSES, ExportError, export, import_coco, import_hf, import_voc, import_yolo,
                             mask_to_polygon, polygon_to_mask, voc_palette)
from pipeline.export.yolo import LOW_IOU
from pipeline.masks import iou

VOC = "VOCdevkit/VOC2012"


def quiet():
    return contextlib.redirect_stdout(io.StringIO())


def shapes(rng, h=64, w=80):
    """A ring (a hole) and a two-part object that do not overlap, at random offsets."""
    yy, xx = np.mgrid[:h, :w]
    cy, cx = int(rng.integers(20, 44)), int(rng.integers(18, 30))
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    ring = (d2 <= 15 ** 2) & (d2 > int(rng.integers(3, 7)) ** 2)
    two = (((yy - 10) ** 2 + (xx - 66) ** 2) <= 36) | ((yy > 24) & (yy < 40) & (xx > 54) & (xx < 76))
    return ring, two


@pytest.fixture()
def gen_store(tmp_path):
    """6 accepted generated samples (2 instances each: a ring and a two-part object, classes
    that are not VOC classes) with prompt/seed/model/threshold/refiner, 1 rejected."""
    rng = np.random.default_rng(0)
    s = Store(tmp_path / "store")
    names = ["ball", "kite", "star"]
    yy, xx = np.mgrid[:64, :80]
    for k in range(7):  # smooth images (VOC stores JPEG), different per sample
        img = np.stack([xx * 3 + k * 10, yy * 3, (xx + yy) * 2 + k], -1).clip(0, 255).astype(np.uint8)
        ring, two = shapes(rng)
        a, b = names[k % 3], names[(k + 1) % 3]
        s.add(NewSample(img, [a, b], instances=[(a, ring), (b, two)], instance_sources=["generated", "inserted"],
                        prompt=f"a photograph of a {a}", seed=100 + k, model="embedded", threshold=0.4 + 0.01 * k,
                        status="accepted" if k < 6 else "rejected", tags=["t1"], meta={"refiner": "grabcut"}))
    return s


@pytest.fixture()
def store(tmp_path):
    """6 samples of one circle each (dog/cat, VOC classes), 4 accepted; heat maps kept."""
    rng = np.random.default_rng(0)
    s = Store(tmp_path / "store")
    for k in range(6):
        img = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
        yy, xx = np.mgrid[:48, :48]
        cy, cx, r = rng.integers(12, 36, 2).tolist() + [int(rng.integers(5, 11))]
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        cls = ["dog", "cat"][k % 2]
        s.add(NewSample(img, [cls], instances=[(cls, m)], prompt=f"a photograph of a {cls}", seed=k, model="tiny",
                        heat_map=m.astype(np.float32) * 0.9, threshold=0.5, refined_mask=m,
                        status="accepted" if k < 4 else "rejected", tags=["batch1"] if k < 3 else []))
    return s


def same_objects(got, want):
    """Same (class, mask) pairs, in any order (third-party readers do not keep ours)."""
    def key(p):
        return p[0], np.asarray(p[1], bool).tobytes()
    return sorted(map(key, got)) == sorted(map(key, want))


def accepted_masks(s):
    return {r.id: [(i.class_name, s.mask(i.mask)) for i in r.instances] for r in s.query(status="accepted")}


def assert_same_records(src, dst, ids, *, exact_masks=True, exact_image=True):
    """Records in ``dst`` equal those of ``src`` with the same uid: classes, instance classes,
    masks, sources and provenance."""
    assert len(ids) == src.count(status="accepted")
    for rid in ids:
        r = dst.get(rid)
        o = src.get_by_uid(r.uid)
        assert o is not None, r.uid
        assert (r.classes, r.prompt, r.seed, r.model, r.tags, r.meta) == (o.classes, o.prompt, o.seed, o.model,
                                                                          o.tags, o.meta)
        assert r.threshold == pytest.approx(o.effective_threshold)
        assert [(i.class_name, i.source, i.iscrowd) for i in r.instances] == \
            [(i.class_name, i.source, i.iscrowd) for i in o.instances]
        for a, b in zip(r.instances, o.instances):
            if exact_masks:
                assert np.array_equal(dst.mask(a.mask), src.mask(b.mask))
            else:
                assert iou(dst.mask(a.mask), src.mask(b.mask)) >= 0.95
        if exact_image:
            assert np.array_equal(dst.image(r.image), src.image(o.image))
        else:  # VOC's JPEG
            diff = dst.image(r.image).astype(float) - src.image(o.image)
            assert 10 * np.log10(255 ** 2 / (diff ** 2).mean()) > 25


# -- COCO --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_coco_self_eval_torchvision_supervision_datumaro(gen_store, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rep = export(gen_store, "coco", tmp_path / "coco", val_fraction=0.5, seed=3)
    assert rep.splits == {"train": 3, "val": 3} and rep.n_instances == 12 and rep.categories == ["ball", "kite", "star"]
    want = accepted_masks(gen_store)
    for split in ("train", "val"):
        ann_file = str(tmp_path / f"coco/annotations/instances_{split}.json")
        with quiet():
            gt = COCO(ann_file)
        assert len(gt.getImgIds()) == 3 and len(gt.getAnnIds()) == 6
        for kind in ("segm", "bbox"):  # the export scored against itself: every object found exactly
            dets = [dict(a, score=1.0) for a in gt.loadAnns(gt.getAnnIds())]
            with quiet():
                ev = COCOeval(gt, gt.loadRes(dets), kind)
                ev.evaluate(), ev.accumulate(), ev.summarize()
            assert ev.stats[0] == pytest.approx(1.0)
        for img_id in gt.getImgIds():
            anns = gt.loadAnns(gt.getAnnIds(imgIds=img_id))
            got = [(gt.loadCats(a["category_id"])[0]["name"], gt.annToMask(a).astype(bool)) for a in anns]
            assert [c for c, _ in got] == [c for c, _ in want[img_id]]
            assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, want[img_id]))
            rec = gen_store.get(img_id)
            info = gt.loadImgs(img_id)[0]
            assert info["provenance"]["prompt"] == rec.prompt and info["provenance"]["seed"] == rec.seed
            assert info["provenance"]["refiner"] == "grabcut" and info["provenance"]["origin"] == "generated"
            assert [a["source"] for a in anns] == ["generated", "inserted"]
        assert gt.dataset["info"]["synthetic"] is True and gt.dataset["info"]["models"] == ["embedded"]

        import torchvision
        tv = torchvision.datasets.CocoDetection(str(tmp_path / f"coco/images/{split}"), ann_file)
        assert len(tv) == 3
        for k in range(3):
            img, target = tv[k]
            rid = tv.ids[k]
            assert np.array_equal(np.asarray(img), gen_store.image(gen_store.get(rid).image))
            assert [gt.loadCats(t["category_id"])[0]["name"] for t in target] == [c for c, _ in want[rid]]

        import supervision as sv
        ds = sv.DetectionDataset.from_coco(str(tmp_path / f"coco/images/{split}"), ann_file, force_masks=True)
        assert len(ds) == 3 and ds.classes == ["ball", "kite", "star"]
        for path, _, det in ds:
            rid = int(os.path.basename(path)[:8])
            assert [ds.classes[c] for c in det.class_id] == [c for c, _ in want[rid]]
            assert all(np.array_equal(m, w) for m, (_, w) in zip(det.mask, want[rid]))

    import datumaro as dm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = dm.Dataset.import_from(str(tmp_path / "coco"), "coco_instances")
    labels = [c.name for c in dds.categories()[dm.AnnotationType.label]]
    assert labels == ["ball", "kite", "star"] and len(dds) == 6 and set(dds.subsets()) == {"train", "val"}
    for item in dds:
        masks = [a for a in item.annotations if isinstance(a, dm.Mask)]
        rid = int(item.id)
        assert item.media.data.shape == (64, 80, 3)
        assert same_objects([(labels[a.label], a.image) for a in masks], want[rid])


def test_coco_split_is_seeded_and_manifest_lists_every_file(store, tmp_path):
    rep = export(store, "coco", tmp_path / "coco", val_fraction=0.5, seed=3)
    assert rep.splits == {"train": 2, "val": 2}
    man = json.loads((tmp_path / "coco" / "manifest.json").read_text())
    assert set(man["sha256"]) == {p.relative_to(tmp_path / "coco").as_posix()
                                  for p in (tmp_path / "coco").rglob("*") if p.is_file() and p.name != "manifest.json"}
    export(store, "coco", tmp_path / "coco2", val_fraction=0.5, seed=3)
    assert json.loads((tmp_path / "coco2/annotations/instances_val.json").read_text())["images"] == \
        json.loads((tmp_path / "coco/annotations/instances_val.json").read_text())["images"]


def test_user_threshold_override_reaches_the_export(store, tmp_path):
    from pycocotools.coco import COCO

    rec = store.query(status="accepted")[0]
    store.set_threshold(rec.id, 0.95)  # above the 0.9 heat: the mask becomes empty
    export(store, "coco", tmp_path / "c")
    with quiet():
        coco = COCO(str(tmp_path / "c/annotations/instances_train.json"))
    assert coco.getAnnIds(imgIds=[rec.id]) == [] and len(coco.getAnnIds()) == 3


@pytest.mark.slow
def test_coco_mini_round_trip_keeps_photo_provenance_and_crowd(tmp_path):
    from pycocotools.coco import COCO

    src = SHARED / "coco-mini"
    if not src.exists():
        pytest.skip("shared coco-mini not found")
    with quiet():
        orig = COCO(str(src / "instances.json"))
    crowd_imgs = sorted({a["image_id"] for a in orig.dataset["annotations"] if a["iscrowd"]})
    s = Store(tmp_path / "s")
    ids = import_coco(s, src / "instances.json", src / "images", limit=12)
    # plus two photos with crowd regions
    sub = dict(orig.dataset, images=[orig.imgs[i] for i in crowd_imgs[:2]],  # (an annotation of an image not
               annotations=[a for a in orig.dataset["annotations"] if a["image_id"] in crowd_imgs[:2]])  # listed: refused)
    (tmp_path / "crowd.json").write_text(json.dumps(sub))
    ids += import_coco(s, tmp_path / "crowd.json", src / "images")
    n_crowd = sum(i.iscrowd for r in s.query() for i in r.instances)
    assert n_crowd >= 2

    export(s, "coco", tmp_path / "out")
    with quiet():
        new = COCO(str(tmp_path / "out/annotations/instances_train.json"))
    assert sum(a["iscrowd"] for a in new.dataset["annotations"]) == n_crowd
    assert new.dataset["info"]["synthetic"] is False and new.dataset["info"]["n_photos"] == len(ids)
    lic_names = {lic["id"]: lic["name"] for lic in new.dataset["licenses"]}
    n = 0
    for rid in ids:
        rec = s.get(rid)
        oid = rec.meta["coco_image_id"]
        info = new.loadImgs(rid)[0]
        # the photo's own licence, id and file name, not "synthetic"
        orig_lic = {lic["id"]: lic["name"] for lic in orig.dataset["licenses"]}
        assert lic_names[info["license"]] == orig_lic[orig.imgs[oid]["license"]]
        assert info["provenance"]["source_id"] == oid and info["provenance"]["file_name"] == orig.imgs[oid]["file_name"]
        assert info["flickr_url"] == orig.imgs[oid]["flickr_url"]
        o_anns = sorted(orig.loadAnns(orig.getAnnIds(imgIds=oid)), key=lambda a: a["id"])
        n_anns = new.loadAnns(new.getAnnIds(imgIds=rid))
        assert len(o_anns) == len(n_anns)
        for a, b in zip(o_anns, n_anns):
            assert orig.loadCats(a["category_id"])[0]["name"] == new.loadCats(b["category_id"])[0]["name"]
            assert a["iscrowd"] == b["iscrowd"]
            assert np.array_equal(orig.annToMask(a), new.annToMask(b))
            n += 1
    assert n > 50
    # our importer reads our export back into identical records; so do the HF and YOLO round trips
    back = Store(tmp_path / "back")
    assert_same_records(s, back, import_coco(back, tmp_path / "out/annotations/instances_train.json"))
    export(s, "hf", tmp_path / "hf")
    back_hf = Store(tmp_path / "back_hf")
    assert_same_records(s, back_hf, import_hf(back_hf, tmp_path / "hf"))


@pytest.mark.slow
def test_coco_category_ids_and_supercategories_survive_a_round_trip(gen_store, tmp_path):
    """#27.3: a COCO photo's category ids and supercategories are kept (dog stays 18, animal);
    generated classes get ids after them; an import of the export keeps them again."""
    from pycocotools.coco import COCO

    src = SHARED / "coco-mini"
    if not src.exists():
        pytest.skip("shared coco-mini not found")
    orig = json.loads((src / "instances.json").read_text())
    cats = {c["id"]: c for c in orig["categories"]}
    dog_imgs = sorted({a["image_id"] for a in orig["annotations"] if a["category_id"] == 18})[:2]
    sub = dict(orig, images=[i for i in orig["images"] if i["id"] in dog_imgs],
               annotations=[a for a in orig["annotations"] if a["image_id"] in dog_imgs])
    (tmp_path / "dogs.json").write_text(json.dumps(sub))
    import_coco(gen_store, tmp_path / "dogs.json", src / "images")
    used = {a["category_id"] for a in sub["annotations"]}
    export(gen_store, "coco", tmp_path / "out")
    doc = json.loads((tmp_path / "out/annotations/instances_train.json").read_text())
    got = {c["name"]: (c["id"], c["supercategory"]) for c in doc["categories"]}
    for cid in used:
        assert got[cats[cid]["name"]] == (cid, cats[cid]["supercategory"])
    assert got["dog"] == (18, "animal")
    top = max(used)
    assert [got[c] for c in ("ball", "kite", "star")] == [(top + 1, "object"), (top + 2, "object"), (top + 3, "object")]
    with quiet():
        new = COCO(str(tmp_path / "out/annotations/instances_train.json"))
    for img_id in new.getImgIds():
        for a in new.loadAnns(new.getAnnIds(imgIds=img_id)):
            assert new.loadCats(a["category_id"])[0]["name"] in got
    # and again after our own import of the export
    back = Store(tmp_path / "back")
    import_coco(back, tmp_path / "out/annotations/instances_train.json")
    export(back, "coco", tmp_path / "again")
    again = json.loads((tmp_path / "again/annotations/instances_train.json").read_text())
    assert {c["name"]: (c["id"], c["supercategory"]) for c in again["categories"]} == got


def test_store_keeps_crowd_flags(tmp_path):
    s = Store(tmp_path / "s")
    m = np.zeros((8, 8), bool)
    m[2:5, 2:5] = True
    rid = s.add(NewSample(np.zeros((8, 8, 3), np.uint8), ["person"], instances=[("person", m), ("person", ~m)],
                          instance_sources=["imported"] * 2, instance_crowd=[False, True]))
    assert [i.iscrowd for i in s.get(rid).instances] == [False, True]
    r = s.update(rid, instances=[("person", m, "user"), ("person", ~m, "imported", True)])
    assert [(i.source, i.iscrowd) for i in r.instances] == [("user", False), ("imported", True)]
    with pytest.raises(StoreError, match="crowd flags"):
        s.add(NewSample(np.zeros((8, 8, 3), np.uint8), ["person"], instances=[("person", m)], instance_crowd=[True, False]))


@pytest.mark.slow
def test_a_composite_keeps_its_background_photos_licence_in_every_format(tmp_path):
    """#24: a composite made on a shipped CC BY 2.0 photo carries that photo's licence and
    attribution, and each pasted object's origin and licence beside it, in COCO, VOC, YOLO
    and HF (it said "Synthetic data", n_photos 0, origin "generated")."""
    import datasets
    import yaml  # noqa: F401  (the YOLO provenance is JSON; yaml only to be sure data.yaml parses)
    from pipeline.bank import ObjectBank, import_examples
    from pipeline.export.common import SYNTHETIC_LICENSE, source_provenance
    from pipeline.session import InsertSession

    s = Store(tmp_path / "s")
    photo_id = import_examples(s)[0]
    photo = s.get(photo_id)
    want = photo.meta["photo"]
    assert want["license"]["url"] == "http://creativecommons.org/licenses/by/2.0/"
    bank = ObjectBank(s)
    cls = sorted(bank.classes())[0]
    obj = bank.pick(cls, seed=0)
    fg, fg_mask = bank.cut_out(obj)
    gen_fg = np.zeros((32, 32, 3), np.uint8) + 200
    gen_mask = np.zeros((32, 32), bool)
    gen_mask[4:28, 6:26] = True
    made = {}
    for kind, args in (("bank", (fg, fg_mask, cls, f"bank: sample #{obj.sample_id}",
                                 source_provenance(s.get(obj.sample_id)))),
                       ("generated", (gen_fg, gen_mask, "star", "generated ('a star', seed 3)",
                                      {"origin": "generated", "prompt": "a star", "seed": 3, "model": "embedded",
                                       "license": SYNTHETIC_LICENSE}))):
        ses = InsertSession.from_record(s, photo)
        ses.set_object(*args[:4], provenance=args[4])
        ses.scale, ses.centre = 0.2, (100, 100)
        ses.compose()
        made[kind] = ses.to_store(s, status="accepted", uid=f"comp-{kind}")
    s.set_status([photo_id], "rejected")  # export the composites only
    s.set_status([r.id for r in s.query() if r.id not in made.values()], "rejected")

    def check(prov, rid):
        assert prov["origin"] == "composite" and prov["license"] == want["license"]
        assert prov["source_id"] == want["source_id"] and prov["file_name"] == want["file_name"]
        assert prov["flickr_url"] == want["flickr_url"]
        assert prov["background"]["origin"] == "photo" and prov["background"]["uid"] == photo.uid
        (o,) = prov["inserted"]
        if rid == made["bank"]:
            assert o["origin"] == "photo" and o["license"]["url"].startswith("http://creativecommons.org/")
            assert o["uid"] == s.get(obj.sample_id).uid and o["class"] == cls
        else:
            assert o["origin"] == "generated" and o["license"] == SYNTHETIC_LICENSE and o["prompt"] == "a star"

    export(s, "coco", tmp_path / "coco")
    doc = json.loads((tmp_path / "coco/annotations/instances_train.json").read_text())
    lic = {x["id"]: x for x in doc["licenses"]}
    assert len(doc["images"]) == 2 and doc["info"]["synthetic"] is False
    assert doc["info"]["n_composites_on_photos"] == 2
    for im in doc["images"]:
        assert lic[im["license"]]["name"] == "Attribution License" and im["flickr_url"] == want["flickr_url"]
        check(im["provenance"], im["id"])
    export(s, "voc", tmp_path / "voc")
    for name, prov in json.loads((tmp_path / "voc" / VOC / "provenance.json").read_text()).items():
        check(prov, int(name))
    export(s, "yolo", tmp_path / "yolo")
    for name, prov in json.loads((tmp_path / "yolo/provenance.json").read_text()).items():
        check(prov, int(name.split("/")[1]))
    export(s, "hf", tmp_path / "hf")
    ds = datasets.load_dataset(str(tmp_path / "hf"), cache_dir=str(tmp_path / "cache"))["train"]
    for row in ds:
        assert json.loads(row["license"]) == want["license"] and row["origin"] == "composite"
        check(json.loads(row["provenance"]), row["sample_id"])
    # and back: the import restores the composite's record, provenance included
    back = Store(tmp_path / "back")
    ids = import_coco(back, tmp_path / "coco/annotations/instances_train.json")
    assert {back.get(i).meta["background_provenance"]["uid"] for i in ids} == {photo.uid}


@pytest.mark.slow
def test_provenance_threshold_follows_a_curate_change(gen_store, tmp_path):
    """#24: a per-sample threshold set in Curate (Store.set_threshold) is the one every
    export's provenance names (it said the old 0.40)."""
    from pipeline.curation import Curation

    from pipeline.session import InspectSession

    rng = np.random.default_rng(1)
    heat = rng.random((64, 80)).astype(np.float32)
    ses = InspectSession(np.zeros((64, 80, 3), np.uint8), "ball", heat, prompt="a ball", seed=1, model="embedded")
    ses.set_threshold(0.4)
    rid = ses.to_store(gen_store, "accepted")  # as Accept saves it: its note says "threshold 0.40"
    assert gen_store.get(rid).meta["mask"] == "attention heat map at threshold 0.40"
    Curation(gen_store.root).save_details(rid, "", 0.3)
    assert gen_store.get(rid).effective_threshold == pytest.approx(0.3)
    for fmt in FORMATS:
        export(gen_store, fmt, tmp_path / fmt)
    coco = json.loads((tmp_path / "coco/annotations/instances_train.json").read_text())
    (im,) = [i for i in coco["images"] if i["id"] == rid]
    assert im["provenance"]["threshold"] == pytest.approx(0.3)
    assert im["provenance"]["meta"]["mask"] == "attention heat map at threshold 0.30"
    assert json.loads((tmp_path / "voc" / VOC / "provenance.json").read_text())[f"{rid:08d}"]["threshold"] == \
        pytest.approx(0.3)
    assert json.loads((tmp_path / "yolo/provenance.json").read_text())[f"train/{rid:08d}"]["threshold"] == \
        pytest.approx(0.3)
    import pyarrow.parquet as pq
    t = pq.read_table(next((tmp_path / "hf/data").glob("train-*.parquet")), columns=["sample_id", "threshold"])
    row = t.to_pylist()[[r["sample_id"] for r in t.to_pylist()].index(rid)]
    assert row["threshold"] == pytest.approx(0.3)
    rec = gen_store.get(rid)
    assert np.array_equal(gen_store.masks(rec)[0][1], gen_store.heat(rec) >= 0.3)  # the masks followed too


# -- VOC ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_voc_torchvision_supervision_datumaro(gen_store, tmp_path):
    import torchvision
    from scipy.ndimage import binary_fill_holes

    rep = export(gen_store, "voc", tmp_path / "voc", val_fraction=0.5, seed=1)
    assert rep.lost == {} and rep.n_instances == 12
    root = tmp_path / "voc" / VOC
    labels = ["background", "ball", "kite", "star"]
    assert (root / "labelmap.txt").read_text().splitlines()[1:] == \
        [f"{c}:{','.join(map(str, voc_palette()[i]))}::" for i, c in enumerate(labels)] + ["ignored:224,224,192::"]
    want = accepted_masks(gen_store)
    for split in ("train", "val"):
        tv = torchvision.datasets.VOCSegmentation(str(tmp_path / "voc"), year="2012", image_set=split)
        assert len(tv) == 3
        for k in range(3):
            img, target = tv[k]
            rid = int(os.path.basename(tv.images[k])[:8])
            expect = np.zeros((64, 80), np.uint8)
            for c, m in want[rid]:
                expect[m] = labels.index(c)
            assert np.array_equal(np.asarray(target), expect) and img.size == (80, 64)

    import supervision as sv
    ds = sv.DetectionDataset.from_pascal_voc(str(root / "JPEGImages"), str(root / "Annotations"), force_masks=True)
    assert len(ds) == 6 and ds.classes == ["ball", "kite", "star"]
    for path, _, det in ds:
        rid = int(os.path.basename(path)[:8])
        assert [ds.classes[c] for c in det.class_id] == [c for c, _ in want[rid]]
        for m, (_, w) in zip(det.mask, want[rid]):  # one outline per part, holes bridged in: exact
            assert np.array_equal(m, w)
        assert not np.array_equal(want[rid][0][1], binary_fill_holes(want[rid][0][1]))  # the ring has its hole
        boxes = [[*np.argwhere(w.any(0))[[0, -1], 0], *np.argwhere(w.any(1))[[0, -1], 0]] for _, w in want[rid]]
        assert np.array_equal(det.xyxy, [[b[0], b[2], b[1] + 1, b[3] + 1] for b in boxes])

    import datumaro as dm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = dm.Dataset.import_from(str(root), "voc")
    dlabels = [c.name for c in dds.categories()[dm.AnnotationType.label]]
    assert dlabels == labels + ["ignored"] and len(dds) == 6 and set(dds.subsets()) == {"train", "val"}
    for item in dds:
        rid = int(item.id)
        masks = [a for a in item.annotations if isinstance(a, dm.Mask)]
        assert same_objects([(dlabels[a.label], a.image) for a in masks], want[rid])
        assert len([a for a in item.annotations if isinstance(a, dm.Bbox)]) == 2


def test_voc_round_trip_reads_our_class_names_and_provenance(gen_store, tmp_path):
    export(gen_store, "voc", tmp_path / "voc")
    back = Store(tmp_path / "back")
    # the classes are not PASCAL's: they must come from the export's labelmap, not VOC's 20 names
    assert_same_records(gen_store, back, import_voc(back, tmp_path / "voc"), exact_image=False)


@pytest.mark.slow
def test_voc_more_than_20_classes_and_voc_class_ids(tmp_path):
    s = Store(tmp_path / "s")
    rng = np.random.default_rng(0)
    names = [f"thing{k:02d}" for k in range(25)]
    for k, c in enumerate(names):
        m = np.zeros((24, 24), bool)
        m[4:4 + k % 10 + 3, 5:15] = True
        s.add(NewSample((rng.random((24, 24, 3)) * 255).astype(np.uint8), [c], instances=[(c, m)], status="accepted"))
    export(s, "voc", tmp_path / "voc")
    back = Store(tmp_path / "back")
    ids = import_voc(back, tmp_path / "voc")
    assert sorted(back.get(i).classes[0] for i in ids) == names
    # VOC classes keep PASCAL's indices
    s2 = Store(tmp_path / "s2")
    m = np.zeros((24, 24), bool)
    m[3:9, 3:9] = True
    s2.add(NewSample(np.zeros((24, 24, 3), np.uint8), ["dog"], instances=[("dog", m)], status="accepted"))
    export(s2, "voc", tmp_path / "voc2", void_border=1)
    cls = np.asarray(Image.open(next((tmp_path / "voc2" / VOC / "SegmentationClass").glob("*.png"))))
    assert set(np.unique(cls)) == {0, VOC_CLASSES.index("dog"), 255}
    assert (tmp_path / "voc2" / VOC / "labelmap.txt").read_text().splitlines()[13].startswith("dog:")


@pytest.mark.slow
def test_voc_reports_objects_its_object_map_cannot_hold(tmp_path):
    s = Store(tmp_path / "s")
    big = np.zeros((32, 32), bool)
    big[4:28, 4:28] = True
    small = np.zeros((32, 32), bool)
    small[10:14, 10:14] = True
    half = np.zeros((32, 32), bool)
    half[0:10, 0:10] = True
    # small first, then big on top: small fully hidden; half partly hidden by big
    s.add(NewSample(np.zeros((32, 32, 3), np.uint8), ["cat"], instances=[("cat", small), ("dog", half), ("cat", big)],
                    status="accepted"))
    rep = export(s, "voc", tmp_path / "voc")
    assert rep.lost == {"objects fully hidden in SegmentationObject": 1,
                        "objects partly hidden in SegmentationObject": 1}
    assert json.loads((tmp_path / "voc/manifest.json").read_text())["lost"] == rep.lost
    r = subprocess.run([sys.executable, "-m", "pipeline", "export", "--store", str(tmp_path / "s"), "--format", "voc",
                        "--out", str(tmp_path / "voc"), "--force"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "1 objects fully hidden" in r.stdout


@pytest.mark.slow
def test_voc_coco_mini_round_trip_keeps_what_voc_can_hold(tmp_path):
    """Real photos with overlapping objects: VOC's object map keeps each object's visible part;
    the export counts the objects it hid, and the import gives back exactly the rest."""
    src = SHARED / "coco-mini"
    if not src.exists():
        pytest.skip("shared coco-mini not found")
    s = Store(tmp_path / "s")
    import_coco(s, src / "instances.json", src / "images", limit=12)
    rep = export(s, "voc", tmp_path / "voc")
    back = Store(tmp_path / "b")
    ids = import_voc(back, tmp_path / "voc")
    n_hidden = n_partly = 0
    for rid in ids:
        r = back.get(rid)
        o = s.get_by_uid(r.uid)
        assert (r.classes, r.meta) == (o.classes, o.meta) and r.meta["photo"]["license"]["name"]
        objs = [(i.class_name, s.mask(i.mask)) for i in o.instances if not i.iscrowd]
        crowd = np.zeros((o.height, o.width), bool)
        for i in o.instances:
            crowd |= s.mask(i.mask) if i.iscrowd else False
        visible = []
        for k, (c, m) in enumerate(objs):
            v = m & ~crowd
            for _, later in objs[k + 1:]:
                v &= ~later
            n_hidden += not v.any()
            n_partly += v.any() and v.sum() < m.sum()
            if v.any():
                visible.append((c, v))
        got = [(i.class_name, back.mask(i.mask)) for i in r.instances]
        assert [c for c, _ in got] == [c for c, _ in visible]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, visible))
    assert n_partly > 0
    assert rep.lost.get("objects fully hidden in SegmentationObject", 0) == n_hidden
    assert rep.lost.get("objects partly hidden in SegmentationObject", 0) == n_partly


# -- YOLO --------------------------------------------------------------------------------------------
def test_polygons_fill_back_to_masks_with_holes_and_parts():
    rng = np.random.default_rng(0)
    for _ in range(5):
        ring, two = shapes(rng)
        for m in (ring, two, ring | two):
            poly, fill_iou = mask_to_polygon(m)
            assert iou(polygon_to_mask(poly, *m.shape), m) == pytest.approx(fill_iou) and fill_iou >= 0.95
        back = polygon_to_mask(mask_to_polygon(ring)[0], *ring.shape)
        assert np.array_equal(back, ring)  # the hole stays a hole


@pytest.mark.slow
def test_yolo_supervision_datumaro_and_round_trip(gen_store, tmp_path):
    import yaml

    rep = export(gen_store, "yolo", tmp_path / "yolo", val_fraction=0.5)
    assert rep.n_instances == 12
    data = yaml.safe_load((tmp_path / "yolo/data.yaml").read_text())
    assert data["names"] == {0: "ball", 1: "kite", 2: "star"} and data["val"] == "images/val"
    want = accepted_masks(gen_store)
    import supervision as sv
    for split in ("train", "val"):
        ds = sv.DetectionDataset.from_yolo(str(tmp_path / f"yolo/images/{split}"),
                                           str(tmp_path / f"yolo/labels/{split}"), str(tmp_path / "yolo/data.yaml"),
                                           force_masks=True)
        assert len(ds) == 3 and ds.classes == ["ball", "kite", "star"]
        for path, _, det in ds:
            rid = int(os.path.basename(path)[:8])
            assert [ds.classes[c] for c in det.class_id] == [c for c, _ in want[rid]]
            for m, (_, w) in zip(det.mask, want[rid]):
                assert iou(m, w) >= 0.95
            ring = want[rid][0][1]
            assert np.array_equal(det.mask[0], ring)  # holes survive supervision's fill too
    back = Store(tmp_path / "back")
    assert_same_records(gen_store, back, import_yolo(back, tmp_path / "yolo"), exact_masks=False)

    # Datumaro's YOLO reader takes boxes only (5 fields a line): the detect variant
    import datumaro as dm
    export(gen_store, "yolo", tmp_path / "yolo_det", yolo_task="detect", val_fraction=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = dm.Dataset.import_from(str(tmp_path / "yolo_det"), "yolo")
    assert [c.name for c in dds.categories()[dm.AnnotationType.label]] == ["ball", "kite", "star"]
    assert len(dds) == 6 and set(dds.subsets()) == {"train", "val"}
    for item in dds:
        rid = int(item.id)
        boxes = [a for a in item.annotations if isinstance(a, dm.Bbox)]
        assert [["ball", "kite", "star"][a.label] for a in boxes] == [c for c, _ in want[rid]]
        for a, (_, w) in zip(boxes, want[rid]):
            ys, xs = np.nonzero(w)
            assert np.allclose(a.points, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1e-3)


def test_yolo_val_names_a_validation_split_or_is_absent(store, tmp_path):
    """#24: data.yaml's `val:` is the exported validation split; without --val there is none, and
    `val:` is left out with a comment saying why (it used to name the training images)."""
    import yaml

    export(store, "yolo", tmp_path / "a", val_fraction=0.25)
    assert yaml.safe_load((tmp_path / "a/data.yaml").read_text())["val"] == "images/val"
    assert len(list((tmp_path / "a/images/val").iterdir())) == 1
    export(store, "yolo", tmp_path / "b")
    text = (tmp_path / "b/data.yaml").read_text()
    data = yaml.safe_load(text)
    assert "val" not in data and data["train"] == "images/train" and "--val" in text


@pytest.mark.slow
def test_every_export_variant_imports_or_says_what_it_cannot_hold(gen_store, tmp_path):
    """#27.4: import reads every variant the export writes (each format with and without a
    validation split, VOC with a void border); YOLO detect is refused whole, saying why."""
    variants = [(fmt, val, {}) for fmt in FORMATS for val in (0.0, 0.5)] + [("voc", 0.0, {"void_border": 2}),
                                                                             ("yolo", 0.5, {"yolo_task": "detect"})]
    want = sorted(r.uid for r in gen_store.query(status="accepted"))
    for k, (fmt, val, opts) in enumerate(variants):
        out = tmp_path / f"{fmt}-{k}"
        rep = export(gen_store, fmt, out, val_fraction=val, **opts)
        back = Store(tmp_path / f"back-{k}")
        if opts.get("yolo_task") == "detect":
            with pytest.raises(StoreError, match="detection box.*cannot be imported.*segment"):
                import_yolo(back, out)
            assert back.count() == 0
            continue
        if fmt == "coco":
            ids = [i for split in rep.splits for i in import_coco(back, out / f"annotations/instances_{split}.json")]
        else:
            ids = {"voc": import_voc, "yolo": import_yolo, "hf": import_hf}[fmt](back, out)
        assert sorted(back.get(i).uid for i in ids) == want, (fmt, val, opts)
        if opts.get("void_border"):  # the border is void in the class map, not part of any object
            assert all(back.mask(i.mask).sum() < gen_store.mask(gen_store.get_by_uid(back.get(rid).uid).instances[j].mask).sum()
                       for rid in ids for j, i in enumerate(back.get(rid).instances))


@pytest.mark.slow
def test_yolo_coco_mini_instances_fill_back(tmp_path):
    src = SHARED / "coco-mini"
    if not src.exists():
        pytest.skip("shared coco-mini not found")
    s = Store(tmp_path / "s")
    import_coco(s, src / "instances.json", src / "images")
    rep = export(s, "yolo", tmp_path / "y")
    back = Store(tmp_path / "b")
    ids = import_yolo(back, tmp_path / "y")
    ious = []
    for rid in ids:
        r = back.get(rid)
        o = s.get_by_uid(r.uid)
        kept = [i for i in o.instances if not i.iscrowd]
        assert [i.class_name for i in r.instances] == [i.class_name for i in kept]
        assert r.meta["photo"] == o.meta["photo"]
        ious += [iou(back.mask(a.mask), s.mask(b.mask)) for a, b in zip(r.instances, kept)]
    assert len(ious) == rep.n_instances == 731
    low = [x for x in ious if x < 0.95]
    # one polygon per object cannot hold far-apart parts of a small object without bridges: the
    # export says how many (and no more) fell short
    assert len(low) == rep.lost.get(LOW_IOU, 0) <= 0.01 * len(ious)
    assert rep.lost["crowd regions (no YOLO equivalent)"] == 8
    assert np.median(ious) == 1.0


# -- HF ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_hf_export_loads_with_datasets(store, tmp_path):
    import datasets

    rep = export(store, "hf", tmp_path / "hf", val_fraction=0.25)
    # a cache of its own: the test must not depend on what the user's HF cache holds
    ds = datasets.load_dataset(str(tmp_path / "hf"), cache_dir=str(tmp_path / "cache"))
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 3, "validation": 1} == \
        {"train": rep.splits["train"], "validation": rep.splits["val"]}
    names = ds["train"].features["label"].names
    assert names == ["cat", "dog"]
    seen = []
    for split in ds:
        for row in ds[split]:
            rec = store.get(row["sample_id"])
            seen.append(rec.id)
            assert names[row["label"]] == rec.classes[0]
            m = store.mask(rec.instances[0].mask)
            sem = np.asarray(row["mask"])
            assert np.array_equal(sem > 0, m) and set(np.unique(sem)) <= {0, row["label"] + 1}
            assert len(row["objects"]["mask"]) == 1 and np.array_equal(np.asarray(row["objects"]["mask"][0]) > 127, m)
            assert row["objects"]["source"] == ["generated"] and row["origin"] == "generated"
            assert np.array_equal(np.asarray(row["image"]), store.image(rec.image))
    assert sorted(seen) == [r.id for r in store.query(status="accepted")]
    card = (tmp_path / "hf/README.md").read_text()
    assert "load_dataset(" in card and "load_from_disk" in card and "names[k-1]" not in card


@pytest.mark.slow
def test_hf_rows_load_with_numpy_and_torch_formats(gen_store, tmp_path):
    """#27.6: the formats training code uses; with_format("numpy")[0] raised ValueError in
    datasets 5.2 (a list of fixed-length bbox lists). Rows with 2 objects and with none."""
    import datasets
    import torch

    rng = np.random.default_rng(0)
    empty = gen_store.add(NewSample((rng.random((64, 80, 3)) * 255).astype(np.uint8), ["ball"], status="accepted"))
    export(gen_store, "hf", tmp_path / "hf")
    ds = datasets.load_dataset(str(tmp_path / "hf"), cache_dir=str(tmp_path / "cache"))["train"]
    want = accepted_masks(gen_store)
    for k in range(len(ds)):
        rid = ds[k]["sample_id"]
        n = len(want[rid])
        row = ds.with_format("numpy")[k]
        assert row["image"].shape == (64, 80, 3) and row["mask"].shape == (64, 80)
        assert row["objects"]["bbox"].shape == ((n, 4) if n else (0,))
        if n:
            assert row["objects"]["mask"].shape == (n, 64, 80)
            assert all(np.array_equal(m > 127, w) for m, (_, w) in zip(row["objects"]["mask"], want[rid]))
        t = ds.with_format("torch")[k]
        assert isinstance(t["image"], torch.Tensor) and tuple(t["image"].shape) == (3, 64, 80)
        if n:
            assert tuple(t["objects"]["mask"].shape) == (n, 1, 64, 80) and tuple(t["objects"]["bbox"].shape) == (n, 4)
            ys, xs = np.nonzero(want[rid][0][1])
            assert t["objects"]["bbox"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    assert empty in ds["sample_id"]


@pytest.mark.slow
def test_hf_exports_are_not_read_from_a_stale_cache(store, tmp_path):
    """datasets caches a local folder under a key made of its name and card, not of its files:
    with fixed parquet names, loading any later export in a folder of the same name (another
    path, or the same one after --force) returned the first one's rows (train 3 + validation 2
    where 4 samples were exported)."""
    import datasets

    cache = str(tmp_path / "cache")
    store.set_status([r.id for r in store.query()], "accepted")
    export(store, "hf", tmp_path / "a/hf", val_fraction=0.4)
    first = datasets.load_dataset(str(tmp_path / "a/hf"), cache_dir=cache)
    assert {k: v.num_rows for k, v in first.items()} == {"train": 4, "validation": 2}
    export(store, "hf", tmp_path / "b/hf", val_fraction=0.25, classes=["dog"])
    other = datasets.load_dataset(str(tmp_path / "b/hf"), cache_dir=cache)
    assert {k: v.num_rows for k, v in other.items()} == {"train": 2, "validation": 1}
    assert {store.get(i).classes[0] for d in other.values() for i in d["sample_id"]} == {"dog"}
    export(store, "hf", tmp_path / "a/hf", val_fraction=0.25, classes=["cat"], force=True)
    again = datasets.load_dataset(str(tmp_path / "a/hf"), cache_dir=cache)
    assert {store.get(i).classes[0] for d in again.values() for i in d["sample_id"]} == {"cat"}


@pytest.mark.slow
def test_hf_round_trip_generated_samples(gen_store, tmp_path):
    export(gen_store, "hf", tmp_path / "hf", val_fraction=0.5)
    back = Store(tmp_path / "back")
    assert_same_records(gen_store, back, import_hf(back, tmp_path / "hf"))


def test_coco_round_trip_generated_samples(gen_store, tmp_path):
    export(gen_store, "coco", tmp_path / "coco", val_fraction=0.5)
    back = Store(tmp_path / "back")
    ids = import_coco(back, tmp_path / "coco/annotations/instances_train.json")
    ids += import_coco(back, tmp_path / "coco/annotations/instances_val.json")
    assert_same_records(gen_store, back, ids)


@pytest.mark.slow
def test_round_trip_of_embedded_model_samples(tmp_path):
    """Samples as the batch generator stores them (embedded model, few steps) survive every format."""
    from pipeline.batch import BatchSpec, run_batch

    s = Store(tmp_path / "s")
    spec = BatchSpec.of(("ball", "star"), 1, steps=4, warmup=0, max_candidates=2, refiner="otsu",
                        min_agreement=0.0, relative_agreement=0.0, min_area=0.0, max_area=1.0, min_contrast=0.0,
                        max_border=1.0)
    run_batch(spec, s)
    assert s.count(status="accepted") >= 2
    for fmt in FORMATS:
        export(s, fmt, tmp_path / fmt)
    images = json.loads((tmp_path / "coco/annotations/instances_train.json").read_text())["images"]
    assert {im["provenance"]["refiner"] for im in images} == {"otsu"}  # from the run's batch-<run>.json
    assert all(im["provenance"]["prompt"].startswith("a photograph of") for im in images)
    coco_json = tmp_path / "coco/annotations/instances_train.json"
    for fmt, imp, exact in (("coco", lambda b: import_coco(b, coco_json), True),
                            ("voc", lambda b: import_voc(b, tmp_path / "voc"), True),
                            ("yolo", lambda b: import_yolo(b, tmp_path / "yolo"), False),
                            ("hf", lambda b: import_hf(b, tmp_path / "hf"), True)):
        b = Store(tmp_path / f"back-{fmt}")
        assert_same_records(s, b, imp(b), exact_masks=exact, exact_image=fmt != "voc")


# -- safety ------------------------------------------------------------------------------------------
def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _tree(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("where", ["store", "inside", "parent"])
def test_export_never_writes_over_or_around_the_store(store, tmp_path, where):
    (tmp_path / "sibling").mkdir()
    (tmp_path / "sibling/notes.txt").write_text("mine")
    out = {"store": store.root, "inside": store.root / "blobs", "parent": tmp_path}[where]
    store.close()
    before = _tree(tmp_path)
    r = _cli("export", "--store", tmp_path / "store", "--format", "coco", "--out", out, "--force")
    assert r.returncode == 2 and "refusing" in r.stderr, r.stderr
    assert _tree(tmp_path) == before
    assert Store(tmp_path / "store").count() == 6


def test_export_refuses_root_home_and_cwd(store, tmp_path, monkeypatch):
    for out in ("/", os.path.expanduser("~"), os.getcwd()):
        with pytest.raises(ExportError, match="refusing"):
            export(store, "coco", out, force=True)
    monkeypatch.chdir(tmp_path / "store")
    with pytest.raises(ExportError, match="refusing"):
        export(store, "coco", ".", force=True)


def test_force_replaces_only_a_previous_export(store, tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    with pytest.raises(ExportError, match="no readable export manifest"):
        export(store, "coco", other, force=True)
    assert (other / "a.jpg").read_bytes() == b"x"
    export(store, "coco", tmp_path / "e")
    (tmp_path / "e/model.pt").write_bytes(b"weights")  # something the user put into an export
    with pytest.raises(ExportError, match="model.pt"):
        export(store, "voc", tmp_path / "e", force=True)
    (tmp_path / "e/model.pt").unlink()
    rep = export(store, "voc", tmp_path / "e", force=True)
    assert rep.format == "voc" and not (tmp_path / "e/annotations").exists()
    (tmp_path / "empty").mkdir()
    export(store, "coco", tmp_path / "empty", force=True)  # an empty folder holds nothing to lose
    assert (tmp_path / "empty/manifest.json").exists()


def test_force_refuses_edited_added_and_hand_made_and_lists_the_differences(store, tmp_path):
    """#23.8 / #27.7: --force replaces only its own unchanged work; the message lists every
    difference and the way forward, and the folder is left exactly as it was."""
    out = tmp_path / "e"
    export(store, "yolo", out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # a reader's cache (what Ultralytics writes beside labels/<split>/) and a hand-edited label
    (out / "labels/train.cache").write_bytes(b"ultralytics cache")
    label = sorted((out / "labels/train").glob("*.txt"))[0]
    label.write_text(label.read_text() + "0 0.1 0.1 0.2 0.1 0.2 0.2\n")
    with pytest.raises(ExportError) as e:
        export(store, "yolo", out, force=True)
    msg = str(e.value)
    assert "added: labels/train.cache (an Ultralytics label cache)" in msg
    assert f"edited: labels/train/{label.name}" in msg and "delete them" in msg and "--out" in msg
    assert (out / "labels/train.cache").read_bytes() == b"ultralytics cache" and "0 0.1 0.1" in label.read_text()
    # the way forward works: delete the cache, restore the label
    (out / "labels/train.cache").unlink()
    label.write_bytes(before[label])
    export(store, "yolo", out, force=True, classes=["dog"])
    assert json.loads((out / "manifest.json").read_text())["n_images"] == 2

    # a hand-made manifest that lists the user's files (with made-up hashes) is not an export
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"my photo")
    (mine / "manifest.json").write_text(json.dumps({"format": "coco", "sha256": {"photo.jpg": "0" * 64}}))
    with pytest.raises(ExportError, match="edited: photo.jpg"):
        export(store, "coco", mine, force=True)
    assert (mine / "photo.jpg").read_bytes() == b"my photo"
    (mine / "manifest.json").write_text(json.dumps({"format": "coco", "sha256": []}))
    with pytest.raises(ExportError, match="not an export manifest"):
        export(store, "coco", mine, force=True)
    assert sorted(p.name for p in mine.iterdir()) == ["manifest.json", "photo.jpg"]
    # a link to a previous export is not replaced (the export it points at stays)
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(ExportError, match="is a link"):
        export(store, "coco", tmp_path / "link", force=True)
    assert (out / "data.yaml").exists()


def test_force_keeps_a_file_written_into_out_while_the_export_ran(store, tmp_path, monkeypatch):
    """A file put into ``out`` after the first check is found by the second one, made on the
    old folder moved aside once the new export is complete: it goes back in place whole."""
    import pipeline.export as ex

    out = tmp_path / "e"
    export(store, "coco", out)
    stamp = (out / "manifest.json").read_bytes()
    real = ex._WRITERS["coco"]

    def writer_and_user(ctx):
        n = real(ctx)
        (out / "notes.txt").write_text("written while the export ran")
        return n

    monkeypatch.setitem(ex._WRITERS, "coco", writer_and_user)
    with pytest.raises(ExportError, match="added: notes.txt"):
        export(store, "coco", out, force=True)
    assert (out / "notes.txt").read_text() == "written while the export ran"
    assert (out / "manifest.json").read_bytes() == stamp
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial, no old copy left


def test_a_killed_force_leaves_a_changed_old_export_in_place(store, tmp_path):
    """Killed after moving the old export aside and before checking it: the next run puts a
    changed one back (an unchanged one is deleted, see the test below) and refuses to replace it."""
    export(store, "coco", tmp_path / "exp")
    (tmp_path / "exp/edited.txt").write_text("mine")
    (tmp_path / "exp").rename(tmp_path / ".exp.old-1-0badf00d")
    with pytest.raises(ExportError, match="added: edited.txt"):
        export(store, "coco", tmp_path / "exp", force=True)
    assert (tmp_path / "exp/edited.txt").read_text() == "mine" and not list(tmp_path.glob(".exp.*"))


def test_export_refuses_overwrite_bad_format_and_empty_selection(store, tmp_path):
    export(store, "coco", tmp_path / "e")
    stamp = (tmp_path / "e/manifest.json").read_text()
    with pytest.raises(ExportError, match="already exists"):
        export(store, "coco", tmp_path / "e")
    assert (tmp_path / "e/manifest.json").read_text() == stamp
    export(store, "coco", tmp_path / "e", force=True, classes=["dog"])
    assert json.loads((tmp_path / "e/manifest.json").read_text())["n_images"] == 2
    with pytest.raises(ExportError, match="format"):
        export(store, "pdf", tmp_path / "y")
    with pytest.raises(ExportError, match="no samples"):
        export(store, "coco", tmp_path / "z", classes=["zebra"])
    with pytest.raises(StoreError, match="bad tag"):
        export(store, "coco", tmp_path / "z", tags=["../../x"])
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.slow
def test_damaged_samples_are_skipped_listed_and_fail_the_cli(store, tmp_path):
    recs = store.query(status="accepted")
    store.blob_path(recs[0].image).unlink()  # a deleted image
    store.blob_path(recs[1].instances[0].mask).write_bytes(b"not a png")  # a corrupt mask
    for fmt in FORMATS:
        rep = export(store, fmt, tmp_path / fmt)
        assert rep.n_images == 2 and sum(rep.splits.values()) == 2
        assert [d["sample_id"] for d in rep.damaged] == [recs[0].id, recs[1].id]
        assert "image" in rep.damaged[0]["reason"] and "mask" in rep.damaged[1]["reason"]
        assert json.loads((tmp_path / fmt / "manifest.json").read_text())["damaged"] == rep.damaged
    store.close()
    r = _cli("export", "--store", tmp_path / "store", "--format", "coco", "--out", tmp_path / "c")
    assert r.returncode == 3 and f"sample {recs[0].id}:" in r.stderr and "--skip-damaged" in r.stderr
    r = _cli("export", "--store", tmp_path / "store", "--format", "coco", "--out", tmp_path / "c", "--force",
             "--skip-damaged")
    assert r.returncode == 0 and f"sample {recs[1].id}:" in r.stderr
    with quiet():
        from pycocotools.coco import COCO
        kept = COCO(str(tmp_path / "c/annotations/instances_train.json")).getImgIds()
    assert sorted(kept) == [recs[2].id, recs[3].id]


@pytest.mark.slow
def test_kill_9_during_export_leaves_no_partial_folder(tmp_path):
    d = tmp_path / "big"
    s = Store(d)
    rng = np.random.default_rng(0)
    for k in range(300):
        img = (rng.random((96, 96, 3)) * 255).astype(np.uint8)
        m = np.zeros((96, 96), bool)
        m[10:40 + k % 40, 20:60] = True
        s.add(NewSample(img, ["dog"], instances=[("dog", m)], status="accepted"))
    out = tmp_path / "exp"
    p = subprocess.Popen([sys.executable, "-m", "pipeline", "export", "--store", str(d), "--format", "voc",
                          "--out", str(out)], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(f".exp.partial-*/{VOC}/JPEGImages/*.jpg")):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not out.exists()
    # the next export cleans the dead one's temporary folder and completes
    r = _cli("export", "--store", d, "--format", "voc", "--out", out)
    assert r.returncode == 0, r.stderr
    assert len(list((out / VOC / "JPEGImages").glob("*.jpg"))) == 300
    assert not list(tmp_path.glob(".exp.partial-*"))


@pytest.mark.slow
def test_killed_force_export_leftovers_are_cleaned_by_the_next_run(store, tmp_path):
    export(store, "coco", tmp_path / "exp")
    # what `export --force` leaves when killed between renaming the old export away and deleting it
    # (this version's names carry the pid; earlier versions' did not)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    shutil.copytree(tmp_path / "exp", tmp_path / f".exp.old-{dead.pid}-0badf00d")
    shutil.copytree(tmp_path / "exp", tmp_path / ".exp.old-1a2b3c4d")
    store.close()
    r = _cli("export", "--store", tmp_path / "store", "--format", "coco", "--out", tmp_path / "exp", "--force")
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.glob(".exp.old-*")) and (tmp_path / "exp/manifest.json").exists()


@pytest.mark.slow
def test_cli_import_reads_our_exports(gen_store, tmp_path):
    for fmt in ("coco", "voc", "yolo", "hf"):
        export(gen_store, fmt, tmp_path / fmt)
    gen_store.close()
    for fmt, src in (("coco", tmp_path / "coco/annotations/instances_train.json"), ("voc", tmp_path / "voc"),
                     ("yolo", tmp_path / "yolo"), ("hf", tmp_path / "hf")):
        r = _cli("import", "--store", tmp_path / f"back-{fmt}", f"--{fmt}", src)
        assert r.returncode == 0 and "imported 6 images" in r.stdout, r.stderr
        back = Store(tmp_path / f"back-{fmt}")
        assert sorted(r.uid for r in back.query()) == sorted(r.uid for r in Store(tmp_path / "store").query(
            status="accepted"))
    r = _cli("import", "--store", tmp_path / "x", "--yolo", tmp_path / "coco")
    assert r.returncode == 2 and "no data.yaml" in r.stderr


@pytest.mark.slow
def test_cli_export_rejects_path_tricks_in_tags(store, tmp_path):
    store.close()
    r = _cli("export", "--store", tmp_path / "store", "--format", "coco", "--tag", "../../x", "--out", tmp_path / "o")
    assert r.returncode == 2 and "bad tag" in r.stderr and not (tmp_path / "o").exists()
