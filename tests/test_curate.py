"""The Curate & Export tab's actions (headless): review, status with history and undo,
threshold through the store's one rule, exports that leave nothing behind."""
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from pipeline.curation import Curation, CurateSession, CurationError, SampleFilter, describe_export, thumbnail
from pipeline.dataset import NewSample, Store, StoreError
from pipeline.export import ExportError


def _add(store, rng, status="accepted", source="generated"):
    img = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
    yy, xx = np.mgrid[:48, :48]
    cy, cx = rng.uniform(16, 32, 2)
    heat = np.clip(1 - np.hypot(yy - cy, xx - cx) / 24, 0, 1).astype(np.float32)
    mask = heat >= 0.5
    if source == "user":
        mask = mask.copy()
        mask[:3] = True
    return store.add(NewSample(img, ["dog"], heat_map=heat, threshold=0.5, instances=[("dog", mask)],
                               instance_sources=[source], status=status))


@pytest.fixture()
def store_ids(tmp_path):
    rng = np.random.default_rng(0)
    with Store(tmp_path / "s") as s:
        ids = [_add(s, rng), _add(s, rng, "rejected"), _add(s, rng, source="user"), _add(s, rng, "pending")]
    return tmp_path / "s", ids


@pytest.fixture()
def curate(store_ids):
    """The studio's store-side helpers over the pipeline's Curation."""
    from studio.curate import CurateActions

    root, ids = store_ids
    return CurateActions(root), ids, root


def test_status_changes_have_a_history_and_undo(store_ids):
    root, ids = store_ids
    cur = Curation(root)
    assert cur.set_status(ids[0], "rejected") == 1
    cur.set_status([ids[0]], "accepted")
    assert cur.undo_status(ids[0]) == "rejected"
    with Store(root) as s:
        assert s.get(ids[0]).status == "rejected"
        assert [h["to"] for h in s.status_history(ids[0])] == ["accepted", "rejected", "accepted", "rejected"]
    with pytest.raises(CurationError, match="no status change"):
        cur.undo_status(ids[3])  # pending since it was added
    rev = cur.review(ids[0])
    assert rev.picture.shape[0] >= 384 and rev.picture.dtype == np.uint8
    text = "\n".join(rev.details())
    assert "rejected" in text and "history: accepted → rejected → accepted → rejected" in text


def test_curate_threshold_goes_through_the_store_rule(store_ids):
    root, ids = store_ids
    cur = Curation(root)
    assert cur.save_details(ids[0], "looks fine", 0.2) is True
    with Store(root) as s:
        rec = s.get(ids[0])
        assert rec.notes == "looks fine" and np.array_equal(s.masks(rec)[0][1], s.heat(rec) >= 0.2)
    assert cur.save_details(ids[0], "same threshold", 0.2) is False  # notes only: nothing re-derived
    with pytest.raises(StoreError, match="not a threshold mask"):
        cur.save_details(ids[2], "", 0.2)  # a hand-edited mask: the threshold does not apply
    assert cur.review(ids[2]).threshold_applies is False and cur.review(ids[0]).threshold_applies


def test_gallery_pages_and_captions_follow_the_store(store_ids):
    root, ids = store_ids
    cur = Curation(root, page_size=3)
    first = cur.page(SampleFilter.parse("any", "", ""), 0)
    assert first.ids == ids[:3] and first.summary == "4 samples · page 1 of 2"
    assert [t.caption.split(" · ")[-1] for t in first.tiles] == ["accepted", "rejected", "accepted"]
    assert cur.page(SampleFilter(), 99).ids == ids[3:]  # clamped to the last page
    cur.set_status(ids[1], "accepted")
    assert cur.page(SampleFilter(), 0).tiles[1].caption.endswith("accepted")
    assert cur.page(SampleFilter.parse("rejected"), 0).ids == []
    assert cur.page(SampleFilter.parse("any", "cat, dog"), 0).total == 4
    assert cur.page(SampleFilter.parse("any", "cat"), 0).total == 0
    assert "3 accepted samples" in cur.export_summary(SampleFilter.parse("accepted"))  # the pending one is not
    assert "including rejected" in cur.export_summary(SampleFilter.parse("any"))
    with pytest.raises(CurationError, match="unknown status"):
        SampleFilter.parse("acepted")


