"""A store whose database is gone is not an empty store (issue #23, item 2): a missing,
empty or replaced ``store.sqlite`` beside the blobs is an error naming the way back, repair
deletes nothing then, and ``check --rebuild`` restores every sample from the journal alone,
so that every export is byte-identical to the one made before the database was lost."""
import datetime as _dt
import hashlib
import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, shared
from pipeline.dataset import NewSample, Store, StoreError, StoreLostError
from pipeline.store.schema import SCHEMA

FORMATS = ("coco", "voc", "yolo", "hf")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _files(root):
    """Every file under ``root`` (relative path -> sha256), the store's own lock files aside."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "owners" not in p.parts}


def _blob_files(root):
    return {k: v for k, v in _files(root).items() if k.startswith("blobs/")}


class _FixedClock:
    """The exports stamp the time they were made (manifest ``created``, COCO ``date_created``):
    both exports of the comparison are made at one fixed moment, so bytes can be compared."""

    timezone = _dt.timezone
    timedelta = _dt.timedelta

    class datetime(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return _dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz)

    class date(_dt.date):
        @classmethod
        def today(cls):
            return _dt.date(2026, 1, 2)


def _export_all(store_dir, out, monkeypatch):
    import pipeline.export as ex
    from pipeline.export import export

    for mod in [ex, *(getattr(ex, m) for m in ("coco", "voc", "yolo", "hf", "common") if hasattr(ex, m))]:
        if getattr(mod, "datetime", None) is _dt:
            monkeypatch.setattr(mod, "datetime", _FixedClock)
    hashes = {}
    with Store(store_dir, create=False) as s:
        for fmt in FORMATS:
            export(s, fmt, out / fmt, status=None, val_fraction=0.25)
            hashes[fmt] = _files(out / fmt)
    return hashes


def _generated(rng, size=48):
    img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(size / 3, 2 * size / 3, 2)
    heat = np.clip(1 - np.hypot(yy - cy, xx - cx) / (size / 2), 0, 1).astype(np.float32)
    return img, heat


def _coco_mini_store(root):
    """coco-mini imported, two generated samples beside it, and a few curation changes."""
    from pipeline.export import import_coco

    src = shared("coco-mini")
    with Store(root) as s:
        ids = import_coco(s, src / "instances.json", src / "images")
        rng = np.random.default_rng(0)
        gen = []
        for k in range(2):
            img, heat = _generated(rng)
            gen.append(s.add(NewSample(img, ["dog"], heat_map=heat, threshold=0.5, instances=[("dog", heat >= 0.5)],
                                       prompt="a photograph of a dog", seed=k, model="tiny", status="accepted")))
        s.set_status(ids[:3], "rejected")
        s.change_status(ids[3], "pending")
        s.undo_status(ids[0])
        s.update(ids[4], tags=["checked", "outdoor"], notes="a fine photo")
        s.update(ids[5], meta={"reviewer": "b"}, status="rejected")
        s.set_threshold(gen[0], 0.3)
        s.update(gen[1], notes="kept as is")
        s.delete(ids[6])  # a deleted sample must stay deleted after the rebuild
        rows = [dict(r) for r in s._execute("SELECT * FROM samples ORDER BY id")]
        n = s.count()
    return ids, rows, n


@pytest.mark.slow
def test_coco_mini_store_rebuilt_from_its_files_exports_byte_identical(tmp_path, monkeypatch):
    root = tmp_path / "s"
    ids, rows_before, n = _coco_mini_store(root)
    assert n == len(ids) + 2 - 1 and len(ids) >= 50
    before = _export_all(root, tmp_path / "before", monkeypatch)
    blobs_before = _blob_files(root)
    (root / "store.sqlite").unlink()
    for extra in ("store.sqlite-wal", "store.sqlite-shm"):
        (root / extra).unlink(missing_ok=True)

    # the situation is named, with the way back; nothing is created or deleted
    with pytest.raises(StoreLostError, match="missing.*--rebuild"):
        Store(root)
    out = _cli("check", "--store", root)
    assert out.returncode != 0 and "is missing" in out.stderr and "--rebuild" in out.stderr
    assert "Traceback" not in out.stderr
    out = _cli("check", "--store", root, "--repair", "--remove-orphans")
    assert out.returncode != 0 and "--rebuild" in out.stderr
    assert _blob_files(root) == blobs_before and not (root / "store.sqlite").exists()

    out = _cli("check", "--store", root, "--rebuild")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{n} samples restored" in out.stdout and "1 deleted samples left out" in out.stdout
    with Store(root, create=False) as s:
        rows_after = [dict(r) for r in s._execute("SELECT * FROM samples ORDER BY id")]
        assert rows_after == rows_before  # every column of every row: instances, history, tags, notes...
        assert s.check().ok
        new_id = s.add(NewSample(*_generated(np.random.default_rng(9))[:1], ["cat"]))
        assert new_id > max(ids)  # ids are never reused, the deleted one's neither
        s.delete(new_id)
    after = _export_all(root, tmp_path / "after", monkeypatch)
    for fmt in FORMATS:
        assert after[fmt] == before[fmt], f"{fmt} export differs after the rebuild"


def _small_store(root, n=3):
    rng = np.random.default_rng(1)
    with Store(root) as s:
        for k in range(n):
            img, heat = _generated(rng)
            s.add(NewSample(img, ["dog"], heat_map=heat, threshold=0.5, instances=[("dog", heat >= 0.5)], status="accepted"))
        s.change_status(1, "rejected")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["deleted", "emptied", "replaced"])
def test_a_lost_database_is_an_error_and_repair_deletes_nothing(tmp_path, how):
    root = tmp_path / "s"
    _small_store(root)
    blobs = _blob_files(root)
    db = root / "store.sqlite"
    for extra in ("store.sqlite-wal", "store.sqlite-shm"):
        (root / extra).unlink(missing_ok=True)
    if how == "deleted":
        db.unlink()
    elif how == "emptied":
        db.write_bytes(b"")
    else:  # a fresh, healthy-looking database in its place (an older version opened the folder)
        db.unlink()
        conn = sqlite3.connect(db)
        conn.executescript(SCHEMA)
        conn.close()
    words = {"deleted": "is missing", "emptied": "is empty", "replaced": "holds no sample"}[how]
    with pytest.raises(StoreLostError, match=words):
        Store(root)
    for args in ((), ("--repair",), ("--repair", "--remove-orphans")):
        out = _cli("check", "--store", root, *args)
        assert out.returncode != 0 and words in out.stderr and "--rebuild" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert _blob_files(root) == blobs  # not one file deleted
    out = _cli("check", "--store", root, "--rebuild")
    assert out.returncode == 0 and "3 samples restored" in out.stdout, out.stdout + out.stderr
    with Store(root) as s:
        assert s.count() == 3 and s.get(1).status == "rejected" and s.check().ok
        assert [(h["from"], h["to"]) for h in s.status_history(1)] == [("new", "accepted"), ("accepted", "rejected")]
    if how != "deleted":
        assert list(root.glob("store.sqlite.before-rebuild-*"))  # moved aside, never deleted


def test_remove_orphans_refuses_when_the_database_refers_to_nothing(tmp_path):
    root = tmp_path / "s"
    _small_store(root, 1)
    with Store(root) as s:
        s.delete(1)  # the only sample deleted: its records end in a tombstone, the store opens as empty
        files = _blob_files(root)
        with pytest.raises(StoreError, match="refers to no file.*refusing"):
            s.check(repair=True, remove_orphans=True)
    assert _blob_files(root) == files


def test_a_damaged_database_is_rebuilt_and_kept_aside(tmp_path):
    root = tmp_path / "s"
    _small_store(root)
    db = root / "store.sqlite"
    Store(root).close()
    for extra in ("store.sqlite-wal", "store.sqlite-shm"):
        (root / extra).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="--rebuild"):
        Store(root).query()
    from pipeline.store.rebuild import rebuild

    rep = rebuild(root)
    assert rep.restored == 3 and [p.name.startswith("store.sqlite.before-rebuild") for p in rep.moved_aside] == [True]
    assert rep.moved_aside[0].read_bytes() == b"this is not a database" * 100
    with Store(root) as s:
        assert s.count() == 3 and s.check().ok
        with pytest.raises(StoreError, match="1 open store"):
            rebuild(root)  # never under a live writer
    with pytest.raises(StoreError, match="readable and holds 3 samples"):
        rebuild(root)  # a healthy database is never replaced


def test_every_change_is_journaled_and_old_records_are_orphans(tmp_path):
    root = tmp_path / "s"
    _small_store(root, 1)
    with Store(root) as s:
        first = s._db.execute("SELECT journal FROM samples WHERE id=1").fetchone()[0]
        s.update(1, notes="n", tags=["t"])
        current = s._db.execute("SELECT journal FROM samples WHERE id=1").fetchone()[0]
        assert current != first
        doc = json.loads(s.blob_bytes(current))
        assert doc["row"]["notes"] == "n" and json.loads(doc["row"]["tags"]) == ["t"]
        assert json.loads(doc["row"]["meta"])["history"][-1]["to"] == "rejected"
        rep = s.check()
        assert s.blob_path(first) in rep.orphans and s.blob_path(current) not in rep.orphans and not rep.lost
