"""Launch the studio in a subprocess for API and browser tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StudioURL(str):
    """The studio's URL (a str, as tests use it), with the server's ``pid`` and ``log`` file."""

    pid: int
    log: Path


@contextmanager
def running_studio(store: Path, timeout: float = 180, args: tuple[str, ...] = ()):
    """``app.py --store store`` on a free port (``args``: more of its options, e.g. --public)."""
    port = free_port()
    # unbuffered: the log file holds what the console would show, when it is shown (tests read it)
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="2",
               PYTHONUNBUFFERED="1")
    log = open(store.parent / f"studio-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--store", str(store), "--port", str(port), *args], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    log.flush()
                    raise RuntimeError(f"the studio did not start: {(store.parent / f'studio-{port}.log').read_text()[-3000:]}")
                time.sleep(0.5)
        studio = StudioURL(url)
        studio.pid, studio.log = proc.pid, store.parent / f"studio-{port}.log"
        yield studio
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# -- the studio's API as a page sees it (tests/test_studio.py, tests/test_public.py) -------------
class Screen:
    """A gradio_client whose ``predict`` returns what the page shows after the event: every tab
    event returns all of its tab's outputs, a view the page already shows as a skip (an empty
    update), so each output is folded into the last value it had (per tab, told by the number
    of outputs)."""

    def __init__(self, url, **client_options):
        from gradio_client import Client

        self.client, self.tabs = Client(url, verbose=False, **client_options), {}

    def predict(self, *args, **kwargs):
        out = self.client.predict(*args, **kwargs)
        if not isinstance(out, tuple):
            return out
        shown = self.tabs.setdefault(len(out), [None] * len(out))
        for i, v in enumerate(out):
            if isinstance(v, dict) and v.get("__type__") == "update":
                if "value" in v:
                    shown[i] = v["value"]
            else:
                shown[i] = v
        return tuple(shown)


# Outputs of every Generate-tab event (studio.generate.render), Insert-tab event
# (studio.insert.render) and Curate-tab event (studio.curate.render): the whole tab each time.
G_MASK, G_CHOICE, G_THRESHOLD, G_STORE = 2, 6, 8, 11
# the slider's event answers only the views a threshold step can change (studio.generate.THRESHOLD_VIEWS)
T_MASK, T_STORE = 0, 4
I_ROWS, I_BG_INFO, I_COMPOSITE, I_MASKS, I_COMP_INFO, I_ACCEPT = 1, 3, 8, 9, 10, 11
C_FILE, C_EXPORT_INFO, C_MESSAGE = 7, 8, 9


def said(url, text: str, timeout: float = 30) -> None:
    """The studio told the user ``text`` (a toast; its console logs each user error in one line)."""
    import time

    deadline = time.monotonic() + timeout
    while text not in url.log.read_text():
        assert time.monotonic() < deadline, f"the studio never said {text!r}"
        time.sleep(0.1)


def saved_id(line: str) -> int:
    return int(line.split("#")[1].split()[0])


def file_path(value) -> str:
    return value["path"] if isinstance(value, dict) and "path" in value else value
