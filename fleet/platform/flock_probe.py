"""Whether someone holds the flock on a file, asked without the lock library: `status` asks it on every run,
and importing filelock costs more than the rest of the question. Taking the lock stays filelock's."""

from __future__ import annotations

import os
import sys


def flock_free(path: str) -> bool | None:
    """True when nobody holds a flock on `path` (or there is no such file), False when someone does or the file
    cannot be opened; None where flock does not exist (Windows): the caller asks the lock library."""
    if sys.platform == "win32":
        return None
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        # A lock of its own open file: it conflicts with the holder's (even in the holder's process) and its
        # release never touches the holder's, unlike fcntl's record locks.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)
