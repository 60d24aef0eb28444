"""The controller's fence: the (device, inode) of every state file it holds, checked with stat calls.

A state directory removed, renamed or replaced under a running controller leaves it holding an
unlinked lock and database; a second controller then starts on the new files and both act. The
fence notices that the names on disk no longer lead to what this process opened, so it can stop
before it touches anything."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class FileId:
    """The identity of a file: its device and inode."""
    dev: int
    ino: int


def file_id(path: str | os.PathLike) -> FileId | None:
    """The (device, inode) a name leads to now, without following a symlink; None when missing."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return FileId(st.st_dev, st.st_ino)


def fd_id(fd: int) -> FileId:
    st = os.fstat(fd)
    return FileId(st.st_dev, st.st_ino)


def remove_if_same(path: str | os.PathLike, expected: FileId | None) -> bool:
    """Unlink `path` only while it is still the file we created: a successor's file keeps its name."""
    if expected is None or file_id(path) != expected:
        return False
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


class Fence:
    def __init__(self) -> None:
        self._held: list[tuple[str, str, FileId]] = []

    def hold(self, label: str, path: str | os.PathLike, identity: FileId | None = None) -> None:
        """Remember what `path` is now (or `identity`, taken from an open descriptor)."""
        identity = identity or file_id(path)
        if identity is None:
            raise FileNotFoundError(f"{label} {path} vanished while the controller was starting")
        self._held.append((label, os.fspath(path), identity))

    def breach(self) -> str | None:
        """Why the files on disk are no longer the ones this process holds; None while they all are."""
        for label, path, identity in self._held:
            now = file_id(path)
            if now is None:
                return f"the {label} {path} was removed (or its directory moved)"
            if now != identity:
                return (f"the {label} {path} was replaced (inode {identity.ino} on device {identity.dev} "
                        f"is now inode {now.ino} on device {now.dev})")
        return None
