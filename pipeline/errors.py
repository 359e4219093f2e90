"""The one base of the errors a user can cause and fix (bad input, missing weights, ...).

Every stage raises a subclass of :class:`PipelineError` for what the user can act on, so the
command line and the studio catch exactly these and print their message; anything else (a
``KeyError`` from a programming mistake) surfaces as a traceback instead of posing as a user error.
"""
from __future__ import annotations


class PipelineError(Exception):
    """Something the user asked for cannot be done; the message says what and how to fix it."""


class ConfigError(PipelineError, ValueError):
    """A setting is out of range or inconsistent (steps < 1, a template without {}, ...)."""


# One seed range everywhere (generate, the batch runner, the store, the studio): torch's CPU
# generator keeps only 32 bits of a seed, so -1 and 2**32 - 1 (or 5 and 5 + 2**32) would give
# the same image; refusing what lies outside keeps "seed" one-to-one with the noise.
SEED_MIN, SEED_MAX = 0, 2**32 - 1


def check_seed(seed) -> int:
    """``seed`` as an int in [SEED_MIN, SEED_MAX]; ConfigError otherwise (floats, bools, NaN)."""
    import numbers

    if isinstance(seed, bool) or not (isinstance(seed, numbers.Integral)
                                      or isinstance(seed, float) and seed.is_integer()):
        raise ConfigError(f"a seed must be a whole number in {SEED_MIN}..{SEED_MAX}, got {seed!r}")
    seed = int(seed)
    if not SEED_MIN <= seed <= SEED_MAX:
        raise ConfigError(f"seed {seed} is outside {SEED_MIN}..{SEED_MAX} (2**32 - 1): pick one in that range")
    return seed


class Cancelled(PipelineError):
    """Work stopped because whoever asked for it no longer wants it (the studio's Stop button, a
    closed browser tab): raised by a long loop whose ``should_stop`` hook returned True."""


def check_stop(should_stop, what: str) -> None:
    """Raise :class:`Cancelled` ("<what> stopped: ...") when the hook ``should_stop`` (a
    callable taking nothing, returning a bool; None = never stop) says so. Long loops call this
    between steps, so a stopped request costs at most one more step."""
    if should_stop is not None and should_stop():
        raise Cancelled(f"{what} stopped: the request was cancelled (Stop, or the page was closed)")


class SessionError(PipelineError, ValueError):
    """An action that does not apply in a session's current state (Inspect or Insert; the
    message says what to do first)."""
