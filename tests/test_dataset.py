"""Curation store and exports: round trips, real COCO data, crashes, concurrency, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SHARED
from pipeline.dataset import Store, StoreError, load_image_file
from pipeline.images import ImageError
from pipeline.export import ExportError, VOC_CLASSES, export, import_coco, import_voc, voc_palette
from pipeline.masks import iou


def synthetic_sample(rng, size=48):
    img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx, r = rng.integers(12, size - 12, 2).tolist() + [int(rng.integers(5, 11))]
    m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return img, m


@pytest.fixture()
def store(tmp_path):
    rng = np.random.default_rng(0)
    s = Store(tmp_path / "store")
    for k in range(6):
        img, m = synthetic_sample(rng)
        cls = ["dog", "cat"][k % 2]
        heat = m.astype(np.float32) * 0.9
        s.add(img, [cls], instances=[(cls, m)], prompt=f"a photograph of a {cls}", seed=k, model="tiny",
              heat_map=heat, threshold=0.5, refined_mask=m, status="accepted" if k < 4 else "rejected",
              tags=["batch1"] if k < 3 else [])
    return s


def test_store_round_trip_and_filters(store, tmp_path):
    recs = store.query(status="accepted")
    assert len(recs) == 4 and {r.status for r in recs} == {"accepted"}
    assert [r.seed for r in store.query(classes=["cat"])] == [1, 3, 5]
    assert [r.seed for r in store.query(tags=["batch1"], classes=["dog"])] == [0, 2]
    r = store.get(recs[0].id)
    assert store.image(r.image).shape == (48, 48, 3) and store.array(r.heat_map).dtype == np.float16
    assert r.instances[0].class_name == "dog" and r.instances[0].source == "generated"
    r2 = store.update(r.id, status="rejected", tags=["x", "y"], notes="blurry", user_threshold=0.3)
    assert (r2.status, r2.tags, r2.notes, r2.effective_threshold) == ("rejected", ["x", "y"], "blurry", 0.3)
    assert store.set_status([1, 2], "accepted") == 2
    # re-opening shows exactly what was committed
    store.close()
    again = Store(tmp_path / "store", create=False)
    assert again.get(r.id).notes == "blurry" and again.count() == 6


def test_uid_makes_add_idempotent(store):
    img, m = synthetic_sample(np.random.default_rng(1))
    a = store.add(img, ["dog"], uid="batch:dog:7")
    b = store.add(img, ["dog"], uid="batch:dog:7")
    assert a == b and store.count() == 7


@pytest.mark.parametrize("kwargs, match", [
    (dict(image=np.zeros((10, 10, 2), np.uint8)), "channels"),
    (dict(image=np.zeros((10, 10, 3), np.float32)), "uint8"),
    (dict(instances=[("dog", np.zeros((9, 10), bool))]), "instance mask"),
    (dict(heat_map=np.zeros((5, 5))), "heat map"),
    (dict(tags=["../../x"]), "bad tag"),
    (dict(tags=["ok", "a/b"]), "bad tag"),
    (dict(classes=["../etc"]), "bad class"),
    (dict(classes=[]), "at least one class"),
    (dict(status="maybe"), "bad status"),
    (dict(threshold=1.5), "outside"),
])
def test_bad_input_is_refused_and_store_untouched(store, kwargs, match):
    before = store.count()
    blobs = sorted(p.name for p in (store.root / "blobs").rglob("*"))
    args = dict(image=np.zeros((10, 10, 3), np.uint8), classes=["dog"])
    args.update(kwargs)
    image, classes = args.pop("image"), args.pop("classes")
    with pytest.raises(StoreError, match=match):
        store.add(image, classes, **args)
    assert store.count() == before
    assert sorted(p.name for p in (store.root / "blobs").rglob("*")) == blobs


def test_image_kinds_are_normalised(store):
    gray16 = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600)
    rgba = np.zeros((10, 10, 4), np.uint8)
    for img in (gray16, rgba):
        rec = store.get(store.add(img, ["dog"]))
        assert store.image(rec.image).shape == (10, 10, 3)


def test_corrupt_image_file_is_clear(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageError, match="cannot read image"):
        load_image_file(bad)


def test_coco_export_round_trips_with_pycocotools(store, tmp_path):
    from pycocotools.coco import COCO

    rep = export(store, "coco", tmp_path / "coco", val_fraction=0.5, seed=3)
    assert rep.splits == {"train": 2, "val": 2}
    total = 0
    for split in ("train", "val"):
        coco = COCO(str(tmp_path / "coco" / "annotations" / f"instances_{split}.json"))
        assert coco.dataset["info"]["synthetic"] is True and coco.dataset["info"]["models"] == ["tiny"]
        for ann in coco.loadAnns(coco.getAnnIds()):
            rec = store.get(ann["image_id"])
            assert np.array_equal(coco.annToMask(ann).astype(bool), store.mask(rec.instances[0].mask))
            assert coco.loadCats(ann["category_id"])[0]["name"] == rec.classes[0]
            img = np.asarray(Image.open(tmp_path / "coco" / split / coco.loadImgs(ann["image_id"])[0]["file_name"]))
            assert np.array_equal(img, store.image(rec.image))
            total += 1
    assert total == 4
    # same seed -> same split; manifest has every file's sha256
    man = json.loads((tmp_path / "coco" / "manifest.json").read_text())
    assert set(man["sha256"]) == {p.relative_to(tmp_path / "coco").as_posix()
                                  for p in (tmp_path / "coco").rglob("*") if p.is_file() and p.name != "manifest.json"}
    export(store, "coco", tmp_path / "coco2", val_fraction=0.5, seed=3)
    assert json.loads((tmp_path / "coco2/annotations/instances_val.json").read_text())["images"] == \
        json.loads((tmp_path / "coco/annotations/instances_val.json").read_text())["images"]


def test_user_threshold_override_reaches_the_export(store, tmp_path):
    from pycocotools.coco import COCO

    rec = store.query(status="accepted")[0]
    store.update(rec.id, user_threshold=0.95)  # above the 0.9 heat: the mask becomes empty
    export(store, "coco", tmp_path / "c")
    coco = COCO(str(tmp_path / "c/annotations/instances_train.json"))
    assert coco.getAnnIds(imgIds=[rec.id]) == []


def test_voc_export_decodes_to_class_ids(store, tmp_path):
    export(store, "voc", tmp_path / "voc", void_border=1)
    for rec in store.query(status="accepted"):
        cls = np.asarray(Image.open(tmp_path / f"voc/SegmentationClass/{rec.id:08d}.png"))
        im = Image.open(tmp_path / f"voc/SegmentationClass/{rec.id:08d}.png")
        assert im.mode == "P" and im.getpalette()[:6] == voc_palette()[:2].reshape(-1).tolist()
        m = store.mask(rec.instances[0].mask)
        inner = cls[m & (cls != 255)]
        assert inner.size and (inner == VOC_CLASSES.index(rec.classes[0])).all()
        assert (cls == 255).any() and set(np.unique(cls)) <= {0, 255, VOC_CLASSES.index(rec.classes[0])}
    assert len((tmp_path / "voc/ImageSets/Segmentation/train.txt").read_text().split()) == 4
    # the round trip through import gives the same instances back (void border aside)
    back = Store(tmp_path / "back")
    export(store, "voc", tmp_path / "voc0")
    ids = import_voc(back, tmp_path / "voc0")
    for rid in ids:
        r = back.get(rid)
        orig = store.get(int(r.uid.split(":")[1]))
        assert r.classes == orig.classes
        assert np.array_equal(back.mask(r.instances[0].mask), store.mask(orig.instances[0].mask))


@pytest.mark.slow
def test_hf_export_loads_with_datasets(store, tmp_path):
    import datasets

    export(store, "hf", tmp_path / "hf", val_fraction=0.25)
    ds = datasets.load_dataset(str(tmp_path / "hf"))
    assert set(ds) == {"train", "validation"} and ds["train"].num_rows + ds["validation"].num_rows == 4
    names = ds["train"].features["label"].names
    assert names == ["cat", "dog"]
    for row in ds["train"]:
        rec = store.get(row["sample_id"])
        assert names[row["label"]] == rec.classes[0]
        sem = np.asarray(row["mask"])
        assert np.array_equal(sem > 0, store.mask(rec.instances[0].mask))
        assert set(np.unique(sem)) <= {0, row["label"] + 1}
        assert np.array_equal(np.asarray(row["image"]), store.image(rec.image))


def test_export_refuses_overwrite_bad_format_and_empty_selection(store, tmp_path):
    export(store, "coco", tmp_path / "e")
    stamp = (tmp_path / "e/manifest.json").read_text()
    with pytest.raises(ExportError, match="already exists"):
        export(store, "coco", tmp_path / "e")
    assert (tmp_path / "e/manifest.json").read_text() == stamp
    export(store, "coco", tmp_path / "e", force=True, classes=["dog"])
    assert json.loads((tmp_path / "e/manifest.json").read_text())["n_images"] == 2
    with pytest.raises(ExportError, match="format"):
        export(store, "yolo", tmp_path / "y")
    with pytest.raises(ExportError, match="no samples"):
        export(store, "coco", tmp_path / "z", classes=["zebra"])
    with pytest.raises(StoreError, match="bad tag"):
        export(store, "coco", tmp_path / "z", tags=["../../x"])
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.slow
def test_import_coco_mini_and_reexport_matches_originals(tmp_path):
    from pycocotools.coco import COCO

    src = SHARED / "coco-mini"
    if not src.exists():
        pytest.skip("shared coco-mini not found")
    s = Store(tmp_path / "s")
    ids = import_coco(s, src / "instances.json", src / "images", limit=15)
    assert len(ids) == 15
    export(s, "coco", tmp_path / "out", status="accepted")
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        orig = COCO(str(src / "instances.json"))
        new = COCO(str(tmp_path / "out/annotations/instances_train.json"))
    n = 0
    for rid in ids:
        rec = s.get(rid)
        oid = rec.meta["coco_image_id"]
        o_anns = orig.loadAnns(orig.getAnnIds(imgIds=oid, iscrowd=False))
        n_anns = new.loadAnns(new.getAnnIds(imgIds=rid))
        assert len(o_anns) == len(n_anns)
        for a, b in zip(o_anns, n_anns):
            assert orig.loadCats(a["category_id"])[0]["name"] == new.loadCats(b["category_id"])[0]["name"]
            assert iou(orig.annToMask(a).astype(bool), new.annToMask(b).astype(bool)) >= 0.99
            n += 1
    assert n > 50


WRITER = r"""
import sys, numpy as np
sys.path.insert(0, {root!r})
from pipeline.dataset import Store
s = Store(sys.argv[1])
rng = np.random.default_rng(int(sys.argv[2]))
for k in range(int(sys.argv[3])):
    img = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    m = rng.random((32, 32)) > 0.5
    s.add(img, ["dog"], instances=[("dog", m)], uid=f"w{{sys.argv[2]}}:{{k}}", heat_map=m * 1.0, refined_mask=m)
    print(k, flush=True)
