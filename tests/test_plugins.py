"""Plug-in families: one protocol and one registry each. A refiner, scorer or harmonizer added
with one class and one registry line shows up in the CLI's choices, in batch runs and in the
studio's dropdowns without touching any of them."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED
from pipeline.errors import PipelineError
from pipeline.harmonize import HARMONIZERS, Harmonizer, HarmonizeError, available_methods, get_harmonizer
from pipeline.placement import SCORERS, PlacementResult, Scorer, box_size, get_scorer
from pipeline.plugins import Registry, accepted_options
from pipeline.refine import REFINERS, BaseRefiner, Refiner, RefineResult, RefinementError, check_inputs, get_refiner

FOPA_DIR = SHARED / "libcom" / "tests" / "fopa_heat_map"


# -- three plug-ins written the way a contributor would: one class each -------------------------
class HalfHeatRefiner(BaseRefiner):
    """Keeps the heat map's pixels >= 0.5 (a known, checkable mask)."""

    name = "halfheat"
    calls = 0

    def __call__(self, image, heat, attention=None, points=None, labels=None):
        heat = check_inputs(image, heat)
        type(self).calls += 1
        return RefineResult(heat >= 0.5, self.name)


class CornerScorer:
    """Always the top-left box at scale 0.4."""

    name = "corner"

    def __call__(self, background, fg, fg_mask, *, scales=None, existing_masks=(), fg_class=None, top_k=5):
        ys, xs = np.nonzero(fg_mask)
        w, h = box_size(0.4, (np.ptp(ys) + 1, np.ptp(xs) + 1), background.shape[:2])
        maps = np.zeros((1, *background.shape[:2]), np.float32)
        maps[0, h // 2, w // 2] = 1
        return PlacementResult((0.4,), maps, [(0.4, (0, 0, w, h), 1.0)])


class InvertHarmonizer:
    name = "invert"

    def __call__(self, image, mask):
        out = image.copy()
        out[mask] = 255 - out[mask]
        return out


@pytest.fixture
def registered():
    """The three registered with one line each, and removed afterwards."""
    REFINERS.register("halfheat", HalfHeatRefiner)
    SCORERS.register("corner", CornerScorer)
    HARMONIZERS.register("invert", InvertHarmonizer)
    yield
    REFINERS.unregister("halfheat")
    SCORERS.unregister("corner")
    HARMONIZERS.unregister("invert")


def test_every_registered_plugin_follows_its_protocol():
    for name in REFINERS:
        cls = REFINERS[name]
        for attr in ("takes_points", "needs_self_attention", "stateful"):
            assert isinstance(getattr(cls, attr), bool), (name, attr)
        assert cls.name == name
    for name in ("grabcut", "affinity", "otsu"):  # the ones that need no weights
        assert isinstance(get_refiner(name), Refiner)
    assert [n for n in REFINERS if REFINERS[n].needs_self_attention] == ["affinity"]
    assert [n for n in REFINERS if REFINERS[n].stateful] == ["sam"]
    for name in available_methods():
        h = get_harmonizer(name)
        assert isinstance(h, Harmonizer) and h.name == name
    assert isinstance(get_scorer("default"), Scorer) and get_scorer("default").name == "default"
    assert SCORERS["fopa"].name == "fopa" and HARMONIZERS["rainnet"].name == "rainnet"  # imported on first use


def test_options_a_plugin_does_not_use_are_ignored():
    # callers pass what they have; each plug-in takes what its constructor names
    assert get_refiner("grabcut", checkpoint="/nowhere/sam.pth", device="cpu").name == "grabcut"
    assert get_harmonizer("ring", checkpoint="/nowhere/net_G.pth", strength=0.3).strength == 0.3
    assert get_scorer("default", checkpoint="/nowhere/fopa.pth", device="cpu").name == "default"
    assert accepted_options(lambda a, b=1: None, {"b": 2, "c": 3, "a": None}) == {"b": 2}
    assert accepted_options(lambda **kw: None, {"b": 2, "c": None}) == {"b": 2}


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(RefinementError, match="grabcut, sam, affinity, otsu"):
        get_refiner("magic")
    with pytest.raises(HarmonizeError, match="unknown harmonization 'magic'"):
        get_harmonizer("magic")
    with pytest.raises(PipelineError, match="default, fopa"):
        get_scorer("magic")
    reg = Registry("thing")
    with pytest.raises(ValueError, match="lower-case"):
        reg.register("Mixed", object)
    reg["box"] = dict  # dict-style registration, as the registries were dicts before
    assert "box" in reg and reg.names() == ["box"] and reg.create("box", checkpoint=None) == {}


def test_registries_say_which_plugins_need_weights():
    from pipeline.harmonize import HARMONIZERS, available_methods
    from pipeline.placement import SCORERS

    assert SCORERS.needs_checkpoint("fopa") and not SCORERS.needs_checkpoint("default")
    assert HARMONIZERS.needs_checkpoint("rainnet") and not HARMONIZERS.needs_checkpoint("pct")
    assert "rainnet" not in available_methods() and "pct" in available_methods()
    reg = Registry("thing")

    class Weighted:
        needs_checkpoint = True

    reg.register("weighted", Weighted)
    reg.register("plain", dict)
    assert reg.needs_checkpoint("weighted") and not reg.needs_checkpoint("plain")


@pytest.fixture(scope="module")
def fopa_sample():
    if not FOPA_DIR.exists():
        pytest.skip(f"{FOPA_DIR} not found (the shared data folder is beside the project)")

    def rgb(p):
        return np.asarray(Image.open(p).convert("RGB"))

    fm = np.asarray(Image.open(FOPA_DIR / "foreground_mask/1674.jpg").convert("L")) > 127
    return rgb(FOPA_DIR / "background/1674.jpg"), rgb(FOPA_DIR / "foreground/1674.jpg"), fm


@pytest.mark.slow
def test_scorers_share_one_signature_and_scores_in_0_1(fopa_sample):
    """The README calls FOPA as ``scorer(background, fg, fg_mask)``: the default takes the same
    call (it used to take (background, fg_mask) and fail with "too many values to unpack")."""
    import torch

    from pipeline.fopa import FopaScorer, ObPlaNet

    bg, fg, fm = fopa_sample
    torch.manual_seed(0)
    for scorer in (get_scorer("default"), FopaScorer(net=ObPlaNet())):
        res = scorer(bg, fg, fm, scales=(0.2, 0.3, 0.4), top_k=3)
        assert res.maps.shape == (3, *bg.shape[:2]) and res.maps.dtype == np.float32
        assert 0 <= res.maps.min() and res.maps.max() <= 1
        scores = [b[2] for b in res.boxes]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores), scorer.name
        for s, (x1, y1, x2, y2), _ in res.boxes:
            assert s in (0.2, 0.3, 0.4) and 0 <= x1 < x2 <= bg.shape[1] and 0 <= y1 < y2 <= bg.shape[0]
    with pytest.raises(PipelineError, match="does not match"):
        get_scorer("default")(bg, fg, fm[:-1])
    # the default's best score is exactly 1 (it used to reach 1.00098 on this very sample)
    res = get_scorer("default")(bg, fg, fm, fg_class="dog")
    assert max(res.maps.max(), res.boxes[0][2]) == 1 and res.boxes[0][2] <= 1


