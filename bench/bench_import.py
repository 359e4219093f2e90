"""Memory and time of a COCO import of 100k annotations (#23 item 5: <= 1 GB RSS, streamed).

Builds a COCO file of 1,000 images x 100 polygon annotations (one real coco-mini photo, hard
linked under 1,000 names) and measures, each in its own fresh process (peak RSS from
``getrusage``): loading it with pycocotools ``COCO`` (what the import held before: the parsed
JSON plus its index), ``read_coco`` (the streamed, checked reading the import does now), and a
whole ``import_coco`` (reading and checking the file, every image header, then 20 images
written: writing holds one image's masks at a time, so more images cost time, not memory).
Also 100k annotations on one image (the masks alone would need 100k x H x W bytes): refused.

    DIFFUMASK_SHARED_DATA=/work/shared/data python bench/bench_import.py
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("DIFFUMASK_SHARED_DATA", ROOT.parent / "shared" / "data"))

N_IMAGES, PER_IMAGE, POINTS = 1000, 100, 16


def build(folder: Path, one_image: bool = False) -> Path:
    from PIL import Image

    photo = sorted((SHARED / "coco-mini" / "images").iterdir())[0]
    w, h = Image.open(photo).size
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    shutil.copy(photo, images / "0.jpg")
    n_img = 1 if one_image else N_IMAGES
    for i in range(1, n_img):
        os.link(images / "0.jpg", images / f"{i}.jpg")
    rng = np.random.default_rng(0)
    path = folder / "instances.json"
    with open(path, "w") as f:  # written piecewise: the builder itself should not need the memory
        f.write('{"categories": [{"id": 1, "name": "thing"}], "images": ')
        f.write(json.dumps([{"id": i + 1, "file_name": f"{i}.jpg", "width": w, "height": h} for i in range(n_img)]))
        f.write(', "annotations": [')
        for k in range(N_IMAGES * PER_IMAGE):
            cx, cy = rng.uniform(20, w - 20), rng.uniform(20, h - 20)
            ang = np.linspace(0, 2 * np.pi, POINTS, endpoint=False)
            r = rng.uniform(5, 20)
            poly = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1).round(2).reshape(-1).tolist()
            img_id = 1 if one_image else k // PER_IMAGE + 1
            f.write(("," if k else "") + json.dumps({"id": k + 1, "image_id": img_id, "category_id": 1, "iscrowd": 0,
                                                     "segmentation": [poly], "bbox": [cx - r, cy - r, 2 * r, 2 * r],
                                                     "area": float(np.pi * r * r)}))
        f.write("]}")
    return path


CHILD = {
    "pycocotools COCO(file) (the import before)": "from pycocotools.coco import COCO; COCO({path!r})",
    "read_coco, streamed (json-stream) + checked": "from pipeline.export.validate import read_coco; "
                                                   "read_coco(Path({path!r}))",
    "read_coco, parsed at once (json.load) + checked": "from pipeline.export import validate; "
                                                       "validate.STREAM_ABOVE_BYTES = 1 << 40; "
                                                       "validate.read_coco(Path({path!r}))",
    "import_coco, 20 images written": "from pipeline.dataset import Store; from pipeline.export import import_coco; "
                                      "import_coco(Store({store!r}), {path!r}, {images!r}, limit=20)",
}


def measure(code: str) -> tuple[float, float, str]:
    """(peak RSS in MB, seconds, last line of stderr) of ``code`` in a fresh interpreter."""
    prog = ("import resource, sys, time, contextlib, io\nfrom pathlib import Path\nt = time.time()\nerr = ''\n"
            f"try:\n    with contextlib.redirect_stdout(io.StringIO()):\n        {code}\n"
            "except Exception as e:\n    err = type(e).__name__ + ': ' + str(e)[:160]\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.time() - t, err, sep='\\t')")
    r = subprocess.run([sys.executable, "-c", prog], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if r.returncode:
        return float("nan"), float("nan"), f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1][:160]}"
    rss, sec, err = r.stdout.rstrip("\n").splitlines()[-1].split("\t")
    return float(rss), float(sec), err


def main() -> None:
    from _results import write_section

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.time()
        path = build(tmp / "many")
        size_mb = path.stat().st_size / 1e6
        print(f"built {path} ({size_mb:.0f} MB) in {time.time() - t:.0f} s", file=sys.stderr)
        base = measure("import numpy, PIL.Image, pycocotools.mask; import pipeline.export")
        for name, code in CHILD.items():
            rss, sec, err = measure(code.format(path=str(path), store=str(tmp / f"store-{len(rows)}"),
                                                images=str(tmp / "many" / "images")))
            rows.append((name, rss, sec, err))
            print(rows[-1], file=sys.stderr)
        one = build(tmp / "one", one_image=True)
        rss, sec, err = measure(CHILD["import_coco, 20 images written"].format(
            path=str(one), store=str(tmp / "store-one"), images=str(tmp / "one" / "images")))
        rows.append(("import_coco, 100k annotations on one image", rss, sec, err))
    lines = [f"A COCO file of {N_IMAGES * PER_IMAGE:,} polygon annotations ({N_IMAGES:,} images x {PER_IMAGE}, "
             f"{POINTS} points each; {size_mb:.0f} MB of JSON) on one coco-mini photo. Peak RSS of a fresh "
             f"process; {base[0]:.0f} MB of it is the interpreter with numpy, PIL, pycocotools and the pipeline "
             "imported.", "", "| what | peak RSS (MB) | seconds | outcome |", "|---|---|---|---|"]
    for name, rss, sec, err in rows:
        lines.append(f"| {name} | {rss:.0f} | {sec:.1f} | {err or 'ok'} |")
    lines += ["", "Target: <= 1,000 MB for 100k annotations. The whole file is read and checked before anything "
              "is written; a file over `validate.STREAM_ABOVE_BYTES` (32 MB) is streamed with json-stream (one "
              "annotation is a Python object at a time, kept as numpy arrays; slower than json.load, which smaller "
              "files use, by the ratio above); writing then holds one image's masks at a time (at most "
              "`pipeline.limits.MAX_INSTANCES_PER_IMAGE` instances and `MAX_MASK_BYTES_PER_IMAGE` per image)."]
    write_section("bench_import", "\n".join(lines))


if __name__ == "__main__":
    main()
