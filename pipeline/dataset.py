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
import hashlib
import io
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .masks import HEAT_DTYPE, HeatMapError, check_heat, quantize_heat
from .errors import ConfigError, check_seed
from .store import journal, owners
from .store.errors import DamagedSampleError, StoreError, StoreLostError  # noqa: F401 (re-exported)
from .store.schema import DB_NAME, SCHEMA, SCHEMA_VERSION, add_columns, next_revision
from .store.schema import ADDED_COLUMNS as RUN_COLUMNS, RUN_INDEX  # noqa: F401 (re-exported: older imports)
from .images import ImageError, check_image, load_image_file  # noqa: F401 (re-exported: older imports use this module)

STATUSES = ("pending", "accepted", "rejected")
# Where an instance mask came from. Only "generated" masks (the heat map at the sample's
# threshold) are re-derived when the threshold changes; the others are kept as stored.
SOURCES = ("generated", "refined", "user", "inserted", "imported")
_BLOB_KEY = re.compile(r"[0-9a-f]{64}\.(png|npy|json)")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
_CLASS = re.compile(r"^[^\x00-\x1f/\\:,]{1,64}$")



def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG.match(tag) or ".." in tag:
        raise StoreError(f"bad tag {tag!r}: use letters, digits, space, '_', '-', '.' (at most 64), no '..'")
    return tag


def check_class(name: str) -> str:
    if not isinstance(name, str) or not _CLASS.match(name.strip()) or name.strip() in (".", ".."):
        raise StoreError(f"bad class name {name!r}: 1-64 characters, no '/' '\\' ':' ',' or control characters "
                         "(':' and ',' separate fields of the exports' label maps)")
    return name.strip()


@dataclass
class Instance:
    """One object in a sample: its class, its mask (a blob key) and where it came from."""

    class_name: str
    mask: str
    bbox: list[int]  # XYXY, x2/y2 exclusive
    source: str = "generated"  # one of SOURCES
    iscrowd: bool = False  # a COCO crowd region (one mask over a group of objects), kept from an import


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


_RECORD_FIELDS = {f.name for f in fields(Record)}


def _encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _encode_mask(mask: np.ndarray) -> bytes:
    return _encode_png(np.asarray(mask).astype(bool).astype(np.uint8) * 255)


def _encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def _key(data: bytes, ext: str) -> str:
    return hashlib.sha256(data).hexdigest() + "." + ext


# a temporary blob file: ".<key>.<intent>.tmp" (the intent of the write putting it down)
_TMP = re.compile(r"\.([0-9a-f]{64}\.(?:png|npy|json))\.([0-9a-f]{32})\.tmp")


@dataclass(frozen=True)
class StatusAnswer:
    """What a status change left stored, read in the transaction that decided it: the
    sample's ``status`` after the call, whether this call ``changed`` it, and how many status
    changes its history holds then (``history_len``: this change's place in the history)."""

    sample_id: int
    status: str
    changed: bool
    history_len: int


