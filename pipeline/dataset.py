"""The curation store: an SQLite database (WAL) plus content-addressed files.

A store is a folder::

    store.sqlite          samples, one row each (WAL mode; several processes may write)
    blobs/ab/<sha256>.png images and masks (PNG), heat maps (.npy), by content hash

Files are written first (to a temporary name, fsynced, then renamed into place) and the
row that refers to them is committed after, in one transaction: a sample is either fully
there or not visible at all, whatever moment a process is killed. Adding a sample with a
``uid`` that is already present returns the existing row (idempotent retries).

Images are HWC uint8 RGB; masks are HW bool; heat maps HW float in [0, 1].
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .errors import PipelineError
from .images import ImageError, check_image, load_image_file  # noqa: F401 (re-exported: older imports use this module)

STATUSES = ("pending", "accepted", "rejected")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
_CLASS = re.compile(r"^[^\x00-\x1f/\\]{1,64}$")

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
    updated REAL NOT NULL,
    run TEXT,
    run_class TEXT,
    run_k INTEGER
);
CREATE INDEX IF NOT EXISTS samples_status ON samples(status);
"""
# batch runs (pipeline.batch) file each candidate under (run, run_class, run_k): indexed, so a
# resumed run finds what is done, and counts what it kept, in SQL instead of decoding every row
RUN_COLUMNS = {"run": "TEXT", "run_class": "TEXT", "run_k": "INTEGER"}
RUN_INDEX = "CREATE INDEX IF NOT EXISTS samples_run ON samples(run, run_class, run_k)"


class StoreError(PipelineError, ValueError):
    """Bad input for the store; nothing was written."""


def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG.match(tag) or ".." in tag:
        raise StoreError(f"bad tag {tag!r}: use letters, digits, space, '_', '-', '.' (at most 64), no '..'")
    return tag


def check_class(name: str) -> str:
    if not isinstance(name, str) or not _CLASS.match(name.strip()) or name.strip() in (".", ".."):
        raise StoreError(f"bad class name {name!r}: 1-64 characters, no '/' '\\' or control characters")
    return name.strip()


@dataclass
class Instance:
    """One object in a sample: its class, its mask (a blob key) and where it came from."""

    class_name: str
    mask: str
    bbox: list[int]  # XYXY, x2/y2 exclusive
    source: str = "generated"  # generated | inserted | imported | user


@dataclass
class Record:
    """A stored sample as read back (blobs by key; load them with Store.image/mask/array)."""

    id: int
    uid: str
    image: str
    width: int
    height: int
    classes: list[str]
    prompt: str
    seed: int | None
    model: str
    heat_map: str | None
    threshold: float | None
    user_threshold: float | None
    refined_mask: str | None
    instances: list[Instance]
    inserted: list[dict]
    status: str
    tags: list[str]
    notes: str
    meta: dict
    created: float
    updated: float
    run: str | None = None  # batch candidates: the run key, class and k (indexed columns)
    run_class: str | None = None
    run_k: int | None = None

    @property
    def effective_threshold(self) -> float | None:
        return self.user_threshold if self.user_threshold is not None else self.threshold


