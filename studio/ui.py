"""The Blocks layout and event wiring of the studio."""
from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import cv2
import gradio as gr
import numpy as np

from pipeline import viz
from pipeline.attention import capture_for
from pipeline.dataset import Store, StoreError
from pipeline.embedded.world import CLASS_NAMES
from pipeline.export import FORMATS, ExportError, export, sample_instances
from pipeline.masks import mask_at
from pipeline.refine import REFINERS, RefinementError, RefinerUnavailable, get_refiner, refine_and_choose

from .insert import build_insert_tab
from .state import MODEL_LOCK, Inspection, generate_one

SHORTCUTS_JS = """
<script>
document.addEventListener('keydown', (e) => {
  const t = e.target; if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA')) return;
  const ids = {a: 'curate-accept', r: 'curate-reject', n: 'curate-next', p: 'curate-prev'};
  const id = ids[e.key.toLowerCase()]; if (!id) return;
  const b = document.querySelector('#' + id); if (b) { b.click(); e.preventDefault(); }
});
</script>
"""


# -- Generate & Inspect ----------------------------------------------------------------
CLICK_MODES = ["do nothing", "add object (+)", "mark background (-)"]

def _heat_view(ins: Inspection, resolution: str, t_lo: int, t_hi: int) -> np.ndarray:
    res = None if resolution in (None, "", "all") else [int(resolution)]
    return ins.attention.heat_map(resolutions=res, timesteps=(t_lo, t_hi))


def _current_mask(ins: Inspection, threshold: float) -> np.ndarray:
    return ins.edited_mask if ins.edited_mask is not None else mask_at(ins.heat, threshold)


def _threshold_views(ins: Inspection, threshold: float):
    """The two views that depend on the threshold: the mask overlay and the IoU curve."""
    mask = viz.upscale_for_display(viz.overlay_mask(ins.image, _current_mask(ins, threshold)))
    curve = None
    if ins.choice is not None:
        curve = viz.iou_curve_image(ins.choice.thresholds, ins.choice.ious, ins.choice.threshold, threshold)
    return mask, curve


def _views(ins: Inspection, threshold: float):
    disp = viz.upscale_for_display
    mask, curve = _threshold_views(ins, threshold)
    info = ins.refine_error or ""
    refined = None
    if ins.choice is not None:
        refined = disp(viz.overlay_mask(ins.image, ins.choice.refined, (255, 60, 200)))
        info = (f"{ins.choice.refiner}: chosen threshold {ins.choice.threshold:.2f} "
                f"(IoU {ins.choice.best_iou:.2f} with the refined mask)")
    if ins.edited_mask is not None:
        info += " · showing your edited mask"
    return (disp(viz.overlay_heat(ins.image, ins.heat)), mask, curve, refined, info)


def on_generate(class_name, template, seed, steps, guidance, model, refiner_name, sam_ckpt, resolution, t_lo, t_hi,
                progress=gr.Progress()):
    class_name = (class_name or "").strip()
    if not class_name:
        raise gr.Error("Type a class name, e.g. 'ball'.")
    progress(0.1, desc="loading the model and generating")
    sample = generate_one(model, class_name, seed, template=template or "a photograph of a {}", steps=int(steps),
                          guidance=float(guidance), capture=capture_for(refiner_name))
    ins = Inspection(sample.image, class_name, sample.prompt, int(seed), model or "embedded", sample.attention,
                     sample.heat_map)
    ins.heat = _heat_view(ins, resolution, t_lo, t_hi)
    progress(0.8, desc=f"refining ({refiner_name})")
    _refine(ins, refiner_name, sam_ckpt)
    threshold = ins.choice.threshold if ins.choice else 0.5
    res_choices = ["all"] + [str(r) for r in sample.attention.resolutions]
    return (ins, viz.upscale_for_display(sample.image), *_views(ins, threshold), gr.update(value=threshold),
            gr.update(choices=res_choices, value="all"), f"prompt: {sample.prompt!r}, seed {seed}")


def _refine(ins: Inspection, refiner_name: str, sam_ckpt: str | None) -> None:
    try:
        opts = {"checkpoint": sam_ckpt or None} if refiner_name == "sam" else {}
        clicks = {}
        if ins.clicks:
            clicks = {"points": [(x, y) for x, y, _ in ins.clicks], "labels": [lab for _, _, lab in ins.clicks]}
        refiner = _cached_refiner(refiner_name, **opts)
        if refiner_name == "sam":  # one SamPredictor holds one image embedding: one session at a time
            with MODEL_LOCK:
                ins.choice = refine_and_choose(ins.image, ins.heat, refiner, ins.attention, **clicks)
        else:
            ins.choice = refine_and_choose(ins.image, ins.heat, refiner, ins.attention, **clicks)
        ins.refine_error = None
    except RefinerUnavailable as e:
        ins.choice, ins.refine_error = None, str(e)
        gr.Warning(str(e))
    except RefinementError as e:
        ins.choice, ins.refine_error = None, f"refinement failed: {e}"
        gr.Warning(str(e))


