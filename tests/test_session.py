"""InspectSession: the current mask's source, clicks, strokes, undo/redo, and what is saved."""
import numpy as np
import pytest

from pipeline.dataset import NewSample, Store
from pipeline.refine import get_refiner
from pipeline.session import InspectSession, SessionError


@pytest.fixture()
def scene():
    """A red disc on grey with a blurred, slightly offset heat map (an attention-like map)."""
    import cv2

    img = np.full((64, 64, 3), 128, np.uint8)
    yy, xx = np.mgrid[:64, :64]
    disc = np.hypot(yy - 32, xx - 30) <= 14
    img[disc] = (200, 30, 30)
    heat = cv2.GaussianBlur(np.hypot(yy - 34, xx - 33).astype(np.float32), (0, 0), 3)
    heat = np.clip(1 - heat / 24, 0, 1).astype(np.float32)
    return img, heat, disc


def test_threshold_source_and_undo_redo(scene):
    img, heat, disc = scene
    ses = InspectSession(img, "ball", heat, refiner=get_refiner("grabcut"))
    ses.refine()
    assert ses.choice is not None and ses.source == "threshold"
    for t in (0.3, 0.35, 0.4):  # a dragged slider: one undo step
        ses.set_threshold(t)
    assert np.array_equal(ses.current_mask(), ses.heat >= 0.4) and "0.40" in ses.describe()
    ses.use_source("refined")
    assert np.array_equal(ses.current_mask(), ses.choice.refined) and "refined by grabcut" in ses.describe()
    assert ses.undo() and ses.source == "threshold" and ses.threshold == 0.4
    assert ses.undo() and ses.threshold == 0.5 and not ses.undo()
    assert ses.redo() and ses.threshold == 0.4 and ses.redo() and ses.source == "refined" and not ses.redo()
    with pytest.raises(SessionError):
        ses.set_threshold(float("nan"))
    with pytest.raises(SessionError):
        ses.use_source("magic")


def test_start_begins_at_the_refiners_threshold_with_nothing_to_undo(scene):
    img, heat, disc = scene
    ses = InspectSession(img, "ball", heat, refiner=get_refiner("grabcut"))
    ses.set_threshold(0.9)  # whatever happened before the start is not an edit to undo
    ses.start()
    assert ses.choice is not None and ses.threshold == ses.choice.threshold != 0.5
    assert not ses.can_undo and np.array_equal(ses.current_mask(), ses.heat >= ses.choice.threshold)
    bare = InspectSession(img, "ball", heat, refiner=None)
    bare.start()  # no refiner: the threshold mask at 0.5, and why there is no refinement
    assert bare.choice is None and bare.threshold == 0.5 and bare.refine_error == "no refiner chosen"


def test_strokes_apply_on_top_of_any_source_and_can_be_discarded(scene):
    img, heat, disc = scene
    ses = InspectSession(img, "ball", heat, refiner=get_refiner("grabcut"))
    ses.refine()
    add = np.zeros(heat.shape, bool)
    add[:4, :4] = True
    erase = ses.threshold_mask() & (np.arange(64)[None, :] < 30)
    ses.apply_strokes(add=add)
    ses.apply_strokes(erase=erase)
    want = (ses.threshold_mask() | add) & ~erase
    assert np.array_equal(ses.current_mask(), want) and ses.mask_kind == "user"
    ses.set_threshold(0.3)  # the edits stay on top of the new threshold mask
    assert np.array_equal(ses.current_mask(), ((ses.heat >= 0.3) | add) & ~erase)
    ses.use_source("refined")
    assert np.array_equal(ses.current_mask(), (ses.choice.refined | add) & ~erase)
    ses.discard_edits()
    assert np.array_equal(ses.current_mask(), ses.choice.refined) and ses.mask_kind == "refined"
    ses.undo()
    assert ses.mask_kind == "user"
    with pytest.raises(SessionError):
        ses.apply_strokes(add=np.zeros((3, 3), bool))


