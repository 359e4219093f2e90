"""The Insert tab's rules outside the UI (pipeline.insert): what is suggested and who can
supply it, what the model cannot draw, where a placement is proposed; and the studio's render
of a session (a new background leaves nothing of the previous one)."""
import numpy as np
import pytest

from pipeline.errors import SessionError
from pipeline.insert import InsertSession, check_drawable, model_vocabulary, suggest_objects
from pipeline.thesaurus import Thesaurus

from conftest import ROOT

THESAURUS = ROOT / "assets" / "thesaurus_coco.npz"


def test_offline_suggestions_list_what_can_be_supplied_first():
    th = Thesaurus.load(THESAURUS)
    vocab = model_vocabulary("embedded")
    rows, note = suggest_objects("a dog on a couch", th, vocab, bank_classes={"person", "car"})
    names = [r.name for r in rows]
    supplied = [r for r in rows if r.supplied]
    assert note is None and rows[:len(supplied)] == supplied  # what can be supplied comes first
    assert {"person", "car"} <= set(names[:len(supplied)]) and set(vocab) <= set(names[:len(supplied)])
    assert any(not r.supplied for r in rows)  # the thesaurus' other ideas stay, last, marked
    rows, note = suggest_objects("zzz", th, vocab, bank_classes=())
    assert "no COCO class" in note and [r.name for r in rows] == list(vocab)  # still the model's classes
    assert model_vocabulary("sd15") is None  # a real model draws any class


def test_a_class_the_model_cannot_draw_is_refused_before_generating():
    assert check_drawable(" star ", "embedded") == "star"
    with pytest.raises(SessionError, match="cannot draw 'dog'"):
        check_drawable("dog", "embedded")
    assert check_drawable("dog", "sd15") == "dog"
    with pytest.raises(Exception, match="bad class name"):
        check_drawable("cat/dog", "sd15")


def test_a_standing_object_is_not_proposed_on_the_bottom_edge():
    rng = np.random.default_rng(0)
    bg = np.full((240, 320, 3), 120, np.uint8) + rng.integers(0, 8, (240, 320, 3), dtype=np.uint8)
    fg_mask = np.zeros((40, 40), bool)
    fg_mask[5:35, 10:30] = True
    ses = InsertSession(bg)
    ses.set_object(np.zeros((40, 40, 3), np.uint8), fg_mask, "dog")
    ses.propose()
    x1, y1, x2, y2 = ses.box_for()
    assert y2 < 240 - 5, (x1, y1, x2, y2)  # clear of the frame's edge
    assert y2 > 240 * 0.6  # still low: it stands on something


@pytest.mark.slow
def test_render_of_a_new_background_keeps_nothing_of_the_previous_one():
    from studio.insert import OUTPUTS, render

    bg = np.random.default_rng(1).integers(60, 120, (160, 160, 3), dtype=np.uint8)
    fg_mask = np.zeros((32, 32), bool)
    fg_mask[4:28, 8:24] = True
    ses = InsertSession(bg)
    ses.set_object(np.full((32, 32, 3), 200, np.uint8), fg_mask, "star")
    ses.propose()
    ses.compose()
    first = dict(zip(OUTPUTS, render(ses)))
    assert first["composite"] is not None and "not saved" in first["accept_info"]
    again = dict(zip(OUTPUTS, render(ses)))
    assert all(v == {"__type__": "update"} for v in again.values())  # nothing changed: nothing re-sent
    ses.move_centre(10, 10)  # moving the object drops the composite it no longer matches
    moved = dict(zip(OUTPUTS, render(ses)))
    assert moved["composite"] is None and moved["accept_info"] == ""
    new = InsertSession(np.full((64, 64, 3), 30, np.uint8))
    out = dict(zip(OUTPUTS, render(new)))
    assert out["composite"] is None and out["box"] is None and out["accept_info"] == "" and out["object"] is None


def test_the_proposed_box_is_centred_on_the_hottest_pixel_of_the_map_shown():
    """The Insert tab shows the placement map of the box's scale (studio.insert.placement_view:
    ``map_at(scale index, background size)``); the proposed box's centre must be that map's
    argmax (FOPA eq. 4), on real photos with their annotated objects, for a standing and a
    flying class. Boxes were ranked on the working-resolution score the map is resized from,
    and the top one sat 64 px from the map's hottest pixel (dog on 000000129648: x 280 vs 344)."""
    import json

    from PIL import Image

    examples = ROOT / "assets" / "examples"
    coco = json.loads((examples / "instances.json").read_text())
    from pycocotools import mask as mask_utils

    fg_mask = np.zeros((60, 40), bool)
    fg_mask[5:55, 5:35] = True
    checked = 0
    for info in coco["images"]:
        bg = np.asarray(Image.open(examples / "images" / info["file_name"]).convert("RGB"))
        h, w = bg.shape[:2]
        masks = []
        for ann in coco["annotations"]:
            if ann["image_id"] == info["id"] and not ann.get("iscrowd"):
                rles = mask_utils.frPyObjects(ann["segmentation"], h, w)
                masks.append(mask_utils.decode(mask_utils.merge(rles) if isinstance(rles, list) else rles).astype(bool))
        for cls in ("dog", "kite"):
            ses = InsertSession(bg, instances=[("thing", m) for m in masks])
            ses.set_object(np.full((60, 40, 3), 128, np.uint8), fg_mask, cls)
            res = ses.propose()
            si = int(np.argmin([abs(s - ses.scale) for s in res.scales]))
            shown = res.map_at(si, (h, w))
            x1, y1, x2, y2 = ses.box_for()
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            near = shown[max(0, int(cy) - 1): int(cy) + 2, max(0, int(cx) - 1): int(cx) + 2]
            assert near.max() == pytest.approx(float(shown.max()), abs=1e-6), \
                (info["file_name"], cls, (cx, cy), np.unravel_index(np.argmax(shown), shown.shape))
            assert res.boxes[0][2] == pytest.approx(1.0) and float(res.maps.max()) == pytest.approx(1.0)
            checked += 1
    assert checked == 2 * len(coco["images"]) >= 8
