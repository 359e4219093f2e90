"""Hostile dataset files to import (#23 item 5): every one ends in a message (a PipelineError;
from the CLI exit 2 with one line, no traceback), nothing is written outside the store and the
store is unchanged; an import stopped half way (an unreadable image, kill -9) is resumed by the
same command into exactly the store an uninterrupted import makes.

Inputs that crashed the interpreter inside pycocotools (exit 139) run in a subprocess, so a
regression fails its test instead of killing pytest."""
import copy
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared
from pipeline.dataset import NewSample, Store
from pipeline.errors import PipelineError
from pipeline.export import import_coco, import_hf, import_voc, import_yolo
from pipeline.export.common import ExportError
from pipeline.export.validate import DatasetFileError, rle_string_counts

ROOT = Path(__file__).resolve().parents[1]
INF = float("inf")


# -- helpers -----------------------------------------------------------------------------------
def _timeless(meta: dict) -> dict:
    return {**meta, "history": [{k: v for k, v in h.items() if k != "time"} for h in meta.get("history", [])]}


def snapshot(store_dir: Path) -> tuple:
    """Everything a store holds: its records (less the times of their history) and every file
    under its folder (less the journal's record files, which carry those times too, and the
    owner locks of open stores)."""
    store = Store(store_dir)
    recs = [(r.id, r.uid, r.image, r.classes, r.status, r.tags, _timeless(r.meta),
             [(i.class_name, i.mask, i.bbox, i.source, i.iscrowd) for i in r.instances]) for r in store.query()]
    store.close()
    files = sorted(str(p.relative_to(store_dir)) for p in store_dir.rglob("*")
                   if p.is_file() and not p.name.startswith("store.sqlite") and p.suffix != ".json"
                   and "owners" not in p.relative_to(store_dir).parts)
    return recs, files


@pytest.fixture()
def coco_mini():
    """The first 3 images of the shared coco-mini with their annotations (real photos)."""
    src = shared("coco-mini")
    doc = json.loads((src / "instances.json").read_text())
    keep = sorted(im["id"] for im in doc["images"])[:3]
    doc["images"] = [im for im in doc["images"] if im["id"] in keep]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]
    return doc, src / "images"


@pytest.fixture()
def store_with_one(tmp_path):
    """A store already holding one sample: a hostile import must leave it exactly so."""
    path = tmp_path / "store"
    s = Store(path)
    img = np.asarray(Image.open(next(shared("coco-mini", "images").iterdir())).convert("RGB"))
    m = np.zeros(img.shape[:2], bool)
    m[5:20, 5:30] = True
    s.add(NewSample(img, ["dog"], instances=[("dog", m)], instance_sources=["user"], status="accepted", uid="mine"))
    s.close()
    return path


def _ann(doc, k=0):
    return doc["annotations"][k]


def _img(doc, k=0):
    return doc["images"][k]


def _poly_ann(doc):
    return next(a for a in doc["annotations"] if isinstance(a["segmentation"], list))


