"""Core pipeline figures: capture overhead and memory vs steps, re-threshold latency, GrabCut, refiners.

    python bench/bench_core.py
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from _results import write_section  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def _heap_in_use() -> int:
    """Bytes the C heap has handed out and not taken back (glibc mallinfo2: arena + mmapped
    blocks). Torch's CPU tensors live there, shared libraries do not, so unlike RSS this
    follows what the process holds."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _capture_child(steps: int, mode: str) -> None:
    """Run in a subprocess: one traced generation; print the heap held after each step,
    peak RSS and the attention state's size."""
    import torch

    from pipeline.attention import CaptureConfig, trace
    from pipeline.testing import tiny_pipeline

    pipe = tiny_pipeline(sample_size=128)  # 256x256 images, cross-attention maps of 64x64 like SD's largest
    prompt = "a photograph of a dog"
    pipe(prompt, num_inference_steps=1, output_type="np")  # warm up allocators
    heap = []

    def after_step(pipeline, i, t, kwargs):  # diffusers' callback_on_step_end
        heap.append(_heap_in_use())
        return kwargs

    run = dict(num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np",
               callback_on_step_end=after_step)
    base_heap = _heap_in_use()
    t0 = time.perf_counter()
    if mode == "running-sum":
        with trace(pipe, prompt, "dog", CaptureConfig(self_attention_max_tokens=0)) as tr:
            pipe(prompt, **run)
        state = tr.state_bytes
    elif mode == "store-every-map":  # what DAAM/DiffuMask do: keep each step's maps
        kept = []
        with trace(pipe, prompt, "dog", CaptureConfig(self_attention_max_tokens=0)) as tr:
            tr.on_record(lambda hw, maps: kept.append(maps.clone()))
            pipe(prompt, **run)
        state = sum(t.numel() * t.element_size() for t in kept)
    else:
        pipe(prompt, **run)
        state = 0
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"steps": steps, "mode": mode, "peak_mb": peak / 1024, "heap_last_mb": (heap[-1] - base_heap) / 2**20,
                      "heap_max_mb": (max(heap) - base_heap) / 2**20, "state_mb": state / 2**20, "seconds": dt}))


