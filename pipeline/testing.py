"""A tiny, randomly initialised Stable Diffusion pipeline with SD's real CLIP tokenizer.

Built from configs in about a second on a CPU; used by tests and benchmarks to exercise
loading, capture and masks without any download. Its images are noise: for images that
mean something use the embedded model (``assets/embedded_model``).
"""
from __future__ import annotations

from pathlib import Path

import torch

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "clip_tokenizer"


def tiny_pipeline(seed: int = 0, sample_size: int = 32):
    """StableDiffusionPipeline: UNet (32, 64) with cross_attention_dim 32, a 2-block VAE
    (images are 2x the latent size, 64x64 by default), a 5-layer CLIP text model of width 32."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=5, vocab_size=49408, max_position_embeddings=77))
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0, sample_size: int = 32):
    """StableDiffusionXLPipeline of the same tiny size: two text encoders (the second with
    a projection, as SDXL's OpenCLIP-G), both on SD's real CLIP tokenizer, a UNet with
    SDXL's "text_time" added conditioning and cross_attention_dim 64 (= both encoders' widths)."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + the pooled text embedding (32)
        cross_attention_dim=64, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32, sample_size=sample_size * 2)
    cfg = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32, intermediate_size=37,
               num_attention_heads=4, num_hidden_layers=5, vocab_size=49408, max_position_embeddings=77,
               hidden_act="gelu", projection_dim=32)
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**cfg)),
                                     text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**cfg)),
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sam(folder, seed: int = 0) -> Path:
    """A small, randomly initialised SAM (transformers' SamModel: ViT of width 32 and 2 layers,
    SAM's own prompt encoder and mask decoder) with its processor, saved to ``folder`` as a
    transformers SAM folder. Its masks mean nothing; it exercises loading and prompting."""
    from transformers import SamConfig, SamModel, SamProcessor, SamVisionConfig
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    torch.manual_seed(seed)
    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                             global_attn_indexes=[1])
    folder = Path(folder)
    SamModel(SamConfig(vision_config=vision)).save_pretrained(folder)
    SamProcessor(SamImageProcessorPil()).save_pretrained(folder)
    return folder


def save_tiny_segment_anything(path, seed: int = 0) -> Path:
    """A small, randomly initialised SAM built by segment-anything's own code (ViT of width
    32, 2 blocks, the second with global attention; SAM's prompt encoder and mask decoder),
    saved as a state-dict ``.pth`` like the published ``sam_vit_b_01ec64.pth``."""
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(seed)
    sam = _build_sam(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    return path


def fail_once_then(marker: str, fn, spec, jobs):
    """Run ``fn(spec, jobs)``, except that the first call anywhere (``marker`` file absent)
    kills its own process, as a crashed GPU worker would; used by tests of Ray's retries."""
    import os

    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    return fn(spec, jobs)


def failing_ray_executor(marker: str | Path, workers: int = 2):
    """A :class:`pipeline.batch.RayExecutor` whose first task kills its worker process (test only)."""
    from functools import partial

    from .batch import RayExecutor

    class FailOnceRayExecutor(RayExecutor):
        def task(self, fn):
            return partial(fail_once_then, str(marker), fn)

    return FailOnceRayExecutor(workers)
