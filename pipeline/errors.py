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