def test_new_plugins_show_in_cli_choices(registered):
    from pipeline.__main__ import build_parser

    ap = build_parser()
    args = ap.parse_args(["batch", "--classes", "ball", "--per-class", "1", "--store", "s", "--refiner", "halfheat",
                          "--scorer", "corner", "--harmonizer", "invert"])
    assert (args.refiner, args.scorer, args.harmonizer) == ("halfheat", "corner", "invert")
    assert ap.parse_args(["generate", "--class", "ball", "--out", "o", "--refiner", "halfheat"]).refiner == "halfheat"
    with pytest.raises(SystemExit):  # a name nobody registered is refused by argparse
        ap.parse_args(["generate", "--class", "ball", "--out", "o", "--refiner", "nope"])


@pytest.mark.slow
def test_new_plugins_run_in_a_batch(registered, tmp_path):
    from pipeline.batch import BatchSpec, FilterConfig, run_batch
    from pipeline.dataset import Store
    from pipeline.thesaurus import Thesaurus

    th = Thesaurus.build(["a ball next to a star", "a star and a ball"], vocabulary=["ball", "star"])
    spec = BatchSpec.of(("ball", "star"), 1, steps=4, batch_size=2, warmup=0, refiner="halfheat",
                        filter=FilterConfig(0, 0, 0, 1, 0, 1), objects=1, thesaurus=str(th.save(tmp_path / "t.npz")),
                        scorer="corner", harmonizer="invert")
    HalfHeatRefiner.calls = 0
    store = Store(tmp_path / "s")
    rep = run_batch(spec, store)
    assert HalfHeatRefiner.calls >= 2 and all(r.kept == 1 for r in rep.classes.values())
    for rec in store.query(run=spec.run_key):  # the stored refined mask is the new refiner's output
        heat = store.array(rec.heat_map).astype(np.float32)
        assert np.array_equal(store.mask(rec.refined_mask), heat >= 0.5)
    comps = store.query(tags=["composite"])
    assert comps, rep
    for comp in comps:
        record = comp.inserted[0]
        assert record["harmonization"] == "invert"  # the harmonizer carried its name into the record
        assert record["box"][:2] == [0, 0] and record["placement_score"] == 1.0  # the corner scorer placed it
        base = store.get_by_uid(comp.meta["batch"]["base"])
        obj = store.mask(comp.instances[-1].mask)
        before, after = store.image(base.image).astype(int), store.image(comp.image).astype(int)
        assert np.array_equal(after[~obj], before[~obj])  # only the object's pixels changed


@pytest.mark.slow
def test_new_plugins_show_in_the_studio_dropdowns(registered, tmp_path):
    import gradio as gr

    from studio.ui import build_app

    app = build_app(tmp_path / "data")
    dropdowns = {b.label: [c[1] if isinstance(c, (tuple, list)) else c for c in b.choices]
                 for b in app.blocks.values() if isinstance(b, gr.Dropdown)}
    assert "halfheat" in dropdowns["refiner"] and "grabcut" in dropdowns["refiner"]
    assert "invert" in dropdowns["harmonization"] and "learned" in dropdowns["harmonization"]
    assert "corner" in dropdowns["placement scorer"] and "fopa" in dropdowns["placement scorer"]
    assert "rainnet" in dropdowns["harmonization"]  # listed; it asks for its weights when chosen
