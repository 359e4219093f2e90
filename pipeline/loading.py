"""Presets loaded: :mod:`pipeline.presets` says what a preset is and where its files are; this
module, above it and above the stages' own loaders, turns a preset's name into a model."""
from __future__ import annotations

from . import presets
from .devices import resolve_device


def load_preset(name: str, device: str = "auto", dtype: str | None = None):
    """The loaded model of a preset: a diffusers pipeline (diffusion), a SamPredictor-like
    object (sam) or a FopaScorer (placement). ``device`` auto = CUDA when available; dtype
    auto = float16 on CUDA (diffusion), float32 on the CPU. PresetUnavailable when its files
    are neither cached nor downloadable."""
    p = presets.get(name)
    if p.kind == "diffusion":
        from .generate import load_preset_pipeline

        return load_preset_pipeline(name, device, dtype)
    path = presets.resolve(name)
    if p.kind == "sam":
        from .sam import load_sam_predictor

        return load_sam_predictor(str(path), device=resolve_device(device))
    from .fopa import FopaScorer

    return FopaScorer(checkpoint=path, device=resolve_device(device))