# name: (mutation of the document, expected words in the message)
CASES = {
    "duplicate image ids": (lambda d: _img(d, 1).update(id=_img(d, 0)["id"]), "duplicate image ids"),
    "duplicate annotation ids": (lambda d: _ann(d, 1).update(id=_ann(d, 0)["id"]), "duplicate annotation ids"),
    "duplicate file names": (lambda d: _img(d, 1).update(file_name=_img(d, 0)["file_name"]),
                             "duplicate image file names"),
    "polygon of 2 points": (lambda d: _poly_ann(d).update(segmentation=[[1, 1, 10, 10]]), "at least 6"),
    "polygon of an odd count": (lambda d: _poly_ann(d).update(segmentation=[[1, 1, 10, 10, 5, 5, 7]]), "even"),
    "polygon of strings": (lambda d: _poly_ann(d).update(segmentation=[["1", 1, 10, 10, 5, 5]]), "finite numbers"),
    "empty segmentation": (lambda d: _poly_ann(d).update(segmentation=[]), "empty segmentation"),
    "segmentation not a list": (lambda d: _poly_ann(d).update(segmentation=5), "segmentation must be"),
    "no images key": (lambda d: d.pop("images"), "no 'images'"),
    "annotations not a list": (lambda d: d.update(annotations={"a": 1}), "'annotations' must be a list"),
    "image without width": (lambda d: _img(d).pop("width"), "has no 'width'"),
    "annotation without image_id": (lambda d: _ann(d).pop("image_id"), "has no 'image_id'"),
    "image id a string": (lambda d: _img(d).update(id="one"), "whole number"),
    "category id a float": (lambda d: _ann(d).update(category_id=1.5), "category_id must be a whole number"),
    "annotation for an unknown image": (lambda d: _ann(d).update(image_id=987654321), "not in 'images'"),
    "annotation for an unknown category": (lambda d: _ann(d).update(category_id=9999), "not in 'categories'"),
    "negative image size": (lambda d: _img(d).update(width=-5), "width and height"),
    "bbox with NaN": (lambda d: _ann(d).update(bbox=[1, 2, float("nan"), 4]), "bbox"),
    "a 400-digit coordinate": (lambda d: _poly_ann(d).update(segmentation=[[10**400, 1, 10, 10, 5, 5]]),
                               "finite numbers"),
    "a 30-digit RLE count": (lambda d: _ann(d).update(segmentation={"size": [1, 1], "counts": [10**30]}),
                             "run lengths"),
    "a negative RLE count": (lambda d: _ann(d).update(segmentation={"size": [1, 1], "counts": [-1, 2]}),
                             "run lengths"),
    "iscrowd 7": (lambda d: _ann(d).update(iscrowd=7), "iscrowd"),
    "a category without a name": (lambda d: d["categories"][0].pop("name"), "category #0"),
    "an annotation that is a list": (lambda d: d["annotations"].append([1, 2]), "must be an object"),
    "a missing image file": (lambda d: _img(d).update(file_name="not-there.jpg"), "no image file"),
    "a size that is not the file's": (lambda d: _img(d).update(width=_img(d)["width"] + 1), "annotation file says"),
    "a file name with a NUL byte": (lambda d: _img(d).update(file_name="a\x00b.jpg"), "not a usable file name"),
    "a file name of 5000 letters": (lambda d: _img(d).update(file_name="x" * 5000), "not a usable file name"),
    "provenance tags a number": (lambda d: _img(d).update(provenance={"uid": "x", "tags": 5}), "provenance 'tags'"),
    "provenance classes a string": (lambda d: _img(d).update(provenance={"uid": "x", "classes": "dog"}),
                                    "provenance 'classes'"),
    "provenance a list": (lambda d: _img(d).update(provenance=[1]), "provenance must be an object"),
    "provenance threshold NaN": (lambda d: _img(d).update(provenance={"threshold": float("nan")}), "threshold"),
    "a file name out of the folder": (lambda d: _img(d).update(file_name="../../../etc/passwd"), "outside"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_coco_is_a_message_and_the_store_is_unchanged(case, coco_mini, store_with_one, tmp_path):
    doc, images = coco_mini
    mutate, words = CASES[case]
    doc = copy.deepcopy(doc)
    mutate(doc)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    before = snapshot(store_with_one)
    store = Store(store_with_one)
    with pytest.raises((DatasetFileError, ExportError)) as e:
        import_coco(store, tmp_path / "bad.json", images)
    store.close()
    assert words in str(e.value)
    assert isinstance(e.value, PipelineError) and "\n" not in str(e.value)
    assert snapshot(store_with_one) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "store"]  # nothing written beside


@pytest.mark.parametrize("text, words", [("{not json", "not a valid JSON"), ("[1, 2]", "JSON object"),
                                         ('{"images": 5}', "'images' must be a list"), ("", "not a valid JSON")])
def test_a_file_that_is_not_coco_json_is_a_message(text, words, store_with_one, tmp_path):
    (tmp_path / "bad.json").write_text(text)
    before = snapshot(store_with_one)
    with pytest.raises(DatasetFileError, match=words):
        import_coco(Store(store_with_one), tmp_path / "bad.json", tmp_path)
    assert snapshot(store_with_one) == before


@pytest.mark.parametrize("case", ["duplicate image ids", "polygon of 2 points", "annotations not a list",
                                  "annotation for an unknown image", "bbox with NaN"])
def test_the_streamed_reading_of_a_large_file_checks_the_same(case, coco_mini, store_with_one, tmp_path, monkeypatch):
    """Files over STREAM_ABOVE_BYTES are streamed (json-stream): same checks, same import."""
    from pipeline.export import validate

    monkeypatch.setattr(validate, "STREAM_ABOVE_BYTES", 0)
    doc, images = coco_mini
    (tmp_path / "good.json").write_text(json.dumps(doc))
    streamed = import_coco(Store(tmp_path / "streamed"), tmp_path / "good.json", images)
    monkeypatch.setattr(validate, "STREAM_ABOVE_BYTES", 1 << 40)
    loaded = import_coco(Store(tmp_path / "loaded"), tmp_path / "good.json", images)
    assert streamed == loaded == [1, 2, 3]
    assert snapshot(tmp_path / "streamed") == snapshot(tmp_path / "loaded")
    monkeypatch.setattr(validate, "STREAM_ABOVE_BYTES", 0)
    mutate, words = CASES[case]
    doc = copy.deepcopy(doc)
    mutate(doc)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    before = snapshot(store_with_one)
    with pytest.raises(DatasetFileError, match=words):
        import_coco(Store(store_with_one), tmp_path / "bad.json", images)
    assert snapshot(store_with_one) == before


@pytest.mark.parametrize("stream", [False, True])
def test_deeply_nested_json_is_a_message(stream, store_with_one, tmp_path, monkeypatch):
    from pipeline.export import validate

    monkeypatch.setattr(validate, "STREAM_ABOVE_BYTES", 0 if stream else 1 << 40)
    (tmp_path / "deep.json").write_text('{"images": [], "annotations": [' + "[" * 200_000 + "]" * 200_000 + "]}")
    with pytest.raises(DatasetFileError):
        import_coco(Store(store_with_one), tmp_path / "deep.json", tmp_path)


def _cli(*args, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _rle_of(h, w):
    """A valid compressed RLE of an (h, w) mask (for a size that is not the image's)."""
    from pycocotools import mask as mask_utils

    m = np.zeros((h, w), np.uint8, order="F")
    m[1:3, 1:3] = 1
    return mask_utils.encode(m)["counts"].decode("ascii")


# the inputs that crashed the interpreter (pycocotools' C code) or ran out of memory
CRASHERS = {
    "polygon with an inf coordinate": (lambda d: _poly_ann(d).update(segmentation=[[1, 1, INF, 1, 10, 10]]),
                                       "finite numbers"),
    "polygon with a 1e300 coordinate": (lambda d: _poly_ann(d).update(segmentation=[[1, 1, 1e300, 1, 10, 10]]),
                                        "far outside"),
    "100000 x 100000 image": (lambda d: _img(d).update(width=100000, height=100000), "megapixels"),
    "RLE counts not summing to h*w": (lambda d: _ann(d).update(segmentation={
        "size": [_img(d)["height"], _img(d)["width"]],
        "counts": [_img(d)["height"] * _img(d)["width"], 100000]}), "sum to"),  # past the buffer's end
    "compressed RLE of another size": (lambda d: _ann(d).update(segmentation={
        "size": [_img(d)["height"], _img(d)["width"]], "counts": _rle_of(7, 9)}), "sum to"),
    "RLE size not the image's": (lambda d: _ann(d).update(segmentation={"size": [7, 9], "counts": _rle_of(7, 9)}),
                                 "RLE size"),
    "garbage compressed RLE": (lambda d: _ann(d).update(segmentation={
        "size": [_img(d)["height"], _img(d)["width"]], "counts": "\x01\x02 garbage"}), "not valid compressed RLE"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CRASHERS))
def test_coco_that_crashed_pycocotools_is_one_line_from_the_cli(case, coco_mini, store_with_one, tmp_path):
    doc, images = coco_mini
    doc = copy.deepcopy(doc)
    mutate, words = CRASHERS[case]
    mutate(doc)
    _ann(doc)["image_id"] = _img(doc)["id"]  # the RLE cases size their counts by image 0
    (tmp_path / "bad.json").write_text(json.dumps(doc))  # inf is written as Infinity, as Python reads it
    before = snapshot(store_with_one)
    r = _cli("import", "--store", store_with_one, "--coco", tmp_path / "bad.json", "--images", images)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])  # not 139 (a segfault) or 1 (a traceback)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr[-2000:]
    assert snapshot(store_with_one) == before


