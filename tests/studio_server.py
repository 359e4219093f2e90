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
