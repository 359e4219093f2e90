"""Load third-party checkpoints into this project's networks, checking every key.

Upstream loaders (FOPA, RainNet) call ``load_state_dict(..., strict=False)``, which silently
skips keys that do not match: a wrong or truncated checkpoint then runs with random layers
and produces plausible-looking garbage. Here a checkpoint must match the network exactly
(names and shapes), or loading fails with the differences listed.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import PipelineError


class CheckpointError(PipelineError, ValueError):
    """The checkpoint is missing, unreadable, or does not fit the network."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.ckpt``/``.tar`` (torch) or ``.safetensors`` file.

    Unwraps ``{"state_dict": ...}``, ``{"model": ...}``, ``{"net": ...}`` and FOPA's training
    checkpoints ``{"epoch", "net_state", "opti_state"}`` (the network's part; the optimizer
    state is ignored), and the ``module.`` prefix that DataParallel adds."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (give the path of the downloaded weights file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zips, wrong formats: all unreadable
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    for key in ("state_dict", "model", "net", "netG", "net_state"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_exact(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    """Load ``state_dict`` into ``module`` only if names and shapes match exactly."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        def show(keys, fmt=str):
            return ", ".join(fmt(k) for k in keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({show(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({show(unexpected)})")
        if wrong:
            parts.append(f"{len(wrong)} with other shapes ("
                         + show(wrong, lambda k: f"{k}: {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}") + ")")
        raise CheckpointError(f"this is not a {what} checkpoint, or not the right variant: " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)
    return module
