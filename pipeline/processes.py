"""Whether a process still runs: the one check behind every "leave it, its writer may still be
at work" decision about files named after a process id (the store's temporary blobs, an
unfinished export's ``.partial-<pid>`` folder, a studio process's export folder)."""
from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """True unless no process ``pid`` exists on this machine. A process of another user
    (PermissionError) counts as alive: its files are not ours to remove."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
