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


def client_floor(n: int = 15) -> tuple[float, float]:
    """Median ms of a no-op endpoint of a bare Blocks app: through gradio_client, and through
    raw HTTP (POST /gradio_api/call/noop, then read its event stream)."""
    import json
    import urllib.request

    import gradio as gr
    from gradio_client import Client

    from studio_server import free_port

    with gr.Blocks() as demo:
        a, b = gr.Number(), gr.Number()
        a.change(lambda x: x, a, b, api_name="noop", queue=False)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    try:
        c = Client(f"http://127.0.0.1:{port}/", verbose=False)
        ts, raw = [], []
        for k in range(n):
            t = time.perf_counter()
            c.predict(k, api_name="/noop")
            ts.append(time.perf_counter() - t)
        base = f"http://127.0.0.1:{port}/gradio_api/call/noop"
        for k in range(n):
            t = time.perf_counter()
            req = urllib.request.Request(base, data=json.dumps({"data": [k]}).encode(),
                                         headers={"Content-Type": "application/json"})
            event = json.loads(urllib.request.urlopen(req).read())["event_id"]
            assert b"complete" in urllib.request.urlopen(f"{base}/{event}").read()
            raw.append(time.perf_counter() - t)
    finally:
        demo.close()
    return float(np.median(ts)) * 1000, float(np.median(raw)) * 1000


def slider_value(k: int) -> float:
    """The k-th threshold a bench step types: 71 distinct values in 0.10..0.80 (k mod 71), each
    0.34 or 0.37 away from the one before, so every step changes the mask, and no value repeats
    within 71 steps: neither page is answered from the browser's image cache (with 10 repeated
    values the bare page's pictures came from it after the first round, the studio's not)."""
    return round(0.10 + ((k * 37) % 71) * 0.01, 2)


def _time_slider_to_image(page, n: int, start: int = 0) -> list[float]:
    """Seconds from typing a value in ``#threshold``'s number box (Enter) until the image in
    ``#mask-view`` has a new src, for the values ``slider_value(start .. start + n - 1)``."""
    box = page.locator("#threshold input[type=number]")
    src = "() => (document.querySelector('#mask-view img') || {}).src || ''"
    out = []
    for k in range(start, start + n):
        before = page.evaluate(src)
        t = time.perf_counter()
        box.fill(f"{slider_value(k):.2f}")
        box.press("Enter")
        page.wait_for_function(f"(b) => ({src})() !== b", arg=before, timeout=10000)
        out.append(time.perf_counter() - t)
    return out


