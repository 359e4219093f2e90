"""The store's errors: what a user can fix, each naming the sample or file and the way back."""
from __future__ import annotations

from ..errors import PipelineError


class StoreError(PipelineError, ValueError):
    """Bad input for the store; nothing was written."""


class DamagedSampleError(StoreError):
    """One sample's files are missing or do not match their hash; the rest of the store is fine."""

    def __init__(self, sample_id: int, reason: str):
        super().__init__(f"sample #{sample_id} is damaged: {reason} (run `python -m pipeline check --store ...`)")
        self.sample_id, self.reason = sample_id, reason


class StoreLostError(StoreError):
    """The database is missing, empty or unreadable while the store's files are still there:
    not an empty store. Nothing was changed; ``check --rebuild`` restores it from the files."""
