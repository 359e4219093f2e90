"""Who is writing to a store: one owner per open :class:`~pipeline.dataset.Store`.

Each open store holds an exclusive ``flock`` on ``owners/<token>.lock`` for as long as it is
open. The kernel drops the lock when the process ends (killed or not), so "is this owner
still there?" is answered by the lock itself, not by a process id (which can be reused) or
by a file's age. ``flock`` locks belong to an open file description, so two stores opened in
one process (one per thread, as the studio does) are two owners that see each other alive.

A pending write (a row in the store's ``pending`` table) names its owner; a temporary blob
file names its write's intent. A cleaner removes only what belongs to owners that are gone.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import uuid
import weakref
from pathlib import Path

OWNERS_DIR = "owners"
_TOKEN = re.compile(r"[0-9a-f]{32}")


class Owner:
    """This store's owner token and the lock that says it is alive (released by :meth:`close`)."""

    def __init__(self, root: Path):
        folder = Path(root) / OWNERS_DIR
        folder.mkdir(exist_ok=True)
        for _ in range(100):
            token = uuid.uuid4().hex
            path = folder / f"{token}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # a cleaner may have found the file unlocked and removed it between open and flock:
            # the lock counts only if the path still names the file we locked
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    self.token, self.path = token, path
                    # released on close, when the store is collected, or when the interpreter exits
                    # (a CLI that stops on an error leaves no lock file behind)
                    self._release = weakref.finalize(self, _release, path, fd, os.getpid())
                    return
            except FileNotFoundError:
                pass
            os.close(fd)
        raise OSError(errno.EAGAIN, f"cannot register a writer under {folder}")

    def close(self) -> None:
        self._release()


def _release(path: Path, fd: int, creator: int) -> None:
    try:
        # unlinked while still locked: no one can take it meanwhile. A forked child closes its
        # copy only: the lock file is its parent's, which holds the lock on
        if os.getpid() == creator:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def alive(root: Path, token: str) -> bool:
    """Whether the owner ``token`` still holds its lock (a live store in some process)."""
    if not _TOKEN.fullmatch(token or ""):
        return False
    try:
        fd = os.open(Path(root) / OWNERS_DIR / f"{token}.lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock if we got it
    return False


def live_owners(root: Path) -> list[str]:
    """Tokens of every owner holding its lock now."""
    folder = Path(root) / OWNERS_DIR
    if not folder.is_dir():
        return []
    return [p.stem for p in folder.glob("*.lock") if alive(root, p.stem)]


def remove_dead(root: Path, keep: str | None = None) -> list[str]:
    """Remove the lock files of owners that are gone (a killed process leaves one); returns their tokens."""
    folder = Path(root) / OWNERS_DIR
    gone = []
    if not folder.is_dir():
        return gone
    for p in folder.glob("*.lock"):
        if p.stem == keep or not _TOKEN.fullmatch(p.stem):
            continue
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            if os.stat(p).st_ino == os.fstat(fd).st_ino:
                p.unlink()
                gone.append(p.stem)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return gone
