"""Content-addressed files: how blobs are encoded, named, written (under a committed intent,
so no repair or cleaner takes them for orphans) and read back, and the one mask rule on
reading (:meth:`BlobsMixin.masks`: the masks stored in the row, nothing re-derived)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import sqlite3
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from . import journal
from .errors import DamagedSampleError, StoreError
from .records import Record, store_image
from .schema import next_revision

BLOB_KEY = re.compile(r"[0-9a-f]{64}\.(png|npy|json)")


def encode_png(array: np.ndarray) -> bytes:
    """HWC uint8 RGB (or HW uint8) as PNG bytes (fast compression: blobs are written often)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    """HW bool as a 0/255 PNG."""
    return encode_png(np.asarray(mask).astype(bool).astype(np.uint8) * 255)


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def blob_key(data: bytes, ext: str) -> str:
    """A blob's name: the SHA-256 of its bytes and its kind (png, npy, json)."""
    return hashlib.sha256(data).hexdigest() + "." + ext


# a temporary blob file: ".<key>.<intent>.tmp" (the intent of the write putting it down)
TEMPORARY_NAME = re.compile(r"\.([0-9a-f]{64}\.(?:png|npy|json))\.([0-9a-f]{32})\.tmp")


class BlobsMixin:
    """The blob half of :class:`pipeline.store.database.Store` (uses its ``root``, ``_db``, ``_tx``, ``_owner``)."""

    def _blob_path(self, key: str) -> Path:
        if not isinstance(key, str) or not BLOB_KEY.fullmatch(key):
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
        key = blob_key(data, ext)
        with self._intent({key: data}):
            pass
        return key

    def put_image(self, image: np.ndarray) -> str:
        return self.put_bytes(encode_png(store_image(image)), "png")

    def put_mask(self, mask: np.ndarray) -> str:
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise StoreError(f"a mask must be HW, got shape {mask.shape}")
        return self.put_bytes(encode_mask(mask), "png")

    def put_array(self, array: np.ndarray) -> str:
        return self.put_bytes(encode_npy(array), "npy")

    def _journal(self, sample_id: int) -> None:
        """Inside a write transaction: give the sample the next revision and write its whole
        row as its journal file (content-addressed, beside its blobs), pointed at by the row."""
        revision = next_revision(self._db)
        self._db.execute("UPDATE samples SET revision = ? WHERE id = ?", (revision, sample_id))
        row = self._execute("SELECT * FROM samples WHERE id = ?", (sample_id,)).fetchone()
        data = journal.encode(dict(row))
        key = blob_key(data, "json")
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
