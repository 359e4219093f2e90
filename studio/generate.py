"""The Generate & Inspect tab: widgets over one :class:`pipeline.inspect.InspectSession`.

One-way: every handler changes the session (or makes a new one) and returns
``render(session)``, every output of the tab (``console.handler``); ``render`` skips a view
whose content is what the page already shows (``console.view``)."""
from __future__ import annotations

import gradio as gr
import numpy as np

from pipeline import presets, viz
from pipeline.dataset import Store, check_class
from pipeline.embedded.world import CLASS_NAMES
from pipeline.errors import PipelineError, SessionError, check_stop
from pipeline.generate import DEFAULTS
from pipeline.inspect import DEFAULT_THRESHOLD, InspectSession, strokes_from_layers
from pipeline.refine import DEFAULT_REFINER, REFINERS, capture_for
from pipeline.curation import parse_tags

from .console import (GENERATE_KEYS_HELP, LOOP_PIXELS, VIEW_FORMAT, add_debug_reader, clicked_point, handler,
                      screen_shows, user_words, view)
from .state import (client_gone_hook, describe_model, generate_one, make_refiner, press_stop, size_info,
                    store_dir_for)

CLICK_MODES = ["do nothing", "add object (+)", "mark background (-)"]
SOURCE_CHOICES = {"use threshold mask": "threshold", "use refined mask": "refined"}
SOURCE_LABELS = {v: k for k, v in SOURCE_CHOICES.items()}
BRUSH_SIZE = 12  # the touch-up brush's starting radius in editor pixels; [ and ] change it
# -- render ----------------------------------------------------------------------------------
def current_view(ses: InspectSession, overlay: bool | None = None) -> np.ndarray:
    """(H, W, 3) uint8 at the image's own size (the page enlarges it, pixelated: STUDIO_CSS): the
    current mask over the image, or (overlay off) the mask alone, white on black: the panel is
    labelled 'current mask', so it always shows the mask."""
    overlay = ses.overlay if overlay is None else overlay
    mask = ses.current_mask()
    return viz.overlay_mask(ses.image, mask) if overlay else np.repeat(mask[..., None] * np.uint8(255), 3, axis=2)


def mask_label(ses: InspectSession) -> str:
    undo = "undo available" if ses.can_undo else "nothing to undo"
    return f"**Current mask** (what Accept saves): {ses.describe()} · {undo}"


def choice_text(ses: InspectSession) -> str:
    if ses.choice is None:
        return user_words(ses.refine_error or "")
    return (f"{ses.choice.refiner} chose threshold {ses.choice.threshold:.2f} "
            f"(its mask overlaps the refined mask with IoU {ses.choice.best_iou:.2f})"
            + (f" · rule: {ses.choice.rule}" if getattr(ses.choice, "rule", None) else ""))


OUTPUTS = ("image", "heat", "mask", "thr", "curve", "refined", "choice_info", "mask_label", "threshold", "source",
           "editor", "store_info", "gen_info", "seed", "resolution")


def _bits(mask: np.ndarray) -> bytes:
    return np.packbits(mask).tobytes()