def test_a_licence_id_of_another_type_records_no_licence(coco_mini, tmp_path):
    doc, images = coco_mini
    _img(doc)["license"] = [1]  # unhashable: was a TypeError
    (tmp_path / "x.json").write_text(json.dumps(doc))
    store = Store(tmp_path / "s")
    ids = import_coco(store, tmp_path / "x.json", images)
    photos = {r.meta["photo"]["source_id"]: r.meta["photo"] for r in map(store.get, ids)}
    assert photos[_img(doc)["id"]]["license"] is None
    assert all(p["license"] for k, p in photos.items() if k != _img(doc)["id"])


@pytest.mark.parametrize("limit", [-1, 2.5, float("nan")])
def test_a_bad_limit_is_a_message(limit, coco_mini, tmp_path):
    from pipeline.errors import ConfigError

    doc, images = coco_mini
    (tmp_path / "good.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="limit"):
        import_coco(Store(tmp_path / "s"), tmp_path / "good.json", images, limit=limit)


def test_rle_string_reader_matches_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for h, w in ((5, 7), (40, 31), (120, 90)):
        m = np.asfortranarray((rng.random((h, w)) > 0.7).astype(np.uint8))
        rle = mask_utils.encode(m)
        counts = rle_string_counts(rle["counts"].decode("ascii"))
        assert sum(counts) == h * w
        back = mask_utils.decode(mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w))
        assert np.array_equal(back, m)
    assert rle_string_counts("\x01") is None and rle_string_counts("o") is None  # bad char; no end