@lru_cache(maxsize=4)
def _cached_refiner(name: str, **opts):
    # SAM's predictor keeps the image embedding: reusing it makes each extra click cheap
    return get_refiner(name, **opts)


def _image_with_clicks(ins: Inspection) -> np.ndarray:
    shown = viz.upscale_for_display(ins.image)
    k = viz.display_scale(ins.image.shape[:2])
    for x, y, label in ins.clicks:
        centre = (int((x + 0.5) * k), int((y + 0.5) * k))
        cv2.circle(shown, centre, max(4, int(k * 1.5)), (40, 220, 60) if label else (235, 40, 40), -1)
        cv2.circle(shown, centre, max(4, int(k * 1.5)), (255, 255, 255), 1)
    return shown


def on_click(ins: Inspection | None, mode, refiner_name, sam_ckpt, threshold, evt: gr.SelectData):
    """A click on the image adds an object (+) or background (-) point and re-runs the refiner
    (GrabCut or SAM) with all clicks so far."""
    if ins is None or not mode or mode == CLICK_MODES[0]:
        return (gr.skip(),) * 6
    if refiner_name not in ("grabcut", "sam"):
        raise gr.Error(f"clicks refine with grabcut or sam, not {refiner_name}: choose one of them first")
    k = viz.display_scale(ins.image.shape[:2])  # display pixels per image pixel
    x = min(max(int(evt.index[0] // k), 0), ins.image.shape[1] - 1)
    y = min(max(int(evt.index[1] // k), 0), ins.image.shape[0] - 1)
    ins.clicks.append((x, y, 1 if mode == CLICK_MODES[1] else 0))
    _refine(ins, refiner_name, sam_ckpt)
    return (_image_with_clicks(ins), *_views(ins, threshold))


def on_clear_clicks(ins: Inspection | None, refiner_name, sam_ckpt, threshold):
    if ins is None:
        return (gr.skip(),) * 6
    ins.clicks.clear()
    _refine(ins, refiner_name, sam_ckpt)
    return (_image_with_clicks(ins), *_views(ins, threshold))


def on_threshold(ins: Inspection | None, threshold: float):
    """The slider: only the two views that depend on the threshold are redrawn (the cheap
    SamPredictor-style half: the heat map and refinement were computed once at generation)."""
    if ins is None:
        return None, None
    return _threshold_views(ins, threshold)


def on_view_change(ins, resolution, t_lo, t_hi, threshold, refiner_name, sam_ckpt):
    if ins is None:
        return (None,) * 5
    if t_lo > t_hi:
        raise gr.Error("the timestep range is empty (from > to)")
    ins.heat = _heat_view(ins, resolution, t_lo, t_hi)
    _refine(ins, refiner_name, sam_ckpt)
    return _views(ins, threshold)


def on_edit_mask(ins: Inspection | None, editor, threshold):
    """Brush strokes on the editor's layer add to the mask (white) or erase it (eraser)."""
    if ins is None or editor is None:
        return (None,) * 5
    layers = editor.get("layers") or []
    base = _current_mask(ins, threshold).copy()
    for layer in layers:
        arr = np.asarray(layer)
        if arr.ndim == 3 and arr.shape[2] == 4:
            import cv2

            alpha = cv2.resize(arr[..., 3], ins.image.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
            bright = cv2.resize(arr[..., :3].mean(2), ins.image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
            base[alpha & (bright >= 128)] = True
            base[alpha & (bright < 128)] = False
    ins.history.append(ins.edited_mask)
    ins.edited_mask = base
    return _views(ins, threshold)


def on_undo(ins: Inspection | None, threshold):
    if ins is None:
        return (None,) * 5
    ins.edited_mask = ins.history.pop() if ins.history else None
    return _views(ins, threshold)


def editor_background(ins: Inspection | None, threshold):
    if ins is None:
        return None
    return {"background": viz.upscale_for_display(viz.overlay_mask(ins.image, _current_mask(ins, threshold))),
            "layers": [], "composite": None}


def make_store_actions(store_dir: Path):
    def on_store(ins: Inspection | None, threshold: float, status: str, tags: str):
        if ins is None:
            raise gr.Error("Generate an image first.")
        store = Store(store_dir)
        mask = _current_mask(ins, threshold)
        user_t = None if ins.choice and abs(threshold - ins.choice.threshold) < 1e-6 else float(threshold)
        source = "user" if ins.edited_mask is not None else "generated"
        try:
            tag_list = [t.strip() for t in (tags or "").split(",") if t.strip()]
            sid = store.add(ins.image, [ins.class_name], instances=[(ins.class_name, mask)], instance_sources=[source],
                            prompt=ins.prompt, seed=ins.seed, model=ins.model, heat_map=ins.heat,
                            threshold=ins.choice.threshold if ins.choice else None,
                            refined_mask=ins.choice.refined if ins.choice else None, status=status, tags=tag_list,
                            meta={"refiner": ins.choice.refiner if ins.choice else None})
            if user_t is not None:
                store.update(sid, user_threshold=user_t)
        except StoreError as e:
            raise gr.Error(str(e))
        finally:
            store.close()
        ins.stored_id = sid
        gr.Info(f"sample #{sid} saved as {status}")
        return f"saved as #{sid} ({status})"

    def on_accept(ins: Inspection | None, threshold: float, tags: str):
        return on_store(ins, threshold, "accepted", tags)

    def on_reject(ins: Inspection | None, threshold: float, tags: str):
        return on_store(ins, threshold, "rejected", tags)

    return on_accept, on_reject


# -- Curate & Export ---------------------------------------------------------------------
def make_curate_actions(store_dir: Path):
    def _query(status, classes, tag):
        store = Store(store_dir)
        try:
            recs = store.query(status=None if status == "any" else status,
                               classes=[c.strip() for c in (classes or "").split(",") if c.strip()] or None,
                               tags=[tag.strip()] if tag and tag.strip() else None)
            items = []
            for r in recs:
                img = store.image(r.image)
                inst = sample_instances(store, r)
                if inst:
                    img = viz.overlay_mask(img, np.any([m for _, m in inst], axis=0))
                items.append((viz.upscale_for_display(img, 128), f"#{r.id} {', '.join(r.classes)} · {r.status}"))
            return recs, items
        except StoreError as e:
            raise gr.Error(str(e))
        finally:
            store.close()

    def refresh(status, classes, tag):
        recs, items = _query(status, classes, tag)
        return [r.id for r in recs], items, f"{len(recs)} samples", None

    def select(ids, evt: gr.SelectData):
        return evt.index

    def detail(ids, index):
        if index is None or not ids or index >= len(ids):
            return "", "", None
        store = Store(store_dir)
        try:
            r = store.get(ids[index])
        finally:
            store.close()
        text = (f"#{r.id} · {', '.join(r.classes)} · {r.status} · seed {r.seed} · model {r.model}\n"
                f"prompt: {r.prompt}\nthreshold {r.threshold} (yours: {r.user_threshold}) · tags: {', '.join(r.tags)}")
        return text, r.notes, r.effective_threshold

    def set_status(ids, index, status):
        if index is None or not ids:
            raise gr.Error("Select a sample in the gallery first.")
        store = Store(store_dir)
        try:
            store.set_status([ids[index]], status)
        finally:
            store.close()
        gr.Info(f"#{ids[index]} {status}")
        return min(index + 1, len(ids) - 1)

    def save_details(ids, index, notes, threshold):
        if index is None or not ids:
            raise gr.Error("Select a sample in the gallery first.")
        store = Store(store_dir)
        try:
            rec = store.get(ids[index])
            t = None if threshold is None or rec.threshold is None or abs(threshold - rec.threshold) < 1e-6 else threshold
            store.update(ids[index], notes=notes or "", user_threshold=t)
        except StoreError as e:
            raise gr.Error(str(e))
        finally:
            store.close()
        gr.Info("saved")

    def bulk(ids, status):
        store = Store(store_dir)
        try:
            n = store.set_status(ids or [], status)
        finally:
            store.close()
        gr.Info(f"{n} samples {status}")

    def do_export(fmt, status, classes, tag, val, progress=gr.Progress()):
        store = Store(store_dir)
        work = Path(tempfile.mkdtemp(prefix="studio-export-"))
        try:
            progress(0.1, desc=f"exporting {fmt}")
            rep = export(store, fmt, work / f"dataset-{fmt}", status=None if status == "any" else status,
                         classes=[c.strip() for c in (classes or "").split(",") if c.strip()] or None,
                         tags=[tag.strip()] if tag and tag.strip() else None, val_fraction=float(val or 0))
            progress(0.8, desc="zipping")
            archive = shutil.make_archive(str(work / f"dataset-{fmt}"), "zip", rep.out)
        except (ExportError, StoreError) as e:
            raise gr.Error(str(e))
        finally:
            store.close()
        info = f"{rep.n_images} images, {rep.n_instances} instances, splits {rep.splits}"
        info += "".join(f"; not held by {fmt}: {n} {what}" for what, n in rep.lost.items())
        if rep.damaged:  # listed with reasons in the zip's manifest.json
            info += f"; **{len(rep.damaged)} damaged samples skipped**: " + ", ".join(
                f"{d['sample_id']} ({d['reason']})" for d in rep.damaged[:5])
        return archive, info

    return refresh, select, detail, set_status, save_details, bulk, do_export


def build_app(store_dir: str | os.PathLike = "studio_data", model: str = "embedded") -> gr.Blocks:
    store_dir = Path(store_dir)
    Store(store_dir).close()  # create it (and fail early if the folder is unusable)
    refiners = sorted(REFINERS)
    with gr.Blocks(title="DiffuMask-Editor Studio") as demo:
        gr.Markdown("# DiffuMask-Editor Studio\nSegmentation data from a diffusion model's cross-attention. "
                    f"Model: **{model}** (the embedded model draws 64x64 scenes of: {', '.join(CLASS_NAMES)}).")
        ins_state = gr.State(None)
        with gr.Tab("Generate & Inspect", id="generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    class_in = gr.Dropdown(list(CLASS_NAMES), value="ball", allow_custom_value=True, label="class")
                    template = gr.Textbox("a photograph of a {}", label="prompt template ({} = class)")
                    seed = gr.Number(0, precision=0, label="seed")
                    steps = gr.Slider(5, 100, 25, step=1, label="steps")
                    guidance = gr.Slider(1, 15, 5, step=0.5, label="guidance")
                    model_in = gr.Textbox(model, label="model (embedded, diffusers folder, .safetensors file, hub id)")
                    refiner = gr.Dropdown(refiners, value="grabcut", label="refiner")
                    sam_ckpt = gr.Textbox("", label="SAM weights (sam refiner): segment-anything .pth, or transformers SAM folder / hub id")
                    gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                    gen_info = gr.Markdown()
                with gr.Column(scale=2):
                    with gr.Row():
                        image_out = gr.Image(label="image (click to add object/background points)", type="numpy",
                                             interactive=False, elem_id="image-view")
                        heat_out = gr.Image(label="attention heat map", type="numpy", interactive=False)
                    with gr.Row():
                        res_in = gr.Radio(["all"], value="all", label="resolution")
                        t_lo = gr.Slider(0, 999, 0, step=100, label="timesteps from")
                        t_hi = gr.Slider(0, 999, 999, step=100, label="timesteps to")
                    with gr.Row():
                        click_mode = gr.Radio(CLICK_MODES, value=CLICK_MODES[0], label="click on the image to",
                                              elem_id="click-mode")
                        clear_clicks = gr.Button("Clear clicks")
                    threshold = gr.Slider(0.0, 1.0, 0.5, step=0.01, label="threshold", elem_id="threshold")
                    with gr.Row():
                        mask_out = gr.Image(label="mask at threshold", type="numpy", interactive=False, elem_id="mask-view")
                        refined_out = gr.Image(label="refined mask", type="numpy", interactive=False,
                                               elem_id="refined-view")
                        curve_out = gr.Image(label="IoU vs threshold", type="numpy", interactive=False)
                    choice_info = gr.Markdown(elem_id="choice-info")
                    with gr.Accordion("Touch up the mask (white brush adds, black erases)", open=False):
                        editor = gr.ImageEditor(type="numpy", label="mask editor", brush=gr.Brush(colors=["#ffffff", "#000000"]))
                        with gr.Row():
                            load_editor = gr.Button("Load mask into editor")
                            apply_edit = gr.Button("Apply strokes")
                            undo = gr.Button("Undo")
                    with gr.Row():
                        tags_in = gr.Textbox("", label="tags (comma-separated)")
                        accept_btn = gr.Button("Accept into dataset", variant="primary", elem_id="accept-btn")
                        reject_btn = gr.Button("Reject", elem_id="reject-btn")
                    store_info = gr.Markdown(elem_id="store-info")
            views = [heat_out, mask_out, curve_out, refined_out, choice_info]
            gen_btn.click(on_generate, [class_in, template, seed, steps, guidance, model_in, refiner, sam_ckpt, res_in,
                                        t_lo, t_hi], [ins_state, image_out, *views, threshold, res_in, gen_info],
                          concurrency_limit=1, concurrency_id="model", api_name="generate")
            # Re-thresholding is a sub-millisecond numpy comparison: skip the queue so the slider
            # feels live (the queue's round trip alone is most of the latency).
            threshold.input(on_threshold, [ins_state, threshold], [mask_out, curve_out], api_name="threshold",
                            show_progress="hidden", trigger_mode="always_last", queue=False)
            for comp in (res_in, t_lo, t_hi, refiner):
                comp.input(on_view_change, [ins_state, res_in, t_lo, t_hi, threshold, refiner, sam_ckpt], views)
            image_out.select(on_click, [ins_state, click_mode, refiner, sam_ckpt, threshold], [image_out, *views])
            clear_clicks.click(on_clear_clicks, [ins_state, refiner, sam_ckpt, threshold], [image_out, *views])
            load_editor.click(editor_background, [ins_state, threshold], editor)
            apply_edit.click(on_edit_mask, [ins_state, editor, threshold], views)
            undo.click(on_undo, [ins_state, threshold], views)
            on_accept, on_reject = make_store_actions(store_dir)
            accept_btn.click(on_accept, [ins_state, threshold, tags_in], store_info, api_name="accept")
            reject_btn.click(on_reject, [ins_state, threshold, tags_in], store_info, api_name="reject")
        with gr.Tab("Insert Objects", id="insert"):
            build_insert_tab(store_dir, model_in)
        with gr.Tab("Curate & Export", id="curate"):
            refresh, select, detail, set_status, save_details, bulk, do_export = make_curate_actions(store_dir)
            ids_state, index_state = gr.State([]), gr.State(None)
            with gr.Row():
                f_status = gr.Dropdown(["any", "accepted", "pending", "rejected"], value="any", label="status")
                f_class = gr.Textbox("", label="classes (comma-separated)")
                f_tag = gr.Textbox("", label="tag")
                refresh_btn = gr.Button("Refresh", elem_id="curate-refresh")
            count = gr.Markdown()
            gallery = gr.Gallery(label="dataset", columns=8, height=300, object_fit="contain", allow_preview=False,
                                 elem_id="curate-gallery")
            with gr.Row():
                detail_md = gr.Markdown()
                notes = gr.Textbox("", label="notes")
                user_t = gr.Slider(0, 1, 0.5, step=0.01, label="threshold for this sample")
            with gr.Row():
                gr.Markdown("Keys: **a** accept · **r** reject · **n** next · **p** previous")
                prev_btn = gr.Button("Previous", elem_id="curate-prev")
                acc = gr.Button("Accept", variant="primary", elem_id="curate-accept")
                rej = gr.Button("Reject", elem_id="curate-reject")
                next_btn = gr.Button("Next", elem_id="curate-next")
                save_btn = gr.Button("Save notes/threshold")
            with gr.Row():
                bulk_acc = gr.Button("Accept all shown")
                bulk_rej = gr.Button("Reject all shown")
            with gr.Row():
                fmt = gr.Dropdown(list(FORMATS), value="coco", label="export format")
                val = gr.Slider(0, 0.5, 0.0, step=0.05, label="validation fraction")
                exp_btn = gr.Button("Export", variant="primary", elem_id="export-btn")
            exp_file = gr.File(label="download")
            exp_info = gr.Markdown(elem_id="export-info")
            filters = [f_status, f_class, f_tag]
            refresh_btn.click(refresh, filters, [ids_state, gallery, count, index_state], api_name="refresh")
            gallery.select(select, ids_state, index_state).then(detail, [ids_state, index_state], [detail_md, notes, user_t])
            for btn, status in ((acc, "accepted"), (rej, "rejected")):
                btn.click(set_status, [ids_state, index_state, gr.State(status)], index_state).then(
                    detail, [ids_state, index_state], [detail_md, notes, user_t])
            next_btn.click(lambda ids, i: min((i or 0) + 1, max(len(ids) - 1, 0)) if ids else None,
                           [ids_state, index_state], index_state).then(detail, [ids_state, index_state], [detail_md, notes, user_t])
            prev_btn.click(lambda ids, i: max((i or 0) - 1, 0) if ids else None, [ids_state, index_state],
                           index_state).then(detail, [ids_state, index_state], [detail_md, notes, user_t])
            save_btn.click(save_details, [ids_state, index_state, notes, user_t], None)
            bulk_acc.click(lambda ids: bulk(ids, "accepted"), ids_state, None)
            bulk_rej.click(lambda ids: bulk(ids, "rejected"), ids_state, None)
            exp_btn.click(do_export, [fmt, f_status, f_class, f_tag, val], [exp_file, exp_info], api_name="export")
    demo.queue(default_concurrency_limit=4, max_size=64)
    return demo
