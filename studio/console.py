"""What the studio prints on the server's console: one line per user mistake, tracebacks only
for programming errors, and none of Gradio's per-request debug prints."""
from __future__ import annotations

import builtins
import logging
import sys

import gradio as gr

LOG = logging.getLogger("diffumask.studio")


def user_error(message: str, **kwargs) -> gr.Error:
    """The toast for a mistake the user can fix (a bad setting, an action that does not apply
    now). Gradio prints the traceback of every gr.Error unless told not to; a user's mistake is
    not a bug, so the console gets this one line instead. Use as ``raise user_error("...")``."""
    LOG.warning("user error: %s", message)
    return gr.Error(message, print_exception=False, **kwargs)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (it may be redirected later)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_console() -> None:
    """Route the studio's log lines to stderr and silence Gradio's custom-component print.

    Gradio 6.x's ``/custom_component/{id}/{environment}/...`` route ``print``s one line per file
    it serves (``id=..., environment=client, type=component, file_name=...``): five lines per page
    load for gradio_image_annotation's box editor, with no setting to turn them off. Shadowing
    ``print`` in that one module drops exactly those lines and forwards every other print."""
    if not LOG.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s studio %(levelname)s %(message)s", "%H:%M:%S"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        LOG.propagate = False  # the root logger stays as the user has it (no httpx chatter)
    from gradio import routes

    if getattr(routes.__dict__.get("print"), "_diffumask_quiet", False):
        return

    def quiet_print(*args, **kwargs):
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("id=") \
                and ", environment=" in args[0]:
            return
        builtins.print(*args, **kwargs)

    quiet_print._diffumask_quiet = True
    routes.print = quiet_print


# Every picture the studio shows goes to the page as PNG, not Gradio's default WebP: PIL writes
# WebP lossy (quality 80), which smears a mask's edge, and the mask shown must be the mask saved,
# pixel for pixel. PNG at zlib level 1 (atomic_image_cache) is also faster to encode: 320 px
# view 3 ms vs 19 ms for WebP; encoding is most of a threshold-slider step's server time.
VIEW_FORMAT = "png"


def picture(label: str, elem_id: str, height: int, clicks: bool = False, **layout) -> gr.Image:
    """A picture view: read-only, HWC uint8 numpy in, sent as :data:`VIEW_FORMAT`. ``clicks``:
    the user clicks on it (its clicks are kept while it reloads: ``studio.ui.KEEP_CLICKS_JS``)."""
    classes = [CLICK_PICTURE] if clicks else None
    return gr.Image(label=label, type="numpy", interactive=False, elem_id=elem_id, height=height, format=VIEW_FORMAT,
                    elem_classes=classes, **layout)


CLICK_PICTURE = "dm-click-picture"  # the class of pictures the user clicks on


def atomic_image_cache() -> None:
    """Gradio 6.31 writes every output picture to ``<cache>/<hash of its bytes>/image.<fmt>`` by
    truncating and rewriting the file, even when it is already there. A view redrawn with the same
    picture (a re-render after a settings change, an overlay redraw) rewrote a file the browser was
    still downloading: the server printed 'Too much data for declared Content-Length' tracebacks.
    The name is content-addressed, so an existing file already holds these bytes: keep it, and
    write new ones under a temporary name moved into place (a reader sees the whole file or none).
    PNG is written at zlib level 1 instead of PIL's 6: lossless either way, 2-3x faster."""
    import io
    import os
    import tempfile
    from pathlib import Path

    from gradio import processing_utils as pu

    if getattr(pu.save_pil_to_cache, "_diffumask_atomic", False):
        return

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        if format.lower() == "png":  # zlib level 1: 2-3x faster than PIL's 6 (512 px photo: 35 vs 112 ms), ~10 % larger
            with io.BytesIO() as out:
                img.save(out, "png", pnginfo=pu.get_pil_metadata(img), compress_level=1)
                data = out.getvalue()
        else:
            data = pu.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / pu.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        target = (folder / f"{name}.{format}").resolve()
        if not target.exists():
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        return str(target)

    save_pil_to_cache._diffumask_atomic = True
    pu.save_pil_to_cache = save_pil_to_cache


