"""macOS: the POSIX platform (identity through psutil, as there is no /proc) with exits watched by a
kqueue's EVFILT_PROC/NOTE_EXIT filters."""

from __future__ import annotations

import sys

# Never imported on Windows (fleet.platform.current_platform); saying so lets mypy --platform win32 skip
# the rest of the file, imports included.
assert sys.platform != "win32"

import select
from typing import Any

from fleet.platform.base import ExitWatch
from fleet.platform.exits import KqueueExitWatch
from fleet.platform.posix import PosixPlatform


class MacPlatform(PosixPlatform):
    name = "macos"

    def __init__(self, *, kq: Any = select) -> None:
        super().__init__()
        self._kq = kq  # the module with kqueue, kevent and the KQ_* names: select, or a stand-in in tests

    def exit_watch(self) -> ExitWatch:
        return KqueueExitWatch(self._kq)
