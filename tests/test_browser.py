"""The studio in a real browser: Playwright driving Debian's chromium.

Screenshots of each tab are saved under test-artifacts/ (look at them). Needs the
`playwright` package and Debian's chromium (`apt-get install chromium`); .ci/run installs
both. Playwright's own browser download cannot work offline, so we pass chromium's path.

No test relies on another: the store starts with one accepted sample (made by the pipeline),
and every step waits for what it needs to see instead of sleeping a fixed time.
"""
import shutil
import time
from contextlib import contextmanager

import pytest

from conftest import ROOT
from pipeline.dataset import NewSample, Store
from studio_server import running_studio

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")]


def seed_store(store_dir):
    """Two accepted samples made by the pipeline, so each tab has something to work on."""
    from pipeline.generate import generate, load_pipeline
    from pipeline.refine import get_refiner, refine_and_choose

    for s in generate(load_pipeline(None, device="cpu"), ["ball", "kite"], [5, 6], steps=10):
        choice = refine_and_choose(s.image, s.heat_map, get_refiner("grabcut"), s.attention)
        with Store(store_dir) as store:
            store.add(NewSample(s.image, [s.class_name], instances=[(s.class_name, choice.mask(s.heat_map))], prompt=s.prompt,
                                seed=s.seed, model="embedded", heat_map=s.heat_map, threshold=choice.threshold,
                                status="accepted"))


def server_log_tail(page, lines: int = 25) -> str:
    """The last lines the page's studio server printed (for whoever reads a CI failure)."""
    log = getattr(page, "server_log", None)
    return "\n".join(log.read_text().splitlines()[-lines:]) if log is not None and log.exists() else ""


