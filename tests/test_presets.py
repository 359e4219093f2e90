"""Presets through a Hugging Face cache, offline.

The fixture builds, in a temporary folder, the layout huggingface_hub itself reads
(``models--org--name/refs/main`` -> ``snapshots/<revision>/<the repository's files>``), each
repository holding a tiny randomly initialised model with the real repository's file names
(tokenizer vocab/merges, ``preprocessor_config.json``, ``FOPA.pth``, ...). With
``HF_HUB_CACHE`` pointing there and ``HF_HUB_OFFLINE=1``, every preset must resolve and load
through huggingface_hub; a preset whose files are absent must say what to download.
"""
import shutil

import numpy as np
import pytest
import torch

from pipeline import presets
from pipeline.loading import load_preset
from pipeline.presets import PresetUnavailable
from pipeline.testing import TOKENIZER_DIR

REVISION = "1f0e2d3c4b5a69788796a5b4c3d2e1f0a1b2c3d4"


def _snapshot(cache, repo: str):
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    snap = root / "snapshots" / REVISION
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def _hub_layout_tokenizers(snap, names):
    """transformers 5 saves tokenizer.json; SD repositories hold CLIP's vocab/merges files."""
    for name in names:
        shutil.rmtree(snap / name)
        shutil.copytree(TOKENIZER_DIR, snap / name)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    from pipeline.fopa import ObPlaNet
    from pipeline.testing import save_tiny_sam, save_tiny_segment_anything, tiny_pipeline, tiny_sdxl_pipeline

    cache = tmp_path_factory.mktemp("hf_cache")
    sd = tmp_path_factory.mktemp("tiny_sd")
    tiny_pipeline().save_pretrained(sd)
    _hub_layout_tokenizers(sd, ["tokenizer"])
    for name in ("sd15", "sd21-base", "sd-turbo"):
        shutil.copytree(sd, _snapshot(cache, presets.get(name).repo), dirs_exist_ok=True)
    snap = _snapshot(cache, presets.get("sdxl-base").repo)
    tiny_sdxl_pipeline().save_pretrained(snap)
    _hub_layout_tokenizers(snap, ["tokenizer", "tokenizer_2"])
    snap = _snapshot(cache, presets.get("sam-vit-b").repo)
    save_tiny_sam(snap)
    (snap / "processor_config.json").unlink()  # the hub repository has the older single file
    SamImageProcessorPil().save_pretrained(snap)
    try:
        save_tiny_segment_anything(_snapshot(cache, presets.get("sam-vit-b-pth").repo) / "checkpoints/sam_vit_b_01ec64.pth")
    except ImportError:
        pass  # segment-anything (with torchvision) not installed: that preset is checked for its message only
    torch.manual_seed(0)
    torch.save(ObPlaNet().state_dict(), _snapshot(cache, presets.get("fopa").repo) / "FOPA.pth")
    return cache