def test_an_import_stopped_by_a_bad_image_resumes_to_the_uninterrupted_store(coco_mini, tmp_path):
    """Image 2 of 3 passes its header check but cannot be decoded: images before it are
    stored, the error names it; once the file is fixed, the same call completes the store
    exactly as an uninterrupted import makes it."""
    doc, images = coco_mini
    local = tmp_path / "images"
    local.mkdir()
    for im in doc["images"]:
        (local / im["file_name"]).write_bytes((images / im["file_name"]).read_bytes())
    (tmp_path / "instances.json").write_text(json.dumps(doc))
    clean = Store(tmp_path / "clean")
    import_coco(clean, tmp_path / "instances.json", local)
    clean.close()

    second = local / sorted(doc["images"], key=lambda im: im["id"])[1]["file_name"]
    good = second.read_bytes()
    second.write_bytes(good[: len(good) // 3])  # the header is intact, the pixels are not
    store = Store(tmp_path / "resumed")
    with pytest.raises(PipelineError, match=second.name):
        import_coco(store, tmp_path / "instances.json", local)
    assert store.count() == 1
    second.write_bytes(good)
    ids = import_coco(store, tmp_path / "instances.json", local)
    store.close()
    assert ids == [1, 2, 3]
    assert snapshot(tmp_path / "resumed") == snapshot(tmp_path / "clean")


@pytest.mark.slow
def test_kill_9_mid_import_then_the_same_command_gives_the_uninterrupted_store(tmp_path):
    src = shared("coco-mini")
    cmd = ["import", "--coco", src / "instances.json", "--images", src / "images"]
    clean = _cli(*cmd[:0], "import", "--store", tmp_path / "clean", *cmd[1:])
    assert clean.returncode == 0, clean.stderr[-2000:]
    n_all = Store(tmp_path / "clean").count()
    assert n_all == 80

    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "pipeline", "import", "--store", str(tmp_path / "killed"), *map(str, cmd[1:])]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, n = time.time() + 240, 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if (tmp_path / "killed" / "store.sqlite").exists():
            try:
                n = Store(tmp_path / "killed").count()
            except PipelineError:
                continue
            if n >= 5:
                break
    assert proc.poll() is None, "the import finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_killed = Store(tmp_path / "killed").count()
    assert 5 <= n_killed < n_all
    again = _cli("import", "--store", tmp_path / "killed", *cmd[1:])
    assert again.returncode == 0 and f"imported {n_all} images" in again.stdout, again.stderr[-2000:]
    check = _cli("check", "--store", tmp_path / "killed")
    assert check.returncode == 0, check.stdout + check.stderr
    killed, clean_snap = snapshot(tmp_path / "killed"), snapshot(tmp_path / "clean")
    assert killed[0] == clean_snap[0]  # the same records, ids and blobs
    assert set(clean_snap[1]) <= set(killed[1])  # every blob (the kill may leave a temporary file)


# -- YOLO --------------------------------------------------------------------------------------
@pytest.fixture()
def yolo_dir(tmp_path):
    """A one-image YOLO segmentation dataset from a real photo."""
    root = tmp_path / "yolo"
    (root / "images/train").mkdir(parents=True)
    (root / "labels/train").mkdir(parents=True)
    photo = next(shared("coco-mini", "images").iterdir())
    Image.open(photo).convert("RGB").save(root / "images/train/a.png")
    (root / "labels/train/a.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.6\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/train\nnames:\n  0: dog\n")
    return root


def test_yolo_image_symlink_out_of_the_folder_is_refused(yolo_dir, store_with_one, tmp_path):
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (8, 8)).save(secret)
    (yolo_dir / "images/train/b.png").symlink_to(secret)
    before = snapshot(store_with_one)
    with pytest.raises(ExportError, match="outside"):
        import_yolo(Store(store_with_one), yolo_dir)
    assert snapshot(store_with_one) == before
    (yolo_dir / "images/train/b.png").unlink()
    (yolo_dir / "images/train").rename(yolo_dir / "elsewhere")  # a symlinked split folder too
    (yolo_dir / "images/train").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(ExportError, match="outside"):
        import_yolo(Store(store_with_one), yolo_dir)
    assert snapshot(store_with_one) == before