def _encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class Store:
    """Open (creating if asked) a store folder. Safe to use from several processes."""

    def __init__(self, root: str | os.PathLike, create: bool = True):
        self.root = Path(root)
        if not self.root.exists():
            if not create:
                raise StoreError(f"no store at {self.root}")
            self.root.mkdir(parents=True)
        (self.root / "blobs").mkdir(exist_ok=True)
        self.db_path = self.root / "store.sqlite"
        self._db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
        self._db.execute("PRAGMA busy_timeout=60000")
        self._db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a store made by an older version up to this schema (idempotent)."""
        have = {r[1] for r in self._db.execute("PRAGMA table_info(samples)")}
        if any(c not in have for c in RUN_COLUMNS):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                have = {r[1] for r in self._db.execute("PRAGMA table_info(samples)")}  # another process may have won
                for c, kind in RUN_COLUMNS.items():
                    if c not in have:
                        self._db.execute(f"ALTER TABLE samples ADD COLUMN {c} {kind}")
                # older batch runs kept run/class/k in meta only: copy them into the columns
                self._db.execute("UPDATE samples SET run = json_extract(meta, '$.batch.run'), "
                                 "run_class = json_extract(meta, '$.batch.class'), "
                                 "run_k = json_extract(meta, '$.batch.k') "
                                 "WHERE run IS NULL AND json_extract(meta, '$.batch.role') = 'candidate'")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._db.execute(RUN_INDEX)

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- blobs ---------------------------------------------------------------------------
    def _blob_path(self, key: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}\.(png|npy)", key):
            raise StoreError(f"bad blob key {key!r}")
        return self.root / "blobs" / key[:2] / key

    def put_bytes(self, data: bytes, ext: str) -> str:
        key = hashlib.sha256(data).hexdigest() + "." + ext
        path = self._blob_path(key)
        if path.exists():
            return key
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{key}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic; a concurrent writer of the same content is harmless
        return key

    def put_image(self, image: np.ndarray) -> str:
        image = _store_image(image)
        return self.put_bytes(_encode_png(image), "png")

    def put_mask(self, mask: np.ndarray) -> str:
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise StoreError(f"a mask must be HW, got shape {mask.shape}")
        return self.put_bytes(_encode_png(mask.astype(bool).astype(np.uint8) * 255), "png")

    def put_array(self, array: np.ndarray) -> str:
        buf = io.BytesIO()
        np.save(buf, np.asarray(array), allow_pickle=False)
        return self.put_bytes(buf.getvalue(), "npy")

    def blob_bytes(self, key: str) -> bytes:
        return self._blob_path(key).read_bytes()

    def blob_path(self, key: str) -> Path:
        return self._blob_path(key)

    def image(self, key: str) -> np.ndarray:
        return np.asarray(Image.open(self._blob_path(key)).convert("RGB"))

    def mask(self, key: str) -> np.ndarray:
        return np.asarray(Image.open(self._blob_path(key))) > 127

    def array(self, key: str) -> np.ndarray:
        return np.load(self._blob_path(key), allow_pickle=False)

    # -- samples ---------------------------------------------------------------------------
    def add(self, image: np.ndarray, classes: Sequence[str], *, instances: Sequence[tuple[str, np.ndarray]] = (),
            uid: str | None = None, prompt: str = "", seed: int | None = None, model: str = "",
            heat_map: np.ndarray | None = None, threshold: float | None = None, refined_mask: np.ndarray | None = None,
            status: str = "pending", tags: Iterable[str] = (), notes: str = "", meta: dict | None = None,
            inserted: Sequence[dict] = (), instance_sources: Sequence[str] | None = None,
            run: tuple[str, str, int] | None = None) -> int:
        """Store a sample; returns its id. ``instances``: (class name, HW bool mask) pairs;
        ``run``: (run key, class, k) of a batch candidate, kept in indexed columns.

        Everything is validated before anything is written; with a ``uid`` already in the
        store, nothing is written and the existing id is returned."""
        image = _store_image(image)
        h, w = image.shape[:2]
        classes = [check_class(c) for c in classes]
        if not classes:
            raise StoreError("a sample needs at least one class")
        if status not in STATUSES:
            raise StoreError(f"bad status {status!r}; one of {STATUSES}")
        tags = [check_tag(t) for t in tags]
        masks = []
        for name, m in instances:
            m = np.asarray(m)
            if m.shape != (h, w):
                raise StoreError(f"instance mask of {name!r} is {m.shape}, the image is {(h, w)}")
            masks.append((check_class(name), m.astype(bool)))
        for label, arr in (("heat map", heat_map), ("refined mask", refined_mask)):
            if arr is not None and np.asarray(arr).shape != (h, w):
                raise StoreError(f"{label} is {np.asarray(arr).shape}, the image is {(h, w)}")
        if threshold is not None and not 0 <= threshold <= 1:
            raise StoreError(f"threshold {threshold} is outside [0, 1]")
        uid = uid or uuid.uuid4().hex
        existing = self._db.execute("SELECT id FROM samples WHERE uid=?", (uid,)).fetchone()
        if existing:
            return existing[0]
        from .masks import bbox

        sources = list(instance_sources or ["generated"] * len(masks))
        inst = [asdict(Instance(n, self.put_mask(m), list(bbox(m) or (0, 0, 0, 0)), s))
                for (n, m), s in zip(masks, sources)]
        row = dict(uid=uid, image=self.put_image(image), width=w, height=h, classes=json.dumps(classes),
                   prompt=prompt, seed=seed, model=model,
                   heat_map=None if heat_map is None else self.put_array(np.asarray(heat_map, np.float16)),
                   threshold=threshold, refined_mask=None if refined_mask is None else self.put_mask(refined_mask),
                   instances=json.dumps(inst), inserted=json.dumps(list(inserted)), status=status,
                   tags=json.dumps(tags), notes=notes, meta=json.dumps(meta or {}), created=time.time(),
                   updated=time.time())
        if run is not None:
            row.update(run=str(run[0]), run_class=str(run[1]), run_k=int(run[2]))
        cols = ", ".join(row)
        marks = ", ".join("?" * len(row))
        # INSERT OR IGNORE + re-read: two processes racing on one uid both get the same id.
        self._db.execute(f"INSERT OR IGNORE INTO samples ({cols}) VALUES ({marks})", tuple(row.values()))
        return self._db.execute("SELECT id FROM samples WHERE uid=?", (uid,)).fetchone()[0]

    def _record(self, row: sqlite3.Row) -> Record:
        d = dict(row)
        for k in ("classes", "tags", "inserted", "meta"):
            d[k] = json.loads(d[k])
        d["instances"] = [Instance(**i) for i in json.loads(d["instances"])]
        return Record(**d)

    def _cursor(self):
        cur = self._db.cursor()
        cur.row_factory = sqlite3.Row
        return cur

    def get(self, sample_id: int) -> Record:
        row = self._cursor().execute("SELECT * FROM samples WHERE id=?", (int(sample_id),)).fetchone()
        if row is None:
            raise KeyError(f"no sample {sample_id} in {self.root}")
        return self._record(row)

    def get_by_uid(self, uid: str) -> Record | None:
        row = self._cursor().execute("SELECT * FROM samples WHERE uid=?", (uid,)).fetchone()
        return None if row is None else self._record(row)

    def query(self, status: str | Sequence[str] | None = None, classes: Sequence[str] | None = None,
              tags: Sequence[str] | None = None, limit: int | None = None, run: str | None = None,
              run_class: str | None = None, run_k_below: int | None = None) -> list[Record]:
        """Samples matching every filter given (any of the classes, all of the tags, the batch
        run, its class, candidates k < ``run_k_below``), by id."""
        where, args = self._where(status, classes, tags, run, run_class)
        if run_k_below is not None:
            where.append("run_k < ?")
            args.append(int(run_k_below))
        sql = "SELECT * FROM samples" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [self._record(r) for r in self._cursor().execute(sql, args)]

    def _where(self, status, classes, tags, run, run_class) -> tuple[list[str], list]:
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
        return where, args

    def count(self, status: str | Sequence[str] | None = None, classes: Sequence[str] | None = None,
              tags: Sequence[str] | None = None, run: str | None = None, run_class: str | None = None) -> int:
        """How many samples :meth:`query` would return, counted in SQL (no row is read)."""
        where, args = self._where(status, classes, tags, run, run_class)
        sql = "SELECT COUNT(*) FROM samples" + (" WHERE " + " AND ".join(where) if where else "")
        return self._db.execute(sql, args).fetchone()[0]

    def run_keys(self, run: str) -> dict[str, set[int]]:
        """class -> the k of every candidate of batch run ``run`` in the store (read off the index)."""
        out: dict[str, set[int]] = {}
        for c, k in self._db.execute("SELECT run_class, run_k FROM samples WHERE run = ?", (str(run),)):
            out.setdefault(c, set()).add(k)
        return out

    def sql(self, query: str, args: Sequence = ()) -> list[tuple]:
        """Read-only SQL over the ``samples`` table, for reports that aggregate (GROUP BY ...)."""
        words = query.upper().split()
        head = " ".join(words[3:4] if words[:3] == ["EXPLAIN", "QUERY", "PLAN"] else words[:1])
        if head != "SELECT":
            raise StoreError("Store.sql runs SELECT statements only; change samples with add/update")
        return self._db.execute(query, tuple(args)).fetchall()

    def update(self, sample_id: int, *, status: str | None = None, tags: Iterable[str] | None = None,
               notes: str | None = None, user_threshold: float | None | str = "keep",
               instances: Sequence[tuple[str, np.ndarray, str]] | None = None,
               inserted: Sequence[dict] | None = None, image: np.ndarray | None = None,
               classes: Sequence[str] | None = None, meta: dict | None = None) -> Record:
        """Change a sample; validated first, then one transaction. Returns the new record.

        ``meta`` is merged into the sample's meta (top-level keys replaced)."""
        rec = self.get(sample_id)
        sets: dict = {}
        if status is not None:
            if status not in STATUSES:
                raise StoreError(f"bad status {status!r}; one of {STATUSES}")
            sets["status"] = status
        if tags is not None:
            sets["tags"] = json.dumps(sorted({check_tag(t) for t in tags}))
        if notes is not None:
            sets["notes"] = str(notes)
        if user_threshold != "keep":
            if user_threshold is not None and not 0 <= float(user_threshold) <= 1:
                raise StoreError(f"threshold {user_threshold} is outside [0, 1]")
            sets["user_threshold"] = user_threshold
        if classes is not None:
            sets["classes"] = json.dumps([check_class(c) for c in classes])
        h, w = rec.height, rec.width
        if image is not None:
            image = _store_image(image)
            if image.shape[:2] != (h, w):
                raise StoreError(f"new image is {image.shape[:2]}, the sample is {(h, w)}")
        if instances is not None:
            from .masks import bbox

            checked = []
            for name, m, source in instances:
                m = np.asarray(m).astype(bool)
                if m.shape != (h, w):
                    raise StoreError(f"instance mask of {name!r} is {m.shape}, the image is {(h, w)}")
                checked.append((check_class(name), m, source))
            sets["instances"] = json.dumps([asdict(Instance(n, self.put_mask(m), list(bbox(m) or (0, 0, 0, 0)), s))
                                            for n, m, s in checked])
        if meta is not None:
            sets["meta"] = json.dumps({**rec.meta, **meta})
        if inserted is not None:
            sets["inserted"] = json.dumps(list(inserted))
        if image is not None:
            sets["image"] = self.put_image(image)
        if not sets:
            return rec
        sets["updated"] = time.time()
        self._db.execute(f"UPDATE samples SET {', '.join(k + '=?' for k in sets)} WHERE id=?",
                         (*sets.values(), rec.id))
        return self.get(rec.id)

    def set_status(self, ids: Iterable[int], status: str) -> int:
        """Bulk accept/reject; returns how many rows changed."""
        if status not in STATUSES:
            raise StoreError(f"bad status {status!r}; one of {STATUSES}")
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        cur = self._db.execute(f"UPDATE samples SET status=?, updated=? WHERE id IN ({','.join('?' * len(ids))})",
                               (status, time.time(), *ids))
        return cur.rowcount

    def classes(self) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT value FROM samples, json_each(samples.classes) ORDER BY value")
        return [r[0] for r in rows]


def _store_image(image: np.ndarray) -> np.ndarray:
    """check_image with the store's error (nothing is written for a bad image)."""
    try:
        return check_image(image)
    except ImageError as e:
        raise StoreError(str(e)) from e
