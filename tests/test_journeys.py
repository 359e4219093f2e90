"""Journeys through the studio in chromium, asserting after every step that the screen equals
the session: each visible view's picture (pixel for pixel, as the page loaded it) and text is
what ``render(session)`` gives for the session the server holds for this page (read through
the test-only reader that DIFFUMASK_STUDIO_DEBUG=1 adds, studio.console.add_debug_reader).

The scripted journeys are the rows of issue #24's table; one more is a seeded, bounded random
sequence of actions on the Generate tab. Screenshots of each tab go to test-artifacts/."""
import base64
import hashlib
import io
import json
import os
import random
import re
import time

import numpy as np
import pytest
from PIL import Image

from pipeline.dataset import Store
from test_browser import ARTIFACTS, CHROMIUM, browser, error_badges, seed_store, server_log_tail, wait_text  # noqa: F401 (fixture)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")]

# view name -> (selector, kind) per tab; kind: picture, text, slider, radio, number
VIEWS = {
    "generate": {"image": ("#image-view", "picture"), "heat": ("#heat-view", "picture"),
                 "mask": ("#mask-view", "picture"), "thr": ("#threshold-view", "picture"),
                 "curve": ("#curve-view", "picture"), "refined": ("#refined-view", "picture"),
                 "choice_info": ("#choice-info", "text"), "mask_label": ("#mask-label", "text"),
                 "store_info": ("#store-info", "text"), "gen_info": ("#gen-info", "text"),
                 "threshold": ("#threshold", "slider"), "source": ("#mask-source", "radio"),
                 "seed": ("#seed", "number")},
    "insert": {"place": ("#insert-place-view", "picture"), "object": ("#insert-object-view", "picture"),
               "composite": ("#insert-composite", "picture"), "masks": ("#insert-masks", "picture"),
               "bg_info": ("#insert-bg-info", "text"), "place_info": ("#insert-place-info", "text"),
               "comp_info": ("#insert-info", "text"), "accept_info": ("#insert-accept-info", "text"),
               "scale": ("#insert-scale", "slider")},
    "curate": {"review": ("#curate-view", "picture"), "count": ("#curate-count", "text"),
               "detail": ("#curate-detail", "text"), "scope": ("#export-scope", "text"),
               "export_info": ("#export-info", "text"), "message": ("#curate-message", "text"),
               "threshold": ("#curate-threshold", "slider")},
}


def held(page, tab: str):
    """What render(session) gives for the session the server holds for this page's ``tab``."""
    box = f"#debug-{tab}-out textarea"
    before = page.evaluate("(s) => document.querySelector(s).value", box)
    page.evaluate(f"() => document.getElementById('debug-{tab}').click()")
    # each reading is numbered, so a new one always differs from the last
    page.wait_for_function("([s, b]) => document.querySelector(s).value !== b", arg=[box, before], timeout=30000)
    return json.loads(page.evaluate("(s) => document.querySelector(s).value", box))["views"]


