"""One Curate review step in the browser: key press 'n' -> the large view, its details and the
gallery highlight all show the next sample. Median over >= 30 steps on a store of 40 samples.

    python bench/bench_review.py

Timed inside the page (performance.now() from the keydown to the frame where all three have
changed, polled every ~2 ms), in Debian's chromium driven by Playwright.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

from _results import write_section  # noqa: E402

N_SAMPLES, N_STEPS, TARGET_MS = 40, 35, 150

STEP_JS = """async () => {
  const q = (s) => document.querySelector(s);
  const state = () => {
    const sel = q('#curate-gallery button.selected, #curate-gallery .thumbnail-item.selected');
    const view = q('#curate-view img');
    return [(q('#curate-detail') || {}).innerText || '', sel ? ((sel.innerText || '').trim() || sel.getAttribute('aria-label')) : '',
            view ? view.src : ''];
  };
  const id = (text) => (text.match(/#(\\d+)/) || [])[1];
  const [d0, s0, v0] = state();
  const t0 = performance.now();
  document.dispatchEvent(new KeyboardEvent('keydown', { key: 'n', bubbles: true }));
  while (performance.now() - t0 < 20000) {
    const [d, s, v] = state();
    if (d !== d0 && s !== s0 && v !== v0 && id(d) && id(d) === id(s)) return performance.now() - t0;
    await new Promise((ok) => setTimeout(ok, 2));
  }
  throw new Error('the review step did not finish: ' + JSON.stringify(state()));
}"""


def make_store(store_dir: Path) -> None:
    """N_SAMPLES rows: 8 generated images, each stored at 5 thresholds (distinct masks)."""
    from pipeline.dataset import NewSample, Store
    from pipeline.generate import generate, load_pipeline
    from pipeline.masks import mask_at

    classes = ["ball", "kite", "star", "leaf", "flower", "heart", "pumpkin", "aeroplane"]
    samples = generate(load_pipeline(None, device="cpu"), classes, list(range(len(classes))), steps=10)
    with Store(store_dir) as store:
        for k in range(N_SAMPLES):
            s = samples[k % len(samples)]
            t = 0.3 + 0.1 * (k // len(samples))
            store.add(NewSample(s.image, [s.class_name], instances=[(s.class_name, mask_at(s.heat_map, t))],
                                prompt=s.prompt, seed=s.seed, model="embedded", heat_map=s.heat_map, threshold=t,
                                status="accepted" if k % 3 else "pending"))


def review_steps(url: str, n: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or shutil.which("chromium-browser"),
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.wait_for_selector("#generate-btn", timeout=60000)
        page.get_by_role("tab", name="Curate & Export").click()
        page.wait_for_selector("#curate-gallery img", timeout=60000)
        page.locator("#curate-gallery img").first.click()
        page.wait_for_function("() => /#\\d+/.test(document.querySelector('#curate-detail').innerText)")
        page.evaluate(STEP_JS)  # warm-up: caches and the first review picture
        out = [page.evaluate(STEP_JS) for _ in range(n)]
        browser.close()
    return out


def main() -> None:
    from studio_server import running_studio

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "data"
        make_store(store)
        with running_studio(store) as url:
            ms = review_steps(url, N_STEPS)
    med = float(np.median(ms))
    body = "\n".join([
        f"Curate tab, store of {N_SAMPLES} samples (64x64 images; review view 384 px), {N_STEPS} steps with **n** "
        "after one warm-up step, timed in the page from the keydown to the frame where the large view, its "
        "details and the gallery highlight all show the next sample (Debian's chromium via Playwright; "
        "the studio server and the browser share this machine's CPUs).", "",
        "| step | median | p90 | max | target |", "|---|---|---|---|---|",
        f"| review step (n -> view + highlight) | {med:.0f} ms | {np.percentile(ms, 90):.0f} ms | {max(ms):.0f} ms | "
        f"<= {TARGET_MS} ms ({'met' if med <= TARGET_MS else 'missed'}) |"])
    write_section("bench_review", body)


if __name__ == "__main__":
    main()