"""


def _writer(tmp_path, store_dir, seed, n):
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT)))
    return subprocess.Popen([sys.executable, str(script), str(store_dir), str(seed), str(n)],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_two_processes_write_500_each(tmp_path):
    d = tmp_path / "shared_store"
    Store(d).close()
    procs = [_writer(tmp_path, d, seed, 500) for seed in (1, 2)]
    for p in procs:
        p.communicate(timeout=300)
        assert p.returncode == 0
    s = Store(d)
    recs = s.query()
    assert len(recs) == 1000 and len({r.uid for r in recs}) == 1000
    for r in recs[::97]:
        assert s.mask(r.instances[0].mask).shape == (32, 32)


@pytest.mark.slow
def test_kill_9_while_writing_loses_nothing_committed(tmp_path):
    d = tmp_path / "k"
    Store(d).close()
    p = _writer(tmp_path, d, 7, 100000)
    done = -1
    for line in p.stdout:
        done = int(line)
        if done >= 60:
            break
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    s = Store(d)
    recs = s.query()
    assert len(recs) >= done + 1  # everything acknowledged is there
    for r in recs:  # and nothing half-written is visible
        assert s.image(r.image).shape == (32, 32, 3)
        assert s.mask(r.instances[0].mask).shape == (32, 32) and s.array(r.heat_map).shape == (32, 32)
    assert {r.uid for r in recs} == {f"w7:{k}" for k in range(len(recs))}


@pytest.mark.slow
def test_kill_9_during_export_leaves_no_partial_folder(tmp_path):
    d = tmp_path / "big"
    s = Store(d)
    rng = np.random.default_rng(0)
    for k in range(300):
        img, m = synthetic_sample(rng, 96)
        s.add(img, ["dog"], instances=[("dog", m)], status="accepted")
    out = tmp_path / "exp"
    p = subprocess.Popen([sys.executable, "-m", "pipeline", "export", "--store", str(d), "--format", "voc",
                          "--out", str(out)], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".exp.partial-*/JPEGImages/*.jpg")):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not out.exists()
    # the next export cleans the dead one's temporary folder and completes
    r = subprocess.run([sys.executable, "-m", "pipeline", "export", "--store", str(d), "--format", "voc",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(list((out / "JPEGImages").glob("*.jpg"))) == 300
    assert not list(tmp_path.glob(".exp.partial-*"))


@pytest.mark.slow
def test_cli_export_rejects_path_tricks_in_tags(store, tmp_path):
    store.close()
    r = subprocess.run([sys.executable, "-m", "pipeline", "export", "--store", str(tmp_path / "store"), "--format",
                        "coco", "--tag", "../../x", "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "bad tag" in r.stderr and not (tmp_path / "o").exists()


def test_count_is_sql_and_batch_columns_are_indexed(store, monkeypatch):
    img, m = synthetic_sample(np.random.default_rng(7))
    for k in range(3):
        store.add(img, ["dog"], uid=f"c{k}", status="accepted" if k else "rejected", run=("r1", "dog", k))
    expected = {"all": len(store.query()), "accepted": len(store.query(status="accepted")),
                "run": len(store.query(run="r1")), "run accepted": len(store.query(run="r1", status="accepted")),
                "dog, tag": len(store.query(classes=["dog"], tags=["batch1"]))}

    def no_decoding(*a, **k):
        raise AssertionError("count() decoded a row")

    monkeypatch.setattr(Store, "_record", no_decoding)  # count() must not read rows back
    assert {"all": store.count(), "accepted": store.count(status="accepted"), "run": store.count(run="r1"),
            "run accepted": store.count(run="r1", status="accepted"),
            "dog, tag": store.count(classes=["dog"], tags=["batch1"])} == expected
    assert expected["run"] == 3 and expected["run accepted"] == 2
    assert store.run_keys("r1") == {"dog": {0, 1, 2}} and store.run_keys("other") == {}
    plan = " ".join(r[-1] for r in store.sql("EXPLAIN QUERY PLAN SELECT id FROM samples WHERE run = ? AND run_class = ?",
                                             ("r1", "dog")))
    assert "samples_run" in plan  # the lookup uses the index, not a scan
    with pytest.raises(StoreError, match="SELECT"):
        store.sql("DELETE FROM samples")


def test_an_older_store_is_migrated(tmp_path):
    """A store written before the run columns existed gets them, filled from its batch records."""
    root = tmp_path / "old"
    s = Store(root)
    img, m = synthetic_sample(np.random.default_rng(3))
    s.add(img, ["dog"], uid="cand", meta={"batch": {"role": "candidate", "run": "abc", "class": "dog", "k": 4}})
    s.add(img, ["dog"], uid="plain")
    s.close()
    import sqlite3

    db = sqlite3.connect(root / "store.sqlite")
    db.execute("DROP INDEX samples_run")
    for col in ("run", "run_class", "run_k"):
        db.execute(f"ALTER TABLE samples DROP COLUMN {col}")  # as the older schema had it
    db.commit()
    db.close()
    s = Store(root)
    assert s.get_by_uid("cand").run == "abc" and s.get_by_uid("cand").run_k == 4
    assert s.get_by_uid("plain").run is None
    assert s.run_keys("abc") == {"dog": {4}} and s.count(run="abc", run_class="dog") == 1
    Store(root).close()  # opening again is a no-op
