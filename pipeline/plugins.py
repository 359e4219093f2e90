"""One registry for every plug-in family (refiners, placement scorers, harmonizers).

A family is a :class:`Registry`: name -> factory (a class, usually). Adding a plug-in is one
class and one line, ``REFINERS.register("mine", MyRefiner)``; the command line's choices, the
batch runner and the studio's dropdowns all read the registry, so they pick it up untouched.

Plug-ins are built from a *spec*, a name plus options (``checkpoint=..., device=...``); each
factory receives only the options its signature names, so callers pass what they have
(``get_refiner(name, checkpoint=ckpt)``) without knowing which plug-in needs what.

A factory may also be given as ``"package.module:Class"`` (as entry points are): the module is
imported when the plug-in is first used, so a family's module need not import a heavy
implementation (FOPA's and RainNet's networks import its module, not the other way round).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Callable, Generic, Iterator, TypeVar

from .errors import PipelineError

T = TypeVar("T")


class UnknownPlugin(PipelineError, ValueError):
    """A name that no plug-in of the family is registered under."""


class Registry(Generic[T]):
    """Plug-ins of one family, in registration order. ``error``: the family's error class
    (a subclass of PipelineError) raised for unknown names, so callers catch one type."""

    def __init__(self, family: str, error: type[Exception] = UnknownPlugin):
        self.family = family
        self.error = error
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str, factory: Callable[..., T] | str | None = None):
        """Register ``factory`` (or ``"module:attr"``, imported on first use) under ``name``
        (lower case); usable as a class decorator too. Registering a name again replaces it."""
        if factory is None:
            return lambda f: self.register(name, f)
        key = name.strip().lower()
        if not key or key != name.strip():
            raise ValueError(f"a {self.family} name is a non-empty lower-case word, got {name!r}")
        self._factories[key] = factory
        return factory

    def __setitem__(self, name: str, factory) -> None:
        """``REFINERS["mine"] = MyRefiner``: the same as :meth:`register` (dict-style)."""
        self.register(name, factory)

    def unregister(self, name: str) -> None:
        self._factories.pop(name.lower(), None)

    def names(self) -> list[str]:
        return list(self._factories)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._factories

    def __len__(self) -> int:
        return len(self._factories)

    def __getitem__(self, name: str) -> Callable[..., T]:
        """The factory (class) registered as ``name``: its class attributes describe the
        plug-in without building it (e.g. a refiner's ``takes_points``)."""
        key = str(name).lower()
        try:
            factory = self._factories[key]
        except KeyError:
            raise self.error(f"unknown {self.family} {name!r}; choose one of {', '.join(self.names())}") from None
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            factory = self._factories[key] = getattr(importlib.import_module(module), attr)
        return factory

    def needs_checkpoint(self, name: str) -> bool:
        """Whether ``name`` runs only with weights the user supplies (its class says so with
        ``needs_checkpoint = True``): callers ask for a checkpoint without knowing which plug-in it is."""
        return bool(getattr(self[name], "needs_checkpoint", False))

    def create(self, name: str, **options) -> T:
        """Build the plug-in ``name`` from the options its factory accepts (others are ignored;
        ``None`` values count as not given, so a factory's own defaults apply)."""
        factory = self[name]
        return factory(**accepted_options(factory, options))


def accepted_options(factory: Callable, options: dict) -> dict:
    """The subset of ``options`` that ``factory``'s signature takes (all of them with **kwargs)."""
    options = {k: v for k, v in options.items() if v is not None}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: give it nothing
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return options
    return {k: v for k, v in options.items() if k in params and params[k].kind is not inspect.Parameter.POSITIONAL_ONLY}
