"""Every number a user hands in, answered in one place: finite and in range, or a
:class:`~pipeline.errors.ConfigError` naming the field and the range.

The command line, the Python API (``generate``, ``GenerationConfig``), the sessions behind the
studio and the importers all call these checks, so a value refused in one is refused in all,
with the same words. Each ``check_*`` returns the value as the type its users compute with
(``int`` steps, ``float`` guidance, ``(x, y)`` pixel ints, ...). ``error`` lets a caller raise
its own :class:`~pipeline.errors.PipelineError` subclass (a session raises SessionError).
"""
from __future__ import annotations

import math
import numbers

from .errors import SEED_MAX, SEED_MIN, ConfigError, check_seed  # noqa: F401 (seeds live in errors)

# Denoising steps: DDIM/PNDM/Euler take at most the 1000 training timesteps (diffusers raises a
# bare ValueError past them).
MIN_STEPS, MAX_STEPS = 1, 1000
# Classifier-free guidance: 0 (none) .. 50. Beyond a few tens the image saturates; at 1e308 the
# latents overflow and the VAE decodes a black image without any error.
MIN_GUIDANCE, MAX_GUIDANCE = 0.0, 50.0
# A threshold on a heat map in [0, 1].
MIN_THRESHOLD, MAX_THRESHOLD = 0.0, 1.0
# An inserted object's size: its longer side over the background's shorter side.
MIN_SCALE, MAX_SCALE = 0.01, 1.0
# Click labels: 1 object, 0 background.
CLICK_LABELS = (0, 1)
# Instances one imported image may carry: every mask is held in memory (H x W bytes each)
# while its sample is stored, so 100k annotations on one image would need 100k masks at once.
MAX_INSTANCES_PER_IMAGE = 2000
# ... and at most this many mask bytes for one image (instances x H x W).
MAX_MASK_BYTES_PER_IMAGE = 1 << 30


def _real(value, name: str, error) -> float:
    """``value`` as a finite float; bools, strings, None, NaN and inf are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:  # numpy scalars and 0-d arrays are Real-like but not registered everywhere
            import numpy as np

            if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
                value = value.item()
            elif not isinstance(value, (np.integer, np.floating)):
                raise TypeError
        except TypeError:
            raise error(f"{name} must be a number, got {value!r}") from None
    v = float(value)
    if not math.isfinite(v):
        raise error(f"{name} must be a finite number, got {value!r}")
    return v


def check_number(value, name: str, lo: float, hi: float, error=ConfigError) -> float:
    """``value`` as a finite float in [lo, hi]; ``error`` naming ``name`` and the range otherwise."""
    v = _real(value, name, error)
    if not lo <= v <= hi:
        raise error(f"{name} {value!r} is outside {lo:g}..{hi:g}")
    return v


def check_whole(value, name: str, lo: int, hi: int, error=ConfigError) -> int:
    """``value`` as an int in [lo, hi] (a widget's 25.0 is fine; 2.5, NaN, "x" are not)."""
    v = _real(value, name, error)
    if v != int(v):
        raise error(f"{name} must be a whole number in {lo}..{hi}, got {value!r}")
    if not lo <= v <= hi:
        raise error(f"{name} {int(v)} is outside {lo}..{hi}")
    return int(v)


def check_steps(steps, error=ConfigError) -> int:
    """Denoising steps: a whole number in MIN_STEPS..MAX_STEPS."""
    return check_whole(steps, "steps", MIN_STEPS, MAX_STEPS, error)


def check_guidance(guidance, error=ConfigError) -> float:
    """Classifier-free guidance scale: finite, in MIN_GUIDANCE..MAX_GUIDANCE."""
    return check_number(guidance, "guidance", MIN_GUIDANCE, MAX_GUIDANCE, error)


def check_threshold(threshold, name: str = "threshold", error=ConfigError) -> float:
    """A heat-map threshold in [0, 1] (None, NaN and 2.0 are refused)."""
    return check_number(threshold, name, MIN_THRESHOLD, MAX_THRESHOLD, error)


def check_scale(scale, error=ConfigError) -> float:
    """An inserted object's scale (longer side / background's shorter side) in MIN_SCALE..MAX_SCALE."""
    return check_number(scale, "scale", MIN_SCALE, MAX_SCALE, error)


def check_point(x, y, hw: tuple[int, int], name: str = "point", error=ConfigError) -> tuple[float, float]:
    """A position (x, y) in an image of size ``hw`` = (H, W): finite numbers, clamped to the
    pixel centres' range [0, W - 1] x [0, H - 1] (a click just outside lands on the border)."""
    h, w = int(hw[0]), int(hw[1])
    fx, fy = _real(x, f"{name} x", error), _real(y, f"{name} y", error)
    return min(max(fx, 0.0), float(w - 1)), min(max(fy, 0.0), float(h - 1))


def check_click(x, y, label, hw: tuple[int, int], error=ConfigError) -> tuple[int, int, int]:
    """A refiner click: the pixel (x, y) falls in (see :func:`check_point`, truncated to ints)
    and ``label`` 1 (object) or 0 (background)."""
    if isinstance(label, bool) or label not in CLICK_LABELS:
        raise error(f"a click's label is 1 (object) or 0 (background), got {label!r}")
    px, py = check_point(x, y, hw, "click", error)
    return int(px), int(py), int(label)


def check_box(box, hw: tuple[int, int] | None = None, name: str = "box", error=ConfigError) -> tuple[float, ...]:
    """An XYXY box of four finite numbers; with ``hw`` clamped to the image and sorted so
    x1 <= x2, y1 <= y2."""
    try:
        values = list(box)
    except TypeError:
        raise error(f"{name} must be four numbers x1, y1, x2, y2, got {box!r}") from None
    if len(values) != 4:
        raise error(f"{name} must be four numbers x1, y1, x2, y2, got {len(values)}")
    x1, y1, x2, y2 = (_real(v, f"{name} {k}", error) for v, k in zip(values, ("x1", "y1", "x2", "y2")))
    if hw is not None:
        h, w = hw
        x1, x2 = sorted((min(max(x1, 0.0), float(w)), min(max(x2, 0.0), float(w))))
        y1, y2 = sorted((min(max(y1, 0.0), float(h)), min(max(y2, 0.0), float(h))))
    return x1, y1, x2, y2
