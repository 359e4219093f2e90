"""The Curate & Export tab: widgets over one :class:`pipeline.curation.CurateSession` per
browser session (filter, page, highlight, this user's status changes, a previewed threshold,
the last export).

One-way: every handler changes the session and returns ``render(session)``, every output of
the tab; the gallery's pictures are re-sent only when a tile changed (a review step sends the
highlight and the large view)."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from pipeline.curation import Curation, CurateSession, SampleFilter
from pipeline.dataset import STATUSES, Store, StoreError
from pipeline.export import FORMATS
from pipeline.inspect import DEFAULT_THRESHOLD

from .console import VIEW_FORMAT, add_debug_reader, handler, picture, screen_shows, view
from .downloads import export_zip
from .state import store_dir_for

CURATE_KEYS_HELP = """**Keys** (not while typing): **n** next · **p** previous · **a** accept · **r** reject ·
**u** undo your last status change · **h** heat map on/off"""
EXAMPLES_NOTE = """**Examples**, to look at before your own data exists: {n} pre-made samples (the four CC BY 2.0
COCO photos of `assets/examples` with their COCO masks, attribution in its `ATTRIBUTION.md`, and samples the
embedded model generated). They are kept in a store of their own: **your dataset** ({store}) is what the
gallery below shows and what Export writes; it holds no example unless you add them (tagged `example`)."""


class CurateActions:
    """Store-side helpers of the tab for scripts and benches: one page's gallery items and an
    export zip (the tab itself goes through :class:`CurateSession` and :func:`render`)."""

    def __init__(self, store_dir: Path):
        self.curation = Curation(store_dir)

    def gallery(self, status, classes, tag, page: int = 0):
        """(ids, [(picture, caption)], summary, page) for one page of matching samples."""
        shown = self.curation.page(SampleFilter.parse(status, classes, tag), page)
        return shown.ids, [(t.picture, t.caption) for t in shown.tiles], shown.summary, shown.page

    def export_zip(self, fmt, status, classes, tag, val) -> tuple[str, str]:
        return export_zip(self.curation, fmt, SampleFilter.parse(status, classes, tag), val)


# -- render ----------------------------------------------------------------------------------
OUTPUTS = ("gallery", "count", "review", "detail", "notes", "threshold", "scope", "file", "export_info", "message",
           "examples")


def threshold_widget(rev) -> tuple:
    """(value, interactive, label) of the per-sample threshold slider for a Review (None: no sample)."""
    if rev is None or rev.damaged:
        return DEFAULT_THRESHOLD, False, "threshold for this sample (select one)"
    t = rev.threshold if rev.threshold is not None else DEFAULT_THRESHOLD
    if not rev.threshold_applies:
        kinds = ", ".join(sorted({i.source for i in rev.record.instances})) or "no mask"
        return t, False, f"threshold: does not apply to this sample (its mask is {kinds}, not a threshold mask)"
    return t, True, "threshold for this sample (previewed here; Save keeps it)"


def render(ses: CurateSession | None) -> tuple:
    """Every output of the tab (in :data:`OUTPUTS` order) for ``ses``."""
    if ses is None:
        return (gr.skip(),) * len(OUTPUTS)
    tiles = ses.page.tiles if ses.page is not None else []
    items_key = tuple((t.sample_id, t.caption, id(t.picture)) for t in tiles)
    if ses.shown.get("gallery_items") != items_key:
        ses.shown["gallery_items"], ses.shown["gallery_index"] = items_key, ses.index
        gallery = gr.update(value=[(t.picture, t.caption) for t in tiles], selected_index=ses.index)
    else:
        gallery = view(ses, "gallery_index", ses.index, lambda: gr.update(selected_index=ses.index))
    rev = ses.review()
    sid = ses.current
    picture_key = None if rev is None else (sid, ses.show_heat, ses.preview, rev.record.image,
                                            tuple(i.mask for i in rev.record.instances), rev.damaged)
    detail = "Select a sample in the gallery (or press n)." if rev is None else "  \n".join(rev.details())
    if ses.preview is not None:
        detail += f"  \n**previewing threshold {ses.preview:.2f}**: Save keeps it, another sample drops it"
    value, interactive, label = threshold_widget(rev)
    if ses.preview is not None:
        value = ses.preview
    exp = ses.last_export
    empty = ses.curation.count() == 0
    texts = {"count": ses.page.summary if ses.page is not None else "", "detail": detail,
             "scope": ses.export_summary(), "export_info": exp[1] if exp else "", "message": ses.message}
    return (
        gallery,
        view(ses, "count", texts["count"], lambda: texts["count"]),
        view(ses, "review", picture_key, lambda: None if rev is None else rev.picture),
        view(ses, "detail", detail, lambda: detail),
        # the notes box is refilled only for another sample (or saved notes): typing is never overwritten
        view(ses, "notes", (sid, None if rev is None else rev.record.notes),
             lambda: gr.update(value="" if rev is None else rev.record.notes)),
        view(ses, "threshold", (round(float(value), 4), interactive, label),
             lambda: gr.update(value=value, interactive=interactive, label=label)),
        view(ses, "scope", texts["scope"], lambda: texts["scope"]),
        # a failed export keeps the previous download
        view(ses, "file", exp[0] if exp else None,
             lambda: gr.update(value=exp[0], visible=True) if exp else gr.update(visible=False)),
        view(ses, "export_info", texts["export_info"], lambda: texts["export_info"]),
        view(ses, "message", texts["message"], lambda: texts["message"]),
        # the examples box is open while the user's dataset is empty and closes once it holds a
        # sample (the examples added, or one accepted elsewhere): open, it pushes the large view
        # below the fold of a 1400x900 window. Sent only when that changes: a box the user opened
        # again stays open.
        view(ses, "examples_open", empty, lambda: gr.update(open=empty)),
    )


# -- handlers ------------------------------------------------------------------------------------
def _open(ses, request) -> CurateSession:
    """The page's Curate session, over the sender's dataset (a public visitor's store that was
    swept while idle is a new, empty one: the session follows it)."""
    store_dir = store_dir_for(request)
    if ses is None or Path(ses.curation.store_dir) != Path(store_dir):
        return CurateSession.open(store_dir)
    return ses


def _new_session(request) -> CurateSession:
    return CurateSession.open(store_dir_for(request))


@handler(render, _new_session)
def on_refresh(ses, request: gr.Request = None):
    ses = _open(ses, request)
    ses.refresh()
    return ses


@handler(render, _new_session)
def on_filter(ses, status, classes, tag, request: gr.Request = None):
    ses = _open(ses, request)
    ses.set_filter(status, classes, tag)
    return ses


@handler(render, _new_session)
def on_page(ses, delta, request: gr.Request = None):
    ses = _open(ses, request)
    ses.turn_page(int(delta))
    return ses


@handler(render, _new_session)
def on_select(ses, evt: gr.SelectData, request: gr.Request = None):
    ses = _open(ses, request)
    screen_shows(ses, "gallery_index", evt.index)  # the gallery highlights it already
    ses.select(evt.index)
    return ses


@handler(render, _new_session)
def on_step(ses, delta, request: gr.Request = None):
    ses = _open(ses, request)
    ses.step(int(delta))
    return ses


@handler(render, _new_session)
def on_heat(ses, show, request: gr.Request = None):
    ses = _open(ses, request)
    ses.set_show_heat(bool(show))
    return ses


@handler(render, _new_session)
def on_status(ses, status, request: gr.Request = None):
    ses = _open(ses, request)
    ses.set_status(status)
    gr.Info(ses.message)
    return ses


@handler(render, _new_session)
def on_bulk(ses, status, request: gr.Request = None):
    ses = _open(ses, request)
    ses.bulk(status)
    gr.Info(ses.message)
    return ses


@handler(render, _new_session)
def on_undo(ses, request: gr.Request = None):
    ses = _open(ses, request)
    gr.Info(ses.undo())
    return ses


@handler(render, _new_session)
def on_preview(ses, threshold, request: gr.Request = None):
    ses = _open(ses, request)
    ses.preview_threshold(threshold)
    return ses


@handler(render, _new_session)
def on_save(ses, notes, threshold, request: gr.Request = None):
    ses = _open(ses, request)
    gr.Info(ses.save(notes, threshold))
    return ses


@handler(render, _new_session)
def on_export_status(ses, status, request: gr.Request = None):
    ses = _open(ses, request)
    ses.set_export_status(status)
    return ses


@handler(render, _new_session)
def on_export(ses, fmt, status, val, request: gr.Request = None, progress=gr.Progress()):
    ses = _open(ses, request)
    ses.set_export_status(status)
    progress(0.1, desc=f"exporting {fmt}")
    ses.exported(*export_zip(ses.curation, fmt, ses.export_where, val))
    return ses


@handler(render, _new_session)
def on_copy_examples(ses, request: gr.Request = None):
    from pipeline.examples import copy_examples

    from .insert import examples_store_dir

    ses = _open(ses, request)
    with Store(examples_store_dir()) as src, Store(ses.curation.store_dir) as dst:
        ids = copy_examples(src, dst)
    ses.refresh()
    ses.message = f"{len(ids)} examples are in your dataset now, tagged `example` (filter them with the tag box)"
    gr.Info(f"{len(ids)} examples in your dataset (tag 'example')")
    return ses


# -- layout and wiring ---------------------------------------------------------------------------
def build_examples_box(store_dir: Path | None):
    """The tab's examples, shown at once on a fresh studio (open while the user's dataset is
    empty; ``store_dir`` None: a public studio, where each visitor has their own): a read-only
    gallery of the examples store and a button that copies them into the user's dataset.
    Returns the box and its button."""
    from .insert import examples_store_dir

    try:
        ex_dir = examples_store_dir()
        _, items, _, _ = CurateActions(ex_dir).gallery("any", "", "", 0)
    except (StoreError, OSError) as e:  # a read-only temp dir: the studio works without examples
        items = []
        gr.Warning(f"examples unavailable: {e}")
    empty = True  # a public studio: every visitor starts on an empty dataset of their own
    if store_dir is not None:
        with Store(store_dir) as store:
            empty = store.count() == 0
    with gr.Accordion(f"Examples ({len(items)} pre-made samples, not in your dataset)", open=empty and bool(items),
                      visible=bool(items), elem_id="curate-examples-box") as box:
        gr.Markdown(EXAMPLES_NOTE.format(n=len(items), store="this browser's own" if store_dir is None
                                         else f"`{store_dir}`"), elem_id="curate-examples-note")
        gr.Gallery(items, label="examples (read-only; click one to enlarge)", columns=10, height=200,
                   object_fit="contain", allow_preview=True, elem_id="curate-examples", format=VIEW_FORMAT)
        copy = gr.Button("Add the examples to my dataset", size="sm", elem_id="curate-examples-copy")
    return box, copy


def _with(fn, *fixed):
    """``fn`` with its first inputs after the session fixed (a button per status or direction)."""
    def run(ses, request: gr.Request = None):
        return fn(ses, *fixed, request)
    return run


def build_curate_tab(store_dir: Path, tab: gr.Tab):
    state = gr.State(None)
    ex_box, ex_copy = build_examples_box(store_dir)
    with gr.Row():
        f_status = gr.Dropdown(["any", *STATUSES], value="any", label="status")
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
            gallery = gr.Gallery(label="dataset", columns=8, height=400, object_fit="contain", allow_preview=False,
                                 elem_id="curate-gallery", format=VIEW_FORMAT)
            with gr.Row():
                prev_btn = gr.Button("◀ Previous (p)", elem_id="curate-prev", size="sm", min_width=90)
                acc = gr.Button("Accept (a)", variant="primary", elem_id="curate-accept", size="sm", min_width=90)
                rej = gr.Button("Reject (r)", elem_id="curate-reject", variant="stop", size="sm", min_width=90)
                undo_status = gr.Button("Undo status (u)", elem_id="curate-undo", size="sm", min_width=90)
                next_btn = gr.Button("Next (n) ▶", elem_id="curate-next", size="sm", min_width=90)
            gr.Markdown(CURATE_KEYS_HELP, elem_id="curate-keys")
            message = gr.Markdown(elem_id="curate-message")
        with gr.Column(scale=2):
            review_img = picture("current sample", "curate-view", 280)
            show_heat = gr.Checkbox(False, label="show the heat map (h)", elem_id="curate-heat")
            detail_md = gr.Markdown(elem_id="curate-detail")
    with gr.Row():
        notes = gr.Textbox("", label="notes", scale=2, elem_id="curate-notes")
        user_t = gr.Slider(0, 1, DEFAULT_THRESHOLD, step=0.01, label="threshold for this sample", interactive=False,
                           elem_id="curate-threshold")
        save_btn = gr.Button("Save notes/threshold", size="sm", elem_id="curate-save")
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
    outputs = [state, gallery, count, review_img, detail_md, notes, user_t, exp_scope, exp_file, exp_info, message,
               ex_box]
    assert len(outputs) == 1 + len(OUTPUTS)
    add_debug_reader("curate", state, render, OUTPUTS)
    quiet = dict(show_progress="hidden")
    refresh_btn.click(on_refresh, state, outputs, api_name="refresh", **quiet)
    tab.select(on_refresh, state, outputs, **quiet)
    for comp in (f_status, f_class, f_tag):
        comp.change(on_filter, [state, f_status, f_class, f_tag], outputs, **quiet,
                    api_name="filter" if comp is f_status else None)
    prev_page.click(_with(on_page, -1), state, outputs, **quiet)
    next_page.click(_with(on_page, 1), state, outputs, **quiet)
    gallery.select(on_select, state, outputs, **quiet)
    show_heat.input(on_heat, [state, show_heat], outputs, **quiet)
    # off the queue: a step is a store read and one picture, and the queue's round trip would be
    # most of its latency (as for the threshold slider)
    next_btn.click(_with(on_step, 1), state, outputs, api_name="next", queue=False, **quiet)
    prev_btn.click(_with(on_step, -1), state, outputs, api_name="previous", queue=False, **quiet)
    acc.click(_with(on_status, "accepted"), state, outputs, api_name="curate_accept", **quiet)
    rej.click(_with(on_status, "rejected"), state, outputs, api_name="curate_reject", **quiet)
    undo_status.click(on_undo, state, outputs, api_name="undo_status", **quiet)
    user_t.input(on_preview, [state, user_t], outputs, trigger_mode="always_last", **quiet,
                 show_progress_on=[user_t])  # a step's loading status on the slider alone (see generate's)
    save_btn.click(on_save, [state, notes, user_t], outputs, api_name="save_details", **quiet)
    bulk_acc.click(_with(on_bulk, "accepted"), state, outputs, **quiet)
    bulk_rej.click(_with(on_bulk, "rejected"), state, outputs, **quiet)
    e_status.change(on_export_status, [state, e_status], outputs, **quiet)
    exp_btn.click(on_export, [state, fmt, e_status, val], outputs, api_name="export", show_progress_on=[exp_info])
    ex_copy.click(on_copy_examples, state, outputs, api_name="examples_copy", **quiet)
