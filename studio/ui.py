"""The Blocks layout and event wiring of the studio."""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
import weakref
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import cv2
import gradio as gr
import numpy as np

from pipeline import presets, viz
from pipeline.access import check_user_path, is_public
from pipeline.gpu import queue_settings
from pipeline.attention import capture_for
from pipeline.curation import Curation, SampleFilter, describe_export
from pipeline.dataset import Store, StoreError
from pipeline.errors import Cancelled, PipelineError, check_stop
from pipeline.embedded.world import CLASS_NAMES
from pipeline.export import FORMATS
from pipeline.generate import DEFAULT_TEMPLATE
from pipeline.refine import DEFAULT_REFINER, REFINERS, RefinementError, RefinerUnavailable, get_refiner
from pipeline.session import InspectSession, SessionError
from pipeline.presets import resolve_checkpoint

from .console import LOG, VIEW_FORMAT, atomic_image_cache, setup_console, user_error
from .insert import build_insert_tab
from .state import (MODEL_LOCK, client_gone_hook, describe_model, generate_one, log_cancelled, press_stop,
                    public_datasets, set_model_options, set_stores, size_info, stopped, store_dir_for)



# -- Generate & Inspect ----------------------------------------------------------------
CLICK_MODES = ["do nothing", "add object (+)", "mark background (-)"]
SOURCE_CHOICES = {"use threshold mask": "threshold", "use refined mask": "refined"}
SOURCE_LABELS = {v: k for k, v in SOURCE_CHOICES.items()}
# Mistakes a user can make (bad settings, an action that does not apply now): shown as a
# toast, and every view stays as it was.
USER_ERRORS = (PipelineError, SessionError, RefinementError, RefinerUnavailable, StoreError, ValueError)


