"""What a visitor of a shared (public) studio may name as weights: the path policy.

On a public deployment (``app.py --public``, or on Hugging Face Spaces, where ``SPACE_ID`` is
set) the model / SAM / FOPA / RainNet fields are typed by strangers. Answering "does not exist"
for one server path and "is a folder but not ..." for another would let them map the server's
file system, so in public mode those fields accept only preset names and hub ids whose files are
all in the server's hub cache, and paths inside an allow-list of folders (the Hugging Face hub
cache and ``./models``); anything else gets one generic message, decided before the path is looked
at, with no internal path or hub address in it. A hub id is resolved to its snapshot folder in the
cache and never read as a local path (``some/dir`` answers the same whether or not such a folder
exists beside the server). No hub request is ever made because of a visitor's input, whatever
``HF_HUB_OFFLINE`` says: presets and hub ids are looked up with huggingface_hub's cache-only
functions, and :func:`pipeline.presets.resolve` itself never downloads in public mode. Off (the
default, a local studio), every value passes unchanged.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import PipelineError
from .public import is_public, public_default, set_public  # noqa: F401 (the flag lives in a leaf module)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")
class AccessError(PipelineError, PermissionError):
    """A value names something a public studio does not serve."""


def allowed_roots() -> list[Path]:
    """The folders a public studio may read weights from: the hub cache and ./models (of the
    project and of the working folder, which relative paths are read from)."""
    from .presets import cache_dir

    return [Path(os.path.realpath(Path(cache_dir()).expanduser())), Path(os.path.realpath(PROJECT_ROOT / "models")),
            Path(os.path.realpath("models"))]


def served_presets() -> list[str]:
    """The preset names this server can load without the hub: those whose files are all in
    its hub cache (and ``embedded``, which ships with the project)."""
    from .presets import cached, get, names

    return [n for n in names() if get(n).repo is None or cached(n) is not None]


def _generic(what: str) -> AccessError:
    return AccessError(f"this public studio does not serve that {what}: use a preset name it has "
                       f"({', '.join(served_presets())}), a hub id (owner/name) already in the server's "
                       "hub cache, or a file under ./models")


def check_user_path(value: str | None, what: str = "model") -> str | None:
    """What a loader may read for ``value``: unchanged when public mode is off, or for a preset
    name or a path inside an allowed folder; for a hub id, its snapshot folder in the hub cache.
    AccessError with the same generic text for every refused value, whether or not such a path
    (or such a folder beside the server, for a hub-id-shaped value) exists."""
    if not is_public() or value is None:
        return value
    from .devices import looks_like_path
    from .presets import names

    v = str(value).strip()
    if v in ("", "embedded"):
        return value
    if v in names():
        # a preset is served only when its files are all in the cache: the loaders would ask
        # the hub for the rest (presets.resolve also refuses to, in public mode)
        from .presets import cached

        if cached(v) is None:
            raise _generic(what)
        return value
    if "\x00" in v:
        raise _generic(what)
    if not looks_like_path(v):
        # a hub id (or something shaped like one): only ever the cache's copy. Loaders read an
        # existing local folder of that name in its place (from_pretrained checks isdir first),
        # so the cache's snapshot folder is what they get; the local file system is never looked at.
        return _cached_snapshot(v, what)
    real = Path(os.path.realpath(Path(v).expanduser()))  # as the loaders read it; symlinks out are out
    if any(real == root or root in real.parents for root in allowed_roots()):
        return value
    raise _generic(what)


def _cached_snapshot(repo_id: str, what: str) -> str:
    """The snapshot folder of hub repository ``repo_id`` in the hub cache (its ``main``
    revision); the generic AccessError when it is not a valid id or not cached."""
    from huggingface_hub import snapshot_download

    from .presets import cache_dir

    if not _HUB_ID.match(repo_id) or ".." in repo_id:
        raise _generic(what)
    try:
        folder = snapshot_download(repo_id, cache_dir=cache_dir(), local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or an id the hub client refuses
        raise _generic(what) from None
    return str(folder)
