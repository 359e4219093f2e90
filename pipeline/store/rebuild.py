"""``python -m pipeline check --rebuild``: a new ``store.sqlite`` from the journal files alone.

Every sample's current record lies beside its blobs (see :mod:`.journal`). The rebuild reads
them all, keeps each sample's newest entry (a deleted sample's tombstone keeps it out), and
writes the rows, with their ids, revisions and every column, into a new database built under
a temporary name and renamed into place. A database that was there (empty or damaged) is
moved aside, never deleted; a readable one that still holds samples is left alone.
"""
from __future__ import annotations

import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import journal, owners
from .errors import StoreError
from .schema import DB_NAME, SCHEMA, SCHEMA_VERSION, add_columns


@dataclass
class RebuildReport:
    restored: int = 0
    deleted: int = 0  # samples whose newest entry is a tombstone (left out)
    unreadable: dict = field(default_factory=dict)  # journal key -> why
    missing_files: dict = field(default_factory=dict)  # sample id -> [blob keys not on disk]
    renumbered: dict = field(default_factory=dict)  # uid -> new id (two samples claimed one id)
    moved_aside: list = field(default_factory=list)


def database_state(db: Path) -> tuple[str, int]:
    """("missing" | "empty" | "unreadable: why" | "ok", number of samples)."""
    if not db.exists():
        return "missing", 0
    if db.stat().st_size == 0:
        return "empty", 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            n = conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        return f"unreadable: {e}", 0
    return "ok", n


def rebuild(root: str | os.PathLike) -> RebuildReport:
    """Restore ``root/store.sqlite`` from the journal files under ``root/blobs``."""
    root = Path(root)
    blobs = root / "blobs"
    db = root / DB_NAME
    if not blobs.is_dir():
        raise StoreError(f"{root} has no blobs folder: there is nothing to rebuild a store from")
    live = owners.live_owners(root)
    if live:
        raise StoreError(f"{len(live)} open store(s) are using {root} (the studio, an import, a batch run?): "
                         "close them and run the rebuild again")
    state, n = database_state(db)
    if state == "ok" and n > 0:
        raise StoreError(f"{db} is readable and holds {n} samples: nothing to rebuild. "
                         "To rebuild it from the journal anyway, move it aside first")
    report = RebuildReport()
    entries, report.unreadable = journal.read_all(blobs)
    newest = journal.latest(entries)
    rows = sorted((e for e in newest.values() if e.row is not None), key=lambda e: (e.id, e.row["created"]))
    report.deleted = sum(e.row is None for e in newest.values())
    top_id = max((e.id for e in entries), default=0)
    top_rev = max((e.revision for e in entries), default=0)
    tmp = root / f".{DB_NAME}.rebuild-{uuid.uuid4().hex}"
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.executescript(SCHEMA)
            add_columns(conn)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(samples)")}
            conn.execute("BEGIN")
            taken = set()
            for e in rows:
                row = {k: v for k, v in e.row.items() if k in columns}
                if row["id"] in taken:  # two samples claim one id (a database was replaced meanwhile)
                    top_id += 1
                    row["id"] = top_id
                    report.renumbered[e.uid] = top_id
                taken.add(row["id"])
                row["journal"] = e.key
                conn.execute(f"INSERT INTO samples ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                             tuple(row.values()))
                missing = [k for k in journal.blob_keys(e.row) if not (blobs / k[:2] / k).is_file()]
                if missing:
                    report.missing_files[row["id"]] = missing
            # new samples get ids and revisions after every one ever recorded (deleted ones too)
            conn.execute("DELETE FROM sqlite_sequence WHERE name = 'samples'")
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('samples', ?)", (top_id,))
            conn.execute("INSERT OR REPLACE INTO counters (name, value) VALUES ('journal', ?)", (top_rev,))
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):  # an old WAL must not be replayed over the new file
            old = root / (DB_NAME + suffix)
            if old.exists():
                aside = root / f"{DB_NAME}{suffix}.before-rebuild-{stamp}"
                os.replace(old, aside)
                report.moved_aside.append(aside)
        os.replace(tmp, db)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report.restored = len(rows)
    return report