def keep_views_on_error(n_outputs: int):
    """Turn a user error into a warning toast that leaves the handler's n outputs as they
    were (gr.skip), instead of Gradio's red 'Error' badges over every view."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except USER_ERRORS as e:
                LOG.warning("user error in %s: %s", fn.__name__, e)  # one line, no traceback: not a bug
                gr.Warning(str(e))
                return gr.skip() if n_outputs == 1 else tuple(gr.skip() for _ in range(n_outputs))
        return wrapper
    return deco


class LockedRefiner:
    """A refiner that holds MODEL_LOCK while it runs: SAM keeps one image embedding per
    predictor, so one session at a time may use it."""

    def __init__(self, refiner):
        self.refiner, self.name = refiner, refiner.name
        self.takes_points = getattr(refiner, "takes_points", False)
        self.needs_self_attention = getattr(refiner, "needs_self_attention", False)
        self.stateful = True

    def __call__(self, *args, **kwargs):
        with MODEL_LOCK:
            return self.refiner(*args, **kwargs)


def make_refiner(name: str, checkpoint: str | None):
    """The named refiner (from the registry; it takes the options it uses, e.g. SAM's
    weights from the 'SAM weights' box, a path, hub id or preset name)."""
    checkpoint = check_user_path((checkpoint or "").strip() or None, "SAM checkpoint")  # public mode: allow-list
    refiner = _cached_refiner(name, checkpoint=resolve_checkpoint(checkpoint))
    # SAM-like refiners keep state (one image embedding): one session at a time
    return LockedRefiner(refiner) if getattr(refiner, "stateful", False) else refiner


@lru_cache(maxsize=4)
def _cached_refiner(name: str, **opts):
    # SAM's predictor keeps the image embedding: reusing it makes each extra click cheap
    return get_refiner(name, **opts)


def _heat_view(ses: InspectSession, resolution: str, t_lo: int, t_hi: int) -> np.ndarray:
    if t_lo > t_hi:
        raise SessionError("the timestep range is empty: 'timesteps from' is above 'timesteps to'")
    res = None if resolution in (None, "", "all") else [int(resolution)]
    return ses.attention.heat_map(resolutions=res, timesteps=(t_lo, t_hi))


def _mask_label(ses: InspectSession) -> str:
    undo = "undo available" if ses.can_undo else "nothing to undo"
    return f"**Current mask** (what Accept saves): {ses.describe()} · {undo}"


# Sessions whose current-mask view shows the bare image (the "mask overlay (o)" box is off), by
# id(session): a display preference of this tab, not part of the mask; InspectSession (a dataclass
# with __eq__) is not hashable, so a finalizer removes the id when the session goes away.
_NO_OVERLAY: set[int] = set()


def set_overlay(ses: InspectSession, show: bool) -> None:
    """Show (True) or hide the current mask over the image in the 'current mask' view."""
    if show:
        _NO_OVERLAY.discard(id(ses))
    elif id(ses) not in _NO_OVERLAY:
        _NO_OVERLAY.add(id(ses))
        weakref.finalize(ses, _NO_OVERLAY.discard, id(ses))


def _current_view(ses: InspectSession, overlay: bool | None = None) -> np.ndarray:
    """(H*k, W*k, 3) uint8: the image with the current mask over it (or bare, overlay off)."""
    if overlay is None:
        overlay = id(ses) not in _NO_OVERLAY
    shown = viz.overlay_mask(ses.image, ses.current_mask()) if overlay else ses.image
    return viz.upscale_for_display(shown)


def on_overlay(ses: InspectSession | None, show: bool):
    """The 'mask overlay (o)' box: redraw the current-mask view with or without the mask."""
    if ses is None or (id(ses) not in _NO_OVERLAY) == bool(show):
        return gr.skip()  # nothing changes (e.g. a new session with the box on): no redraw
    set_overlay(ses, bool(show))
    return _current_view(ses)


def _threshold_views(ses: InspectSession):
    """What depends on the threshold: the current mask, the threshold view and the curve."""
    thr = viz.upscale_for_display(viz.overlay_mask(ses.image, ses.threshold_mask(), (255, 140, 0)))
    curve = None
    if ses.choice is not None:
        curve = viz.iou_curve_image(ses.choice.thresholds, ses.choice.ious, ses.choice.threshold, ses.threshold)
    return _current_view(ses), thr, curve, _mask_label(ses)


def _views(ses: InspectSession):
    """Every view of the Generate tab, in the order of ``views`` in build_app."""
    disp = viz.upscale_for_display
    current, thr, curve, label = _threshold_views(ses)
    refined, info = None, ses.refine_error or ""
    if ses.choice is not None:
        refined = disp(viz.overlay_mask(ses.image, ses.choice.refined, (255, 60, 200)))
        info = (f"{ses.choice.refiner} chose threshold {ses.choice.threshold:.2f} "
                f"(its mask overlaps the refined mask with IoU {ses.choice.best_iou:.2f})")
    return (_image_with_clicks(ses), disp(viz.overlay_heat(ses.image, ses.heat)), current, thr, curve, refined,
            info, label, gr.update(value=ses.threshold), gr.update(value=SOURCE_LABELS[ses.source]))


def on_generate(class_name, template, seed, steps, guidance, model, refiner_name, sam_ckpt, resolution, t_lo, t_hi,
                height=None, width=None, progress=gr.Progress()):
    class_name = (class_name or "").strip()
    if not class_name:
        raise user_error("Type a class name in the 'class' box, e.g. 'ball'.")
    if t_lo > t_hi:
        raise user_error("'timesteps from' is above 'timesteps to': the range is empty.")
    height, width = (int(v) if v else None for v in (height, width))  # 0 / empty: the model's native size
    progress(0.1, desc="loading the model and generating")
    should_stop = client_gone_hook()  # trips when this tab closes or Stop is pressed
    try:
        sample = generate_one(model, class_name, seed, template=template or DEFAULT_TEMPLATE, steps=steps,
                              guidance=guidance, height=height, width=width, capture=capture_for(refiner_name),
                              should_stop=should_stop, on_step=lambda i, n: progress((i, n), desc="denoising",
                                                                                       unit="steps"))
        try:
            check_stop(should_stop, "refinement")  # SAM's encoder takes a minute on a CPU: not for nobody
        except Cancelled as e:
            log_cancelled(e)
            raise
    except Cancelled as e:
        return stopped(e, 1 + N_VIEWS + 3)  # session, views, resolution, info, size line: as they were
    progress(0.8, desc=f"refining ({refiner_name})")
    problem = None
    try:
        refiner = make_refiner(refiner_name, sam_ckpt)
    except (RefinerUnavailable, PipelineError, ValueError) as e:
        refiner, problem = None, _user_words(str(e))
    ses = InspectSession(sample.image, class_name, sample.heat_map, attention=sample.attention, prompt=sample.prompt,
                         seed=int(seed), model=model or "embedded", refiner=refiner, refiner_problem=problem)
    if (resolution, t_lo, t_hi) != ("all", 0, 999):
        ses.set_heat(_heat_view(ses, resolution, t_lo, t_hi), (resolution, t_lo, t_hi))
    ses.start()
    if ses.choice is None and ses.refine_error:
        gr.Warning(_user_words(ses.refine_error))
    res_choices = ["all"] + [str(r) for r in sample.attention.resolutions]
    return (ses, *_views(ses), gr.update(choices=res_choices, value=resolution if resolution in res_choices else "all"),
            f"prompt: “{sample.prompt}”, seed {seed}  \nmodel: {describe_model(model)}", size_info(model, loaded=True))


def on_stop(request: gr.Request):
    press_stop(request.session_hash)


def _user_words(text: str) -> str:
    """Point programmer-facing hints at the widget a studio user has."""
    return (text.replace("pass it with --sam-checkpoint", "put its path in the 'SAM weights' box")
                .replace("--sam-checkpoint", "the 'SAM weights' box"))


def _image_with_clicks(ses: InspectSession) -> np.ndarray:
    shown = viz.upscale_for_display(ses.image)
    k = viz.display_scale(ses.image.shape[:2])
    for x, y, label in ses.clicks:
        centre = (int((x + 0.5) * k), int((y + 0.5) * k))
        cv2.circle(shown, centre, max(4, int(k * 1.5)), (40, 220, 60) if label else (235, 40, 40), -1)
        cv2.circle(shown, centre, max(4, int(k * 1.5)), (255, 255, 255), 1)
    return shown


N_VIEWS = 10
BRUSH_SIZE = 12  # the touch-up brush's starting radius in editor pixels; [ and ] change it (BRUSH_STEP)


def _need(ses):
    if ses is None:
        raise SessionError("Generate an image first (the 'Generate' button).")
    return ses


@keep_views_on_error(N_VIEWS)
def on_click(ses: InspectSession | None, mode, evt: gr.SelectData):
    """A click on the image adds an object (+) or background (-) point and re-runs the refiner
    (GrabCut or SAM) with all clicks so far; the refined mask becomes the current mask."""
    if ses is None or not mode or mode == CLICK_MODES[0]:
        return tuple(gr.skip() for _ in range(N_VIEWS))
    k = viz.display_scale(ses.image.shape[:2])  # display pixels per image pixel
    ses.add_click(int(evt.index[0] // k), int(evt.index[1] // k), 1 if mode == CLICK_MODES[1] else 0)
    if ses.refine_error:
        gr.Warning(_user_words(ses.refine_error))
    return _views(ses)


@keep_views_on_error(N_VIEWS)
def on_clear_clicks(ses: InspectSession | None):
    _need(ses).clear_clicks()
    return _views(ses)


@keep_views_on_error(4)
def on_threshold(ses: InspectSession | None, threshold: float):
    """The slider: only the views that depend on the threshold are redrawn (the cheap
    SamPredictor-style half: the heat map and refinement were computed once)."""
    if ses is None:
        return tuple(gr.skip() for _ in range(4))
    ses.set_threshold(threshold)
    return _threshold_views(ses)


@keep_views_on_error(N_VIEWS)
def on_source(ses: InspectSession | None, choice: str):
    _need(ses).use_source(SOURCE_CHOICES[choice])
    return _views(ses)


@keep_views_on_error(N_VIEWS)
def on_view_change(ses, resolution, t_lo, t_hi, refiner_name, sam_ckpt):
    if ses is None:
        return tuple(gr.skip() for _ in range(N_VIEWS))
    heat = _heat_view(ses, resolution, t_lo, t_hi)  # checks the range before anything changes
    refiner = make_refiner(refiner_name, sam_ckpt)
    ses.refiner = refiner
    ses.set_heat(heat, (resolution, t_lo, t_hi))
    if ses.refine_error:
        gr.Warning(_user_words(ses.refine_error))
    return _views(ses)


def strokes_from_editor(editor, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(added, erased) (H, W) bool at image size from the editor's layers: white strokes
    add, black strokes erase (the editor shows the image enlarged; nearest sampling)."""
    add, erase = np.zeros(shape, bool), np.zeros(shape, bool)
    for layer in (editor or {}).get("layers") or []:
        arr = np.asarray(layer)
        if arr.ndim == 3 and arr.shape[2] == 4:
            alpha = cv2.resize(arr[..., 3], shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
            bright = cv2.resize(arr[..., :3].mean(2), shape[::-1], interpolation=cv2.INTER_NEAREST)
            add |= alpha & (bright >= 128)
            erase |= alpha & (bright < 128)
    return add, erase


def editor_background(ses: InspectSession | None):
    """The editor, emptied, over the current mask (after every change, so strokes are never applied twice)."""
    if ses is None:
        return gr.skip()
    # always with the overlay: strokes are drawn against the mask they change
    return {"background": _current_view(ses, overlay=True), "layers": [], "composite": None}


@keep_views_on_error(N_VIEWS + 1)
def on_edit_mask(ses: InspectSession | None, editor):
    """Brush strokes on the editor's layer add to the mask (white) or erase it (black)."""
    _need(ses)
    add, erase = strokes_from_editor(editor, ses.image.shape[:2])
    if not (add.any() or erase.any()):
        raise SessionError("Draw on the mask first: white adds to it, black erases.")
    ses.apply_strokes(add, erase)
    return (*_views(ses), editor_background(ses))


@keep_views_on_error(N_VIEWS + 1)
def on_undo(ses: InspectSession | None):
    if not _need(ses).undo():
        raise SessionError("Nothing to undo.")
    return (*_views(ses), editor_background(ses))


@keep_views_on_error(N_VIEWS + 1)
def on_redo(ses: InspectSession | None):
    if not _need(ses).redo():
        raise SessionError("Nothing to redo.")
    return (*_views(ses), editor_background(ses))


@keep_views_on_error(N_VIEWS + 1)
def on_discard(ses: InspectSession | None):
    _need(ses).discard_edits()
    return (*_views(ses), editor_background(ses))


def make_store_actions():
    def on_store(ses: InspectSession | None, status: str, tags: str):
        if ses is None:
            raise user_error("Generate an image first.")
        try:
            tag_list = [t.strip() for t in (tags or "").split(",") if t.strip()]
            with store_dir_for() as store_dir, Store(store_dir) as store:  # this visitor's dataset (public mode)
                sid = ses.to_store(store, status, tag_list)
        except StoreError as e:
            raise user_error(str(e))
        gr.Info(f"sample #{sid} saved as {status}")
        return f"saved as #{sid} ({status}): {ses.describe()}"

    def on_accept(ses: InspectSession | None, tags: str):
        return on_store(ses, "accepted", tags)

    def on_reject(ses: InspectSession | None, tags: str):
        return on_store(ses, "rejected", tags)

    return on_accept, on_reject


# -- Curate & Export ---------------------------------------------------------------------
EXPORTS_DIR = Path(tempfile.gettempdir()) / "diffumask-studio-exports"


class CurateActions:
    """The Curate & Export tab's handlers: :class:`pipeline.curation.Curation` (which holds
    every rule) with its answers shaped for the widgets. Over ``store_dir`` (the examples), or,
    without one, over the dataset of whoever sent the request being handled (``store_dir_for``:
    in public mode each browser session's own, leased for the call)."""

    def __init__(self, store_dir: Path | None = None):
        self._fixed = None if store_dir is None else Curation(store_dir)

    @contextmanager
    def _curation(self):
        if self._fixed is not None:
            yield self._fixed
            return
        with store_dir_for() as store_dir:
            yield Curation(store_dir)

    def gallery(self, status, classes, tag, page: int = 0):
        """(ids, [(picture, caption)], summary, page) for one page of matching samples."""
        with self._curation() as cur:
            shown = cur.page(SampleFilter.parse(status, classes, tag), page)
        return shown.ids, [(t.picture, t.caption) for t in shown.tiles], shown.summary, shown.page

    def review(self, sample_id: int, show_heat: bool = False):
        """(picture, details, notes, threshold slider) of one sample."""
        with self._curation() as cur:
            rev = cur.review(sample_id, show_heat)
        if rev.damaged:
            return None, rev.details()[0], rev.record.notes, gr.update()
        t = rev.threshold
        return (rev.picture, "  \n".join(rev.details()), rev.record.notes,
                gr.update(value=t if t is not None else 0.5, interactive=rev.threshold_applies))

    def set_status(self, sample_id: int, status: str) -> None:
        with self._curation() as cur:
            cur.set_status(sample_id, status)

    def undo_status(self, sample_id: int) -> str:
        with self._curation() as cur:
            return cur.undo_status(sample_id)

    def bulk(self, ids, status: str) -> int:
        with self._curation() as cur:
            return cur.set_status(ids or [], status)

    def save_details(self, sample_id: int, notes: str, threshold: float | None) -> str:
        with self._curation() as cur:
            changed = cur.save_details(sample_id, notes, threshold)
        if changed:
            return f"#{sample_id}: notes saved, masks re-derived at threshold {float(threshold):.2f}"
        return f"#{sample_id}: notes saved"

    def export_summary(self, status, classes, tag) -> str:
        with self._curation() as cur:
            return cur.export_summary(SampleFilter.parse(status, classes, tag))

    def export_zip(self, fmt, status, classes, tag, val) -> tuple[str, str]:
        """Export into a fresh folder and zip it. The operator's studio: under
        :data:`EXPORTS_DIR`, only the newest zip of this process kept (older ones and those of
        dead processes are removed). Public: under this browser's own exports folder, which
        only this browser may download from (studio.downloads), only its newest zip kept."""
        where = SampleFilter.parse(status, classes, tag)
        if public_datasets():
            from gradio.context import LocalContext

            from .downloads import export_parent

            parent = export_parent(LocalContext.request.get(None))
        else:
            clean_old_exports(keep=None)
            parent = _mkdir(EXPORTS_DIR / str(os.getpid()))
        work = Path(tempfile.mkdtemp(prefix=f"export-{fmt}-", dir=parent))
        try:
            with self._curation() as cur:
                archive, rep = cur.export_archive(fmt, where, work, val_fraction=float(val or 0))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        if public_datasets():  # Gradio serves the zip in place (no copy): this browser's zips of
            import time           # over ten minutes ago go (another of its tabs may still fetch a newer one)

            for d in parent.iterdir():
                if d != work and d.stat().st_mtime < time.time() - 600:
                    shutil.rmtree(d, ignore_errors=True)
        else:
            clean_old_exports(keep=work)
        return str(archive), describe_export(rep)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def clean_old_exports(keep: Path | None) -> None:
    """Remove studio export folders: every folder of a studio process that is gone and,
    with ``keep``, this process's folders other than ``keep`` (Gradio has copied an
    earlier zip into its own cache by the time the next export finishes)."""
    if not EXPORTS_DIR.exists():
        return
    for proc_dir in EXPORTS_DIR.iterdir():
        try:
            pid = int(proc_dir.name)
        except ValueError:
            continue
        if pid != os.getpid():
            try:
                os.kill(pid, 0)  # another running studio's exports: not ours to remove
            except ProcessLookupError:
                shutil.rmtree(proc_dir, ignore_errors=True)
            except PermissionError:
                pass
        elif keep is not None:
            for d in proc_dir.iterdir():
                if d != keep:
                    shutil.rmtree(d, ignore_errors=True)


def build_app(store_dir: str | os.PathLike = "studio_data", model: str = "embedded", device: str = "auto",
              dtype: str | None = None, visitor_idle_minutes: float | None = None) -> gr.Blocks:
    """The studio over ``store_dir``: the operator's one shared dataset, or, in public mode
    (pipeline.access.is_public), the folder under which each browser session gets its own
    (``<store_dir>/visitors/<random token>``, removed after ``visitor_idle_minutes`` idle)."""
    store_dir = Path(store_dir)
    setup_console()
    atomic_image_cache()
    if is_public():
        from pipeline.visitors import DEFAULT_IDLE_MINUTES, VisitorStores

        idle = DEFAULT_IDLE_MINUTES if visitor_idle_minutes is None else float(visitor_idle_minutes)
        visitors = VisitorStores(store_dir / "visitors", idle_seconds=idle * 60)
        visitors.sweep()  # what a previous run left idle
        visitors.start_sweeper()
        set_stores(None, visitors)
    else:
        Store(store_dir).close()  # create it (and fail early, with the store's message, if it is unusable)
        set_stores(store_dir)
    clean_old_exports(keep=None)
    set_model_options(device, dtype)
    refiners = sorted(REFINERS)
    with gr.Blocks(title="DiffuMask-Editor Studio", delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# DiffuMask-Editor Studio\nSegmentation data from a diffusion model's cross-attention. "
                    f"Model: **{model}** (the embedded model draws 64x64 scenes of: {', '.join(CLASS_NAMES)}).")
        ses_state = gr.State(None)
        with gr.Tab("Generate & Inspect", id="generate"):
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    class_in = gr.Dropdown(list(CLASS_NAMES), value="ball", allow_custom_value=True, label="class")
                    seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
                    with gr.Row():
                        gen_btn = gr.Button("Generate (g)", variant="primary", elem_id="generate-btn", scale=2)
                        stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=1, min_width=60)
                    next_seed = gr.Button("Next seed (s)", elem_id="next-seed-btn")
                    gen_info = gr.Markdown()
                    with gr.Accordion("prompt, model and refiner", open=False):
                        template = gr.Textbox(DEFAULT_TEMPLATE, label="prompt template ({} = class)")
                        steps = gr.Slider(5, 100, 25, step=1, label="steps", elem_id="steps")
                        guidance = gr.Slider(1, 15, 5, step=0.5, label="guidance")
                        with gr.Row():
                            # 0 or empty: the model's native size (the browser sends an emptied box as 0)
                            height_in = gr.Number(None, precision=0, label="height (0: native)", elem_id="height",
                                                  step=8)
                            width_in = gr.Number(None, precision=0, label="width (0: native)", elem_id="width", step=8)
                        size_md = gr.Markdown(size_info(model), elem_id="size-info")
                        model_in = gr.Dropdown(presets.names("diffusion"), value=model, allow_custom_value=True,
                                               label="model: a preset, a diffusers folder, a .safetensors file or a hub id")
                        refiner = gr.Dropdown(refiners, value=DEFAULT_REFINER, label="refiner", elem_id="refiner")
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
                                             interactive=False, elem_id="image-view", height=300,
                                             format=VIEW_FORMAT)
                        heat_out = gr.Image(label="attention heat map", type="numpy", interactive=False, height=300,
                                            elem_id="heat-view", format=VIEW_FORMAT)
                        mask_out = gr.Image(label="current mask (what Accept saves)", type="numpy", interactive=False,
                                            elem_id="mask-view", height=300, format=VIEW_FORMAT)
                    with gr.Row(equal_height=True):
                        mask_label = gr.Markdown(elem_id="mask-label")
                        overlay = gr.Checkbox(True, label="mask overlay (o)", elem_id="overlay-toggle", scale=0,
                                              min_width=150)
                    with gr.Row():
                        threshold = gr.Slider(0.0, 1.0, 0.5, step=0.01, label="threshold", elem_id="threshold")
                        source = gr.Radio(list(SOURCE_CHOICES), value="use threshold mask", label="mask source",
                                          elem_id="mask-source")
                        click_mode = gr.Radio(CLICK_MODES, value=CLICK_MODES[0], label="click on the image to",
                                              elem_id="click-mode")
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
                                             interactive=False, height=220, elem_id="curve-view",
                                             format=VIEW_FORMAT)
                    choice_info = gr.Markdown(elem_id="choice-info")
                    with gr.Accordion("Touch up the mask: white brush adds, black brush erases (keys b / e, "
                                      "size [ and ])", open=False, elem_id="touch-up"):
                        # eraser=False breaks Gradio 6.31's editor toolbar (a Svelte prop error: no
                        # colour or size picker at all); its Erase tool only removes strokes, not the
                        # mask, so STUDIO_CSS hides it and the black brush is the mask's eraser.
                        editor = gr.ImageEditor(type="numpy", label="mask editor", elem_id="mask-editor",
                                                brush=gr.Brush(colors=["#ffffff", "#000000"], default_color="#ffffff",
                                                               default_size=BRUSH_SIZE),
                                                eraser=gr.Eraser(), layers=False, transforms=(), sources=(),
                                                format=VIEW_FORMAT)
                        apply_edit = gr.Button("Apply strokes", elem_id="apply-strokes")
            views = [image_out, heat_out, mask_out, thr_out, curve_out, refined_out, choice_info, mask_label,
                     threshold, source]
            gen_inputs = [class_in, template, seed, steps, guidance, model_in, refiner, sam_ckpt, res_in, t_lo, t_hi,
                          height_in, width_in]
            gen_outputs = [ses_state, *views, res_in, gen_info, size_md]
            # from the configs (no weights load): a preset's side, a diffusers folder's configs
            model_in.change(size_info, model_in, size_md, queue=False, show_progress="hidden")
            gen_event = gen_btn.click(on_generate, gen_inputs, gen_outputs, concurrency_limit=1,
                                      concurrency_id="model", api_name="generate")
            # a new session starts with the overlay as the box says
            gen_event.then(editor_background, ses_state, editor).then(
                on_overlay, [ses_state, overlay], mask_out, show_progress="hidden")
            seed_event = next_seed.click(lambda s: int(s or 0) + 1, seed, seed).then(
                on_generate, gen_inputs, gen_outputs, concurrency_limit=1, concurrency_id="model")
            seed_event.then(editor_background, ses_state, editor).then(
                on_overlay, [ses_state, overlay], mask_out, show_progress="hidden")
            # Stop: flags this session's runs queued before now; the running handler notices
            # (client_gone_hook) at the next denoising step and returns the views as they were
            stop_btn.click(on_stop, None, None, queue=False, show_progress="hidden", api_name="stop")
            overlay.input(on_overlay, [ses_state, overlay], mask_out, api_name="overlay", show_progress="hidden")
            # Re-thresholding is a sub-millisecond numpy comparison: skip the queue so the slider
            # feels live (the queue's round trip alone is most of the latency).
            threshold.input(on_threshold, [ses_state, threshold], [mask_out, thr_out, curve_out, mask_label],
                            api_name="threshold", show_progress="hidden", trigger_mode="always_last", queue=False)
            source.input(on_source, [ses_state, source], views, api_name="mask_source")
            for comp in (res_in, t_lo, t_hi, refiner):
                comp.input(on_view_change, [ses_state, res_in, t_lo, t_hi, refiner, sam_ckpt], views)
            # clicks queue one after another (never dropped) and share the session's order; no progress
            # overlay: Gradio's covers the output images while an event runs, so a quick second click
            # landed on the overlay, not the image, and was lost (4 quick clicks -> 1 point)
            image_out.select(on_click, [ses_state, click_mode], views, concurrency_limit=1, concurrency_id="clicks",
                             trigger_mode="multiple", show_progress="hidden")
            clear_clicks.click(on_clear_clicks, ses_state, views)
            apply_edit.click(on_edit_mask, [ses_state, editor], [*views, editor], api_name="apply_strokes")
            undo.click(on_undo, ses_state, [*views, editor], api_name="undo")
            redo.click(on_redo, ses_state, [*views, editor], api_name="redo")
            discard.click(on_discard, ses_state, [*views, editor], api_name="discard_edits")
            on_accept, on_reject = make_store_actions()
            accept_btn.click(on_accept, [ses_state, tags_in], store_info, api_name="accept")
            reject_btn.click(on_reject, [ses_state, tags_in], store_info, api_name="reject")
        with gr.Tab("Insert Objects", id="insert") as insert_tab:
            refresh_insert = build_insert_tab(model_in)
        with gr.Tab("Curate & Export", id="curate") as curate_tab:
            cur = CurateActions()  # over the sender's dataset (store_dir_for)
            ids_state, index_state, page_state = gr.State([]), gr.State(None), gr.State(0)
            ex_gallery, ex_copy, ex_info = build_examples_box(None if is_public() else store_dir)
            with gr.Row():
                f_status = gr.Dropdown(["any", "accepted", "pending", "rejected"], value="any", label="status")
                f_class = gr.Textbox("", label="classes (comma-separated)")
                f_tag = gr.Textbox("", label="tag")
                refresh_btn = gr.Button("Refresh", elem_id="curate-refresh", size="sm")
                prev_page = gr.Button("◀ page", size="sm")
                next_page = gr.Button("page ▶", size="sm")
            count = gr.Markdown(elem_id="curate-count")
            # Compact: the review keys' buttons right under the gallery, the large view beside it, so the
            # review loop fits a 1400x900 window
            with gr.Row():
                with gr.Column(scale=3):
                    gallery = gr.Gallery(label="dataset", columns=8, height=400, object_fit="contain",
                                         allow_preview=False, elem_id="curate-gallery", format=VIEW_FORMAT)
                    with gr.Row():
                        prev_btn = gr.Button("◀ Previous (p)", elem_id="curate-prev", size="sm", min_width=90)
                        acc = gr.Button("Accept (a)", variant="primary", elem_id="curate-accept", size="sm", min_width=90)
                        rej = gr.Button("Reject (r)", elem_id="curate-reject", variant="stop", size="sm", min_width=90)
                        undo_status = gr.Button("Undo status (u)", elem_id="curate-undo", size="sm", min_width=90)
                        next_btn = gr.Button("Next (n) ▶", elem_id="curate-next", size="sm", min_width=90)
                    gr.Markdown(CURATE_KEYS_HELP, elem_id="curate-keys")
                with gr.Column(scale=2):
                    review_img = gr.Image(label="current sample", type="numpy", interactive=False, height=280,
                                          elem_id="curate-view", format=VIEW_FORMAT)
                    show_heat = gr.Checkbox(False, label="show the heat map (h)", elem_id="curate-heat")
                    detail_md = gr.Markdown(elem_id="curate-detail")
            with gr.Row():
                notes = gr.Textbox("", label="notes", scale=2)
                user_t = gr.Slider(0, 1, 0.5, step=0.01, label="threshold for this sample", elem_id="curate-threshold")
                save_btn = gr.Button("Save notes/threshold", size="sm")
            with gr.Row():
                bulk_acc = gr.Button("Accept all on this page", size="sm")
                bulk_rej = gr.Button("Reject all on this page", size="sm")
                fmt = gr.Dropdown(list(FORMATS), value="coco", label="export format")
                e_status = gr.Dropdown(["accepted", "any", "pending", "rejected"], value="accepted",
                                       label="export samples with status", elem_id="export-status")
                val = gr.Slider(0, 0.5, 0.0, step=0.05, label="validation fraction")
                exp_btn = gr.Button("Export", variant="primary", elem_id="export-btn")
            with gr.Row():
                exp_scope = gr.Markdown(elem_id="export-scope")
                # shown once there is something to download: an empty file box is ~260 px tall
                exp_file = gr.File(label="download", visible=False, elem_id="export-file")
                exp_info = gr.Markdown(elem_id="export-info")

            filters = [f_status, f_class, f_tag]

            def show_page(status, classes, tag, page, index=None):
                ids, items, summary, page = cur.gallery(status, classes, tag, page)
                index = None if index is None or not ids else min(index, len(ids) - 1)
                return ids, gr.update(value=items, selected_index=index), summary, page, index

            def review(ids, index, heat):
                if index is None or not ids or index >= len(ids):
                    return None, "Select a sample in the gallery (or press n).", "", gr.update()
                return cur.review(ids[index], heat)

            page_outputs = [ids_state, gallery, count, page_state, index_state]
            review_outputs = [review_img, detail_md, notes, user_t]

            def refresh(status, classes, tag, page, index):
                return show_page(status, classes, tag, page, index)

            refresh_btn.click(refresh, [*filters, page_state, index_state], page_outputs, api_name="refresh").then(
                review, [ids_state, index_state, show_heat], review_outputs)
            for comp in filters:
                comp.change(lambda *a: show_page(*a, 0, None), filters, page_outputs)
            prev_page.click(lambda st, c, t, p: show_page(st, c, t, p - 1), [*filters, page_state], page_outputs)
            next_page.click(lambda st, c, t, p: show_page(st, c, t, p + 1), [*filters, page_state], page_outputs)
            curate_tab.select(refresh, [*filters, page_state, index_state], page_outputs).then(
                review, [ids_state, index_state, show_heat], review_outputs)

            def select(evt: gr.SelectData):
                return evt.index

            gallery.select(select, None, index_state).then(review, [ids_state, index_state, show_heat], review_outputs)
            show_heat.change(review, [ids_state, index_state, show_heat], review_outputs)

            def change_status(status, classes, tag, page, ids, index, new_status):
                if index is None or not ids or index >= len(ids):
                    raise user_error("Select a sample in the gallery first.")
                cur.set_status(ids[index], new_status)
                gr.Info(f"#{ids[index]} {new_status}")
                # the caption updates, and the highlight moves on to the next sample
                return show_page(status, classes, tag, page, min(index + 1, len(ids) - 1))

            def undo_last(status, classes, tag, page, ids, index):
                if index is None or not ids:
                    raise user_error("Select a sample in the gallery first.")
                try:
                    back = cur.undo_status(ids[index])
                except PipelineError as e:
                    raise user_error(str(e))
                gr.Info(f"#{ids[index]} back to {back}")
                return show_page(status, classes, tag, page, index)

            def review_step(ids, index, heat, delta):
                """n/p: only the highlight and the large view change (no status changed, so the
                page's pictures and captions stand): one request, no gallery resent (1.4 s -> see
                bench/RESULTS.md, bench_review)."""
                if not ids:
                    raise user_error("No samples on this page: change the filters or press Refresh.")
                index = 0 if index is None else min(max(index + delta, 0), len(ids) - 1)
                return (index, gr.update(selected_index=index), *review(ids, index, heat))

            nav = [*filters, page_state, ids_state, index_state]
            for btn, delta, name in ((next_btn, 1, "next"), (prev_btn, -1, "previous")):
                # off the queue: a step is a store read and one picture, and the queue's round trip
                # would be most of its latency (as for the threshold slider)
                btn.click(lambda ids, index, heat, d=delta: review_step(ids, index, heat, d),
                          [ids_state, index_state, show_heat], [index_state, gallery, *review_outputs], api_name=name,
                          queue=False, show_progress="hidden")
            for btn, new_status in ((acc, "accepted"), (rej, "rejected")):
                btn.click(lambda *a, st=new_status: change_status(*a, st), nav, page_outputs,
                          api_name=f"curate_{new_status[:-2]}").then(
                    review, [ids_state, index_state, show_heat], review_outputs)
            undo_status.click(undo_last, nav, page_outputs, api_name="undo_status").then(
                review, [ids_state, index_state, show_heat], review_outputs)

            def save(ids, index, text, t):
                if index is None or not ids:
                    raise user_error("Select a sample in the gallery first.")
                try:
                    gr.Info(cur.save_details(ids[index], text, t))
                except PipelineError as e:
                    raise user_error(str(e))

            save_btn.click(save, [ids_state, index_state, notes, user_t], None, api_name="save_details").then(
                lambda *a: show_page(*a), [*filters, page_state, index_state], page_outputs).then(
                review, [ids_state, index_state, show_heat], review_outputs)

            def bulk(status, classes, tag, page, ids, index, new_status):
                gr.Info(f"{cur.bulk(ids, new_status)} samples {new_status}")
                return show_page(status, classes, tag, page, index)

            bulk_acc.click(lambda *a: bulk(*a, "accepted"), nav, page_outputs)
            bulk_rej.click(lambda *a: bulk(*a, "rejected"), nav, page_outputs)

            def do_export(fmt, status, classes, tag, val, progress=gr.Progress()):
                progress(0.1, desc=f"exporting {fmt}")
                try:
                    return cur.export_zip(fmt, status, classes, tag, val)
                except PipelineError as e:
                    raise user_error(str(e))

            for comp in (e_status, f_class, f_tag):
                comp.change(cur.export_summary, [e_status, f_class, f_tag], exp_scope)
            curate_tab.select(cur.export_summary, [e_status, f_class, f_tag], exp_scope)
            exp_btn.click(do_export, [fmt, e_status, f_class, f_tag, val], [exp_file, exp_info], api_name="export").success(
                lambda: gr.File(visible=True), None, exp_file, queue=False, show_progress="hidden")  # API keeps a plain path
            ex_copy.click(copy_examples_into, None, ex_info, api_name="examples_copy").then(
                refresh, [*filters, page_state, index_state], page_outputs).then(
                cur.export_summary, [e_status, f_class, f_tag], exp_scope)  # the export now includes them
        insert_tab.select(*refresh_insert)
    # On a Space: sized for its hardware (CPU: one model call at a time; ZeroGPU: a GPU slice
    # per call); elsewhere four handlers at once, model calls still one at a time (MODEL_LOCK).
    demo.queue(**(queue_settings() if os.environ.get("SPACE_ID") else {"default_concurrency_limit": 4, "max_size": 64}))
    return demo


