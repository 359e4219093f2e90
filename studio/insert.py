"""The Insert Objects tab: widgets over one :class:`pipeline.insert.InsertSession` (background ->
suggestions -> object -> placement -> harmonized composite -> accept into the dataset).

One-way: every handler changes the session (loading a background makes a new one, so nothing
of the previous photo stays) and returns ``render(session)``, every output of the tab."""
from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
from gradio_image_annotation import image_annotator  # a maintained Gradio component for draggable boxes

from pipeline import viz
from pipeline.access import check_user_path
from pipeline.bank import ObjectBank
from pipeline.dataset import Store
from pipeline.errors import SessionError
from pipeline.export.common import SYNTHETIC_LICENSE, source_provenance
from pipeline.harmonize import HARMONIZERS, default_method
from pipeline.images import load_image_file
from pipeline.insert import InsertSession, check_drawable, model_vocabulary, object_from_sample, suggest_objects
from pipeline.placement import DEFAULT_SCORER, SCORERS
from pipeline.presets import resolve_checkpoint

from .console import add_debug_reader, clicked_point, handler, picture, screen_shows, view
from .state import (EXAMPLES, MINE, MODEL_LOCK, background_choices, bank_classes, client_gone_hook, examples_store_dir,  # noqa: F401
                    generate_one, object_sources, save_session, store_dir_for, thesaurus)

INSERT_KEYS_HELP = ("**Keys** (not while typing): **l** load · **m** make object · **p** propose placement · "
                    "**v** preview · **a** accept")
OBJECT_SOURCES = ["generate with the model", "cut from a photo (object bank)"]
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def instance_map(shape, instances) -> np.ndarray:
    out = np.full((*shape, 3), 0, np.uint8)
    for k, (_, m) in enumerate(instances):
        out[m] = PALETTE[k % len(PALETTE)]
    return out


def _plugin(registry, kind: str, name: str, weights: str | None):
    """The plug-in ``name`` of ``registry`` (placement scorers, harmonizers) with the weights
    from its box; refused when it needs weights and has none, or takes none and was given some."""
    weights = (weights or "").strip() or None
    if registry.needs_checkpoint(name) and weights is None:
        raise SessionError(f"The {kind} '{name}' needs its published weights: give their path under "
                           "'published weights'.")
    if weights is not None and not registry.needs_checkpoint(name):
        raise SessionError(f"The {kind} '{name}' takes no weights: choose the {kind} they belong to, or clear the "
                           "weights box under 'published weights'.")
    return _cached_plugin(registry, name, weights)


@lru_cache(maxsize=8)
def _cached_plugin(registry, name: str, weights: str | None):
    # a network's weights load once, then serve every session
    if weights is None:
        return registry.create(name)
    weights = check_user_path(weights, f"{name} weights")  # public mode: presets, hub ids and allowed folders only
    return registry.create(name, checkpoint=resolve_checkpoint(weights))  # a path or a preset name


# -- render ----------------------------------------------------------------------------------
OUTPUTS = ("place", "suggestions", "obj_class", "bg_info", "object", "scale", "place_info", "box", "composite",
           "masks", "comp_info", "accept_info")


def _k(ses: InsertSession) -> int:
    return viz.display_scale(ses.background.shape[:2])