def _picture(page, selector):
    """(sha256 of the pixels, shape) of the picture a view shows, as the page loaded it; None: none shown."""
    data = page.evaluate("""async (s) => {
        const img = document.querySelector(s + ' img');
        if (!img || !img.src || img.offsetParent === null) return null;
        const r = await fetch(img.src);
        const b = new Uint8Array(await r.arrayBuffer());
        let t = ''; for (const x of b) t += String.fromCharCode(x);
        return btoa(t);
    }""", selector)
    if data is None:
        return None
    a = np.ascontiguousarray(np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")))
    return hashlib.sha256(a.tobytes()).hexdigest(), list(a.shape)


def _words(text: str) -> str:
    """Markdown source or rendered text, compared as words (no emphasis marks, list numbers or line breaks)."""
    text = re.sub(r"(?m)^\s*\d+\.\s+", "", text or "")
    return " ".join(text.replace("*", "").replace("`", "").split())


def _value(v):
    return v.get("value") if isinstance(v, dict) else v


def assert_screen_is_session(page, tab: str, step: str = ""):
    """Every view of ``tab`` shows what render(session) gives for the server's session."""
    page.wait_for_function("() => !document.querySelector('.progress-text, .eta-bar')", timeout=300000)
    page.wait_for_timeout(250)  # pictures arrive just after their event completes
    want = held(page, tab)
    if want is None:
        return
    problems = []
    for name, (sel, kind) in VIEWS[tab].items():
        w = want[name]
        if kind == "picture":
            for _ in range(40):  # the browser loads a new picture a moment after its URL arrives
                got = _picture(page, sel)
                expect = None if w is None else (w["sha256"], w["picture"])
                if got == expect:
                    break
                page.wait_for_timeout(100)
            else:
                problems.append(f"{name}: page shows {got and got[1]}, session {expect and expect[1]}")
        elif kind == "text":
            got = page.evaluate("(s) => (document.querySelector(s) || {}).innerText || ''", sel)
            if _words(got) != _words(_value(w) or ""):
                problems.append(f"{name}: page {got!r} != session {_value(w)!r}")
        elif kind == "slider":
            got = float(page.evaluate("(s) => document.querySelector(s + ' input[type=number]').value", sel))
            if abs(got - float(_value(w))) > 1e-6:
                problems.append(f"{name}: slider {got} != session {_value(w)}")
            if isinstance(w, dict) and "interactive" in w:
                disabled = page.evaluate("(s) => document.querySelector(s + ' input[type=range]').disabled", sel)
                if disabled == bool(w["interactive"]):
                    problems.append(f"{name}: slider disabled={disabled}, session interactive={w['interactive']}")
        elif kind == "radio":
            got = page.evaluate("(s) => { const c = document.querySelector(s + ' input:checked');"
                                " return c ? c.value : null; }", sel)
            if got != _value(w):
                problems.append(f"{name}: radio {got!r} != session {_value(w)!r}")
        elif kind == "number":
            got = page.evaluate("(s) => document.querySelector(s + ' input').value", sel)
            if w is not None and _value(w) is not None and float(got) != float(_value(w)):
                problems.append(f"{name}: {got} != session {_value(w)}")
    assert not problems, f"after {step}: " + "; ".join(problems)
    assert not error_badges(page), error_badges(page)


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):  # noqa: F811
    from studio_server import running_studio

    store = tmp_path_factory.mktemp("journeys") / "data"
    seed_store(store)
    os.environ["DIFFUMASK_STUDIO_DEBUG"] = "1"  # the server process inherits it
    try:
        with running_studio(store) as url:
            pg = browser.new_page(viewport={"width": 1400, "height": 1100})
            pg.goto(url)
            pg.wait_for_selector("#generate-btn", timeout=60000)
            pg.store_dir, pg.server_log = store, url.log
            yield pg
            pg.close()
    finally:
        os.environ.pop("DIFFUMASK_STUDIO_DEBUG", None)


def key(page, k):
    page.locator("body").click(position={"x": 5, "y": 5})  # focus off any input so keys reach the page
    page.keyboard.press(k)


