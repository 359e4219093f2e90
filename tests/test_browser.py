"""The studio in a real browser: Playwright driving Debian's chromium.

Screenshots of each tab are saved under test-artifacts/ (look at them). Needs the
`playwright` package and Debian's chromium (`apt-get install chromium`); .ci/run installs
both. Playwright's own browser download cannot work offline, so we pass chromium's path.

No test relies on another: the store starts with one accepted sample (made by the pipeline),
and every step waits for what it needs to see instead of sleeping a fixed time.
"""
import shutil
import time

import pytest

from conftest import ROOT
from pipeline.dataset import Store
from studio_server import running_studio

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")]


def seed_store(store_dir):
    """One accepted 'ball' sample made by the pipeline, so each tab has something to work on."""
    from pipeline.generate import generate, load_pipeline
    from pipeline.refine import get_refiner, refine_and_choose

    s = generate(load_pipeline(None, device="cpu"), "ball", 5, steps=10)[0]
    choice = refine_and_choose(s.image, s.heat_map, get_refiner("grabcut"), s.attention)
    with Store(store_dir) as store:
        store.add(s.image, ["ball"], instances=[("ball", choice.mask(s.heat_map))], prompt=s.prompt, seed=s.seed,
                  model="embedded", heat_map=s.heat_map, threshold=choice.threshold, status="accepted")


