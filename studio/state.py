"""Per-session state and the few shared resources (model cache, the dataset store)."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from pipeline.access import check_user_path
from pipeline.bank import ObjectBank
from pipeline.dataset import Store, StoreError
from pipeline.gpu import gpu
from pipeline.presets import resolve_checkpoint
from pipeline.refine import get_refiner

# One UNet is shared by every session; attention capture swaps its processors, so model
# calls run one at a time (the Gradio queue also limits them; this lock makes sure).
MODEL_LOCK = threading.Lock()


_MODEL_OPTIONS = {"device": "auto", "dtype": None}
# Whose dataset a request works in: the operator's one store (``shared``), or, in a public
# studio, each browser's own (``visitors``, a pipeline.visitors.VisitorStores).
_STORES: dict = {"shared": Path("studio_data"), "visitors": None}


def set_store_dir(path) -> Path:
    """The studio's dataset folder (app.py's --store): one dataset every session shares."""
    _STORES.update(shared=Path(path), visitors=None)
    return _STORES["shared"]


def set_visitor_stores(visitors) -> None:
    """A public studio: each browser gets a dataset of its own (a VisitorStores)."""
    _STORES.update(shared=None, visitors=visitors)


def public_datasets() -> bool:
    """Whether each browser has a dataset of its own (a public studio)."""
    return _STORES["visitors"] is not None


def _visitor_key(request) -> str:
    """Who sent ``request`` (default: the request being handled): the browser's visitor cookie
    (HttpOnly, random, studio.downloads), else the page's session hash. The cookie names the
    visitor: the dataset survives a page reload (a new session hash) and is shared by the
    browser's tabs, like the downloads it makes; a session hash, sent in every request body, is
    not enough to open it. A client without the cookie works per page load."""
    if request is None:
        from gradio.context import LocalContext

        request = LocalContext.request.get(None)
    from .downloads import COOKIE

    session = getattr(request, "session_hash", None) or ""
    try:
        cookie = (getattr(request, "cookies", None) or {}).get(COOKIE, "")
    except AttributeError:
        cookie = ""
    return f"browser {cookie}" if cookie else f"session {session}" if session else ""


@contextmanager
def dataset_lease(request=None) -> Iterator[None]:
    """Hold the sender's dataset for the block: in a public studio the idle sweeper never
    removes a store while a handler of its visitor runs (pipeline.visitors leases; every
    handler runs inside one, see studio.console.handler). Not public: nothing to hold."""
    visitors = _STORES["visitors"]
    if visitors is None:
        yield
        return
    with visitors.lease(_visitor_key(request)):
        yield


def store_dir_for(request=None) -> Path:
    """The one place every handler gets the dataset folder it reads and writes, from its
    ``gr.Request`` (default: the request being handled). Not public: the operator's one
    ``--store``, shared by every session as always. Public: the visitor's own store
    (``<store>/visitors/<random token>``), made on its first use; handlers call this inside
    :func:`dataset_lease`, so it is not swept while they use it."""
    visitors = _STORES["visitors"]
    if visitors is None:
        return _STORES["shared"]
    return visitors.store_dir(_visitor_key(request))


def save_session(ses, status: str, tags: str, request=None) -> int:
    """``ses.to_store`` in this request's dataset (:func:`store_dir_for`) with the tags box's
    tags; the new sample's id."""
    from pipeline.curation import parse_tags
    from pipeline.dataset import Store

    with Store(store_dir_for(request)) as store:
        return ses.to_store(store, status, parse_tags(tags))


def set_model_options(device: str = "auto", dtype: str | None = None) -> None:
    """Where and at what precision models load (app.py's --device / --dtype)."""
    from pipeline.generate import resolve_device, resolve_dtype

    resolve_dtype(dtype, resolve_device(device))  # fail at start-up, not at the first click
    _MODEL_OPTIONS.update(device=device, dtype=dtype)


@lru_cache(maxsize=2)
def _load(model: str, device: str, dtype: str | None):
    """A preset name (sd15, sd-turbo, ...: through the Hugging Face cache), or what
    load_pipeline takes (embedded, a folder, a single file, a hub id)."""
    from pipeline import presets
    from pipeline.generate import load_pipeline
    from pipeline.loading import load_preset

    if model in presets.names("diffusion"):
        return load_preset(model, device=device, dtype=dtype)
    return load_pipeline(None if model in ("", "embedded") else model, device=device, dtype=dtype)


