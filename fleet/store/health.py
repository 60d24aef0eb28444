"""The controller's word on its store, for `status`: a small file the controller writes in place.

A degraded store (full disk, lock held elsewhere, read-only, I/O errors) cannot tell anyone that
it is degraded, and on a full disk no new file can be created either: the controller allocates
this file while the disk is fine and later overwrites the same blocks."""

from __future__ import annotations

import json
import os

from fleet.platform.fileio import write_at
from fleet.store.files import UnsafeFile, read_small
from fleet.store.layout import StateDir

SIZE = 4096


def path_of(state: StateDir) -> str:
    return os.path.join(str(state.root), ".store-health.json")


class HealthFile:
    def __init__(self, state: StateDir):
        self.path = path_of(state)
        self.fd: int | None = None
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
            self._write({"degraded": None})
        except OSError:
            self.close()  # best effort: status then knows nothing of a degraded store

    def publish(self, kind: str | None, message: str = "", since: float | None = None, pending: int = 0) -> None:
        self._write({"degraded": None} if kind is None else
                    {"degraded": {"kind": kind, "message": message, "since": since, "pending": pending}})

    def _write(self, doc: dict) -> None:
        if self.fd is None:
            return
        data = json.dumps(doc, sort_keys=True).encode()[:SIZE - 1]
        padded = data + b" " * (SIZE - len(data))
        try:
            # Same size every time, written over the same blocks: needs no free space once allocated.
            write_at(self.fd, padded, 0)
        except OSError:
            pass

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_degraded(state: StateDir) -> dict | None:
    """{kind, message, since, pending} while the controller keeps its bookkeeping in memory, else None."""
    try:
        raw = read_small(path_of(state))
        doc = json.loads((raw or b"").decode(errors="replace").strip() or "{}")
    except (OSError, ValueError, UnsafeFile):
        return None
    value = doc.get("degraded") if isinstance(doc, dict) else None
    return value if isinstance(value, dict) else None
