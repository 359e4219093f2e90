"""SDXL: loading from a folder, capture on its two-encoder cross-attention, unchanged pixels."""
import math

import numpy as np
import pytest
import torch

from pipeline.attention import trace
from pipeline.generate import generate, load_pipeline
from pipeline.masks import iou
from pipeline.refine import get_refiner, refine_and_choose
from pipeline.testing import tiny_sdxl_pipeline

pytestmark = pytest.mark.slow


def cross_attention_sides(pipe, call) -> set[int]:
    """The latent side of every cross-attention (attn2) call the UNet makes during ``call()``."""
    seen = set()

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.add(math.isqrt(hidden.shape[1]))

    hooks = [m.register_forward_pre_hook(hook, with_kwargs=True)
             for name, m in pipe.unet.named_modules() if name.endswith("attn2")]
    try:
        call()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_sdxl_folder_loads_and_capture_leaves_pixels_unchanged(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    tiny_sdxl_pipeline().save_pretrained(tmp_path / "sdxl")
    pipe = load_pipeline(str(tmp_path / "sdxl"), device="cpu", dtype="float32")
    assert isinstance(pipe, StableDiffusionXLPipeline)
    prompt = "a photograph of an aeroplane"  # a word the tokenizer splits in two
    out = {}

    def plain_call():
        out["plain"] = pipe(prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(4),
                            output_type="np").images

    sides = cross_attention_sides(pipe, plain_call)
    sample = generate(pipe, "aeroplane", 4, steps=3, template="a photograph of an {}")[0]
    assert np.array_equal(sample.image, (np.clip(out["plain"][0], 0, 1) * 255).round().astype(np.uint8))
    heat = sample.heat_map
    assert heat.shape == sample.image.shape[:2] and heat.min() == 0 and heat.max() == 1
    # every cross-attention resolution the UNet ran at was captured, and no other
    assert sides and sorted(sample.attention.resolutions) == sorted(sides)
    with trace(pipe, prompt, "aeroplane") as tr:
        pipe(prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(4), output_type="np")
    assert np.allclose(tr.maps()[0].heat_map(), heat, atol=1e-5)
    choice = refine_and_choose(sample.image, heat, get_refiner("otsu"))
    curve = [iou(heat >= t, choice.refined) for t in choice.thresholds.astype(np.float32)]
    assert np.allclose(choice.ious, curve, atol=1e-6) and choice.best_iou == pytest.approx(max(curve))