class StudioBlocks(gr.Blocks):
    """``gr.Blocks`` whose skipped outputs cost the server nothing.

    Every studio event answers all of its tab's views, most of them ``gr.skip()`` (the page
    shows them already: :func:`view`). Gradio 6.31 treats a skip as a property update: it
    rebuilds the component from its constructor arguments and regenerates its config, API
    schema (pydantic) included, then answers ``{"__type__": "update"}``. For an unchanged view
    that rebuild is a no-op that py-spy found to be ~40 % of a threshold step's server time (an
    ImageEditor and two Markdowns per step). Here a skipped output of a non-state component is
    answered with that same ``{"__type__": "update"}`` directly; the others go through Gradio's
    own postprocessing unchanged."""

    async def postprocess_data(self, block_fn, predictions, state):
        outputs = list(block_fn.outputs)
        n = len(outputs)
        if (block_fn.batch or n < 2 or not isinstance(predictions, (list, tuple)) or len(predictions) != n):
            return await super().postprocess_data(block_fn, predictions, state)
        skipped = [i for i, (block, value) in enumerate(zip(outputs, predictions))
                   if not block.stateful and isinstance(value, dict) and value == SKIP_UPDATE]
        keep = sorted(set(range(n)) - set(skipped))
        inline = self._postprocess_inline([outputs[i] for i in keep], [predictions[i] for i in keep], state) \
            if block_fn.postprocess and keep else None
        if not skipped and inline is None:
            return await super().postprocess_data(block_fn, predictions, state)
        answer: list = [dict(SKIP_UPDATE) for _ in range(n)]
        if keep:
            import copy

            rest = copy.copy(block_fn)  # the same function, answering only the views it changes
            rest.outputs = [outputs[i] for i in keep]
            values = [predictions[i] for i in keep] if inline is None else inline
            if inline is not None:
                rest.postprocess = False  # done here: Gradio only caches the files and fills the config
            done = await super().postprocess_data(rest, values[0] if len(keep) == 1 else values, state)
            for i, value in zip(keep, done):
                answer[i] = value
        return answer

    @staticmethod
    def _postprocess_inline(blocks, values, state):
        """The components' own ``postprocess`` of plain values (a picture, a text), run here on
        the server's event loop, or None when any value is not plain (a state, an update, a
        component) or a postprocess fails (Gradio's own path then runs and words the error).
        Gradio runs each output's postprocess in a worker thread, one hop per output: on a
        2-core machine those hops were most of a threshold step's server time (5 outputs).
        Only for pictures of at most :data:`LOOP_PIXELS`."""
        from gradio.components.base import Component
        from gradio.data_classes import GradioModel, GradioRootModel

        if not all(isinstance(b, Component) and not b.stateful and not isinstance(v, (dict, gr.blocks.Block))
                   and not getattr(v, "_is_component_update", False) for b, v in zip(blocks, values)):
            return None
        if any(_pixels(v) > LOOP_PIXELS for v in values):
            return None  # a large picture is encoded in Gradio's worker thread, off the loop
        try:
            done = [(state[b._id] if state is not None and b._id in state else b).postprocess(v)
                    for b, v in zip(blocks, values)]
        except Exception:  # noqa: BLE001 -- Gradio's path raises it again, worded as Gradio words it
            return None
        return [v.model_dump() if isinstance(v, (GradioModel, GradioRootModel)) else v for v in done]


SKIP_UPDATE = {"__type__": "update"}  # what gr.skip() is, and what Gradio sends the page for it


def _pixels(value) -> int:
    """Pixels of a picture output (HW[C] array or PIL image); 0 for anything else."""
    shape = getattr(value, "shape", None)
    if shape is not None and len(shape) >= 2:
        return int(shape[0]) * int(shape[1])
    size = getattr(value, "size", None)  # PIL: (width, height)
    return int(size[0]) * int(size[1]) if isinstance(size, tuple) and len(size) == 2 else 0


# Pictures up to this many pixels (the embedded model's 64x64 views, 128x128 at most) are drawn
# and encoded on the server's event loop (well under a millisecond each); larger ones in Gradio's
# worker threads (a 512x512 PNG takes ~35 ms, which would hold up every other page's requests).
LOOP_PIXELS = 128 * 128


