"""Many hands, one truth (issue #23, items 1, 3, 4): what happens *at the same time* loses
nothing. Each race runs for a bounded time side by side and asserts zero losses; the
iteration counts are printed (``-s``) and recorded in bench/RESULTS.md."""
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT
from pipeline.dataset import NewSample, Store

RACE_SECONDS = 10.0

# A writer process: adds samples (each with an image, a mask and a heat map) until told to stop;
# prints what it added and what failed.
_WRITER = """
import json, sys, time
import numpy as np
from pipeline.dataset import NewSample, Store
import os
root, stop_file, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(seed)
added, failed = [], []
with Store(root) as s:
    while not os.path.exists(stop_file):
        img = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
        heat = (rng.integers(0, 9, (32, 32)) / 8).astype(np.float32)  # exact in the stored float16
        uid = f"p{seed}-{len(added) + len(failed)}"
        try:
            s.add(NewSample(img, ["dog"], uid=uid, heat_map=heat, threshold=0.5, instances=[("dog", heat >= 0.5)]))
            added.append(uid)
        except Exception as e:
            failed.append(f"{uid}: {type(e).__name__}: {e}")
print(json.dumps({"added": added, "failed": failed}))
"""


def _sample(rng, size=32):
    img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    heat = (rng.integers(0, 9, (size, size)) / 8).astype(np.float32)  # exact in the stored float16
    return img, heat


def _thread_writer(root, seconds, seed, added, failed, stop=None):
    rng = np.random.default_rng(seed)
    end = time.monotonic() + seconds
    with Store(root) as s:
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            img, heat = _sample(rng)
            uid = f"t{seed}-{len(added) + len(failed)}"
            try:
                s.add(NewSample(img, ["cat"], uid=uid, heat_map=heat, threshold=0.5, instances=[("cat", heat >= 0.5)]))
                added.append(uid)
            except Exception as e:  # noqa: BLE001 (every failure is what the test counts)
                failed.append(f"{uid}: {type(e).__name__}: {e}")


def _assert_every_sample_whole(root, uids):
    with Store(root) as s:
        have = {r.uid: r for r in s.query()}
        assert set(uids) <= set(have), f"{len(set(uids) - set(have))} added samples are missing"
        rep = s.check()
        assert not rep.damaged, f"{len(rep.damaged)} damaged samples: {list(rep.damaged.items())[:3]}"
        for uid in uids:  # every blob of every sample reads back
            rec = have[uid]
            assert s.load_image(rec).shape == (32, 32, 3) and len(s.masks(rec)) == 1 and s.heat(rec) is not None
        return rep