@pytest.mark.parametrize("line, words", [
    ("0 nan 0.1 0.5 0.1 0.5 0.6", "finite numbers in 0..1"), ("0 1e300 0.1 0.5 0.1 0.5 0.6", "finite numbers in 0..1"),
    ("0 0.1 0.1 1.5 0.1 0.5 0.6", "finite numbers in 0..1"), ("0 -3 0.1 0.5 0.1 0.5 0.6", "finite numbers in 0..1"),
    ("0 inf 0.1 0.5 0.1 0.5 0.6", "finite numbers in 0..1"), ("x 0.1 0.1 0.5 0.1 0.5 0.6", "a class index"),
    ("7 0.1 0.1 0.5 0.1 0.5 0.6", "class 7"), ("0 0.5 0.5 0.2 0.2", "a box is not a mask")])
def test_yolo_bad_values_name_the_file_and_line(line, words, yolo_dir, store_with_one):
    (yolo_dir / "labels/train/a.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.6\n" + line + "\n")
    before = snapshot(store_with_one)
    with pytest.raises(DatasetFileError) as e:
        import_yolo(Store(store_with_one), yolo_dir)
    assert f"a.txt:2: " in str(e.value) and words in str(e.value)
    assert snapshot(store_with_one) == before


@pytest.mark.parametrize("text", ["names: [unclosed", "names: 5", "- just a list", "names: {0: [1]}"])
def test_yolo_bad_data_yaml_is_a_message(text, yolo_dir, store_with_one):
    (yolo_dir / "data.yaml").write_text(text)
    with pytest.raises(DatasetFileError, match="data.yaml"):
        import_yolo(Store(store_with_one), yolo_dir)


