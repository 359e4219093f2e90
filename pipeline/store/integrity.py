"""The store's health: leftovers of writers that are gone, orphan blobs, lost samples, damaged
ones. Every file's fate is decided under the write lock, from the ``pending`` table and the
owners' locks, never from timing, scan order or a process id."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from . import journal, owners
from .blobs import TEMPORARY_NAME
from .errors import StoreError


class IntegrityMixin:
    """The checks and repairs of :class:`pipeline.store.database.Store`."""

    def _drop_dead_intents(self) -> None:
        """Inside a write transaction: forget the intents of owners that are gone (a killed
        writer's). A live owner's, in any process or thread, stay."""
        for (owner,) in self._db.execute("SELECT DISTINCT owner FROM pending").fetchall():
            if owner != self._owner.token and not owners.alive(self.root, owner):
                self._db.execute("DELETE FROM pending WHERE owner = ?", (owner,))

    def _remove_dead_temporaries(self, legacy: bool = False) -> list[Path]:
        """Inside a write transaction: remove temporary blob files whose write's intent is no
        longer pending (its writer was killed, or gave up). ``legacy``: also the files older
        versions named by process id (only ``check --repair`` asks: no live writer uses that name)."""
        live = {i for (i,) in self._db.execute("SELECT DISTINCT intent FROM pending")}
        removed = []
        for p in (self.root / "blobs").glob("*/.*.tmp"):
            m = TEMPORARY_NAME.fullmatch(p.name)
            if (m and m.group(2) in live) or (not m and not legacy):
                continue
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
        return removed

    def clean_leftovers(self) -> list[Path]:
        """Remove what writers that are gone left behind (a killed import or batch): their
        temporary blob files and their unfinished intents; returns the files removed. Never
        a live writer's, in this process or another: the decision is taken under the write
        lock, from the ``pending`` table and the owners' locks (:mod:`pipeline.store.owners`)."""
        owners.remove_dead(self.root, keep=self._owner.token)
        has_tmp = next((self.root / "blobs").glob("*/.*.tmp"), None) is not None
        stale = [o for (o,) in self._db.execute("SELECT DISTINCT owner FROM pending").fetchall()
                 if o != self._owner.token and not owners.alive(self.root, o)]
        if not has_tmp and not stale:
            return []  # the usual open: nothing to clean, no write lock taken
        with self._tx():
            self._drop_dead_intents()
            return self._remove_dead_temporaries()

    def check(self, repair: bool = False, remove_orphans: bool = False) -> "CheckReport":
        """Verify every referenced blob against its hash, find orphan blobs (referenced by no
        sample, no pending write and no lost sample's record) and leftovers. ``repair``
        removes leftovers (and, with ``remove_orphans``, orphans) under the write lock, so a
        writer beside it loses nothing; damaged samples are reported, never deleted."""
        report = CheckReport()
        for rec in self.query():
            report.samples += 1
            probs = self.problems(rec, verify_hash=True)
            if probs:
                report.damaged[rec.id] = probs
        if repair:
            with self._tx():
                self._drop_dead_intents()
                self._remove_dead_temporaries(legacy=True)
                self._find_orphans(report)
                if remove_orphans and report.orphans:
                    if report.samples == 0 or not self._db.execute("SELECT EXISTS (SELECT 1 FROM samples)").fetchone()[0]:
                        raise StoreError(
                            f"{self.db_path} refers to no file, but {len(report.orphans)} files are under "
                            f"{self.root / 'blobs'}: refusing to delete them (if the database was replaced or "
                            f"emptied, rebuild it: `python -m pipeline check --store {self.root} --rebuild`)")
                    # journal records last, tombstones very last: a repair stopped half way never
                    # leaves a deleted sample's record without its tombstone
                    def order(p):
                        return (p.suffix == ".json", p.name in report.tombstones)
                    for p in sorted(report.orphans, key=order):
                        p.unlink(missing_ok=True)
                    report.removed_orphans = len(report.orphans)
        else:
            with self._lock:
                self._db.execute("BEGIN")  # one snapshot: rows, pending writes
                try:
                    self._find_orphans(report)
                finally:
                    self._db.execute("COMMIT")
        report.leftovers = sorted((self.root / "blobs").glob("*/.*.tmp"))
        report.unjournaled = [r[0] for r in self._db.execute(
            "SELECT id FROM samples WHERE journal IS NULL ORDER BY id")]
        return report

    def _find_orphans(self, report: "CheckReport") -> None:
        referenced, uids = set(), set()
        for row in self._execute("SELECT uid, image, instances, heat_map, refined_mask, journal FROM samples"):
            referenced.update(journal.blob_keys(dict(row)))
            if row["journal"]:
                referenced.add(row["journal"])
            uids.add(row["uid"])
        referenced.update(k for (k,) in self._db.execute("SELECT key FROM pending"))
        candidates = [p for p in (self.root / "blobs").glob("*/*")
                      if not p.name.startswith(".") and p.name not in referenced]
        # journal records nobody points at: an older version of a sample (removable), a deleted
        # sample's (removable), or the newest record of a sample the database does not hold:
        # a lost sample, kept with its files until a rebuild brings it back
        entries, _ = journal.read_all(self.root / "blobs", only={p.name for p in candidates if p.suffix == ".json"})
        report.tombstones = {e.key for e in entries if e.row is None}
        for uid, e in journal.latest([e for e in entries if e.uid not in uids]).items():
            if e.row is not None:
                report.lost.append((e.id, uid))
                referenced.update(journal.blob_keys(e.row))
                referenced.update(x.key for x in entries if x.uid == uid)
        report.orphans = [p for p in candidates if p.name not in referenced]


@dataclass
class CheckReport:
    samples: int = 0
    damaged: dict = field(default_factory=dict)  # sample id -> [problems]
    orphans: list = field(default_factory=list)
    leftovers: list = field(default_factory=list)
    removed_orphans: int = 0
    lost: list = field(default_factory=list)  # (id, uid) recorded in the journal, not in the database
    unjournaled: list = field(default_factory=list)  # sample ids without a journal file
    tombstones: set = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.leftovers and not self.lost
