"""The Generate & Inspect tab: widgets over one :class:`pipeline.inspect.InspectSession`.

One-way: every handler changes the session (or makes a new one) and returns
``render(session)``, every output of the tab (``console.handler``); ``render`` skips a view
whose content is what the page already shows (``console.view``)."""
from __future__ import annotations

import gradio as gr
import numpy as np

from pipeline import presets, viz
from pipeline.embedded.world import CLASS_NAMES
from pipeline.errors import PipelineError, SessionError, check_stop
from pipeline.generate import DEFAULTS
from pipeline.inspect import DEFAULT_THRESHOLD, InspectSession, check_generation_request, strokes_from_layers
from pipeline.refine import DEFAULT_CLICK_REFINER, DEFAULT_REFINER, REFINERS, capture_for, point_refiners

from .console import (GENERATE_KEYS_HELP, LOOP_PIXELS, VIEW_FORMAT, add_debug_reader, clicked_point, handler, picture,
                      screen_shows, user_words, view, wire_picture_clicks)
from .state import (client_gone_hook, describe_model, generate_one, make_refiner, press_stop, save_session,
                    size_info)

CLICK_MODES = ["do nothing", "add object (+)", "mark background (-)"]
SOURCE_CHOICES = {"use threshold mask": "threshold", "use refined mask": "refined"}
SOURCE_LABELS = {v: k for k, v in SOURCE_CHOICES.items()}
BRUSH_SIZE = 12  # the touch-up brush's starting radius in editor pixels; [ and ] change it


# -- render ----------------------------------------------------------------------------------
def current_view(ses: InspectSession, overlay: bool | None = None) -> np.ndarray:
    """The current mask's panel at the image's own size (the page enlarges it: STUDIO_CSS)."""
    return viz.mask_view(ses.image, ses.current_mask(), ses.overlay if overlay is None else overlay)


def mask_label(ses: InspectSession) -> str:
    undo = "undo available" if ses.can_undo else "nothing to undo"
    return f"**Current mask** (what Accept saves): {ses.describe()} · {undo}"


OUTPUTS = ("image", "heat", "mask", "thr", "curve", "refined", "choice_info", "mask_label", "threshold", "source",
           "editor", "store_info", "gen_info", "seed", "resolution")


def render(ses: InspectSession | None) -> tuple:
    """Every output of the tab (in :data:`OUTPUTS` order) for ``ses``."""
    if ses is None:
        return (None, None, None, None, None, None, "", "", gr.update(value=DEFAULT_THRESHOLD),
                gr.update(value=SOURCE_LABELS["threshold"]), None, "", "", gr.skip(), gr.skip())
    disp = viz.upscale_for_display
    # the views drawn from the threshold go at the image's own size (64x64 for the embedded model:
    # 25x fewer pixels to encode and send per slider step); the page enlarges them (STUDIO_CSS)
    mask_bits = np.packbits(ses.current_mask()).tobytes()
    choice_id = id(ses.choice)
    choice = user_words(ses.refine_error or "") if ses.choice is None else ses.choice.describe()
    text = {"choice_info": choice, "mask_label": mask_label(ses), "store_info": ses.save_line(),
            "gen_info": (ses.prompt, ses.seed, ses.model)}
    editor_open = ses.shown.get("editor_open", False)
    res_choices = ["all"] + [str(r) for r in getattr(ses.attention, "resolutions", ())]
    resolution = str(ses.view[0]) if ses.view and ses.view[0] not in (None, "") else "all"
    return (
        view(ses, "image", ses.clicks, lambda: viz.draw_clicks(ses.image, ses.clicks)),
        view(ses, "heat", ses.view, lambda: viz.overlay_heat(ses.image, ses.heat)),
        view(ses, "mask", (ses.overlay, mask_bits), lambda: current_view(ses)),
        view(ses, "thr", (ses.threshold, ses.view),
             lambda: viz.overlay_mask(ses.image, ses.threshold_mask(), (255, 140, 0))),
        # the curve and the refiner's choice; the slider itself shows the user's threshold, so a
        # slider step re-sends no chart
        view(ses, "curve", choice_id, lambda: None if ses.choice is None else viz.iou_curve_image(
            ses.choice.thresholds, ses.choice.ious, ses.choice.threshold, rule=ses.choice.rule)),
        view(ses, "refined", choice_id, lambda: None if ses.choice is None else
             viz.overlay_mask(ses.image, ses.choice.refined, (255, 60, 200))),
        *(view(ses, k, text[k], lambda k=k: text[k]) for k in ("choice_info", "mask_label")),
        view(ses, "threshold", ses.threshold, lambda: gr.update(value=ses.threshold)),
        view(ses, "source", ses.source, lambda: gr.update(value=SOURCE_LABELS[ses.source])),
        # the editor is drawn while its accordion is open (and when it opens): always over the
        # current mask, emptied of strokes after every change of the mask state
        view(ses, "editor", (mask_bits, id(ses.state)) if editor_open else "closed",
             lambda: {"background": disp(current_view(ses, overlay=True)), "layers": [], "composite": None}
             if editor_open else None),
        view(ses, "store_info", text["store_info"], lambda: text["store_info"]),
        view(ses, "gen_info", text["gen_info"],
             lambda: f"prompt: “{ses.prompt}”, seed {ses.seed}  \nmodel: {describe_model(ses.model)}"),
        view(ses, "seed", ses.seed, lambda: gr.update(value=ses.seed)),
        view(ses, "resolution", (tuple(res_choices), resolution),
             lambda: gr.update(choices=res_choices, value=resolution if resolution in res_choices else "all")),
    )


