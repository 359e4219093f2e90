"""pipeline.gpu: spaces.GPU where the spaces package is importable, a no-op elsewhere."""
import sys
import types

from pipeline.gpu import gpu, on_zero_gpu, queue_settings


def _double(x):
    return 2 * x


def test_no_spaces_package_means_the_function_itself(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # import spaces -> ImportError
    assert gpu(_double) is _double
    assert gpu(duration=90)(_double) is _double
    assert not on_zero_gpu()
    assert queue_settings() == {"default_concurrency_limit": 1, "max_size": 16}


def test_with_spaces_calls_run_under_spaces_gpu(monkeypatch):
    calls = []

    def GPU(fn=None, duration=None):  # the shape of spaces.GPU: @GPU and @GPU(duration=...)
        def deco(f):
            def run(*a, **k):
                calls.append((f.__name__, duration))
                return f(*a, **k)
            return run
        return deco(fn) if fn is not None else deco

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=GPU))
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert gpu(_double)(4) == 8
    assert gpu(duration=120)(_double)(5) == 10
    assert calls == [("_double", None), ("_double", 120)]
    assert on_zero_gpu()
    assert queue_settings() == {"default_concurrency_limit": 4, "max_size": 40}
    assert queue_settings(zero_gpu=False)["default_concurrency_limit"] == 1
