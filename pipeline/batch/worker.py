"""The worker side of a batch: compute candidates and composites from a spec. No store access:
workers (this process, or Ray tasks on other machines) only compute and return arrays."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..masks import DEFAULT_THRESHOLDS
from .spec import BatchSpec, candidate_seed, resolve_classes


@dataclass
class Candidate:
    """One computed candidate: image HWC uint8, heat HW float16 in [0, 1], refined HW bool
    (None when refinement failed), its own chosen threshold, and the filter metrics."""

    class_name: str
    k: int
    seed: int
    prompt: str
    image: np.ndarray
    heat: np.ndarray
    refined: np.ndarray | None
    threshold: float | None
    metrics: dict  # ious/area/border per threshold, contrast; or {"error": ...}
    seconds: dict = field(default_factory=dict)  # generate / masks wall time for this candidate's share


def mask_metrics(heat: np.ndarray, refined: np.ndarray | None, ious: np.ndarray | None,
                 thresholds: np.ndarray = DEFAULT_THRESHOLDS) -> dict:
    """Filter metrics for every threshold of the sweep (so any threshold can be judged later)."""
    heat = np.asarray(heat, np.float32)
    flat = np.sort(heat.ravel())
    n = flat.size
    # fraction of pixels >= t, from the sorted values: one searchsorted for the whole sweep
    area = 1.0 - np.searchsorted(flat, thresholds, side="left") / n
    border = np.concatenate([heat[0], heat[-1], heat[1:-1, 0], heat[1:-1, -1]])
    border_frac = (border[None, :] >= thresholds[:, None]).mean(axis=1)
    contrast = float(flat[int(n * 0.9):].mean() - flat[: max(1, n // 2)].mean())
    out = {"area": np.round(area, 4).tolist(), "border": np.round(border_frac, 4).tolist(),
           "contrast": round(contrast, 4)}
    if ious is not None:
        out["ious"] = np.round(np.asarray(ious, float), 4).tolist()
    return out


_WORKER_CACHE: dict = {}


def worker_models(spec: BatchSpec):
    """(pipeline, refiner) for ``spec``, loaded once per worker process (Ray reuses processes)."""
    key = (spec.model, spec.generation.refiner, spec.refiner_checkpoint)
    if key not in _WORKER_CACHE:
        from ..refine import get_refiner

        _WORKER_CACHE.clear()
        refiner = get_refiner(spec.generation.refiner, checkpoint=spec.refiner_checkpoint, device=spec.model.device)
        _WORKER_CACHE[key] = (spec.model.load(), refiner)
    return _WORKER_CACHE[key]


def compute_candidates(spec: BatchSpec, jobs: Sequence[tuple[str, int]]) -> list[Candidate]:
    """Generate, capture, refine and measure candidates ``jobs`` = [(class, k), ...].

    Candidate k of class c always goes through the UNet in the same batch: the block of
    candidates ``k // batch_size``, computed whole even when only some of it is asked for.
    Batched kernels may round one row differently from another (see
    :func:`pipeline.generate.generate`), so this is what makes a resumed run reproduce an
    uninterrupted one bit for bit, on any machine."""
    from ..generate import generate
    from ..refine import RefinementError, capture_for, refine_and_choose

    pipe, refiner = worker_models(spec)
    capture = capture_for(refiner)
    bs = spec.batch_size
    blocks: dict[tuple[str, int], set[int]] = {}
    for c, k in jobs:
        blocks.setdefault((c, k // bs), set()).add(k)
    out: list[Candidate] = []
    for (c, b), wanted in blocks.items():
        block = [(c, k) for k in range(b * bs, (b + 1) * bs)]
        seeds = [candidate_seed(spec.seed, c, k) for _, k in block]
        t0 = time.perf_counter()
        samples = generate(pipe, [c] * bs, seeds, config=spec.generation, capture=capture)
        t_gen = (time.perf_counter() - t0) / len(wanted)
        for (c, k), s in zip(block, samples):
            if k not in wanted:
                continue  # computed only so that the others see the same batch
            t1 = time.perf_counter()
            heat = s.heat_map
            try:
                choice = refine_and_choose(s.image, heat, refiner, s.attention, selector=spec.generation.selector)
                refined, threshold = choice.refined, choice.threshold
                metrics = mask_metrics(heat, refined, choice.ious)
            except RefinementError as e:
                refined, threshold, metrics = None, None, {"error": str(e)}
            out.append(Candidate(c, k, s.seed, s.prompt, s.image, heat.astype(np.float16), refined, threshold,
                                 metrics, {"generate": t_gen, "masks": time.perf_counter() - t1}))
    return out


@dataclass
class Composition:
    """A kept sample with one object inserted: ``instances`` are (class, HW bool mask, source)."""

    base_uid: str
    object_class: str | None
    image: np.ndarray | None = None
    instances: list = field(default_factory=list)
    record: dict = field(default_factory=dict)
    skipped: str | None = None


def suggest_object(thesaurus, scene_class: str, allowed: Sequence[str], min_support: int = 1) -> str | None:
    """The thesaurus' best object for ``scene_class`` among the classes the model is asked to draw."""
    try:
        ranked = thesaurus.rank(scene_class, k=len(thesaurus.classes), min_support=min_support)
    except (KeyError, ValueError):
        return None
    allowed = set(allowed)
    return next((o for o, _, _ in ranked if o in allowed), None)


