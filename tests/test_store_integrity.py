"""Nothing lost, nothing wrong: atomic read-modify-writes, one row per inspected sample,
damage isolated per sample, leftovers cleaned, a damaged database explained."""
import json
import multiprocessing as mp
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from pipeline.dataset import DamagedSampleError, NewSample, Store, StoreError


def _sample(rng, size=40):
    img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(size / 3, 2 * size / 3, 2)  # a different object (and mask blob) per sample
    heat = np.clip(1 - np.hypot(yy - cy, xx - cx) / (size / 2), 0, 1).astype(np.float32)
    return img, heat


def _merge_keys(root, sid, prefix, n, barrier):
    store = Store(root)
    barrier.wait()
    for k in range(n):
        store.update(sid, meta={f"{prefix}{k}": k})
    store.close()


@pytest.mark.slow
def test_concurrent_meta_merges_from_two_processes_lose_nothing(tmp_path):
    rng = np.random.default_rng(0)
    img, heat = _sample(rng)
    with Store(tmp_path / "s") as s:
        sid = s.add(NewSample(img, ["dog"], heat_map=heat, threshold=0.5, instances=[("dog", heat >= 0.5)]))
    n = 150
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_merge_keys, args=(tmp_path / "s", sid, p, n, barrier)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with Store(tmp_path / "s") as s:
        meta = s.get(sid).meta
    assert sum(k.startswith("a") for k in meta) == n and sum(k.startswith("b") for k in meta) == n


def test_set_threshold_rederives_generated_masks_only(tmp_path):
    rng = np.random.default_rng(1)
    img, heat = _sample(rng)
    with Store(tmp_path / "s") as s:
        gen = s.add(NewSample(img, ["dog"], heat_map=heat, threshold=0.5, instances=[("dog", heat >= 0.5)]))
        edited = heat >= 0.5
        edited[:5] = True
        user = s.add(NewSample(img, ["dog"], heat_map=heat, threshold=0.5, instances=[("dog", edited)], instance_sources=["user"]))
        rec = s.set_threshold(gen, 0.2)
        assert rec.user_threshold == pytest.approx(0.2)
        assert np.array_equal(s.masks(rec)[0][1], s.heat(rec) >= 0.2)
        assert s.masks(rec)[0][1].sum() > (heat >= 0.5).sum()
        with pytest.raises(StoreError, match="not a threshold mask"):
            s.set_threshold(user, 0.2)
        assert np.array_equal(s.masks(s.get(user))[0][1], edited)  # untouched
        # back to the refiner's choice
        assert np.array_equal(s.masks(s.set_threshold(gen, None))[0][1], heat >= 0.5)
        # a 'generated' mask that is not the heat map at the threshold is refused
        with pytest.raises(StoreError, match="marked 'generated'"):
            s.add(NewSample(img, ["dog"], heat_map=heat, threshold=0.5, instances=[("dog", edited)]))
        for bad in (float("nan"), 1.5, -0.1, "x"):
            with pytest.raises(StoreError):
                s.set_threshold(gen, bad)


def test_generated_masks_under_an_inserted_object_stay_occluded(tmp_path):
    rng = np.random.default_rng(2)
    img, heat = _sample(rng)
    star = np.zeros(heat.shape, bool)
    star[15:25, 15:25] = True
    base = (heat >= 0.5) & ~star
    with Store(tmp_path / "s") as s:
        sid = s.add(NewSample(img, ["dog", "star"], heat_map=heat, threshold=0.5, instances=[("dog", base), ("star", star)],
                              instance_sources=["generated", "inserted"]))
        rec = s.set_threshold(sid, 0.1)
        dog, star_after = [m for _, m in s.masks(rec)]
        assert not (dog & star_after).any() and np.array_equal(star_after, star)
        assert np.array_equal(dog, (s.heat(rec) >= 0.1) & ~star)


def test_one_inspected_sample_is_one_row(tmp_path):
    from pipeline.session import InspectSession

    rng = np.random.default_rng(3)
    img, heat = _sample(rng)
    ses = InspectSession(img, "dog", heat)
    with Store(tmp_path / "s") as s:
        ids = {ses.to_store(s, "accepted"), ses.to_store(s, "accepted"), ses.to_store(s, "rejected")}
        assert len(ids) == 1 and s.count() == 1
        rec = s.get(ids.pop())
        assert rec.status == "rejected" and s.count(status="accepted") == 0
        assert [(h["from"], h["to"]) for h in s.status_history(rec.id)] == [("new", "accepted"), ("accepted", "rejected")]
        ses.set_threshold(0.8)
        ses.to_store(s, "accepted")
        assert s.count() == 1 and np.array_equal(s.masks(s.get(rec.id))[0][1], ses.current_mask())


