"""The embedded model: shipped as a plain diffusers folder, draws the prompted class, and its
attention sits on the object. Graded against the colour-signature truth of the procedural world."""
import json
import os
import subprocess
import sys

import numpy as np
import torch
import pytest

from conftest import ROOT
from pipeline.embedded import world
from pipeline.refine import capture_for
from pipeline.generate import EMBEDDED_MODEL, generate, load_pipeline
from pipeline.masks import iou
from pipeline.refine import get_refiner, refine_and_choose

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded():
    if not (EMBEDDED_MODEL / "model_index.json").exists():
        pytest.fail(f"the embedded model is missing from {EMBEDDED_MODEL}")
    return load_pipeline(None, device="cpu")


def test_shipped_model_is_a_standard_small_sd_pipeline(embedded):
    from diffusers import StableDiffusionPipeline

    assert isinstance(embedded, StableDiffusionPipeline)
    assert embedded.tokenizer("a photograph of a ball").input_ids[0] == 49406
    size = sum(p.stat().st_size for p in EMBEDDED_MODEL.rglob("*") if p.is_file() and "_train" not in p.parts)
    assert size <= 30 * 2**20
    assert (EMBEDDED_MODEL / "README.md").exists()


def test_world_truth_recovers_the_drawn_masks():
    b = world.sample_batch(np.random.default_rng(5), 64)
    for img, m, lab in zip(b.images, b.masks, b.labels):
        assert iou(world.colour_extent(img, lab), m) == 1.0
        assert world.judge_class(img) == lab


def test_draws_the_prompted_class_and_attention_fits_it(embedded):
    classes = list(world.CLASS_NAMES)
    samples = generate(embedded, classes, [424242 + k for k in range(len(classes))], steps=20)
    fidelity, ious = 0, []
    for s in samples:
        k = classes.index(s.class_name)
        fidelity += world.judge_class(s.image) == k
        truth = world.colour_extent(s.image, k)
        choice = refine_and_choose(s.image, s.heat_map, get_refiner("grabcut"), s.attention)
        ious.append(iou(choice.mask(s.heat_map), truth))
    assert fidelity >= 7, fidelity
    assert np.mean(ious) >= 0.6, ious


def test_affinity_refiner_runs_on_real_self_attention(embedded):
    assert generate(embedded, "star", 77, steps=2)[0].attention.affinity is None  # off unless asked for
    s = generate(embedded, "star", 77, steps=15, capture=capture_for("affinity"))[0]
    assert s.attention.affinity is not None and s.attention.affinity_hw == (16, 16)
    assert np.allclose(s.attention.affinity.sum(1), 1, atol=1e-3)  # row-stochastic
    r = get_refiner("affinity")(s.image, s.heat_map, s.attention)
    truth = world.colour_extent(s.image, world.CLASS_NAMES.index("star"))
    assert iou(r.mask, truth) > 0.3


def test_training_command_is_resumable(tmp_path):
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "pipeline.embedded", "train", "--out", str(out), "--vae-steps", "2",
           "--n-train-images", "64", "--unet-steps", "3", "--unet-batch", "4", "--vae-batch", "4", "--align-steps", "2",
           "--checkpoint-every", "1", "--threads", "1"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    work = out / "_train"
    assert [torch.load(work / f, weights_only=False)["step"] for f in ("vae.pt", "unet.pt")] == [2, 3]
    finished = {f: (work / f).stat().st_mtime_ns for f in ("vae.pt", "dataset.pt")}
    cfg = json.loads((out / "training_config.json").read_text())
    assert cfg["unet_steps"] == 3
    pipe = load_pipeline(out, device="cpu")
    assert pipe.unet.config.sample_size == 16
    # running it again resumes from the finished checkpoints instead of retraining
    cmd[cmd.index("--unet-steps") + 1] = "4"
    r2 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-2000:]
    # the finished VAE and the encoded data set were reused, not redone; the UNet went on to step 4
    assert {f: (work / f).stat().st_mtime_ns for f in finished} == finished
    assert torch.load(work / "unet.pt", weights_only=False)["step"] == 4
    assert json.loads((out / "training_config.json").read_text())["unet_steps"] == 4