# -- handlers: each changes the session and returns render(session) -----------------------------
def _need(ses):
    if ses is None:
        raise SessionError("Generate an image first (the 'Generate' button).")
    return ses


@handler(render)
def on_generate(ses, class_name, template, seed, steps, guidance, model, refiner_name, sam_ckpt, resolution, t_lo,
                t_hi, height=None, width=None, progress=gr.Progress()):
    class_name = check_generation_request(class_name, t_lo, t_hi)  # "cat/dog": now, not after generating
    height, width = (int(v) if v else None for v in (height, width))  # 0 / empty: the model's native size
    progress(0.1, desc="loading the model and generating")
    should_stop = client_gone_hook()  # trips when this tab closes or Stop is pressed
    sample = generate_one(model, class_name, seed, template=template or DEFAULTS.template, steps=steps,
                          guidance=guidance, height=height, width=width, capture=capture_for(refiner_name),
                          should_stop=should_stop,
                          on_step=lambda i, n: progress((i, n), desc="denoising", unit="steps"))
    check_stop(should_stop, "refinement")  # SAM's encoder takes a minute on a CPU: not for nobody
    progress(0.8, desc=f"refining ({refiner_name})")
    refiner, problem = None, None
    try:
        refiner = make_refiner(refiner_name, sam_ckpt)
    except PipelineError as e:
        problem = user_words(str(e))
    new = InspectSession.from_sample(sample, refiner=refiner, model=model or "embedded", refiner_problem=problem,
                                     view=(resolution, t_lo, t_hi))
    if ses is not None:
        new.overlay = ses.overlay
        new.shown["editor_open"] = ses.shown.get("editor_open", False)
    if new.choice is None and new.refine_error:
        gr.Warning(user_words(new.refine_error))
    return new


def on_next_seed(ses, class_name, template, seed, steps, guidance, model, refiner_name, sam_ckpt, resolution, t_lo,
                 t_hi, height=None, width=None, progress=gr.Progress()):
    """Generates at seed + 1; the seed box shows it once the sample is there (not after a Stop)."""
    return on_generate(ses, class_name, template, int(seed or 0) + 1, steps, guidance, model, refiner_name, sam_ckpt,
                       resolution, t_lo, t_hi, height, width, progress=progress)


def on_stop(request: gr.Request):
    press_stop(request.session_hash)


