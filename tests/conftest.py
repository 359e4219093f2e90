import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Real data made by others, beside the project (never committed). Tests that need it skip
# when it is absent: use shared(...) for paths, and a FileNotFoundError for a file under it
# turns into a skip (see pytest_pyfunc_call below). DIFFUMASK_SHARED_DATA points elsewhere.
SHARED = Path(os.environ.get("DIFFUMASK_SHARED_DATA", ROOT.parent / "shared" / "data"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def shared(*parts: str) -> Path:
    """A path under the shared data folder; skips the calling test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (the shared data folder lies beside the project)")
    return path


def _missing_shared_file(exc: BaseException) -> str | None:
    name = getattr(exc, "filename", None)
    if isinstance(exc, FileNotFoundError) and name:
        try:
            Path(name).resolve().relative_to(SHARED.resolve())
            return str(name)
        except ValueError:
            return None
    return None


def _skip_missing_shared():
    """Both hooks below: a FileNotFoundError for a file under SHARED becomes a skip."""
    try:
        return (yield)
    except FileNotFoundError as e:
        missing = _missing_shared_file(e)
        if missing:
            pytest.skip(f"{missing} not found (the shared data folder lies beside the project)")
        raise


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    return (yield from _skip_missing_shared())


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    return (yield from _skip_missing_shared())


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Some tests (and in-process trainers) pin torch to one thread; CPU kernels sum in a different
    order on a different thread count, so a later test that compares pixels with a subprocess (which
    starts with torch's default) would see float noise. Every test leaves the count as it found it."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_pipe():
    from pipeline.testing import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(ROOT / "assets" / "clip_tokenizer"))


@pytest.fixture(scope="session")
def coco():
    """pycocotools COCO object over ../shared/data/coco-mini (real photos + instance masks)."""
    from pycocotools.coco import COCO

    path = shared("coco-mini", "instances.json")
    import contextlib, io

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def coco_image(coco, image_id: int) -> np.ndarray:
    from PIL import Image

    info = coco.loadImgs(image_id)[0]
    return np.asarray(Image.open(SHARED / "coco-mini" / "images" / info["file_name"]).convert("RGB"))
