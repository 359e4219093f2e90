"""The learned refiner (pipeline/refine_net/) against no refinement and GrabCut.

3-fold cross-validation by photo over the 180 annotated photos (pipeline.realdata): the model of
fold k is trained on the other two folds (`python -m pipeline.refine_net train --folds ...`;
fold 0's model is the shipped one in assets/refine_net) and measured on fold k's photos, with
coarse maps made from the truth (pipeline.refine_net.coarse_map); then on the embedded model's
real attention maps (images it generates, whose true extent is known); then the time per
512x512 image.

    python bench/bench_refine.py [--runs runs] [--max-per-photo 2] [--min-area 0.02] [--embedded 32]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from _results import write_section  # noqa: E402


NOTE = "Reading: the learned refiner pulls maps that spill over the object (dilated) back onto it in every fold, but it shrinks and smooths what it is given, so it damages maps that were already close (blurred, 16x16 attention-like, the embedded model's attention) and does not fix eroded or shifted ones. Issue 17's target (>= +0.05 over no refinement on every kind, never more than 0.01 below) is not met, and it should not become the default. Its training was short for lack of CPU: 600 steps of 16 crops per fold (about 300 CPU-seconds each, stretched over about 54 minutes of wall time on a 2-core machine shared with four other jobs); the trainer's budget (<= 60 CPU-minutes) allows many more steps on an idle machine. The objects here (>= 2 % of a 320 px photo) are smaller than in bench_core's table, and the dilation and shift are fixed fractions of the photo, so the no-refinement figures for those kinds are lower than there."


def fold_models(runs: Path):
    from pipeline import realdata
    from pipeline.refine_net import ASSET_DIR, LearnedRefiner

    return {k: LearnedRefiner(ASSET_DIR if k == realdata.HELD_OUT_FOLD else runs / f"refine_fold{k}")
            for k in range(realdata.K_FOLDS)}


def masks_for(image, heat, refiners):
    from pipeline.refine import RefinementError

    out = {}
    for name, r in refiners.items():
        try:
            out[name] = heat >= 0.5 if r is None else r(image, heat).mask
        except RefinementError:  # a flat map (e.g. a box covering the photo): nothing to refine
            out[name] = heat >= 0.5
    return out


def on_photos(models, max_per_photo: int, min_area: float, cache: Path | None = None):
    """IoUs per coarse kind, method and fold. The baselines (none, grabcut) do not depend on the
    models, so they are kept in ``cache`` (JSON) and computed once."""
    import json

    from pipeline import realdata
    from pipeline.masks import iou
    from pipeline.refine import GrabCutRefiner
    from pipeline.refine_net import TEST_KINDS, coarse_map

    keys = realdata.photo_keys()
    fold = realdata.fold_of(keys)
    gc = GrabCutRefiner()
    known = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    # res[kind][method][fold] -> list of IoUs
    res = {k: {m: {f: [] for f in range(realdata.K_FOLDS)} for m in ("none", "grabcut", "learned")} for k in TEST_KINDS}
    n_obj = 0
    for key in keys:
        p = realdata.load_photo(key, min_area=min_area)
        order = np.argsort([-m.sum() for m in p.masks])[:max_per_photo]  # the largest objects of the photo
        for j in order:
            gt = p.masks[j]
            n_obj += 1
            for kind in TEST_KINDS:
                heat = coarse_map(gt, kind)
                tag = f"{key}/{j}/{kind}"
                if tag not in known:
                    known[tag] = {n: iou(m, gt) for n, m in masks_for(p.image, heat, {"none": None, "grabcut": gc}).items()}
                refs = {"learned": models[fold[key]]} if models else {}
                got = {**known[tag], **{n: iou(m, gt) for n, m in masks_for(p.image, heat, refs).items()}}
                for name, v in got.items():
                    res[kind][name][fold[key]].append(v)
        if cache is not None:
            cache.write_text(json.dumps(known))
    return res, n_obj


def on_embedded(models, n: int, steps: int = 25):
    """IoU on the embedded model's own images and class-word heat maps (true extent from colour)."""
    from pipeline.embedded import world
    from pipeline.generate import generate, load_pipeline
    from pipeline.masks import iou
    from pipeline.refine import GrabCutRefiner

    pipe = load_pipeline(None, device="cpu")
    jobs = [(world.CLASS_NAMES[k % len(world.CLASS_NAMES)], 100000 + k) for k in range(n)]
    rows = {"none": [], "grabcut": [], **{f"learned (fold {k} model)": [] for k in models}}
    gc = GrabCutRefiner()
    for start in range(0, n, 8):
        chunk = jobs[start : start + 8]
        for s in generate(pipe, [c for c, _ in chunk], [sd for _, sd in chunk], steps=steps, guidance=5.0):
            truth = world.colour_extent(s.image, world.CLASS_NAMES.index(s.class_name))
            if not truth.any():
                continue
            refs = {"none": None, "grabcut": gc, **{f"learned (fold {k} model)": m for k, m in models.items()}}
            for name, m in masks_for(s.image, s.heat_map, refs).items():
                rows[name].append(iou(m, truth))
    return rows