def add_click(ses, mode, evt: gr.SelectData, made_at: float | None = None, click_refiner: str = DEFAULT_CLICK_REFINER,
              sam_ckpt: str = ""):
    """A click on the image adds an object (+) or background (-) point and re-runs the click
    refiner (``click_refiner``, 'clicks refine with') with all clicks so far; the refined mask
    becomes the current mask. ``made_at``: when the page made it (studio.console.CLICK_MADE_AT_JS;
    InspectSession.add_click)."""
    if ses is None or not mode or mode == CLICK_MODES[0]:
        return ses
    ses.set_click_refiner(make_refiner(click_refiner or DEFAULT_CLICK_REFINER, sam_ckpt))
    x, y = clicked_point(evt)
    k = viz.display_scale(ses.image.shape[:2])  # display pixels per image pixel
    ses.add_click(int(x // k), int(y // k), 1 if mode == CLICK_MODES[1] else 0, made_at=made_at)
    if ses.refine_error:
        gr.Warning(user_words(ses.refine_error))
    return ses


on_click = handler(render)(add_click)  # one call: the click, then every view (the API, tests)


_record_click = handler(lambda ses: ())(add_click)  # the error policy and visitor lease, no views


def on_click_record(ses, mode, click_refiner, sam_ckpt, made_at, evt: gr.SelectData) -> None:
    """The page's click: recorded, no views (they follow: studio.console.wire_picture_clicks)."""
    _record_click(ses, mode, evt, made_at, click_refiner, sam_ckpt)


@handler(render)
def on_click_views(ses):
    """Every view after clicks, one in flight at a time (studio.console.wire_picture_clicks)."""
    return ses


@handler(render)
def on_clear_clicks(ses):
    _need(ses).clear_clicks()
    return ses


@handler(render)
def on_threshold(ses, threshold: float):
    """The slider: the session's threshold; only the views drawn from it change (the heat
    map and refinement were computed once)."""
    if ses is None:
        return ses
    screen_shows(ses, "threshold", round(float(threshold), 4))  # the slider shows it already
    ses.set_threshold(threshold)
    return ses


# What a threshold step can change (set_threshold moves the threshold alone), the slider's only
# outputs: each output costs the page a status update even when skipped (the other 10: ~45 ms a
# step in chromium, bench_studio --browser-only); the slider shows its value already.
THRESHOLD_VIEWS = ("mask", "thr", "mask_label", "editor", "store_info")


def threshold_views(ses, threshold: float) -> tuple:
    """:func:`on_threshold`'s answer for the slider's event: ``render(session)`` cut to
    :data:`THRESHOLD_VIEWS`. A view outside them that the render did draw (it should not) is
    forgotten from the memo, so the next event's render sends it."""
    out = dict(zip(OUTPUTS, on_threshold(ses, threshold)[1:]))
    if ses is not None:
        for name, value in out.items():
            if name not in THRESHOLD_VIEWS and not (isinstance(value, dict) and value == gr.skip()):
                ses.shown.pop(name, None)
    return tuple(out[name] for name in THRESHOLD_VIEWS)


async def on_threshold_views(ses, threshold: float) -> tuple:
    """The slider's event: :func:`threshold_views` on the server's loop for a small picture (a
    millisecond at 64x64, less than a hop to a worker thread costs on 2 busy cores), in a worker
    thread for a larger one (it would hold up every other page's requests while it draws)."""
    if ses is None or ses.image.shape[0] * ses.image.shape[1] <= LOOP_PIXELS:
        return threshold_views(ses, threshold)
    import asyncio

    return await asyncio.to_thread(threshold_views, ses, threshold)


@handler(render)
def on_source(ses, choice: str):
    _need(ses)
    screen_shows(ses, "source", SOURCE_CHOICES[choice])
    ses.use_source(SOURCE_CHOICES[choice])
    return ses


@handler(render)
def on_overlay(ses, show: bool):
    if ses is not None:
        ses.set_overlay(bool(show))
    return ses


@handler(render)
def on_editor_open(ses, is_open: bool):
    if ses is not None:
        screen_shows(ses, "editor_open", bool(is_open))
    return ses


@handler(render)
def on_view_change(ses, resolution, t_lo, t_hi, refiner_name, sam_ckpt, click_refiner=DEFAULT_CLICK_REFINER):
    if ses is None:
        return ses
    ses.show_view(resolution, t_lo, t_hi, make_refiner(refiner_name, sam_ckpt))
    # then the clicks' refiner: refused on its own (e.g. SAM without weights), the view stays applied
    ses.set_click_refiner(make_refiner(click_refiner or DEFAULT_CLICK_REFINER, sam_ckpt))
    screen_shows(ses, "resolution", (ses.shown.get("resolution", (None,))[0], resolution))
    if ses.refine_error:
        gr.Warning(user_words(ses.refine_error))
    return ses


@handler(render)
def on_edit_mask(ses, editor):
    """Brush strokes on the editor's layer add to the mask (white) or erase it (black)."""
    _need(ses)
    add, erase = strokes_from_layers((editor or {}).get("layers"), ses.image.shape[:2])
    if not (add.any() or erase.any()):
        raise SessionError("Draw on the mask first: white adds to it, black erases.")
    ses.apply_strokes(add, erase)
    return ses


@handler(render)
def on_undo(ses):
    if not _need(ses).undo():
        raise SessionError("Nothing to undo.")
    return ses


@handler(render)
def on_redo(ses):
    if not _need(ses).redo():
        raise SessionError("Nothing to redo.")
    return ses


@handler(render)
def on_discard(ses):
    _need(ses).discard_edits()
    return ses


def _store(ses, status: str, tags: str, request: gr.Request | None):
    gr.Info(f"sample #{save_session(_need(ses), status, tags, request)} saved as {status}")
    return ses


@handler(render)
def on_accept(ses, tags: str, request: gr.Request = None):
    return _store(ses, "accepted", tags, request)


@handler(render)
def on_reject(ses, tags: str, request: gr.Request = None):
    return _store(ses, "rejected", tags, request)


# -- layout and wiring ---------------------------------------------------------------------------
def build_generate_tab(model: str):
    """The tab's widgets and events; returns the model box (the Insert tab generates with it)."""
    ses_state = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            class_in = gr.Dropdown(list(CLASS_NAMES), value="ball", allow_custom_value=True, label="class")
            seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
            with gr.Row():
                gen_btn = gr.Button("Generate (g)", variant="primary", elem_id="generate-btn", scale=2)
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=1, min_width=60)
            next_seed = gr.Button("Next seed (s)", elem_id="next-seed-btn")
            gen_info = gr.Markdown(elem_id="gen-info")
            with gr.Accordion("prompt, model and refiner", open=False):
                template = gr.Textbox(DEFAULTS.template, label="prompt template ({} = class)")
                steps = gr.Slider(5, 100, DEFAULTS.steps, step=1, label="steps", elem_id="steps")
                guidance = gr.Slider(1, 15, DEFAULTS.guidance, step=0.5, label="guidance")
                with gr.Row():
                    # 0 or empty: the model's native size (the browser sends an emptied box as 0)
                    height_in = gr.Number(None, precision=0, label="height (0: native)", elem_id="height", step=8)
                    width_in = gr.Number(None, precision=0, label="width (0: native)", elem_id="width", step=8)
                size_md = gr.Markdown(size_info(model), elem_id="size-info")
                model_in = gr.Dropdown(presets.names("diffusion"), value=model, allow_custom_value=True,
                                       label="model: a preset, a diffusers folder, a .safetensors file or a hub id")
                refiner = gr.Dropdown(sorted(REFINERS), value=DEFAULT_REFINER, label="refiner", elem_id="refiner")
                sam_ckpt = gr.Textbox("", label="SAM weights (for the sam refiner): segment-anything .pth, "
                                                 "or a transformers SAM folder / hub id")
            with gr.Accordion("heat map view", open=False):
                res_in = gr.Radio(["all"], value="all", label="resolution")
                t_lo = gr.Slider(0, 999, 0, step=100, label="timesteps from")
                t_hi = gr.Slider(0, 999, 999, step=100, label="timesteps to")
            gr.Markdown(GENERATE_KEYS_HELP, elem_id="generate-keys")
        with gr.Column(scale=4):
            with gr.Row():
                image_out = picture("image (click to add object/background points)", "image-view", 300, clicks=True)
                heat_out = picture("attention heat map", "heat-view", 300)
                mask_out = picture("current mask (what Accept saves)", "mask-view", 300)
            with gr.Row(equal_height=True):
                mask_label_md = gr.Markdown(elem_id="mask-label")
                overlay = gr.Checkbox(True, label="mask overlay (o)", elem_id="overlay-toggle", scale=0,
                                      min_width=150)
            with gr.Row():
                threshold = gr.Slider(0.0, 1.0, DEFAULT_THRESHOLD, step=0.01, label="threshold", elem_id="threshold")
                source = gr.Radio(list(SOURCE_CHOICES), value="use threshold mask", label="mask source",
                                  elem_id="mask-source")
                click_mode = gr.Radio(CLICK_MODES, value=CLICK_MODES[0], label="click on the image to",
                                      elem_id="click-mode")
                click_refiner = gr.Dropdown(point_refiners(), value=DEFAULT_CLICK_REFINER, label="clicks refine with",
                                            elem_id="click-refiner", scale=0, min_width=160)
                click_made_at = gr.Number(visible=False)  # when the page made a click (wire_picture_clicks)
            with gr.Row():
                clear_clicks = gr.Button("Clear clicks", size="sm")
                undo = gr.Button("Undo (z)", size="sm", elem_id="undo-btn")
                redo = gr.Button("Redo (y)", size="sm", elem_id="redo-btn")
                discard = gr.Button("Discard edits", size="sm", elem_id="discard-btn")
                tags_in = gr.Textbox("", label="tags", placeholder="comma-separated", scale=2)
                accept_btn = gr.Button("Accept (a)", variant="primary", elem_id="accept-btn")
                reject_btn = gr.Button("Reject (r)", elem_id="reject-btn", variant="stop")
            store_info = gr.Markdown(elem_id="store-info")
            with gr.Row():
                thr_out = picture("heat map at the threshold", "threshold-view", 220)
                refined_out = picture("refined mask", "refined-view", 220)
                curve_out = picture("IoU with the refined mask vs threshold", "curve-view", 220)
            choice_info = gr.Markdown(elem_id="choice-info")
            with gr.Accordion("Touch up the mask: white brush adds, black brush erases (keys b / e, "
                              "size [ and ])", open=False, elem_id="touch-up") as touch_up:
                # eraser=False breaks Gradio 6.31's editor toolbar (a Svelte prop error: no
                # colour or size picker at all); its Erase tool only removes strokes, not the
                # mask, so STUDIO_CSS hides it and the black brush is the mask's eraser.
                editor = gr.ImageEditor(type="numpy", label="mask editor", elem_id="mask-editor",
                                        brush=gr.Brush(colors=["#ffffff", "#000000"], default_color="#ffffff",
                                                       default_size=BRUSH_SIZE),
                                        eraser=gr.Eraser(), layers=False, transforms=(), sources=(),
                                        format=VIEW_FORMAT)
                apply_edit = gr.Button("Apply strokes", elem_id="apply-strokes")
    outputs = [ses_state, image_out, heat_out, mask_out, thr_out, curve_out, refined_out, choice_info, mask_label_md,
               threshold, source, editor, store_info, gen_info, seed, res_in]
    assert len(outputs) == 1 + len(OUTPUTS)
    add_debug_reader("generate", ses_state, render, OUTPUTS)
    gen_inputs = [ses_state, class_in, template, seed, steps, guidance, model_in, refiner, sam_ckpt, res_in, t_lo,
                  t_hi, height_in, width_in]
    quiet = dict(show_progress="hidden")
    # from the configs (no weights load): a preset's side, a diffusers folder's configs
    model_in.change(size_info, model_in, size_md, queue=False, **quiet)
    # the progress text goes on the image panel alone, not over every view of the tab
    gen_btn.click(on_generate, gen_inputs, outputs, concurrency_limit=1, concurrency_id="model", api_name="generate",
                  show_progress_on=[image_out])
    next_seed.click(on_next_seed, gen_inputs, outputs, concurrency_limit=1, concurrency_id="model",
                    api_name="next_seed", show_progress_on=[image_out])
    # Stop: flags this session's runs queued before now; the running handler notices
    # (client_gone_hook) at the next denoising step and the session stays as it was
    stop_btn.click(on_stop, None, None, queue=False, api_name="stop", **quiet)
    overlay.input(on_overlay, [ses_state, overlay], outputs, api_name="overlay", **quiet)
    # a step is a millisecond of numpy: off the queue (its round trip was most of a step's latency);
    # its status on the slider alone, not its 5 views (the page redraws each twice: 8-18 % slower)
    step_views = [outputs[1 + OUTPUTS.index(n)] for n in THRESHOLD_VIEWS]
    threshold.input(on_threshold_views, [ses_state, threshold], step_views, api_name="threshold", queue=False,
                    trigger_mode="always_last", show_progress="hidden", show_progress_on=[threshold])
    source.input(on_source, [ses_state, source], outputs, api_name="mask_source", **quiet)
    # a dropdown's `input` fires twice per choice in Gradio 6.31 (two runs, two toasts): `select` once
    for comp, event in ((res_in, "input"), (t_lo, "input"), (t_hi, "input"), (refiner, "select"),
                        (click_refiner, "select")):
        getattr(comp, event)(on_view_change, [ses_state, res_in, t_lo, t_hi, refiner, sam_ckpt, click_refiner],
                             outputs, **quiet)
    wire_picture_clicks(image_out, on_click_record, lambda ses: on_click_views(ses)[1:],
                        [ses_state, click_mode, click_refiner, sam_ckpt], click_made_at, outputs[1:])
    clear_clicks.click(on_clear_clicks, ses_state, outputs, **quiet)
    touch_up.expand(lambda s: on_editor_open(s, True), ses_state, outputs, **quiet)
    touch_up.collapse(lambda s: on_editor_open(s, False), ses_state, outputs, **quiet)
    apply_edit.click(on_edit_mask, [ses_state, editor], outputs, api_name="apply_strokes", **quiet)
    for btn, fn, api in ((undo, on_undo, "undo"), (redo, on_redo, "redo"), (discard, on_discard, "discard_edits")):
        btn.click(fn, ses_state, outputs, api_name=api, **quiet)
    for btn, fn, api in ((accept_btn, on_accept, "accept"), (reject_btn, on_reject, "reject")):
        btn.click(fn, [ses_state, tags_in], outputs, api_name=api, **quiet)
    return model_in, ses_state
