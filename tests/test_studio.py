"""The studio through its API (gradio_client) against a launched app, with the embedded model."""
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from pipeline.dataset import Store
from studio_server import (C_EXPORT_INFO, C_FILE, C_MESSAGE, G_CHOICE, G_MASK, G_STORE, G_THRESHOLD,  # noqa: F401
                           I_ACCEPT, I_BG_INFO, I_COMP_INFO, I_COMPOSITE, I_MASKS, I_ROWS, Screen, file_path,
                           T_MASK, T_STORE, running_studio, said, saved_id)

pytestmark = pytest.mark.slow

GEN_ARGS = dict(template="a photograph of a {}", steps=15, guidance=5, model="embedded", refiner_name="grabcut",
                sam_ckpt="", resolution="all", t_lo=0, t_hi=999)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    store = tmp_path_factory.mktemp("studio") / "data"
    with running_studio(store) as url:
        yield url, store


def client(url):
    return Screen(url)


def gen(c, cls, seed):
    return c.predict(class_name=cls, seed=seed, api_name="/generate", **GEN_ARGS)


def test_generate_threshold_accept_export_round_trip(studio, tmp_path):
    url, store_dir = studio
    c = client(url)
    out = gen(c, "ball", 5)
    image = np.asarray(Image.open(out[0]))
    assert image.shape[0] >= 320  # the 64x64 sample, enlarged for display
    threshold = out[G_THRESHOLD]
    assert 0 < threshold < 1 and "chose threshold" in out[G_CHOICE]
    m_lo = np.asarray(Image.open(c.predict(threshold=0.1, api_name="/threshold")[T_MASK]))
    m_hi = np.asarray(Image.open(c.predict(threshold=0.9, api_name="/threshold")[T_MASK]))
    assert m_lo.shape == (64, 64, 3)  # the threshold's views go at the image's own size (the page enlarges them)
    native = image[::image.shape[0] // 64, ::image.shape[1] // 64]
    tint = lambda m: int((np.abs(m.astype(int) - native.astype(int)).sum(-1) > 30).sum())
    assert tint(m_lo) > tint(m_hi)  # a lower threshold shows a bigger mask
    c.predict(threshold=threshold, api_name="/threshold")  # back to the refiner's choice
    msg = c.predict(tags="api", api_name="/accept")[G_STORE]
    assert msg.startswith("saved as #")
    sid = saved_id(msg)
    s = Store(store_dir)
    rec = s.get(sid)
    assert rec.classes == ["ball"] and rec.seed == 5 and rec.status == "accepted" and rec.tags == ["api"]
    assert rec.threshold == pytest.approx(threshold)
    s.close()
    c.predict(api_name="/refresh")
    assert c.predict(tags="api", api_name="/accept")[G_STORE] == msg  # accepting again: the same one row
    c.predict(threshold=0.2, api_name="/threshold")
    assert c.predict(threshold=0.2, api_name="/threshold")[T_STORE].startswith("● unsaved changes")
    c.predict(threshold=threshold, api_name="/threshold")
    assert c.predict(threshold=threshold, api_name="/threshold")[T_STORE] == msg  # back to what is saved
    out = c.predict(fmt="coco", status="accepted", val=0, api_name="/export")
    zpath = file_path(out[C_FILE])
    with zipfile.ZipFile(zpath) as z:
        z.extractall(tmp_path / "x")
    from pycocotools.coco import COCO

    coco = COCO(str(tmp_path / "x" / "annotations" / "instances_train.json"))
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[sid]))[0]
    s = Store(store_dir)
    assert np.array_equal(coco.annToMask(ann).astype(bool), s.mask(s.get(sid).instances[0].mask))


