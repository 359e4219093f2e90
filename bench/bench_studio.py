"""Studio latency as a user sees it through the API: threshold slider and composite preview.

    python bench/bench_studio.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

from _results import write_section  # noqa: E402


def main(n: int = 30) -> None:
    from gradio_client import Client

    from studio_server import running_studio

    with tempfile.TemporaryDirectory() as tmp, running_studio(Path(tmp) / "data") as url:
        c = Client(url, verbose=False)
        t = time.perf_counter()
        c.predict(class_name="ball", template="a photograph of a {}", seed=1, steps=25, guidance=5, model="embedded",
                  refiner_name="grabcut", sam_ckpt="", resolution="all", t_lo=0, t_hi=999, api_name="/generate")
        t_gen = time.perf_counter() - t
        slider = []
        for k in range(n):
            t = time.perf_counter()
            c.predict(threshold=0.1 + 0.8 * k / n, api_name="/threshold")
            slider.append(time.perf_counter() - t)
        sid = int(c.predict(threshold=0.5, tags="", api_name="/accept").split("#")[1].split()[0])
        c.predict(choice=f"#{sid} ball", upload=None, caption="", api_name="/insert_load")
        c.predict(class_name="star", seed=2, model="embedded", api_name="/insert_object")
        t = time.perf_counter()
        c.predict(scale=0.4, api_name="/insert_place")
        t_place = time.perf_counter() - t
        preview = []
        for k in range(10):
            t = time.perf_counter()
            c.predict(scale=0.3 + 0.02 * k, method="learned", api_name="/insert_preview")
            preview.append(time.perf_counter() - t)
    med = lambda xs: float(np.median(xs)) * 1000
    body = "\n".join([
        "Round trips through `gradio_client` to a studio launched on this machine (embedded model, 64x64 images "
        "shown at 320x320).", "",
        "| action | median | p90 | target |", "|---|---|---|---|",
        f"| threshold slider update (mask + IoU curve) | {med(slider):.0f} ms | {np.percentile(slider, 90) * 1000:.0f} ms | <= 100 ms |",
        f"| composite preview (paste + learned harmonization + masks) | {med(preview):.0f} ms | {np.percentile(preview, 90) * 1000:.0f} ms | <= 500 ms |",
        f"| placement proposal (heat maps, 15 scales) | {t_place * 1000:.0f} ms | | |",
        f"| generate (25 steps) + capture + GrabCut | {t_gen:.2f} s | | |"])
    write_section("bench_studio", body)


if __name__ == "__main__":
    main()
