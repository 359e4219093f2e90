"""Export speed and size: 1,000 samples of 512x512 in each format (COCO, VOC, YOLO, HF).

    python bench/bench_export.py [--n 1000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from _results import write_section  # noqa: E402


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main(n: int) -> None:
    import cv2
    from PIL import Image

    from pipeline.dataset import NewSample, Store
    from pipeline.export import export

    photos = sorted((ROOT.parent / "shared" / "data" / "coco-mini" / "images").glob("*.jpg"))
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        store = Store(work / "store")
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        for k in range(n):
            # real photos (so PNG/JPEG sizes are realistic), each made unique by a shift
            img = np.asarray(Image.open(photos[k % len(photos)]).convert("RGB").resize((512, 512)))
            img = np.roll(img, k // len(photos), axis=1)
            yy, xx = np.mgrid[:512, :512]
            cy, cx = rng.integers(128, 384, 2)
            m = ((yy - cy) / rng.uniform(60, 120)) ** 2 + ((xx - cx) / rng.uniform(60, 120)) ** 2 <= 1
            heat = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 12)
            store.add(NewSample(img, ["dog" if k % 2 else "cat"], instances=[("dog" if k % 2 else "cat", m)],
                                instance_sources=["refined"], heat_map=heat / heat.max(), threshold=0.5,
                                refined_mask=m, status="accepted", seed=k,
                                model="bench"))
        fill = time.perf_counter() - t
        rows = []
        load0 = os.getloadavg()[0]
        for fmt in ("coco", "voc", "yolo", "hf"):
            t = time.perf_counter()
            rep = export(store, fmt, work / f"out-{fmt}", val_fraction=0.1)
            rows.append((fmt, time.perf_counter() - t, folder_mb(rep.out), rep.n_images))
        load = os.getloadavg()[0]
        body = [f"Store filled with {n} samples of 512x512 (real COCO photos, one mask each) in {fill:.1f} s "
                f"({n / fill:.0f} samples/s; store {folder_mb(work / 'store'):.0f} MB).", "",
                "| format | seconds | images/s | MB on disk |", "|---|---|---|---|"]
        body += [f"| {f} | {s:.1f} | {k / s:.0f} | {mb:.0f} |" for f, s, mb, k in rows]
        body += ["", f"1-minute load average before / after the exports: {load0:.1f} / {load:.1f} on {os.cpu_count()} "
                 "CPUs (other jobs share this machine; the seconds scale with it).", "",
                 "Every sample's blobs are read and checked before it is written (the image by its PNG checksums; "
                 "a damaged sample is skipped and listed); COCO and YOLO copy the stored PNG, VOC re-encodes a JPEG "
                 "and two PNG maps plus an XML with outlines, YOLO traces one polygon per instance, HF writes "
                 "per-instance mask PNGs beside the semantic mask."]
        write_section("bench_export", "\n".join(body))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    main(ap.parse_args().n)
