"""The store's SQLite schema: one ``samples`` row per sample, the ``pending`` intents of
writes under way, and ``counters`` (the journal's revision counter)."""
from __future__ import annotations

import sqlite3

DB_NAME = "store.sqlite"


def use_wal(db: sqlite3.Connection, patience: float = 60.0) -> None:
    """Switch ``db`` to WAL (a no-op for a database already in it). Two openers of a new
    database switch it at the same moment and SQLite answers the second "database is locked" at
    once, without waiting on its busy timeout: wait here instead, up to ``patience`` seconds."""
    import time

    deadline = time.monotonic() + patience
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.02)

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    image TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    classes TEXT NOT NULL,
    prompt TEXT NOT NULL DEFAULT '',
    seed INTEGER,
    model TEXT NOT NULL DEFAULT '',
    heat_map TEXT,
    threshold REAL,
    user_threshold REAL,
    refined_mask TEXT,
    instances TEXT NOT NULL DEFAULT '[]',
    inserted TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'accepted', 'rejected')),
    tags TEXT NOT NULL DEFAULT '[]',
    notes TEXT NOT NULL DEFAULT '',
    meta TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_status ON samples(status);
-- a write under way: its blobs (by key) are being put down and no row refers to them yet.
-- Written and committed before the first blob file; removed once the row is committed.
CREATE TABLE IF NOT EXISTS pending (
    intent TEXT NOT NULL,
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_intent ON pending(intent);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# Columns added after the first version, brought in by ALTER TABLE on older stores.
# run/run_class/run_k: batch runs (pipeline.batch) file each candidate under (run, class, k),
# indexed, so a resumed run finds what is done in SQL instead of decoding every row.
# journal: the key of the sample's current journal file; revision: the store-wide journal
# revision of its last change (the newest journal entry of a sample wins on a rebuild).
ADDED_COLUMNS = {"run": "TEXT", "run_class": "TEXT", "run_k": "INTEGER", "journal": "TEXT",
                 "revision": "INTEGER NOT NULL DEFAULT 0"}
RUN_INDEX = "CREATE INDEX IF NOT EXISTS samples_run ON samples(run, run_class, run_k)"


def add_columns(db: sqlite3.Connection) -> None:
    """Bring a store made by an older version up to this schema (idempotent, one transaction)."""
    have = {r[1] for r in db.execute("PRAGMA table_info(samples)")}
    if any(c not in have for c in ADDED_COLUMNS):
        db.execute("BEGIN IMMEDIATE")
        try:
            have = {r[1] for r in db.execute("PRAGMA table_info(samples)")}  # another process may have won
            for c, kind in ADDED_COLUMNS.items():
                if c not in have:
                    db.execute(f"ALTER TABLE samples ADD COLUMN {c} {kind}")
            if "run" not in have:
                # older batch runs kept run/class/k in meta only: copy them into the columns
                db.execute("UPDATE samples SET run = json_extract(meta, '$.batch.run'), "
                           "run_class = json_extract(meta, '$.batch.class'), "
                           "run_k = json_extract(meta, '$.batch.k') "
                           "WHERE run IS NULL AND json_extract(meta, '$.batch.role') = 'candidate'")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    db.execute(RUN_INDEX)


def next_revision(db: sqlite3.Connection) -> int:
    """The next store-wide journal revision (call inside a write transaction)."""
    db.execute("INSERT INTO counters(name, value) VALUES ('journal', 1) "
               "ON CONFLICT(name) DO UPDATE SET value = value + 1")
    return db.execute("SELECT value FROM counters WHERE name = 'journal'").fetchone()[0]

# 1: generated instance masks are materialised at the user's threshold
# 2: every sample has a journal file (pipeline.store.journal)
SCHEMA_VERSION = 2
