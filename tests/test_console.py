"""The studio's server console: user errors and Gradio's debug prints (no server needed)."""


def test_console_user_errors_one_line_and_no_client_prints(capsys):
    """A user's mistake is one log line and a toast without a traceback; Gradio's per-file
    'environment=client' print is dropped, every other print of its routes module kept."""
    import gradio as gr
    from gradio import routes

    from studio.console import setup_console, user_error

    setup_console()
    err = user_error("Load a background first.")
    assert isinstance(err, gr.Error) and err.print_exception is False and err.message == "Load a background first."
    routes.print("id=abc, environment=client, type=component, file_name=index.js")
    routes.print("* Monitoring URL: http://x *")
    out = capsys.readouterr()
    assert "environment=client" not in out.out and "Monitoring URL" in out.out
    assert out.err.count("user error: Load a background first.") == 1 and "Traceback" not in out.err


def test_image_cache_keeps_an_existing_file(tmp_path):
    """The same picture output twice: the cached file is written once (never truncated while a
    browser may be downloading it), and the path is the one Gradio's own naming gives."""
    import os

    import numpy as np
    from gradio import processing_utils as pu
    from PIL import Image

    from studio.console import atomic_image_cache

    atomic_image_cache()
    img = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    first = pu.save_pil_to_cache(img, str(tmp_path), format="png")
    stamp = os.stat(first).st_mtime_ns
    again = pu.save_img_array_to_cache(np.asarray(img), str(tmp_path), format="png")
    assert again == first and os.stat(first).st_mtime_ns == stamp
    assert Image.open(first).tobytes() == img.tobytes()
    assert not list(tmp_path.rglob("*.part"))


def test_every_picture_view_is_lossless(tmp_path):
    """Each picture the studio sends (views, the editor, galleries; not the upload box) is PNG:
    Gradio's default WebP is lossy and would change the shown mask's edge (test_browser checks
    the shown mask against the saved one pixel for pixel)."""
    import gradio as gr

    from studio.ui import build_app

    app = build_app(tmp_path / "data")
    views = [b for b in app.blocks.values() if isinstance(b, (gr.Image, gr.ImageEditor, gr.Gallery))
             and not (isinstance(b, gr.Image) and b.interactive is not False and "upload" in (b.sources or []))]
    assert len(views) >= 12, len(views)
    assert [getattr(b, "label", None) for b in views if b.format != "png"] == []
