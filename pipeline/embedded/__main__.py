"""``python -m pipeline.embedded train|tokenizer``: build the embedded model's assets."""
from __future__ import annotations

import argparse
import dataclasses

from .train import TrainConfig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.embedded")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train the embedded model (resumable)")
    for f in dataclasses.fields(TrainConfig):
        tr.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    tk = sub.add_parser("tokenizer", help="rebuild SD's CLIP tokenizer files from an open-clip-torch wheel")
    tk.add_argument("--wheel", required=True)
    tk.add_argument("--out", default="assets/clip_tokenizer")
    args = ap.parse_args(argv)
    if args.cmd == "train":
        from .train import train
        train(TrainConfig(**{k: v for k, v in vars(args).items() if k != "cmd"}))
    else:
        from .tokenizer import bpe_from_wheel, write_tokenizer_files
        print(write_tokenizer_files(bpe_from_wheel(args.wheel), args.out))


if __name__ == "__main__":
    main()
