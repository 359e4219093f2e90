"""A public studio's export downloads go only to the browser that made them.

Gradio serves every file under its temp folder (``GRADIO_TEMP_DIR``, by default one
``/tmp/gradio`` shared by every Gradio process of the machine) to anyone who sends its URL. In
public mode:

* each studio process has a temp folder of its own (``private_gradio_temp``, called by app.py
  before gradio is imported), so another process's files are not under what it serves;
* every browser gets a random cookie (:data:`COOKIE`, HttpOnly, a session cookie) from
  :class:`VisitorDownloads`, a small ASGI middleware in front of Gradio's routes;
* a visitor's export zip is written under ``<gradio temp>/visitor-exports/<digest of that
  browser's cookie>/`` (:func:`export_parent`), where Gradio serves it in place, and the
  middleware answers 404 to any request for a file there that does not carry that cookie: the URL
  alone (copied, logged, guessed) downloads nothing.

The operator's own studio (not public) keeps Gradio's usual file serving; its export zips are
written under :data:`EXPORTS_DIR`, only the newest of each running studio kept (:func:`export_zip`).
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
import time
from http.cookies import SimpleCookie
from pathlib import Path

COOKIE = "diffumask_visitor"
EXPORTS_DIR = Path(tempfile.gettempdir()) / "diffumask-studio-exports"  # the operator's studio's zips
EXPORTS = "visitor-exports"


def exports_root() -> Path:
    """Where visitors' export zips live: inside Gradio's temp folder (so Gradio serves them in
    place, without a copy elsewhere), under a folder the middleware guards."""
    from gradio.utils import get_upload_folder

    return Path(os.path.realpath(get_upload_folder())) / EXPORTS


def owner_of(cookie: str) -> str:
    """The folder name of one browser's exports: a digest, so the URL does not carry the cookie."""
    return hashlib.sha256(cookie.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def export_parent(request) -> Path:
    """The folder an export for the browser behind ``request`` (a gr.Request) is written in.
    A user error when that browser sent no visitor cookie: its download could reach no one."""
    from .console import user_error

    cookies = getattr(request, "cookies", None) or {}
    cookie = cookies.get(COOKIE) if hasattr(cookies, "get") else None
    if not cookie:
        raise user_error("This public studio delivers an export only to the browser that asked for it, by a "
                         "cookie your browser did not send: allow cookies for this site and reload the page.")
    folder = exports_root() / owner_of(cookie)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _cookie_of(scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            jar = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed header: as if it sent none
                return None
            if COOKIE in jar and jar[COOKIE].value:
                return jar[COOKIE].value
    return None


def may_fetch(file_path: str, cookie: str | None) -> bool:
    """Whether a request with ``cookie`` may have Gradio's ``/file=<file_path>``: any file
    outside the exports folder is Gradio's to decide; one inside it only with its owner's cookie.
    Both the path as Gradio reads it (abspath) and with links resolved are checked."""
    root = exports_root()
    for candidate in {os.path.abspath(file_path), os.path.realpath(file_path)}:
        try:
            rel = Path(candidate).relative_to(root)
        except ValueError:
            continue
        if not cookie or not rel.parts or rel.parts[0] != owner_of(cookie):
            return False
    return True


def _secure(scope) -> bool:
    if scope.get("scheme") == "https":
        return True
    return any(n == b"x-forwarded-proto" and v.split(b",")[0].strip() == b"https" for n, v in scope.get("headers", ()))


class VisitorDownloads:
    """ASGI middleware (public mode): gives each browser its visitor cookie, and refuses a file
    under :func:`exports_root` to any request without its owner's cookie."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cookie = _cookie_of(scope)
        path = scope.get("path", "")
        at = path.find("/file=")
        if at >= 0 and not may_fetch(path[at + len("/file="):], cookie):
            from starlette.responses import PlainTextResponse

            return await PlainTextResponse("Not found.", status_code=404)(scope, receive, send)
        if cookie:
            return await self.app(scope, receive, send)
        value = secrets.token_urlsafe(24)
        # on https (a Space, shown in an iframe of huggingface.co) the cookie must be allowed there
        attrs = "; SameSite=None; Secure; Partitioned" if _secure(scope) else "; SameSite=Lax"
        header = f"{COOKIE}={value}; Path=/; HttpOnly{attrs}".encode("latin-1")

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), (b"set-cookie", header)])
            await send(message)

        return await self.app(scope, receive, send_with_cookie)


def launch_options(public: bool) -> dict:
    """What ``demo.launch`` needs for public mode's downloads (nothing otherwise)."""
    if not public:
        return {}
    from starlette.middleware import Middleware

    return {"app_kwargs": {"middleware": [Middleware(VisitorDownloads)]}}


def private_gradio_temp(environ=os.environ) -> str:
    """Give this process a Gradio temp folder of its own (mode 0700, removed at exit), so the
    files it serves are only its own. Call before gradio is imported."""
    import atexit
    import shutil
    import signal
    import sys
    import tempfile

    folder = tempfile.mkdtemp(prefix="diffumask-gradio-")
    environ["GRADIO_TEMP_DIR"] = folder
    atexit.register(shutil.rmtree, folder, True)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # SIGTERM (a stopped Space, a process manager) ends the process as an exit, so the folder
        # goes too; by default it would end it with no exit handlers run
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return folder


# -- export zips: where they are written and how long they stay ----------------------------------
def clean_old_exports(keep: Path | None) -> None:
    """Remove the operator's studios' export folders under :data:`EXPORTS_DIR`: every folder of
    a studio process that is gone and, with ``keep``, this process's folders other than ``keep``
    (Gradio has copied an earlier zip into its own cache by the time the next export finishes)."""
    if not EXPORTS_DIR.exists():
        return
    for proc_dir in EXPORTS_DIR.iterdir():
        try:
            pid = int(proc_dir.name)
        except ValueError:
            continue
        if pid != os.getpid():
            from pipeline.processes import process_alive

            if not process_alive(pid):  # another running studio's exports are not ours to remove
                shutil.rmtree(proc_dir, ignore_errors=True)
        elif keep is not None:
            for d in proc_dir.iterdir():
                if d != keep:
                    shutil.rmtree(d, ignore_errors=True)


def export_zip(curation, fmt: str, where, val) -> tuple[str, str]:
    """Export the samples ``where`` (a SampleFilter) of ``curation`` (a pipeline Curation) as
    ``fmt`` into a fresh folder and zip it: (path of the zip, what was exported). The
    operator's studio: under :data:`EXPORTS_DIR`, only the newest zip of this process kept
    (older ones and those of dead processes are removed). Public: under this browser's own
    exports folder (:func:`export_parent`), which only this browser may download from, its
    zips of over ten minutes ago removed."""
    from pipeline.curation import describe_export

    from .state import public_datasets

    if public_datasets():
        from gradio.context import LocalContext

        parent = export_parent(LocalContext.request.get(None))
    else:
        clean_old_exports(keep=None)
        parent = EXPORTS_DIR / str(os.getpid())
        parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"export-{fmt}-", dir=parent))
    try:
        archive, rep = curation.export_archive(fmt, where, work, val_fraction=float(val or 0))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if public_datasets():  # Gradio serves the zip in place (no copy): another tab of this browser
        for d in parent.iterdir():  # may still fetch a newer one, so only old ones go
            if d != work and d.stat().st_mtime < time.time() - 600:
                shutil.rmtree(d, ignore_errors=True)
    else:
        clean_old_exports(keep=work)
    return str(archive), describe_export(rep)
