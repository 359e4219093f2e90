"""The curation store: an SQLite database (WAL) plus content-addressed files.

A store is a folder::

    store.sqlite           samples, one row each (WAL mode; several processes may write)
    blobs/ab/<sha256>.png  images and masks (PNG), heat maps (.npy), by content hash
    blobs/ab/<sha256>.json each sample's record, its journal (pipeline.store.journal)
    owners/<token>.lock    one per open store, locked while it is open (pipeline.store.owners)

A write first records its intent (the blob keys it will put down) in the database, then
writes the files (to a temporary name, fsynced, then renamed into place), then commits the
row that refers to them, with the sample's journal file, in one transaction: a sample is
either fully there or not visible at all, whatever moment a process is killed, and no
repair or cleaner beside it takes its files for orphans. Adding a sample with a ``uid``
that is already present returns the existing row (idempotent retries). A store whose
database is gone is not an empty store: ``python -m pipeline check --rebuild`` restores
every sample from its journal.

Images are HWC uint8 RGB; masks are HW bool; heat maps HW float in [0, 1].

Which mask a sample has is decided here and nowhere else: the instance masks stored in
its row are the masks, full stop. :meth:`Store.masks` reads them for the gallery, every
exporter and the Insert tab alike. A threshold change (:meth:`Store.set_threshold`)
re-derives the generated instances' masks from the *stored* heat map in the same
transaction that records the threshold, so the studio (which thresholds the same
float16-rounded heat, see :func:`pipeline.masks.quantize_heat`) and every export agree to the pixel.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

from . import journal, owners
from .blobs import BlobsMixin
from .errors import StoreError, StoreLostError
from .integrity import IntegrityMixin
from .records import RECORD_FIELDS, STATUSES, Instance, Record, check_class, check_tag
from .schema import DB_NAME, SCHEMA, SCHEMA_VERSION, add_columns, use_wal
from .writes import WritesMixin


class Store(BlobsMixin, WritesMixin, IntegrityMixin):
    """Open (creating if asked) a store folder. Safe to use from several processes and threads.

    Every read-modify-write (:meth:`update`, :meth:`set_threshold`, :meth:`set_status` ...)
    runs in one ``BEGIN IMMEDIATE`` transaction, so concurrent writers never lose each
    other's changes. Each open store is an *owner* (:mod:`pipeline.store.owners`): a write
    records its intent (the blob keys it will put down) in the database before its first
    file, so a repair or a cleaner beside it never takes those files for orphans or
    leftovers. A damaged ``store.sqlite`` raises :class:`StoreError` naming the file and what
    to do; a missing or empty one beside the store's files raises :class:`StoreLostError`
    (``check --rebuild`` restores it); a damaged sample raises :class:`DamagedSampleError`.
    """

    SCHEMA_VERSION = SCHEMA_VERSION

    def __init__(self, root: str | os.PathLike, create: bool = True):
        self.root = Path(root)
        self._db = None
        self._owner = None
        self._lock = threading.RLock()
        if not self.root.exists():
            if not create:
                raise StoreError(f"no store at {self.root}")
            try:  # exist_ok: another thread or process may create it between the check and here
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the store folder {self.root}: {e.strerror}") from e
        elif not self.root.is_dir():
            raise StoreError(f"{self.root} is a file, not a store folder")
        self.db_path = self.root / DB_NAME
        if self.db_path.is_dir():
            raise StoreError(f"{self.db_path} is a folder; it must be the store's SQLite file")
        lost = self._lost_database()  # before SQLite creates an empty file in its place
        if lost:
            raise StoreLostError(lost)
        try:
            (self.root / "blobs").mkdir(exist_ok=True)
            self._owner = owners.Owner(self.root)
            self._db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None, check_same_thread=False)
            use_wal(self._db)  # retried: another opener may be switching a new database
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
            self._db.execute("PRAGMA busy_timeout=60000")
            self._db.executescript(SCHEMA)
            self._migrate()
            self._refuse_forgotten_samples()
            self.clean_leftovers()
        except sqlite3.DatabaseError as e:
            self.close()
            raise StoreError(self._db_problem(e)) from e
        except OSError as e:
            self.close()
            raise StoreError(f"cannot use the store folder {self.root}: {e}") from e
        except BaseException:
            self.close()
            raise

    # -- a database that is gone is not an empty store -------------------------------------
    def _lost_database(self) -> str | None:
        if self.db_path.exists() and self.db_path.stat().st_size > 0:
            return None
        blobs = self.root / "blobs"
        files = [p for p in blobs.glob("*/*") if not p.name.startswith(".")] if blobs.is_dir() else []
        if not files:
            return None
        n_records = sum(p.suffix == ".json" for p in files)
        state = "is missing" if not self.db_path.exists() else "is empty (0 bytes)"
        return (f"{self.db_path} {state}, but {blobs} holds {len(files)} files ({n_records} sample records): "
                f"this is not an empty store, and nothing was changed. Restore every sample from those files with "
                f"`python -m pipeline check --store {self.root} --rebuild` (or put back store.sqlite from a backup)")

    def _refuse_forgotten_samples(self) -> None:
        """A readable database that holds no sample while the journal records some (a fresh
        file put in place of the old one) is refused like a missing one."""
        if self._db.execute("SELECT EXISTS (SELECT 1 FROM samples)").fetchone()[0]:
            return
        if not journal.files(self.root / "blobs"):
            return
        with self._tx():  # under the write lock: a first sample being added is committed, or not journaled yet
            if self._db.execute("SELECT EXISTS (SELECT 1 FROM samples)").fetchone()[0]:
                return
            entries, _ = journal.read_all(self.root / "blobs")
        forgotten = [e for e in journal.latest(entries).values() if e.row is not None]
        if forgotten:
            raise StoreLostError(
                f"{self.db_path} holds no sample, but {len(forgotten)} samples are recorded under "
                f"{self.root / 'blobs'}: this database is not the store's, and nothing was changed. Move it aside "
                f"and restore the samples with `python -m pipeline check --store {self.root} --rebuild`")

    def _db_problem(self, e: Exception) -> str:
        text = str(e).lower()
        if "database is locked" in text or "database is busy" in text:
            return (f"{self.db_path} stayed locked by another process or thread for over a minute ({e}); nothing "
                    "was changed: try again when the other writer has finished")
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            return (f"cannot open or write {self.db_path} ({e}): check that the folder and the file are writable "
                    "by this user and the disk is not full or mounted read-only")
        return (f"{self.db_path} is damaged ({e}). Restore it from a backup, or rebuild it from the sample records "
                f"beside the images and masks under {self.root / 'blobs'} (nothing there is lost): "
                f"`python -m pipeline check --store {self.root} --rebuild` (the damaged file is moved aside)")

    def _migrate(self) -> None:
        add_columns(self._db)
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version >= self.SCHEMA_VERSION:
            return
        with self._tx():
            # Stores written before version 1 re-derived generated masks at export time from
            # a user threshold the row did not materialise: materialise them once.
            rows = self._db.execute("SELECT id FROM samples WHERE user_threshold IS NOT NULL AND heat_map IS NOT NULL")
            rederive = [r[0] for r in rows] if version < 1 else []
            self._db.execute(f"PRAGMA user_version={self.SCHEMA_VERSION}")
        for sid in rederive:
            try:
                rec = self.get(sid)
                self.set_threshold(sid, rec.user_threshold)
            except StoreError:
                pass  # a damaged or hand-edited sample keeps what it has
        # version 2: every sample gets its journal file (written in batches, each in its transaction)
        while True:
            with self._tx():
                ids = [r[0] for r in self._db.execute("SELECT id FROM samples WHERE journal IS NULL LIMIT 500")]
                for sid in ids:
                    self._journal(sid)
            if not ids:
                break

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                if self._owner is not None:  # intents this store never finished (its writers were stopped)
                    self._db.execute("DELETE FROM pending WHERE owner = ?", (self._owner.token,))
            self._db.close()
            self._db = None
        if self._owner is not None:
            self._owner.close()
            self._owner = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def _tx(self):
        """One write transaction, taken before the first read (no lost updates). The
        connection may be shared by threads: one transaction at a time."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as e:
                if self._user_error(e) is e:
                    raise
                raise self._user_error(e) from e
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                if isinstance(e, sqlite3.DatabaseError) and self._user_error(e) is not e:
                    raise self._user_error(e) from e
                raise

    def _user_error(self, e: sqlite3.DatabaseError) -> Exception:
        """A database error as the user should see it: read-only, disk full, damaged file, with
        what to do (a lock timeout stays what it is)."""
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
            return e
        return StoreError(self._db_problem(e))

    def _execute(self, sql: str, args=()) -> sqlite3.Cursor:
        cur = self._db.cursor()
        cur.row_factory = sqlite3.Row
        try:
            return cur.execute(sql, args)
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise
            raise StoreError(self._db_problem(e)) from e

    def _record(self, row: sqlite3.Row) -> Record:
        d = dict(row)
        for k in ("classes", "tags", "inserted", "meta"):
            d[k] = json.loads(d[k])
        d["instances"] = [Instance(**i) for i in json.loads(d["instances"])]
        return Record(**{k: v for k, v in d.items() if k in RECORD_FIELDS})

    def get(self, sample_id: int) -> Record:
        row = self._execute("SELECT * FROM samples WHERE id=?", (int(sample_id),)).fetchone()
        if row is None:
            raise StoreError(f"no sample #{sample_id} in {self.root}")
        return self._record(row)

    def get_by_uid(self, uid: str) -> Record | None:
        row = self._execute("SELECT * FROM samples WHERE uid=?", (uid,)).fetchone()
        return None if row is None else self._record(row)

    def query(self, status: str | Sequence[str] | None = None, classes: Sequence[str] | None = None,
              tags: Sequence[str] | None = None, limit: int | None = None, offset: int = 0, run: str | None = None,
              run_class: str | None = None, run_k_below: int | None = None) -> list[Record]:
        """Samples matching every filter given (any of the classes, all of the tags, the batch
        run, its class, candidates k < ``run_k_below``), by id; ``limit``/``offset`` page them."""
        where, args = self._where(status, classes, tags, run, run_class)
        if run_k_below is not None:
            where.append("run_k < ?")
            args.append(int(run_k_below))
        sql = "SELECT * FROM samples" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        return [self._record(r) for r in self._execute(sql, args)]

    def _where(self, status=None, classes=None, tags=None, run=None, run_class=None, uid_prefix=None,
               uid_suffix=None, meta_is=None, meta_not=None) -> tuple[list[str], list]:
        where, args = [], []
        if status:
            statuses = [status] if isinstance(status, str) else list(status)
            bad = [s for s in statuses if s not in STATUSES]
            if bad:
                raise StoreError(f"bad status {bad}; one of {STATUSES}")
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
        if classes:
            where.append(f"EXISTS (SELECT 1 FROM json_each(samples.classes) WHERE value IN ({','.join('?' * len(classes))}))")
            args += [check_class(c) for c in classes]
        for t in tags or ():
            where.append("EXISTS (SELECT 1 FROM json_each(samples.tags) WHERE value = ?)")
            args.append(check_tag(t))
        for col, value in (("run", run), ("run_class", run_class)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(str(value))
        if uid_prefix:
            where.append("substr(uid, 1, ?) = ?")
            args += [len(uid_prefix), uid_prefix]
        if uid_suffix:
            where.append("substr(uid, -?) = ?")
            args += [len(uid_suffix), uid_suffix]
        if meta_is is not None:
            where.append("json_extract(meta, ?) = ?")
            args += [_meta_path(meta_is[0]), meta_is[1]]
        if meta_not is not None:
            where.append("COALESCE(json_extract(meta, ?), '') != ?")
            args += [_meta_path(meta_not[0]), meta_not[1]]
        return where, args

    def ids(self, *, status: str | Sequence[str] | None = None, run: str | None = None, run_class: str | None = None,
            uid_prefix: str | None = None, uid_suffix: str | None = None, meta_is: tuple[str, object] | None = None,
            meta_not: tuple[str, object] | None = None, order: str = "id") -> list[int]:
        """Ids of the samples matching every filter given, without reading their rows:
        ``uid_prefix`` / ``uid_suffix`` match the uid's ends; ``meta_is=(path, value)`` /
        ``meta_not=(path, value)`` compare the meta at a dotted path ("batch.role"; a missing
        value counts as "" for ``meta_not``); ``order`` is "id" or "run_k"."""
        if order not in ("id", "run_k"):
            raise StoreError(f"bad order {order!r}; one of id, run_k")
        where, args = self._where(status, None, None, run, run_class, uid_prefix, uid_suffix, meta_is, meta_not)
        sql = "SELECT id FROM samples" + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order}, id"
        return [r[0] for r in self._db.execute(sql, args)]

    def uids(self, *, uid_prefix: str | None = None, uid_suffix: str | None = None, run: str | None = None) -> set[str]:
        """The uids of the samples matching the filters (as :meth:`ids`)."""
        where, args = self._where(None, None, None, run, None, uid_prefix, uid_suffix)
        return {r[0] for r in self._db.execute("SELECT uid FROM samples" + (" WHERE " + " AND ".join(where)
                                                                            if where else ""), args)}

    def group_count(self, key: str, *, status: str | Sequence[str] | None = None, run: str | None = None,
                    run_class: str | None = None, uid_prefix: str | None = None, uid_suffix: str | None = None,
                    meta_is: tuple[str, object] | None = None) -> dict:
        """{value: how many samples} over the samples matching the filters (as :meth:`ids`),
        grouped by ``key``: "notes", "status", "run_class", or "meta.<dotted path>". Counted in SQL."""
        if key.startswith("meta."):
            expr, args0 = "json_extract(meta, ?)", [_meta_path(key[5:])]
        elif key in ("notes", "status", "run_class"):
            expr, args0 = key, []
        else:
            raise StoreError(f"cannot group samples by {key!r}; by notes, status, run_class or meta.<path>")
        where, args = self._where(status, None, None, run, run_class, uid_prefix, uid_suffix, meta_is)
        sql = (f"SELECT {expr}, COUNT(*) FROM samples" + (" WHERE " + " AND ".join(where) if where else "")
               + " GROUP BY 1")
        return dict(self._db.execute(sql, args0 + args).fetchall())

    def count(self, status: str | Sequence[str] | None = None, classes: Sequence[str] | None = None,
              tags: Sequence[str] | None = None, run: str | None = None, run_class: str | None = None) -> int:
        """How many samples :meth:`query` would return, counted in SQL (no row is read)."""
        where, args = self._where(status, classes, tags, run, run_class)
        sql = "SELECT COUNT(*) FROM samples" + (" WHERE " + " AND ".join(where) if where else "")
        return self._execute(sql, args).fetchone()[0]

    def run_keys(self, run: str) -> dict[str, set[int]]:
        """class -> the k of every candidate of batch run ``run`` in the store (read off the index)."""
        out: dict[str, set[int]] = {}
        for c, k in self._db.execute("SELECT run_class, run_k FROM samples WHERE run = ?", (str(run),)):
            out.setdefault(c, set()).add(k)
        return out

    def classes(self) -> list[str]:
        rows = self._execute("SELECT DISTINCT value FROM samples, json_each(samples.classes) ORDER BY value")
        return [r[0] for r in rows]


def _meta_path(dotted: str) -> str:
    """A dotted meta path ("batch.role") as a JSON path ("$.batch.role"); names only."""
    parts = str(dotted).split(".")
    if not all(p.isidentifier() for p in parts):
        raise StoreError(f"bad meta path {dotted!r}: dotted names only")
    return "$." + ".".join(parts)