@pytest.mark.slow
def test_repair_beside_writers_loses_nothing(tmp_path):
    """check --repair --remove-orphans (the CLI, and in-process) and Store() opens, over and
    over, beside a writer process and a writer thread: 0 failed adds, 0 damaged samples."""
    root = tmp_path / "s"
    Store(root).close()
    stop_file = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(stop_file), "1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    added, failed = [], []
    stop = threading.Event()
    writer = threading.Thread(target=_thread_writer, args=(root, 600, 2, added, failed, stop))
    writer.start()
    counts = {"cli": 0, "repair": 0, "open": 0, "removed": 0}
    errors = []

    def repairs():
        while not stop.is_set():
            try:
                with Store(root) as s:
                    counts["removed"] += s.check(repair=True, remove_orphans=True).removed_orphans
                counts["repair"] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(f"repair: {type(e).__name__}: {e}")

    def opens():
        while not stop.is_set():
            try:
                Store(root).close()
                counts["open"] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(f"open: {type(e).__name__}: {e}")

    helpers = [threading.Thread(target=repairs), threading.Thread(target=opens)]
    for t in helpers:
        t.start()
    end = time.monotonic() + RACE_SECONDS
    while time.monotonic() < end or counts["cli"] < 3:  # at least 10 s, and three whole CLI repairs
        out = subprocess.run([sys.executable, "-m", "pipeline", "check", "--store", str(root), "--repair",
                              "--remove-orphans"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert "Traceback" not in out.stderr, out.stderr
        counts["cli"] += 1
    stop.set()
    stop_file.touch()
    writer.join()
    stdout, stderr = proc.communicate(timeout=300)
    for t in helpers:
        t.join()
    assert proc.returncode == 0, stderr
    other = json.loads(stdout)
    print(f"\nrepair race: {len(added)} thread adds, {len(other['added'])} process adds, {counts['cli']} CLI repairs, "
          f"{counts['repair']} in-process repairs, {counts['open']} opens, {counts['removed']} orphans removed")
    assert failed == [] and other["failed"] == [] and errors == []
    assert len(added) > 10 and len(other["added"]) > 10 and counts["repair"] >= 3
    rep = _assert_every_sample_whole(root, added + other["added"])
    assert rep.ok and not rep.lost


@pytest.mark.slow
def test_opening_a_store_in_threads_beside_a_writer_thread_fails_no_add(tmp_path):
    """What every studio session does: Store(root) in one thread while another writes."""
    root = tmp_path / "s"
    Store(root).close()
    added, failed, errors, opens = [], [], [], [0]
    stop = threading.Event()

    def opener():
        while not stop.is_set():
            try:
                with Store(root) as s:
                    s.count()
                opens[0] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(f"{type(e).__name__}: {e}")

    openers = [threading.Thread(target=opener) for _ in range(2)]
    for t in openers:
        t.start()
    _thread_writer(root, RACE_SECONDS / 2, 3, added, failed)
    stop.set()
    for t in openers:
        t.join()
    print(f"\nopen race: {len(added)} adds beside {opens[0]} opens")
    assert failed == [] and errors == [] and len(added) > 10 and opens[0] > 10
    _assert_every_sample_whole(root, added)


def _history_timeline(history, initial):
    """The stored status after each history entry: states[k] = status once k changes were made."""
    states = [initial]
    for h in history:
        assert h["from"] == states[-1], f"history entry {h} does not follow {states[-1]}"
        states.append(h["to"])
    return states


@pytest.mark.slow
@pytest.mark.parametrize("via", ["store", "curation"])
def test_accept_and_reject_at_once_answer_what_is_stored(tmp_path, via):
    """Two sessions press Accept and Reject (and Undo) on one sample over and over: every
    answer is the stored state at its commit, and the history has one entry per change."""
    from pipeline.curation import Curation

    root = tmp_path / "s"
    rng = np.random.default_rng(4)
    with Store(root) as s:
        img, heat = _sample(rng)
        sid = s.add(NewSample(img, ["dog"]))
    answers, errors = [], []
    end = time.monotonic() + RACE_SECONDS / 2

    def session(wanted):
        cur = Curation(root)
        k = 0
        while time.monotonic() < end:
            try:
                if via == "store":
                    with Store(root) as s:
                        answers.append(s.undo_status(sid) if k % 5 == 4 else s.change_status(sid, wanted))
                else:
                    answers.append(cur.undo(sid) if k % 5 == 4 else cur.change_status(sid, wanted))
            except Exception as e:  # noqa: BLE001
                if "no status change to undo" not in str(e):
                    errors.append(f"{type(e).__name__}: {e}")
            k += 1

    threads = [threading.Thread(target=session, args=(w,)) for w in ("accepted", "rejected")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with Store(root) as s:
        rec = s.get(sid)
        history = s.status_history(sid)
    states = _history_timeline(history, "pending")
    print(f"\nstatus race ({via}): {len(answers)} answers, {len(history)} changes")
    assert errors == [] and len(answers) > 20
    assert rec.status == states[-1]
    changed = [a for a in answers if a.changed]
    assert len(changed) == len(history)  # one history entry per change that took effect
    assert sorted(a.history_len for a in changed) == list(range(1, len(history) + 1))
    for a in answers:  # the answer is the stored state at that answer's commit
        assert a.status == states[a.history_len], (a, states[a.history_len])


@pytest.mark.slow
def test_saving_one_new_sample_from_two_sessions_at_once(tmp_path):
    """Accept and Reject of one (new) inspected sample at the same moment: the later save
    replaces the earlier, both are in the history, and each caller's status was true at its commit."""
    root = tmp_path / "s"
    rng = np.random.default_rng(5)
    img, heat = _sample(rng)
    end = time.monotonic() + RACE_SECONDS / 2
    rounds, errors = 0, []
    while time.monotonic() < end:
        uid = f"inspect-{rounds}"
        barrier = threading.Barrier(2)
        got = {}

        def save(status):
            try:  # opening counts too (two openers of a new store once failed here), and a
                # partner that failed breaks the barrier instead of leaving this one waiting forever
                with Store(root) as s:
                    barrier.wait(timeout=60)
                    got[status] = s.add(NewSample(img, ["dog"], uid=uid, heat_map=heat, threshold=0.5,
                                                  instances=[("dog", heat >= 0.5)], status=status), replace=True)
            except Exception as e:  # noqa: BLE001
                barrier.abort()
                errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=save, args=(st,)) for st in ("accepted", "rejected")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], errors
        with Store(root) as s:
            rec = s.get_by_uid(uid)
            hist = [(h["from"], h["to"]) for h in s.status_history(rec.id)]
        assert len(set(got.values())) == 1 and rec.id in got.values()
        first = hist[0][1]
        second = "rejected" if first == "accepted" else "accepted"
        assert hist == [("new", first), (first, second)] and rec.status == second
        rounds += 1
    print(f"\nsave race: {rounds} rounds")
    assert errors == [] and rounds > 5


_OPENER = """
import sys, time
from pipeline.dataset import Store
root, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
try:
    with Store(root) as s:
        print("ok", s.count())
except Exception as e:
    print("failed", type(e).__name__, e)
"""


def test_opening_one_new_store_from_threads_and_processes_at_once(tmp_path):
    """Several threads and processes opening the same store folder that does not exist yet, at
    the same moment, for a bounded time: every one of them gets the (empty) store. Before, the
    losers of the race to create the folder or to switch the new database to WAL were told
    "cannot create the store folder: File exists" or that the database was damaged."""
    end, rounds, errors = time.monotonic() + RACE_SECONDS / 2, 0, []
    while time.monotonic() < end or rounds < 2:
        root = tmp_path / f"s{rounds}" / "store"
        start = time.time() + 1.0
        procs = [subprocess.Popen([sys.executable, "-c", _OPENER, str(root), str(start)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(3)]
        barrier = threading.Barrier(6)

        def opener():
            try:
                barrier.wait(timeout=60)
                with Store(root) as s:
                    assert s.count() == 0
            except Exception as e:  # noqa: BLE001
                barrier.abort()
                errors.append(f"thread: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=opener) for _ in range(6)]
        time.sleep(max(0.0, start - time.time()))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in procs:
            out, err = p.communicate(timeout=120)
            if not out.startswith("ok 0"):
                errors.append(f"process: {out.strip()} {err.strip()[-300:]}")
        rounds += 1
    print(f"\nopen race: {rounds} rounds of 6 threads and 3 processes")
    assert errors == [], errors[:3]


def test_a_store_held_locked_is_not_called_damaged(tmp_path):
    """A database another writer keeps locked past the busy timeout is busy, not damaged: the
    message must not send the user to `check --rebuild` (which moves the database aside)."""
    import sqlite3

    with Store(tmp_path / "s") as s:
        text = s._db_problem(sqlite3.OperationalError("database is locked"))
        assert "damaged" not in text and "rebuild" not in text and "try again" in text
        assert "damaged" in s._db_problem(sqlite3.DatabaseError("file is not a database"))
