"""Thesaurus build speed and memory.

    python bench/bench_thesaurus.py
"""
from __future__ import annotations

import gzip
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import write_section  # noqa: E402

CAPTIONS = ROOT.parent / "shared" / "data" / "captions"


def child(repeat: int, workers: int) -> None:
    from pipeline.thesaurus import Thesaurus

    lines = gzip.open(CAPTIONS / "flickr30k_multi30k_task2_en.txt.gz", "rt").read().splitlines()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def stream():  # the corpus repeated, streamed: never held whole
        for _ in range(repeat):
            yield from lines

    t = time.perf_counter()
    th = Thesaurus.build(stream(), "coco", workers=workers)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"captions": th.n_captions, "seconds": dt, "rate": th.n_captions / dt,
                      "growth_mb": (peak - base) / 1024}))


def main() -> None:
    rows = []
    for repeat, workers in ((1, 1), (1, 2), (10, 2)):
        out = subprocess.run([sys.executable, __file__, "--child", str(repeat), str(workers)], capture_output=True,
                             text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((repeat, workers, r))
    lines = ["Corpus: Flickr30k captions (155,070, `../shared/data/captions`), COCO-80 vocabulary with synonyms "
             "and plurals; repeated 10x for the memory check. Peak RSS growth is measured after loading the "
             "captions into the benchmark process itself (the stream it feeds from).", "",
             "| corpus | workers | captions | seconds | captions/s | peak RSS growth (MB) |", "|---|---|---|---|---|---|"]
    for repeat, workers, r in rows:
        lines.append(f"| {repeat}x | {workers} | {r['captions']:,} | {r['seconds']:.2f} | {r['rate']:,.0f} | {r['growth_mb']:.0f} |")
    write_section("bench_thesaurus", "\n".join(lines) + "\n\nTarget: >= 200k captions/s on 2 cores; memory at 10x "
                  "the corpus about the same as at 1x.")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