# session hash -> time.monotonic() of that session's last Stop press
_STOP_PRESSED: dict[str, float] = {}


def press_stop(session_hash: str | None) -> None:
    """What the Stop button does (``queue=False``): marks this browser session's runs that were
    queued before now as stopped. Their handlers notice (``client_gone_hook``) at the next step
    and return their views unchanged, with a toast saying after how many steps. Why not Gradio's
    ``cancels=``: it cancels the event's asyncio task, so that return (and its toast) never
    reaches the page, and the page runs the event's follow-ups at once while the worker thread
    is still in its step; with a flag the run ends as a normal event. One float per session that
    ever pressed Stop is kept."""
    import time

    if session_hash:
        _STOP_PRESSED[session_hash] = time.monotonic()


def client_gone_hook():
    """A ``should_stop`` hook for the pipeline's long loops, made inside a queued Gradio handler:
    it returns True once the browser tab that asked for this run has gone (Gradio's SSE stream
    closes and the queue marks the event not ``alive``), once the user pressed Stop after the
    run was queued (``press_stop``; a run still waiting in the queue then stops before its first
    step), or once the event's task is cancelled (an API client's /cancel). A synchronous
    handler's worker thread runs on unless it looks. Outside a queued event (tests,
    ``queue=False``) it never trips.

    Reads Gradio 6.31's queue (``Blocks._queue``: the active ``Event`` objects with their
    ``session_hash``/``enqueue_time``, and the tasks named ``<session>_<fn><gradio-sep><event id>``);
    tests/test_cancel.py drives every path through a real server, so a Gradio upgrade that
    moves them fails there."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or event_id is None:
        return lambda: False
    jobs, tasks = list(getattr(queue, "active_jobs", [])), list(getattr(queue, "_asyncio_tasks", ()))
    event = next((e for job in jobs if job for e in job if getattr(e, "_id", None) == event_id), None)
    task = next((t for t in tasks if t.get_name().endswith(f"<gradio-sep>{event_id}")), None)
    if event is None and task is None:
        return lambda: False
    session = getattr(event, "session_hash", None)
    queued_at = getattr(event, "enqueue_time", float("inf"))

    def gone() -> bool:
        # alive: False once the client's stream closed; a cancelled task is cancelling or done
        return ((event is not None and not event.alive)
                or _STOP_PRESSED.get(session, float("-inf")) >= queued_at
                or (task is not None and (task.cancelling() > 0 or task.done())))
    return gone


def size_info(model: str | None, loaded: bool = False) -> str:
    """The model's native size and the largest accepted, for the Generate tab: from its configs
    (no weights are loaded), or from the loaded model when ``loaded``. Public mode: a refused
    path is never looked at (the line then says the size is known once the model is loaded)."""
    from pipeline.access import AccessError, check_user_path
    from pipeline.generate import native_size, native_size_of, size_limits

    try:
        if loaded:
            native = native_size(get_pipeline(model or "embedded"))
        else:
            native = native_size_of(check_user_path(model or "embedded", "model"))
    except (AccessError, ValueError, OSError):
        native = None
    return f"**size**: {size_limits(native)}"


def describe_model(model: str) -> str:
    """What is loaded, for the UI: the model, its precision and device."""
    from pipeline import presets

    name = model or "embedded"
    pipe = get_pipeline(name)
    if name in presets.names("diffusion"):
        return presets.describe(name, pipe)
    p = next(pipe.unet.parameters())
    return f"{name}, {str(p.dtype).replace('torch.', '')} on {p.device}"


def get_pipeline(model: str):
    from pipeline.access import check_user_path

    model = check_user_path(model, "model")  # public mode: before the path is looked at (a hub id: its cached copy)
    return _load(model, _MODEL_OPTIONS["device"], _MODEL_OPTIONS["dtype"])


@gpu(duration=120)  # ZeroGPU: a GPU is attached while this runs (a no-op elsewhere)
def generate_one(model: str | None, class_name: str, seed, **options):
    """One sample from the (cached) model under MODEL_LOCK; load and prompt errors (missing
    weights or preset files, a word not in the prompt, a bad template) become the user's
    error toast. Stops (Cancelled, logged on stderr) when ``should_stop`` in ``options`` trips:
    between denoising steps, and before it starts after waiting for the model."""
    import gradio as gr

    from pipeline.errors import Cancelled, PipelineError, check_seed
    from pipeline.generate import ModelLoadError, generate, native_size, size_note
    from pipeline.presets import PresetUnavailable

    from .console import user_error

    try:
        pipe = get_pipeline(model or "embedded")
        note = size_note(native_size(pipe), options.get("height"), options.get("width"))
        if note:  # accepted, but the user should know what it costs (over the limit: the error below)
            gr.Warning(note)
        with MODEL_LOCK:
            return generate(pipe, class_name, check_seed(seed), **options)[0]
    except Cancelled as e:  # the caller leaves its views as they were (see stopped())
        log_cancelled(e)
        raise
    except (ModelLoadError, PresetUnavailable, PipelineError) as e:  # not a third party's ValueError: a bug
        raise user_error(str(e))


def stopped(e: Exception, n_outputs: int):
    """What a handler returns for a run that was stopped: a toast, and every view as it was
    (no red error badges: stopping is what the user asked for)."""
    import gradio as gr

    gr.Info(str(e))
    return gr.skip() if n_outputs == 1 else tuple(gr.skip() for _ in range(n_outputs))


def log_cancelled(e: Exception) -> None:
    """One line on the server's stderr per stopped run: what was stopped and after how much."""
    import sys

    print(f"studio: {e}", file=sys.stderr, flush=True)
    e.logged = True  # console.tell_user does not print it again


