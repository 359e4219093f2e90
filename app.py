"""DiffuMask-Editor Studio: ``python app.py`` (offline, on the embedded model).

Options: ``--model`` (embedded, a diffusers folder, a .safetensors/.ckpt file or a hub id),
``--device`` (auto, cpu, cuda), ``--dtype`` (float32, float16, bfloat16; default float16 on
CUDA, float32 on CPU), ``--store`` (the dataset folder, default ./studio_data), ``--port``,
``--host``, ``--public`` (a shared deployment: weight fields limited to presets, hub ids and
allowed folders, no hub request on a visitor's input, a dataset per browser session under
``<store>/visitors`` removed after ``--visitor-idle`` minutes, downloads only to the browser that
made them; on by default on Hugging Face Spaces). On Hugging Face Spaces the defaults apply.
"""
from __future__ import annotations

import argparse
import os
import sys


def configure_hub(model: str, environ=os.environ) -> None:
    """No hub at start-up for what ships with the app or lies on disk: HF_HUB_OFFLINE=1
    unless the user set it. A hub id leaves the variable as the user has it (unset:
    downloads when the network is there; 1: the local Hugging Face cache only)."""
    from pipeline.generate import looks_like_path

    if "HF_HUB_OFFLINE" in environ:
        return
    if model in ("", "embedded") or looks_like_path(model):
        environ["HF_HUB_OFFLINE"] = "1"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="DiffuMask-Editor Studio")
    ap.add_argument("--model", default=os.environ.get("DIFFUMASK_MODEL", "embedded"),
                    help="embedded (default), a diffusers folder, a .safetensors/.ckpt file, or a hub id")
    ap.add_argument("--device", default=os.environ.get("DIFFUMASK_DEVICE", "auto"), choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", default=os.environ.get("DIFFUMASK_DTYPE"), choices=["float32", "float16", "bfloat16"],
                    help="default: float16 on CUDA, float32 on CPU")
    ap.add_argument("--store", default=os.environ.get("DIFFUMASK_STORE", "studio_data"))
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    ap.add_argument("--public", action=argparse.BooleanOptionalAction, default=None,
                    help="a shared deployment: the model/SAM/FOPA/RainNet fields take only preset names, hub ids "
                         "and paths under the Hugging Face cache or ./models (default: on when SPACE_ID is set, "
                         "i.e. on Hugging Face Spaces)")
    ap.add_argument("--visitor-idle", type=float, default=float(os.environ.get("DIFFUMASK_VISITOR_IDLE", 60)),
                    metavar="MINUTES",
                    help="public mode: a visitor's dataset is removed after this many minutes unused (default 60; "
                         "env DIFFUMASK_VISITOR_IDLE)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    configure_hub(args.model)
    from pipeline.access import public_default, set_public
    from pipeline.errors import PipelineError

    public = public_default() if args.public is None else args.public
    if public:
        from studio.downloads import private_gradio_temp

        private_gradio_temp()  # before gradio is imported: this process serves only its own files
        fetch_operator_preset(args.model)
    set_public(public)
    from pipeline.dataset import StoreError
    from pipeline.generate import ModelLoadError
    from studio.downloads import launch_options
    from studio.ui import STUDIO_CSS, STUDIO_HEAD, build_app

    try:
        demo = build_app(args.store, args.model, device=args.device, dtype=args.dtype,
                         visitor_idle_minutes=args.visitor_idle)
    except (StoreError, ModelLoadError, PipelineError) as e:
        sys.exit(f"error: {e}")
    # run_history=False: Gradio 6.31 records every event's inputs and outputs (and the output
    # components' configs) in the browser's localStorage and offers to load a run back onto the
    # page without running it. The studio's views are drawn from the session the server holds,
    # so a loaded run would show a state nobody holds; and re-serialising up to 100 records at
    # each event was most of what a threshold step cost the page (bench/bench_studio.py).
    demo.launch(server_name=args.host, server_port=args.port, head=STUDIO_HEAD, css=STUDIO_CSS, max_file_size="20mb",
                show_error=True, run_history=False, **launch_options(public))


def fetch_operator_preset(model: str) -> None:
    """Public mode: the operator's own ``--model`` preset is fetched now, at start-up (a
    download the operator asked for, where HF_HUB_OFFLINE allows); from then on no hub request
    is made, so a preset not in the cache would be refused to every visitor."""
    from pipeline import presets

    if model in presets.names("diffusion"):
        try:
            presets.resolve(model)
        except presets.PresetUnavailable as e:
            sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