def set_slider(page, sel, value):
    box = page.locator(f"{sel} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def click_image(page, fx, fy):
    """A click on the generate tab's picture at fractions (fx, fy) of its size, once the picture
    is loaded, as a person clicks what they see: Gradio sends no position for a click on a
    picture still loading (the studio refuses it, test_studio), and every click redraws it."""
    page.wait_for_function("() => { const i = document.querySelector('#image-view img');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=60000)
    image = page.locator("#image-view img").first
    image.scroll_into_view_if_needed()
    r = image.bounding_box()
    page.mouse.click(r["x"] + r["width"] * fx, r["y"] + r["height"] * fy)


REFUSED_CLICK = "user error: That click came while the picture was still loading"


def refused_clicks(page) -> int:
    """Clicks the server refused for lack of a position (its log; each was a toast to the user)."""
    return page.server_log.read_text().count(REFUSED_CLICK)


def watch_picture_clicks(page) -> list:
    """The picture clicks the page sends to the server from now on (each a select event's
    ``index``, read from its queue/join request): what left the page, beside what the server
    counted, for whoever reads a failure."""
    sent = []

    def on_request(request):
        if request.method == "POST" and "/queue/join" in request.url:
            body = json.loads(request.post_data or "{}")
            index = (body.get("event_data") or {}).get("index")
            if isinstance(index, list):
                sent.append((index, [v for v in body.get("data", []) if isinstance(v, (str, int, float))]))

    page.on("request", on_request)
    # and where each click landed on the page (what was under the pointer, the picture's box)
    page.evaluate("""() => { window.dmClicks = [];
      document.addEventListener('click', (e) => { const i = document.querySelector('#image-view img');
        const r = i ? i.getBoundingClientRect() : {};
        window.dmClicks.push({at: [e.clientX, e.clientY], target: e.target.tagName + '.' + e.target.className,
          img: [r.left, r.top, r.width, r.height].map(Math.round), nw: i && i.naturalWidth}); }, true); }""")
    return sent


def landed_clicks(page) -> list:
    """The clicks :func:`watch_picture_clicks` saw on the page."""
    return page.evaluate("() => window.dmClicks || []")


def test_generate_journey_screen_is_session(page):
    """Generate, threshold, accept, change after accept (unsaved marker), o, clicks then the
    touch-up editor, cat/dog refused before generating."""
    page.get_by_role("tab", name="Generate & Inspect").click()
    key(page, "g")
    wait_text(page, "#choice-info", "chose threshold")
    assert_screen_is_session(page, "generate", "generate")
    set_slider(page, "#threshold", 0.3)
    wait_text(page, "#mask-label", "threshold 0.30")
    assert_screen_is_session(page, "generate", "threshold 0.3")
    key(page, "a")
    wait_text(page, "#store-info", "saved as #")
    assert_screen_is_session(page, "generate", "accept")
    set_slider(page, "#threshold", 0.4)
    wait_text(page, "#store-info", "unsaved changes")  # the old "saved as" line does not stay
    assert_screen_is_session(page, "generate", "threshold after accept")
    key(page, "o")  # the current-mask panel shows the mask alone, not the bare image
    page.wait_for_timeout(500)
    assert_screen_is_session(page, "generate", "o")
    key(page, "o")
    page.get_by_label("add object (+)").check()
    # four quick clicks: each one counts (one landing while the picture reloads is held by the
    # page until it has loaded: studio.ui.KEEP_CLICKS_JS), or, sent without a position anyway,
    # is refused with a toast saying so and made again, as a person would
    points, refused_before, made = [(0.5, 0.5), (0.45, 0.55), (0.1, 0.1), (0.9, 0.9)], refused_clicks(page), 0
    sent = watch_picture_clicks(page)
    for fx, fy in points:
        click_image(page, fx, fy)
        made += 1
    settled = ("(n) => (n === 0 || document.querySelector('#mask-label').innerText.includes(`with ${n} click`))"
               " && !document.querySelector('.progress-text, .eta-bar')")
    deadline, steady = time.monotonic() + 180, 0
    while steady < 3:  # the page shows what the server counted, three polls in a row
        assert time.monotonic() < deadline, (
            f"{made} clicks made, {len(sent)} sent by the page ({sent}), {refused_clicks(page) - refused_before} "
            f"refused; they landed on {landed_clicks(page)}; the page shows {page.locator('#mask-label').inner_text()!r}, the server holds "
            f"{_value(held(page, 'generate')['mask_label'])!r}; the server log ends:\n{server_log_tail(page)}")
        counted = made - (refused_clicks(page) - refused_before)
        steady = steady + 1 if page.evaluate(settled, counted) else 0
        if steady == 3 and counted < len(points):
            assert made < 3 * len(points), f"{made} clicks made, {counted} counted"
            click_image(page, *points[counted])
            made, steady = made + 1, 0
        page.wait_for_timeout(200)
    wait_text(page, "#mask-label", "with 4 clicks", timeout=120000)
    assert_screen_is_session(page, "generate", "4 clicks")
    page.get_by_label("do nothing").check()
    # the touch-up editor opens on the current (refined) mask
    page.locator("#touch-up").get_by_text("Touch up the mask").click()
    page.wait_for_selector("#mask-editor canvas", timeout=30000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "j1-generate-touch-up.png"), full_page=True)
    page.locator("#touch-up").get_by_text("Touch up the mask").click()
    log_before = page.server_log.read_text()
    page.get_by_label("class", exact=True).fill("cat/dog")
    page.get_by_label("class", exact=True).press("Enter")
    page.click("#generate-btn")
    page.wait_for_selector("text=bad class name", timeout=30000)
    assert "denoising" not in page.server_log.read_text()[len(log_before):]  # refused before generating
    assert_screen_is_session(page, "generate", "cat/dog")
    page.get_by_label("class", exact=True).fill("ball")
    page.get_by_label("class", exact=True).press("Enter")


def test_curate_undo_acts_on_the_last_change(page):
    page.get_by_role("tab", name="Curate & Export").click()
    wait_text(page, "#curate-count", "samples")
    key(page, "n")
    wait_text(page, "#curate-detail", "**" if False else "#")
    assert_screen_is_session(page, "curate", "n")
    first = held(page, "curate")["detail"]
    sid = int(re.search(r"#(\d+)", _value(first)).group(1))
    with Store(page.store_dir) as s:
        before = s.get(sid).status
    key(page, "r")  # reject #sid; the highlight moves on
    page.wait_for_timeout(800)
    assert_screen_is_session(page, "curate", "r")
    key(page, "u")  # undo acts on #sid, wherever the highlight went
    wait_text(page, "#curate-message", f"#{sid} back to {before}")
    with Store(page.store_dir) as s:
        assert s.get(sid).status == before
    assert_screen_is_session(page, "curate", "u")
    # a per-sample threshold is previewed before Save
    set_slider(page, "#curate-threshold", 0.8)
    wait_text(page, "#curate-detail", "previewing threshold 0.80")
    assert_screen_is_session(page, "curate", "preview threshold")
    page.screenshot(path=str(ARTIFACTS / "j3-curate.png"), full_page=True)


def test_insert_journey_screen_is_session(page, tmp_path):
    page.get_by_role("tab", name="Insert Objects").click()
    # a text file named .png: a toast, nothing else
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    page.locator("#insert-upload input[type=file]").set_input_files(str(bad))
    page.wait_for_timeout(1000)
    key(page, "l")
    page.wait_for_selector("text=cannot read image", timeout=30000)
    assert "Traceback" not in page.server_log.read_text()
    page.locator("#insert-upload button[aria-label='Clear']").first.click() \
        if page.locator("#insert-upload button[aria-label='Clear']").count() else None
    page.locator("#insert-bg-choice input").click()
    page.get_by_role("option").first.click()
    key(page, "l")
    wait_text(page, "#insert-bg-info", "background:")
    assert_screen_is_session(page, "insert", "load")
    # a class the embedded model cannot draw is said before generating
    page.get_by_label("object class").fill("dog")
    page.get_by_label("object class").press("Enter")
    key(page, "m")
    page.wait_for_selector("text=cannot draw 'dog'", timeout=30000)
    page.get_by_label("object class").fill("star")
    page.get_by_label("object class").press("Enter")
    key(page, "m")
    page.wait_for_selector("#insert-object-view img", timeout=300000)
    key(page, "p")
    wait_text(page, "#insert-place-info", "box [")
    assert_screen_is_session(page, "insert", "place")
    set_slider(page, "#insert-scale", 0.4)  # typed + Enter moves the box
    wait_text(page, "#insert-place-info", "scale")
    assert_screen_is_session(page, "insert", "scale typed")
    key(page, "v")
    wait_text(page, "#insert-info", "instances (back to front)")
    key(page, "a")
    wait_text(page, "#insert-accept-info", "saved as #")
    assert_screen_is_session(page, "insert", "accept")
    page.screenshot(path=str(ARTIFACTS / "j2-insert.png"), full_page=True)
    # another background: the previous box, composite and saved line go
    page.locator("#insert-bg-choice input").click()
    page.get_by_role("option").nth(1).click()
    key(page, "l")
    page.wait_for_function("() => !document.querySelector('#insert-accept-info').innerText.includes('saved')")
    assert_screen_is_session(page, "insert", "load another")
    assert page.evaluate("() => !document.querySelector('#insert-composite img')")


def test_random_actions_keep_the_screen_equal_to_the_session(page):
    """A seeded, bounded random sequence of Generate-tab actions; the screen is compared with
    the session after each."""
    rng = random.Random(58)  # a sequence that clicks, then switches the clicks' refiner and back
    page.get_by_role("tab", name="Generate & Inspect").click()
    if not page.evaluate("() => !!document.querySelector('#mask-view img')"):
        key(page, "g")
        wait_text(page, "#choice-info", "chose threshold")
    actions = ["threshold", "source1", "source2", "click", "undo", "redo", "overlay", "accept", "reject",
               "click_refiner"]
    done = []
    for i in range(12):
        a = rng.choice(actions)
        done.append(a)
        if a == "threshold":
            set_slider(page, "#threshold", round(rng.uniform(0.1, 0.9), 2))
        elif a in ("source1", "source2"):
            key(page, a[-1])
        elif a == "click":
            page.get_by_label("add object (+)" if rng.random() < 0.6 else "mark background (-)").check()
            click_image(page, rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9))
            page.get_by_label("do nothing").check()
        elif a == "click_refiner":  # the clicks so far, refined again by another refiner
            page.locator("#click-refiner input").click()
            page.get_by_role("option", name=rng.choice(["clicks", "grabcut"]), exact=True).click()
        elif a == "undo":
            key(page, "z")
        elif a == "redo":
            key(page, "y")
        elif a == "overlay":
            key(page, "o")
        elif a == "accept":
            key(page, "a")
        elif a == "reject":
            key(page, "r")
        page.wait_for_timeout(600)
        assert_screen_is_session(page, "generate", " -> ".join(done))
    page.screenshot(path=str(ARTIFACTS / "j4-generate-random.png"), full_page=True)