def test_bad_input_gives_clear_errors(studio):
    """Each mistake is told (a toast; one console line) and changes nothing: the tab is
    rendered from the session as it was (here: none yet)."""
    url, _ = studio
    c = client(url)
    out = c.predict(class_name="ball", seed=0, api_name="/generate", **{**GEN_ARGS, "template": "a photograph of {}s"})
    said(url, "does not occur in the prompt")
    assert out[0] is None and out[G_STORE] == ""
    c.predict(class_name="ball", seed=0, api_name="/generate", **{**GEN_ARGS, "template": "a photograph of a cat"})
    said(url, "template")
    c.predict(class_name="cat/dog", seed=0, api_name="/generate", **GEN_ARGS)
    said(url, "bad class name 'cat/dog'")  # before generating, not at Accept
    assert c.predict(tags="", api_name="/accept")[G_STORE] == ""
    said(url, "Generate an image first")
    c.predict(status="any", classes="zebra", tag="", api_name="/filter")
    out = c.predict(fmt="voc", status="accepted", val=0, api_name="/export")
    said(url, "no samples match")
    assert "Traceback" not in url.log.read_text()


def test_insert_objects_flow(studio):
    url, store_dir = studio
    c = client(url)
    gen(c, "kite", 11)
    sid = saved_id(c.predict(tags="", api_name="/accept")[G_STORE])
    c.predict(choice=f"dataset:{sid}", upload=None, caption="a kite in the sky", model="embedded",
              api_name="/insert_load")
    c.predict(class_name="star", seed=3, model="embedded", source="generate with the model", api_name="/insert_object")
    c.predict(api_name="/insert_place")
    out = c.predict(scale=0.4, method="learned", api_name="/insert_preview")
    assert "star" in out[I_COMP_INFO] and "kite" in out[I_COMP_INFO] and out[I_ACCEPT].startswith("● not saved")
    c.predict(scale=0.4, method="rainnet", api_name="/insert_preview")
    said(url, "'rainnet' needs its published weights")
    c.predict(scorer="default", scorer_weights="/nowhere/fopa.pth", api_name="/insert_place")
    said(url, "'default' takes no weights")
    c.predict(scorer="fopa", scorer_weights="/nowhere/fopa.pth", api_name="/insert_place")
    said(url, "does not exist")
    msg = c.predict(tags="insert", api_name="/insert_accept")[I_ACCEPT]
    new_id = saved_id(msg)
    s = Store(store_dir)
    rec = s.get(new_id)
    assert rec.classes == ["kite", "star"] and rec.inserted[0]["class"] == "star"
    kite, star = [s.mask(i.mask) for i in rec.instances]
    assert not (kite & star).any() and star.any()


def test_eight_clients_never_see_each_others_work(studio):
    url, store_dir = studio
    jobs = [("ball", 100), ("star", 101), ("leaf", 102), ("kite", 103), ("heart", 104), ("flower", 105),
            ("pumpkin", 106), ("aeroplane", 107)]

    def work(job):
        cls, seed = job
        c = client(url)
        gen(c, cls, seed)
        c.predict(threshold=0.5, api_name="/threshold")
        msg = c.predict(tags=f"client-{seed}", api_name="/accept")[G_STORE]
        return cls, seed, saved_id(msg)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, jobs))
    s = Store(store_dir)
    for cls, seed, sid in results:
        rec = s.get(sid)
        assert (rec.classes, rec.seed, rec.tags) == ([cls], seed, [f"client-{seed}"])
    assert len({sid for _, _, sid in results}) == 8


def test_dragged_box_sets_centre_and_the_largest_fitting_scale():
    from pipeline.placement import box_size
    from pipeline.insert import InsertSession, SessionError

    bg = np.zeros((240, 320, 3), np.uint8)
    fg_mask = np.zeros((64, 64), bool)
    fg_mask[10:50, 20:40] = True  # a 40 x 20 (h x w) object
    ses = InsertSession(bg)
    ses.set_object(np.zeros((64, 64, 3), np.uint8), fg_mask, "star")
    drawn = (100.0, 60.0, 180.0, 200.0)  # 80 wide, 140 tall
    scale = ses.move_to(drawn)
    assert ses.centre == (140.0, 130.0)
    w, h = box_size(scale, (40, 20), (240, 320))
    assert h <= 141 and w <= 81 and (abs(h - 140) <= 1 or abs(w - 80) <= 1)  # fits, touching one side
    x1, y1, x2, y2 = ses.box_for()
    assert 100 <= x1 and x2 <= 181 and 60 <= y1 and y2 <= 201
    with pytest.raises(SessionError, match="too small"):
        ses.move_to((10, 10, 11, 50))