class Store:
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
            try:
                self.root.mkdir(parents=True)
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
            self._db.execute("PRAGMA journal_mode=WAL")
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

    # -- blobs ---------------------------------------------------------------------------
    def _blob_path(self, key: str) -> Path:
        if not isinstance(key, str) or not _BLOB_KEY.fullmatch(key):
            raise StoreError(f"bad blob key {key!r}")
        return self.root / "blobs" / key[:2] / key

    def _write_blob(self, key: str, data: bytes, intent: str) -> None:
        """Put one blob down (temporary name, fsync, atomic rename). Call only with ``intent``
        pending, or inside a write transaction: that is what keeps cleaners off it."""
        path = self._blob_path(key)
        if path.exists():
            return
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{key}.{intent}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic; a concurrent writer of the same content is harmless
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write to the store {self.root}: {e.strerror or e}") from e

    @contextlib.contextmanager
    def _intent(self, blobs: dict[str, bytes]):
        """Record the intent to write ``blobs`` (key -> bytes), committed before the first file
        is put down, then write them. Inside the block, commit the row that refers to them;
        the intent is dropped on leaving. Until then no repair or cleaner touches those keys."""
        intent = uuid.uuid4().hex
        if not blobs:
            yield intent
            return
        now = time.time()
        with self._tx():
            self._db.executemany("INSERT INTO pending (intent, owner, key, created) VALUES (?, ?, ?, ?)",
                                 [(intent, self._owner.token, k, now) for k in blobs])
        try:
            for key, data in blobs.items():
                self._write_blob(key, data, intent)
            yield intent
        finally:
            with self._lock, contextlib.suppress(sqlite3.Error):  # else dropped when this store closes
                self._db.execute("DELETE FROM pending WHERE intent = ?", (intent,))

    def put_bytes(self, data: bytes, ext: str) -> str:
        """Write one blob; returns its key. No row refers to it: it is an orphan until a
        sample does (add and update write their blobs themselves, under their intent)."""
        key = _key(data, ext)
        with self._intent({key: data}):
            pass
        return key

    def put_image(self, image: np.ndarray) -> str:
        return self.put_bytes(_encode_png(_store_image(image)), "png")

    def put_mask(self, mask: np.ndarray) -> str:
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise StoreError(f"a mask must be HW, got shape {mask.shape}")
        return self.put_bytes(_encode_mask(mask), "png")

    def put_array(self, array: np.ndarray) -> str:
        return self.put_bytes(_encode_npy(array), "npy")

    def _journal(self, sample_id: int) -> None:
        """Inside a write transaction: give the sample the next revision and write its whole
        row as its journal file (content-addressed, beside its blobs), pointed at by the row."""
        revision = next_revision(self._db)
        self._db.execute("UPDATE samples SET revision = ? WHERE id = ?", (revision, sample_id))
        row = self._execute("SELECT * FROM samples WHERE id = ?", (sample_id,)).fetchone()
        data = journal.encode(dict(row))
        key = _key(data, "json")
        self._write_blob(key, data, uuid.uuid4().hex)  # under the write lock: no cleaner runs meanwhile
        self._db.execute("UPDATE samples SET journal = ? WHERE id = ?", (key, sample_id))

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

    def blob_problem(self, key: str, verify_hash: bool = False) -> str | None:
        """Why a blob cannot be used (missing, empty, wrong hash), or None."""
        path = self._blob_path(key)
        if not path.is_file():
            return f"file {key} is missing"
        if verify_hash:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != key.split(".")[0]:
                return f"file {key} does not match its hash (truncated or overwritten)"
        elif path.stat().st_size == 0:
            return f"file {key} is empty"
        return None

    # -- sample reads (the one mask rule) -------------------------------------------------
    def load_image(self, rec: Record) -> np.ndarray:
        """A sample's image, HWC uint8 RGB; DamagedSampleError names the sample if unreadable."""
        return self._read(rec, self.image, rec.image)

    def masks(self, rec: Record) -> list[tuple[str, np.ndarray]]:
        """The sample's instance masks, (class name, (H, W) bool), back to front (later ones
        are on top). This is what the gallery shows, what every export writes and what the
        Insert tab starts from: the masks stored in the row, nothing re-derived on reading."""
        out = []
        for inst in rec.instances:
            m = self._read(rec, self.mask, inst.mask)
            if m.shape != (rec.height, rec.width):
                raise DamagedSampleError(rec.id, f"mask {inst.mask} is {m.shape}, the image {(rec.height, rec.width)}")
            out.append((inst.class_name, m))
        return out

    def heat(self, rec: Record) -> np.ndarray | None:
        """The stored heat map as (H, W) float32, or None."""
        return None if not rec.heat_map else self._read(rec, self.array, rec.heat_map).astype(np.float32)

    def _read(self, rec: Record, reader, key: str):
        try:
            return reader(key)
        except FileNotFoundError:
            raise DamagedSampleError(rec.id, f"file {key} is missing") from None
        except (OSError, ValueError, SyntaxError) as e:  # PIL/numpy on a truncated or corrupt file
            raise DamagedSampleError(rec.id, f"file {key} cannot be read ({type(e).__name__}: {e})") from None

    def problems(self, rec: Record, verify_hash: bool = False) -> list[str]:
        """Every reason this sample cannot be exported (missing/corrupt files); [] if none."""
        keys = [rec.image] + [i.mask for i in rec.instances] + [k for k in (rec.heat_map, rec.refined_mask) if k]
        return [p for p in (self.blob_problem(k, verify_hash) for k in keys) if p]

    # -- samples ---------------------------------------------------------------------------
    def add(self, image: np.ndarray, classes: Sequence[str], *, instances: Sequence[tuple[str, np.ndarray]] = (),
            uid: str | None = None, prompt: str = "", seed: int | None = None, model: str = "",
            heat_map: np.ndarray | None = None, threshold: float | None = None, refined_mask: np.ndarray | None = None,
            status: str = "pending", tags: Iterable[str] = (), notes: str = "", meta: dict | None = None,
            inserted: Sequence[dict] = (), instance_sources: Sequence[str] | None = None,
            user_threshold: float | None = None, replace: bool = False,
            instance_crowd: Sequence[bool] | None = None, run: tuple[str, str, int] | None = None) -> int:
        """Store a sample; returns its id. ``instances``: (class name, HW bool mask) pairs,
        back to front; ``instance_sources`` says where each came from (:data:`SOURCES`);
        ``instance_crowd``: per instance, whether it is a COCO crowd region (default: none are);
        ``run``: (run key, class, k) of a batch candidate, kept in indexed columns.

        A ``generated`` instance of a sample with a heat map must be exactly the stored
        heat at the sample's threshold (``user_threshold`` if given, else ``threshold``),
        less what later inserted instances cover; anything else is refused, so what the
        store says is threshold-derived can always be re-derived. Everything is validated
        before anything is written. With a ``uid`` already in the store, nothing is written
        and the existing id is returned, unless ``replace``: then that row's content and
        status are replaced (one inspected sample stays one row however often it is saved).
        Whether the uid is there is decided in the transaction that writes the row, so of
        two callers saving one uid at once, the later replaces the earlier's save (and its
        status change is in the history) instead of being silently ignored."""
        image = _store_image(image)
        h, w = image.shape[:2]
        classes = [check_class(c) for c in classes]
        if not classes:
            raise StoreError("a sample needs at least one class")
        if status not in STATUSES:
            raise StoreError(f"bad status {status!r}; one of {STATUSES}")
        tags = [check_tag(t) for t in tags]
        sources = list(instance_sources or ["generated"] * len(instances))
        if len(sources) != len(instances):
            raise StoreError(f"{len(instances)} instances but {len(sources)} instance sources")
        bad = [s for s in sources if s not in SOURCES]
        if bad:
            raise StoreError(f"bad instance source {bad[0]!r}; one of {SOURCES}")
        masks = []
        for name, m in instances:
            m = np.asarray(m)
            if m.shape != (h, w):
                raise StoreError(f"instance mask of {name!r} is {m.shape}, the image is {(h, w)}")
            masks.append((check_class(name), m.astype(bool)))
        for label, arr in (("heat map", heat_map), ("refined mask", refined_mask)):
            if arr is not None and np.asarray(arr).shape != (h, w):
                raise StoreError(f"{label} is {np.asarray(arr).shape}, the image is {(h, w)}")
        if seed is not None:
            try:
                seed = check_seed(seed)
            except ConfigError as e:
                raise StoreError(str(e)) from e
        threshold = _check_threshold(threshold, "threshold")
        user_threshold = _check_threshold(user_threshold, "user threshold")
        if heat_map is not None:
            try:
                check_heat(heat_map, (h, w))
            except HeatMapError as e:
                raise StoreError(str(e)) from e
        heat = None if heat_map is None else quantize_heat(heat_map)
        effective = user_threshold if user_threshold is not None else threshold
        if heat is not None and effective is not None:
            derived = _derive_generated(heat, effective, [m for _, m in masks], sources)
            for k, (name, m) in enumerate(masks):
                if derived[k] is not None and not np.array_equal(derived[k], m):
                    raise StoreError(f"instance {k} ({name!r}) is marked 'generated' but is not the heat map at "
                                     f"threshold {effective}; store an edited or refined mask as 'user' or 'refined'")
        crowd = [bool(c) for c in (instance_crowd or [False] * len(masks))]
        if len(crowd) != len(masks):
            raise StoreError(f"{len(crowd)} crowd flags for {len(masks)} instances")
        uid = uid or uuid.uuid4().hex
        existing = self._execute("SELECT id FROM samples WHERE uid=?", (uid,)).fetchone()
        if existing and not replace:
            return existing[0]  # an idempotent retry: nothing to write (checked again in the transaction)
        from .masks import bbox

        blobs: dict[str, bytes] = {}

        def put(data: bytes, ext: str) -> str:
            key = _key(data, ext)
            blobs[key] = data
            return key

        inst = [asdict(Instance(n, put(_encode_mask(m), "png"), list(bbox(m) or (0, 0, 0, 0)), s, c))
                for (n, m), s, c in zip(masks, sources, crowd)]
        now = time.time()
        row = dict(uid=uid, image=put(_encode_png(image), "png"), width=w, height=h, classes=json.dumps(classes),
                   prompt=prompt, seed=seed, model=model,
                   heat_map=None if heat is None else put(_encode_npy(heat.astype(HEAT_DTYPE)), "npy"),
                   threshold=threshold, user_threshold=user_threshold,
                   refined_mask=None if refined_mask is None else put(_encode_mask(refined_mask), "png"),
                   instances=json.dumps(inst), inserted=json.dumps(list(inserted)), status=status,
                   tags=json.dumps(tags), notes=notes, meta=json.dumps(meta or {}), created=now, updated=now)
        if run is not None:
            row.update(run=str(run[0]), run_class=str(run[1]), run_k=int(run[2]))
        with self._intent(blobs), self._tx():
            cur = self._execute("SELECT id, status, meta FROM samples WHERE uid=?", (uid,)).fetchone()
            if cur is not None and not replace:
                return cur["id"]
            if cur is not None:
                # The same inspected sample saved again (accept, then reject...): one row, its
                # content and status replaced in one transaction; id, creation time and notes stay.
                old_meta = json.loads(cur["meta"])
                merged = {**old_meta, **(meta or {})}
                if cur["status"] != status:
                    merged["history"] = list(old_meta.get("history", [])) + [_history(cur["status"], status, "save")]
                row["meta"] = json.dumps(merged)
                keep = {"uid", "created", "notes"}
                sets = {k: v for k, v in row.items() if k not in keep}
                self._execute(f"UPDATE samples SET {', '.join(k + '=?' for k in sets)} WHERE id=?",
                              (*sets.values(), cur["id"]))
                sid = cur["id"]
            else:
                if status != "pending" and "history" not in (meta or {}):  # a given history is a restore (import)
                    row["meta"] = json.dumps({**(meta or {}), "history": [_history("new", status, "save")]})
                cols = ", ".join(row)
                marks = ", ".join("?" * len(row))
                sid = self._execute(f"INSERT INTO samples ({cols}) VALUES ({marks})", tuple(row.values())).lastrowid
            self._journal(sid)
        return sid

    def _record(self, row: sqlite3.Row) -> Record:
        d = dict(row)
        for k in ("classes", "tags", "inserted", "meta"):
            d[k] = json.loads(d[k])
        d["instances"] = [Instance(**i) for i in json.loads(d["instances"])]
        return Record(**{k: v for k, v in d.items() if k in _RECORD_FIELDS})

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

    def _where(self, status=None, classes=None, tags=None, run=None, run_class=None) -> tuple[list[str], list]:
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
        return self._execute(sql, args).fetchone()[0]

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
               notes: str | None = None,
               instances: Sequence[tuple[str, np.ndarray, str] | tuple[str, np.ndarray, str, bool]] | None = None,
               inserted: Sequence[dict] | None = None, image: np.ndarray | None = None,
               classes: Sequence[str] | None = None, meta: dict | None = None, append_history: dict | None = None,
               ) -> Record:
        """Change a sample; validated first, then one transaction. Returns the new record.

        ``meta`` is merged into the sample's meta (top-level keys replaced) inside the
        transaction, so concurrent merges of different keys all survive. A ``status`` that
        differs from the stored one (read in that transaction) is recorded in the history.
        Instances given here are stored as they are: give a ``generated`` one only if it is
        the heat map at the sample's threshold (use :meth:`set_threshold` to change it)."""
        rec = self.get(sample_id)
        sets: dict = {}
        if status is not None and status not in STATUSES:
            raise StoreError(f"bad status {status!r}; one of {STATUSES}")
        if tags is not None:
            sets["tags"] = json.dumps(sorted({check_tag(t) for t in tags}))
        if notes is not None:
            sets["notes"] = str(notes)
        if classes is not None:
            sets["classes"] = json.dumps([check_class(c) for c in classes])
        h, w = rec.height, rec.width
        if image is not None:
            image = _store_image(image)
            if image.shape[:2] != (h, w):
                raise StoreError(f"new image is {image.shape[:2]}, the sample is {(h, w)}")
        blobs: dict[str, bytes] = {}
        if instances is not None:
            from .masks import bbox

            checked = []
            for name, m, source, *crowd in instances:  # an optional 4th item: the crowd flag
                m = np.asarray(m).astype(bool)
                if m.shape != (h, w):
                    raise StoreError(f"instance mask of {name!r} is {m.shape}, the image is {(h, w)}")
                if source not in SOURCES:
                    raise StoreError(f"bad instance source {source!r}; one of {SOURCES}")
                checked.append((check_class(name), m, source, bool(crowd and crowd[0])))
            insts = []
            for n, m, s, c in checked:
                data = _encode_mask(m)
                blobs[_key(data, "png")] = data
                insts.append(asdict(Instance(n, _key(data, "png"), list(bbox(m) or (0, 0, 0, 0)), s, c)))
            sets["instances"] = json.dumps(insts)
        if inserted is not None:
            sets["inserted"] = json.dumps(list(inserted))
        if image is not None:
            data = _encode_png(image)
            blobs[_key(data, "png")] = data
            sets["image"] = _key(data, "png")
        if not sets and status is None and meta is None and append_history is None:
            return rec
        with self._intent(blobs), self._tx():
            row = self._execute("SELECT meta, status FROM samples WHERE id=?", (rec.id,)).fetchone()
            if row is None:
                raise StoreError(f"sample #{rec.id} was deleted meanwhile")
            history = []
            if status is not None and status != row["status"]:
                sets["status"] = status
                history.append(_history(row["status"], status, "update"))
            if append_history is not None:
                history.append(append_history)
            if meta is not None or history:
                current = json.loads(row["meta"])
                merged = {**current, **(meta or {})}
                if history:
                    merged["history"] = list(current.get("history", [])) + history
                sets["meta"] = json.dumps(merged)
            if sets:
                sets["updated"] = time.time()
                self._execute(f"UPDATE samples SET {', '.join(k + '=?' for k in sets)} WHERE id=?",
                              (*sets.values(), rec.id))
                self._journal(rec.id)
        return self.get(rec.id)

    def set_threshold(self, sample_id: int, threshold: float | None) -> Record:
        """Set the user's threshold for a sample (None: back to the refiner's choice) and
        re-derive, in the same transaction, the masks of its ``generated`` instances from
        the stored heat map (less what later inserted instances cover). Refused with a
        StoreError for a sample without a heat map or without threshold-derived instances
        (a refined or hand-edited mask does not depend on a threshold)."""
        threshold = _check_threshold(threshold, "threshold")
        for _ in range(5):  # optimistic: recompute if the row changed while we derived
            rec = self.get(sample_id)
            effective = threshold if threshold is not None else rec.threshold
            if rec.heat_map is None or effective is None:
                raise StoreError(f"sample #{rec.id} has no heat map and threshold: its masks do not come from one")
            if not any(i.source == "generated" for i in rec.instances):
                kinds = sorted({i.source for i in rec.instances}) or ["none"]
                raise StoreError(f"sample #{rec.id}'s mask is not a threshold mask ({', '.join(kinds)}): "
                                 "the threshold does not change it")
            heat = self.heat(rec)
            current = self.masks(rec)
            derived = _derive_generated(heat, effective, [m for _, m in current], [i.source for i in rec.instances])
            from .masks import bbox

            new, blobs = [], {}
            for inst, d in zip(rec.instances, derived):
                if d is None:
                    new.append(asdict(inst))
                else:
                    data = _encode_mask(d)
                    blobs[_key(data, "png")] = data
                    new.append(asdict(Instance(inst.class_name, _key(data, "png"), list(bbox(d) or (0, 0, 0, 0)),
                                               inst.source)))
            old = [asdict(i) for i in rec.instances]
            with self._intent(blobs), self._tx():
                row = self._execute("SELECT instances FROM samples WHERE id=?", (rec.id,)).fetchone()
                if row is None:
                    raise StoreError(f"sample #{rec.id} was deleted meanwhile")
                if json.loads(row["instances"]) != old:
                    continue
                self._execute("UPDATE samples SET user_threshold=?, instances=?, updated=? WHERE id=?",
                              (threshold, json.dumps(new), time.time(), rec.id))
                self._journal(rec.id)
            return self.get(rec.id)
        raise StoreError(f"sample #{sample_id} kept changing while its threshold was set; try again")

    # -- status: compare-and-set, one transaction per decision -------------------------------
    def _set_status_in_tx(self, sample_id: int, status: str, by: str, expect: str | None = None) -> StatusAnswer:
        row = self._execute("SELECT status, meta FROM samples WHERE id=?", (int(sample_id),)).fetchone()
        if row is None:
            raise StoreError(f"no sample #{sample_id} in {self.root}")
        meta = json.loads(row["meta"])
        history = list(meta.get("history", []))
        if row["status"] == status or (expect is not None and row["status"] != expect):
            return StatusAnswer(int(sample_id), row["status"], False, len(history))
        history.append(_history(row["status"], status, by))
        meta["history"] = history
        self._execute("UPDATE samples SET status=?, meta=?, updated=? WHERE id=?",
                      (status, json.dumps(meta), time.time(), int(sample_id)))
        self._journal(int(sample_id))
        return StatusAnswer(int(sample_id), status, True, len(history))

    def change_status(self, sample_id: int, status: str, by: str = "curate",
                      expect: str | None = None) -> StatusAnswer:
        """Set one sample's status, compare-and-set: read, decide and write in one transaction.
        With ``expect``, only a sample whose status is ``expect`` changes. The answer is what is
        stored when the transaction commits, so of two callers racing (accept vs reject) each
        learns the state its call left, and the history holds exactly the changes that took effect."""
        if status not in STATUSES:
            raise StoreError(f"bad status {status!r}; one of {STATUSES}")
        with self._tx():
            return self._set_status_in_tx(sample_id, status, by, expect)

    def set_status(self, ids: Iterable[int], status: str, by: str = "curate") -> int:
        """Bulk accept/reject in one transaction, each change recorded in the sample's history;
        returns how many rows changed (rows already in that status are left alone)."""
        if status not in STATUSES:
            raise StoreError(f"bad status {status!r}; one of {STATUSES}")
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        with self._tx():
            marks = ",".join("?" * len(ids))
            present = [r[0] for r in self._execute(f"SELECT id FROM samples WHERE id IN ({marks})", ids)]
            return sum(self._set_status_in_tx(i, status, by).changed for i in present)

    def undo_status(self, sample_id: int, by: str = "undo") -> StatusAnswer:
        """Put back the status a sample had before its last status change, in one transaction
        (the undo is itself a change in the history). StoreError if there is none to undo."""
        with self._tx():
            row = self._execute("SELECT status, meta FROM samples WHERE id=?", (int(sample_id),)).fetchone()
            if row is None:
                raise StoreError(f"no sample #{sample_id} in {self.root}")
            history = json.loads(row["meta"]).get("history", [])
            if not history or history[-1].get("from") not in STATUSES:
                raise StoreError(f"#{sample_id} has no status change to undo")
            return self._set_status_in_tx(sample_id, history[-1]["from"], by, expect=row["status"])

    def status_history(self, sample_id: int) -> list[dict]:
        """Status changes of a sample, oldest first: {"from", "to", "by", "time"}."""
        return list(self.get(sample_id).meta.get("history", []))

    def delete(self, sample_id: int) -> None:
        """Remove a sample's row (its blobs stay until `check --repair --remove-orphans`). Its
        journal gets a tombstone, so a rebuild does not bring it back."""
        with self._tx():
            row = self._execute("SELECT uid FROM samples WHERE id=?", (int(sample_id),)).fetchone()
            if row is None:
                return
            self._execute("DELETE FROM samples WHERE id=?", (int(sample_id),))
            data = journal.tombstone(row["uid"], int(sample_id), next_revision(self._db), time.time())
            self._write_blob(_key(data, "json"), data, uuid.uuid4().hex)

    def classes(self) -> list[str]:
        rows = self._execute("SELECT DISTINCT value FROM samples, json_each(samples.classes) ORDER BY value")
        return [r[0] for r in rows]

    # -- health ----------------------------------------------------------------------------
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
            m = _TMP.fullmatch(p.name)
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