def render(ses: InspectSession | None) -> tuple:
    """Every output of the tab (in :data:`OUTPUTS` order) for ``ses``."""
    if ses is None:
        return (None, None, None, None, None, None, "", "", gr.update(value=DEFAULT_THRESHOLD),
                gr.update(value=SOURCE_LABELS["threshold"]), None, "", "", gr.skip(), gr.skip())
    disp = viz.upscale_for_display
    # the views drawn from the threshold go at the image's own size (64x64 for the embedded model:
    # 25x fewer pixels to encode and send per slider step); the page enlarges them (STUDIO_CSS)
    mask_bits = _bits(ses.current_mask())
    choice_id = id(ses.choice)
    text = {"choice_info": choice_text(ses), "mask_label": mask_label(ses), "store_info": ses.save_line(),
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
    class_name = (class_name or "").strip()
    if not class_name:
        raise SessionError("Type a class name in the 'class' box, e.g. 'ball'.")
    check_class(class_name)  # "cat/dog": refused now, not after a minute of generating
    if t_lo > t_hi:
        raise SessionError("'timesteps from' is above 'timesteps to': the range is empty.")
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
    new = InspectSession.from_sample(sample, refiner=refiner, model=model or "embedded", refiner_problem=problem)
    new.seed = int(seed)
    if (resolution, t_lo, t_hi) != ("all", 0, 999):
        new.set_heat(new.heat_for(resolution, t_lo, t_hi), (resolution, t_lo, t_hi))
        new.start()
    if ses is not None:
        new.overlay = ses.overlay
        new.shown["editor_open"] = ses.shown.get("editor_open", False)
    if new.choice is None and new.refine_error:
        gr.Warning(user_words(new.refine_error))
    return new


def on_next_seed(ses, class_name, template, seed, steps, guidance, model, refiner_name, sam_ckpt, resolution, t_lo,
                 t_hi, height=None, width=None, progress=gr.Progress()):
    """The next seed: generated at seed + 1; the seed box shows it once the sample is there
    (after a Stop it still shows the seed of the sample on screen)."""
    return on_generate(ses, class_name, template, int(seed or 0) + 1, steps, guidance, model, refiner_name, sam_ckpt,
                       resolution, t_lo, t_hi, height, width, progress=progress)


def on_stop(request: gr.Request):
    press_stop(request.session_hash)


def add_click(ses, mode, evt: gr.SelectData, made_at: float | None = None):
    """A click on the image adds an object (+) or background (-) point and re-runs the refiner
    (GrabCut or SAM) with all clicks so far; the refined mask becomes the current mask.
    ``made_at``: when the page made the click (ms on the page's clock, :data:`CLICK_MADE_AT_JS`):
    quick clicks are separate requests, and on a loaded machine they reached the server out of
    order (the second click stored third); each goes in among the clicks where the user made it."""
    if ses is None or not mode or mode == CLICK_MODES[0]:
        return ses
    x, y = clicked_point(evt)
    k = viz.display_scale(ses.image.shape[:2])  # display pixels per image pixel
    at = None
    if made_at is not None:
        made = ses.shown.setdefault("clicks_made_at", {})  # click -> made_at (a click from the API: none)
        at = next((i for i, c in enumerate(ses.clicks) if made.get(c, float("-inf")) > made_at), None)
    ses.add_click(int(x // k), int(y // k), 1 if mode == CLICK_MODES[1] else 0, at=at)
    if made_at is not None:
        made[ses.clicks[len(ses.clicks) - 1 if at is None else at]] = made_at
    if ses.refine_error:
        gr.Warning(user_words(ses.refine_error))
    return ses


on_click = handler(render)(add_click)  # one call: the click, then every view (the API, tests)


_record_click = handler(lambda ses: ())(add_click)  # the error policy and visitor lease, no views

# the page's clock when a click is made, sent with it in place of the hidden ``click_made_at``
# number (a page function runs before the request; its answer replaces the event's inputs)
CLICK_MADE_AT_JS = "(ses, mode, made_at) => [ses, mode, performance.timeOrigin + performance.now()]"


def on_click_record(ses, mode, made_at, evt: gr.SelectData) -> None:
    """The page's click event: records the click and answers nothing; the views follow in
    :func:`on_click_views`. Quick clicks are separate queued events, and the page applies their
    answers in the order their ``/queue/join`` replies reach it, not the order the server ran
    them: on a loaded machine the answer of click 3 landed after that of click 4, and the page
    kept "3 clicks" while the session held 4."""
    _record_click(ses, mode, evt, made_at)


@handler(render)
def on_click_views(ses):
    """Every view after a click, chained to it with ``trigger_mode="always_last"``: the page
    keeps at most one of these in flight and runs the last one asked for after it, so the last
    answer to land is drawn after every click the page saw answered, and answers land in order
    (the skip-if-unchanged memo stays true to the page)."""
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


# What a threshold step can change (InspectSession.set_threshold moves the threshold alone: the
# picture, heat map, refinement, source and seed stay). The slider's event lists only these: each
# output of an event costs the page a loading-status update even when its answer is a skip, and
# the other 10 made a step ~45 ms slower in chromium (bench/bench_studio.py --browser-only).
# The slider itself is not among them: it shows the value the step was made with already.
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
    """The slider's event: :func:`threshold_views`, run on the server's loop for a small
    picture (64x64: a millisecond of numpy, less than the hop to a worker thread and back
    costs on a loaded 2-core machine) and in a worker thread for a larger one, which would
    hold up every other page's requests while it draws."""
    if ses is None or ses.image.shape[0] * ses.image.shape[1] <= LOOP_PIXELS:
        return threshold_views(ses, threshold)
    import anyio

    return await anyio.to_thread.run_sync(threshold_views, ses, threshold)


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
def on_view_change(ses, resolution, t_lo, t_hi, refiner_name, sam_ckpt):
    if ses is None:
        return ses
    heat = ses.heat_for(resolution, t_lo, t_hi)  # checks the range before anything changes
    refiner = make_refiner(refiner_name, sam_ckpt)
    screen_shows(ses, "resolution", (ses.shown.get("resolution", (None,))[0], resolution))
    if (resolution, t_lo, t_hi) != (ses.view if ses.view != (None, None) else ("all", 0, 999)):
        ses.set_heat(heat, (resolution, t_lo, t_hi))
    if refiner is not ses.refiner:
        ses.set_refiner(refiner)
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
    if ses is None:
        raise SessionError("Generate an image first.")
    with Store(store_dir_for(request)) as store:
        sid = ses.to_store(store, status, parse_tags(tags))
    gr.Info(f"sample #{sid} saved as {status}")
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
                image_out = gr.Image(label="image (click to add object/background points)", type="numpy",
                                     interactive=False, elem_id="image-view", height=300, format=VIEW_FORMAT)
                heat_out = gr.Image(label="attention heat map", type="numpy", interactive=False, height=300,
                                    elem_id="heat-view", format=VIEW_FORMAT)
                mask_out = gr.Image(label="current mask (what Accept saves)", type="numpy", interactive=False,
                                    elem_id="mask-view", height=300, format=VIEW_FORMAT)
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
                click_made_at = gr.Number(visible=False)  # set by CLICK_MADE_AT_JS as each click is sent
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
                thr_out = gr.Image(label="heat map at the threshold", type="numpy", interactive=False,
                                   elem_id="threshold-view", height=220, format=VIEW_FORMAT)
                refined_out = gr.Image(label="refined mask", type="numpy", interactive=False,
                                       elem_id="refined-view", height=220, format=VIEW_FORMAT)
                curve_out = gr.Image(label="IoU with the refined mask vs threshold", type="numpy",
                                     interactive=False, height=220, elem_id="curve-view", format=VIEW_FORMAT)
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
    # Re-thresholding is a sub-millisecond numpy comparison: off the queue so the slider feels
    # live (the queue's round trip alone is most of the latency)
    threshold.input(on_threshold_views, [ses_state, threshold], [outputs[1 + OUTPUTS.index(n)] for n in THRESHOLD_VIEWS],
                    api_name="threshold", trigger_mode="always_last", queue=False, show_progress="hidden",
                    # the step's loading status goes to the slider alone, not to its 5 views: the page
                    # redraws each target's status twice per event (A/B in chromium: 8-18 % faster steps)
                    show_progress_on=[threshold])
    source.input(on_source, [ses_state, source], outputs, api_name="mask_source", **quiet)
    for comp in (res_in, t_lo, t_hi, refiner):
        comp.input(on_view_change, [ses_state, res_in, t_lo, t_hi, refiner, sam_ckpt], outputs, **quiet)
    # clicks queue one after another (never dropped); no progress overlay: it covers the image,
    # so a quick second click landed on the overlay and was lost (4 quick clicks -> 1 point)
    # and a click's views come from a chained render, one in flight at a time (on_click_record)
    image_out.select(on_click_record, [ses_state, click_mode, click_made_at], None, js=CLICK_MADE_AT_JS,
                     concurrency_limit=1, concurrency_id="clicks", trigger_mode="multiple", **quiet).then(
        lambda ses: on_click_views(ses)[1:], ses_state, outputs[1:], concurrency_limit=1, concurrency_id="clicks",
        trigger_mode="always_last", **quiet)
    clear_clicks.click(on_clear_clicks, ses_state, outputs, **quiet)
    touch_up.expand(lambda s: on_editor_open(s, True), ses_state, outputs, **quiet)
    touch_up.collapse(lambda s: on_editor_open(s, False), ses_state, outputs, **quiet)
    apply_edit.click(on_edit_mask, [ses_state, editor], outputs, api_name="apply_strokes", **quiet)
    undo.click(on_undo, ses_state, outputs, api_name="undo", **quiet)
    redo.click(on_redo, ses_state, outputs, api_name="redo", **quiet)
    discard.click(on_discard, ses_state, outputs, api_name="discard_edits", **quiet)
    accept_btn.click(on_accept, [ses_state, tags_in], outputs, api_name="accept", **quiet)
    reject_btn.click(on_reject, [ses_state, tags_in], outputs, api_name="reject", **quiet)
    return model_in, ses_state
