"""The curation store, by its old name: everything lives in :mod:`pipeline.store` now
(``database`` the Store, ``records`` the value objects and validators, ``blobs`` the files,
``writes`` the changes, ``integrity`` check and repair, ``journal`` / ``rebuild`` the way
back from a lost database, ``owners`` who is writing). Imports from here keep working."""
from __future__ import annotations

from .images import ImageError, check_image, load_image_file  # noqa: F401 (older imports use this module)
from .store.database import Store  # noqa: F401
from .store.errors import DamagedSampleError, StoreError, StoreLostError  # noqa: F401
from .store.integrity import CheckReport  # noqa: F401
from .store.records import (SOURCES, STATUSES, Instance, NewSample, Record, StatusAnswer,  # noqa: F401
                            check_class, check_tag)
from .store.schema import ADDED_COLUMNS as RUN_COLUMNS, DB_NAME, RUN_INDEX, SCHEMA  # noqa: F401