EXAMPLES_NOTE = """**Examples**, to look at before your own data exists: {n} pre-made samples (the four CC BY 2.0
COCO photos of `assets/examples` with their COCO masks, attribution in its `ATTRIBUTION.md`, and samples the
embedded model generated). They are kept in a store of their own: **your dataset** ({store}) is what the
gallery below shows and what Export writes; it holds no example unless you add them (tagged `example`)."""


def build_examples_box(store_dir: Path | None):
    """The Curate tab's examples, shown at once on a fresh studio (open while the user's
    dataset is empty; ``store_dir`` None: a public studio, where every visitor starts on an
    empty dataset of their own): a read-only gallery of the examples store and a button that
    copies them into the user's dataset. Returns (gallery, button, info)."""
    from .insert import examples_store_dir

    try:
        ex_dir = examples_store_dir()
        _, items, _, _ = CurateActions(ex_dir).gallery("any", "", "", 0)
    except (StoreError, OSError) as e:  # a read-only temp dir: the studio works without examples
        ex_dir, items = None, []
        gr.Warning(f"examples unavailable: {e}")
    empty = True
    if store_dir is not None:
        with Store(store_dir) as store:
            empty = store.count() == 0
    with gr.Accordion(f"Examples ({len(items)} pre-made samples, not in your dataset)", open=empty and bool(items),
                      visible=bool(items), elem_id="curate-examples-box"):
        gr.Markdown(EXAMPLES_NOTE.format(n=len(items), store="this browser session's own" if store_dir is None
                                         else f"`{store_dir}`"), elem_id="curate-examples-note")
        gallery = gr.Gallery(items, label="examples (read-only; click one to enlarge)", columns=10, height=200,
                             object_fit="contain", allow_preview=True, elem_id="curate-examples",
                             format=VIEW_FORMAT)
        with gr.Row():
            copy = gr.Button("Add the examples to my dataset", size="sm", elem_id="curate-examples-copy")
            info = gr.Markdown(elem_id="curate-examples-info")
    return gallery, copy, info


