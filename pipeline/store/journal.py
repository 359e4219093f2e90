"""Every sample's record as a file beside its blobs, so the database can be rebuilt.

Each change to a sample (add, status, tags, notes, threshold, meta...) writes, inside the
transaction that commits it, the sample's whole row as JSON to a content-addressed file
``blobs/ab/<sha256>.json`` and points the row's ``journal`` column at it. The row carries a
store-wide ``revision`` (a counter bumped in every change's transaction), so among the files
of one sample the one with the highest revision is its current record. A deleted sample gets
a *tombstone* entry (uid, id and revision, no row). ``check --rebuild`` reads these files alone.

Older versions of a record are orphans (no row points at them): ``check --repair
--remove-orphans`` removes them; a record whose sample is in no row and has no newer
tombstone is a *lost* sample, which repair keeps (and its blobs) and reports.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

FORMAT = "diffumask-sample/1"


@dataclass
class Entry:
    """One journal file: ``row`` (the sample's columns) or None for a deleted sample."""

    key: str
    uid: str
    id: int
    revision: int
    updated: float
    row: dict | None

    @property
    def order(self) -> tuple:
        # the revision decides; the time only breaks the tie a write killed before its commit can leave
        return (self.revision, self.updated)


def encode(row: dict) -> bytes:
    """The journal file of a sample: every column of its row except ``journal`` itself."""
    row = {k: v for k, v in row.items() if k != "journal"}
    return json.dumps({"format": FORMAT, "row": row}, sort_keys=True, separators=(",", ":")).encode()


def tombstone(uid: str, sample_id: int, revision: int, updated: float) -> bytes:
    return json.dumps({"format": FORMAT, "deleted": {"uid": uid, "id": int(sample_id), "revision": int(revision),
                                                     "updated": updated}}, sort_keys=True).encode()


def decode(key: str, data: bytes) -> Entry:
    """Parse a journal file; ValueError if it is not one (or does not match its hash)."""
    if hashlib.sha256(data).hexdigest() != key.split(".")[0]:
        raise ValueError(f"journal file {key} does not match its hash (truncated or overwritten)")
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"journal file {key} is not a {FORMAT} record")
    if "deleted" in doc:
        d = doc["deleted"]
        return Entry(key, str(d["uid"]), int(d["id"]), int(d["revision"]), float(d["updated"]), None)
    row = doc["row"]
    return Entry(key, str(row["uid"]), int(row["id"]), int(row.get("revision") or 0), float(row["updated"]), row)


def files(blobs: Path) -> list[Path]:
    return sorted(Path(blobs).glob("*/[0-9a-f]*.json"))


def read_all(blobs: Path, only: set[str] | None = None) -> tuple[list[Entry], dict[str, str]]:
    """Every journal entry under ``blobs`` (or those whose key is not in ``only``'s complement:
    pass ``only`` to read just those keys), and {key: why unreadable} for the others."""
    entries, bad = [], {}
    for p in files(blobs):
        if only is not None and p.name not in only:
            continue
        try:
            entries.append(decode(p.name, p.read_bytes()))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as e:
            bad[p.name] = str(e)
    return entries, bad


def latest(entries: list[Entry]) -> dict[str, Entry]:
    """uid -> its newest entry (a tombstone if the sample was deleted last)."""
    out: dict[str, Entry] = {}
    for e in entries:
        if e.uid not in out or e.order > out[e.uid].order:
            out[e.uid] = e
    return out


def blob_keys(row: dict) -> list[str]:
    """The blob keys a row refers to (image, instance masks, heat map, refined mask)."""
    keys = [row["image"]] + [i["mask"] for i in json.loads(row.get("instances") or "[]")]
    return keys + [k for k in (row.get("heat_map"), row.get("refined_mask")) if k]