def test_yolo_import_still_reads_a_good_folder(yolo_dir, tmp_path):
    store = Store(tmp_path / "s")
    ids = import_yolo(store, yolo_dir)
    assert len(ids) == 1 and import_yolo(store, yolo_dir) == ids  # a second run adds nothing
    (mask,) = [m for _, m in store.masks(store.get(ids[0]))]
    assert mask.any()


# -- VOC ---------------------------------------------------------------------------------------
@pytest.fixture()
def voc_dir(tmp_path):
    root = tmp_path / "voc"
    for d in ("JPEGImages", "SegmentationObject", "SegmentationClass", "Annotations"):
        (root / d).mkdir(parents=True)
    photo = Image.open(next(shared("coco-mini", "images").iterdir())).convert("RGB")
    photo.save(root / "JPEGImages/a.jpg")
    m = np.zeros((photo.height, photo.width), np.uint8)
    m[10:40, 10:60] = 1
    for d in ("SegmentationObject", "SegmentationClass"):
        Image.fromarray(m, mode="L").convert("P").save(root / d / "a.png")
    (root / "labelmap.txt").write_text("background:0,0,0::\ndog:128,0,0::\n")
    return root


XXE = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotation><object><name>&xxe;</name></object></annotation>"""
LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<annotation><object><name>&lol9;</name></object></annotation>"""


@pytest.mark.parametrize("xml, words", [(XXE, "refused"), (LAUGHS, "refused"),
                                        ("<annotation><object>", "not a readable XML"),
                                        ("<annotation><object><pose/></object></annotation>", "has no <name>")])
def test_voc_hostile_xml_is_a_message(xml, words, voc_dir, store_with_one):
    (voc_dir / "Annotations/a.xml").write_text(xml)
    before = snapshot(store_with_one)
    with pytest.raises(DatasetFileError, match=words):
        import_voc(Store(store_with_one), voc_dir)
    assert snapshot(store_with_one) == before