@pytest.fixture
def offline_cache(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


def _has_segment_anything():
    try:
        import segment_anything  # noqa: F401

        return True
    except Exception:
        return False


@pytest.mark.slow
def test_every_preset_resolves_and_loads_from_the_cache(offline_cache):
    image = np.zeros((48, 64, 3), np.uint8)
    image[10:30, 20:44] = (200, 60, 40)
    mask = np.zeros((48, 64), bool)
    mask[10:30, 20:44] = True
    for name in presets.names():
        p = presets.get(name)
        if name == "sam-vit-b-pth" and not _has_segment_anything():
            with pytest.raises(PresetUnavailable, match="sam_vit_b_01ec64.pth"):
                presets.resolve(name)
            continue
        path = presets.resolve(name)
        if p.repo is not None:
            assert str(path).startswith(str(offline_cache / f"models--{p.repo.replace('/', '--')}" / "snapshots" / REVISION))
            assert path.exists()
        model = load_preset(name, device="cpu")
        assert "float32 on cpu" in presets.describe(name, model)
        if p.kind == "diffusion":
            from pipeline.generate import generate

            side = 64 if name == "embedded" else None
            sample = generate(model, "dog", seed=3, steps=p.steps if name == "sd-turbo" else 2,
                              guidance=p.guidance, height=side, width=side)[0]
            assert sample.image.dtype == np.uint8 and sample.image.ndim == 3
            assert sample.heat_map.shape == sample.image.shape[:2]
            if name == "sdxl-base":
                assert type(model).__name__ == "StableDiffusionXLPipeline"
        elif p.kind == "sam":
            model.set_image(image)
            masks, scores, _ = model.predict(point_coords=np.array([[32, 20]]), point_labels=np.array([1]),
                                             multimask_output=True)
            assert masks.shape == (3, 48, 64) and masks.dtype == bool and scores.shape == (3,)
        else:
            r = model(image, image, mask, scales=(0.5,), top_k=1)
            assert r.heat.shape == (1, 256, 256) and len(r.boxes) == 1


@pytest.mark.slow
def test_a_preset_whose_files_are_absent_says_what_to_download(tmp_path, monkeypatch, offline_cache):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(PresetUnavailable) as e:
        load_preset("sd15")
    text = str(e.value)
    for words in ("'sd15'", "Stable Diffusion 1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5",
                  "unet/diffusion_pytorch_model.safetensors", "HF_HUB_OFFLINE",
                  "hf download stable-diffusion-v1-5/stable-diffusion-v1-5 model_index.json"):
        assert words in text, words
    # partly there: only the missing file is named, and the command fetches only it
    partial = tmp_path / "partial"
    shutil.copytree(offline_cache / "models--stable-diffusion-v1-5--stable-diffusion-v1-5",
                    partial / "models--stable-diffusion-v1-5--stable-diffusion-v1-5")
    (partial / "models--stable-diffusion-v1-5--stable-diffusion-v1-5" / "snapshots" / REVISION / "unet"
     / "diffusion_pytorch_model.safetensors").unlink()
    monkeypatch.setenv("HF_HUB_CACHE", str(partial))
    with pytest.raises(PresetUnavailable, match="partly") as e:
        presets.resolve("sd15")
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5 unet/diffusion_pytorch_model.safetensors\n" in str(e.value)
    with pytest.raises(PresetUnavailable, match="'fopa'.*FOPA.pth"):
        presets.resolve("fopa")
    with pytest.raises(ValueError, match="unknown preset 'sd99'"):
        presets.resolve("sd99")


@pytest.mark.slow
def test_cli_generate_with_a_preset(offline_cache, tmp_path, capsys, monkeypatch):
    from pipeline.__main__ import main

    out = tmp_path / "out"
    assert main(["generate", "--preset", "sd-turbo", "--class", "dog", "--steps", "1", "--guidance", "0",
                 "--refiner", "otsu", "--device", "cpu", "--out", str(out)]) == 0
    assert (out / "dog_000000.png").exists() and (out / "dog_000000_heat.npy").exists()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    assert main(["generate", "--preset", "sdxl-base", "--class", "dog", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'sdxl-base'" in err and "hf download stabilityai/stable-diffusion-xl-base-1.0" in err
    assert main(["generate", "--preset", "sd15", "--model", "x", "--class", "dog", "--out", str(out)]) == 2
    assert "not both" in capsys.readouterr().err


def test_preload_from_hub_lines_name_every_file():
    lines = presets.preload_from_hub(["embedded", "sd-turbo", "fopa"])
    assert lines[1] == "BCMIZB/Libcom_pretrained_models FOPA.pth"
    repo, files = lines[0].split(" ")
    assert repo == "stabilityai/sd-turbo" and files.split(",") == list(presets.get("sd-turbo").files)
    assert len(lines) == 2  # embedded ships with the app


@pytest.mark.slow
def test_unreachable_hub_online(tmp_path, monkeypatch, offline_cache):
    """Online but no hub answers: the cache still serves a complete preset; a missing one
    gets the message (with the download command, not the offline advice)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert presets.resolve("fopa").is_file()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(PresetUnavailable) as e:
        presets.resolve("fopa")
    text = str(e.value)
    assert "needs 1 file of the hub repository BCMIZB/Libcom_pretrained_models" in text
    assert "hf download BCMIZB/Libcom_pretrained_models FOPA.pth" in text and "unset HF_HUB_OFFLINE" not in text


@pytest.mark.slow
def test_the_studio_generates_with_a_preset_and_says_what_is_loaded(offline_cache):
    """The studio's model box takes a preset name: it loads through the HF cache, and the
    line under Generate names the preset, its repository, precision and device."""
    import studio.state as state

    state._load.cache_clear()
    state.set_model_options("cpu", None)
    sample = state.generate_one("sd15", "dog", 3, steps=2)
    assert sample.image.ndim == 3 and sample.heat_map.shape == sample.image.shape[:2]
    line = state.describe_model("sd15")
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in line and "float32 on cpu" in line
    state._load.cache_clear()
