"""Batch generation on the embedded model: what the mask stages cost, batch size, workers,
and what the quality filter buys.

    python bench/bench_batch.py [--n 32] [--steps 25]

1. Mask stages vs plain generation, side by side on the same seeds: the plain pipeline
   call (no capture) vs ``compute_candidates`` (capture + GrabCut + threshold choice +
   filter metrics). Target: <= 1.10.
2. Images/s at UNet batch 1/4/8 (in-process), and through Ray with 1 and 2 CPU workers.
3. The filter: true-extent mIoU (colour signature, pipeline.embedded.world) of kept vs
   dropped candidates at the default bounds.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from _results import write_section  # noqa: E402


def mask_overhead(n: int, steps: int, batch: int, reps: int = 2):
    import torch

    from pipeline.batch import BatchSpec, candidate_seed, compute_candidates, worker_models

    spec = BatchSpec.of(("ball", "star", "kite", "leaf"), per_class=n // 4, steps=steps, batch_size=batch)
    # whole blocks of one class: compute_candidates runs candidate k of class c in the UNet block
    # k // batch (what makes resume exact), so this is also what the plain calls below run
    jobs = [(c, k) for c in spec.classes for k in range(n // 4)]
    assert n % (4 * batch) == 0, "n must be a multiple of 4 x batch"
    pipe, _ = worker_models(spec)
    compute_candidates(spec, jobs[:batch])  # warm up
    plain, full, masks_s = [], [], []
    for _ in range(reps):  # interleaved, so drift hits both alike
        t = time.perf_counter()
        for i in range(0, n, batch):
            chunk = jobs[i:i + batch]
            g = [torch.Generator().manual_seed(candidate_seed(0, c, k)) for c, k in chunk]
            pipe([spec.generation.prompt(c) for c, _ in chunk], num_inference_steps=steps,
                 guidance_scale=spec.generation.guidance,
                 generator=g, output_type="np")
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        cands = compute_candidates(spec, jobs)
        full.append(time.perf_counter() - t)
        masks_s.append(sum(c.seconds["masks"] for c in cands))
    return min(plain), min(full), min(masks_s)


def throughput(n: int, steps: int):
    from pipeline.batch import BatchRun, BatchSpec, FilterConfig, LocalExecutor, RayExecutor, compute_candidates
    from pipeline.dataset import Store

    rows = []
    classes = ("ball", "star", "kite", "leaf")
    for label, batch, make in (("in-process, batch 1", 1, LocalExecutor),
                               ("in-process, batch 4", 4, LocalExecutor),
                               ("in-process, batch 8", 8, LocalExecutor),
                               ("Ray, 1 CPU worker, batch 4", 4, lambda: RayExecutor(1)),
                               ("Ray, 2 CPU workers, batch 4", 4, lambda: RayExecutor(2))):
        # a filter that keeps everything, so every run computes exactly n candidates
        spec = BatchSpec.of(classes, per_class=n // len(classes), steps=steps, batch_size=batch, warmup=0,
                            filter=FilterConfig(0, 0, 0, 1, 0, 1))
        ex = make()
        with tempfile.TemporaryDirectory() as d:
            if isinstance(ex, LocalExecutor):
                compute_candidates(spec, [("ball", 10_000)])  # load the model outside the timing
            else:
                list(ex.map(compute_candidates, spec, [[("ball", 10_000)]] * ex.workers))  # start workers, load models
            t = time.perf_counter()
            report = BatchRun(spec, Store(d), ex).run()
            wall = time.perf_counter() - t
            ex.close()
        rows.append((label, report.generated, wall))
    return rows


def filter_quality(per_class: int, steps: int):
    from pipeline.batch import BatchRun, BatchSpec, FilterConfig, run_batch
    from pipeline.dataset import Store
    from pipeline.embedded import world
    from pipeline.masks import iou

    spec = BatchSpec.of(tuple(world.CLASS_NAMES), per_class=per_class, steps=steps, batch_size=8,
                        filter=FilterConfig(0, 0, 0, 1, 0, 1))  # keep all, judge afterwards
    with tempfile.TemporaryDirectory() as d:
        store = Store(d)
        run_batch(spec, store)
        # the same run judged with the default filter: class medians from the same warm-up candidates
        judge = BatchRun(BatchSpec.of(spec.classes, per_class, steps=steps, batch_size=8), store)
        judge.calibrate()
        kept, dropped, reasons = [], [], {}
        for j in judge.judgements():
            r = j.record
            truth = world.colour_extent(store.image(r.image), world.CLASS_NAMES.index(j.class_name))
            q = iou(store.mask(r.instances[0].mask), truth) if r.instances else 0.0
            (dropped if j.reasons else kept).append(q)
            for w in j.reasons:
                reasons[w] = reasons.get(w, 0) + 1
    return kept, dropped, reasons


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=25)
    args = ap.parse_args()
    import torch

    out = []
    plain, full, masks = mask_overhead(args.n, args.steps, 8)
    out.append(f"### Mask stages vs plain generation\n\n{args.n} images of the embedded model (64x64), "
               f"{args.steps} DDIM steps, UNet batch 8, torch on {torch.get_num_threads()} threads, best of 2 "
               "interleaved runs.\n\n| | seconds | per image |\n|---|---|---|\n"
               f"| plain pipeline call | {plain:.2f} | {plain / args.n * 1000:.0f} ms |\n"
               f"| generate + capture + GrabCut + threshold + filter metrics | {full:.2f} | "
               f"{full / args.n * 1000:.0f} ms |\n"
               f"| of which the mask stages (GrabCut, IoU sweep, metrics) | {masks:.2f} | "
               f"{masks / args.n * 1000:.1f} ms |\n\n**Ratio {full / plain:.3f}** (target <= 1.10).\n")
    rows = throughput(args.n, args.steps)
    base = rows[1][1] / rows[1][2]
    table = "\n".join(f"| {label} | {n} | {wall:.1f} | {n / wall:.2f} | {n / wall / base:.2f}x |"
                      for label, n, wall in rows)
    out.append("### Throughput\n\nWhole batch runs (generation, masks, filter, commits to the store), "
               f"{args.n} candidates, filter off. Ray workers run torch on 1 thread each (Ray sets "
               "OMP_NUM_THREADS=1); in-process torch uses both cores.\n\n"
               "| executor | candidates | seconds | images/s | vs in-process batch 4 |\n|---|---|---|---|---|\n"
               + table + "\n")
    kept, dropped, reasons = filter_quality(max(4, args.n // 4), args.steps)
    allq = kept + dropped
    out.append("### What the quality filter buys\n\n"
               f"{len(allq)} candidates ({max(4, args.n // 4)} per class, 8 classes), default bounds "
               "(agreement >= max(0.5, 0.95 x class warm-up median), area 1-85 %, contrast >= 0.3, border <= 10 %). "
               "Quality = IoU of the stored mask with the object's true extent.\n\n"
               "| | candidates | mIoU vs truth |\n|---|---|---|\n"
               f"| all | {len(allq)} | {np.mean(allq):.3f} |\n| kept | {len(kept)} | {np.mean(kept):.3f} |\n"
               f"| dropped | {len(dropped)} | {np.mean(dropped) if dropped else float('nan'):.3f} |\n\n"
               f"Drop reasons: {', '.join(f'{k} {v}' for k, v in sorted(reasons.items())) or 'none'}. "
               f"Kept fraction {len(kept) / len(allq):.0%} (the paper keeps ~70 %).\n")
    write_section("bench_batch", "\n".join(out))


if __name__ == "__main__":
    main()
