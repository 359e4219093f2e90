"""The studio's page: one tab per module (generate, insert, curate), the shared keys, styles
and the queue. Every tab is drawn from its session by its own ``render``."""
from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from pipeline.access import is_public
from pipeline.dataset import Store
from pipeline.embedded.world import CLASS_NAMES
from pipeline.gpu import queue_settings

from .console import CLICK_PICTURE, StudioBlocks, atomic_image_cache, setup_console
from .curate import CurateActions, build_curate_tab  # noqa: F401 (scripts import CurateActions here)
from .downloads import EXPORTS_DIR, clean_old_exports  # noqa: F401 (scripts import EXPORTS_DIR here)
from .generate import build_generate_tab
from .insert import background_choices, build_insert_tab
from .state import dataset_lease, set_model_options, set_store_dir, set_visitor_stores, store_dir_for


def build_app(store_dir: str | os.PathLike = "studio_data", model: str = "embedded", device: str = "auto",
              dtype: str | None = None, visitor_idle_minutes: float | None = None) -> gr.Blocks:
    """The studio over ``store_dir``: the operator's one shared dataset, or, in public mode
    (pipeline.access.is_public), the folder under which each browser gets its own
    (``<store_dir>/visitors/<random token>``, removed after ``visitor_idle_minutes`` idle)."""
    setup_console()
    atomic_image_cache()
    if is_public():
        from pipeline.visitors import DEFAULT_IDLE_MINUTES, VisitorStores

        idle = DEFAULT_IDLE_MINUTES if visitor_idle_minutes is None else float(visitor_idle_minutes)
        visitors = VisitorStores(Path(store_dir) / "visitors", idle_seconds=idle * 60)
        visitors.sweep()  # what a previous run left idle
        visitors.start_sweeper()
        set_visitor_stores(visitors)
        store_dir = None  # no dataset is shared: each handler works in its sender's
    else:
        store_dir = set_store_dir(Path(store_dir))
        Store(store_dir).close()  # create it (and fail early, with the store's message, if it is unusable)
    clean_old_exports(keep=None)
    set_model_options(device, dtype)
    with StudioBlocks(title="DiffuMask-Editor Studio", delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# DiffuMask-Editor Studio\nSegmentation data from a diffusion model's cross-attention. "
                    f"Model: **{model}** (the embedded model draws 64x64 scenes of: {', '.join(CLASS_NAMES)}).")
        with gr.Tab("Generate & Inspect", id="generate"):
            model_in, _ = build_generate_tab(model)
        with gr.Tab("Insert Objects", id="insert") as insert_tab:
            bg_choice = build_insert_tab(store_dir, model_in)
        with gr.Tab("Curate & Export", id="curate") as curate_tab:
            build_curate_tab(store_dir, curate_tab)

        def refresh_backgrounds(request: gr.Request = None):
            with dataset_lease(request):
                return gr.update(choices=background_choices(store_dir_for(request)))

        insert_tab.select(refresh_backgrounds, None, bg_choice, show_progress="hidden")
    # On a Space: sized for its hardware (CPU: one model call at a time; ZeroGPU: a GPU slice
    # per call); elsewhere four handlers at once, model calls still one at a time (MODEL_LOCK).
    demo.queue(**(queue_settings() if os.environ.get("SPACE_ID") else {"default_concurrency_limit": 4, "max_size": 64}))
    return demo


