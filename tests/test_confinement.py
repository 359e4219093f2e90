"""Issue 16: nothing reaches outside its folder (file stems, COCO file names, pickles, public studio paths)."""
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, shared


def test_safe_stem_cannot_leave_the_folder():
    from pipeline.export.common import safe_stem

    for name in ("../../escaped", "/etc/passwd", "..", ".hidden", "a\\..\\b", "dog:cat", "dining table"):
        stem = safe_stem(name)
        assert "/" not in stem and "\\" not in stem and not stem.startswith(".")
        assert (Path("/o") / f"{stem}_000000.png").resolve().parent == Path("/o")
    assert safe_stem("dining table") == "dining_table"
    assert safe_stem("a/b") != safe_stem("a_b")


@pytest.mark.slow
def test_cli_generate_with_escaping_class_writes_inside_out(tmp_path, monkeypatch):
    from pipeline.__main__ import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work = tmp_path / "w" / "x"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert main(["generate", "--class", "../../escaped", "--steps", "1", "--refiner", "otsu", "--out", "o"]) == 0
    inside = sorted(p.name for p in (work / "o").iterdir())
    assert inside and all(n.startswith("escaped-") for n in inside), inside
    assert sorted(p.name for p in tmp_path.rglob("*") if "escaped" in p.name) == inside


