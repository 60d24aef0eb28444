"""An exclusive, non-blocking lock on a file that the kernel drops with its process (flock on POSIX, a byte lock
on Windows), and the question whether anybody holds one. The same kernel locks the filelock library takes, so a
controller of an earlier release, which took the lock through that library, and this one exclude each other.
The resident controller holds one for its life; the library would cost it its logging and decimal modules (about
1.7 MiB of resident memory) and a `status` more than the rest of its question."""

from __future__ import annotations

import errno
import os
import sys

# Errors that say the file system has no such lock (a network mount), as opposed to someone holding it.
UNSUPPORTED = frozenset({errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK})
HELD = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES})  # EACCES: Windows' answer for a held lock


class LockUnsupported(OSError):
    """The file system of the lock file cannot lock files at all."""


def _try_lock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


class ExclusiveLock:
    """One process's hold on a lock file: taken at most once at a time, released explicitly or with the process.
    Its descriptor is private to this process (never inherited by a child)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def try_acquire(self) -> int | None:
        """Take the lock if nobody holds it: the descriptor it is held through (this object's own when it holds
        it already), or None when another holder has it. LockUnsupported where the file system cannot lock;
        OSError when the file cannot be opened or created."""
        if self.fd is not None:
            return self.fd
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                _try_lock(fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno in HELD:
                    return None
                if exc.errno in UNSUPPORTED:
                    raise LockUnsupported(exc.errno, f"the file system cannot lock files ({exc.strerror})") from None
                raise
            if os.fstat(fd).st_nlink == 0:  # unlinked between the open and the lock: a lock of nobody's file
                _unlock(fd)
                os.close(fd)
                continue
            self.fd = fd
            return fd

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            _unlock(fd)
        except OSError:
            pass  # closing the descriptor below releases it as well
        os.close(fd)


def lock_free(path: str) -> bool:
    """True when nobody holds the lock on `path` (or there is no such file), False when someone does or the file
    cannot be opened. It never creates the file, and asks with read access only (`status` may not own it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        # A lock through a descriptor of its own: it conflicts with the holder's (even in the holder's process),
        # and its release never touches the holder's, unlike fcntl's record locks.
        _try_lock(fd)
    except OSError:
        return False
    else:
        _unlock(fd)
        return True
    finally:
        os.close(fd)