# Hides the editor's own Erase tool: it removes strokes only, never the mask (the black brush does).
# The box editor (gradio_image_annotation) asks for its canvas' full width, which wraps the Insert
# tab's row of pictures onto four lines; it shrinks like the gr.Image beside it instead.
STUDIO_CSS = """
#mask-editor button[aria-label="Erase"] { display: none; }
#insert-box { flex: 1 1 0% !important; min-width: 200px !important; }
#insert-box canvas { max-width: 100%; }
#store-info p, #insert-accept-info p { margin: 0; }
/* views sent at the image's own size (64x64 for the embedded model) fill their panel, enlarged
   without smoothing: a pixel stays a sharp square, as upscale_for_display would draw it */
#heat-view img, #mask-view img, #threshold-view img, #refined-view img {
  width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
.dm-debug { position: absolute !important; left: -10000px !important; width: 10px !important; }
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
// Unsaved work: the Generate tab's save line starts with a dot while the mask on screen is not
// what the store holds; leaving the page then asks first (the browser's own prompt).
window.addEventListener('beforeunload', (e) => {
  const line = document.getElementById('store-info');
  if (line && line.innerText.includes('unsaved changes')) { e.preventDefault(); e.returnValue = ''; }
});
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


# A picture redrawn after each click (its click dots, the insert box) has no pixels for a moment
# while the new one loads (naturalWidth 0), and Gradio's image then computes no position and
# drops the click without a word: a person's quick second click was lost (seen in CI, and here
# under load in 5 of 12 runs of the generate journey). Such a click is held, and made again at
# the same place on the picture (kept as a share of its box: the page may scroll meanwhile) as
# soon as the picture has loaded; clicks made meanwhile wait
# behind it and are made again one by one, so they still reach the server in the order they
# were made (made again all at once, two were once stamped in the wrong order).
KEEP_CLICKS_JS = """
<script>
(() => {
  const held = [];
  let replaying = false, stampedBefore = null, sentAt = 0;
  const stamped = () => window.dmClicksStamped || 0;  // studio.console.CLICK_MADE_AT_JS counts them
  function loaded(img) { return img && img.complete && img.naturalWidth > 0; }
  function replay() {
    // one at a time: the next only once the last was stamped with the page's clock (or after
    // 1 s: a picture whose clicks are not stamped), so the stamps keep the order they were made in
    const waiting = stampedBefore !== null && stamped() <= stampedBefore && performance.now() - sentAt < 1000;
    if (!waiting && !held.length) { replaying = false; stampedBefore = null; return; }
    // the picture as it is now (its block looked up again by id: Gradio may have drawn it anew)
    const c = held[0], box = c && (document.getElementById(c.id) || c.box);
    const img = box && box.querySelector('button img');
    if (waiting || (!loaded(img) && performance.now() - c.at < 30000)) { requestAnimationFrame(replay); return; }
    held.shift();
    stampedBefore = stamped(); sentAt = performance.now();
    if (!img) { requestAnimationFrame(replay); return; }
    // where it was made on the picture, wherever the picture is now (the page may have scrolled)
    const button = img.closest('button'), r = button.getBoundingClientRect();
    const again = new MouseEvent('click', { bubbles: true, cancelable: true,
                                            clientX: r.left + c.fx * r.width, clientY: r.top + c.fy * r.height });
    again.dmReplayed = true;
    button.dispatchEvent(again);
    requestAnimationFrame(replay);
  }
  document.addEventListener('click', (e) => {
    if (e.dmReplayed) return;
    const box = e.target.closest && e.target.closest('.__CLICK_PICTURE__');
    const target = box && e.target.closest('button');
    if (!target || !box.contains(target) || !target.querySelector('img')) return;
    if (!replaying && loaded(target.querySelector('img'))) return;  // Gradio takes it as it is
    e.stopPropagation(); e.preventDefault();
    const r = target.getBoundingClientRect();  // kept as a share of the picture's box: see replay
    held.push({ box, id: box.id, fx: (e.clientX - r.left) / r.width, fy: (e.clientY - r.top) / r.height,
                at: performance.now() });
    if (!replaying) { replaying = true; requestAnimationFrame(replay); }
  }, true);
})();
</script>
""".replace("__CLICK_PICTURE__", CLICK_PICTURE)


# everything the page runs besides Gradio (app.py passes it as the page head)
STUDIO_HEAD = SHORTCUTS_JS + KEEP_CLICKS_JS