def placement_view(ses: InsertSession) -> np.ndarray:
    if ses.placement is None:
        bg = ses.background
        return viz.upscale_for_display(viz.overlay_instances(bg, [m for _, m in ses.instances]) if ses.instances else bg)
    scales = ses.placement.scales
    si = int(np.argmin([abs(s - ses.scale) for s in scales]))
    shown = viz.overlay_heat(ses.background, ses.placement.map_at(si, ses.background.shape[:2]), 0.45)
    x1, y1, x2, y2 = ses.box_for()
    cv2.rectangle(shown, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), max(1, min(shown.shape[:2]) // 150))
    return viz.upscale_for_display(shown)


def placement_text(ses: InsertSession) -> str:
    if ses.placement is None:
        return "" if ses.fg is None else "Propose placement (p) to score where the object fits."
    box = list(ses.box_for())
    ranked = "\n".join(f"{i + 1}. scale {s:.2f}, box {b}, score {sc:.2f}"
                       for i, (s, b, sc) in enumerate(ses.placement.boxes))
    return f"box {box} · drag it (from inside) to move, by a corner to resize, or click the heat map\n\n{ranked}"


def box_value(ses: InsertSession):
    if ses.placement is None:
        return None
    k, box = _k(ses), ses.box_for()
    return {"image": viz.upscale_for_display(ses.background),
            "boxes": [{"xmin": box[0] * k, "ymin": box[1] * k, "xmax": box[2] * k, "ymax": box[3] * k,
                       "label": ses.fg_class or "object", "color": (255, 255, 255)}]}


def composite_text(ses: InsertSession) -> str:
    comp = ses.composite
    if comp is None:
        return "" if ses.placement is None else "Preview composite (v) pastes and harmonizes the object here."
    dropped = f" · fully covered, dropped: {', '.join(comp.record['dropped'])}" if comp.record["dropped"] else ""
    return f"instances (back to front): {', '.join(n for n, _ in comp.instances)}{dropped}"


def accept_text(ses: InsertSession) -> str:
    if ses.stored_id is not None:
        return f"saved as #{ses.stored_id} (accepted)"
    return "● not saved: Accept composite (a) saves it" if ses.composite is not None else ""


def render(ses: InsertSession | None) -> tuple:
    """Every output of the tab (in :data:`OUTPUTS` order) for ``ses``."""
    if ses is None:
        return (None, [], gr.update(choices=[], value=None), "", None, gr.skip(), "", None, None, None, "", "")
    names = [s.name for s in ses.suggestions]
    first = next((s.name for s in ses.suggestions if s.supplied), names[0] if names else None)
    rows = [[s.name, round(s.score, 3), " + ".join(s.suppliers) or "not available"] for s in ses.suggestions]
    h, w = ses.background.shape[:2]
    box = ses.box_for() if ses.placement is not None else None
    text = {"bg_info": f"background: {ses.origin} ({w}x{h}, display x{_k(ses)})"
                       + (f"  \n{ses.note}" if ses.note else ""),
            "place_info": placement_text(ses), "comp_info": composite_text(ses), "accept_info": accept_text(ses)}
    comp_id = id(ses.composite)
    return (
        view(ses, "place", (id(ses.placement), box), lambda: placement_view(ses)),
        view(ses, "suggestions", tuple(names), lambda: rows),
        view(ses, "obj_class", tuple(names), lambda: gr.update(choices=names, value=first)),
        view(ses, "bg_info", text["bg_info"], lambda: text["bg_info"]),
        view(ses, "object", id(ses.fg), lambda: None if ses.fg is None else viz.upscale_for_display(
            viz.overlay_mask(ses.fg, ses.fg_mask), 160)),
        view(ses, "scale", ses.scale, lambda: gr.update(value=ses.scale)),
        view(ses, "place_info", text["place_info"], lambda: text["place_info"]),
        view(ses, "box", (id(ses.placement), box), lambda: box_value(ses)),
        view(ses, "composite", comp_id, lambda: None if ses.composite is None else
             viz.upscale_for_display(ses.composite.image)),
        view(ses, "masks", comp_id, lambda: None if ses.composite is None else viz.upscale_for_display(
            instance_map(ses.composite.image.shape[:2], ses.composite.instances))),
        *(view(ses, k, text[k], lambda k=k: text[k]) for k in ("comp_info", "accept_info")),
    )


# -- handlers ------------------------------------------------------------------------------------
@handler(render)
def load_background(ses, choice, upload, caption, model, request: gr.Request = None):
    """A new session on the chosen sample or the uploaded photo: the previous box, composite and
    saved line go with the previous session."""
    store_dir = store_dir_for(request)
    if upload:
        new = InsertSession(load_image_file(upload), origin="upload")  # ImageError: a clear toast, nothing changes
    elif choice:
        where, _, sid = str(choice).partition(":")
        if where not in (MINE, EXAMPLES) or not sid.isdigit():
            raise SessionError(f"no sample {choice!r}: pick one from the list")
        with Store(examples_store_dir() if where == EXAMPLES else store_dir) as store:
            new = InsertSession.from_record(store, store.get(int(sid)))
        if where == EXAMPLES:
            new.origin = f"example photo #{sid}"
    else:
        raise SessionError("Choose a sample in 'background' or upload a photo.")
    scene = caption.strip() if caption and caption.strip() else " ".join(new.classes)
    new.suggestions, new.note = suggest_objects(scene, thesaurus(), model_vocabulary(model),
                                                bank_classes(store_dir))
    new.note = new.note or ""
    return new


def _need(ses, what="Load a background first."):
    if ses is None:
        raise SessionError(what)
    return ses


@handler(render)
def make_object(ses, class_name, seed, model, source, request: gr.Request = None, progress=gr.Progress()):
    _need(ses)
    class_name = (class_name or "").strip()
    if not class_name:
        raise SessionError("Choose or type the object's class in 'object class'.")
    store_dir = store_dir_for(request)
    if source == OBJECT_SOURCES[1]:
        for label, root in object_sources(store_dir):
            with Store(root) as store:
                bank = ObjectBank(store)
                if class_name in bank:
                    obj = bank.pick(class_name, seed=int(seed or 0))
                    fg, fg_mask = bank.cut_out(obj)
                    ses.set_object(fg, fg_mask, class_name, f"{label}: sample #{obj.sample_id} instance {obj.index}",
                                   provenance=source_provenance(store.get(obj.sample_id)))
                    return ses
        have = ", ".join(sorted(bank_classes(store_dir))) or "none"
        raise SessionError(f"no {class_name!r} in the object bank (it has: {have}); generate one instead")
    class_name = check_drawable(class_name, model)  # said now, not after a minute of generating
    progress(0.1, desc="generating the object")
    s = generate_one(model, class_name, seed, should_stop=client_gone_hook())  # stops if the tab closes
    progress(0.7, desc="refining its mask")
    fg, fg_mask = object_from_sample(s)
    ses.set_object(fg, fg_mask, class_name, f"generated ({s.prompt!r}, seed {int(seed or 0)})",
                   provenance={"origin": "generated", "prompt": s.prompt, "seed": int(seed or 0),
                               "model": model or "embedded", "license": SYNTHETIC_LICENSE})
    return ses


@handler(render)
def place(ses, scorer=DEFAULT_SCORER, scorer_weights="", progress=gr.Progress()):
    if ses is None or ses.fg is None:
        raise SessionError("Load a background and make an object first.")
    plugin = _plugin(SCORERS, "placement scorer", scorer, scorer_weights)
    progress(0.2, desc=f"{scorer}: scoring placements")
    # a network's weights are shared by every session
    with MODEL_LOCK if SCORERS.needs_checkpoint(scorer) else nullcontext():
        ses.propose(plugin)
    return ses


@handler(render)
def click(ses, evt: gr.SelectData):
    if ses is None or ses.placement is None:
        return ses
    x, y = clicked_point(evt)
    k = _k(ses)
    ses.move_centre(x / k, y / k)
    return ses


@handler(render)
def rescale(ses, scale):
    if ses is None or ses.placement is None or scale is None:
        return ses
    screen_shows(ses, "scale", float(scale))  # the slider (or its typed box) shows it already
    ses.set_scale(float(scale))
    return ses


@handler(render)
def drag(ses, value):
    """The box was dragged or resized: its centre becomes the object's, and the scale the
    largest at which the object (its own aspect ratio) fits the drawn box."""
    if ses is None or ses.placement is None or not value or not value.get("boxes"):
        return ses
    k = _k(ses)
    b = value["boxes"][0]
    drawn = tuple(v / k for v in (b["xmin"], b["ymin"], b["xmax"], b["ymax"]))
    if max(abs(a - c) for a, c in zip(drawn, ses.box_for())) > 1:  # not our own update echoing back
        ses.move_to(drawn)
    return ses


@handler(render)
def preview(ses, scale, method, harm_weights="", progress=gr.Progress()):
    if ses is None or ses.placement is None:
        raise SessionError("Place the object first (Propose placement).")
    harmonizer = _plugin(HARMONIZERS, "harmonization", method, harm_weights)
    if scale is not None:
        ses.set_scale(float(scale))
    progress(0.3, desc="compositing")
    ses.compose(harmonizer, method)
    return ses


@handler(render)
def accept(ses, tags, request: gr.Request = None):
    if ses is None or ses.composite is None:
        raise SessionError("Preview a composite first.")
    gr.Info(f"composite saved as sample #{save_session(ses, 'accepted', tags, request)}")
    return ses


# -- layout and wiring ---------------------------------------------------------------------------
def build_insert_tab(store_dir: Path, model_box: gr.Dropdown):
    """The tab's widgets and events; returns the background dropdown (refreshed when the tab opens)."""
    state = gr.State(None)
    # one paragraph of two lines at 1400 px, so the loop below still fits a 1400x900 window
    gr.Markdown("Background → object (suggested by the Adaptive Matching Thesaurus; 'model'/'bank' say who can supply "
                "it) → placement (drag the box, click the heat map, or the scale slider) → harmonized composite → "
                "Accept, with its updated masks. " + INSERT_KEYS_HELP, elem_id="insert-keys")
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            bg_choice = gr.Dropdown(background_choices(store_dir), value=None, label="background (an accepted sample)",
                                    allow_custom_value=True,  # samples accepted since the list was made
                                    elem_id="insert-bg-choice")
            bg_upload = gr.File(label="or upload a photo", file_types=["image"], type="filepath", height=90,
                                elem_id="insert-upload")
            caption = gr.Textbox("", label="scene caption for suggestions (optional)", lines=1)
            load_btn = gr.Button("Load background", variant="primary", elem_id="insert-load", size="sm")
            bg_info = gr.Markdown(elem_id="insert-bg-info")
            with gr.Row():
                obj_class = gr.Dropdown([], allow_custom_value=True, label="object class", min_width=120,
                                        elem_id="insert-class")
                obj_seed = gr.Number(0, precision=0, label="seed", min_width=80)
            obj_source = gr.Radio(OBJECT_SOURCES, value=OBJECT_SOURCES[0], label="object", elem_id="insert-object-source")
            obj_btn = gr.Button("Make object", elem_id="insert-object", size="sm")
        with gr.Column(scale=3):
            with gr.Row():
                suggestions = gr.Dataframe(headers=["object", "score", "who can supply it"], label="suggested objects",
                                           interactive=False, max_height=150, scale=2, elem_id="insert-suggestions")
                obj_img = picture("object and its mask", "insert-object-view", 170, scale=1)
            with gr.Row():
                place_img = picture("placement heat map and box (click to move)", "insert-place-view", 230,
                                    clicks=True, min_width=160)
                # a large handle: grabbing inside the box moves it, a corner resizes it
                box_edit = image_annotator(label="drag or resize the box", single_box=True, image_type="numpy",
                                           sources=None, show_clear_button=False, show_download_button=False,
                                           handle_size=14, box_thickness=3, box_min_size=6,
                                           elem_id="insert-box", height=230, min_width=200, scale=1)
                comp_img = picture("harmonized composite", "insert-composite", 230, min_width=160)
                mask_img = picture("instance masks", "insert-masks", 230, min_width=160)
            with gr.Row():
                place_btn = gr.Button("Propose placement", elem_id="insert-place", size="sm")
                scale = gr.Slider(0.05, 0.95, 0.3, step=0.01, label="scale (object side / background side)",
                                  min_width=200, elem_id="insert-scale")
                method = gr.Dropdown(HARMONIZERS.names(), value=default_method(), label="harmonization",
                                     min_width=120)
                preview_btn = gr.Button("Preview composite", variant="primary", elem_id="insert-preview", size="sm")
                ins_tags = gr.Textbox("", label="tags", placeholder="comma-separated", min_width=120)
                accept_btn = gr.Button("Accept composite", variant="primary", elem_id="insert-accept", size="sm")
            with gr.Row():
                place_info = gr.Markdown(elem_id="insert-place-info")
                comp_info = gr.Markdown(elem_id="insert-info")
                accept_info = gr.Markdown(elem_id="insert-accept-info")
    with gr.Accordion("published weights (optional)", open=False):
        gr.Markdown("A placement scorer or harmonization that needs published weights (FOPA's ObPlaNet `FOPA.pth`, "
                    "RainNet's `net_G.pth`) reads them from here; they are checked key by key when loaded.")
        with gr.Row():
            scorer = gr.Dropdown(SCORERS.names(), value=DEFAULT_SCORER, label="placement scorer")
            scorer_weights = gr.Textbox("", label="placement scorer weights (a .pth path or a preset name)")
            harm_weights = gr.Textbox("", label="harmonization weights (a .pth path)")

    outputs = [state, place_img, suggestions, obj_class, bg_info, obj_img, scale, place_info, box_edit, comp_img,
               mask_img, comp_info, accept_info]
    assert len(outputs) == 1 + len(OUTPUTS)
    add_debug_reader("insert", state, render, OUTPUTS)
    quiet = dict(show_progress="hidden")
    load_btn.click(load_background, [state, bg_choice, bg_upload, caption, model_box], outputs, api_name="insert_load",
                   show_progress_on=[place_img])
    obj_btn.click(make_object, [state, obj_class, obj_seed, model_box, obj_source], outputs, concurrency_limit=1,
                  concurrency_id="model", api_name="insert_object", show_progress_on=[obj_img])
    # a weight-free scorer is cheap and runs beside generation; one with weights takes MODEL_LOCK in place()
    place_btn.click(place, [state, scorer, scorer_weights], outputs, api_name="insert_place",
                    show_progress_on=[place_img])
    place_img.select(click, [state], outputs, **quiet)
    # input: the slider's drag and its number box (typed value + Enter) alike
    scale.input(rescale, [state, scale], outputs, trigger_mode="always_last", api_name="insert_scale", **quiet,
                show_progress_on=[scale])  # a step's loading status on the slider alone (see generate's)
    box_edit.change(drag, [state, box_edit], outputs, queue=False, **quiet)
    preview_btn.click(preview, [state, scale, method, harm_weights], outputs, api_name="insert_preview",
                      show_progress_on=[comp_img])
    accept_btn.click(accept, [state, ins_tags], outputs, api_name="insert_accept", **quiet)
    return bg_choice
