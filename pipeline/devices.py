"""Where models run: device and dtype names -> torch objects, with the user's error for the
impossible ones. Shared by the diffusion pipeline, SAM, FOPA and RainNet."""
from __future__ import annotations

import torch

from .errors import PipelineError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class ModelLoadError(PipelineError, RuntimeError):
    """A model could not be loaded; the message says which path/id and what to do."""


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> cuda when available, else cpu; ``cuda``/``cuda:N`` without CUDA -> ModelLoadError."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``auto``/None -> float16 on CUDA, float32 elsewhere; names as in :data:`DTYPES`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.startswith("cuda") else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}") from None


WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt", ".bin")


def looks_like_path(spec: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else (./x, /x, a/b/c, ~, x.pth) is a path."""
    return (spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
            or spec.lower().endswith(WEIGHT_SUFFIXES))


def is_hub_id(spec: str) -> bool:
    """What ``from_pretrained`` would fetch from the hub: not a path here, and not path-like."""
    from pathlib import Path

    return not Path(spec).expanduser().exists() and not looks_like_path(spec)
