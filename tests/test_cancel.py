"""Issue 16: work stops when whoever asked for it has gone (the studio's Stop button, a closed
browser tab), and the model's native size is stated up front (studio and CLI)."""
import json
import os
import time
import urllib.request
import uuid

import numpy as np
import pytest

from pipeline.errors import Cancelled


@pytest.fixture(scope="module")
def tiny_folder(tiny_pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny-sd"
    tiny_pipe.save_pretrained(path)
    return path


def _stop_after(k: int):
    """A should_stop hook that trips after step k: it is asked once before the work, then
    after every step."""
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > k
    return should_stop


@pytest.mark.parametrize("k", [0, 1, 3])
def test_generation_stops_after_the_step_the_hook_trips(tiny_pipe, k):
    from pipeline.generate import generate

    before = generate(tiny_pipe, "dog", 4, steps=2)[0].image
    processors = {n: type(p) for n, p in tiny_pipe.unet.attn_processors.items()}
    unet_calls = []
    handle = tiny_pipe.unet.register_forward_hook(lambda *a: unet_calls.append(1))
    try:
        with pytest.raises(Cancelled) as e:
            generate(tiny_pipe, "dog", 4, steps=10, should_stop=_stop_after(k))
    finally:
        handle.remove()
    assert len(unet_calls) == k  # one UNet call per step (both guidance halves in one batch)
    assert "stopped" in str(e.value) and (k == 0 or f"after {k} of 10 steps" in str(e.value))
    # the capture is undone: the same processors, and the next generation is the same image
    assert {n: type(p) for n, p in tiny_pipe.unet.attn_processors.items()} == processors
    assert np.array_equal(generate(tiny_pipe, "dog", 4, steps=2)[0].image, before)


def test_a_hook_that_never_trips_changes_nothing(tiny_pipe):
    from pipeline.generate import generate

    a = generate(tiny_pipe, "dog", 2, steps=3)[0]
    b = generate(tiny_pipe, "dog", 2, steps=3, should_stop=lambda: False)[0]
    assert np.array_equal(a.image, b.image) and np.array_equal(a.heat_map, b.heat_map)


def test_studio_hook_outside_an_event_never_trips_and_a_stop_is_a_quiet_toast(tiny_folder, capsys):
    import gradio as gr

    from studio.state import client_gone_hook, generate_one

    assert client_gone_hook()() is False  # not in a queued Gradio event: nothing to watch
    from pipeline.errors import Cancelled
    from studio.state import stopped

    with pytest.raises(Cancelled) as e:  # not a gr.Error: the handler leaves its views as they were
        generate_one(str(tiny_folder), "dog", 0, steps=5, should_stop=_stop_after(2))
    assert "generation stopped after 2 of 5 steps" in str(e.value)
    assert "studio: generation stopped after 2 of 5 steps" in capsys.readouterr().err
    assert stopped(e.value, 3) == (gr.skip(),) * 3  # every view kept, a toast instead


# -- the model's native size ---------------------------------------------------------------------
def test_native_size_from_configs_and_the_size_notes(tiny_pipe, tiny_folder):
    from pipeline.generate import native_size, native_size_of, size_limits, size_note

    assert native_size_of("embedded") == native_size_of(None) == 64
    assert native_size_of("sd15") == 512 and native_size_of("sdxl-base") == 1024
    assert native_size_of(str(tiny_folder)) == native_size(tiny_pipe) == 64
    assert native_size_of("/nonexistent/x.safetensors") is None
    assert size_note(64, None, None) is None and size_note(64, 64, 64) is None
    assert "above this model's native size 64x64" in size_note(64, 128, 64) and "limit 128x128" in size_note(64, 128, 64)
    assert "below" in size_note(64, 32, 32)
    assert size_note(64, 136, 64) is None and size_note(64, -8, 64) is None  # refused by their own errors
    assert "native size 64x64" in size_limits(64) and "128x128" in size_limits(64)


def test_cli_help_states_native_sizes_and_the_limit(capsys):
    from pipeline.__main__ import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "native size: embedded 64, sd15 512" in text and "sdxl-base 1024" in text
    assert "at most 2x native is accepted, above native with a warning" in text


def test_cli_warns_between_native_and_the_limit_and_refuses_beyond(tiny_folder, tmp_path, capsys, monkeypatch):
    from pipeline.__main__ import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base = ["generate", "--model", str(tiny_folder), "--class", "dog", "--steps", "1", "--refiner", "otsu"]
    assert main([*base, "--height", "96", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "warning: 96x64 is above this model's native size 64x64" in err
    assert main([*base, "--out", str(tmp_path / "b")]) == 0
    assert "warning" not in capsys.readouterr().err  # the native size: nothing to say
    assert main([*base, "--height", "136", "--out", str(tmp_path / "c")]) == 2
    assert "height 136 is over 128, 2x this model's native size 64x64" in capsys.readouterr().err
    assert not list((tmp_path / "c").glob("*.png"))


def test_studio_states_the_native_size_and_warns_above_it(tiny_folder, monkeypatch):
    from pipeline import access
    from studio.state import generate_one, size_info

    assert "native size 64x64; sizes up to 128x128" in size_info("embedded")
    assert "native size 512x512" in size_info("sd15")
    with pytest.warns(UserWarning, match="96x64 is above this model's native size 64x64"):
        s = generate_one(str(tiny_folder), "dog", 0, steps=1, height=96)
    assert s.image.shape[:2] == (96, 64)
    # public mode: a path outside the allow-list is not looked at, whether or not it exists
    access.set_public(True)
    try:
        assert size_info(str(tiny_folder)) == size_info("/nonexistent/folder")
        assert "known once the model is loaded" in size_info(str(tiny_folder))
    finally:
        access.set_public(False)


# -- end to end: a real studio server, its queue protocol, a client that goes away ---------------
def _post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _join(url, steps):
    """Join the queue for /generate in a new session: (fn index, session, event id, open SSE stream)."""
    config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "generate")
    session = uuid.uuid4().hex[:11]
    data = [None, "ball", "a photograph of a {}", 0, steps, 5, "embedded", "grabcut", "", "all", 0, 999, None, None]
    event_id = _post(url + "gradio_api/queue/join", {"data": data, "fn_index": fn_index, "session_hash": session,
                                                     "event_data": None, "trigger_id": None})["event_id"]
    stream = urllib.request.urlopen(url + f"gradio_api/queue/data?session_hash={session}", timeout=300)
    return fn_index, session, event_id, stream


def _progress_index(line: bytes) -> int | None:
    """The denoising step an SSE ``progress`` message reports, or None for any other line."""
    if not (line.startswith(b"data:") and b'"progress"' in line and b"denoising" in line):
        return None
    msg = json.loads(line[5:])
    return max((p.get("index") or 0 for p in msg.get("progress_data") or [] if p.get("desc") == "denoising"),
               default=None)


def _wait_for_step(stream, step: int) -> int:
    """Read an event's SSE stream until it reports denoising step >= ``step``; returns that step."""
    for line in stream:
        k = _progress_index(line)
        if k is not None and k >= step:
            return k
        assert b"process_completed" not in line, line
    raise AssertionError(f"the stream ended before denoising step {step}")


def _start_generation(url, steps):
    """Join the queue for /generate as the browser does; returns (fn index, session, event id,
    open SSE stream) once the server reports denoising steps."""
    fn_index, session, event_id, stream = _join(url, steps)
    _wait_for_step(stream, 0)  # the model is loaded and stepping
    return fn_index, session, event_id, stream


def _wait_until_queued(stream) -> None:
    """Read a waiting event's SSE stream until the server says where it stands in the queue."""
    for line in stream:
        if line.startswith(b"data:") and b'"estimation"' in line:
            return
        assert b"process_starts" not in line, line
    raise AssertionError("the stream ended before the event was queued")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""

    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _wait_for_log(log, text: str, count: int, timeout: float) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.read_text().count(text) >= count:
            return time.time()
        time.sleep(0.2)
    raise AssertionError(f"no {count} x {text!r} in the server log: {log.read_text()[-2000:]}")


def _busy_rate(pid: int, stream, steps: int = 3) -> float:
    """The server's CPU seconds per second while the event of ``stream`` denoises ``steps`` more steps."""
    c0, t0 = _cpu_seconds(pid), time.time()
    k0 = _wait_for_step(stream, 1)
    _wait_for_step(stream, k0 + steps)
    return (_cpu_seconds(pid) - c0) / (time.time() - t0)


def _assert_stops_computing(pid: int, busy_rate: float, timeout: float = 60.0):
    """After a stop, the server's CPU time soon grows at most a fraction of what generating used:
    measured over 2 s windows until one is that quiet (a run that goes on never is)."""
    limit = max(0.25 * busy_rate, 0.05)
    deadline, rates = time.time() + timeout, []
    while time.time() < deadline:
        c0, t0 = _cpu_seconds(pid), time.time()
        time.sleep(2.0)  # the measuring window, not a wait for something to happen
        rates.append((_cpu_seconds(pid) - c0) / (time.time() - t0))
        if rates[-1] < limit:
            return
    raise AssertionError(f"still computing after the stop: {rates} CPU s/s, generating used {busy_rate}")


def _read_until_completed(stream) -> dict:
    """The rest of an event's SSE stream up to its process_completed message."""
    for line in stream:
        if line.startswith(b"data:") and b'"process_completed"' in line:
            return json.loads(line[5:])
    raise AssertionError("the stream ended without process_completed")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """One real studio server for the stop scenarios below; each test leaves it idle."""
    from studio_server import running_studio

    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        pytest.skip("reads the server's CPU time from /proc")
    with running_studio(tmp_path_factory.mktemp("cancel") / "data") as url:
        yield url


def _stops(log) -> int:
    return log.read_text().count("generation stopped")


# A 100-step generation (minutes on this machine) through the studio's queue, as a browser runs
# it, stopped four ways; each is measured from outside: the server logs the stop and its CPU time
# stops growing.
@pytest.mark.slow
def test_studio_stops_generating_when_the_tab_closes(studio):
    """Closing the page's event stream mid-generation stops it within a step."""
    n = _stops(studio.log)
    _, _, _, stream = _start_generation(studio, steps=100)
    busy = _busy_rate(studio.pid, stream)
    assert busy > 0.15, busy  # it is computing (on a loaded machine, well under a core)
    stream.close()
    closed = time.time()
    stopped = _wait_for_log(studio.log, "generation stopped", n + 1, timeout=60)
    _assert_stops_computing(studio.pid, busy)
    assert "of 100 steps" in studio.log.read_text().split("generation stopped")[-1].splitlines()[0]
    print(f"stopped {stopped - closed:.1f} s after the tab closed")


@pytest.mark.slow
def test_the_stop_button_stops_generating_and_completes_the_event(studio):
    """The Stop button (its /stop endpoint, same session) stops the run; the event then
    completes successfully with nothing changed (no failed event: the browser shows no error badge)."""
    n = _stops(studio.log)
    fn_index, session, event_id, stream = _start_generation(studio, steps=100)
    busy = _busy_rate(studio.pid, stream)
    _post(studio + "gradio_api/run/stop", {"data": [], "session_hash": session})
    _wait_for_log(studio.log, "generation stopped", n + 1, timeout=60)
    done = _read_until_completed(stream)
    stream.close()
    assert done["success"] is True, done  # a finished event, not a failed or cancelled one
    # the session state is never sent to a client (None); the views are rendered from the
    # session as it was: none yet, so no picture (and the seed box is left as it is)
    from studio.generate import OUTPUTS

    state, *views = done["output"]["data"]
    shown = dict(zip(OUTPUTS, views))
    assert state is None and len(views) == len(OUTPUTS), done
    assert all(shown[k] is None for k in ("image", "heat", "mask")) and shown["seed"] == {"__type__": "update"}
    _assert_stops_computing(studio.pid, busy)


@pytest.mark.slow
def test_a_queued_run_stopped_before_its_turn_never_denoises(studio):
    """A run waiting in the queue behind another session's, stopped before its turn: the running
    one goes on; the queued one, when its turn comes, stops before its first step."""
    n = _stops(studio.log)
    _, first, _, first_stream = _start_generation(studio, steps=100)
    queued = _join(studio, steps=100)
    _wait_until_queued(queued[3])
    _post(studio + "gradio_api/run/stop", {"data": [], "session_hash": queued[1]})
    k = _wait_for_step(first_stream, 1)
    _wait_for_step(first_stream, k + 3)  # the running one takes more steps after the other's stop
    assert _stops(studio.log) == n  # the other session's stop did not stop it
    _post(studio + "gradio_api/run/stop", {"data": [], "session_hash": first})
    _wait_for_log(studio.log, "generation stopped", n + 1, timeout=60)
    first_stream.close()
    _wait_for_log(studio.log, "generation stopped", n + 2, timeout=60)
    assert _read_until_completed(queued[3])["success"] is True
    queued[3].close()
    # its hook trips before the first step: "generation stopped: ..." with no step count
    assert "studio: generation stopped: the request was cancelled" in studio.log.read_text().splitlines()[-1]


@pytest.mark.slow
def test_an_api_clients_cancel_stops_generating(studio):
    """An API client's /cancel (Gradio's own protocol) stops the run too."""
    n = _stops(studio.log)
    fn_index, session, event_id, stream = _start_generation(studio, steps=100)
    busy = _busy_rate(studio.pid, stream)
    assert _post(studio + "gradio_api/cancel", {"session_hash": session, "fn_index": fn_index,
                                                "event_id": event_id})["success"]
    _wait_for_log(studio.log, "generation stopped", n + 1, timeout=60)
    stream.close()
    _assert_stops_computing(studio.pid, busy)
    assert "of 100 steps" in studio.log.read_text().split("generation stopped")[-1].splitlines()[0]


def test_one_side_given_keeps_it(tiny_pipe):
    """diffusers resets both sides to the native size when only one is given; generate keeps it."""
    from pipeline.generate import generate

    assert generate(tiny_pipe, "dog", 0, steps=1, height=96)[0].image.shape[:2] == (96, 64)
    assert generate(tiny_pipe, "dog", 0, steps=1, width=80)[0].image.shape[:2] == (64, 80)
