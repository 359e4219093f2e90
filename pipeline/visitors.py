"""One dataset per visitor of a public studio, removed after an idle time.

A public studio (``app.py --public``, a Space) serves strangers: each browser session works in
a store folder of its own, ``<root>/<random token>``, made on its first use. The token is random,
never derived from what a client sends, so a session key cannot name (or climb out to) a folder;
the key itself is kept only as a SHA-256 digest.

Who owns which folder, when it was last used and who is using it now lives in one SQLite
database, ``<root>/visitors.sqlite``, shared by every thread and process serving that root:

* :meth:`VisitorStores.lease` is how work uses a visitor's store: in one transaction it finds
  (or makes) the visitor's row, records a lease and touches the row; leaving the block ends the
  lease and touches the row again.
* :meth:`VisitorStores.sweep` decides in one write transaction which visitors are gone: rows
  untouched for ``idle_seconds`` with no live lease. It deletes those rows in that transaction,
  then removes their folders. A lease taken after the sweep's transaction finds no row and makes
  a new folder, so a store in use is never removed, and a removed one is never handed out again.
  A lease left by a process that died counts for ``lease_seconds`` (a bound longer than any
  request), after which its visitor can be swept.

Nothing here imports gradio: the studio maps a browser session (``gr.Request.session_hash``)
to a key and a background thread calls :meth:`sweep` (:meth:`start_sweeper`).
"""
from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import PipelineError
from .store.schema import use_wal

DEFAULT_IDLE_MINUTES = 60.0
DB_NAME = "visitors.sqlite"
_TOKEN = re.compile(r"^[0-9a-f]{32}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS visitors (
    key_digest TEXT PRIMARY KEY,   -- sha256 of the session key (a browser session's hash)
    token TEXT NOT NULL UNIQUE,    -- the folder's name: random, 32 hex digits
    created REAL NOT NULL,
    touched REAL NOT NULL          -- time.time() of the last use
);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY,
    token TEXT NOT NULL,
    until REAL NOT NULL            -- a lease of a process that died protects until then
);
CREATE INDEX IF NOT EXISTS leases_token ON leases(token);
"""


class VisitorError(PipelineError):
    """A visitor's store cannot be given (no session, an unusable folder)."""