@pytest.mark.slow
def test_a_damaged_sample_is_named_and_the_rest_still_reads(tmp_path):
    rng = np.random.default_rng(4)
    with Store(tmp_path / "s") as s:
        ids = []
        for _ in range(3):
            img, heat = _sample(rng)
            ids.append(s.add(NewSample(img, ["dog"], heat_map=heat, threshold=0.5, instances=[("dog", heat >= 0.5)],
                                       status="accepted")))
        victim = s.get(ids[1])
        s.blob_path(victim.image).unlink()
        s.blob_path(victim.instances[0].mask).write_bytes(b"\x89PNG truncated")
        with pytest.raises(DamagedSampleError, match=f"#{ids[1]}") as e:
            s.load_image(victim)
        assert e.value.sample_id == ids[1]
        with pytest.raises(DamagedSampleError, match=f"#{ids[1]}"):
            s.masks(victim)
        for sid in (ids[0], ids[2]):
            assert s.load_image(s.get(sid)).shape == (40, 40, 3) and len(s.masks(s.get(sid))) == 1
        report = s.check()
        assert list(report.damaged) == [ids[1]] and len(report.damaged[ids[1]]) == 2
    # the gallery shows the others and marks the damaged one
    from studio.ui import CurateActions

    got_ids, items, summary, _ = CurateActions(tmp_path / "s").gallery("any", "", "")
    assert got_ids == ids and "damaged" in items[1][1] and all("damaged" not in c for _, c in (items[0], items[2]))
    # the CLI check names it and fails
    out = subprocess.run([sys.executable, "-m", "pipeline", "check", "--store", str(tmp_path / "s")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and f"sample #{ids[1]}" in out.stdout and "Traceback" not in out.stderr


# A writer that puts its first blob down and then stops between the temporary file and its
# rename (killed there, or still alive and slow): os.replace never returns.
_STUCK_WRITER = """
import os, sys, time
import numpy as np
from pipeline.dataset import NewSample, Store
s = Store(sys.argv[1])
os.replace = lambda *a: (print("stuck", flush=True), time.sleep(600))
rng = np.random.default_rng(int(sys.argv[2]))
s.add(NewSample((rng.random((32, 32, 3)) * 255).astype(np.uint8), ["dog"]))
"""


def _stuck_writer(root, seed):
    proc = subprocess.Popen([sys.executable, "-c", _STUCK_WRITER, str(root), str(seed)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "stuck"
    return proc


def _temporaries(root):
    return sorted((root / "blobs").glob("*/.*.tmp"))


@pytest.mark.slow
def test_leftover_temporary_blobs_are_cleaned_only_when_their_writer_is_gone(tmp_path):
    root = tmp_path / "s"
    rng = np.random.default_rng(5)
    img, heat = _sample(rng)
    with Store(root) as s:
        s.add(NewSample(img, ["dog"], heat_map=heat, threshold=0.5, instances=[("dog", heat >= 0.5)]))
    killed = _stuck_writer(root, 1)
    dead_tmp = _temporaries(root)
    assert len(dead_tmp) == 1
    killed.kill()  # kill -9 between the temporary file and its rename
    killed.wait()
    alive = _stuck_writer(root, 2)  # a live writer at the same point: its file is never touched
    try:
        live_tmp = [p for p in _temporaries(root) if p not in dead_tmp]
        assert len(live_tmp) == 1
        with Store(root) as s:  # the next open cleans up after the killed one only
            assert not dead_tmp[0].exists() and live_tmp[0].exists()
            assert s._db.execute("SELECT COUNT(DISTINCT owner) FROM pending").fetchone()[0] == 1  # the live one's
        # an older version's name (by process id) is a leftover: reported, removed by --repair
        old_style = root / "blobs" / "cd" / f".{'cd' * 32}.png.12345.0123abcd.tmp"
        old_style.parent.mkdir(exist_ok=True)
        old_style.write_bytes(b"x")
        with Store(root) as s:
            rep = s.check()
            assert old_style in rep.leftovers and live_tmp[0] in rep.leftovers and not rep.ok
        out = subprocess.run([sys.executable, "-m", "pipeline", "check", "--store", str(root), "--repair",
                              "--remove-orphans"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert "leftover" in out.stdout and "Traceback" not in out.stderr
        assert live_tmp[0].exists() and not old_style.exists()
    finally:
        alive.kill()
        alive.wait()
    with Store(root) as s:  # now that writer is gone too: nothing of it is left, the first sample is whole
        assert not _temporaries(root) and s.count() == 1 and s.check().ok
        assert s._db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0


def _make_store(path):
    rng = np.random.default_rng(6)
    img, heat = _sample(rng)
    with Store(path) as s:
        s.add(NewSample(img, ["dog"], heat_map=heat, threshold=0.5, instances=[("dog", heat >= 0.5)]))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_database_is_explained(tmp_path, damage):
    root = tmp_path / "s"
    _make_store(root)
    db = root / "store.sqlite"
    for extra in ("store.sqlite-wal", "store.sqlite-shm"):
        (root / extra).unlink(missing_ok=True)
    if damage == "garbage":
        db.write_bytes(b"this is not a database" * 100)
    else:
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])
    with pytest.raises(StoreError) as e:
        s = Store(root)
        s.query()  # a truncated file may open and fail on the first read
    assert str(db) in str(e.value) and ("backup" in str(e.value))
    cli = subprocess.run([sys.executable, "-m", "pipeline", "check", "--store", str(root)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and str(db) in cli.stderr and "Traceback" not in cli.stderr
    app = subprocess.run([sys.executable, "app.py", "--store", str(root), "--port", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert app.returncode != 0 and str(db) in app.stderr and "Traceback" not in app.stderr


def _make_read_only(path) -> bool:
    if os.geteuid() != 0:
        path.chmod(0o444)
        return True
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def test_a_read_only_database_is_explained(tmp_path):
    root = tmp_path / "s"
    _make_store(root)
    db = root / "store.sqlite"
    Store(root).close()  # checkpoint: the WAL is folded into the file
    if not _make_read_only(db):
        pytest.skip("cannot make a file read-only for root here (no chattr)")
    try:
        with pytest.raises(StoreError) as e:
            s = Store(root)
            img, heat = _sample(np.random.default_rng(7))
            s.add(NewSample(img, ["cat"], heat_map=heat, threshold=0.5, instances=[("cat", heat >= 0.5)]))
        assert str(db) in str(e.value) and "writable" in str(e.value)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(db)])
        else:
            db.chmod(0o644)
    with Store(root) as s:
        assert s.count() == 1  # nothing lost


def test_bad_blob_keys_and_missing_samples_are_store_errors(tmp_path):
    _make_store(tmp_path / "s")
    with Store(tmp_path / "s") as s:
        with pytest.raises(StoreError, match="no sample #99"):
            s.get(99)
        with pytest.raises(StoreError, match="bad blob key"):
            s.blob_path("../../etc/passwd")
        assert isinstance(json.loads(json.dumps(s.get(1).meta)), dict)
    with pytest.raises(StoreError, match="is a file"):
        Store(tmp_path / "s" / "store.sqlite")
    with pytest.raises(StoreError, match="no store"):
        Store(tmp_path / "nowhere", create=False)
    assert sqlite3.sqlite_version_info >= (3, 31)  # json_insert '$[#]' (status history) needs it


def test_owner_locks_live_exactly_as_long_as_their_store(tmp_path):
    import gc

    from pipeline.store import owners

    root = tmp_path / "s"
    s = Store(root)
    token = s._owner.token
    assert owners.alive(root, token) and owners.live_owners(root) == [token]
    other = Store(root)  # another store in this process (another thread's): a second owner, seen alive
    assert set(owners.live_owners(root)) == {token, other._owner.token}
    other.close()
    pid = os.fork()
    if pid == 0:  # a forked child that releases its copy (as its exit would) leaves its parent's lock
        s._owner.close()
        os._exit(0)
    os.waitpid(pid, 0)
    assert owners.alive(root, token)
    del s
    gc.collect()  # a store collected without close() releases its lock and its file
    assert owners.live_owners(root) == [] and not list((root / "owners").iterdir())
