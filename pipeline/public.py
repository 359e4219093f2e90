"""Whether this process serves the public (``--public``, on by default on a Space): one flag,
read by :mod:`pipeline.access` (which paths a visitor may name) and :mod:`pipeline.presets`
(which never downloads then). A leaf module, so neither imports the other for it."""
from __future__ import annotations

import os

_PUBLIC = {"on": False}


def public_default(environ=os.environ) -> bool:
    """Public mode is on by default on Hugging Face Spaces (SPACE_ID set)."""
    return bool(environ.get("SPACE_ID"))


def set_public(on: bool) -> None:
    _PUBLIC["on"] = bool(on)


def is_public() -> bool:
    return _PUBLIC["on"]
