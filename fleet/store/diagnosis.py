"""What is wrong with a store that failed: full, locked (and by whom), read-only, I/O error or
corrupt. Corrupt is only ever said after an integrity check proves it, because its advice
(move the file aside, losing the history) is destructive for a healthy database."""

from __future__ import annotations

import errno
import os
import sqlite3

from fleet.platform.lock_holders import describe_pid, lock_holders

FULL, LOCKED, READONLY, IO, CORRUPT, OTHER = "full", "locked", "read-only", "io", "corrupt", "other"

# SQLite primary result codes (sqlite3.h)
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26
_BY_CODE = {_SQLITE_BUSY: LOCKED, _SQLITE_LOCKED: LOCKED, _SQLITE_READONLY: READONLY, _SQLITE_PERM: READONLY,
            _SQLITE_IOERR: IO, _SQLITE_CORRUPT: CORRUPT, _SQLITE_NOTADB: CORRUPT, _SQLITE_FULL: FULL}
_BY_ERRNO = {errno.ENOSPC: FULL, errno.EDQUOT: FULL, errno.EROFS: READONLY, errno.EACCES: READONLY,
             errno.EPERM: READONLY, errno.EIO: IO, errno.EAGAIN: LOCKED}


def classify(exc: BaseException) -> str:
    """The class of a store failure, from SQLite's result code (or the OS errno), else its text."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _BY_CODE:
        return _BY_CODE[code & 0xFF]
    if isinstance(exc, OSError) and exc.errno in _BY_ERRNO:
        return _BY_ERRNO[exc.errno]
    text = str(exc).lower()
    for words, kind in ((("full", "no space"), FULL), (("locked", "busy"), LOCKED), (("readonly", "read-only"), READONLY),
                        (("disk i/o", "i/o error"), IO), (("malformed", "not a database", "corrupt"), CORRUPT)):
        if any(w in text for w in words):
            return kind
    return OTHER


def read_only_reason(path: str) -> str | None:
    """Why `path` cannot be written, or None if it can."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    statvfs = getattr(os, "statvfs", None)  # POSIX only
    try:
        if statvfs is not None and statvfs(directory).f_flag & getattr(os, "ST_RDONLY", 1):
            return "its file system is mounted read-only"
    except OSError:
        pass
    for target in (path, directory):
        if os.path.exists(target) and not os.access(target, os.W_OK):
            return f"{target} is not writable by this user"
    return None


def integrity_problem(path: str) -> str | None:
    """The integrity check's complaint, or None when it passes or cannot run (then nothing is proven)."""
    if not os.path.exists(path):
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=5)
    except sqlite3.Error as exc:
        return str(exc) if classify(exc) == CORRUPT else None
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        return str(exc) if classify(exc) == CORRUPT else None
    finally:
        conn.close()
    found = [r[0] for r in rows if r and r[0] != "ok"]
    return "; ".join(found[:3]) if found else None


def diagnose(path: str, exc: BaseException) -> tuple[str, str]:
    """(class, message) for a store failure; the message says what is wrong and what to do."""
    kind = classify(exc)
    if kind in (LOCKED, OTHER, IO, CORRUPT) and read_only_reason(path):
        kind = READONLY  # SQLite reports a read-only WAL index as an I/O or open error
    if kind == FULL:
        return kind, f"cannot write {path}: the disk is full ({exc}); free some disk space (nothing was changed)"
    if kind == LOCKED:
        holders = lock_holders(path)
        who = ", ".join(describe_pid(p) for p in holders[:3]) if holders else "another process (not found)"
        return kind, (f"{path} is locked by {who} ({exc}); finish or end that session and retry "
                      f"(the store is intact; nothing was changed)")
    if kind == READONLY:
        why = read_only_reason(path) or "the file cannot be written"
        return kind, (f"{path} is read-only: {why} ({exc}); make it writable again and retry "
                      f"(the store is intact; nothing was changed)")
    if kind == IO:
        return kind, (f"I/O error on {path} ({exc}); check the disk and the kernel log; "
                      f"the store was not proven damaged, so keep it")
    problem = integrity_problem(path)
    if problem is not None:
        return CORRUPT, (f"{path} is corrupt (integrity check: {problem}); move it aside to start a fresh "
                         f"history (running gateways will be adopted)")
    return kind, f"{path} could not be used ({exc}); an integrity check found no damage, so keep it and retry"