def _check_threshold(t, label: str) -> float | None:
    if t is None:
        return None
    try:
        value = float(t)
    except (TypeError, ValueError):
        raise StoreError(f"{label} {t!r} is not a number") from None
    if not (np.isfinite(value) and 0 <= value <= 1):
        raise StoreError(f"{label} {t!r} is outside [0, 1]")
    return value


def _history(old: str, new: str, by: str) -> dict:
    return {"from": old, "to": new, "by": by, "time": round(time.time(), 3)}


def _derive_generated(heat: np.ndarray, threshold: float, masks: list[np.ndarray],
                      sources: list[str]) -> list[np.ndarray | None]:
    """For each instance: its mask re-derived from the heat map if it is ``generated``
    (``heat >= threshold`` minus every later ``inserted`` instance, which lies on top), else
    None (kept as stored)."""
    from .masks import mask_at

    out: list[np.ndarray | None] = []
    for k, source in enumerate(sources):
        if source != "generated":
            out.append(None)
            continue
        m = mask_at(heat, threshold)
        for later, s in zip(masks[k + 1:], sources[k + 1:]):
            if s == "inserted":
                m = m & ~later
        out.append(m)
    return out


def _store_image(image: np.ndarray) -> np.ndarray:
    """check_image with the store's error (nothing is written for a bad image)."""
    try:
        return check_image(image)
    except ImageError as e:
        raise StoreError(str(e)) from e