def copy_examples_into() -> str:
    from pipeline.examples import copy_examples

    from .insert import examples_store_dir

    try:
        with store_dir_for() as store_dir, Store(examples_store_dir()) as src, Store(store_dir) as dst:
            ids = copy_examples(src, dst)
    except (StoreError, OSError) as e:
        raise gr.Error(f"could not add the examples: {e}")
    gr.Info(f"{len(ids)} examples in your dataset (tag 'example')")
    return f"{len(ids)} examples are in your dataset now, tagged `example` (filter them with the tag box)"


GENERATE_KEYS_HELP = """**Keys** (not while typing): **g** generate · **s** next seed · **a** accept · **r** reject ·
**z** undo · **y** redo · **1** threshold mask · **2** refined mask · **o** mask overlay on/off ·
touch-up editor: **b** brush (adds) · **e** eraser (black brush) · **[** / **]** smaller / larger brush"""
CURATE_KEYS_HELP = """**Keys** (not while typing): **n** next · **p** previous · **a** accept · **r** reject ·
**u** undo the last status change · **h** heat map on/off"""

# Hides the editor's own Erase tool: it removes strokes only, never the mask (the black brush does).
# The box editor (gradio_image_annotation) asks for its canvas' full width, which wraps the Insert
# tab's row of pictures onto four lines; it shrinks like the gr.Image beside it instead.
STUDIO_CSS = """
#mask-editor button[aria-label="Erase"] { display: none; }
#insert-box { flex: 1 1 0% !important; min-width: 200px !important; }
#insert-box canvas { max-width: 100%; }
"""