def wait_until(page, condition, what: str, timeout: float = 60):
    """Poll ``condition()`` (e.g. a store count) while the page keeps running; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        page.wait_for_timeout(100)


def count(page, status):
    with Store(page.store_dir) as s:
        return s.count(status=status)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    store = tmp_path_factory.mktemp("browser") / "data"
    seed_store(store)
    ARTIFACTS.mkdir(exist_ok=True)
    with running_studio(store) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1100})
        pg.goto(url)
        pg.wait_for_selector("#generate-btn", timeout=60000)
        pg.store_dir = store
        yield pg
        browser.close()


def wait_text(page, selector, text, timeout=300000):  # generous: CI machines may be loaded
    page.wait_for_function("([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
                           arg=[selector, text], timeout=timeout)


def img_src(selector):
    return f"() => (document.querySelector('{selector} img') || {{}}).src || ''"


def wait_src_change(page, selector, before, timeout=60000):
    page.wait_for_function(f"(b) => ({img_src(selector)})() !== b", arg=before, timeout=timeout)


def test_generate_slider_accept(page):
    accepted = count(page, "accepted")
    page.click("#generate-btn")
    wait_text(page, "#choice-info", "chosen threshold")
    mask_before = page.evaluate(img_src("#mask-view"))
    box = page.locator("#threshold input[type=number]")
    box.fill("0.2")
    box.press("Enter")
    wait_src_change(page, "#mask-view", mask_before)  # the mask at the new threshold is shown
    # a click on the image (mode "add object") re-runs GrabCut with that point
    refined = img_src("#refined-view")
    before = page.evaluate(refined)
    page.get_by_label("add object (+)").check()
    image = page.locator("#image-view img").first
    image.scroll_into_view_if_needed()
    r = image.bounding_box()
    page.mouse.click(r["x"] + r["width"] * 0.1, r["y"] + r["height"] * 0.1)  # a corner, outside the ball
    page.wait_for_function(f"(b) => ({refined})() !== b", arg=before, timeout=30000)
    # the new images are decoded before the screenshot
    page.wait_for_function("() => ['#image-view', '#refined-view'].every(s => { const i = document.querySelector("
                           "s + ' img'); return i && i.complete && i.naturalWidth > 0; })", timeout=30000)
    page.screenshot(path=str(ARTIFACTS / "1-generate-inspect.png"), full_page=True)
    import numpy as np
    from PIL import Image
    shown = np.asarray(Image.open(ARTIFACTS / "1-generate-inspect.png").convert("RGB")).astype(int)
    x, y = int(r["x"] + r["width"] * 0.1), int(r["y"] + r["height"] * 0.1 + page.evaluate("window.scrollY"))
    patch = shown[y - 3:y + 4, x - 3:x + 4]
    assert ((patch[..., 1] > 180) & (patch[..., 0] < 120)).any(), "no green click marker where the user clicked"
    page.click("#accept-btn")
    wait_text(page, "#store-info", "saved as #")
    s = Store(page.store_dir)
    recs = s.query(status="accepted")
    assert len(recs) == accepted + 1
    assert recs[-1].classes == ["ball"] and recs[-1].user_threshold == pytest.approx(0.2)


def test_insert_place_and_accept(page):
    accepted = count(page, "accepted")
    page.get_by_role("tab", name="Insert Objects").click()
    page.get_by_role("button", name="Refresh samples").click()
    page.get_by_label("accepted sample").click()
    page.get_by_role("option").first.click()  # waits for the refreshed list
    page.click("#insert-load")
    page.get_by_text("background: sample #").wait_for(timeout=60000)
    page.get_by_label("object class").fill("star")
    page.get_by_label("object class").press("Enter")
    page.click("#insert-object")
    page.locator(".block", has_text="object and its mask").locator("img").first.wait_for(timeout=120000)
    page.click("#insert-place")
    wait_text(page, "#insert-place-info", "box [")
    before = _box_from_info(page)
    _drag_box(page, before, (12, -12))  # background pixels: right and up
    page.wait_for_function("(b) => !document.querySelector('#insert-place-info').innerText.includes(b)",
                           arg=f"box [{', '.join(map(str, before))}]", timeout=30000)
    page.locator("#insert-box").screenshot(path=str(ARTIFACTS / "2b-insert-box-dragged.png"))
    after = _box_from_info(page)
    assert after != before, "dragging the box did not move it"
    moved = ((after[0] + after[2]) / 2 - (before[0] + before[2]) / 2, (after[1] + after[3]) / 2 - (before[1] + before[3]) / 2)
    assert moved[0] > 4 and moved[1] < -4, (before, after)
    page.click("#insert-preview")
    wait_text(page, "#insert-info", "star")
    page.screenshot(path=str(ARTIFACTS / "2-insert-objects.png"), full_page=True)
    page.click("#insert-accept")
    wait_until(page, lambda: count(page, "accepted") == accepted + 1, "the composite in the store")


def _box_from_info(page):
    import re

    text = page.locator("#insert-place-info").inner_text()
    return tuple(int(v) for v in re.search(r"box \[(\d+), (\d+), (\d+), (\d+)\]", text).groups())


def _drag_box(page, box, delta):
    """Drag the box editor's box by ``delta`` background pixels (the editor shows the 64 px
    background at x5, fitted into its canvas)."""
    canvas = page.locator("#insert-box canvas").first
    canvas.scroll_into_view_if_needed()  # mouse events outside the viewport are dropped
    canvas.wait_for(state="visible")
    r = canvas.bounding_box()
    side = 64 * 5
    s = min(r["width"] / side, r["height"] / side)
    ox, oy = r["x"] + (r["width"] - side * s) / 2, r["y"] + (r["height"] - side * s) / 2
    cx, cy = (box[0] + box[2]) / 2 * 5 * s + ox, (box[1] + box[3]) / 2 * 5 * s + oy
    page.mouse.move(cx, cy)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(cx + delta[0] * 5 * s * k / 10, cy + delta[1] * 5 * s * k / 10)
    page.mouse.up()


def test_curate_keyboard_and_export(page):
    rejected = count(page, "rejected")
    page.get_by_role("tab", name="Curate & Export").click()
    page.click("#curate-refresh")
    page.wait_for_selector("#curate-gallery img", timeout=30000)
    page.locator("#curate-gallery img").first.click()
    page.wait_for_function("() => document.body.innerText.includes(' · seed ')", timeout=30000)  # its details
    page.keyboard.press("r")  # reject the selected sample from the keyboard
    wait_until(page, lambda: count(page, "rejected") == rejected + 1, "the rejection in the store")
    page.click("#export-btn")
    wait_text(page, "#export-info", "images")
    page.screenshot(path=str(ARTIFACTS / "3-curate-export.png"), full_page=True)