def test_clicks_refine_again_and_undo_restores_the_refinement(scene):
    img, heat, disc = scene
    ses = InspectSession(img, "ball", heat, refiner=get_refiner("grabcut"))
    ses.refine()
    before = ses.choice.refined.copy()
    ses.add_click(2, 2, 1)  # an object click far outside: the refined mask must take it in
    assert ses.source == "refined" and ses.choice.refined[2, 2] and "1 click" in ses.describe()
    ses.add_click(30, 32, 0)  # background inside the disc
    assert not ses.choice.refined[32, 30]
    ses.undo()
    ses.undo()
    assert ses.clicks == () and np.array_equal(ses.choice.refined, before)
    otsu = InspectSession(img, "ball", heat, refiner=get_refiner("otsu"))
    otsu.refine()
    with pytest.raises(SessionError, match="takes points") as refused:
        otsu.add_click(3, 3, 1)
    from pipeline.refine import point_refiners

    assert all(name in str(refused.value) for name in point_refiners()) and "clicks" in point_refiners()


def test_a_click_refiner_takes_the_clicks_and_the_refiner_keeps_the_start(scene, tmp_path):
    """The studio's 'clicks refine with': the clicks go to their own refiner (here `clicks`,
    every click honoured exactly) while the mask without clicks, and the threshold chosen with
    it, stay the session's refiner's (here otsu, which takes no clicks at all); what is saved
    names the refiner that made the mask."""
    img, heat, disc = scene
    clicks = get_refiner("clicks")
    ses = InspectSession(img, "ball", heat, refiner=get_refiner("otsu"), click_refiner=clicks)
    ses.start()
    start, t = ses.choice.refined.copy(), ses.threshold
    assert ses.choice.refiner == "otsu"
    ses.add_click(2, 2, 1)  # far outside the disc: only the clicks refiner can take it in
    ses.add_click(30, 32, 0)  # the disc's centre as background
    want = clicks(img, ses.heat, points=[(2, 2), (30, 32)], labels=[1, 0]).mask
    assert ses.choice.refiner == "clicks" and np.array_equal(ses.current_mask(), want)
    assert ses.current_mask()[2, 2] and not ses.current_mask()[32, 30] and ses.threshold == t
    assert "refined by clicks with 2 clicks" in ses.describe()
    with Store(tmp_path / "s") as store:
        rec = store.get(ses.to_store(store, "accepted"))
        assert rec.meta["refiner"] == "clicks" and rec.meta["clicks"] == [[2, 2, 1], [30, 32, 0]]
        assert np.array_equal(store.masks(rec)[0][1], want)
    ses.set_click_refiner(get_refiner("grabcut"))  # another click refiner: the same clicks, refined again
    assert ses.choice.refiner == "grabcut" and ses.choice.refined[2, 2] and ses.clicks[-1] == (30, 32, 0)
    ses.set_click_refiner(None)  # none: the session's refiner takes the clicks, and otsu takes none
    assert ses.choice.refiner == "otsu"
    with pytest.raises(SessionError, match="takes points"):
        ses.add_click(5, 5, 1)
    ses.set_click_refiner(clicks)
    ses.clear_clicks()
    assert ses.clicks == () and np.array_equal(ses.choice.refined, start) and ses.choice.refiner == "otsu"


def test_to_store_saves_exactly_the_current_mask_with_its_kind(scene, tmp_path):
    img, heat, disc = scene
    with Store(tmp_path / "s") as store:
        for action, kind in (("threshold", "generated"), ("refined", "refined"), ("edit", "user")):
            ses = InspectSession(img, "ball", heat, refiner=get_refiner("grabcut"))
            ses.refine()
            if action == "threshold":
                ses.set_threshold(0.25)
            elif action == "refined":
                ses.use_source("refined")
            else:
                ses.apply_strokes(add=disc)
            sid = ses.to_store(store, "accepted")
            rec = store.get(sid)
            assert rec.instances[0].source == kind
            assert np.array_equal(store.masks(rec)[0][1], ses.current_mask())
            if kind == "generated":
                assert rec.user_threshold == pytest.approx(0.25) and rec.threshold == pytest.approx(ses.choice.threshold)


