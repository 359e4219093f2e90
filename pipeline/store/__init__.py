"""The curation store's parts (the :class:`pipeline.dataset.Store` class uses them):
:mod:`.owners` (who is writing: an OS lock per open store) and :mod:`.journal` (every
sample's record as a content-addressed file beside its blobs, and the rebuild from them)."""