def compose_candidates(spec: BatchSpec, jobs: Sequence[tuple]) -> list[Composition]:
    """Insert a thesaurus-suggested object into kept samples.

    ``jobs``: (base uid, scene class, base seed, image HWC uint8, scene mask HW bool[, obj]).
    Without ``obj`` (or None) the object is the thesaurus' best suggestion among the batch's
    classes, generated with a seed derived from the base sample's; the driver sets ``obj``
    for bank insertion: ``{"class": c}`` generates c, ``{"class": None, "allowed": ...}``
    skips (nothing suggested that the sources supply), and ``{"class", "image", "mask",
    "bank"}`` pastes that cut-out (HWC uint8, HW bool) and records ``bank`` (where it came
    from) in the composite's record. The object is placed at the best box of
    ``spec.insertion.scorer`` and harmonized with ``spec.insertion.harmonizer``."""
    from ..compose import ComposeError, paste
    from ..harmonize import get_harmonizer
    from ..placement import PlacementError, get_scorer
    from ..refine import RefinementError

    ins = spec.insertion
    thesaurus = load_thesaurus(spec)
    harmonizer = get_harmonizer(ins.harmonizer, checkpoint=ins.harmonizer_checkpoint, device=spec.model.device)
    scorer = get_scorer(ins.scorer, checkpoint=ins.scorer_checkpoint, device=spec.model.device)
    out = []
    for uid, scene, base_seed, image, mask, *rest in jobs:
        given = rest[0] if rest else None
        obj = suggest_object(thesaurus, scene, spec.classes) if given is None else given["class"]
        if obj is None:
            among = given.get("allowed", "the batch classes") if given else "the batch classes"
            out.append(Composition(uid, None, skipped=f"no suggestion for {scene!r} among {among}"))
            continue
        try:
            if given is not None and "bank" in given:
                fg_image, fg_mask = given["image"], np.asarray(given["mask"], bool)
                about = {"object_source": "bank", "bank": given["bank"]}
            else:
                fg = compute_candidates(replace(spec, batch_size=1), [(obj, 1_000_000 + base_seed % 1_000_000)])[0]
                if fg.refined is None:
                    raise RefinementError(fg.metrics["error"])
                fg_image, fg_mask = fg.image, np.asarray(fg.heat, np.float32) >= fg.threshold
                about = {"object_source": "generated", "object_seed": fg.seed, "object_prompt": fg.prompt}
            placed = scorer(image, fg_image, fg_mask, existing_masks=[mask], fg_class=obj, top_k=1)
            _, box, score = placed.boxes[0]
            comp = paste(image, [(scene, mask)], fg_image, fg_mask, box, obj, harmonizer=harmonizer)
        except (ComposeError, PlacementError, RefinementError) as e:
            out.append(Composition(uid, obj, skipped=f"{type(e).__name__}: {e}"))
            continue
        sources = ["generated"] * (len(comp.instances) - 1) + ["inserted"]
        record = dict(comp.record, placement_score=round(float(score), 4), **about)
        out.append(Composition(uid, obj, comp.image, [(n, m, s) for (n, m), s in zip(comp.instances, sources)], record))
    return out


def load_thesaurus(spec: BatchSpec):
    """``spec.insertion.thesaurus``, or the shipped VOC table when every class is a VOC class, else COCO's."""
    from ..thesaurus import Thesaurus

    if spec.insertion.thesaurus:
        return Thesaurus.load(spec.insertion.thesaurus)
    assets = Path(__file__).resolve().parents[2] / "assets"
    voc = set(resolve_classes("voc"))
    return Thesaurus.load(assets / ("thesaurus_voc.npz" if set(spec.classes) <= voc else "thesaurus_coco.npz"))
