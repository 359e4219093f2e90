"""Model loading and single-object generation with attention capture.

``load_pipeline`` accepts every way users hold Stable Diffusion weights: nothing (the
embedded model in ``assets/embedded_model``), a local diffusers folder, a single
``.safetensors``/``.ckpt`` file, or a hub id. SD 1.x/2.x and SDXL pipelines work; the
attention capture only relies on diffusers' ``attn1``/``attn2`` naming.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .attention import AttentionMaps, CaptureConfig, trace
from .devices import ModelLoadError, looks_like_path, resolve_device, resolve_dtype  # noqa: F401 (re-exported)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_MODEL = PROJECT_ROOT / "assets" / "embedded_model"
DEFAULT_TEMPLATE = "a photograph of a {}"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load_pipeline(model: str | os.PathLike | None = None, device: str = "auto",
                  dtype: str | torch.dtype | None = None, config: str | None = None):
    """Load a Stable Diffusion pipeline.

    model: None/"embedded" (the shipped model), a diffusers folder, a single
    ``.safetensors``/``.ckpt`` file (``config`` = a diffusers folder or hub id whose
    configs describe it; needed offline), or a hub id such as
    ``stable-diffusion-v1-5/stable-diffusion-v1-5``. Raises ModelLoadError with the
    path/id and the remedy when the weights are missing or the hub cannot be reached.
    """
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    spec = str(model) if model not in (None, "", "embedded") else str(EMBEDDED_MODEL)
    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            if not (path / "model_index.json").exists():
                raise ModelLoadError(f"{path} is a folder but not a diffusers pipeline (no model_index.json); "
                                     "pass a diffusers folder, a .safetensors/.ckpt file, or a hub id")
            pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=torch_dtype, safety_checker=None,
                                                     requires_safety_checker=False) \
                if _is_sd(path) else DiffusionPipeline.from_pretrained(path, torch_dtype=torch_dtype)
        elif path.suffix in (".safetensors", ".ckpt"):
            if not path.is_file():
                raise ModelLoadError(f"model file {path} does not exist")
            cls = StableDiffusionXLPipeline if "xl" in path.name.lower() else StableDiffusionPipeline
            kwargs = {"config": config} if config else {}
            pipe = cls.from_single_file(str(path), torch_dtype=torch_dtype, local_files_only=_offline(), **kwargs)
        elif looks_like_path(spec):
            raise ModelLoadError(f"model path {path} does not exist. Pass an existing diffusers folder, a "
                                 ".safetensors/.ckpt file, a hub id, or nothing for the embedded model")
        else:
            pipe = DiffusionPipeline.from_pretrained(spec, torch_dtype=torch_dtype, local_files_only=_offline())
    except ModelLoadError:
        raise
    except Exception as e:  # diffusers raises OSError/ValueError/HTTP errors with long texts
        hint = ("no hub can be reached (HF_HUB_OFFLINE=1 or no network): download the weights on a machine "
                "with access (`huggingface-cli download ID --local-dir DIR`) and pass --model DIR"
                if not path.exists() else
                "a single-file checkpoint needs its configs offline: add --config with a diffusers folder "
                "of the same architecture" if path.is_file() else "check the folder is complete")
        raise ModelLoadError(f"could not load model {spec!r}: {type(e).__name__}: {str(e)[:300]}\n-> {hint}") from e
    if not hasattr(pipe, "unet") or not hasattr(pipe, "tokenizer"):
        raise ModelLoadError(f"{spec!r} loaded as {type(pipe).__name__}, which is not a Stable Diffusion "
                             "text-to-image pipeline (needs a UNet and a CLIP tokenizer)")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _is_sd(path: Path) -> bool:
    import json
    index = json.loads((path / "model_index.json").read_text())
    return "safety_checker" in index


@dataclass
class Sample:
    """One generated image and the attention to its class word."""

    image: np.ndarray  # HWC uint8 RGB
    class_name: str
    prompt: str
    seed: int
    attention: AttentionMaps
    settings: dict = field(default_factory=dict)

    @property
    def heat_map(self) -> np.ndarray:
        """(H, W) float32 in [0, 1]: all captured resolutions and timesteps."""
        return self.attention.heat_map()


def make_prompt(class_name: str, template: str = DEFAULT_TEMPLATE) -> str:
    if "{}" not in template and "{class}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{}}' or '{{class}}' for the class name")
    return template.replace("{class}", "{}").format(class_name)


def generate(pipe, class_name: str | list[str], seed: int | list[int] = 0, template: str = DEFAULT_TEMPLATE,
             steps: int = 25, guidance: float = 5.0, height: int | None = None, width: int | None = None,
             capture: CaptureConfig = CaptureConfig(), prompt: str | list[str] | None = None) -> list[Sample]:
    """Generate one image per (class, seed) in one batched pipeline call, with attention capture.

    Each image has its own ``torch.Generator(seed)``, so sample k of class c is the same
    whether it is generated alone or in a batch.
    """
    classes = [class_name] if isinstance(class_name, str) else list(class_name)
    seeds = [seed] * len(classes) if isinstance(seed, int) else list(seed)
    if len(seeds) != len(classes):
        raise ValueError(f"{len(classes)} classes but {len(seeds)} seeds")
    prompts = [prompt] * len(classes) if isinstance(prompt, str) else \
        list(prompt) if prompt is not None else [make_prompt(c, template) for c in classes]
    device = pipe.unet.device
    gen_device = "cpu" if device.type == "mps" else device
    generators = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]
    with trace(pipe, prompts, classes, capture) as tracer:
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                   height=height, width=width, output_type="np")
    images = to_uint8(out.images)
    maps = tracer.maps(images.shape[1:3])
    settings = {"steps": steps, "guidance": guidance, "template": template}
    return [Sample(img, c, p, int(s), m, dict(settings)) for img, c, p, s, m in zip(images, classes, prompts, seeds, maps)]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """NHWC float in [0, 1] -> NHWC uint8."""
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
