"""Kept so ``from pipeline.session import ...`` goes on working: the inspection session lives in
:mod:`pipeline.inspect`, the insertion session and :func:`store_composite` in :mod:`pipeline.insert`."""
from .errors import SessionError
from .insert import InsertSession, store_composite
from .inspect import SOURCES, InspectSession, MaskState

__all__ = ["SOURCES", "InsertSession", "InspectSession", "MaskState", "SessionError", "store_composite"]
