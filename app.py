"""DiffuMask-Editor Studio: ``python app.py`` (offline, on the embedded model).

Options: ``--model`` (diffusers folder, .safetensors file or hub id), ``--store`` (the
dataset folder, default ./studio_data), ``--port``, ``--host``. On Hugging Face Spaces the
defaults apply.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default model ships with the app: no hub at start-up

from studio.ui import SHORTCUTS_JS, build_app  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="DiffuMask-Editor Studio")
    ap.add_argument("--model", default=os.environ.get("DIFFUMASK_MODEL", "embedded"))
    ap.add_argument("--store", default=os.environ.get("DIFFUMASK_STORE", "studio_data"))
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    args = ap.parse_args(argv)
    demo = build_app(args.store, args.model)
    demo.launch(server_name=args.host, server_port=args.port, head=SHORTCUTS_JS, max_file_size="20mb",
                show_error=True)


if __name__ == "__main__":
    main()