SHORTCUTS_JS = """
<script>
// One key map per tab; a key clicks the first *visible* button of its list, so the same
// letter means accept on whichever tab is open. Keys never fire while typing.
const DM_KEYS = {
  g: ['generate-btn'], s: ['next-seed-btn'], z: ['undo-btn'], y: ['redo-btn'],
  a: ['accept-btn', 'curate-accept', 'insert-accept'], r: ['reject-btn', 'curate-reject'],
  n: ['curate-next'], p: ['curate-prev', 'insert-place'], u: ['curate-undo'],
  l: ['insert-load'], m: ['insert-object'], v: ['insert-preview'],
};
let dmEditorQueue = Promise.resolve();
const DM_BRUSH_STEP = 4;  // editor pixels per [ or ] (its size slider runs 1..100)
function dmVisible(el) { return el && el.offsetParent !== null; }
function dmFrame() { return new Promise((ok) => requestAnimationFrame(() => ok())); }
async function dmWaitFor(find, frames = 120) {  // the editor's toolbar appears a few frames after opening
  for (let i = 0; i < frames; i++) { const el = find(); if (dmVisible(el)) return el; await dmFrame(); }
  return null;
}
function dmEditorButton(label) { return document.querySelector('#mask-editor button[aria-label="' + label + '"]'); }
// The touch-up editor's toolbar, opening its accordion first if it is closed (on the Generate tab only).
async function dmEditorToolbar() {
  const acc = document.getElementById('touch-up');
  if (!dmVisible(acc)) return null;
  if (!dmVisible(document.getElementById('mask-editor'))) acc.querySelector('button, .label-wrap').click();
  return await dmWaitFor(() => dmEditorButton('Brush'));
}
// Opens one of the toolbar's pickers (Color, Brush Size), runs fn on it, closes it again.
async function dmWithPicker(label, find, fn) {
  let el = find();
  const opened = !dmVisible(el);
  if (opened) { dmEditorButton(label).click(); el = await dmWaitFor(find, 30); }
  if (el) fn(el);
  if (opened) { await dmFrame(); dmEditorButton('Brush').click(); }  // choosing the tool closes its pickers
}
async function dmBrushSize(delta) {
  if (!await dmEditorToolbar()) return;
  dmEditorButton('Brush').click();
  let size = null;
  await dmWithPicker('Brush Size', () => document.querySelector('#mask-editor .size_picker input[type=range]'), (range) => {
    range.value = Math.min(100, Math.max(1, Number(range.value) + delta));
    range.dispatchEvent(new Event('input', { bubbles: true }));
    range.dispatchEvent(new Event('change', { bubbles: true }));
    size = range.value;
  });
  await dmFrame();
  // set once the picker is closed again: tests (and anyone watching) know the brush is ready
  if (size !== null) document.getElementById('mask-editor').dataset.brushSize = size;
}
async function dmBrushColor(rgb) {  // 'rgb(255, 255, 255)' adds, 'rgb(0, 0, 0)' erases the mask
  if (!await dmEditorToolbar()) return;
  dmEditorButton('Brush').click();
  const swatch = () => [...document.querySelectorAll('#mask-editor button.color')].find(
    (b) => b.style.backgroundColor === rgb);
  await dmWithPicker('Color', swatch, (b) => b.click());
  await dmFrame();
  document.getElementById('mask-editor').dataset.brushColor = rgb === 'rgb(0, 0, 0)' ? 'black' : 'white';
}
document.addEventListener('keydown', (e) => {
  const t = e.target;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable)) return;
  const k = e.key.toLowerCase();
  if (k === '1' || k === '2') {
    const radio = document.querySelectorAll('#mask-source input[type=radio]')[k === '1' ? 0 : 1];
    if (dmVisible(radio)) { radio.click(); e.preventDefault(); }
    return;
  }
  const box = { h: '#curate-heat input[type=checkbox]', o: '#overlay-toggle input[type=checkbox]' }[k];
  if (box) {
    const el = document.querySelector(box);
    if (dmVisible(el)) { el.click(); e.preventDefault(); }
    return;
  }
  if (k === '[' || k === ']' || k === 'b' || k === 'e') {
    if (!dmVisible(document.getElementById('touch-up'))) return;
    e.preventDefault();
    // one toolbar action at a time: quick presses would otherwise open and close the same picker
    dmEditorQueue = dmEditorQueue.then(() => (k === '[' || k === ']')
      ? dmBrushSize(k === ']' ? DM_BRUSH_STEP : -DM_BRUSH_STEP)
      : dmBrushColor(k === 'b' ? 'rgb(255, 255, 255)' : 'rgb(0, 0, 0)')).catch(() => {});
    return;
  }
  for (const id of (DM_KEYS[k] || [])) {
    const b = document.getElementById(id);
    if (dmVisible(b)) { b.click(); e.preventDefault(); return; }
  }
});
</script>
"""
