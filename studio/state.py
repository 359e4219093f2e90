"""Per-session state and the few shared resources (model cache, the dataset store)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from pipeline.attention import AttentionMaps
from pipeline.refine import MaskChoice

# One UNet is shared by every session; attention capture swaps its processors, so model
# calls run one at a time (the Gradio queue also limits them; this lock makes sure).
MODEL_LOCK = threading.Lock()


@lru_cache(maxsize=2)
def get_pipeline(model: str, device: str = "auto"):
    from pipeline.generate import load_pipeline

    return load_pipeline(None if model in ("", "embedded") else model, device=device)


def generate_one(model: str | None, class_name: str, seed, **options):
    """One sample from the (cached) model under MODEL_LOCK; load and prompt errors (missing
    weights, a word not in the prompt, a bad template) become the user's error toast."""
    import gradio as gr

    from pipeline.generate import ModelLoadError, generate

    try:
        pipe = get_pipeline(model or "embedded")
        with MODEL_LOCK:
            return generate(pipe, class_name, int(seed), **options)[0]
    except (ModelLoadError, ValueError) as e:
        raise gr.Error(str(e))


@dataclass
class Inspection:
    """What one session is looking at on the Generate & Inspect tab."""

    image: np.ndarray  # HWC uint8
    class_name: str
    prompt: str
    seed: int
    model: str
    attention: AttentionMaps
    heat: np.ndarray  # (H, W) [0, 1], the view currently shown (resolutions/timesteps)
    choice: MaskChoice | None = None
    refine_error: str | None = None
    edited_mask: np.ndarray | None = None  # the user's brushed mask, if any
    history: list = field(default_factory=list)  # previous edited masks, for undo
    stored_id: int | None = None
    clicks: list = field(default_factory=list)  # (x, y, label) in image pixels; 1 object, 0 background