def png_declaring(width: int, height: int) -> bytes:
    """A small palette PNG whose header declares width x height (a decompression bomb's
    header; its pixel data is never reached when the size is refused first)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * (width + 1) * 64, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
            + chunk(b"PLTE", bytes(768)) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_voc_object_map_bomb_is_refused_from_its_header(voc_dir, store_with_one):
    data = png_declaring(47000, 47000)  # 2.2 GB of pixels when decoded
    assert len(data) < 100_000
    (voc_dir / "SegmentationObject/a.png").write_bytes(data)
    before = snapshot(store_with_one)
    with pytest.raises(DatasetFileError, match="megapixels"):
        import_voc(Store(store_with_one), voc_dir)
    assert snapshot(store_with_one) == before


def test_voc_object_map_of_another_size_is_a_message(voc_dir, store_with_one):
    Image.new("P", (33, 21)).save(voc_dir / "SegmentationObject/a.png")
    with pytest.raises(DatasetFileError, match="annotation file says|its image is|is 33x21"):
        import_voc(Store(store_with_one), voc_dir)


def test_voc_good_folder_imports_once(voc_dir, tmp_path):
    store = Store(tmp_path / "s")
    ids = import_voc(store, voc_dir)
    assert len(ids) == 1 and import_voc(store, voc_dir) == ids
    assert [i.class_name for i in store.get(ids[0]).instances] == ["dog"]


# -- HF ----------------------------------------------------------------------------------------
def test_hf_parquet_of_another_schema_names_the_expected_columns(store_with_one, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "hf"
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text("# some other dataset\n")
    pq.write_table(pa.table({"text": ["a cat", "a dog"], "label": [0, 1]}), folder / "data/train-0.parquet")
    before = snapshot(store_with_one)
    with pytest.raises(DatasetFileError, match="expected the columns image, objects, classes"):
        import_hf(Store(store_with_one), folder)
    assert snapshot(store_with_one) == before


def _hf_folder(folder: Path, image: dict, mask: dict) -> Path:
    """A one-row dataset of this project's schema (pipeline.export.hf.features)."""
    import datasets

    from pipeline.export.hf import features

    row = {"image": [image], "mask": [mask], "label": [0], "classes": [[0]],
           "objects": [{"mask": [mask], "bbox": [[0.0, 0.0, 1.0, 1.0]], "category": [0], "source": ["imported"],
                        "iscrowd": [False]}],
           "prompt": [""], "seed": [-1], "model": [""], "threshold": [None], "origin": ["photo"], "license": [None],
           "source_id": [None], "file_name": [None], "sample_id": [1], "uid": ["hf-test:1"], "tags": [[]],
           "provenance": [None]}
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text("# test\n")
    datasets.Dataset.from_dict(row, features=features(["dog"])).to_parquet(str(folder / "data/train-0.parquet"))
    return folder


def _png(arr) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_hf_rows_are_checked_before_anything_is_written(store_with_one, tmp_path):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    img = {"bytes": _png(np.zeros((8, 8, 3), np.uint8)), "path": None}
    mask = {"bytes": _png(np.full((8, 8), 255, np.uint8)), "path": None}
    before = snapshot(store_with_one)
    cases = [("path", {"bytes": None, "path": str(secret)}, mask, "only a path"),
             ("bomb", {"bytes": png_declaring(47000, 47000), "path": None}, mask, "megapixels"),
             ("size", img, {"bytes": _png(np.zeros((9, 8), np.uint8)), "path": None}, "mask is 8x9")]
    for name, image, m, words in cases:
        with pytest.raises(DatasetFileError, match=words):
            import_hf(Store(store_with_one), _hf_folder(tmp_path / name, image, m))
        assert snapshot(store_with_one) == before
    store = Store(tmp_path / "good")
    ids = import_hf(store, _hf_folder(tmp_path / "ok", img, mask))
    assert len(ids) == 1 and import_hf(store, tmp_path / "ok") == ids  # a second run adds nothing


def test_hf_folder_that_is_not_parquet_is_a_message(store_with_one, tmp_path):
    folder = tmp_path / "hf"
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text("# x\n")
    (folder / "data/train-0.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetFileError, match="not a readable Hugging Face dataset"):
        import_hf(Store(store_with_one), folder)


@pytest.mark.slow
def test_cli_hostile_imports_are_one_line(voc_dir, yolo_dir, store_with_one, tmp_path):
    (voc_dir / "Annotations/a.xml").write_text(LAUGHS)
    (yolo_dir / "labels/train/a.txt").write_text("0 nan 0.1 0.5 0.1 0.5 0.6\n")
    before = snapshot(store_with_one)
    for flag, src, words in (("--voc", voc_dir, "refused"), ("--yolo", yolo_dir, "a.txt:1")):
        r = _cli("import", "--store", store_with_one, flag, src)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0], r.stderr[-2000:]
    assert snapshot(store_with_one) == before
