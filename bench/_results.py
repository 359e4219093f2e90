"""Write one section of bench/RESULTS.md, leaving the other benchmarks' sections alone."""
from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nEach section is rewritten by the script named in it; figures are measured, not typed.\n"


def machine() -> str:
    import torch

    device = "CUDA" if torch.cuda.is_available() else "the CPU"
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"torch {torch.__version__} on {device}")


def write_section(name: str, body: str, command: str | None = None) -> None:
    """Replace (or append) section ``name`` of RESULTS.md; ``command`` is what measured it
    (default ``python bench/<name>.py``)."""
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    stamp = datetime.date.today().isoformat()
    command = command or f"python bench/{name}.py"
    block = (f"<!-- {name}:start -->\n## {name}\n\n_Measured {stamp} on {machine()} by `{command}`._\n\n"
             f"{body.strip()}\n<!-- {name}:end -->")
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    print(block)
