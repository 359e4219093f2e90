"""Changing samples: add (validated first, then one transaction under a committed intent),
update, threshold, status (compare-and-set) and delete; each change writes the sample's
journal file in its transaction."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, fields
from typing import Iterable, Sequence

import numpy as np

from ..errors import ConfigError, check_seed
from ..masks import HEAT_DTYPE, HeatMapError, bbox, check_heat, derive_generated, quantize_heat
from . import journal
from .blobs import blob_key, encode_mask, encode_npy, encode_png
from .errors import StoreError
from .records import (SOURCES, STATUSES, Instance, NewSample, Record, StatusAnswer, check_class, check_tag,
                      check_threshold, history_entry, store_image)
from .schema import next_revision


class WritesMixin:
    """The writes of :class:`pipeline.store.database.Store`."""

    # -- samples ---------------------------------------------------------------------------
    def add(self, sample: NewSample, *, replace: bool = False) -> int:
        """Store ``sample`` (a :class:`NewSample`); returns its id. A batch candidate's
        ``run`` (run key, class, k) is kept in indexed columns.

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
        if not isinstance(sample, NewSample):
            raise TypeError(f"Store.add takes a NewSample, not {type(sample).__name__} "
                            "(from pipeline.dataset import NewSample; store.add(NewSample(image, classes, ...)))")
        (image, classes, instances, uid, prompt, seed, model, heat_map, threshold, refined_mask, status, tags, notes,
         meta, inserted, instance_sources, user_threshold, instance_crowd, run) = \
            (getattr(sample, f.name) for f in fields(NewSample))
        image = store_image(image)
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
        threshold = check_threshold(threshold, "threshold")
        user_threshold = check_threshold(user_threshold, "user threshold")
        if heat_map is not None:
            try:
                check_heat(heat_map, (h, w))
            except HeatMapError as e:
                raise StoreError(str(e)) from e
        heat = None if heat_map is None else quantize_heat(heat_map)
        effective = user_threshold if user_threshold is not None else threshold
        if heat is not None and effective is not None:
            derived = derive_generated(heat, effective, [m for _, m in masks], sources)
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
        blobs: dict[str, bytes] = {}

        def put(data: bytes, ext: str) -> str:
            key = blob_key(data, ext)
            blobs[key] = data
            return key

        inst = [asdict(Instance(n, put(encode_mask(m), "png"), list(bbox(m) or (0, 0, 0, 0)), s, c))
                for (n, m), s, c in zip(masks, sources, crowd)]
        now = time.time()
        row = dict(uid=uid, image=put(encode_png(image), "png"), width=w, height=h, classes=json.dumps(classes),
                   prompt=prompt, seed=seed, model=model,
                   heat_map=None if heat is None else put(encode_npy(heat.astype(HEAT_DTYPE)), "npy"),
                   threshold=threshold, user_threshold=user_threshold,
                   refined_mask=None if refined_mask is None else put(encode_mask(refined_mask), "png"),
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
                    merged["history"] = list(old_meta.get("history", [])) + [history_entry(cur["status"], status, "save")]
                row["meta"] = json.dumps(merged)
                keep = {"uid", "created", "notes"}
                sets = {k: v for k, v in row.items() if k not in keep}
                self._execute(f"UPDATE samples SET {', '.join(k + '=?' for k in sets)} WHERE id=?",
                              (*sets.values(), cur["id"]))
                sid = cur["id"]
            else:
                if status != "pending" and "history" not in (meta or {}):  # a given history is a restore (import)
                    row["meta"] = json.dumps({**(meta or {}), "history": [history_entry("new", status, "save")]})
                cols = ", ".join(row)
                marks = ", ".join("?" * len(row))
                sid = self._execute(f"INSERT INTO samples ({cols}) VALUES ({marks})", tuple(row.values())).lastrowid
            self._journal(sid)
        return sid

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
            image = store_image(image)
            if image.shape[:2] != (h, w):
                raise StoreError(f"new image is {image.shape[:2]}, the sample is {(h, w)}")
        blobs: dict[str, bytes] = {}
        if instances is not None:
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
                data = encode_mask(m)
                blobs[blob_key(data, "png")] = data
                insts.append(asdict(Instance(n, blob_key(data, "png"), list(bbox(m) or (0, 0, 0, 0)), s, c)))
            sets["instances"] = json.dumps(insts)
        if inserted is not None:
            sets["inserted"] = json.dumps(list(inserted))
        if image is not None:
            data = encode_png(image)
            blobs[blob_key(data, "png")] = data
            sets["image"] = blob_key(data, "png")
        if not sets and status is None and meta is None and append_history is None:
            return rec
        with self._intent(blobs), self._tx():
            row = self._execute("SELECT meta, status FROM samples WHERE id=?", (rec.id,)).fetchone()
            if row is None:
                raise StoreError(f"sample #{rec.id} was deleted meanwhile")
            history = []
            if status is not None and status != row["status"]:
                sets["status"] = status
                history.append(history_entry(row["status"], status, "update"))
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
        threshold = check_threshold(threshold, "threshold")
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
            derived = derive_generated(heat, effective, [m for _, m in current], [i.source for i in rec.instances])
            new, blobs = [], {}
            for inst, d in zip(rec.instances, derived):
                if d is None:
                    new.append(asdict(inst))
                else:
                    data = encode_mask(d)
                    blobs[blob_key(data, "png")] = data
                    new.append(asdict(Instance(inst.class_name, blob_key(data, "png"), list(bbox(d) or (0, 0, 0, 0)),
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
        history.append(history_entry(row["status"], status, by))
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
            self._write_blob(blob_key(data, "json"), data, uuid.uuid4().hex)
