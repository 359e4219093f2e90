"""Issue 23 item 7: a public studio belongs to each visitor.

No hub request because of a visitor's input (whatever HF_HUB_OFFLINE says), one dataset per
browser session removed after an idle time (never while in use), and export downloads served
only to the browser that made them.
"""
from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from pipeline import access, presets
from pipeline.dataset import NewSample

REVISION = "0123456789abcdef0123456789abcdef01234567"


# -- no hub request from a visitor's input ---------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection or resolve a name is recorded and refused. Recorded,
    not only refused: huggingface_hub falls back to the cache on a connection error, so a
    request that failed would otherwise go unnoticed."""
    attempts = []

    def connect(self, address, *a, **k):
        attempts.append(("connect", address))
        raise OSError("network use in a test that forbids it")

    def getaddrinfo(host, *a, **k):
        attempts.append(("getaddrinfo", host))
        raise socket.gaierror("network use in a test that forbids it")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: connect(None, address))
    return attempts


@pytest.fixture
def public_online(monkeypatch, tmp_path):
    """Public mode, HF_HUB_OFFLINE unset (as on a ZeroGPU Space), an empty hub cache."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    access.set_public(True)
    yield cache
    access.set_public(False)


def _snapshot(cache: Path, repo: str) -> Path:
    """The layout huggingface_hub leaves after a download (as tests/test_presets.py builds it)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    snap = root / "snapshots" / REVISION
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def _assert_generic(text: str, cache: Path):
    assert "public studio does not serve" in text
    for leak in ("http", "huggingface.co", "HF_ENDPOINT", str(cache), "hf download"):
        assert leak not in text, (leak, text)


@pytest.mark.slow  # imports torch (pipeline.devices)
def test_public_mode_refuses_uncached_presets_without_a_network_call(public_online, no_network):
    """Every preset name and hub id is refused with the one generic message before any network
    call, and the preset loader itself does not download in public mode."""
    values = [n for n in presets.names() if n != "embedded"] + ["stabilityai/sd-turbo", "facebook/sam-vit-base"]
    for v in values:
        for what in ("model", "SAM checkpoint", "fopa weights", "rainnet weights"):
            with pytest.raises(access.AccessError) as e:
                access.check_user_path(v, what)
            _assert_generic(str(e.value), public_online)
    for name in presets.names():
        if name != "embedded":
            with pytest.raises(presets.PresetUnavailable):
                presets.resolve(name)
    assert no_network == []
    # the message offers what this server has: nothing but the embedded model here
    with pytest.raises(access.AccessError, match=r"use a preset name it has \(embedded\)"):
        access.check_user_path("sd15")


@pytest.mark.slow
def test_public_studio_fields_refuse_uncached_presets_without_a_network_call(public_online, no_network):
    """Every preset name and hub id, typed in each field a visitor gives weights in (model,
    SAM, FOPA, RainNet), gets the one generic toast before any network call."""
    import gradio as gr

    from pipeline.harmonize import HARMONIZERS
    from pipeline.placement import SCORERS
    from studio import insert
    from studio.state import generate_one, make_refiner, size_info

    values = [n for n in presets.names() if n != "embedded"] + ["stabilityai/sd-turbo", "facebook/sam-vit-base"]
    for v in values:
        for what in ("model", "SAM checkpoint", "fopa weights", "rainnet weights"):
            with pytest.raises(access.AccessError) as e:
                access.check_user_path(v, what)
            _assert_generic(str(e.value), public_online)
        with pytest.raises(gr.Error) as e:  # the model field
            generate_one(v, "ball", 0, steps=1)
        _assert_generic(str(e.value), public_online)
        with pytest.raises(access.AccessError) as e:  # the SAM weights field
            make_refiner("sam", v)
        _assert_generic(str(e.value), public_online)
        insert._cached_plugin.cache_clear()
        with pytest.raises(access.AccessError) as e:  # FOPA's weights
            insert._plugin(SCORERS, "placement scorer", "fopa", v)
        _assert_generic(str(e.value), public_online)
        with pytest.raises(access.AccessError) as e:  # RainNet's weights
            insert._plugin(HARMONIZERS, "harmonization", "rainnet", v)
        _assert_generic(str(e.value), public_online)
        size_info(v)  # the size line reads configs only, never the hub
    for name in presets.names():
        if name != "embedded":  # the loader itself never downloads in public mode either
            with pytest.raises(presets.PresetUnavailable):
                presets.resolve(name)
    assert no_network == []
    # the message offers what this server has: nothing but the embedded model here
    with pytest.raises(access.AccessError, match=r"use a preset name it has \(embedded\)"):
        access.check_user_path("sd15")


@pytest.mark.slow
def test_public_mode_serves_a_preset_that_is_in_the_cache(public_online, no_network):
    """A preset whose files are all in the hub cache loads and generates with the network
    refused; one file short, it is refused like any other."""
    import studio.state as state
    from pipeline.fopa import ObPlaNet
    from pipeline.placement import SCORERS
    from pipeline.testing import TOKENIZER_DIR, tiny_pipeline
    from studio import insert

    snap = _snapshot(public_online, presets.get("sd15").repo)
    tiny_pipeline().save_pretrained(snap)
    shutil.rmtree(snap / "tokenizer")
    shutil.copytree(TOKENIZER_DIR, snap / "tokenizer")  # the hub repository's CLIP vocab/merges files
    import torch

    torch.save(ObPlaNet().state_dict(), _snapshot(public_online, presets.get("fopa").repo) / "FOPA.pth")
    assert access.served_presets() == ["embedded", "sd15", "fopa"]
    assert access.check_user_path("sd15") == "sd15"
    state._load.cache_clear()
    state.set_model_options("cpu", None)
    try:
        sample = state.generate_one("sd15", "dog", 3, steps=1)
        assert sample.image.ndim == 3 and sample.heat_map.shape == sample.image.shape[:2]
        insert._cached_plugin.cache_clear()
        scorer = insert._plugin(SCORERS, "placement scorer", "fopa", "fopa")
        assert type(scorer).__name__ == "FopaScorer"
        (snap / "unet" / "diffusion_pytorch_model.safetensors").unlink()
        with pytest.raises(access.AccessError):
            access.check_user_path("sd15")
    finally:
        state._load.cache_clear()
        insert._cached_plugin.cache_clear()
    assert no_network == []


# -- one dataset per visitor -----------------------------------------------------------------------
def test_each_session_gets_a_store_of_its_own(tmp_path):
    from pipeline.visitors import DB_NAME, VisitorError, VisitorStores

    stores = VisitorStores(tmp_path / "v", idle_seconds=60)
    a, b = stores.store_dir("session-a"), stores.store_dir("session-b")
    assert a != b and a.parent == b.parent == tmp_path / "v" and a.is_dir() and b.is_dir()
    assert stores.store_dir("session-a") == a  # the same session: the same folder
    # the folder's name is random, never made from what the client sent
    hostile = stores.store_dir("../../etc")
    assert hostile.parent == tmp_path / "v" and "etc" not in hostile.name and len(hostile.name) == 32
    assert "session-a" not in (tmp_path / "v" / DB_NAME).read_bytes().decode("latin-1")  # kept as a digest
    for bad in ("", None):
        with pytest.raises(VisitorError, match="browser session"):
            stores.store_dir(bad)
    for bad in (0, -1, float("nan")):
        with pytest.raises(VisitorError, match="idle time"):
            VisitorStores(tmp_path / "w", idle_seconds=bad)


def test_sweep_removes_idle_stores_and_never_one_in_use(tmp_path):
    from pipeline.dataset import Store
    from pipeline.visitors import VisitorStores

    stores = VisitorStores(tmp_path / "v", idle_seconds=60, lease_seconds=3600)
    t0 = 1_000_000.0
    idle, busy, fresh = (stores.store_dir(k, now=t0) for k in ("idle", "busy", "fresh"))
    stores.touch("fresh", now=t0 + 50)
    Store(idle).close()
    assert stores.sweep(now=t0 + 30) == []  # nobody idle for a minute yet
    with stores.lease("busy", now=t0) as folder:
        assert folder == busy
        removed = stores.sweep(now=t0 + 100)  # "busy" is idle by its clock, but leased
        assert removed == [idle] and not idle.exists() and busy.is_dir() and fresh.is_dir()
        assert stores.sweep(now=t0 + 100 + 3000) == [fresh]  # the lease still holds
    # the lease ended (and touched the store): removed only once idle again
    assert busy.is_dir()
    import time as _time

    assert stores.sweep(now=_time.time() + 61) == [busy]
    assert stores.count() == 0
    # a removed store is never handed out again: the session gets a new, empty one
    again = stores.store_dir("idle")
    assert again != idle and again.is_dir() and list(again.iterdir()) == []
    # a lease whose holder died protects for lease_seconds, then no longer
    with stores.lease("crashed", now=t0):
        pass
    stores_of_dead = VisitorStores(tmp_path / "v", idle_seconds=60, lease_seconds=3600)
    lease = stores_of_dead.lease("dead", now=t0)
    dead = lease.__enter__()  # never left: as if the process were killed
    assert dead not in stores.sweep(now=t0 + 1000) and dead.exists()
    assert dead in stores.sweep(now=t0 + 3601)
    # a folder named like a store with no row (a sweep stopped after its commit) is removed too
    leftover = tmp_path / "v" / ("ab" * 16)
    leftover.mkdir()
    (tmp_path / "v" / "not-a-store").mkdir()
    assert leftover in stores.sweep(now=t0) and (tmp_path / "v" / "not-a-store").is_dir()


@pytest.mark.slow
def test_sweeper_and_visitors_side_by_side_lose_nothing(tmp_path):
    """Visitors write samples while a sweeper with a 0.2 s idle time sweeps as fast as it can,
    for a bounded time: every write lands in a store that still exists, every sample written
    in one lease is there at its end, and idle stores do get removed meanwhile."""
    import numpy as np
    from PIL import Image

    from pipeline.dataset import Store
    from pipeline.visitors import VisitorStores

    photo = sorted((Path(__file__).resolve().parents[1] / "assets" / "examples" / "images").iterdir())[0]
    image = np.asarray(Image.open(photo).convert("RGB").resize((64, 48)))
    mask = np.zeros(image.shape[:2], bool)
    mask[10:30, 20:40] = True
    stores = VisitorStores(tmp_path / "v", idle_seconds=0.2)
    failures, written, removed, stop = [], [0], [], threading.Event()

    def visitor(k: int):
        n = 0
        while not stop.is_set():
            key = f"visitor-{k}-{n // 3}"  # a new visitor every third visit: the old ones go idle
            try:
                with stores.lease(key) as folder:
                    with Store(folder) as store:
                        before = store.count()
                        store.add(NewSample(image, ["dog"], instances=[("dog", mask)]))
                    time.sleep(0.3)  # longer than the idle time, inside the lease
                    with Store(folder) as store:
                        if store.count() != before + 1:
                            failures.append((key, "sample lost"))
                written[0] += 1
            except Exception as e:  # noqa: BLE001  (any failure is what this test counts)
                failures.append((key, repr(e)))
            n += 1

    def sweeper():
        while not stop.is_set():
            removed.extend(stores.sweep())

    threads = [threading.Thread(target=visitor, args=(k,)) for k in range(3)] + [threading.Thread(target=sweeper)]
    for t in threads:
        t.start()
    time.sleep(6)
    stop.set()
    for t in threads:
        t.join(30)
    print(f"visitors/sweeper race: {written[0]} leased visits with a write, {len(removed)} stores swept, "
          f"{len(failures)} failures")
    assert failures == [] and written[0] >= 15, (failures, written)
    assert removed  # idle visitors' stores were removed meanwhile


# -- a real public server: two visitors --------------------------------------------------------------
GEN_ARGS = dict(template="a photograph of a {}", steps=10, guidance=5, model="embedded", refiner_name="grabcut",
                sam_ckpt="", resolution="all", t_lo=0, t_hi=999)


def _visitor(url, **kw):
    """A gradio_client visitor whose answers are folded as the page shows them (studio_server.Screen)."""
    from studio_server import Screen

    return Screen(url, download_files=False, **kw)


def _gallery_len(screen) -> int:
    return len(screen.predict(api_name="/refresh")[0] or [])


def _file_value(value, key: str):
    return value[key] if isinstance(value, dict) else getattr(value, key)


@pytest.mark.slow
def test_public_studio_gives_each_visitor_their_own_dataset_and_downloads(tmp_path):
    import tempfile
    import zipfile

    import httpx

    from pipeline.dataset import Store
    from studio.downloads import COOKIE, owner_of
    from studio_server import C_EXPORT_INFO, C_FILE, G_STORE, I_BG_INFO, running_studio, said

    store = tmp_path / "data"
    with running_studio(store, args=("--public", "--visitor-idle", "30")) as url:
        a, b = _visitor(url), _visitor(url)
        assert a.client.cookies.get(COOKIE) and b.client.cookies.get(COOKIE)
        assert a.client.cookies[COOKIE] != b.client.cookies[COOKIE]
        a.predict(class_name="ball", seed=5, api_name="/generate", **GEN_ARGS)
        assert "saved as #1 (accepted)" in a.predict(tags="mine", api_name="/accept")[G_STORE]
        assert _gallery_len(a) == 1
        # B sees nothing of A's: not in its gallery, not as an Insert background, not in an export
        assert _gallery_len(b) == 0
        out = b.predict(choice="dataset:1", upload=None, caption="", model="embedded", api_name="/insert_load")
        said(url, "no sample #1")
        assert not out[I_BG_INFO]  # nothing loaded
        b.predict(fmt="coco", status="any", val=0, api_name="/export")
        said(url, "no samples match")
        b.predict(api_name="/curate_reject")  # nothing of A's to accept or reject
        said(url, "Select a sample in the gallery first")
        # A's export: A downloads it; B with its URL, a browser with no cookie, and a path that
        # climbs out of B's own exports folder get nothing
        out = a.predict(fmt="coco", status="accepted", val=0, api_name="/export")
        zfile, info = out[C_FILE], out[C_EXPORT_INFO]
        assert "1 images" in info
        zip_url, zip_path = _file_value(zfile, "url"), _file_value(zfile, "path")
        zip_url = zip_url if zip_url.startswith("http") else url.rstrip("/") + zip_url
        mine = httpx.get(zip_url, cookies=a.client.cookies, timeout=30)
        assert mine.status_code == 200
        (tmp_path / "a.zip").write_bytes(mine.content)
        with zipfile.ZipFile(tmp_path / "a.zip") as z:
            assert any(n.endswith("instances_train.json") for n in z.namelist())
        assert httpx.get(zip_url, cookies=b.client.cookies, timeout=30).status_code == 404
        assert httpx.get(zip_url, timeout=30).status_code == 404
        root = Path(zip_path).parents[2]
        climb = f"{url}gradio_api/file={root}/{owner_of(b.client.cookies[COOKIE])}/../{Path(zip_path).relative_to(root)}"
        assert httpx.get(climb, cookies=b.client.cookies, timeout=30).status_code == 404
        # a copied session hash does not open A's dataset: the visitor is their browser's cookie
        b.client.session_hash = a.client.session_hash
        assert _gallery_len(b) == 0
        # and A's dataset survives a page reload (a new session of the same browser)
        a2 = _visitor(url, httpx_kwargs={"cookies": dict(a.client.cookies)})
        assert a2.client.session_hash != a.client.session_hash
        assert _gallery_len(a2) == 1
        # a zip another studio process left in the machine's shared Gradio temp folder is not served
        shared = Path(tempfile.gettempdir()) / "gradio" / f"other-process-{tmp_path.name}"
        shared.mkdir(parents=True, exist_ok=True)
        try:
            (shared / "dataset-coco.zip").write_bytes(mine.content)
            other = httpx.get(f"{url}gradio_api/file={shared / 'dataset-coco.zip'}", cookies=a.client.cookies,
                              timeout=30)
            assert other.status_code in (403, 404)
        finally:
            shutil.rmtree(shared, ignore_errors=True)
    # on disk: one store per visitor under <store>/visitors, A's with its sample, B's empty
    folders = sorted((p for p in (store / "visitors").iterdir() if p.is_dir()), key=lambda p: p.name)
    assert len(folders) == 2  # A's browser and B's
    counts = []
    for f in folders:
        with Store(f) as s:
            counts.append(s.count())
    assert sorted(counts) == [0, 1]
    assert not (store / "store.sqlite").exists()  # no shared dataset in public mode


@pytest.mark.slow
def test_operator_studio_keeps_one_shared_dataset(tmp_path):
    from studio_server import C_EXPORT_INFO, C_FILE, G_STORE, file_path, running_studio

    with running_studio(tmp_path / "data") as url:
        a, b = _visitor(url), _visitor(url)
        a.predict(class_name="ball", seed=5, api_name="/generate", **GEN_ARGS)
        assert "saved as #1" in a.predict(tags="", api_name="/accept")[G_STORE]
        assert _gallery_len(b) == 1
        out = b.predict(fmt="coco", status="accepted", val=0, api_name="/export")
        assert "1 images" in out[C_EXPORT_INFO]
        assert Path(file_path(out[C_FILE])).is_file()  # another session downloads it, as before
    assert not (tmp_path / "data" / "visitors").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_public_studio_in_two_browsers(tmp_path):
    """Two browsers (two cookie jars) on a public studio: the first adds the examples to its
    dataset, exports and downloads the zip by its link; the second sees an empty dataset and gets
    404 for the first one's zip URL."""
    import zipfile

    from playwright.sync_api import sync_playwright

    from studio_server import running_studio

    with running_studio(tmp_path / "data", args=("--public",)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        try:
            pages = []
            for _ in range(2):
                page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
                page.goto(url)
                page.wait_for_selector("#generate-btn", timeout=120000)
                page.get_by_role("tab", name="Curate & Export").click()
                pages.append(page)
            a, b = pages
            a.click("#curate-examples-copy")
            a.wait_for_function("() => (document.querySelector('#curate-message')?.innerText || '')"
                                ".includes('examples are in your dataset')", timeout=120000)
            a.click("#export-btn")
            a.wait_for_function("() => document.querySelector('#export-info').innerText.includes('images')",
                                timeout=120000)
            link = a.locator("#export-file a").first
            link.wait_for(timeout=60000)
            href = link.get_attribute("href")
            with a.expect_download(timeout=60000) as download:
                link.click()
            download.value.save_as(tmp_path / "a.zip")
            with zipfile.ZipFile(tmp_path / "a.zip") as z:
                assert z.namelist()
            zip_url = href if href.startswith("http") else url.rstrip("/") + href
            assert a.request.get(zip_url).status == 200
            assert b.request.get(zip_url).status == 404
            a.wait_for_function("() => /^[1-9][0-9]* samples/.test(document.querySelector('#curate-count').innerText)",
                                timeout=60000)
            b.click("#curate-refresh")
            b.wait_for_function("() => document.querySelector('#curate-count').innerText.includes('samples')",
                                timeout=60000)
            # the count line (a progress timer such as "0.0s" may still sit above it while it loads)
            assert re.search(r"(^|\n)0 samples", b.locator("#curate-count").inner_text())
        finally:
            browser.close()


# -- the download guard, headless ---------------------------------------------------------------------
@pytest.mark.slow  # imports gradio
def test_download_guard_answers_only_the_owner(tmp_path, monkeypatch):
    """Every way of naming a file in the visitors' exports folder (directly, climbing out of
    one's own folder with .., through a link) is served only with its owner's cookie; files
    elsewhere are left to Gradio's own rules; each cookie-less response sets a new cookie."""
    import asyncio

    from studio import downloads

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    root = downloads.exports_root()
    mine, theirs = downloads.owner_of("cookie-a"), downloads.owner_of("cookie-b")
    zip_a = root / mine / "export-1" / "dataset-coco.zip"
    zip_a.parent.mkdir(parents=True)
    zip_a.write_bytes(b"PK")
    (root / theirs).mkdir()
    (root / theirs / "link").symlink_to(zip_a.parent, target_is_directory=True)
    assert downloads.may_fetch(str(zip_a), "cookie-a")
    for path in (str(zip_a), f"{root}/{theirs}/../{mine}/export-1/dataset-coco.zip",
                 f"{root}/{theirs}/link/dataset-coco.zip", str(root), f"{root}/"):
        assert not downloads.may_fetch(path, "cookie-b"), path
        assert not downloads.may_fetch(path, None), path
    assert downloads.may_fetch(str(tmp_path / "gradio" / "abc" / "image.png"), None)  # Gradio decides

    class App:
        def __init__(self):
            self.calls = 0

        async def __call__(self, scope, receive, send):
            self.calls += 1
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    def request(path, cookie=None, headers=()):
        app, sent = App(), []
        hdrs = [(b"cookie", f"{downloads.COOKIE}={cookie}".encode())] if cookie else []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request"}

        scope = {"type": "http", "path": path, "headers": hdrs + list(headers), "scheme": "http", "method": "GET"}
        asyncio.run(downloads.VisitorDownloads(app)(scope, receive, send))
        start = sent[0]
        return start["status"], dict(start.get("headers", [])).get(b"set-cookie"), app.calls

    assert request(f"/gradio_api/file={zip_a}", "cookie-a")[::2] == (200, 1)
    assert request(f"/gradio_api/file={zip_a}", "cookie-b")[::2] == (404, 0)
    status, set_cookie, calls = request(f"/gradio_api/file={zip_a}")
    assert (status, calls) == (404, 0)
    status, set_cookie, _ = request("/")
    assert status == 200 and set_cookie.startswith(downloads.COOKIE.encode()) and b"HttpOnly" in set_cookie
    assert request("/")[1] != set_cookie  # random per browser
    assert request("/", "cookie-a")[1] is None  # a browser that has one keeps it
    secure = request("/", headers=[(b"x-forwarded-proto", b"https")])[1]
    assert b"Secure" in secure and b"SameSite=None" in secure  # a Space, in huggingface.co's iframe
