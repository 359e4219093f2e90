"""Per-session state and the few shared resources (model cache, the dataset store)."""
from __future__ import annotations

import threading
from functools import lru_cache

from pipeline.gpu import gpu

# One UNet is shared by every session; attention capture swaps its processors, so model
# calls run one at a time (the Gradio queue also limits them; this lock makes sure).
MODEL_LOCK = threading.Lock()


_MODEL_OPTIONS = {"device": "auto", "dtype": None}


def set_model_options(device: str = "auto", dtype: str | None = None) -> None:
    """Where and at what precision models load (app.py's --device / --dtype)."""
    from pipeline.generate import resolve_device, resolve_dtype

    resolve_dtype(dtype, resolve_device(device))  # fail at start-up, not at the first click
    _MODEL_OPTIONS.update(device=device, dtype=dtype)


@lru_cache(maxsize=2)
def _load(model: str, device: str, dtype: str | None):
    """A preset name (sd15, sd-turbo, ...: through the Hugging Face cache), or what
    load_pipeline takes (embedded, a folder, a single file, a hub id)."""
    from pipeline import presets
    from pipeline.generate import load_pipeline

    if model in presets.names("diffusion"):
        return presets.load(model, device=device, dtype=dtype)
    return load_pipeline(None if model in ("", "embedded") else model, device=device, dtype=dtype)


def describe_model(model: str) -> str:
    """What is loaded, for the UI: the model, its precision and device."""
    from pipeline import presets

    name = model or "embedded"
    pipe = get_pipeline(name)
    if name in presets.names("diffusion"):
        return presets.describe(name, pipe)
    p = next(pipe.unet.parameters())
    return f"{name}, {str(p.dtype).replace('torch.', '')} on {p.device}"


def get_pipeline(model: str):
    from pipeline.access import check_user_path

    check_user_path(model, "model")  # public mode: before the path is looked at
    return _load(model, _MODEL_OPTIONS["device"], _MODEL_OPTIONS["dtype"])


@gpu(duration=120)  # ZeroGPU: a GPU is attached while this runs (a no-op elsewhere)
def generate_one(model: str | None, class_name: str, seed, **options):
    """One sample from the (cached) model under MODEL_LOCK; load and prompt errors (missing
    weights or preset files, a word not in the prompt, a bad template) become the user's
    error toast."""
    from pipeline.errors import PipelineError, check_seed
    from pipeline.generate import ModelLoadError, generate
    from pipeline.presets import PresetUnavailable

    from .console import user_error

    try:
        pipe = get_pipeline(model or "embedded")
        with MODEL_LOCK:
            return generate(pipe, class_name, check_seed(seed), **options)[0]
    except (ModelLoadError, PresetUnavailable, PipelineError, ValueError) as e:
        raise user_error(str(e))
