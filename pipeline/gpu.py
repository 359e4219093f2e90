"""Hugging Face ZeroGPU support: ``@gpu`` is ``spaces.GPU`` where the ``spaces`` package is
importable (a Space), and returns the function unchanged everywhere else.

On a ZeroGPU Space a GPU is attached only while a function decorated with ``spaces.GPU``
runs; models are moved to ``cuda`` at start-up as usual (ZeroGPU defers the move) and every
call that runs a model must go through such a function. ``duration`` is the longest a call
may hold the GPU, in seconds (the Space's queue uses it to schedule visitors).

Queue sizes: :func:`queue_settings` gives ``Blocks.queue`` arguments for the hardware the
app runs on (see the README's "Deploy on Hugging Face Spaces").
"""
from __future__ import annotations

import os
from typing import Callable


def _spaces():
    try:
        import spaces
    except Exception:  # not installed, or failing outside a Space: no ZeroGPU here
        return None
    return spaces if hasattr(spaces, "GPU") else None


def gpu(fn: Callable | None = None, *, duration: int | None = None):
    """``@gpu`` or ``@gpu(duration=120)``: ``spaces.GPU`` when available, else a no-op.

    The ``spaces`` package is looked up when the decorator is applied, so importing this
    module never imports it."""
    def wrap(f: Callable) -> Callable:
        spaces = _spaces()
        if spaces is None:
            return f
        return spaces.GPU(f) if duration is None else spaces.GPU(duration=duration)(f)

    return wrap(fn) if fn is not None else wrap


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space (the platform sets SPACES_ZERO_GPU)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true") and _spaces() is not None


def queue_settings(zero_gpu: bool | None = None) -> dict:
    """``Blocks.queue(**queue_settings())`` for this hardware.

    CPU (a free 2-vCPU Space, the embedded model): one model call at a time, since a second
    would only halve the speed of both, and at most 16 waiting. ZeroGPU: each call gets a
    GPU slice of its own from the platform's pool, so several may run at once; 4 concurrent
    calls and 40 waiting keep a visitor's wait bounded by the ``duration`` of the calls ahead."""
    zero = on_zero_gpu() if zero_gpu is None else zero_gpu
    return {"default_concurrency_limit": 4, "max_size": 40} if zero else {"default_concurrency_limit": 1, "max_size": 16}