# -- refiners and the examples store: made once, shared by every session ---------------------------
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
    """The named refiner (from the registry; SAM's weights from the 'SAM weights' box, a path,
    hub id or preset name), the same object for the same choice (sessions compare them)."""
    checkpoint = check_user_path((checkpoint or "").strip() or None, "SAM checkpoint")  # public mode: allow-list
    return _cached_refiner(name, resolve_checkpoint(checkpoint))


@lru_cache(maxsize=4)
def _cached_refiner(name: str, checkpoint):
    # SAM's predictor keeps the image embedding: reusing it makes each extra click cheap
    refiner = get_refiner(name, checkpoint=checkpoint)
    return LockedRefiner(refiner) if getattr(refiner, "stateful", False) else refiner




# dropdown values of the Insert tab's background list: (store, sample id), carried as "<store>:<id>"
MINE, EXAMPLES = "dataset", "examples"
THESAURUS = Path(__file__).resolve().parents[1] / "assets" / "thesaurus_coco.npz"


@lru_cache(maxsize=1)
def examples_store_dir() -> Path:
    """The examples (the shipped CC BY COCO photos and embedded-model samples, see
    pipeline.examples) in a store of their own, so the demo has real backgrounds, objects and
    samples to curate without adding anything to the user's dataset."""
    import tempfile

    from pipeline.examples import build_examples_store

    # versioned: uids stay the same when assets/examples change, so a changed set needs a new folder
    return build_examples_store(Path(tempfile.gettempdir()) / "diffumask-examples-v2")


def object_sources(store_dir: Path) -> list[tuple[str, Path]]:
    sources = [("your dataset", Path(store_dir))]
    try:
        sources.append(("example photos", examples_store_dir()))
    except (StoreError, OSError):
        pass
    return sources


def background_choices(store_dir: Path | None) -> list[tuple[str, str]]:
    """(label, value) of every background to pick: the user's accepted samples, then the
    examples (``store_dir`` None: the examples only, e.g. a public studio's page before any
    visitor has a dataset)."""
    out = []
    if store_dir is not None:
        with Store(store_dir) as store:
            out = [(f"#{r.id} {', '.join(r.classes)}", f"{MINE}:{r.id}") for r in store.query(status="accepted")]
    try:
        with Store(examples_store_dir()) as ex:
            out += [(f"example: #{r.id} {', '.join(r.classes[:4])}", f"{EXAMPLES}:{r.id}") for r in ex.query()]
    except (StoreError, OSError):
        pass
    return out


def bank_classes(store_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, root in object_sources(store_dir):
        with Store(root) as store:
            for c, n in ObjectBank(store).classes().items():
                counts[c] = counts.get(c, 0) + n
    return counts


@lru_cache(maxsize=1)
def thesaurus():
    from pipeline.thesaurus import Thesaurus

    return Thesaurus.load(THESAURUS) if THESAURUS.exists() else None
