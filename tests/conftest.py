import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

import numpy as np  # noqa: E402
import pytest  # noqa: E402


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

    path = SHARED / "coco-mini" / "instances.json"
    if not path.exists():
        pytest.skip(f"{path} not found (the shared data folder is beside the project)")
    import contextlib, io

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def coco_image(coco, image_id: int) -> np.ndarray:
    from PIL import Image

    info = coco.loadImgs(image_id)[0]
    return np.asarray(Image.open(SHARED / "coco-mini" / "images" / info["file_name"]).convert("RGB"))