def test_sam_refiner_from_a_transformers_folder(studio, tmp_path):
    """The SAM field takes a transformers SAM folder (here a small random SAM the project
    builds); a hub id that cannot be fetched offline says what to do instead of failing."""
    from pipeline.testing import save_tiny_sam

    url, _ = studio
    c = client(url)
    folder = save_tiny_sam(tmp_path / "sam")
    out = c.predict(class_name="ball", seed=7, api_name="/generate",
                    **{**GEN_ARGS, "refiner_name": "sam", "sam_ckpt": str(folder)})
    # random weights may find no object: then the refiner says so; either way SAM ran on the image
    info = out[G_CHOICE]
    assert info.startswith("sam chose threshold") or "sam refiner found no object pixels" in info, info
    out = c.predict(class_name="ball", seed=7, api_name="/generate",
                    **{**GEN_ARGS, "refiner_name": "sam", "sam_ckpt": "facebook/sam-vit-base"})
    assert "hf download facebook/sam-vit-base" in out[G_CHOICE]


def test_insert_a_real_object_from_the_bank_into_a_real_photo(studio):
    """Copy-paste with placement and harmonization: a COCO instance (coco-mini, imported into
    the store) inserted into an example photo that has its own COCO masks; the old masks
    lose exactly the covered pixels."""
    from conftest import shared
    from pipeline.export import import_coco
    from studio.insert import examples_store_dir

    url, store_dir = studio
    mini = shared("coco-mini")
    with Store(store_dir) as s:
        import_coco(s, mini / "instances.json", mini / "images", limit=12)
    c = client(url)
    with Store(examples_store_dir()) as ex:
        bg_rec = ex.query()[0]
        bg_masks = ex.masks(bg_rec)
    out = c.predict(choice=f"examples:{bg_rec.id}", upload=None, caption="", model="embedded",
                    api_name="/insert_load")
    rows, info = out[I_ROWS], out[I_BG_INFO]
    assert "example photo" in info
    who = {r[0]: r[2] for r in rows["data"]}
    banked = [name for name, sup in who.items() if "bank" in sup]
    assert banked, who  # the thesaurus' suggestions that a photo in the store can supply
    c.predict(class_name=banked[0], seed=0, model="embedded", source="cut from a photo (object bank)",
              api_name="/insert_object")
    c.predict(api_name="/insert_place")
    c.predict(scale=0.3, method="none", api_name="/insert_preview")
    new_id = saved_id(c.predict(tags="bank", api_name="/insert_accept")[I_ACCEPT])
    with Store(store_dir) as s:
        rec = s.get(new_id)
        masks = s.masks(rec)
        assert rec.instances[-1].source == "inserted" and masks[-1][0] == banked[0]
        assert rec.meta["object"].startswith("your dataset: sample #")
        # #24: the composite's exports carry the example photo's licence, the object's beside it
        from pipeline.export.common import provenance
        prov = provenance(rec, s)
        assert prov["origin"] == "composite" and prov["license"] == bg_rec.meta["photo"]["license"]
        assert prov["background"]["uid"] == bg_rec.uid and prov["inserted"][0]["origin"] == "photo"
        assert prov["inserted"][0]["license"]["name"]
        new = masks[-1][1]
        kept = [(c_, m & ~new) for c_, m in bg_masks if (m & ~new).any()]
        assert [c_ for c_, _ in kept] == [c_ for c_, _ in masks[:-1]]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(kept, masks[:-1]))


