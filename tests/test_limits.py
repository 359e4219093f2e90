"""Every value answered (#23 item 6): steps, guidance, seeds, clicks, moves, thresholds and
scales are finite and in range, or a PipelineError naming the field and the range, in the
Python API, the sessions behind the studio and the CLI alike, from one place (pipeline.limits)."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import limits
from pipeline.errors import ConfigError, PipelineError
from pipeline.generate import GenerationConfig, generate
from pipeline.session import InsertSession, InspectSession, SessionError

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = [float("nan"), float("inf"), -float("inf"), None, "x", True, [1], 1e308]


@pytest.mark.parametrize("kw, field", [
    (dict(steps=1001), "steps"), (dict(steps=0), "steps"), (dict(steps=float("nan")), "steps"),
    (dict(steps=2.5), "steps"), (dict(steps="25"), "steps"),
    (dict(guidance=1e308), "guidance"), (dict(guidance=float("nan")), "guidance"), (dict(guidance=-1), "guidance"),
    (dict(guidance=None), "guidance"), (dict(guidance=51), "guidance")])
def test_generation_settings_out_of_range_name_the_field_and_range(kw, field):
    with pytest.raises(ConfigError, match=field) as e:
        GenerationConfig(**kw)
    if isinstance(list(kw.values())[0], (int, float)) and math.isfinite(list(kw.values())[0]) \
            and float(list(kw.values())[0]).is_integer():
        hi = limits.MAX_STEPS if field == "steps" else limits.MAX_GUIDANCE
        assert f"{hi:g}" in str(e.value)  # the range is in the message
    # the Python API answers before any work: no pipeline is touched (None would fail later);
    # there guidance=None means "the default"
    if list(kw.values())[0] is not None:
        with pytest.raises(ConfigError, match=field):
            generate(None, "dog", 0, **kw)


def test_limits_at_the_edges_are_accepted():
    c = GenerationConfig(steps=limits.MAX_STEPS, guidance=limits.MAX_GUIDANCE)
    assert (c.steps, c.guidance) == (1000, 50.0) and isinstance(c.steps, int)
    assert GenerationConfig(steps=25.0, guidance=np.float32(7.5)).steps == 25
    assert limits.check_threshold(0) == 0.0 and limits.check_threshold(1) == 1.0
    assert limits.check_seed(2**32 - 1) == 2**32 - 1
    with pytest.raises(ConfigError, match="seed"):
        limits.check_seed(2**32)


@pytest.mark.slow
def test_cli_steps_1001_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline", "generate", "--class", "dog", "--steps", "1001",
                        "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == ["error: steps 1001 is outside 1..1000"], r.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def _inspect():
    img = np.full((32, 40, 3), 120, np.uint8)
    img[8:24, 10:30] = (200, 30, 30)
    heat = np.zeros((32, 40), np.float32)
    heat[8:24, 10:30] = 0.9
    from pipeline.refine import get_refiner

    return InspectSession(img, "ball", heat, refiner=get_refiner("grabcut"))


@pytest.mark.parametrize("bad", [None, float("nan"), 2.0, -0.1, "x", float("inf")])
def test_set_threshold_refuses_what_is_not_in_0_1_and_changes_nothing(bad):
    ses = _inspect()
    before = ses.threshold, ses.current_mask().copy()
    with pytest.raises(SessionError, match=r"threshold.*(0\.\.1|number)"):
        ses.set_threshold(bad)
    assert ses.threshold == before[0] and np.array_equal(ses.current_mask(), before[1]) and not ses.can_undo
    ses.set_threshold(0.5)  # and the session still works
    assert ses.threshold == 0.5


@pytest.mark.parametrize("x, y, label", [(float("nan"), 3, 1), (3, float("inf"), 1), (None, 3, 1), (3, 3, 2),
                                         (3, 3, None), ("3", 3, 1)])
def test_a_bad_click_is_a_session_error_and_changes_nothing(x, y, label):
    ses = _inspect()
    with pytest.raises(SessionError, match="click"):
        ses.add_click(x, y, label)
    assert ses.clicks == ()
    ses.add_click(1e9, -5, 1)  # out of the image but finite: lands on the border pixel
    assert ses.clicks == ((39, 0, 1),)


def _insert():
    rng = np.random.default_rng(0)
    ses = InsertSession(rng.integers(0, 255, (60, 80, 3), np.uint8))
    ses.set_object(np.full((20, 20, 3), 200, np.uint8), np.ones((20, 20), bool), "dog", "test")
    return ses


@pytest.mark.parametrize("box", [(float("nan"), 0, 40, 40), (0, 0, float("inf"), 40), (0, 0, 40), None, "abcd",
                                 (0, 0, None, 40)])
def test_move_to_refuses_a_non_finite_box_and_later_calls_still_work(box):
    ses = _insert()
    before = ses.centre, ses.scale
    with pytest.raises(SessionError, match="box"):
        ses.move_to(box)
    assert (ses.centre, ses.scale) == before
    ses.move_to((10, 10, 50, 50))
    assert ses.box_for() and ses.compose() is not None


@pytest.mark.parametrize("x, y", [(float("nan"), 5), (5, float("inf")), (None, 5), ("a", 5)])
def test_move_centre_refuses_non_finite_values_and_later_calls_still_work(x, y):
    ses = _insert()
    with pytest.raises(SessionError, match="centre"):
        ses.move_centre(x, y)
    assert ses.centre is None
    ses.move_centre(1e12, -3)  # finite, outside: clamped to the background
    assert ses.centre == (79.0, 0.0) and ses.compose() is not None


@pytest.mark.parametrize("bad", HOSTILE + [0.0, 1.5])
def test_scale_check(bad):
    with pytest.raises(ConfigError, match="scale"):
        limits.check_scale(bad)
    assert limits.check_scale(0.3) == 0.3


def test_every_check_raises_a_pipeline_error_of_the_callers_kind():
    for check, bad in ((limits.check_steps, 1e9), (limits.check_guidance, float("nan")),
                       (limits.check_threshold, None), (limits.check_scale, 7)):
        with pytest.raises(SessionError):
            check(bad, error=SessionError)
        with pytest.raises(PipelineError):
            check(bad)
    with pytest.raises(SessionError, match="box x2"):
        limits.check_box((0, 0, float("nan"), 1), error=SessionError)
