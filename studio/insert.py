"""The Insert Objects tab: background -> thesaurus suggestions -> object -> placement ->
harmonized composite with occlusion-exact masks -> accept into the dataset."""
from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
from gradio_image_annotation import image_annotator  # a maintained Gradio component for draggable boxes

from pipeline import viz
from pipeline.access import AccessError, check_user_path
from pipeline.checkpoints import CheckpointError
from pipeline.bank import ObjectBank, supply
from pipeline.compose import ComposeError
from pipeline.dataset import Store, StoreError, check_image
from pipeline.embedded.world import CLASS_NAMES
from pipeline.errors import Cancelled
from pipeline.images import ImageError
from pipeline.harmonize import HARMONIZERS, HarmonizeError, default_method
from pipeline.placement import DEFAULT_SCORER, SCORERS, PlacementError
from pipeline.presets import resolve_checkpoint
from pipeline.refine import DEFAULT_REFINER, RefinementError, get_refiner, refine_and_choose
from pipeline.session import InsertSession, SessionError
from pipeline.thesaurus import Thesaurus

from .console import VIEW_FORMAT, user_error
from .state import MODEL_LOCK, client_gone_hook, generate_one, public_datasets, stopped, store_dir_for

THESAURUS = Path(__file__).resolve().parents[1] / "assets" / "thesaurus_coco.npz"
INSERT_KEYS_HELP = ("**Keys** (not while typing): **l** load · **m** make object · **p** propose placement · "
                    "**v** preview · **a** accept")
OBJECT_SOURCES = ["generate with the model", "cut from a photo (object bank)"]
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def _display_scale(img: np.ndarray) -> int:
    return viz.display_scale(img.shape[:2])


def instance_map(shape, instances) -> np.ndarray:
    out = np.full((*shape, 3), 0, np.uint8)
    for k, (_, m) in enumerate(instances):
        out[m] = PALETTE[k % len(PALETTE)]
    return out


def _plugin(registry, kind: str, name: str, weights: str | None):
    """The plug-in ``name`` of ``registry`` (placement scorers, harmonizers) with the weights
    from its box; a toast when it needs weights and has none, or takes none and was given some."""
    weights = (weights or "").strip() or None
    if registry.needs_checkpoint(name) and weights is None:
        raise user_error(f"The {kind} '{name}' needs its published weights: give their path under 'published weights'.")
    if weights is not None and not registry.needs_checkpoint(name):
        raise user_error(f"The {kind} '{name}' takes no weights: choose the {kind} they belong to, or clear the "
                         "weights box under 'published weights'.")
    return _cached_plugin(registry, name, weights)


@lru_cache(maxsize=8)
def _cached_plugin(registry, name: str, weights: str | None):
    # a network's weights load once, then serve every session
    if weights is None:
        return registry.create(name)
    weights = check_user_path(weights, f"{name} weights")  # public mode: presets, hub ids and allowed folders only
    return registry.create(name, checkpoint=resolve_checkpoint(weights))  # a path or a preset name


EXAMPLE_PREFIX = "example: "


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


