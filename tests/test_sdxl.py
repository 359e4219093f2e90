"""SDXL: loading from a folder, capture on its two-encoder cross-attention, unchanged pixels."""
import numpy as np
import torch

from pipeline.attention import trace
from pipeline.generate import generate, load_pipeline
from pipeline.refine import get_refiner, refine_and_choose
from pipeline.testing import tiny_sdxl_pipeline


def test_sdxl_folder_loads_and_capture_leaves_pixels_unchanged(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    tiny_sdxl_pipeline().save_pretrained(tmp_path / "sdxl")
    pipe = load_pipeline(str(tmp_path / "sdxl"), device="cpu", dtype="float32")
    assert isinstance(pipe, StableDiffusionXLPipeline)
    prompt = "a photograph of an aeroplane"  # a word the tokenizer splits in two
    plain = pipe(prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(4), output_type="np").images
    sample = generate(pipe, "aeroplane", 4, steps=3, template="a photograph of an {}")[0]
    assert np.array_equal(sample.image, (np.clip(plain[0], 0, 1) * 255).round().astype(np.uint8))
    heat = sample.heat_map
    assert heat.shape == sample.image.shape[:2] and heat.min() == 0 and heat.max() == 1
    assert sample.attention.resolutions  # every cross-attention resolution of the UNet was seen
    with trace(pipe, prompt, "aeroplane") as tr:
        pipe(prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(4), output_type="np")
    assert np.allclose(tr.maps()[0].heat_map(), heat, atol=1e-5)
    choice = refine_and_choose(sample.image, heat, get_refiner("otsu"))
    assert choice.threshold in choice.thresholds