def capture_memory() -> str:
    rows = []
    for mode in ("plain", "running-sum", "store-every-map"):
        for steps in (10, 50):
            out = subprocess.run([sys.executable, __file__, "--child", str(steps), mode], capture_output=True,
                                 text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    lines = ["| capture | steps | heap held after the last step (MB) | most held after any step (MB) | "
             "attention state kept (MB) | process peak RSS (MB) | seconds |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['steps']} | {r['heap_last_mb']:.2f} | {r['heap_max_mb']:.2f} | {r['state_mb']:.2f} | "
              f"{r['peak_mb']:.0f} | {r['seconds']:.1f} |" for r in rows]
    by = {(r["mode"], r["steps"]): r for r in rows}
    rs10, rs50 = by[("running-sum", 10)], by[("running-sum", 50)]
    st10, st50 = by[("store-every-map", 10)], by[("store-every-map", 50)]
    lines.append("")
    lines.append(f"Running sums at 50 vs 10 steps: heap held {rs50['heap_max_mb']:.2f} MB vs {rs10['heap_max_mb']:.2f} MB "
                 f"(most after any step, over the warm-up), attention state {rs50['state_mb']:.2f} MB vs "
                 f"{rs10['state_mb']:.2f} MB. Storing every map: heap {st50['heap_max_mb']:.1f} MB vs "
                 f"{st10['heap_max_mb']:.1f} MB, state {st50['state_mb']:.1f} MB vs {st10['state_mb']:.1f} MB. "
                 "Heap = glibc's bytes in use (mallinfo2), sampled at the end of every denoising step, relative to "
                 "the same process after a 1-step warm-up; it holds torch's CPU tensors but not shared libraries, "
                 "whose pages make the process's RSS (about 1 GB here) move by tens of MB between identical runs.")
    lines.append("Pipeline: tiny random SD (pipeline/testing.py) at 256x256, so the largest cross-attention maps are "
                 "64x64 as in SD at 512x512; one class word; 10 time buckets. store-every-map keeps a copy of each "
                 "cross-attention call's class-word map (summed over heads), what `AttentionTracer.on_record` hands "
                 "a listener; before 2026-11-30 this row copied every running-sum buffer (all 10 time buckets, "
                 "mostly zeros) per call, ten times the bytes (46.9 MB at 50 steps).")
    return "\n".join(lines)


def rethreshold_and_grabcut() -> str:
    import cv2
    from PIL import Image

    from pipeline.masks import iou_curve, mask_at
    from pipeline.refine import GrabCutRefiner
    from pipeline.viz import overlay_mask

    rng = np.random.default_rng(0)
    files = sorted((SHARED / "coco-mini" / "images").glob("*.jpg"))[:10]
    images = [np.asarray(Image.open(f).convert("RGB").resize((512, 512))) for f in files]
    heats = []
    for img in images:  # a smooth attention-like map centred somewhere in the photo
        small = cv2.GaussianBlur(rng.random((16, 16)).astype(np.float32), (0, 0), 2)
        h = cv2.resize(small, (512, 512), interpolation=cv2.INTER_LINEAR)
        heats.append((h - h.min()) / (h.max() - h.min()))

    def timed(fn, n=50):
        fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n * 1000

    t_mask = timed(lambda: mask_at(heats[0], 0.4))
    t_overlay = timed(lambda: overlay_mask(images[0], mask_at(heats[0], 0.4)))
    ref = heats[0] > 0.5
    t_curve = timed(lambda: iou_curve(heats[0], ref))
    gc = GrabCutRefiner()
    gc_times = []
    for img, h in zip(images, heats):
        t = time.perf_counter()
        gc(img, h)
        gc_times.append(time.perf_counter() - t)
    return "\n".join([
        "| operation at 512x512 | time | target |", "|---|---|---|",
        f"| re-threshold (mask_at) | {t_mask:.2f} ms | <= 30 ms |",
        f"| re-threshold + mask overlay image | {t_overlay:.2f} ms | <= 30 ms |",
        f"| IoU curve over 19 thresholds | {t_curve:.2f} ms | |",
        f"| GrabCut refine (band 0.1, 3 iterations, at <= 320 px), mean of {len(gc_times)} COCO photos | {np.mean(gc_times):.2f} s (max {np.max(gc_times):.2f} s) | <= 1.5 s |",
    ])


def capture_overhead() -> str:
    """Generation wall time with capture / without, side by side, same model, seeds and steps."""
    import torch

    from pipeline.attention import CaptureConfig, trace
    from pipeline.refine import capture_for
    from pipeline.generate import load_pipeline
    from pipeline.testing import tiny_pipeline

    rows = []
    for label, pipe, n_img, reps in (("embedded model, 64x64, batch 8", load_pipeline(None, device="cpu"), 8, 7),
                                     ("tiny random SD, 256x256, batch 1", tiny_pipeline(sample_size=128), 1, 3)):
        prompts = ["a photograph of a ball"] * n_img
        for cfg_label, cfg in (("cross-attention only", CaptureConfig(self_attention_max_tokens=0)),
                               ("+ self-attention affinity", capture_for("affinity"))):
            plain, traced = [], []
            for rep in range(reps):  # interleaved pairs, order alternating, so drift hits both alike
                for mode in (("plain", "traced") if rep % 2 == 0 else ("traced", "plain")):
                    g = [torch.Generator().manual_seed(k) for k in range(n_img)]
                    t = time.perf_counter()
                    if mode == "plain":
                        pipe(prompts, num_inference_steps=20, generator=g, output_type="np")
                        plain.append(time.perf_counter() - t)
                    else:
                        with trace(pipe, prompts, "ball", cfg):
                            pipe(prompts, num_inference_steps=20, generator=g, output_type="np")
                        traced.append(time.perf_counter() - t)
            paired = float(np.median(np.array(traced) / np.array(plain)))
            rows.append(f"| {label} | {cfg_label} | {min(plain):.2f} s | {min(traced):.2f} s | "
                        f"{min(traced) / min(plain):.3f} | {paired:.3f} |")
    return "\n".join(["| pipeline (20 steps, CFG) | capture | plain (best) | with capture (best) | ratio of bests | "
                      "median of paired ratios (target <= 1.05) |", "|---|---|---|---|---|---|", *rows, "",
                      "7 (embedded) / 3 (tiny SD) interleaved pairs each, the order alternating. This VM's speed "
                      "drifts by 20-30 % between minutes, so the paired median is the steadier figure. The affinity "
                      "capture is off unless the affinity refiner is chosen (`capture_for`)."])


def refiners_on_coco() -> str:
    """Refiners vs no refinement on real COCO photos with coarse inputs made from the truth."""
    import contextlib
    import io

    import cv2
    from PIL import Image
    from pycocotools.coco import COCO

    from pipeline.masks import iou
    from pipeline.refine import GrabCutRefiner, OtsuRefiner, RefinementError

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(SHARED / "coco-mini" / "instances.json"))
    anns = [a for a in coco.loadAnns(coco.getAnnIds(iscrowd=False)) if a["area"] > 8000][:40]

    def coarse(gt, kind):
        h, w = gt.shape
        g = gt.astype(np.float32)
        if kind == "16x16 attention-like":
            g = cv2.resize(cv2.resize(g, (16, 16), interpolation=cv2.INTER_AREA), (w, h))
        elif kind == "blurred":
            g = cv2.GaussianBlur(g, (0, 0), 0.03 * max(h, w))
        elif kind == "dilated":
            g = cv2.GaussianBlur(cv2.dilate(g, np.ones((max(h, w) // 15,) * 2, np.uint8)), (0, 0), 0.01 * max(h, w))
        elif kind == "shifted":
            g = np.roll(cv2.GaussianBlur(g, (0, 0), 0.01 * max(h, w)), (h // 20, w // 20), axis=(0, 1))
        elif kind == "box":
            ys, xs = np.nonzero(gt)
            g = np.zeros_like(g)
            g[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = 1
            g = cv2.GaussianBlur(g, (0, 0), 0.01 * max(h, w))
        return (g - g.min()) / max(g.max() - g.min(), 1e-6)

    kinds = ["16x16 attention-like", "blurred", "dilated", "shifted", "box"]
    from pipeline.masks import choose_threshold

    gc = GrabCutRefiner()

    def chosen(img, heat):  # the paper's rule: the heat map at the threshold that best matches the refined mask
        return heat >= choose_threshold(heat, gc(img, heat).mask)[0]

    refs = {"no refinement (heat >= 0.5)": None, "otsu": OtsuRefiner(), "grabcut (refined mask)": gc,
            "heat at grabcut-chosen threshold": chosen}
    res = {k: {r: [] for r in refs} for k in kinds}
    for a in anns:
        info = coco.loadImgs(a["image_id"])[0]
        img = np.asarray(Image.open(SHARED / "coco-mini" / "images" / info["file_name"]).convert("RGB"))
        gt = coco.annToMask(a).astype(bool)
        for k in kinds:
            heat = coarse(gt, k)
            for name, r in refs.items():
                try:
                    m = heat >= 0.5 if r is None else r(img, heat) if r is chosen else r(img, heat).mask
                except (RefinementError, ValueError):  # e.g. a box covering the whole photo: a flat map
                    m = heat >= 0.5
                res[k][name].append(iou(m, gt))
    lines = ["| coarse input | " + " | ".join(refs) + " |", "|---" * (len(refs) + 1) + "|"]
    for k in kinds:
        lines.append(f"| {k} | " + " | ".join(f"{np.mean(res[k][r]):.3f}" for r in refs) + " |")
    return "\n".join(lines + ["", f"mIoU against the COCO instance mask, {len(anns)} instances (area > 8000 px) of "
                              "`../shared/data/coco-mini`; heat maps made from the truth as named. The affinity "
                              "refiner needs the UNet's self-attention, so it is measured on generated images "
                              "(bench_embedded) instead. SAM runs (segment-anything .pth or transformers folder; tested with a small "
                              "random SAM), but its published weights cannot be downloaded here, so it is not in this "
                              "table."])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _capture_child(int(sys.argv[2]), sys.argv[3])
        sys.exit(0)
    only = {"--only-capture": ("### Capture overhead", "### Capture memory vs steps", capture_overhead),
            "--only-memory": ("### Capture memory vs steps", "### Interactive operations", capture_memory)}
    if len(sys.argv) > 1 and sys.argv[1] in only:  # re-measure one subsection in place
        from _results import RESULTS

        head, after, measure = only[sys.argv[1]]
        text = RESULTS.read_text()
        a, b = text.index(head + "\n\n") + len(head + "\n\n"), text.index("\n\n" + after)
        RESULTS.write_text(text[:a] + measure() + text[b:])
        sys.exit(0)
    body = ("### Capture overhead\n\n" + capture_overhead() + "\n\n### Capture memory vs steps\n\n" + capture_memory()
            + "\n\n### Interactive operations\n\n" + rethreshold_and_grabcut()
            + "\n\n### Refiners on real photos\n\n" + refiners_on_coco())
    write_section("bench_core", body)
