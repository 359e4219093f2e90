"""Model loading and single-object generation with attention capture.

``load_pipeline`` accepts every way users hold Stable Diffusion weights: nothing (the
embedded model in ``assets/embedded_model``), a local diffusers folder, a single
``.safetensors``/``.ckpt`` file, or a hub id. SD 1.x/2.x and SDXL pipelines work; the
attention capture only relies on diffusers' ``attn1``/``attn2`` naming.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .attention import AttentionMaps, CaptureConfig, trace
from .errors import Cancelled, ConfigError, check_stop
from .limits import check_guidance, check_seed, check_steps
from .devices import ModelLoadError, looks_like_path, resolve_device, resolve_dtype  # noqa: F401 (re-exported)
from . import presets
from .presets import EMBEDDED_MODEL, offline  # noqa: F401 (EMBEDDED_MODEL re-exported)

from .refine import DEFAULT_REFINER, REFINERS, capture_for
from .thresholds import DEFAULT_SELECTOR, SELECTORS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEMPLATE = "a photograph of a {}"


def make_prompt(class_name: str, template: str = DEFAULT_TEMPLATE) -> str:
    if "{}" not in template and "{class}" not in template:
        raise ConfigError(f"prompt template {template!r} has no '{{}}' or '{{class}}' for the class name")
    # plain replacement, not str.format: a template like "a {} {x}" (or a class name with
    # braces) must not be read as format fields (KeyError 'x')
    return template.replace("{class}", "{}").replace("{}", class_name)


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


MAX_SIZE_FACTOR = 2  # at most this many times the model's native side, per side


def _size_help(side: str) -> str:
    natives = ", ".join(f"{name} {p.side}" for name, p in presets.PRESETS.items() if p.side)
    return (f"image {side}, a multiple of 8 (default: the model's native size: {natives}); at most "
            f"{MAX_SIZE_FACTOR}x native is accepted, above native with a warning (slower, objects may repeat)")


@dataclass(frozen=True)
class GenerationConfig:
    """How an image and its mask are made: with the model and a seed, these fix the pixels and
    the mask. The one home of the defaults (the paper's: 25 DDIM steps, guidance 5); ``generate``,
    the batch runner, the CLI (its flags are made from these fields, ``help`` in each field's
    metadata) and the studio's widgets read them from here. ``height``/``width`` None: the
    model's own size."""

    template: str = field(default=DEFAULT_TEMPLATE, metadata=_help("prompt template, {} = the class name"))
    steps: int = field(default=25, metadata=_help("denoising steps"))
    guidance: float = field(default=5.0, metadata=_help("classifier-free guidance scale"))
    height: int | None = field(default=None, metadata=_help(_size_help("height")))
    width: int | None = field(default=None, metadata=_help(_size_help("width")))
    refiner: str = field(default=DEFAULT_REFINER, metadata=_help("mask refiner", choices=REFINERS.names))
    selector: str = field(default=DEFAULT_SELECTOR, metadata=_help(
        "threshold selector: which rule cuts the heat map into the mask (paper: the paper's match to the "
        "refined mask)", choices=SELECTORS.names))

    def __post_init__(self):
        make_prompt("x", self.template)  # a template without {} fails here, before any work
        # whole numbers, stored as int (a widget's 25.0 is fine; NaN, inf, 2.5 or "x" are not)
        object.__setattr__(self, "steps", check_steps(self.steps))
        # inf or 1e308 give a black image and an all-zero heat map; NaN silently turns guidance off
        object.__setattr__(self, "guidance", check_guidance(self.guidance))
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(float(v)) or float(v) != int(v):
                raise ConfigError(f"{name} must be a whole number, got {v!r}")
            object.__setattr__(self, name, int(v))
        for side in ("height", "width"):
            v = getattr(self, side)
            if v is not None and (int(v) < 8 or int(v) % 8):
                raise ConfigError(f"{side} must be a positive multiple of 8 (the VAE's factor), got {v}")
        REFINERS[self.refiner]  # unknown refiner: a clear error listing the registered ones
        SELECTORS[self.selector]  # likewise for the threshold selector

    def prompt(self, class_name: str) -> str:
        return make_prompt(class_name, self.template)

    def capture(self, config: CaptureConfig | None = None) -> CaptureConfig:
        """The attention capture this config's refiner needs (self-attention for affinity)."""
        return capture_for(self.refiner, config)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelConfig:
    """Which weights, where: ``model`` None = the embedded model; a diffusers folder, a
    ``.safetensors``/``.ckpt`` file (with ``config``, a diffusers folder of its architecture)
    or a hub id. ``device``/``dtype``: ``auto`` or a name (see :mod:`pipeline.devices`)."""

    model: str | None = field(default=None, metadata=_help(
        "diffusers folder, .safetensors/.ckpt file or hub id (default: the embedded model in assets/embedded_model)"))
    preset: str | None = field(default=None, metadata=_help(
        "a named hub model (sd15, sd21-base, sdxl-base, sd-turbo; see pipeline.presets), fetched into the "
        "Hugging Face cache on first use, instead of --model"))
    config: str | None = field(default=None, metadata=_help("diffusers folder/hub id describing a single-file --model"))
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda, cuda:1, ..."))
    dtype: str = field(default="auto", metadata=_help("auto, float32, float16, bfloat16"))

    @property
    def label(self) -> str:
        """What a record names as its model."""
        return str(self.preset or self.model or "embedded")

    def load(self):
        if self.preset:
            if self.model:
                raise ConfigError("give a model or a preset, not both")
            if self.preset not in presets.names("diffusion"):
                raise ConfigError(f"unknown preset {self.preset!r}; one of {presets.names('diffusion')}")
            return load_preset_pipeline(self.preset, self.device, None if self.dtype == "auto" else self.dtype)
        return load_pipeline(self.model, self.device, self.dtype, self.config)


# The defaults as one object: generate() starts from it, the studio's widgets show its values
# (steps, guidance), the CLI's flags are made from the same fields. Change a default in the field.
DEFAULTS = GenerationConfig()


def load_preset_pipeline(name: str, device: str = "auto", dtype: str | None = None):
    """The diffusers pipeline of diffusion preset ``name`` (its files through the HF cache, see
    :func:`pipeline.presets.resolve`; the embedded preset from assets/)."""
    path = presets.resolve(name)
    return load_pipeline(None if presets.get(name).repo is None else str(path), device, dtype)


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
            pipe = DiffusionPipeline.from_pretrained(path, dtype=torch_dtype, safety_checker=None,
                                                     requires_safety_checker=False) \
                if _is_sd(path) else DiffusionPipeline.from_pretrained(path, dtype=torch_dtype)
        elif path.suffix in (".safetensors", ".ckpt"):
            if not path.is_file():
                raise ModelLoadError(f"model file {path} does not exist")
            cls = StableDiffusionXLPipeline if "xl" in path.name.lower() else StableDiffusionPipeline
            kwargs = {"config": config} if config else {}
            local_only = not presets.downloads_allowed()  # never a hub request in a public studio
            pipe = cls.from_single_file(str(path), dtype=torch_dtype, local_files_only=local_only, **kwargs)
        elif looks_like_path(spec):
            raise ModelLoadError(f"model path {path} does not exist. Pass an existing diffusers folder, a "
                                 ".safetensors/.ckpt file, a hub id, or nothing for the embedded model")
        else:
            local_only = not presets.downloads_allowed()  # never a hub request in a public studio
            pipe = DiffusionPipeline.from_pretrained(spec, dtype=torch_dtype, local_files_only=local_only)
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


def generate(pipe, class_name: str | list[str], seed: int | list[int] = 0, template: str | None = None,
             steps: int | None = None, guidance: float | None = None, height: int | None = None,
             width: int | None = None, capture: CaptureConfig | None = None, prompt: str | list[str] | None = None,
             *, config: GenerationConfig | None = None, should_stop=None, on_step=None) -> list[Sample]:
    """Generate one image per (class, seed) in one batched pipeline call, with attention capture.

    Settings come from ``config`` (default :class:`GenerationConfig`), overridden by the
    keywords given; ``capture`` defaults to what the config's refiner needs. Each image has
    its own ``torch.Generator(seed)``, so its initial noise is the same whether it is
    generated alone or in a batch. What is promised about the pixels:

    - the same call (same classes, seeds and order) on the same number of torch threads gives
      bit-identical images and maps (CPU kernels split their sums by thread: measured, 1 vs 2
      threads changes a few pixel levels of a tiny model's images, never its masks);
    - the same seed at another batch position, or alone, gives the same image up to
      rounding: batched matrix kernels may round one row differently from another on some
      CPUs (measured: at most 1 level in under 0.1 % of the pixels of a tiny model).

    ``pipeline.batch`` therefore always computes a candidate in the same batch (candidates
    are grouped by index), so a resumed run reproduces an uninterrupted one exactly (on as
    many threads: ``OMP_NUM_THREADS`` pins it).

    ``should_stop``: a callable taking nothing and returning a bool, asked before the work and
    after every denoising step (one UNet call each); when it returns True, generation stops
    there with :class:`~pipeline.errors.Cancelled` (the studio passes one that trips when the
    browser tab is closed or Stop is pressed). None: never stops. ``on_step(i, n)``: called
    after step i of n (1-based), e.g. for a progress bar.
    """
    given = dict(template=template, steps=steps, guidance=guidance, height=height, width=width)
    config = replace(config or DEFAULTS, **{k: v for k, v in given.items() if v is not None})
    capture = config.capture() if capture is None else capture
    classes = [class_name] if isinstance(class_name, str) else list(class_name)
    seeds = [check_seed(seed)] * len(classes) if not isinstance(seed, (list, tuple)) else [check_seed(s) for s in seed]
    if len(seeds) != len(classes):
        raise ConfigError(f"{len(classes)} classes but {len(seeds)} seeds")
    prompts = [prompt] * len(classes) if isinstance(prompt, str) else \
        list(prompt) if prompt is not None else [config.prompt(c) for c in classes]
    check_size(pipe, config.height, config.width)
    height, width = config.height, config.width
    native = native_size(pipe)
    if (height is None) != (width is None) and native is not None:
        # diffusers resets *both* sides to the native size when one is missing: keep the one given
        height, width = height or native, width or native
    check_stop(should_stop, "generation")
    device = pipe.unet.device
    gen_device = "cpu" if device.type == "mps" else device
    generators = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]
    step_end = None if should_stop is None and on_step is None else _step_end(should_stop, on_step, config.steps)
    with trace(pipe, prompts, classes, capture) as tracer:  # restores the processors however it ends
        out = pipe(prompts, num_inference_steps=config.steps, guidance_scale=config.guidance, generator=generators,
                   height=height, width=width, output_type="np", callback_on_step_end=step_end)
    images = to_uint8(out.images)
    maps = tracer.maps(images.shape[1:3])
    settings = {"steps": config.steps, "guidance": config.guidance, "template": config.template}
    return [Sample(img, c, p, int(s), m, dict(settings)) for img, c, p, s, m in zip(images, classes, prompts, seeds, maps)]