def user_words(text: str) -> str:
    """Point programmer-facing hints at the widget a studio user has."""
    return (text.replace("pass it with --sam-checkpoint", "put its path in the 'SAM weights' box")
                .replace("--sam-checkpoint", "the 'SAM weights' box"))


# The keys of each tab (ui.SHORTCUTS_JS maps them), as the tabs list them.
GENERATE_KEYS_HELP = """**Keys** (not while typing): **g** generate · **s** next seed · **a** accept · **r** reject ·
**z** undo · **y** redo · **1** threshold mask · **2** refined mask · **o** mask overlay on/off ·
touch-up editor: **b** brush (adds) · **e** eraser (black brush) · **[** / **]** smaller / larger brush"""


# -- one-way data flow: handler -> session -> render --------------------------------------------
GENERIC_ERROR = "Something went wrong on the server (it is logged there); what you see is unchanged."


def tell_user(e: BaseException) -> None:
    """The one error policy of every tab: a mistake the user can fix (a PipelineError) is a
    warning toast with its message and one log line; a stop is an info toast; anything else
    (a bug, a third-party ValueError) is logged with its traceback and shown as a generic
    toast, never as the user's mistake. Never a red error badge over the views."""
    from pipeline.errors import Cancelled, PipelineError

    if isinstance(e, Cancelled):
        if not getattr(e, "logged", False):  # generate_one logs the stops it sees
            print(f"studio: {e}", file=sys.stderr, flush=True)
        gr.Info(str(e))
    elif isinstance(e, gr.Error):  # made by user_error from a PipelineError (logged there)
        gr.Warning(e.message)
    elif isinstance(e, PipelineError):
        LOG.warning("user error: %s", e)  # one line, no traceback: not a bug
        gr.Warning(str(e))
    else:
        LOG.error("unexpected error", exc_info=e)
        gr.Warning(GENERIC_ERROR)


def clicked_point(evt) -> tuple[float, float]:
    """(x, y) display pixels of a click on a picture view (``gr.SelectData.index``). Gradio's
    image sends no position (``None`` or ``[None, None]``) for a click that lands while the
    picture is being replaced and the new one has not loaded yet (its ``naturalWidth`` is
    still 0): the generate tab redraws the picture with its click dots after every click, so
    quick clicks on a loaded machine hit that window (seen in CI: 1 of 4 clicks). The page now
    holds such clicks until the picture is there (``studio.ui.KEEP_CLICKS_JS``); one that still
    comes without a position is a SessionError the user can act on, never a TypeError logged
    as a bug."""
    from pipeline.errors import SessionError

    index = getattr(evt, "index", None)
    if not isinstance(index, (list, tuple)) or len(index) != 2 or any(v is None for v in index):
        raise SessionError("That click came while the picture was still loading, so it has no position and "
                           "was not counted: click again.")
    return float(index[0]), float(index[1])


# the page's clock when a click is made, sent in place of the event's last input (a hidden
# number): a page function runs before the request, and its answer replaces the inputs; it
# counts the clicks it stamped (window.dmClicksStamped), so the page's click keeper
# (studio.ui.KEEP_CLICKS_JS) makes held clicks again one stamp after another, in order
CLICK_MADE_AT_JS = ("(...inputs) => { window.dmClicksStamped = (window.dmClicksStamped || 0) + 1;"
                    " return [...inputs.slice(0, -1), performance.timeOrigin + performance.now()]; }")


def wire_picture_clicks(picture, record, views, inputs: list, made_at, outputs: list) -> None:
    """Clicks on ``picture``: each is ``record(*inputs, made_at, evt)`` (answering nothing),
    queued one after another and never dropped; ``made_at`` (a hidden number) carries when the
    page made it (:data:`CLICK_MADE_AT_JS`: quick clicks are separate requests, which a loaded
    machine delivered out of order). No progress overlay: it covers the picture, and a quick
    second click landed on it and was lost. The views follow in ``views(inputs[0])`` chained to
    each record with ``always_last``: at most one in flight, the last one asked for run after
    it, so the last answer to land is drawn after every click (the page applies answers in the
    order they reach it: click 3's once landed after click 4's, the page kept "3 clicks")."""
    quiet = dict(concurrency_limit=1, concurrency_id="clicks", show_progress="hidden")
    picture.select(record, [*inputs, made_at], None, js=CLICK_MADE_AT_JS, trigger_mode="multiple", **quiet).then(
        views, inputs[0], outputs, trigger_mode="always_last", **quiet)


