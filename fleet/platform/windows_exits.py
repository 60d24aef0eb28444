"""Windows exit watch: a process handle per gateway, waited on by one thread per batch of 63 handles
(WaitForMultipleObjects takes at most 64, and each batch also waits on its own event, set to end the batch
when the watched set changes). A batch that sees an exit writes a byte to a socket pair, because on Windows
the controller's select() takes sockets only.

Only `Kernel32` touches the OS; tests replace it and run the rest for real.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from fleet.platform.exits import _ReportOnce

MAXIMUM_WAIT_OBJECTS = 64
BATCH = MAXIMUM_WAIT_OBJECTS - 1  # one slot is the batch's own stop event
SYNCHRONIZE = 0x00100000
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
WAIT_OBJECT_0 = 0
WAIT_TIMEOUT = 0x102
WAIT_FAILED = 0xFFFFFFFF
INFINITE = 0xFFFFFFFF
ERROR_INVALID_PARAMETER = 87  # OpenProcess of a PID no process has


class Kernel32(Protocol):
    """The few kernel32 calls the watch needs, as plain functions over integer handles."""

    def open_process(self, pid: int) -> int | None: ...  # a SYNCHRONIZE handle; None when no such process
    def create_event(self) -> int: ...  # manual-reset, unset
    def set_event(self, handle: int) -> None: ...
    def wait_any(self, handles: Sequence[int], timeout_ms: int) -> int | None: ...  # index signalled, None: timeout
    def close_handle(self, handle: int) -> None: ...


class CtypesKernel32:
    """The real calls, through ctypes (no pywin32 needed for the controller)."""

    _k32: Any
    _handle_array: Any
    _get_last_error: Callable[[], int]

    def __init__(self) -> None:
        if sys.platform != "win32":
            raise OSError("kernel32 exists on Windows only")
        import ctypes
        from ctypes import wintypes

        self._get_last_error = ctypes.get_last_error
        self._k32 = ctypes.WinDLL("kernel32", use_last_error=True)
        self._k32.OpenProcess.restype = wintypes.HANDLE
        self._k32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
        self._k32.CreateEventW.restype = wintypes.HANDLE
        self._k32.CreateEventW.argtypes = [wintypes.LPVOID, wintypes.BOOL, wintypes.BOOL, wintypes.LPCWSTR]
        self._k32.SetEvent.argtypes = [wintypes.HANDLE]
        self._k32.CloseHandle.argtypes = [wintypes.HANDLE]
        self._k32.WaitForMultipleObjects.restype = wintypes.DWORD
        self._k32.WaitForMultipleObjects.argtypes = [wintypes.DWORD, ctypes.POINTER(wintypes.HANDLE), wintypes.BOOL,
                                                     wintypes.DWORD]
        self._handle_array = wintypes.HANDLE

    def _error(self, call: str) -> OSError:
        code = self._get_last_error()
        return OSError(0, f"{call} failed (Windows error {code})", None, code)

    def open_process(self, pid: int) -> int | None:
        handle = self._k32.OpenProcess(SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
        if handle:
            return int(handle)
        error = self._error(f"OpenProcess({pid})")
        if getattr(error, "winerror", None) == ERROR_INVALID_PARAMETER:
            return None
        raise error

    def create_event(self) -> int:
        handle = self._k32.CreateEventW(None, True, False, None)
        if not handle:
            raise self._error("CreateEventW")
        return int(handle)

    def set_event(self, handle: int) -> None:
        if not self._k32.SetEvent(handle):
            raise self._error("SetEvent")

    def wait_any(self, handles: Sequence[int], timeout_ms: int) -> int | None:
        array = (self._handle_array * len(handles))(*handles)
        result = self._k32.WaitForMultipleObjects(len(handles), array, False, timeout_ms)
        if result == WAIT_TIMEOUT:
            return None
        if result == WAIT_FAILED or not WAIT_OBJECT_0 <= result < WAIT_OBJECT_0 + len(handles):
            raise self._error("WaitForMultipleObjects")
        return int(result - WAIT_OBJECT_0)

    def close_handle(self, handle: int) -> None:
        self._k32.CloseHandle(handle)


class _Batch(threading.Thread):
    """Waits on up to BATCH process handles and its stop event; reports each exit, until stopped."""

    def __init__(self, kernel32: Kernel32, handles: dict[int, int], on_exit: Any):
        super().__init__(name="hermes-fleet exit watch", daemon=True)
        self._kernel32 = kernel32
        self._handles = dict(handles)  # handle -> pid
        self._on_exit = on_exit
        self.stop_event = kernel32.create_event()

    def run(self) -> None:
        while True:
            handles = [self.stop_event, *self._handles]
            try:
                index = self._kernel32.wait_any(handles, INFINITE)
            except OSError:
                return  # the watch reports these PIDs as unwatched on its next change; the loop's resync remains
            if index is None or index == 0:
                return
            pid = self._handles.pop(handles[index])
            self._on_exit(pid)

    def stop(self) -> None:
        self._kernel32.set_event(self.stop_event)
        self.join()
        self._kernel32.close_handle(self.stop_event)


class HandleExitWatch:
    def __init__(self, kernel32: Kernel32 | None = None):
        self._kernel32: Kernel32 = kernel32 or CtypesKernel32()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._lock = threading.Lock()
        self._seen: set[int] = set()
        self._handles: dict[int, int] = {}  # pid -> process handle
        self._batches: list[_Batch] = []
        self._state = _ReportOnce()

    def fileno(self) -> int:
        return self._reader.fileno()

    def _on_exit(self, pid: int) -> None:
        with self._lock:
            self._seen.add(pid)
        try:
            self._writer.send(b"x")
        except OSError:  # the pair is full of unread bytes: the reader is awake anyway
            pass

    def watch(self, pids: frozenset[int]) -> frozenset[int]:
        arm, disarm = self._state.plan(pids)
        if not arm and not disarm:
            return frozenset()
        self._stop_batches()
        for pid in disarm:
            self._state.armed.discard(pid)
            self._kernel32.close_handle(self._handles.pop(pid))
        unwatched = set()
        for pid in arm:
            try:
                handle = self._kernel32.open_process(pid)
            except OSError:  # access denied: another session's process, or a protected one
                handle = None
            if handle is None:
                unwatched.add(pid)
                continue
            self._handles[pid] = handle
            self._state.armed.add(pid)
        by_handle = {handle: pid for pid, handle in self._handles.items()}
        handles = list(by_handle)
        for start in range(0, len(handles), BATCH):
            batch = _Batch(self._kernel32, {h: by_handle[h] for h in handles[start:start + BATCH]}, self._on_exit)
            batch.start()
            self._batches.append(batch)
        return frozenset(unwatched)

    def exited(self) -> frozenset[int]:
        while True:
            try:
                if not self._reader.recv(4096):
                    break
            except OSError:
                break
        with self._lock:
            seen, self._seen = self._seen, set()
        gone = self._state.report(seen)
        for pid in gone:
            handle = self._handles.pop(pid, None)
            if handle is not None:
                self._kernel32.close_handle(handle)
        return gone

    def _stop_batches(self) -> None:
        for batch in self._batches:
            batch.stop()
        self._batches = []

    def close(self) -> None:
        self._stop_batches()
        for handle in self._handles.values():
            self._kernel32.close_handle(handle)
        self._handles.clear()
        self._reader.close()
        self._writer.close()
