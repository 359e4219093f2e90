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
    """A gradio_client whose ``predict`` returns what the page shows after the event. As on the
    page, each component has one value: an event's output that is a skip (an empty update: the
    server found the page already showing it) leaves the component's last value in place. Outputs
    are matched to components by the event's own output list, so two events with the same
    number of outputs, or one answering a subset of another's views (the threshold slider), share
    the values of the components they have in common."""

    def __init__(self, url, **client_options):
        from gradio_client import Client

        self.client, self.shown = Client(url, verbose=False, **client_options), {}

    def _output_ids(self, api_name=None, fn_index=None) -> list:
        """The component ids of the event's outputs, in the order the client returns them (state
        outputs left out, as the client leaves them out)."""
        c = self.client
        index = c._infer_fn_index(api_name, fn_index)
        dependency = next(d for i, d in enumerate(c.config["dependencies"]) if d.get("id", i) == index)
        kinds = c.endpoints[index].output_component_types
        return [i for i, kind in zip(dependency["outputs"], kinds) if not (c._skip_components and kind.skip)]

    def predict(self, *args, api_name=None, fn_index=None, **kwargs):
        out = self.client.predict(*args, api_name=api_name, fn_index=fn_index, **kwargs)
        ids = self._output_ids(api_name, fn_index)
        values = out if isinstance(out, tuple) else (out,)
        assert len(values) == len(ids), (api_name, len(values), len(ids))
        for i, v in zip(ids, values):
            if isinstance(v, dict) and v.get("__type__") == "update":
                if "value" in v:
                    self.shown[i] = v["value"]
            else:
                self.shown[i] = v
        shown = tuple(self.shown.get(i) for i in ids)
        return shown if isinstance(out, tuple) else shown[0]


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