def wait_until(page, condition, what: str, timeout: float = 60):
    """Poll ``condition()`` (e.g. a store count) while the page keeps running; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                 f"the server log ends:\n{server_log_tail(page)}")
        page.wait_for_timeout(100)


def count(page, status):
    with Store(page.store_dir) as s:
        return s.count(status=status)


@pytest.fixture(scope="module")
def browser():
    """One chromium for the module (Playwright's sync API runs one instance per thread)."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@contextmanager
def studio_page(browser, store):
    """A page of ``browser`` on a studio launched over ``store``."""
    with running_studio(store) as url:
        pg = browser.new_page(viewport={"width": 1400, "height": 1100})
        try:
            pg.goto(url)
            pg.wait_for_selector("#generate-btn", timeout=60000)
            pg.store_dir, pg.server_log = store, url.log
            yield pg
        finally:
            pg.close()


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    store = tmp_path_factory.mktemp("browser") / "data"
    seed_store(store)
    with studio_page(browser, store) as pg:
        yield pg


def wait_text(page, selector, text, timeout=300000):  # generous: CI machines may be loaded
    page.wait_for_function("([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
                           arg=[selector, text], timeout=timeout)


def wait_picture_changed(page, selector, before, timeout=60000):
    """Wait until the view's picture has a new source *and* its pixels have loaded: a screenshot
    taken between the two shows the old picture (CI once read the overlay's contour after "o" so)."""
    page.wait_for_function(f"""(b) => {{ const i = document.querySelector('{selector} img');
        return i && i.src && i.src !== b && i.complete && i.naturalWidth > 0; }}""", arg=before, timeout=timeout)


def img_src(selector):
    return f"() => (document.querySelector('{selector} img') || {{}}).src || ''"


def error_badges(page) -> list[str]:
    """The visible 'Error' status badges Gradio puts on an output whose event failed, each named
    by its block's id or label (empty: none). Toasts are not badges: an error toast from an
    earlier step may still be showing (test_the_badge_detector checks both ways)."""
    return page.evaluate("""() => [...document.querySelectorAll('[data-testid=status-tracker] .error')]
      .filter(e => e.offsetParent).map(e => {
        const block = e.closest('.block') || e.parentElement;
        const label = block && block.querySelector('label, [data-testid=block-label]');
        return (block && block.id ? '#' + block.id + ' ' : '') + (label ? label.innerText : '') + ': ' + e.innerText.slice(0, 80);
    })""")


def _fetch_picture(page, selector):
    """The bytes of the view's picture as the page loaded them, decoded: (H, W, 3) uint8."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    data = page.evaluate("""async (s) => {
        const r = await fetch(document.querySelector(s + ' img').src);
        const b = new Uint8Array(await r.arrayBuffer());
        let t = ''; for (const x of b) t += String.fromCharCode(x);
        return btoa(t);
    }""", selector)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def test_the_badge_detector(browser):
    """error_badges() sees the badge of a failed event, and not an error toast."""
    import gradio as gr

    from studio_server import free_port

    def fail():
        raise RuntimeError("broken")

    def mistake():
        raise gr.Error("a toast only")

    with gr.Blocks() as demo:
        out = gr.Image(elem_id="out")
        toast_btn, fail_btn = gr.Button("toast", elem_id="toast"), gr.Button("fail", elem_id="fail")
        toast_btn.click(mistake, None, None)
        fail_btn.click(fail, None, out)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, show_error=True)
    pg = browser.new_page()
    try:
        pg.goto(f"http://127.0.0.1:{port}/")
        pg.click("#toast")
        pg.wait_for_selector("text=a toast only", timeout=30000)
        assert error_badges(pg) == []
        pg.click("#fail")
        wait_until(pg, lambda: error_badges(pg), "the failed event's badge", timeout=30)
        assert any(b.startswith("#out") for b in error_badges(pg)), error_badges(pg)
    finally:
        pg.close()
        demo.close()


def test_generate_click_undo_redo_accept(page):
    with Store(page.store_dir) as st:
        before_ids = {r.id for r in st.query()}
    page.get_by_role("tab", name="Generate & Inspect").click()
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("g")  # the generate key
    wait_text(page, "#choice-info", "chose threshold")
    box = page.locator("#threshold input[type=number]")
    box.fill("0.2")
    box.press("Enter")
    wait_text(page, "#mask-label", "threshold 0.20")
    # a click on the image (mode "add object") re-runs the click refiner ('clicks refine with',
    # `clicks` by default) with that point, and the refined mask becomes the current mask
    page.get_by_label("add object (+)").check()
    image = page.locator("#image-view img").first
    image.scroll_into_view_if_needed()
    r = image.bounding_box()
    before = page.evaluate(img_src("#image-view"))
    page.mouse.click(r["x"] + r["width"] * 0.1, r["y"] + r["height"] * 0.1)  # a corner, outside the ball
    wait_text(page, "#mask-label", "refined by clicks with 1 click")
    # the label and the picture arrive together, but the browser loads the new picture after
    wait_picture_changed(page, "#image-view", before)
    page.screenshot(path=str(ARTIFACTS / "1-generate-inspect.png"), full_page=True)
    import numpy as np
    from PIL import Image
    shown = np.asarray(Image.open(ARTIFACTS / "1-generate-inspect.png").convert("RGB")).astype(int)
    x, y = int(r["x"] + r["width"] * 0.1), int(r["y"] + r["height"] * 0.1 + page.evaluate("window.scrollY"))
    patch = shown[y - 3:y + 4, x - 3:x + 4]
    assert ((patch[..., 1] > 180) & (patch[..., 0] < 120)).any(), "no green click marker where the user clicked"
    page.locator("body").click(position={"x": 5, "y": 5})  # focus off any input so keys reach the page
    page.keyboard.press("z")  # undo the click: back to the heat map at 0.20
    wait_text(page, "#mask-label", "heat map at threshold 0.20")
    page.keyboard.press("y")  # redo
    wait_text(page, "#mask-label", "with 1 click")
    page.keyboard.press("a")
    wait_text(page, "#store-info", "saved as #")
    # accepting again changes nothing: one sample, one row. Its event has run once its toast
    # ("sample #N saved as accepted", shown after the store call) appears anew.
    page.evaluate("""() => {
        const count = () => document.body.innerText.split('saved as accepted').length - 1;
        let last = count();
        window.__newSavedToasts = 0;
        window.__toastWatch = new MutationObserver(() => {
            const now = count();
            if (now > last) window.__newSavedToasts++;
            last = now;
        });
        window.__toastWatch.observe(document.body, {childList: true, subtree: true, characterData: true});
    }""")
    page.keyboard.press("a")
    page.wait_for_function("() => window.__newSavedToasts > 0", timeout=30000)
    page.evaluate("() => window.__toastWatch.disconnect()")
    s = Store(page.store_dir)
    recs = [r for r in s.query() if r.id not in before_ids]
    assert len(recs) == 1 and recs[0].status == "accepted" and recs[0].classes == ["ball"]
    assert recs[0].instances[0].source == "refined"
    assert np.array_equal(s.masks(recs[0])[0][1], s.mask(recs[0].refined_mask))  # the refined mask was saved
    # the picture on the page, as the browser received it, is the saved mask drawn over the saved
    # image, pixel for pixel (a lossy view format would change the mask's edge)
    from pipeline import viz
    saved_image, saved_mask = s.image(recs[0].image), s.masks(recs[0])[0][1]
    shown = _fetch_picture(page, "#mask-view")
    assert np.array_equal(shown, viz.overlay_mask(saved_image, saved_mask))  # sent at its own size


def test_an_error_leaves_the_views_as_they_were(page):
    page.get_by_role("tab", name="Generate & Inspect").click()
    if not page.evaluate(img_src("#mask-view")):
        page.click("#generate-btn")
        wait_text(page, "#choice-info", "chose threshold")
    before = page.evaluate(img_src("#mask-view"))
    assert before
    label, picture = page.inner_text("#mask-label"), page.evaluate(img_src("#image-view"))
    # clicks refined by SAM without its weights: refused with the reason, the session as it was
    page.locator("#click-refiner input").click()
    page.get_by_role("option", name="sam").click()
    refusals = "() => document.body.innerText.split('the SAM refiner needs weights').length - 1"
    page.wait_for_function(f"({refusals})() >= 1", timeout=30000)  # refused as it is chosen
    page.wait_for_timeout(1500)
    assert page.evaluate(refusals) == 1  # once: a dropdown's `input` event ran its handler twice
    page.get_by_label("add object (+)").check()
    image = page.locator("#image-view img").first
    image.scroll_into_view_if_needed()
    r = image.bounding_box()
    page.mouse.click(r["x"] + r["width"] * 0.5, r["y"] + r["height"] * 0.5)
    page.wait_for_function(f"({refusals})() >= 2", timeout=30000)  # and again at the click
    page.screenshot(path=str(ARTIFACTS / "1b-error-toast.png"), full_page=True)
    page.wait_for_timeout(1000)  # the click's views (from the session as it was) have had time to arrive
    assert page.evaluate(img_src("#image-view")) == picture and page.evaluate(img_src("#mask-view")) == before
    assert page.inner_text("#mask-label") == label  # no click was added (it names their count)
    assert not error_badges(page), error_badges(page)
    page.locator("#click-refiner input").click()
    page.get_by_role("option", name="clicks").click()
    page.get_by_label("do nothing").check()


def test_insert_place_and_accept(page):
    page.get_by_role("tab", name="Insert Objects").click()  # opening the tab lists the accepted samples
    page.get_by_label("accepted sample").click()
    page.get_by_role("option").first.click()  # waits for the refreshed list
    page.click("#insert-load")
    wait_text(page, "#insert-bg-info", "background: sample")
    page.get_by_label("object class").fill("star")
    page.get_by_label("object class").press("Enter")
    page.evaluate("document.activeElement.blur()")  # keys never fire while typing
    assert "**m** make object" not in page.locator("#insert-keys").inner_text()  # rendered help
    assert "m make object" in page.locator("#insert-keys").inner_text()
    page.keyboard.press("m")  # Make object
    page.wait_for_selector("#insert-object-view img", timeout=120000)
    page.keyboard.press("p")  # Propose placement
    wait_text(page, "#insert-place-info", "box [")
    before = _box_from_info(page)
    _drag_box(page, before, (12, -12))  # background pixels: right and up
    page.wait_for_function("(b) => !document.querySelector('#insert-place-info').innerText.includes(b)",
                           arg="box [%d, %d, %d, %d]" % before, timeout=30000)
    page.locator("#insert-box").screenshot(path=str(ARTIFACTS / "2b-insert-box-dragged.png"))
    after = _box_from_info(page)
    moved = ((after[0] + after[2]) / 2 - (before[0] + before[2]) / 2, (after[1] + after[3]) / 2 - (before[1] + before[3]) / 2)
    assert moved[0] > 4 and moved[1] < -4, (before, after)
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("v")  # Preview composite
    wait_text(page, "#insert-info", "star")
    page.screenshot(path=str(ARTIFACTS / "2-insert-objects.png"), full_page=True)
    accepted = count(page, "accepted")
    page.keyboard.press("a")  # Accept composite (the Generate tab's Accept is hidden here)
    wait_text(page, "#insert-accept-info", "saved as #")
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


def _selected_caption(page):
    return page.evaluate("""() => { const b = document.querySelector('#curate-gallery button.selected, #curate-gallery .thumbnail-item.selected');
        return b ? (b.getAttribute('aria-label') || b.innerText || b.title || 'selected') : ''; }""")


def test_curate_keyboard_review_and_export(page):
    page.get_by_role("tab", name="Curate & Export").click()
    page.wait_for_selector("#curate-gallery img", timeout=30000)
    page.locator("#curate-gallery img").first.click()
    wait_text(page, "#curate-detail", "#1")
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("n")  # next: the large view and the highlight follow
    wait_text(page, "#curate-detail", "#2")
    page.keyboard.press("p")
    wait_text(page, "#curate-detail", "#1")
    page.keyboard.press("r")  # reject the current sample from the keyboard
    wait_text(page, "#curate-gallery", "rejected")
    s = Store(page.store_dir)
    assert s.get(1).status == "rejected"
    page.keyboard.press("p")
    wait_text(page, "#curate-detail", "rejected")
    page.keyboard.press("u")  # undo the last status change (the history also says "accepted": wait for the undo)
    wait_text(page, "#curate-message", "#1 back to accepted")
    assert s.get(1).status == "accepted"
    page.keyboard.press("r")
    wait_text(page, "#curate-gallery", "rejected")
    page.screenshot(path=str(ARTIFACTS / "3-curate-review.png"), full_page=True)
    # the export's default is accepted samples only: the rejected one is not in it
    wait_text(page, "#export-scope", "accepted samples")
    assert not page.locator("#export-file").is_visible()  # no empty download box before an export
    page.click("#export-btn")
    wait_text(page, "#export-info", "images")
    n_accepted = s.count(status="accepted")
    assert page.locator("#export-info").inner_text().startswith(f"{n_accepted} images")
    wait_text(page, "#export-file", ".zip")  # the archive to download
    page.screenshot(path=str(ARTIFACTS / "3-curate-export.png"), full_page=True)


def ensure_generated(page):
    """The Generate tab with a sample on it (generated here if no earlier test made one)."""
    page.get_by_role("tab", name="Generate & Inspect").click()
    if not page.evaluate(img_src("#mask-view")):
        page.click("#generate-btn")
        wait_text(page, "#choice-info", "chose threshold")


def focus_page(page):
    """Focus off any input, so keys reach the page's shortcuts."""
    page.locator("body").click(position={"x": 5, "y": 5})


def editor_size(page) -> int:
    """The touch-up editor's own brush size: its 'Brush Size' picker's slider, read by opening it."""
    page.click("#mask-editor button[aria-label='Brush Size']")
    rng = page.locator("#mask-editor .size_picker input[type=range]")
    rng.wait_for(state="visible")
    value = int(rng.input_value())
    page.click("#mask-editor button[aria-label='Brush']")  # closes the picker again
    rng.wait_for(state="hidden")
    return value


def white_run(shot, x: int, y0: int, y1: int) -> int:
    """The widest run of pure-white pixels (a white brush stroke) across column x, rows y0..y1."""
    import numpy as np

    rows = shot[y0:y1]
    white = (rows[..., :3] >= 250).all(-1)
    best = 0
    for y in range(white.shape[0]):
        line = np.concatenate([[0], white[y, x - 40:x + 40].astype(int), [0]])
        edges = np.flatnonzero(np.diff(line))
        best = max(best, int((edges[1::2] - edges[::2]).max()) if len(edges) else 0)
    return best


def green_pixels(page, selector) -> int:
    """How many pixels of the view look like the mask overlay's bright green contour."""
    import io

    import numpy as np
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB")).astype(int)
    return int(((shot[..., 1] > 200) & (shot[..., 0] < 120) & (shot[..., 2] < 160)).sum())


def test_editor_keys_brush_size_colour_and_overlay(page):
    import io

    import numpy as np
    from PIL import Image

    ensure_generated(page)
    focus_page(page)
    # typing in a box never fires a key: 'o' and ']' go into the tags box
    page.locator("#accept-btn").scroll_into_view_if_needed()
    tags = page.get_by_label("tags").first
    tags.fill("")
    tags.type("o]b")
    assert tags.input_value() == "o]b"
    assert page.locator("#overlay-toggle input").is_checked()
    assert not page.locator("#mask-editor").is_visible()  # ']' did not open the touch-up editor
    tags.fill("")
    focus_page(page)
    # [ and ] open the touch-up editor and change its brush (the editor's own size slider moves)
    page.keyboard.press("]")
    page.locator("#mask-editor button[aria-label='Brush']").wait_for(state="visible", timeout=30000)
    wait_attr = "(v) => document.getElementById('mask-editor').dataset.brushSize === v"
    page.wait_for_function("() => document.getElementById('mask-editor').dataset.brushSize", timeout=10000)
    start = editor_size(page)
    focus_page(page)
    for _ in range(3):
        page.keyboard.press("[")
    page.wait_for_function(wait_attr, arg=str(max(1, start - 12)), timeout=10000)
    small = editor_size(page)
    assert small == max(1, start - 12), (start, small)
    focus_page(page)
    for _ in range(5):
        page.keyboard.press("]")
    page.wait_for_function(wait_attr, arg=str(small + 20), timeout=10000)
    big = editor_size(page)
    assert big == small + 20
    # ... and the strokes really are that wide: one stroke at each size, measured on the canvas
    canvas = page.locator("#mask-editor canvas").first
    canvas.scroll_into_view_if_needed()

    def stroke(fx):
        r = canvas.bounding_box()
        x = r["x"] + r["width"] * fx
        page.mouse.move(x, r["y"] + r["height"] * 0.3)
        page.mouse.down()
        page.mouse.move(x, r["y"] + r["height"] * 0.7, steps=8)
        page.mouse.up()

    stroke(0.45)
    focus_page(page)
    for _ in range(5):
        page.keyboard.press("[")
    page.wait_for_function(wait_attr, arg=str(small), timeout=10000)
    assert editor_size(page) == small
    stroke(0.58)
    page.wait_for_timeout(300)  # the canvas paints on the next frames
    shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"))
    h, w = shot.shape[:2]
    w_big, w_small = (white_run(shot, int(w * fx), int(h * 0.4), int(h * 0.6)) for fx in (0.45, 0.58))
    page.locator("#mask-editor").screenshot(path=str(ARTIFACTS / "5-editor-brush-sizes.png"))
    assert w_big > 2 * w_small > 0, (w_big, w_small)
    # e picks the black brush (erases the mask), b the white one (adds): the editor's colour button follows
    focus_page(page)
    colour = "() => document.querySelector(\"#mask-editor button[aria-label='Color']\").style.color"
    page.keyboard.press("e")
    page.wait_for_function(f"() => ({colour})() === 'rgb(0, 0, 0)'", timeout=10000)
    page.keyboard.press("b")
    page.wait_for_function(f"() => ({colour})() === 'rgb(255, 255, 255)'", timeout=10000)
    page.click("#discard-btn")  # leave the session as it was (the strokes were never applied)
    # o toggles the mask overlay in the current-mask view (and back)
    focus_page(page)
    with_overlay = green_pixels(page, "#mask-view")
    assert with_overlay > 50
    before = page.evaluate(img_src("#mask-view"))
    page.keyboard.press("o")
    wait_picture_changed(page, "#mask-view", before)
    assert not page.locator("#overlay-toggle input").is_checked()
    assert green_pixels(page, "#mask-view") < with_overlay / 10
    page.screenshot(path=str(ARTIFACTS / "5-overlay-off.png"))
    before = page.evaluate(img_src("#mask-view"))
    page.keyboard.press("o")
    wait_picture_changed(page, "#mask-view", before)
    assert green_pixels(page, "#mask-view") > with_overlay / 2


def _generated_for_clicks(page, class_name: str) -> dict:
    """A new sample of ``class_name`` on the Generate tab, clicks set to add object points;
    the picture's box on the page (x, y, width, height)."""
    page.get_by_role("tab", name="Generate & Inspect").click()
    page.get_by_label("class", exact=True).fill(class_name)
    page.get_by_label("class", exact=True).press("Enter")
    before = page.evaluate(img_src("#image-view"))
    # the next seed, not Generate: the same class at the same seed is the same picture at the same
    # (content-named) address, and no change could be waited for (an earlier test may have made it)
    page.click("#next-seed-btn")
    wait_picture_changed(page, "#image-view", before)
    wait_text(page, "#choice-info", "chose threshold")
    page.get_by_label("add object (+)").check()
    image = page.locator("#image-view img").first
    image.scroll_into_view_if_needed()
    return image.bounding_box()


def _accepted_sample(page):
    """Accept (key a) and the record it saved, with its first instance mask (H, W bool)."""
    with Store(page.store_dir) as st:
        ids = {rec.id for rec in st.query()}
    focus_page(page)
    page.keyboard.press("a")
    wait_until(page, lambda: count(page, None) > len(ids), "the accepted sample")
    with Store(page.store_dir) as st:
        rec = next(rec for rec in st.query() if rec.id not in ids)
        return rec, st.masks(rec)[0][1]


def test_quick_clicks_are_never_lost(page):
    """Four clicks in a row, without waiting: the session ends with four points, and the saved
    (refined) mask holds every one of them (the clicks refiner honours every click exactly)."""
    r = _generated_for_clicks(page, "kite")
    spots = [(0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7)]
    for fx, fy in spots:  # no wait in between
        page.mouse.click(r["x"] + r["width"] * fx, r["y"] + r["height"] * fy)
    wait_text(page, "#mask-label", "with 4 clicks", timeout=120000)
    rec, mask = _accepted_sample(page)
    assert rec.classes == ["kite"] and rec.instances[0].source == "refined"
    clicks = rec.meta["clicks"]
    assert len(clicks) == 4 and len({(x, y) for x, y, _ in clicks}) == 4
    h, w = mask.shape
    for (x, y, label), (fx, fy) in zip(clicks, spots):
        assert label == 1 and abs(x - fx * w) <= 2 and abs(y - fy * h) <= 2  # in click order
        assert mask[y, x], f"the object click at {(x, y)} is not in the saved mask"
    page.get_by_label("do nothing").check()


def test_a_click_on_a_picture_still_loading_is_kept(page):
    """Every click redraws the picture (its click dots); while the new one loads it has no
    pixels, and Gradio's image drops a click made then without a word. The page holds such a
    click and makes it again once the picture is there (studio.ui.KEEP_CLICKS_JS): here
    the picture's download is held back until two more clicks were made on it."""
    r = _generated_for_clicks(page, "ball")
    spots = [(0.3, 0.3), (0.7, 0.3), (0.3, 0.7)]
    held, holding = [], [True]
    page.route("**/gradio_api/file=**", lambda route: held.append(route) if holding else route.continue_())
    try:
        page.mouse.click(r["x"] + r["width"] * spots[0][0], r["y"] + r["height"] * spots[0][1])
        # the first click's views arrive: the picture waits for its pixels (held here)
        page.wait_for_function("() => { const i = document.querySelector('#image-view img');"
                               " return i && i.naturalWidth === 0; }", timeout=120000)
        for fx, fy in spots[1:]:
            page.mouse.click(r["x"] + r["width"] * fx, r["y"] + r["height"] * fy)
        page.wait_for_timeout(500)
        assert "with 1 click" in page.locator("#mask-label").inner_text()  # the two wait on the page
        # the user scrolls while they wait: each is still made where it was made on the picture
        scrolled = page.evaluate("() => { const y = window.scrollY; window.scrollBy(0, 60); return window.scrollY - y; }")
        assert scrolled > 20, "the page cannot scroll here: the test would not check a held click's position"
    finally:
        holding.clear()
        for route in held:
            route.continue_()
        page.unroute("**/gradio_api/file=**")
    wait_text(page, "#mask-label", "with 3 clicks", timeout=120000)
    rec, mask = _accepted_sample(page)
    clicks, (h, w) = rec.meta["clicks"], mask.shape
    assert len(clicks) == 3
    for (x, y, label), (fx, fy) in zip(clicks, spots):  # each where it was made, in the order made
        assert label == 1 and abs(x - fx * w) <= 2 and abs(y - fy * h) <= 2
    page.get_by_label("do nothing").check()


TAB_LOOPS = {  # the widgets of each tab's main loop, which must all be in a 1400x900 window
    "Generate & Inspect": ["#generate-btn", "#image-view", "#mask-view", "#mask-label", "#threshold",
                           "#mask-source", "#accept-btn", "#reject-btn", "#generate-keys"],
    "Insert Objects": ["#insert-load", "#insert-object", "#insert-object-view", "#insert-place-view", "#insert-box",
                       "#insert-composite", "#insert-place", "#insert-preview", "#insert-accept"],
    "Curate & Export": ["#curate-gallery", "#curate-view", "#curate-detail", "#curate-prev", "#curate-accept",
                        "#curate-reject", "#curate-next", "#curate-undo", "#curate-keys"],
}


def test_each_tab_fits_1400x900(page):
    ensure_generated(page)
    if page.locator("#mask-editor").is_visible():  # the touch-up editor is opened on demand (keys b/e/[/])
        page.get_by_text("Touch up the mask").click()
        page.locator("#mask-editor").wait_for(state="hidden")
    page.set_viewport_size({"width": 1400, "height": 900})
    try:
        for n, (tab, selectors) in enumerate(TAB_LOOPS.items()):
            page.get_by_role("tab", name=tab).click()
            page.locator(selectors[0]).wait_for(state="visible")
            if tab == "Curate & Export":
                page.wait_for_selector("#curate-gallery img", timeout=30000)
                page.locator("#curate-gallery img").first.click()
                wait_text(page, "#curate-detail", "#")
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_timeout(300)  # layout settles after the tab switch
            page.screenshot(path=str(ARTIFACTS / f"4-fits-1400x900-{n + 1}.png"))
            for sel in selectors:
                box = page.locator(sel).first.bounding_box()
                assert box is not None, f"{tab}: {sel} is not shown"
                assert box["x"] >= 0 and box["x"] + box["width"] <= 1400 and box["y"] >= 0 \
                    and box["y"] + box["height"] <= 900, f"{tab}: {sel} at {box} is outside the 1400x900 window"
            # below the loop only secondary views (diagnostics, export, published weights)
            height = page.evaluate("document.scrollingElement.scrollHeight")
            page.screenshot(path=str(ARTIFACTS / f"4-fits-1400x900-{n + 1}-full.png"), full_page=True)
            assert height < 1.5 * 900, f"{tab}: the page is {height} px tall"
    finally:
        page.set_viewport_size({"width": 1400, "height": 1100})


def test_console_has_no_tracebacks_or_client_prints(page):
    """What the server printed for every test of this module, plus a fresh page load and a user
    error: one line per user error, no traceback, none of Gradio's environment=client prints."""
    from urllib.parse import urlparse

    page.reload()
    page.wait_for_selector("#generate-btn", timeout=60000)
    page.get_by_role("tab", name="Insert Objects").click()
    page.click("#insert-place")  # a fresh page: nothing to place yet
    page.wait_for_selector("text=Load a background and make an object first", timeout=30000)
    log = page.store_dir.parent / f"studio-{urlparse(page.url).port}.log"
    wait_until(page, lambda: "Load a background and make an object first" in log.read_text(), "the log line")
    text = log.read_text()
    assert "environment=client" not in text
    assert "Traceback" not in text, text[-3000:]
    assert text.count("user error: Load a background and make an object first") == 1


def _start_long_generation(page):
    """100 steps at 96x64 (above the embedded model's 64x64: a warning toast), until the
    progress bar shows steps of 100."""
    import re

    page.get_by_role("tab", name="Generate & Inspect").click()
    page.get_by_text("prompt, model and refiner").click()  # open the settings accordion
    wait_text(page, "#size-info", "native size 64x64; sizes up to 128x128", timeout=30000)
    page.locator("#height input").fill("96")
    page.locator("#height input").press("Tab")
    totals = []
    for attempt in range(3):
        _steps_slider_to_100(page)
        page.click("#generate-btn")
        if attempt == 0:
            page.wait_for_selector("text=96x64 is above this model's native size 64x64", timeout=120000)
        # the progress bar counts this run's steps ("3/100 steps"): the run to stop is the long one
        try:
            page.wait_for_function("() => /\\b\\d+\\/\\d+ steps/.test(document.body.innerText)", timeout=120000)
        except Exception as e:  # what the page and the server showed instead
            raise AssertionError(f"no step count on the page after Generate; the image panel shows "
                                 f"{page.locator('#image-view').inner_text()!r}; the server log ends:\n"
                                 f"{server_log_tail(page)}") from e
        totals.append(re.search(r"\b\d+/(\d+) steps", page.evaluate("() => document.body.innerText")).group(1))
        if totals[-1] == "100":
            return
        # CI twice saw no 100-step run start while the slider showed 100 (never reproduced here;
        # the slider mounting as its accordion opens can put a value back): a run of another
        # count is stopped and the slider set again; no count at all fails saying what showed
        page.click("#stop-btn")
        page.wait_for_selector("text=denoising", state="hidden", timeout=120000)
    raise AssertionError(f"runs started with {totals} steps while the steps slider showed 100")


def _steps_slider_to_100(page):
    """The steps slider to its maximum, 100, with the keyboard on the slider itself (End): a
    value typed into its number box right after the accordion opens can be put back by the
    slider as it mounts (reproduced in chromium: the first of three typed values went back to 25)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(10):  # the slider may still be mounting as its accordion opens: again until it holds 100
        page.locator("#steps input[type=range]").focus()
        page.keyboard.press("End")
        try:
            page.wait_for_function("() => document.querySelector('#steps input[type=number]').value === '100'",
                                   timeout=3000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError("the steps slider never went to 100")


def test_stop_button_and_closing_the_tab_stop_the_generation(page):
    """Stop and a closed tab both end a long generation on the server:
    its log says after how many of the 100 steps (tests/test_cancel.py measures the CPU)."""
    # the long runs' stops: a stop of some earlier, shorter run (Stop flags every run of this
    # session queued before it) is not the one this test is about
    stops = lambda: page.server_log.read_text().count("of 100 steps")
    before = stops()
    ensure_generated(page)  # a sample on the views, which a stopped run must leave as they are
    page.wait_for_selector("text=denoising", state="hidden", timeout=120000)  # no earlier run still going
    shown = {v: page.evaluate(img_src(v)) for v in ("#image-view", "#heat-view", "#mask-view")}
    choice = page.locator("#choice-info").inner_text()
    _start_long_generation(page)
    page.screenshot(path=str(ARTIFACTS / "1c-generate-stop.png"), full_page=True)
    page.click("#stop-btn")
    wait_until(page, lambda: stops() == before + 1, "the server to log the stop of the 100-step run")
    # the stopped run ends as a normal event: the views stay as they were, no "Error" badge
    page.wait_for_selector("text=denoising", state="hidden", timeout=30000)
    watch_until = time.monotonic() + 3  # a badge would come with the event's end or its follow-ups
    while time.monotonic() < watch_until:
        assert not error_badges(page)
        page.wait_for_timeout(200)
    page.screenshot(path=str(ARTIFACTS / "1d-generate-after-stop.png"), full_page=True)
    assert {v: page.evaluate(img_src(v)) for v in shown} == shown
    assert page.locator("#choice-info").inner_text() == choice
    other = page.context.browser.new_page(viewport={"width": 1400, "height": 1100})  # a second tab, closed mid-run
    other.goto(page.url)
    other.wait_for_selector("#generate-btn", timeout=60000)
    _start_long_generation(other)
    other.close()
    wait_until(page, lambda: stops() == before + 2, "the server to log the closed tab's stop")
    # back to the defaults for whoever runs next
    page.locator("#steps input[type=number]").fill("25")
    page.locator("#steps input[type=number]").press("Enter")
    page.locator("#height input").fill("0")
    page.get_by_text("prompt, model and refiner").click()


def test_insert_a_bank_object_into_a_real_photo(browser, tmp_path):
    """End to end on real photos: a studio over a store of imported COCO photos (the project's
    own importer), a shipped CC BY photo as the background, the thesaurus' suggestion that the
    bank supplies, a real COCO instance cut out of the user's photos, placement, preview,
    accept; in the store, the composite's masks are exact after occlusion."""
    import re

    import numpy as np
    from PIL import Image

    from conftest import shared
    from pipeline.bank import BankObject, ObjectBank
    from pipeline.compose import paste
    from pipeline.export import import_coco
    from studio.insert import examples_store_dir

    store_dir = tmp_path / "photos"
    with Store(store_dir) as st:
        imported = import_coco(st, shared("coco-mini", "instances.json"), shared("coco-mini", "images"), limit=20)
        assert "dog" in ObjectBank(st).classes()
    with Store(examples_store_dir()) as ex:  # the skateboarder: a real photo with a crowd region
        bg_rec = next(r for r in ex.query() if "skateboard" in r.classes)
        background, bg_masks = ex.load_image(bg_rec), ex.masks(bg_rec)
        bg_crowd = [i.iscrowd for i in bg_rec.instances]
    with studio_page(browser, store_dir) as page:
        page.get_by_role("tab", name="Insert Objects").click()
        page.get_by_label("accepted sample").click()
        page.get_by_role("option", name=re.compile(rf"^example: #{bg_rec.id} ")).click()
        page.click("#insert-load")
        wait_text(page, "#insert-bg-info", "background: example photo")
        # the suggestion the bank can supply comes first and is preselected
        assert page.get_by_label("object class").input_value() == "dog"
        page.get_by_label("cut from a photo (object bank)").check()
        page.click("#insert-object")
        page.wait_for_selector("#insert-object-view img", timeout=120000)
        page.click("#insert-place")
        wait_text(page, "#insert-place-info", "box [")
        page.click("#insert-preview")
        wait_text(page, "#insert-info", "dog")
        assert not error_badges(page), error_badges(page)
        page.screenshot(path=str(ARTIFACTS / "4-insert-bank-object.png"), full_page=True)
        page.locator("#insert-composite img").screenshot(path=str(ARTIFACTS / "4b-insert-bank-composite.png"))
        page.locator("#insert-masks img").screenshot(path=str(ARTIFACTS / "4c-insert-bank-masks.png"))
        page.click("#insert-accept")
        wait_text(page, "#insert-accept-info", "saved as #")
        sid = int(re.search(r"saved as #(\d+)", page.locator("#insert-accept-info").inner_text()).group(1))
    with Store(store_dir) as st:
        rec = st.get(sid)
        record = rec.inserted[0]
        # where the object came from: a real COCO dog of the user's imported photos
        m = re.fullmatch(r"your dataset: sample #(\d+) instance (\d+)", rec.meta["object"])
        src_id, index = int(m.group(1)), int(m.group(2))
        assert src_id in imported and st.get(src_id).model == "real (COCO)"
        assert st.get(src_id).instances[index].class_name == "dog" and record["class"] == "dog"
        crop, crop_mask = ObjectBank(st).cut_out(BankObject(src_id, index, "dog", "imported", (0, 0, 0, 0)))
        # the pasted object's alpha region, and the background's instances less exactly what it covers
        again = paste(background, bg_masks, crop, crop_mask, record["box"], "dog")
        new = again.instances[-1][1]
        masks = st.masks(rec)
        assert [n for n, _ in masks] == [n for n, _ in again.instances] and masks[-1][0] == "dog"
        assert np.array_equal(masks[-1][1], new)
        kept = [k for k, (_, mk) in enumerate(bg_masks) if (mk & ~new).any()]
        assert len(kept) == len(masks) - 1 and record["dropped"] == again.record["dropped"]
        for (name, got), k in zip(masks[:-1], kept):
            assert name == bg_masks[k][0] and np.array_equal(got, bg_masks[k][1] & ~new)
        assert [i.iscrowd for i in rec.instances] == [bg_crowd[k] for k in kept] + [False]
        assert [i.source for i in rec.instances][-1] == "inserted"
        image = st.load_image(rec)
    # as a user would judge it: the dog is there, at a sensible size, and nothing else changed
    area = new.mean()
    assert 0.003 < area < 0.25, area
    assert np.abs(image[new].astype(int) - background[new].astype(int)).mean() > 20  # visible
    assert np.array_equal(image[~new], background[~new])  # harmonization stays inside the object
    shown = np.asarray(Image.open(ARTIFACTS / "4b-insert-bank-composite.png").convert("RGB"))
    assert shown.shape[0] > 200 and shown.std() > 20  # the composite is on screen, not a blank box


def test_a_fresh_studio_shows_examples_in_curate(browser, tmp_path):
    """On an empty store the Curate tab opens on the examples, said to be apart from the
    user's dataset; the user's own gallery stays empty until they add them."""
    from pipeline.examples import GENERATED_SAMPLES

    store_dir = tmp_path / "empty"
    with studio_page(browser, store_dir) as page:
        page.get_by_role("tab", name="Curate & Export").click()
        n = 4 + len(GENERATED_SAMPLES)
        page.wait_for_function("(n) => document.querySelectorAll('#curate-examples img').length >= n", arg=n,
                               timeout=30000)
        wait_text(page, "#curate-examples-note", "store of their own")
        wait_text(page, "#curate-count", "0 samples")
        wait_text(page, "#export-scope", "include 0 accepted samples")
        page.screenshot(path=str(ARTIFACTS / "5-curate-examples-fresh.png"), full_page=True)
        assert page.locator("#curate-gallery img").count() == 0
        page.click("#curate-examples-copy")
        wait_text(page, "#curate-message", "examples are in your dataset")
        wait_text(page, "#curate-count", f"{n} samples")
        wait_text(page, "#export-scope", f"include {n} accepted samples")  # what Export will write follows
        page.screenshot(path=str(ARTIFACTS / "5b-curate-examples-added.png"), full_page=True)
        # the examples are in: their box closes, so the review loop's large view is in a
        # 1400x900 window without scrolling (open, the box pushed it below the fold)
        page.wait_for_function("() => !document.querySelector('#curate-examples').offsetParent", timeout=30000)
        page.set_viewport_size({"width": 1400, "height": 900})
        page.evaluate("window.scrollTo(0, 0)")
        page.locator("#curate-gallery img").first.click()
        wait_text(page, "#curate-detail", "#")
        page.wait_for_selector("#curate-view img", timeout=30000)
        page.screenshot(path=str(ARTIFACTS / "5c-curate-examples-review-1400x900.png"))
        for sel in ("#curate-view", "#curate-detail", "#curate-accept", "#curate-next"):
            box = page.locator(sel).first.bounding_box()
            assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 900, (sel, box)
    with Store(store_dir) as s:
        assert s.count(tags=["example"]) == s.count() == n