def build_insert_tab(model_box: gr.Textbox):
    """The tab's widgets and events. Every store access goes to the sender's dataset
    (``store_dir_for``: the operator's one store, or in public mode the browser session's own)."""
    thesaurus = Thesaurus.load(THESAURUS) if THESAURUS.exists() else None
    state = gr.State(None)

    def accepted_choices(mine_too: bool = True):
        mine = []
        if mine_too:
            with store_dir_for() as store_dir, Store(store_dir) as store:
                mine = [f"#{r.id} {', '.join(r.classes)}" for r in store.query(status="accepted")]
        try:
            with Store(examples_store_dir()) as ex:
                mine += [f"{EXAMPLE_PREFIX}#{r.id} {', '.join(r.classes[:4])}" for r in ex.query()]
        except (StoreError, OSError):
            pass
        return mine

    def _bank_classes(store_dir: Path) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, root in object_sources(store_dir):
            with Store(root) as store:
                for c, n in ObjectBank(store).classes().items():
                    counts[c] = counts.get(c, 0) + n
        return counts

    def load_background(choice, upload, caption, model):
        if upload is not None:
            try:
                ses = InsertSession(check_image(upload), origin="upload")
            except (StoreError, ImageError, SessionError) as e:
                raise user_error(str(e))
        elif choice:
            example = choice.startswith(EXAMPLE_PREFIX)
            try:
                sid = int(choice.removeprefix(EXAMPLE_PREFIX).split()[0].lstrip("#"))
            except (ValueError, IndexError):
                raise user_error(f"no sample {choice!r}: pick one from the list")
            with store_dir_for() as store_dir, Store(examples_store_dir() if example else store_dir) as store:
                try:
                    ses = InsertSession.from_record(store, store.get(sid))
                except StoreError as e:
                    raise user_error(str(e))
            if example:
                ses.origin = f"example photo {ses.origin.split('#')[1]}"
        else:
            raise user_error("Choose a sample in 'accepted sample' or upload a photo.")
        scene = caption.strip() if caption and caption.strip() else " ".join(ses.classes)
        rows = []
        if thesaurus is not None and scene:
            try:
                ranked = thesaurus.rank(scene, k=10, min_support=3)
            except ValueError:
                ranked = []
                gr.Warning(f"no COCO class found in {scene!r}: describe the scene in 'scene caption' for suggestions")
            vocab = CLASS_NAMES if (model or "embedded") in ("", "embedded") else None
            with store_dir_for() as store_dir:
                bank = _bank_classes(store_dir)
            for sug in supply(ranked, vocabulary=vocab, bank=_Classes(bank)):
                rows.append([sug.name, round(sug.score, 3), " + ".join(sug.suppliers) or "not available"])
        k = _display_scale(ses.background)
        shown = viz.upscale_for_display(viz.overlay_instances(ses.background, [m for _, m in ses.instances])
                                        if ses.instances else ses.background)
        names = [r[0] for r in rows if r[2] != "not available"] or [r[0] for r in rows]
        return (ses, shown, rows, gr.update(choices=[r[0] for r in rows], value=names[0] if names else None),
                f"background: {ses.origin} ({ses.background.shape[1]}x{ses.background.shape[0]}, display x{k})")

    def make_object(ses: InsertSession | None, class_name, seed, model, source, progress=gr.Progress()):
        if ses is None:
            raise user_error("Load a background first.")
        class_name = (class_name or "").strip()
        if not class_name:
            raise user_error("Choose or type the object's class in 'object class'.")
        if source == "cut from a photo (object bank)":
            with store_dir_for() as store_dir:
                for label, root in object_sources(store_dir):
                    with Store(root) as store:
                        bank = ObjectBank(store)
                        if class_name in bank:
                            obj = bank.pick(class_name, seed=int(seed or 0))
                            fg, fg_mask = bank.cut_out(obj)
                            ses.set_object(fg, fg_mask, class_name,
                                           f"{label}: sample #{obj.sample_id} instance {obj.index}")
                            return ses, viz.upscale_for_display(viz.overlay_mask(fg, fg_mask), 160)
                have = ", ".join(sorted(_bank_classes(store_dir))) or "none"
            raise user_error(f"no {class_name!r} in the object bank (it has: {have}); generate one instead")
        progress(0.1, desc="generating the object")
        try:
            s = generate_one(model, class_name, seed, should_stop=client_gone_hook())  # stops if the tab closes
        except Cancelled as e:
            return stopped(e, 2)
        progress(0.7, desc="refining its mask")
        try:
            ch = refine_and_choose(s.image, s.heat_map, get_refiner(DEFAULT_REFINER), s.attention)
        except RefinementError as e:
            raise user_error(str(e))
        ses.set_object(s.image, ch.mask(s.heat_map), class_name, f"generated ({s.prompt!r}, seed {int(seed or 0)})")
        return ses, viz.upscale_for_display(viz.overlay_mask(s.image, ses.fg_mask))

    def place(ses: InsertSession | None, scorer=DEFAULT_SCORER, scorer_weights="", progress=gr.Progress()):
        if ses is None or ses.fg is None:
            raise user_error("Load a background and make an object first.")
        try:
            plugin = _plugin(SCORERS, "placement scorer", scorer, scorer_weights)
            progress(0.2, desc=f"{scorer}: scoring placements")
            # a network's weights are shared by every session
            with MODEL_LOCK if SCORERS.needs_checkpoint(scorer) else nullcontext():
                ses.propose(plugin)
        except (PlacementError, CheckpointError, SessionError, AccessError, ValueError) as e:
            raise user_error(str(e))
        return ses, gr.update(value=ses.scale), *_placement_views(ses)

    def _placement_views(ses: InsertSession):
        scales = ses.placement.scales
        si = int(np.argmin([abs(s - ses.scale) for s in scales]))
        shown = viz.overlay_heat(ses.background, ses.placement.map_at(si, ses.background.shape[:2]), 0.45)
        x1, y1, x2, y2 = ses.box_for()
        cv2.rectangle(shown, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), max(1, min(shown.shape[:2]) // 150))
        ranked = "\n".join(f"{i + 1}. scale {s:.2f}, box {b}, score {sc:.2f}" for i, (s, b, sc) in enumerate(ses.placement.boxes))
        info = f"box {list((x1, y1, x2, y2))} · drag or resize it, or click the heat map to move it\n\n{ranked}"
        return viz.upscale_for_display(shown), info, _box_editor_value(ses, (x1, y1, x2, y2))

    def _box_editor_value(ses: InsertSession, box):
        k = _display_scale(ses.background)
        return {"image": viz.upscale_for_display(ses.background),
                "boxes": [{"xmin": box[0] * k, "ymin": box[1] * k, "xmax": box[2] * k, "ymax": box[3] * k,
                           "label": ses.fg_class or "object", "color": (255, 255, 255)}]}

    def click(ses: InsertSession | None, evt: gr.SelectData):
        if ses is None or ses.placement is None:
            return gr.skip(), gr.skip(), gr.skip()
        k = _display_scale(ses.background)
        ses.move_centre(evt.index[0] / k, evt.index[1] / k)
        return _placement_views(ses)

    def rescale(ses: InsertSession | None, scale):
        if ses is None or ses.placement is None:
            return gr.skip(), gr.skip(), gr.skip()
        ses.scale = float(scale)
        return _placement_views(ses)

    def drag(ses: InsertSession | None, value):
        """The box was dragged or resized: its centre becomes the object's, and the scale the
        largest at which the object (its own aspect ratio) fits the drawn box."""
        if ses is None or ses.placement is None or not value or not value.get("boxes"):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        k = _display_scale(ses.background)
        b = value["boxes"][0]
        drawn = tuple(v / k for v in (b["xmin"], b["ymin"], b["xmax"], b["ymax"]))
        if max(abs(a - c) for a, c in zip(drawn, ses.box_for())) <= 1:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()  # our own update echoing back
        try:
            ses.move_to(drawn)
        except SessionError as e:
            gr.Warning(str(e))
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return (gr.update(value=ses.scale), *_placement_views(ses))

    def preview(ses: InsertSession | None, scale, method, harm_weights="", progress=gr.Progress()):
        if ses is None or ses.placement is None:
            raise user_error("Place the object first.")
        ses.scale = float(scale)
        progress(0.3, desc="compositing")
        try:
            harmonizer = _plugin(HARMONIZERS, "harmonization", method, harm_weights)
            comp = ses.compose(harmonizer, method)
        except (ComposeError, HarmonizeError, CheckpointError, SessionError, AccessError, ValueError) as e:
            raise user_error(str(e))
        legend = ", ".join(f"{n}" for n, _ in comp.instances)
        dropped = f" · fully covered, dropped: {', '.join(comp.record['dropped'])}" if comp.record["dropped"] else ""
        return (ses, viz.upscale_for_display(comp.image),
                viz.upscale_for_display(instance_map(comp.image.shape[:2], comp.instances)),
                f"instances (back to front): {legend}{dropped}")

    def accept(ses: InsertSession | None, tags):
        if ses is None or ses.composite is None:
            raise user_error("Preview a composite first.")
        try:
            with store_dir_for() as store_dir, Store(store_dir) as store:
                sid = ses.to_store(store, "accepted", [t.strip() for t in (tags or "").split(",") if t.strip()])
        except (StoreError, SessionError) as e:
            raise user_error(str(e))
        gr.Info(f"composite saved as sample #{sid}")
        return f"saved as #{sid} (accepted)"

    # one paragraph of two lines at 1400 px, so the loop below still fits a 1400x900 window
    gr.Markdown("Background → object (suggested by the Adaptive Matching Thesaurus; 'model'/'bank' say who can supply "
                "it) → placement (drag the box, click the heat map, or the scale slider) → harmonized composite → "
                "Accept, with its updated masks. " + INSERT_KEYS_HELP, elem_id="insert-keys")
    # Compact: the controls in a narrow column, every picture in one row beside them, so the
    # whole loop fits a 1400x900 window without scrolling.
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            # built before any visitor: in public mode, only the examples (each visitor's own
            # samples join the list when they open the tab)
            bg_choice = gr.Dropdown(accepted_choices(mine_too=not public_datasets()), label="accepted sample",
                                    allow_custom_value=True)
            bg_upload = gr.Image(label="or upload a photo", type="numpy", sources=["upload"], height=90)
            caption = gr.Textbox("", label="scene caption for suggestions (optional)", lines=1)
            load_btn = gr.Button("Load background", variant="primary", elem_id="insert-load", size="sm")
            bg_info = gr.Markdown(elem_id="insert-bg-info")
            with gr.Row():
                obj_class = gr.Dropdown([], allow_custom_value=True, label="object class", min_width=120)
                obj_seed = gr.Number(0, precision=0, label="seed", min_width=80)
            obj_source = gr.Radio(OBJECT_SOURCES, value=OBJECT_SOURCES[0], label="object", elem_id="insert-object-source")
            obj_btn = gr.Button("Make object", elem_id="insert-object", size="sm")
        with gr.Column(scale=3):
            with gr.Row():
                suggestions = gr.Dataframe(headers=["object", "score", "who can supply it"], label="suggested objects",
                                           interactive=False, max_height=150, scale=2)
                obj_img = gr.Image(label="object and its mask", type="numpy", interactive=False,
                                   elem_id="insert-object-view", height=170, scale=1, format=VIEW_FORMAT)
            with gr.Row():
                place_img = gr.Image(label="placement heat map and box (click to move)", type="numpy", interactive=False,
                                     height=230, min_width=160, elem_id="insert-place-view", format=VIEW_FORMAT)
                box_edit = image_annotator(label="drag or resize the box", single_box=True, image_type="numpy",
                                           sources=None, show_clear_button=False, show_download_button=False,
                                           elem_id="insert-box", height=230, min_width=200, scale=1)
                comp_img = gr.Image(label="harmonized composite", type="numpy", interactive=False, height=230,
                                    min_width=160, elem_id="insert-composite", format=VIEW_FORMAT)
                mask_img = gr.Image(label="instance masks", type="numpy", interactive=False, height=230, min_width=160,
                                     elem_id="insert-masks", format=VIEW_FORMAT)
            with gr.Row():
                place_btn = gr.Button("Propose placement", elem_id="insert-place", size="sm")
                scale = gr.Slider(0.05, 0.95, 0.3, step=0.01, label="scale (object side / background side)",
                                  min_width=200)
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

    load_btn.click(load_background, [bg_choice, bg_upload, caption, model_box],
                   [state, place_img, suggestions, obj_class, bg_info], api_name="insert_load")
    obj_btn.click(make_object, [state, obj_class, obj_seed, model_box, obj_source], [state, obj_img], concurrency_limit=1,
                  concurrency_id="model", api_name="insert_object")
    views = [place_img, place_info, box_edit]
    # a weight-free scorer is cheap and runs beside generation; one with weights takes MODEL_LOCK in place()
    place_btn.click(place, [state, scorer, scorer_weights], [state, scale, *views], api_name="insert_place")
    place_img.select(click, [state], views)
    scale.release(rescale, [state, scale], views)
    box_edit.change(drag, [state, box_edit], [scale, *views], queue=False)
    preview_btn.click(preview, [state, scale, method, harm_weights], [state, comp_img, mask_img, comp_info],
                      api_name="insert_preview")
    accept_btn.click(accept, [state, ins_tags], accept_info, api_name="insert_accept")
    # the caller refreshes the list of accepted samples whenever the tab is opened
    return (lambda: gr.update(choices=accepted_choices())), None, bg_choice


class _Classes:
    """The union of the banks' classes, as pipeline.bank.supply asks of a bank (``in``)."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts

    def __contains__(self, name: str) -> bool:
        return name in self.counts