def _step_end(should_stop, on_step, steps: int):
    """diffusers' ``callback_on_step_end``: reports the step, and raises Cancelled when
    ``should_stop()``: raised, not ``pipe._interrupt``, which would skip the remaining steps but
    still decode and return a half-denoised image as if it were a result."""
    def step_end(pipe, i, t, kwargs):
        if on_step is not None:
            on_step(i + 1, steps)
        if should_stop is not None and should_stop():
            raise Cancelled(f"generation stopped after {i + 1} of {steps} steps: the request was cancelled "
                            "(Stop, or the page was closed)")
        return kwargs
    return step_end


def native_size(pipe) -> int | None:
    """The side the model was trained at (UNet sample size x VAE factor: 64 for the embedded
    model, 512 for SD 1.5, 1024 for SDXL), or None when the pipeline does not say."""
    sample = getattr(getattr(pipe.unet, "config", None), "sample_size", None)
    factor = getattr(pipe, "vae_scale_factor", None)
    if isinstance(sample, (tuple, list)):
        sample = max(sample)
    return int(sample) * int(factor) if isinstance(sample, int) and isinstance(factor, int) else None


def native_size_of(model: str | None) -> int | None:
    """A model's native side without loading its weights: a preset's documented side, or the
    configs of a diffusers folder (the embedded model's: 64); None when only loading would tell
    (a single file, a hub id)."""
    import json

    name = str(model or "embedded").strip()
    if name in presets.names("diffusion"):
        return presets.get(name).side
    folder = EMBEDDED_MODEL if name in ("", "embedded") else Path(name).expanduser()
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    sample = unet.get("sample_size")
    sample = max(sample) if isinstance(sample, (list, tuple)) else sample
    blocks = vae.get("block_out_channels") or []
    # diffusers' vae_scale_factor: 2 ** (number of VAE blocks - 1)
    return int(sample) * 2 ** (len(blocks) - 1) if isinstance(sample, int) and blocks else None