def test_a_fresh_studio_shows_examples_in_curate_apart_from_the_users_dataset(tmp_path):
    """A studio on an empty store serves the examples (photos with their COCO masks and
    embedded-model samples) in the Curate tab's page itself, open and labelled as examples;
    the user's dataset and its export stay empty until the user adds them."""
    import json
    import urllib.request

    from pipeline.examples import EXAMPLES, GENERATED_SAMPLES

    store_dir = tmp_path / "empty"
    with running_studio(store_dir) as url:
        config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
        by_id = {c["props"]["elem_id"]: c["props"] for c in config["components"]
                 if c.get("props", {}).get("elem_id")}
        box, gallery = by_id["curate-examples-box"], by_id["curate-examples"]
        n = 4 + len(GENERATED_SAMPLES)  # the shipped photos and generated samples
        assert box["open"] and box["visible"] is not False and "not in your dataset" in box["label"]
        items = gallery["value"]
        assert len(items) == n, items
        captions = [it["caption"] for it in items]
        assert sum("person" in c for c in captions) >= 3 and any("star" in c for c in captions)
        assert str(store_dir) in by_id["curate-examples-note"]["value"]
        with Store(store_dir) as s:
            assert s.count() == 0  # nothing was added to the user's dataset
        c = client(url)
        out = c.predict(fmt="coco", status="accepted", val=0, api_name="/export")
        said(url, "no samples match")
        assert out[C_EXPORT_INFO] == ""  # nothing exported
        assert f"{n} examples" in c.predict(api_name="/examples_copy")[C_MESSAGE]  # the user asks for them
        with Store(store_dir) as s:
            recs = s.query()
            assert len(recs) == n and all("example" in r.tags for r in recs)
            assert sum(r.heat_map is not None for r in recs) == len(GENERATED_SAMPLES)
            shipped = json.loads((EXAMPLES / "instances.json").read_text())["annotations"]
            assert sum(i.iscrowd for r in recs for i in r.instances) == sum(a["iscrowd"] for a in shipped) > 0
        c.predict(status="any", classes="", tag="example", api_name="/filter")
        out = c.predict(fmt="coco", status="accepted", val=0, api_name="/export")
        assert out[C_EXPORT_INFO].startswith(f"{n} images") and file_path(out[C_FILE]).endswith(".zip")


def test_the_threshold_event_lists_every_view_a_step_changes(tmp_path):
    """The slider's event answers THRESHOLD_VIEWS only: a threshold step (with clicks, an open
    editor, after an Accept) must draw no other view, and those indices are the API's."""
    import gradio as gr

    from pipeline.inspect import InspectSession
    from studio.generate import OUTPUTS, THRESHOLD_VIEWS, on_threshold, render

    assert (T_MASK, T_STORE) == (THRESHOLD_VIEWS.index("mask"), THRESHOLD_VIEWS.index("store_info"))
    from pipeline.refine import get_refiner

    from conftest import ROOT

    shipped = np.load(ROOT / "assets" / "examples" / "generated.npz")  # samples of the embedded model
    ses = InspectSession(image=shipped["images"][0], class_name=str(shipped["classes"][0]),
                         heat=shipped["heat"][0].astype(np.float32), refiner=get_refiner("grabcut"))
    ses.start()
    ses.add_click(32, 32, 1)
    ses.use_source("threshold")  # the current mask follows the slider
    ses.shown["editor_open"] = True
    render(ses)
    seen = set()
    for t in (0.2, 0.35, "accept", 0.8, 0.8):
        if t == "accept":
            with Store(tmp_path / "data") as store:
                ses.to_store(store, "accepted")
            render(ses)
            continue
        out = dict(zip(OUTPUTS, on_threshold(ses, t)[1:]))
        drawn = {n for n, v in out.items() if not (isinstance(v, dict) and v == gr.skip())}
        assert drawn <= set(THRESHOLD_VIEWS), drawn - set(THRESHOLD_VIEWS)
        seen |= drawn
    assert {"mask", "thr", "mask_label", "editor", "store_info"} <= seen  # the unsaved marker after the Accept


def shipped_session(side: int | None = None, render_it: bool = True):
    """An InspectSession (grabcut) on the first shipped embedded-model sample, started and
    rendered once; ``side``: its image and heat map resized to side x side."""
    import cv2

    from pipeline.inspect import InspectSession
    from pipeline.refine import get_refiner
    from studio.generate import render

    from conftest import ROOT

    shipped = np.load(ROOT / "assets" / "examples" / "generated.npz")
    image, heat = shipped["images"][0], shipped["heat"][0].astype(np.float32)
    if side is not None:
        image = cv2.resize(image, (side, side), interpolation=cv2.INTER_NEAREST)
        heat = cv2.resize(heat, (side, side))
    ses = InspectSession(image=image, class_name=str(shipped["classes"][0]), heat=heat, refiner=get_refiner("grabcut"))
    ses.start()
    if render_it:
        render(ses)
    return ses