def timing(models, n: int = 10):
    import cv2

    from pipeline import realdata
    from pipeline.refine import GrabCutRefiner
    from pipeline.refine_net import coarse_map

    keys = realdata.split([realdata.HELD_OUT_FOLD])[:n]
    t = {"learned": [], "grabcut": []}
    gc, lr = GrabCutRefiner(), models[realdata.HELD_OUT_FOLD]
    for key in keys:
        p = realdata.load_photo(key, max_side=640)
        if not p.masks:
            continue
        img = cv2.resize(p.image, (512, 512), interpolation=cv2.INTER_AREA)
        gt = cv2.resize(p.masks[0].astype(np.uint8), (512, 512), interpolation=cv2.INTER_NEAREST) > 0
        if not gt.any():
            continue
        heat = coarse_map(gt, "blurred")
        for name, r in (("learned", lr), ("grabcut", gc)):
            t0 = time.perf_counter()
            r(img, heat)
            t[name].append(time.perf_counter() - t0)
    return t


def main() -> None:
    import torch

    from pipeline.refine_net import TEST_KINDS

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=str(ROOT / "runs"), help="folder with refine_fold1/, refine_fold2/")
    ap.add_argument("--max-per-photo", type=int, default=2)
    ap.add_argument("--min-area", type=float, default=0.02)
    ap.add_argument("--embedded", type=int, default=32)
    ap.add_argument("--baselines-only", action="store_true", help="fill the baseline cache and stop")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cache = Path(a.runs) / "bench_refine_baselines.json"
    if a.baselines_only:
        on_photos(None, a.max_per_photo, a.min_area, cache)
        return
    models = fold_models(Path(a.runs))
    t0 = time.time()
    res, n_obj = on_photos(models, a.max_per_photo, a.min_area, cache)
    secs = time.time() - t0
    lines = [f"3-fold cross-validation by photo over the 180 annotated photos (`pipeline.realdata`; folds of 60 "
             f"photos; no photo in both train and test): {n_obj} objects (the {a.max_per_photo} largest of each photo "
             f"covering >= {a.min_area:.0%} of it), photos at 320 px. Each fold's model was trained on the other two folds' photos "
             "only, on random degradations (`random_coarse`), never on these fixed kinds (`coarse_map`), then "
             "calibrated (network/coarse-map blend, chosen on its own training photos: "
             + ", ".join(f"fold {k}: {m.blend}" for k, m in models.items()) + "). "
             "mIoU against the true mask: mean of the 3 fold means [min-max of the fold means]; delta = learned "
             "minus none.", "",
             "| coarse input | no refinement (heat >= 0.5) | grabcut (today's default) | learned | delta | "
             "worst fold delta |", "|---|---|---|---|---|---|"]
    for kind in TEST_KINDS:
        per = {m: [np.mean(v) for v in res[kind][m].values()] for m in res[kind]}
        d = [l - n for l, n in zip(per["learned"], per["none"])]
        cells = [f"{np.mean(v):.3f} [{min(v):.3f}-{max(v):.3f}]" for v in per.values()]
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {np.mean(d):+.3f} | {min(d):+.3f} |")
    if a.embedded:
        rows = on_embedded(models, a.embedded)
        lines += ["", f"The embedded model's real attention maps: {len(rows['none'])} images it generated (seeds "
                  "100000+, 25 DDIM steps, guidance 5; 64x64), the class word's heat map as the coarse input, the true "
                  "extent read from the object's colour signature (as bench_embedded.py). No refiner ever trained on "
                  "these images. mIoU:", "", "| method | mIoU |", "|---|---|"]
        lines += [f"| {n} | {np.mean(v):.3f} |" for n, v in rows.items()]
        learned = [np.mean(v) for n, v in rows.items() if n.startswith("learned")]
        lines += ["", f"Learned over the three fold models: {np.mean(learned):.3f} [{min(learned):.3f}-"
                  f"{max(learned):.3f}], delta vs none {np.mean(learned) - np.mean(rows['none']):+.3f}."]
    t = timing(models)
    lines += ["", f"Time per 512x512 image (coarse map `blurred`, {len(t['learned'])} photos, 1 torch thread, on a CPU "
              "shared with other jobs): " + ", ".join(f"{n} {np.median(v):.3f} s median (max {max(v):.3f} s)"
                                                  for n, v in t.items()) + "; target <= 1 s.",
              f"Photo evaluation took {secs:.0f} s wall.", "", NOTE]
    write_section("bench_refine", "\n".join(lines))


if __name__ == "__main__":
    main()