def test_thumbnails_follow_a_changed_mask(store_ids):
    root, ids = store_ids
    cur = Curation(root)
    before = cur.page(SampleFilter(), 0).tiles[0].picture
    cur.save_details(ids[0], "", 0.9)  # a smaller mask
    after = cur.page(SampleFilter(), 0).tiles[0].picture
    assert not np.array_equal(before, after)  # never a stale (cached) picture
    with Store(root) as s:
        rec = s.get(ids[0])
        assert np.array_equal(after, thumbnail(s, rec))


def test_export_archive_leaves_only_the_zip(store_ids, tmp_path):
    root, ids = store_ids
    cur = Curation(root)
    work = tmp_path / "work"
    work.mkdir()
    archive, rep = cur.export_archive("coco", SampleFilter.parse("accepted"), work)
    assert sorted(p.name for p in work.iterdir()) == ["dataset-coco.zip"] and archive == work / "dataset-coco.zip"
    assert rep.n_images == 2 and "2 images" in describe_export(rep)
    with pytest.raises(ExportError, match="no samples match"):
        cur.export_archive("voc", SampleFilter.parse("accepted", "cat"), work)
    assert sorted(p.name for p in work.iterdir()) == ["dataset-coco.zip"]  # nothing half-written left


def test_undo_takes_back_the_last_change_wherever_the_highlight_went(store_ids):
    """a on #1 moves the highlight to #2; u then puts #1 back (not 'no change to undo' on #2)."""
    root, ids = store_ids
    ses = CurateSession.open(root)
    ses.select(0)
    ses.set_status("rejected")
    assert ses.current == ids[1]  # the highlight moved on
    assert ses.undo() == f"#{ids[0]} back to accepted"
    assert ses.current == ids[0]  # and came back to what was undone
    with Store(root) as s:
        assert s.get(ids[0]).status == "accepted" and s.get(ids[1]).status == "rejected"
    ses.select(3)
    ses.bulk("rejected")
    ses.undo()
    with Store(root) as s:
        assert [s.get(i).status for i in ids] == ["accepted", "rejected", "accepted", "pending"]
    with pytest.raises(CurationError, match="Nothing to undo"):
        ses.undo()


def test_a_threshold_is_previewed_before_save_and_refused_with_a_reason(store_ids):
    root, ids = store_ids
    ses = CurateSession.open(root)
    ses.select(0)
    before = ses.review().picture
    ses.preview_threshold(0.8)
    with Store(root) as s:  # nothing written yet
        rec = s.get(ids[0])
        assert rec.user_threshold is None and np.array_equal(s.masks(rec)[0][1], s.heat(rec) >= 0.5)
        expected = Curation(root).review(ids[0]).picture
    shown = ses.review().picture
    assert np.array_equal(before, expected) and not np.array_equal(shown, before)
    assert "re-derived at threshold 0.80" in ses.save("", 0.8)
    assert np.array_equal(ses.review().picture, shown)  # what was previewed is what was saved
    ses.select(2)  # a hand-edited mask
    with pytest.raises(CurationError, match="not a threshold mask"):
        ses.preview_threshold(0.3)
    assert "no threshold to save" in ses.save("note", 0.3)


@pytest.mark.slow
def test_the_tab_renders_its_session(store_ids):
    from studio.curate import OUTPUTS, render

    root, ids = store_ids
    ses = CurateSession.open(root)
    ses.select(2)
    out = dict(zip(OUTPUTS, render(ses)))
    assert np.array_equal(out["review"], Curation(root).review(ids[2]).picture)
    slider = out["threshold"]
    assert slider["interactive"] is False and "does not apply" in slider["label"]  # and says why
    again = dict(zip(OUTPUTS, render(ses)))  # nothing changed: nothing re-sent
    assert all(v == {"__type__": "update"} for k, v in again.items() if k != "gallery"), again


@pytest.mark.slow
def test_studio_exports_leave_nothing_behind(curate, monkeypatch, tmp_path):
    import studio.downloads as downloads

    cur, ids, root = curate
    monkeypatch.setattr(downloads, "EXPORTS_DIR", tmp_path / "exports")
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


@pytest.mark.slow
def test_export_defaults_to_accepted_samples():
    from studio.ui import build_app

    demo = build_app.__wrapped__ if hasattr(build_app, "__wrapped__") else build_app
    import tempfile

    app = demo(tempfile.mkdtemp())
    status = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "export-status")
    assert status.value == "accepted"
