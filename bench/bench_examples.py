"""How fast a fresh studio has its examples: building the examples store (the shipped photos
with their COCO masks and the shipped embedded-model samples) and its Curate gallery page,
against generating the same samples with the embedded model at start-up (what shipping
them saves).

    python bench/bench_examples.py [--generate]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import write_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generate", action="store_true", help="also time generating the samples at start-up")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from pipeline.dataset import Store
    from pipeline.examples import GENERATED_SAMPLES, build_examples_store, make_generated
    from studio.ui import CurateActions

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "examples"
        t0 = time.perf_counter()
        build_examples_store(root)
        rows.append(("build the examples store, cold (a fresh Space)", time.perf_counter() - t0))
        t0 = time.perf_counter()
        build_examples_store(root)
        rows.append(("build it again (a restart: nothing added)", time.perf_counter() - t0))
        with Store(root) as s:
            n = s.count()
        t0 = time.perf_counter()
        CurateActions(root).gallery("any", "", "", 0)
        rows.append((f"Curate's examples gallery ({n} thumbnails), cold", time.perf_counter() - t0))
        if args.generate:
            t0 = time.perf_counter()
            make_generated(Path(tmp) / "gen.npz")
            rows.append((f"generating the {len(GENERATED_SAMPLES)} samples instead (load + 25 steps + GrabCut)",
                         time.perf_counter() - t0))
    body = "The examples a fresh studio shows in Curate (and offers in Insert); one thread.\n\n"
    body += "| step | seconds |\n|---|---|\n" + "".join(f"| {k} | {v:.2f} |\n" for k, v in rows)
    write_section("bench_examples", body)


if __name__ == "__main__":
    main()
