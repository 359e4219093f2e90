"""The curation store, one job per module (``pipeline.dataset`` re-exports the public names):

- :mod:`.database`  the :class:`Store`: opening (a lost database is refused), transactions, reads and queries
- :mod:`.records`   what a sample is: Record, Instance, NewSample, StatusAnswer, and the validators
- :mod:`.blobs`     content-addressed files, written under a committed intent; the one mask rule on reading
- :mod:`.writes`    add, update, threshold, status (compare-and-set), delete; each journaled
- :mod:`.integrity` leftovers, orphans, lost and damaged samples: check and repair under the write lock
- :mod:`.journal`   every sample's record beside its blobs; :mod:`.rebuild` a database from them
- :mod:`.owners`    who is writing: one OS lock per open store
- :mod:`.schema`    the SQLite schema and its migrations; :mod:`.errors` the store's errors

The rule that re-derives generated masks from a heat map lives with the other mask rules,
:func:`pipeline.masks.derive_generated`.
"""
