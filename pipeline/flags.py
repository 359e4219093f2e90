"""Command-line flags generated from config dataclasses: one truth for a setting's name, type,
default and help (the dataclass field), shared by ``python -m pipeline`` and the learned
models' trainers (``python -m pipeline.refine_net``, ``python -m pipeline.harmonize_net``).

A field's ``metadata`` may give ``help``, ``choices`` (a list, or a callable returning one,
e.g. a registry's ``names``), ``flag`` (its spelling, default ``--field-name``), ``type`` (a
parser from the flag's text, e.g. :func:`csv_ints` for a tuple) and ``cli=False`` (no flag:
the field is filled in by the program, not the user).
"""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields, is_dataclass


def csv_ints(text: str) -> tuple[int, ...]:
    """``"1,2"`` -> ``(1, 2)`` (empty items ignored)."""
    return tuple(int(x) for x in text.split(",") if x.strip())


def csv_strs(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")`` (blanks stripped, empty items ignored)."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_args(ap: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), **help_overrides) -> None:
    """One flag per field of dataclass ``cls`` (nested dataclasses are skipped): type from the
    annotation (``X | None`` -> X) or the ``type`` metadata, default from the field, ``help``,
    ``choices`` and ``flag`` from its metadata; fields with ``cli=False`` metadata get none."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip or is_dataclass(hints[f.name]) or not f.metadata.get("cli", True):
            continue
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = f.metadata.get("type", args[0] if args else kind)
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        choices = f.metadata.get("choices")
        choices = choices() if callable(choices) else choices
        ap.add_argument(f.metadata.get("flag", flag_name(f.name)), dest=f.name, type=kind, default=default,
                        choices=choices, help=help_overrides.get(f.name, f.metadata.get("help")))


def config_from_args(cls, args: argparse.Namespace, **extra):
    """An instance of dataclass ``cls`` from the parsed flags that :func:`add_config_args` made."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names}, **extra)
