"""Issue 23 item 7: a public studio belongs to each visitor.

No hub request because of a visitor's input (whatever HF_HUB_OFFLINE says), one dataset per
browser session removed after an idle time (never while in use), and export downloads served
only to the browser that made them.
"""
from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from pipeline import access, presets

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


def test_public_mode_refuses_uncached_presets_without_a_network_call(public_online, no_network):
    """Every preset name and hub id, in every field a visitor types weights into, is refused
    with the one generic message before any network call."""
    import gradio as gr

    from pipeline.harmonize import HARMONIZERS
    from pipeline.placement import SCORERS
    from studio import insert
    from studio.state import generate_one, size_info
    from studio.ui import make_refiner

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