def _coco_json(tmp_path, file_name, hw):
    h, w = hw
    ann = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100.0, "bbox": [1, 1, 10, 10],
           "segmentation": [[1, 1, 11, 1, 11, 11, 1, 11]]}
    data = {"images": [{"id": 1, "file_name": file_name, "width": w, "height": h}], "annotations": [ann],
            "categories": [{"id": 1, "name": "dog"}]}
    p = tmp_path / "instances.json"
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize("bad", ["../secret.jpg", "../../../../etc/passwd", "/etc/passwd"])
def test_coco_import_file_name_is_confined_to_images(tmp_path, bad):
    from pipeline.dataset import Store
    from pipeline.export import import_coco
    from pipeline.export.common import ExportError

    photo = np.asarray(Image.open(next(shared("coco-mini", "images").iterdir())).convert("RGB"))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(photo).save(tmp_path / "secret.jpg")  # exists, just outside --images
    Image.fromarray(photo).save(images / "ok.jpg")
    store = Store(tmp_path / "s")
    with pytest.raises(ExportError, match="outside"):
        import_coco(store, _coco_json(tmp_path, bad, photo.shape[:2]), images)
    assert store.query() == []
    assert len(import_coco(store, _coco_json(tmp_path, "ok.jpg", photo.shape[:2]), images)) == 1


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_embedded_training_cache_does_not_run_pickled_code(tmp_path):
    import torch

    from pipeline.embedded.train import TrainConfig, encode_dataset

    marker = tmp_path / "pwned"
    with open(tmp_path / "dataset.pt", "wb") as f:
        pickle.dump(_Evil(str(marker)), f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        encode_dataset(TrainConfig(), None, None, tmp_path)
    assert not marker.exists()
    # the resumable training states (vae.pt, unet.pt) were read with weights_only=False
    from pipeline.embedded.train import _resume

    with open(tmp_path / "unet.pt", "wb") as f:
        pickle.dump(_Evil(str(marker)), f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        _resume(tmp_path / "unet.pt", torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), 1e-3)
    assert not marker.exists()
    # its own files still load
    torch.save({"latents": torch.zeros(2, 4, 4, 4), "ids": torch.zeros(2, 77, dtype=torch.long)}, tmp_path / "dataset.pt")
    assert encode_dataset(TrainConfig(), None, None, tmp_path)["latents"].shape == (2, 4, 4, 4)


def test_no_unsafe_torch_load_left():
    unsafe = [p for p in (ROOT / "pipeline").rglob("*.py") if "weights_only=False" in p.read_text()]
    assert unsafe == []


# -- public studio --------------------------------------------------------------------------------
@pytest.fixture()
def public(monkeypatch, tmp_path):
    from pipeline import access

    cache = tmp_path / "hub"
    (cache / "models--a--b" / "snapshots" / "1").mkdir(parents=True)
    (cache / "models--a--b" / "refs").mkdir()
    (cache / "models--a--b" / "refs" / "main").write_text("1")  # as huggingface_hub leaves a download
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    access.set_public(True)
    yield cache
    access.set_public(False)


def test_public_mode_one_message_for_any_server_path(public, tmp_path):
    from pipeline.access import AccessError, check_user_path

    (tmp_path / "folder").mkdir()
    (tmp_path / "x.pth").write_bytes(b"x")
    messages = set()
    for v in ("/etc/passwd", "/etc", "/nonexistent/x.pth", str(tmp_path / "folder"), str(tmp_path / "x.pth"),
              "../../etc/passwd", "~/.ssh/id_rsa", str(public / ".." / "folder")):
        with pytest.raises(AccessError) as e:
            check_user_path(v, "model")
        messages.add(str(e.value))
    assert len(messages) == 1 and "public" in messages.pop()
    # allowed: presets whose files are in the cache, paths inside the hub cache, hub ids in the
    # cache (as their cached copy); a preset not in the cache is refused like the rest
    # (tests/test_public.py: before any network call)
    fopa = public / "models--BCMIZB--Libcom_pretrained_models"
    (fopa / "snapshots" / "1").mkdir(parents=True)
    (fopa / "snapshots" / "1" / "FOPA.pth").write_bytes(b"weights")
    (fopa / "refs").mkdir()
    (fopa / "refs" / "main").write_text("1")
    for v in ("embedded", "fopa", str(public / "models--a--b")):
        assert check_user_path(v) == v
    for v in ("sd15", "sam-vit-b"):
        with pytest.raises(AccessError) as e:
            check_user_path(v)
        messages.add(str(e.value))
    assert len(messages) == 1
    assert Path(check_user_path("a/b")) == public / "models--a--b" / "snapshots" / "1"
    link = public / "out"
    link.symlink_to("/etc")
    with pytest.raises(AccessError):
        check_user_path(str(link / "passwd"))


def test_public_mode_hub_id_shaped_paths_do_not_reveal_local_folders(public, tmp_path, monkeypatch):
    """A relative path shaped like a hub id is never looked at: an existing folder, a missing
    one, and a hub id not in the cache all get the same answer (nothing is downloaded)."""
    from pipeline.access import AccessError, check_user_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "some" / "dir").mkdir(parents=True)
    (tmp_path / "some" / "dir" / "model_index.json").write_text("{}")
    (tmp_path / "models" / "foo").mkdir(parents=True)
    (tmp_path / "secrets").mkdir()
    answers = {}
    for v in ("some/dir", "some/missing", "models/foo", "models/bar", "secrets", "nosecrets", "a/c"):
        with pytest.raises(AccessError) as e:
            check_user_path(v, "model")
        answers[v] = str(e.value)
    assert len(set(answers.values())) == 1, answers
    # the studio's model field gives the same toast for an existing and a missing folder
    import gradio as gr

    from studio.state import generate_one

    toasts = set()
    for v in ("some/dir", "some/missing"):
        with pytest.raises(gr.Error) as e:
            generate_one(v, "ball", 0, steps=1)
        toasts.add(str(e.value))
    assert len(toasts) == 1 and "public studio" in toasts.pop()


def test_local_mode_passes_everything():
    from pipeline.access import check_user_path, is_public

    assert not is_public() and check_user_path("/etc/passwd") == "/etc/passwd"


@pytest.mark.slow
def test_studio_model_field_in_public_mode(public):
    import gradio as gr

    from studio.state import generate_one

    with pytest.raises(gr.Error) as e:
        generate_one("/etc", "dog", 0, steps=1)
    assert "public studio" in str(e.value)


def test_app_public_flag(monkeypatch):
    import app
    from pipeline.access import public_default

    assert app.parse_args(["--public"]).public is True and app.parse_args([]).public is None
    assert public_default({"SPACE_ID": "user/space"}) and not public_default({})


@pytest.mark.slow
def test_studio_bad_seed_and_guidance_are_toasts():
    import gradio as gr

    from studio.state import generate_one

    for seed, kw in ((2**63, {}), (-1, {}), (float("nan"), {}), (0, {"guidance": float("nan")}), (0, {"steps": 2.5})):
        with pytest.raises(gr.Error):
            generate_one("embedded", "ball", seed, **{"steps": 1, **kw})
