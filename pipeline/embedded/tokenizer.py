"""Stable Diffusion's CLIP tokenizer files, rebuilt from OpenAI's BPE table.

SD 1.x/2.x use OpenAI CLIP's byte-level BPE (``bpe_simple_vocab_16e6.txt.gz``, 49,408
ids, ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407). The hub is out of reach
here, but the ``open-clip-torch`` wheel ships that exact table. This module converts it
into the ``vocab.json`` + ``merges.txt`` pair that ``transformers.CLIPTokenizer`` reads,
so word -> token indices match real SD exactly.

The converted files are shipped in ``assets/clip_tokenizer/``; rebuild them with::

    pip download --no-deps open-clip-torch -d /tmp/oc
    python -m pipeline.embedded tokenizer --wheel /tmp/oc/open_clip_torch-*.whl --out assets/clip_tokenizer
"""
from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
# OpenAI's SimpleTokenizer keeps merges[1 : 49152 - 256 - 2 + 1]; the first line is a header.
N_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    # Same reversible byte -> printable-char table as OpenAI CLIP / GPT-2.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def convert_bpe(bpe_gz: bytes) -> tuple[dict[str, int], list[str]]:
    """Return (vocab, merges) in CLIPTokenizer's format from the gzipped BPE table."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")[1 : N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return vocab, [" ".join(m) for m in merges]


def write_tokenizer_files(bpe_gz: bytes, out_dir: str | Path) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = convert_bpe(bpe_gz)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, indent=1))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, indent=1))
    return out


def bpe_from_wheel(wheel: str | Path) -> bytes:
    """Read the BPE table out of an ``open_clip_torch-*.whl`` (a zip file)."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            return zf.read(BPE_MEMBER)
        except KeyError:
            raise FileNotFoundError(f"{wheel} has no {BPE_MEMBER}; is it an open-clip-torch wheel?") from None
