"""The Curate & Export tab's actions (headless): review, status with history and undo,
threshold through the store's one rule, exports that leave nothing behind."""
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from pipeline.dataset import Store, StoreError


def _add(store, rng, status="accepted", source="generated"):
    img = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
    yy, xx = np.mgrid[:48, :48]
    cy, cx = rng.uniform(16, 32, 2)
    heat = np.clip(1 - np.hypot(yy - cy, xx - cx) / 24, 0, 1).astype(np.float32)
    mask = heat >= 0.5
    if source == "user":
        mask = mask.copy()
        mask[:3] = True
    return store.add(img, ["dog"], heat_map=heat, threshold=0.5, instances=[("dog", mask)],
                     instance_sources=[source], status=status)


@pytest.fixture()
def curate(tmp_path):
    from studio.ui import CurateActions

    rng = np.random.default_rng(0)
    with Store(tmp_path / "s") as s:
        ids = [_add(s, rng), _add(s, rng, "rejected"), _add(s, rng, source="user"), _add(s, rng, "pending")]
    return CurateActions(tmp_path / "s"), ids, tmp_path / "s"


def test_status_changes_have_a_history_and_undo(curate):
    cur, ids, root = curate
    cur.set_status(ids[0], "rejected")
    cur.set_status(ids[0], "accepted")
    assert cur.undo_status(ids[0]) == "rejected"
    with Store(root) as s:
        assert s.get(ids[0]).status == "rejected"
        assert [h["to"] for h in s.status_history(ids[0])] == ["accepted", "rejected", "accepted", "rejected"]
    with pytest.raises(StoreError, match="no status change"):
        cur.undo_status(ids[3])  # pending since it was added
    picture, text, notes, slider = cur.review(ids[0])
    assert picture.shape[0] >= 384 and "rejected" in text and "history" in text


def test_curate_threshold_goes_through_the_store_rule(curate):
    cur, ids, root = curate
    msg = cur.save_details(ids[0], "looks fine", 0.2)
    assert "re-derived" in msg
    with Store(root) as s:
        rec = s.get(ids[0])
        assert rec.notes == "looks fine" and np.array_equal(s.masks(rec)[0][1], s.heat(rec) >= 0.2)
    with pytest.raises(StoreError, match="not a threshold mask"):
        cur.save_details(ids[2], "", 0.2)  # a hand-edited mask: the threshold does not apply
    assert cur.review(ids[2])[3]["interactive"] is False  # and its slider says so


def test_gallery_pages_and_captions_follow_the_store(curate):
    cur, ids, root = curate
    got, items, summary, page = cur.gallery("any", "", "", 0)
    assert got == ids and "4 samples" in summary and page == 0
    assert [c.split(" · ")[-1] for _, c in items] == ["accepted", "rejected", "accepted", "pending"]
    cur.set_status(ids[1], "accepted")
    assert cur.gallery("any", "", "", 0)[1][1][1].endswith("accepted")
    assert cur.gallery("rejected", "", "", 0)[0] == []
    assert "3 accepted samples" in cur.export_summary("accepted", "", "")  # the pending one is not
    assert "including rejected" in cur.export_summary("any", "", "")


def test_studio_exports_leave_nothing_behind(curate, monkeypatch, tmp_path):
    import studio.ui as ui

    cur, ids, root = curate
    monkeypatch.setattr(ui, "EXPORTS_DIR", tmp_path / "exports")
    # a studio that was killed left its exports behind
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / "exports" / str(gone.pid) / "export-coco-x"
    stale.mkdir(parents=True)
    (stale / "dataset-coco.zip").write_bytes(b"x" * 1000)
    zips = []
    for fmt in ("coco", "voc", "hf"):
        path, info = cur.export_zip(fmt, "accepted", "", "", 0)
        zips.append(path)
        with zipfile.ZipFile(path) as z:
            assert any(n.endswith("manifest.json") for n in z.namelist())
        assert "images" in info
    mine = tmp_path / "exports" / str(os.getpid())
    assert not stale.exists()
    assert [p.name for p in mine.iterdir()] == [os.path.basename(os.path.dirname(zips[-1]))]
    assert sorted(p.name for p in mine.iterdir().__next__().iterdir()) == ["dataset-hf.zip"]  # no unzipped folder


def test_export_defaults_to_accepted_samples():
    from studio.ui import build_app

    demo = build_app.__wrapped__ if hasattr(build_app, "__wrapped__") else build_app
    import tempfile

    app = demo(tempfile.mkdtemp())
    status = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "export-status")
    assert status.value == "accepted"