class VisitorStores:
    """The store folders of a public studio's visitors under ``root``.

    ``idle_seconds``: a visitor's store is removed once it has been neither used nor leased for
    that long. ``lease_seconds``: how long a lease protects a store if its holder never ends it
    (a process killed mid-request)."""

    def __init__(self, root: str | Path, idle_seconds: float = DEFAULT_IDLE_MINUTES * 60,
                 lease_seconds: float = 6 * 3600):
        if not idle_seconds > 0 or not lease_seconds > 0:
            raise VisitorError(f"the idle time must be a positive number of seconds, not {idle_seconds!r}")
        self.root = Path(root)
        self.idle_seconds = float(idle_seconds)
        self.lease_seconds = float(lease_seconds)
        self._local = threading.local()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._db() as db:
                db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise VisitorError(f"cannot keep visitors' datasets in {self.root}: {e}") from e
        self._stop = threading.Event()

    # -- the database ---------------------------------------------------------------------------
    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection (kept open: closing the last one of a WAL database
        checkpoints it, which cost most of a lease's time)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.root / DB_NAME, timeout=60, isolation_level=None)
            use_wal(db)  # retried: another thread or process may be switching a new database
            # a lease record lost to a power cut costs nothing (leases expire): no fsync per commit
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        yield db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: the database's write lock from the start, so
        a sweep and a lease never interleave)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _digest(session_key: str) -> str:
        if not isinstance(session_key, str) or not session_key:
            raise VisitorError("a visitor's dataset belongs to a browser session, and this request has none")
        return hashlib.sha256(session_key.encode("utf-8", "surrogatepass")).hexdigest()

    def _row(self, db: sqlite3.Connection, digest: str, now: float) -> str:
        """The visitor's token, its row made now if it has none (inside a write transaction)."""
        row = db.execute("SELECT token FROM visitors WHERE key_digest = ?", (digest,)).fetchone()
        if row is not None:
            db.execute("UPDATE visitors SET touched = MAX(touched, ?) WHERE key_digest = ?", (now, digest))
            return row[0]
        token = secrets.token_hex(16)
        db.execute("INSERT INTO visitors (key_digest, token, created, touched) VALUES (?, ?, ?, ?)",
                   (digest, token, now, now))
        return token

    # -- what the studio calls ---------------------------------------------------------------------
    def store_dir(self, session_key: str, now: float | None = None) -> Path:
        """The store folder of the visitor with ``session_key``, made on first use; touches it."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            token = self._row(db, self._digest(session_key), now)
        folder = self.root / token
        folder.mkdir(exist_ok=True)  # after the commit: a sweep then sees a fresh row and keeps it
        return folder

    def touch(self, session_key: str, now: float | None = None) -> None:
        """Mark the visitor's store as used now (it has one afterwards)."""
        self.store_dir(session_key, now)

    @contextmanager
    def lease(self, session_key: str, now: float | None = None) -> Iterator[Path]:
        """``with stores.lease(key) as folder:`` the visitor's store folder, which no sweep
        removes until the block ends (or ``lease_seconds`` have passed)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            token = self._row(db, self._digest(session_key), now)
            lease_id = db.execute("INSERT INTO leases (token, until) VALUES (?, ?)",
                                  (token, now + self.lease_seconds)).lastrowid
        folder = self.root / token
        try:
            folder.mkdir(exist_ok=True)
            yield folder
        finally:
            with self._transaction() as db:
                db.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
                db.execute("UPDATE visitors SET touched = MAX(touched, ?) WHERE token = ?", (time.time(), token))

    def sweep(self, now: float | None = None) -> list[Path]:
        """Remove the stores of visitors idle for ``idle_seconds`` with no live lease; returns
        the folders removed. Their rows go in one write transaction, before any file is touched;
        folders under ``root`` named like a token with no row (a sweep interrupted after its
        commit) go too."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            gone = [t for (t,) in db.execute(
                "SELECT token FROM visitors v WHERE touched < ? AND NOT EXISTS "
                "(SELECT 1 FROM leases l WHERE l.token = v.token AND l.until > ?)",
                (now - self.idle_seconds, now))]
            db.executemany("DELETE FROM visitors WHERE token = ?", [(t,) for t in gone])
            db.executemany("DELETE FROM leases WHERE token = ?", [(t,) for t in gone])
            known = {t for (t,) in db.execute("SELECT token FROM visitors")}
            # inside the transaction: a new visitor's folder is made only after its row commits
            leftovers = [p.name for p in self.root.iterdir()
                         if _TOKEN.match(p.name) and p.is_dir() and p.name not in known and p.name not in gone]
        removed = []
        for token in gone + leftovers:
            folder = self.root / token
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed

    def count(self) -> int:
        """How many visitors have a store now."""
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM visitors").fetchone()[0]

    # -- the sweeper thread --------------------------------------------------------------------------
    def start_sweeper(self, interval: float | None = None) -> threading.Thread:
        """A daemon thread that sweeps every ``interval`` seconds (default: a tenth of the idle
        time, between 1 s and 5 min) until :meth:`stop_sweeper`."""
        interval = float(interval) if interval else min(max(self.idle_seconds / 10, 1.0), 300.0)

        def run():
            while not self._stop.wait(interval):
                try:
                    self.sweep()
                except (OSError, sqlite3.Error) as e:  # a busy or full disk: try again next time
                    import sys

                    print(f"visitors: sweep failed: {e}", file=sys.stderr, flush=True)

        thread = threading.Thread(target=run, name="visitor-sweeper", daemon=True)
        thread.start()
        return thread

    def stop_sweeper(self) -> None:
        self._stop.set()
