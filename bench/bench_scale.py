"""Cost against input size (issue 16): Insert's placement and preview at 1, 4, 16 and 64
megapixels, and the Curate gallery's Refresh with 10,000 samples in the store.

    python bench/bench_scale.py [--sizes 1 4 16 64] [--samples 10000]

Backgrounds are a real COCO photo (../shared/data/coco-mini) scaled to each size; the
object is a COCO instance cut from another photo. Peak memory is the process's maximum
resident set growth while the step runs (ru_maxrss), so it is an upper bound.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from _results import write_section  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _coco():
    import contextlib
    import io

    from pycocotools.coco import COCO

    from conftest import SHARED, coco_image

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(SHARED / "coco-mini" / "instances.json"))
    return coco, coco_image


def scale_rows(sizes) -> list[str]:
    from pipeline.compose import paste
    from pipeline.harmonize import default_method, get_harmonizer
    from pipeline.placement import heatmap

    coco, coco_image = _coco()
    img_ids = sorted(coco.getImgIds())
    bg0 = coco_image(coco, img_ids[0])
    ann = max(coco.loadAnns(coco.getAnnIds(imgIds=img_ids[1], iscrowd=False)), key=lambda a: a["area"])
    fg = coco_image(coco, img_ids[1])
    fg_mask = coco.annToMask(ann).astype(bool)
    name = coco.loadCats(ann["category_id"])[0]["name"]
    harm = get_harmonizer(default_method())
    rows = []
    for mp in sizes:
        side = (mp * 1e6 / (bg0.shape[0] * bg0.shape[1])) ** 0.5
        H, W = round(bg0.shape[0] * side), round(bg0.shape[1] * side)
        bg = cv2.resize(bg0, (W, H), interpolation=cv2.INTER_LINEAR)
        rss0 = _rss_mb()
        t = time.perf_counter()
        res = heatmap(bg, fg_mask, fg_class=name)
        t_place = time.perf_counter() - t
        rss1 = _rss_mb()
        _, box, _ = res.boxes[0]
        del res
        t = time.perf_counter()
        paste(bg, [], fg, fg_mask, box, name, harmonizer=harm, harmonizer_name=default_method())
        t_prev = time.perf_counter() - t
        rss2 = _rss_mb()
        rows.append(f"| {mp} | {W}x{H} | {t_place:.2f} | {t_prev:.2f} | {rss1 - rss0:.0f} | {rss2 - rss1:.0f} |")
        print(rows[-1], flush=True)
    return rows


def gallery_rows(n: int) -> list[str]:
    from pipeline.dataset import NewSample, Store
    from pipeline.curation import PAGE_SIZE, Curation, SampleFilter, clear_thumbnails

    coco, coco_image = _coco()
    photos = [coco_image(coco, i) for i in sorted(coco.getImgIds())[:20]]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store_dir = Path(tmp) / "store"
        t = time.perf_counter()
        with Store(store_dir) as store:
            for k in range(n):
                p = photos[k % len(photos)]
                y, x = rng.integers(0, p.shape[0] - 96), rng.integers(0, p.shape[1] - 96)
                img = p[y : y + 96, x : x + 96]
                m = np.zeros((96, 96), bool)
                m[20:70, 10 + k % 20 : 60 + k % 20] = True
                store.add(NewSample(img, ["dog"], instances=[("dog", m)], instance_sources=["user"],
                                    status="accepted" if k % 2 else "pending"))
        t_fill = time.perf_counter() - t
        curation = Curation(store_dir)
        clear_thumbnails()
        times = {}
        for label, page in (("first page, cold", 0), ("first page, cached", 0), ("last page, cold", 10**9),
                            ("middle page, cold", n // PAGE_SIZE // 2)):
            t = time.perf_counter()
            shown = curation.page(SampleFilter(), page)
            times[label] = time.perf_counter() - t
            assert len(shown.tiles) > 0
        t = time.perf_counter()
        curation.page(SampleFilter.parse("accepted", "dog"), 3)
        times["filtered (accepted, dog), page 4, cold"] = time.perf_counter() - t
    rows = [f"| {label} | {v:.3f} |" for label, v in times.items()]
    print(f"filled {n} samples in {t_fill:.0f} s", *rows, sep="\n")
    return rows, t_fill


def main() -> None:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--samples", type=int, default=10_000)
    args = ap.parse_args()
    rows = scale_rows(args.sizes)
    grows, t_fill = gallery_rows(args.samples)
    body = ("Insert tab, one object (a COCO instance) on a COCO photo scaled to each size; the default "
            "harmonizer; one thread.\n\n"
            "| megapixels | background | placement (s) | preview (s) | placement peak RSS growth (MB) | "
            "preview peak RSS growth (MB) |\n|---|---|---|---|---|---|\n" + "\n".join(rows) +
            f"\n\nCurate gallery Refresh (one page of {48} thumbnails) with {args.samples} samples in the store "
            f"(filled in {t_fill:.0f} s):\n\n| refresh | seconds |\n|---|---|\n" + "\n".join(grows))
    write_section("bench_scale", body)


if __name__ == "__main__":
    main()