def browser_slider(n: int = 20) -> tuple[list[float], list[float], list[float]]:
    """Seconds from typing a threshold in the slider's box (Enter) until the mask image on
    the page has changed, in Debian's chromium driven by Playwright: in the studio, and (the
    floor, measured side by side) in a bare Blocks app whose slider returns a 64x64 image,
    launched as Gradio ships (run history on) and with ``run_history=False`` as the studio is."""
    import shutil

    import gradio as gr
    from playwright.sync_api import sync_playwright

    from studio_server import free_port, running_studio

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return [], [], []
    bares, ports = [], []
    for history in (True, False):
        with gr.Blocks() as bare:
            slider = gr.Slider(0, 1, value=0.5, step=0.01, elem_id="threshold")
            image = gr.Image(type="numpy", interactive=False, elem_id="mask-view")
            slider.change(lambda t: np.full((64, 64, 3), int(t * 255), np.uint8), slider, image, queue=False,
                          show_progress="hidden")
        ports.append(free_port())
        bare.launch(prevent_thread_lock=True, server_port=ports[-1], quiet=True, run_history=history)
        bares.append(bare)
    with tempfile.TemporaryDirectory() as tmp, running_studio(Path(tmp) / "data") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        page.wait_for_selector("#generate-btn", timeout=60000)
        page.click("#generate-btn")
        page.wait_for_function("() => (document.querySelector('#choice-info') || {}).innerText?.includes('chose threshold')",
                               timeout=120000)
        floor_pages = []
        for port in ports:
            floor_pages.append(browser.new_page(viewport={"width": 1400, "height": 1100}))
            floor_pages[-1].goto(f"http://127.0.0.1:{port}/")
            floor_pages[-1].wait_for_selector("#threshold input[type=number]", timeout=60000)
        studio, floor, floor_quiet = [], [], []
        for b in range(6):  # interleaved, so a drift in the machine's speed hits all alike
            studio += _time_slider_to_image(page, n // 6, b * (n // 6))
            floor += _time_slider_to_image(floor_pages[0], n // 6, b * (n // 6))
            floor_quiet += _time_slider_to_image(floor_pages[1], n // 6, b * (n // 6))
        browser.close()
    for bare in bares:
        bare.close()
    return studio, floor, floor_quiet


def main(n: int = 30) -> None:
    from gradio_client import Client

    from pipeline.harmonize import default_method
    from pipeline.placement import DEFAULT_SCORER
    from studio.insert import OBJECT_SOURCES
    from studio_server import running_studio

    harmonizer = default_method()

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
        saved = c.predict("", api_name="/accept")[11]  # the save line: "saved as #<id> (accepted): ..."
        sid = int(saved.split("#")[1].split()[0])
        c.predict(f"dataset:{sid}", None, "", "embedded", api_name="/insert_load")
        c.predict("star", 2, "embedded", OBJECT_SOURCES[0], api_name="/insert_object")
        t = time.perf_counter()
        c.predict(DEFAULT_SCORER, "", api_name="/insert_place")
        t_place = time.perf_counter() - t
        preview = []
        for k in range(10):
            t = time.perf_counter()
            c.predict(0.3 + 0.02 * k, harmonizer, "", api_name="/insert_preview")
            preview.append(time.perf_counter() - t)
    floor, raw_floor = client_floor()
    in_browser, browser_floor, _ = browser_slider()
    med = lambda xs: float(np.median(xs)) * 1000
    browser_row = (f"| threshold slider, in the browser (Enter -> new mask image on the page) | {med(in_browser):.0f} ms | "
                   f"{np.percentile(in_browser, 90) * 1000:.0f} ms | <= 100 ms |\n"
                   f"| the same in a bare Blocks app (slider -> 64x64 image; the floor, interleaved) | "
                   f"{med(browser_floor):.0f} ms | {np.percentile(browser_floor, 90) * 1000:.0f} ms | |") if in_browser else \
        "| threshold slider, in the browser | (chromium not installed) | | <= 100 ms |"
    body = "\n".join([
        "Studio launched on this machine (embedded model, 64x64 images shown at 320x320). Latency as a user "
        "sees it is measured in Debian's chromium (Playwright), through the page's own Gradio JS client; the "
        "other rows are round trips through `gradio_client`, whose own floor on this machine is "
        f"{floor:.0f} ms for a no-op endpoint of a bare Blocks app (raw HTTP to the same endpoint: {raw_floor:.0f} ms).", "",
        "| action | median | p90 | target |", "|---|---|---|---|",
        browser_row,
        f"| threshold slider update via gradio_client (mask + IoU curve) | {med(slider):.0f} ms | {np.percentile(slider, 90) * 1000:.0f} ms | |",
        f"| composite preview (paste + {harmonizer} harmonization + masks) | {med(preview):.0f} ms | {np.percentile(preview, 90) * 1000:.0f} ms | <= 500 ms |",
        f"| placement proposal (heat maps, 15 scales) | {t_place * 1000:.0f} ms | | |",
        f"| generate (25 steps) + capture + GrabCut | {t_gen:.2f} s | | |"]
        + (["", f"The studio's own share of a slider step in the browser (its median minus the bare app's): "
                f"{med(in_browser) - med(browser_floor):.0f} ms; the rest is what any Gradio page costs on this machine."]
           if in_browser else []))
    write_section("bench_studio", body)


def server_step(n: int = 100, rounds: int = 5) -> tuple[float, float]:
    """Median ms of the server's part of a threshold step (Gradio's ``process_api``: inputs,
    handler, outputs postprocessed and cached), in this process, no network: the studio's
    slider event on a session of the shipped embedded-model sample, and a bare Blocks app's
    slider -> 64x64 image, interleaved; the lower of the ``rounds`` medians of each."""
    import asyncio

    import gradio as gr
    from gradio.state_holder import SessionState

    from pipeline.inspect import InspectSession
    from pipeline.refine import get_refiner
    from studio.generate import render
    from studio.ui import build_app

    with tempfile.TemporaryDirectory() as tmp:
        demo = build_app(Path(tmp) / "data")
        fn = next(f for f in demo.fns.values() if f.api_name == "threshold")
        shipped = np.load(ROOT / "assets" / "examples" / "generated.npz")
        ses = InspectSession(image=shipped["images"][0], class_name=str(shipped["classes"][0]),
                             heat=shipped["heat"][0].astype(np.float32), refiner=get_refiner("grabcut"))
        ses.start()
        render(ses)
        state = SessionState(demo)
        state[fn.inputs[0]._id] = ses
        with gr.Blocks() as bare:
            slider, image = gr.Slider(0, 1, value=0.5, step=0.01), gr.Image(type="numpy", interactive=False)
            slider.change(lambda t: np.full((64, 64, 3), int(t * 255), np.uint8), slider, image, queue=False)
        bare_fn, bare_state = next(iter(bare.fns.values())), SessionState(bare)

        async def steps(blocks, f, st, with_state: bool) -> float:
            ts = []
            for k in range(n):
                t = slider_value(k)
                start = time.perf_counter()
                await blocks.process_api(f, [None, t] if with_state else [t], state=st, session_hash="bench")
                ts.append(time.perf_counter() - start)
            return float(np.median(ts)) * 1000

        async def run() -> tuple[float, float]:
            studio, floor = [], []
            for _ in range(rounds):
                studio.append(await steps(demo, fn, state, True))
                floor.append(await steps(bare, bare_fn, bare_state, False))
            return min(studio), min(floor)

        return asyncio.run(run())


def main_browser_only(n: int = 60, runs: int = 5) -> None:
    """Only the side-by-side browser rows (#24 item 5: the studio's slider step within 1.3x of a
    bare Gradio page's), ``runs`` times, with the machine's load stated: it may be shared."""
    import os

    med = lambda xs: float(np.median(xs)) * 1000
    p90 = lambda xs: float(np.percentile(xs, 90)) * 1000
    rows, ratios = [], []
    for r in range(runs):
        load = os.getloadavg()
        studio, floor, floor_quiet = browser_slider(n)
        ratios.append((med(studio) / med(floor), med(studio) / med(floor_quiet)))
        rows.append(f"| {r + 1} | {load[0]:.1f} | {med(studio):.0f} / {p90(studio):.0f} ms | {med(floor):.0f} / "
                    f"{p90(floor):.0f} ms | {med(floor_quiet):.0f} / {p90(floor_quiet):.0f} ms | "
                    f"**{ratios[-1][0]:.2f}x** | {ratios[-1][1]:.2f}x |")
    worst = max(r[0] for r in ratios)
    server, server_floor = server_step()
    body = "\n".join([
        f"Threshold slider in Debian's chromium (Playwright): Enter in the threshold box -> new mask picture on "
        f"the page. The studio and two bare Blocks apps (slider -> 64x64 image; one launched as Gradio ships, "
        f"one with `run_history=False` as the studio is) interleaved, {n} steps each per run, {runs} runs, on "
        f"{os.cpu_count()} CPUs (load average at each run's start; the machine may be shared, so compare "
        "ratios, not milliseconds).", "",
        "| run | load | studio median / p90 | bare page | bare page, no run history | studio / bare | "
        "studio / bare without history |", "|---|---|---|---|---|---|---|", *rows, "",
        f"Ratio studio / bare page: median of the runs {float(np.median([r[0] for r in ratios])):.2f}x, worst "
        f"**{worst:.2f}x** (issue 24's target <= 1.3x: {'met in every run' if worst <= 1.3 else 'not met in every run'}).", "",
        "What made the difference (measured with Chrome's profiler and py-spy, `bench/bench_studio.py` history in "
        "git): Gradio 6.31's run history re-parses and re-writes up to 100 stored runs in localStorage (inputs, "
        "outputs and output component configs) several times per event: the studio's larger outputs made that "
        "most of a step's page time (85 vs 62 ms before, 69 vs 63 ms after turning it off in the same "
        "profiled run); the studio launches with `run_history=False` (a stored run loaded back onto the "
        "page would show views the session does not hold). On the server, each `gr.skip()` made Gradio "
        "rebuild the skipped component and its API schema (~40 % of a step's server time): "
        "`studio.console.StudioBlocks` answers a skip without the rebuild. The slider's event lists only the "
        "5 views a step can change (studio.generate.THRESHOLD_VIEWS): each listed output costs the page a "
        "loading-status update even when skipped. What is left is mostly the step's content: on small bare pages "
        "measured side by side (quiet machine), an event answering the studio's step (two pictures, one changed "
        "text, two skipped views) took 1.16x one answering one picture, and the studio answering only its two "
        "pictures was 6 % faster than the studio answering all five views (`/tmp` A/B scripts, not kept).", "",
        f"The server's part of a step, in process (`server_step`: Gradio's `process_api`, no network, lower of "
        f"5 medians of 100 steps): studio {server:.1f} ms, bare app {server_floor:.1f} ms. Gradio runs a sync "
        "handler and then each output's postprocess in a worker thread, one hop each; on this 2-core machine "
        "under load the studio's step was 16-18 ms against the bare app's 4-6 ms, mostly those hops. Now the "
        "slider's handler is a coroutine, and `StudioBlocks` postprocesses plain outputs (texts, pictures up to "
        "`studio.console.LOOP_PIXELS`, the embedded model's 64x64 views) on the loop; a larger picture still "
        "goes to Gradio's threads. On the page, the step's loading status goes to the slider alone "
        "(`show_progress_on`), not to its 5 views, each of whose status the page redraws twice per event: in "
        "an A/B of two studios side by side in chromium (under load) steps were 8-18 % faster."])
    write_section("bench_studio_browser", body, command="python bench/bench_studio.py --browser-only")


if __name__ == "__main__":
    if "--browser-only" in sys.argv:
        main_browser_only()
    else:
        main()