def handler(render, open_session=None):
    """Wire ``fn(session, *inputs) -> session`` as an event handler returning
    ``(session, *render(session))``: every output of the tab, drawn from the session the
    handler left (on an error: the session as it was, see :func:`tell_user`), so no view can
    show a state the session does not hold. ``open_session(request)``: the tab's session
    when the page has none yet (made before ``fn`` runs, so it is kept even if ``fn`` fails)."""
    import functools

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(ses, *args, **kwargs):
            from .state import dataset_lease

            request = next((a for a in (*args, *kwargs.values()) if isinstance(a, gr.Request)), None)
            try:
                with dataset_lease(request):  # public mode: the visitor's store stays while this runs
                    if ses is None and open_session is not None:
                        ses = open_session(request)
                    ses = fn(ses, *args, **kwargs)
            except Exception as e:  # noqa: BLE001 -- sorted by tell_user; the views stay the session's
                tell_user(e)
            return (ses, *render(ses))
        return wrapper
    return deco


_UNSET = object()


def view(ses, name: str, key, draw):
    """One view of ``render(ses)``: ``gr.skip()`` when the view last rendered for this session
    was drawn from an equal ``key`` (the page already shows it: no bytes re-encoded or sent),
    else ``draw()``, remembered in ``ses.shown``. ``ses`` None: always drawn."""
    if ses is None:
        return draw()
    if ses.shown.get(name, _UNSET) == key:
        return gr.skip()
    value = draw()
    ses.shown[name] = key
    return value


def screen_shows(ses, name: str, key) -> None:
    """An input widget reported what it shows (the user moved it): render then sends it only
    when the session differs from that."""
    if ses is not None:
        ses.shown[name] = key


# -- tests: what the server holds, to compare with what the page shows ---------------------------
DEBUG_ENV = "DIFFUMASK_STUDIO_DEBUG"


def debug_enabled() -> bool:
    """Whether the test-only session readers are on (the environment variable set to 1)."""
    import os

    return os.environ.get(DEBUG_ENV) == "1"


def describe_render(ses, render, names) -> str:
    """JSON of a full ``render(ses)`` (nothing skipped) by view name: pictures as their shape and
    the SHA-256 of their pixels, texts and widget values as they are. The session's memo of
    what the page shows is left as it was."""
    import hashlib
    import json

    import numpy as np

    _READS.append(None)
    if ses is None:
        return json.dumps({"read": len(_READS), "views": None})
    memo = ses.shown
    ses.shown = {k: v for k, v in memo.items() if k == "editor_open"}
    try:
        out = render(ses)
    finally:
        ses.shown = memo

    def plain(v):
        if isinstance(v, dict) and "__type__" in v:
            v = {k: plain(x) for k, x in v.items() if k != "__type__"}
            return v
        if isinstance(v, np.ndarray):
            a = np.ascontiguousarray(v)
            return {"picture": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, (np.integer, np.floating)):
            return v.item()
        return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
    return json.dumps({"read": len(_READS), "views": {name: plain(v) for name, v in zip(names, out)}})


_READS: list = []  # one entry per reading (numbers them)


def add_debug_reader(tab: str, state, render, names) -> None:
    """Test-only (``DIFFUMASK_STUDIO_DEBUG=1``): a hidden button ``#debug-<tab>`` whose click
    writes :func:`describe_render` of this browser session's ``<tab>`` session into the hidden
    box ``#debug-<tab>-out``. Nothing is added otherwise."""
    if not debug_enabled():
        return
    out = gr.Textbox(elem_id=f"debug-{tab}-out", elem_classes=["dm-debug"], show_label=False, container=False)
    button = gr.Button(f"debug {tab}", elem_id=f"debug-{tab}", elem_classes=["dm-debug"])
    button.click(lambda s: describe_render(s, render, names), state, out, queue=False, show_progress="hidden")
