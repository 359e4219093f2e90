"""What a visitor of a shared (public) studio may name as weights: the path policy.

On a public deployment (``app.py --public``, or on Hugging Face Spaces, where ``SPACE_ID`` is
set) the model / SAM / FOPA / RainNet fields are typed by strangers. Answering "does not exist"
for one server path and "is a folder but not ..." for another would let them map the server's
file system, so in public mode those fields accept only preset names, hub ids and paths inside
an allow-list of folders (the Hugging Face hub cache and ``./models``); anything else gets one
generic message, decided before the path is looked at. Off (the default, a local studio), every
value passes unchanged.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import PipelineError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")
_PUBLIC = {"on": False}


class AccessError(PipelineError, PermissionError):
    """A value names something a public studio does not serve."""


def public_default(environ=os.environ) -> bool:
    """Public mode is on by default on Hugging Face Spaces (SPACE_ID set)."""
    return bool(environ.get("SPACE_ID"))


def set_public(on: bool) -> None:
    _PUBLIC["on"] = bool(on)


def is_public() -> bool:
    return _PUBLIC["on"]


def allowed_roots() -> list[Path]:
    """The folders a public studio may read weights from: the hub cache and ./models (of the
    project and of the working folder, which relative paths are read from)."""
    from .presets import cache_dir

    return [Path(os.path.realpath(Path(cache_dir()).expanduser())), Path(os.path.realpath(PROJECT_ROOT / "models")),
            Path(os.path.realpath("models"))]


def _generic(what: str) -> AccessError:
    from .presets import names

    return AccessError(f"this public studio does not serve that {what}: use a preset name "
                       f"({', '.join(['embedded'] + names())}), a hub id (owner/name), or a file under ./models")


def check_user_path(value: str | None, what: str = "model") -> str | None:
    """``value`` unchanged when allowed (always, unless public mode is on); AccessError with the
    same generic text for every refused value, whether or not such a path exists."""
    if not _PUBLIC["on"] or value is None:
        return value
    from .devices import looks_like_path
    from .presets import names

    v = str(value).strip()
    if v in ("", "embedded") or v in names():
        return value
    if not looks_like_path(v) and _HUB_ID.match(v) and ".." not in v:
        # a hub id; a relative folder of that name is not read in its place (from_pretrained would)
        if not Path(v).exists():
            return value
        raise _generic(what)
    if "\x00" in v:
        raise _generic(what)
    real = Path(os.path.realpath(Path(v).expanduser()))  # as the loaders read it; symlinks out are out
    if any(real == root or root in real.parents for root in allowed_roots()):
        return value
    raise _generic(what)
