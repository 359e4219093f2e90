"""The Insert Objects tab: background -> thesaurus suggestions -> object -> placement ->
harmonized composite with occlusion-exact masks -> accept into the dataset."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
from gradio_image_annotation import image_annotator  # a maintained Gradio component for draggable boxes

from pipeline import viz
from pipeline.checkpoints import CheckpointError
from pipeline.compose import ComposeError, paste
from pipeline.dataset import Store, StoreError, check_image
from pipeline.images import ImageError
from pipeline.export import sample_instances
from pipeline.harmonize import HarmonizeError, available_methods, default_method, get_harmonizer
from pipeline.placement import PlacementError, box_at, box_size, get_scorer, heatmap
from pipeline.refine import RefinementError, get_refiner, refine_and_choose
from pipeline.thesaurus import Thesaurus

from .state import MODEL_LOCK, generate_one

THESAURUS = Path(__file__).resolve().parents[1] / "assets" / "thesaurus_coco.npz"
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


@dataclass
class Insertion:
    background: np.ndarray
    instances: list  # (class, mask)
    classes: list
    source: str
    fg: np.ndarray | None = None
    fg_mask: np.ndarray | None = None
    fg_class: str = ""
    placement: object = None
    centre: tuple | None = None
    composite: object = None
    log: list = field(default_factory=list)


def _display_scale(img: np.ndarray) -> int:
    return viz.display_scale(img.shape[:2])


def instance_map(shape, instances) -> np.ndarray:
    out = np.full((*shape, 3), 0, np.uint8)
    for k, (_, m) in enumerate(instances):
        out[m] = PALETTE[k % len(PALETTE)]
    return out


@lru_cache(maxsize=2)
def _cached_scorer(path: str):
    return get_scorer("fopa", checkpoint=path)


@lru_cache(maxsize=2)
def _cached_rainnet(path: str):
    return get_harmonizer("rainnet", checkpoint=path)


def move_box(ins: Insertion, drawn: tuple[float, float, float, float]) -> float:
    """Take a user-drawn XYXY box (background pixels): centre the object in it and return the
    largest scale at which the object, keeping its aspect ratio, fits inside it."""
    h, w = ins.background.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in drawn)
    x1, x2 = sorted((min(max(x1, 0), w), min(max(x2, 0), w)))
    y1, y2 = sorted((min(max(y1, 0), h), min(max(y2, 0), h)))
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise gr.Error("the box is too small")
    ys, xs = np.nonzero(ins.fg_mask)
    fh, fw = np.ptp(ys) + 1, np.ptp(xs) + 1
    fit = min((x2 - x1) / fw, (y2 - y1) / fh)  # object pixels -> box pixels
    ins.centre = ((x1 + x2) / 2, (y1 + y2) / 2)
    return float(np.clip(fit * max(fh, fw) / min(h, w), 0.01, 1.0))


def build_insert_tab(store_dir: Path, model_box: gr.Textbox) -> None:
    thesaurus = Thesaurus.load(THESAURUS) if THESAURUS.exists() else None
    state = gr.State(None)

    def accepted_choices():
        store = Store(store_dir)
        try:
            return [f"#{r.id} {', '.join(r.classes)}" for r in store.query(status="accepted")]
        finally:
            store.close()

    def load_background(choice, upload, caption):
        if upload is not None:
            try:
                bg = check_image(upload)
            except (StoreError, ImageError) as e:
                raise gr.Error(str(e))
            ins = Insertion(bg, [], [], "upload")
        elif choice:
            store = Store(store_dir)
            try:
                try:
                    rec = store.get(int(choice.split()[0].lstrip("#")))
                except (ValueError, KeyError, IndexError):
                    raise gr.Error(f"no sample {choice!r}: pick one from the list")
                ins = Insertion(store.image(rec.image), sample_instances(store, rec), list(rec.classes), f"sample #{rec.id}")
            finally:
                store.close()
        else:
            raise gr.Error("Choose an accepted sample or upload a photo.")
        scene = caption.strip() if caption and caption.strip() else " ".join(ins.classes)
        rows = []
        if thesaurus is not None and scene:
            try:
                rows = [[o, round(s, 4), n] for o, s, n in thesaurus.rank(scene, k=10, min_support=3)]
            except ValueError:
                gr.Warning(f"no COCO class found in {scene!r}: type a caption describing the scene for suggestions")
        k = _display_scale(ins.background)
        shown = viz.upscale_for_display(viz.overlay_mask(ins.background, np.any([m for _, m in ins.instances], axis=0))
                                        if ins.instances else ins.background)
        names = [r[0] for r in rows]
        return (ins, shown, rows, gr.update(choices=names, value=names[0] if names else None),
                f"background: {ins.source} ({ins.background.shape[1]}x{ins.background.shape[0]}, display x{k})")

    def make_object(ins: Insertion | None, class_name, seed, model, progress=gr.Progress()):
        if ins is None:
            raise gr.Error("Load a background first.")
        class_name = (class_name or "").strip()
        if not class_name:
            raise gr.Error("Choose or type the object's class.")
        progress(0.1, desc="generating the object")
        s = generate_one(model, class_name, seed)
        progress(0.7, desc="refining its mask")
        try:
            ch = refine_and_choose(s.image, s.heat_map, get_refiner("grabcut"), s.attention)
        except RefinementError as e:
            raise gr.Error(str(e))
        ins.fg, ins.fg_mask, ins.fg_class = s.image, ch.mask(s.heat_map), class_name
        return ins, viz.upscale_for_display(viz.overlay_mask(s.image, ins.fg_mask))

    def place(ins: Insertion | None, scale, fopa_ckpt="", progress=gr.Progress()):
        if ins is None or ins.fg is None:
            raise gr.Error("Load a background and make an object first.")
        try:
            if (fopa_ckpt or "").strip():
                progress(0.2, desc="FOPA: scoring 16 scales")
                scorer = _cached_scorer(fopa_ckpt.strip())
                with MODEL_LOCK:
                    ins.placement = scorer(ins.background, ins.fg, ins.fg_mask, top_k=5)
            else:
                ins.placement = heatmap(ins.background, ins.fg_mask, existing_masks=[m for _, m in ins.instances],
                                        fg_class=ins.fg_class, top_k=5)
        except (PlacementError, CheckpointError, ValueError) as e:
            raise gr.Error(str(e))
        s, (x1, y1, x2, y2), _ = ins.placement.boxes[0]
        ins.centre = ((x1 + x2) / 2, (y1 + y2) / 2)
        return ins, gr.update(value=s), *_placement_views(ins, s)

    def _box(ins: Insertion, scale: float):
        ys, xs = np.nonzero(ins.fg_mask)
        size = box_size(scale, (np.ptp(ys) + 1, np.ptp(xs) + 1), ins.background.shape[:2])
        return box_at(ins.centre, size, ins.background.shape[:2])

    def _placement_views(ins: Insertion, scale: float):
        scales = ins.placement.scales
        si = int(np.argmin([abs(s - scale) for s in scales]))
        shown = viz.overlay_heat(ins.background, ins.placement.maps[si], 0.45)
        x1, y1, x2, y2 = _box(ins, scale)
        cv2.rectangle(shown, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), max(1, min(shown.shape[:2]) // 150))
        ranked = "\n".join(f"{i + 1}. scale {s:.2f}, box {b}, score {sc:.2f}" for i, (s, b, sc) in enumerate(ins.placement.boxes))
        info = f"box {list((x1, y1, x2, y2))} · drag or resize it, or click the heat map to move it\n\n{ranked}"
        return viz.upscale_for_display(shown), info, _box_editor_value(ins, (x1, y1, x2, y2))

    def _box_editor_value(ins: Insertion, box):
        k = _display_scale(ins.background)
        return {"image": viz.upscale_for_display(ins.background),
                "boxes": [{"xmin": box[0] * k, "ymin": box[1] * k, "xmax": box[2] * k, "ymax": box[3] * k,
                           "label": ins.fg_class or "object", "color": (255, 255, 255)}]}

    def click(ins: Insertion | None, scale, evt: gr.SelectData):
        if ins is None or ins.placement is None:
            return gr.update(), gr.update(), gr.skip()
        k = _display_scale(ins.background)
        ins.centre = (evt.index[0] / k, evt.index[1] / k)
        return _placement_views(ins, scale)

    def rescale(ins: Insertion | None, scale):
        if ins is None or ins.placement is None:
            return gr.update(), gr.update(), gr.skip()
        return _placement_views(ins, scale)

    def drag(ins: Insertion | None, value, scale):
        """The box was dragged or resized: its centre becomes the object's, and the scale the
        largest at which the object (its own aspect ratio) fits the drawn box."""
        if ins is None or ins.placement is None or not value or not value.get("boxes"):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        k = _display_scale(ins.background)
        b = value["boxes"][0]
        drawn = tuple(v / k for v in (b["xmin"], b["ymin"], b["xmax"], b["ymax"]))
        current = _box(ins, scale)
        if max(abs(a - c) for a, c in zip(drawn, current)) <= 1:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()  # our own update echoing back
        new_scale = move_box(ins, drawn)
        return (gr.update(value=new_scale), *_placement_views(ins, new_scale))

    def preview(ins: Insertion | None, scale, method, rain_ckpt="", progress=gr.Progress()):
        if ins is None or ins.placement is None:
            raise gr.Error("Place the object first.")
        progress(0.3, desc="compositing")
        try:
            if method == "rainnet":
                if not (rain_ckpt or "").strip():
                    raise gr.Error("RainNet needs its checkpoint (net_G.pth): give its path under 'published weights'.")
                harmonizer = _cached_rainnet(rain_ckpt.strip())
            else:
                harmonizer = get_harmonizer(method)
            comp = paste(ins.background, ins.instances, ins.fg, ins.fg_mask, _box(ins, scale), ins.fg_class,
                         harmonizer=harmonizer, harmonizer_name=method)
        except (ComposeError, HarmonizeError, CheckpointError, ValueError) as e:
            raise gr.Error(str(e))
        ins.composite = comp
        legend = ", ".join(f"{n}" for n, _ in comp.instances)
        dropped = f" · fully covered, dropped: {', '.join(comp.record['dropped'])}" if comp.record["dropped"] else ""
        return (ins, viz.upscale_for_display(comp.image),
                viz.upscale_for_display(instance_map(comp.image.shape[:2], comp.instances)),
                f"instances (back to front): {legend}{dropped}")

    def accept(ins: Insertion | None, tags):
        if ins is None or ins.composite is None:
            raise gr.Error("Preview a composite first.")
        comp = ins.composite
        store = Store(store_dir)
        try:
            sid = store.add(comp.image, sorted({n for n, _ in comp.instances}), instances=comp.instances,
                            instance_sources=["inserted" if i == len(comp.instances) - 1 else "imported"
                                              for i in range(len(comp.instances))],
                            prompt=f"{ins.source} + {ins.fg_class}", model="composite", status="accepted",
                            tags=[t.strip() for t in (tags or "").split(",") if t.strip()],
                            inserted=[comp.record], meta={"background": ins.source})
        except StoreError as e:
            raise gr.Error(str(e))
        finally:
            store.close()
        gr.Info(f"composite saved as sample #{sid}")
        return f"saved as #{sid} (accepted)"

    gr.Markdown("Pick a background, take a suggested object (Adaptive Matching Thesaurus over COCO captions), "
                "place it (click to move, slider to resize), harmonize, and accept the composite with its updated masks.")
    with gr.Row():
        with gr.Column():
            bg_choice = gr.Dropdown(accepted_choices(), label="accepted sample", allow_custom_value=True)
            refresh_bg = gr.Button("Refresh samples")
            bg_upload = gr.Image(label="or upload a photo", type="numpy", sources=["upload"])
            caption = gr.Textbox("", label="scene caption for suggestions (optional)")
            load_btn = gr.Button("Load background", variant="primary", elem_id="insert-load")
            bg_info = gr.Markdown()
        with gr.Column():
            suggestions = gr.Dataframe(headers=["object", "score", "support"], label="suggested objects",
                                       interactive=False)
            obj_class = gr.Dropdown([], allow_custom_value=True, label="object class")
            obj_seed = gr.Number(0, precision=0, label="object seed")
            obj_btn = gr.Button("Generate object", elem_id="insert-object")
            obj_img = gr.Image(label="object and its mask", type="numpy", interactive=False)
    with gr.Row():
        place_btn = gr.Button("Propose placement", elem_id="insert-place")
        scale = gr.Slider(0.05, 0.95, 0.3, step=0.01, label="scale (object's longer side / background's shorter side)")
        method = gr.Dropdown(available_methods() + ["rainnet"], value=default_method(), label="harmonization")
        preview_btn = gr.Button("Preview composite", variant="primary", elem_id="insert-preview")
    with gr.Row():
        place_img = gr.Image(label="placement heat map and box (click to move)", type="numpy", interactive=False)
        box_edit = image_annotator(label="drag or resize the box", single_box=True, image_type="numpy",
                                   sources=None, show_clear_button=False, show_download_button=False,
                                   elem_id="insert-box")
        comp_img = gr.Image(label="harmonized composite", type="numpy", interactive=False)
        mask_img = gr.Image(label="instance masks", type="numpy", interactive=False)
    with gr.Accordion("published weights (optional)", open=False):
        gr.Markdown("FOPA's ObPlaNet checkpoint replaces the weight-free placement scorer; RainNet's enables "
                    "the `rainnet` harmonization. Both are checked key by key when loaded.")
        fopa_ckpt = gr.Textbox("", label="FOPA checkpoint path (.pth)")
        rain_ckpt = gr.Textbox("", label="RainNet checkpoint path (net_G.pth)")
    place_info = gr.Markdown(elem_id="insert-place-info")
    comp_info = gr.Markdown(elem_id="insert-info")
    with gr.Row():
        ins_tags = gr.Textbox("", label="tags")
        accept_btn = gr.Button("Accept composite", variant="primary", elem_id="insert-accept")
        accept_info = gr.Markdown()

    refresh_bg.click(lambda: gr.update(choices=accepted_choices()), None, bg_choice)
    load_btn.click(load_background, [bg_choice, bg_upload, caption], [state, place_img, suggestions, obj_class, bg_info],
                   api_name="insert_load")
    obj_btn.click(make_object, [state, obj_class, obj_seed, model_box], [state, obj_img], concurrency_limit=1,
                  concurrency_id="model", api_name="insert_object")
    views = [place_img, place_info, box_edit]
    # the weight-free scorer is cheap and runs beside generation; FOPA takes MODEL_LOCK itself
    place_btn.click(place, [state, scale, fopa_ckpt], [state, scale, *views], api_name="insert_place")
    place_img.select(click, [state, scale], views)
    scale.release(rescale, [state, scale], views)
    box_edit.change(drag, [state, box_edit, scale], [scale, *views], queue=False)
    preview_btn.click(preview, [state, scale, method, rain_ckpt], [state, comp_img, mask_img, comp_info],
                      api_name="insert_preview")
    accept_btn.click(accept, [state, ins_tags], accept_info, api_name="insert_accept")
