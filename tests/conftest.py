import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Real data made by others, beside the project (never committed). Tests that need it skip
# when the shared data folder itself is absent (a checkout without it); when the folder is there,
# a missing file under it is a wrong path or damaged data and the test FAILS (see shared(...) and
# pytest_pyfunc_call below). DIFFUMASK_SHARED_DATA points elsewhere.
SHARED = Path(os.environ.get("DIFFUMASK_SHARED_DATA", ROOT.parent / "shared" / "data"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

_NO_SHARED = f"{SHARED} not found (the shared data folder lies beside the project, or set DIFFUMASK_SHARED_DATA)"


def shared(*parts: str) -> Path:
    """A path under the shared data folder: skips the calling test when the folder is absent,
    fails it when the folder is there but the path is not (a wrong path must not pass as a skip)."""
    if not SHARED.is_dir():
        pytest.skip(_NO_SHARED)
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} not found, although the shared data folder {SHARED} is there: a wrong path "
                    "or incomplete shared data")
    return path


def _under_shared(exc: BaseException) -> bool:
    name = getattr(exc, "filename", None)
    if not (isinstance(exc, FileNotFoundError) and name):
        return False
    try:
        Path(name).resolve().relative_to(SHARED.resolve())
        return True
    except ValueError:
        return False


def _skip_missing_shared():
    """Both hooks below: a FileNotFoundError for a file under SHARED becomes a skip only when
    the shared data folder itself is absent; otherwise it fails the test as any error does."""
    try:
        return (yield)
    except FileNotFoundError as e:
        if _under_shared(e) and not SHARED.is_dir():
            pytest.skip(_NO_SHARED)
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
