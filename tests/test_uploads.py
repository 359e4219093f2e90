"""#23's uploads row: what a visitor uploads as a photo (the Insert tab's upload, read by
pipeline.images.load_image_file) is refused with a clear ImageError, never a traceback, and a
huge picture is refused from its header before any pixel is decoded."""
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.images import MAX_IMAGE_PIXELS, ImageError, load_image_file


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose IHDR says width x height (RGB), with one tiny IDAT: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind", ["empty", "text", "truncated"])
def test_a_file_that_is_no_picture_is_a_clear_error(kind, tmp_path):
    path = tmp_path / "photo.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a picture, only named like one")
    else:
        Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_image_file(path)
    assert isinstance(e.value, PipelineError) and str(path) in str(e.value)


def test_an_81_megapixel_png_is_refused_before_decoding(tmp_path):
    side = 9000  # 81 MP, over the 64 MP limit
    assert side * side > MAX_IMAGE_PIXELS
    path = tmp_path / "huge.png"
    _png_header_only(path, side, side)
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="megapixel"):
            load_image_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, peak  # decoding it would take 243 MB