def test_a_click_without_a_position_is_not_counted_and_says_so(caplog):
    """Gradio's image sends no position for a click that lands while the picture is reloading
    (each click redraws the picture with its dots; seen in CI on a loaded machine): the click
    is refused in words the user can act on, the session keeps its clicks, nothing is logged
    as a bug; the next click with a position counts. Same for the insert tab's placement click."""
    import logging

    import gradio as gr

    from studio.generate import CLICK_MODES, on_click

    ses = shipped_session()
    click = lambda index: gr.SelectData(None, {"index": index, "value": None})
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="click again"):  # the toast, outside a page
        for index in (None, [None, None], [10, None]):
            out = on_click(ses, CLICK_MODES[1], click(index))
            assert out[0] is ses and ses.clicks == ()
    assert "unexpected error" not in caplog.text
    assert caplog.text.count("was still loading, so it has no position and was not counted: click again") == 3
    on_click(ses, CLICK_MODES[1], click([100, 120]))
    # the studio's clicks go to the `clicks` refiner (DEFAULT_CLICK_REFINER), whatever refines the start
    assert len(ses.clicks) == 1 and ses.choice.refiner == "clicks" and ses.refiner.name != "clicks"
    x, y, _ = ses.clicks[0]
    assert ses.current_mask()[y, x]

    from pipeline.errors import SessionError
    from studio.insert import click as place_click

    class Placing:  # only what the placement click reads before the position
        placement = object()

    with pytest.raises(SessionError, match="click again"):  # the handler's policy is the one tested above
        place_click.__wrapped__(Placing(), click([None, None]))


def test_quick_clicks_arriving_out_of_order_keep_the_order_they_were_made():
    """The page stamps each click as it is made (CLICK_MADE_AT_JS); quick clicks are separate
    requests, and a click that reaches the server after a later one goes in where it was made:
    the session ends as if they had arrived in order (same clicks, same refined mask)."""
    import gradio as gr

    from studio.generate import CLICK_MODES, on_click_record

    spots = [(50, 60), (200, 70), (60, 220), (230, 240)]  # display pixels (the 64x64 image at 320)

    def session(order):
        ses = shipped_session(render_it=False)
        for i in order:
            evt = gr.SelectData(None, {"index": list(spots[i]), "value": None})
            on_click_record(ses, CLICK_MODES[1], "clicks", "", 1000.0 + 40 * i, evt)
        return ses

    in_order, shuffled = session([0, 1, 2, 3]), session([0, 2, 3, 1])
    assert [c[:2] for c in in_order.clicks] == [(x // 5, y // 5) for x, y in spots]
    assert shuffled.clicks == in_order.clicks
    assert np.array_equal(shuffled.current_mask(), in_order.current_mask())
    assert session([3, 2, 1, 0]).clicks == in_order.clicks


@pytest.mark.parametrize("side", [64, 256])
def test_a_threshold_step_answers_the_same_on_the_loop_and_in_a_thread(side):
    """The slider's coroutine draws a small picture's step on the server's loop and a larger
    one's in a worker thread (studio.console.LOOP_PIXELS): the same views either way."""
    import asyncio

    from studio.console import LOOP_PIXELS
    from studio.generate import THRESHOLD_VIEWS, on_threshold_views, threshold_views

    assert (side * side <= LOOP_PIXELS) == (side == 64)
    sessions = [shipped_session(side) for _ in range(2)]
    got = asyncio.run(on_threshold_views(sessions[0], 0.3))
    want = threshold_views(sessions[1], 0.3)
    assert len(got) == len(THRESHOLD_VIEWS)
    mask = THRESHOLD_VIEWS.index("mask")
    assert got[mask].shape[:2] == (side, side) and np.array_equal(got[mask], want[mask])
    assert sessions[0].threshold == sessions[1].threshold == 0.3