def size_limits(native: int | None) -> str:
    """One line for the studio and the CLI: the native size and the largest accepted."""
    if native is None:
        return (f"native size: known once the model is loaded; sizes up to {MAX_SIZE_FACTOR}x the native side "
                "are accepted")
    limit = MAX_SIZE_FACTOR * native
    return (f"native size {native}x{native}; sizes up to {limit}x{limit} ({MAX_SIZE_FACTOR}x) are accepted, "
            "above the native size with a warning")


def size_note(native: int | None, height: int | None, width: int | None) -> str | None:
    """A warning when (height, width) differs from the native size but is accepted; None at the
    native size, when it is unknown, or for a size that is refused (over the limit:
    :func:`check_size`; not positive: :class:`GenerationConfig`)."""
    if native is None:
        return None
    h, w = height or native, width or native
    if (h, w) == (native, native) or min(h, w) <= 0 or max(h, w) > MAX_SIZE_FACTOR * native:
        return None  # nothing to say, or a size that is refused with its own error
    if max(h, w) > native:
        cost = h * w / native**2
        return (f"{h}x{w} is above this model's native size {native}x{native}: each step costs about "
                f"{cost:.1f}x the native one, and objects may repeat or break (limit "
                f"{MAX_SIZE_FACTOR * native}x{MAX_SIZE_FACTOR * native})")
    return (f"{h}x{w} is below this model's native size {native}x{native}: objects may lose detail "
            "and the attention maps are coarser")


def check_size(pipe, height: int | None, width: int | None) -> None:
    """ConfigError for a size over MAX_SIZE_FACTOR x the model's native side: denoising cost
    grows with the square of the side (1024x1024 on the 64x64 embedded model runs for minutes)
    and a model draws repeated, broken objects far from the size it learned."""
    native = native_size(pipe)
    if native is None:
        return
    limit = MAX_SIZE_FACTOR * native
    for side, v in (("height", height), ("width", width)):
        if v is not None and v > limit:
            raise ConfigError(f"{side} {v} is over {limit}, {MAX_SIZE_FACTOR}x this model's native size "
                              f"{native}x{native}; generate at {native} (the default) or use a larger model")


def to_uint8(images: np.ndarray) -> np.ndarray:
    """NHWC float in [0, 1] -> NHWC uint8."""
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