def test_composite_keeps_the_crowd_flags_of_the_background(tmp_path):
    """A photo's COCO crowd regions stay crowd regions in its composite, with exactly the
    pixels the pasted object leaves them; a fully covered instance leaves with its flag."""
    from pipeline.session import InsertSession

    rng = np.random.default_rng(0)
    bg = rng.integers(0, 255, (80, 100, 3), np.uint8)
    crowd = np.zeros((80, 100), bool)
    crowd[10:60, 5:60] = True  # a crowd of people, partly covered below
    person = np.zeros((80, 100), bool)
    person[20:50, 70:90] = True  # one person, not crowd
    hidden = np.zeros((80, 100), bool)
    hidden[42:46, 32:36] = True  # a small object the paste covers completely
    store = Store(tmp_path / "s")
    sid = store.add(NewSample(bg, ["person", "cup"], instances=[("person", crowd), ("person", person), ("cup", hidden)],
                              instance_sources=["imported"] * 3, instance_crowd=[True, False, False], status="accepted"))
    ses = InsertSession.from_record(store, store.get(sid))
    assert ses.crowd == [True, False, False]
    fg = np.full((30, 30, 3), (200, 40, 40), np.uint8)
    ses.set_object(fg, np.ones((30, 30), bool), "dog", "test")
    ses.centre, ses.scale = (34.0, 44.0), 30 / 80  # box x 19..49, y 29..59: inside the crowd region
    comp = ses.compose()
    new = comp.instances[-1][1]
    assert new[42:46, 32:36].all() and comp.record["dropped"] == ["cup"]
    rec = store.get(ses.to_store(store, tags=["composite"]))
    assert [(i.class_name, i.iscrowd, i.source) for i in rec.instances] == [
        ("person", True, "imported"), ("person", False, "imported"), ("dog", False, "inserted")]
    masks = store.masks(rec)
    assert np.array_equal(masks[0][1], crowd & ~new) and (crowd & new).any()
    assert np.array_equal(masks[1][1], person) and np.array_equal(masks[2][1], new)
    # and the COCO export writes the crowd region as a crowd annotation
    import json

    from pipeline.export import export

    export(store, "coco", tmp_path / "coco", tags=["composite"])
    doc = json.loads((tmp_path / "coco" / "annotations" / "instances_train.json").read_text())
    assert len(doc["images"]) == 1 and [a["iscrowd"] for a in doc["annotations"]] == [1, 0, 0]


@pytest.mark.slow
def test_a_heat_view_chosen_before_or_after_generating_is_the_session_s(tmp_path):
    """from_sample(view=) starts on that heat view (as the Generate tab does when the view was
    set before generating), show_view moves between views and back, each checked before
    anything changes; check_generation_request refuses what Accept would refuse."""
    from pipeline.errors import SessionError
    from pipeline.generate import generate, load_pipeline
    from pipeline.inspect import InspectSession, check_generation_request
    from pipeline.masks import quantize_heat
    from pipeline.refine import get_refiner

    sample = generate(load_pipeline(None), "ball", 0, steps=10)[0]
    res = str(sample.attention.resolutions[0])
    refiner = get_refiner("grabcut")
    ses = InspectSession.from_sample(sample, refiner=refiner, view=(res, 0, 999))
    assert ses.view == (res, 0, 999) and not ses.can_undo
    one = quantize_heat(ses.heat_for(res, 0, 999))
    every = quantize_heat(ses.heat_for("all", 0, 999))
    assert np.array_equal(ses.heat, one) and not np.array_equal(one, every)
    assert ses.choice is not None and ses.threshold == ses.choice.threshold  # refined on that view
    ses.show_view("all", 0, 999, refiner)
    assert ses.view == ("all", 0, 999) and np.array_equal(ses.heat, every)
    before = (ses.heat.copy(), ses.view, ses.refiner)
    with pytest.raises(SessionError, match="range is empty"):
        ses.show_view(res, 500, 100, None)  # the range is checked before the refiner would change
    assert np.array_equal(ses.heat, before[0]) and ses.view == before[1] and ses.refiner is before[2]
    plain = InspectSession.from_sample(sample, refiner=refiner, view=("all", 0, 999))
    assert plain.view == (None, None) and np.array_equal(plain.heat, quantize_heat(sample.heat_map))
    assert check_generation_request("  ball ") == "ball"
    for name, t, match in (("", (0, 999), "Type a class name"), ("cat/dog", (0, 999), "class"),
                           ("ball", (600, 100), "range is empty")):
        with pytest.raises(Exception, match=match):
            check_generation_request(name, *t)
