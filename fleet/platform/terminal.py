"""The terminal and process checks of `status --watch`: single keys, the console's escape sequences, a process's
existence without signalling it, and ending a watch the way Ctrl-C does when the OS asks it to stop."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil


def pid_exists(pid: int) -> bool:
    """Whether a process `pid` exists (a zombie too): kill(pid, 0) where there are signals, which never
    signals anything (psutil's check reads /proc besides); psutil elsewhere (Windows has no signal 0)."""
    if os.name != "posix":
        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, for one
        return True
    return True


class Keys:
    """Single key presses from a terminal on stdin (cbreak: no echo, no Enter needed, Ctrl-C still a
    signal); elsewhere only a sleep."""

    def __init__(self, stream) -> None:
        self.fd: int | None = None
        self.saved: list | None = None
        if sys.platform == "win32":
            return
        try:
            if stream is None or not stream.isatty():
                return
            import termios
            import tty

            fd = stream.fileno()
            self.saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
            self.fd = fd
        except (OSError, ValueError, ImportError):
            self.fd = None

    def close(self) -> None:
        if sys.platform == "win32":
            return
        if self.fd is not None and self.saved is not None:
            import termios

            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            except OSError:
                pass
            self.fd = None

    def wait(self, timeout: float) -> str | None:
        """"quit", "redraw" or None, after at most `timeout` seconds."""
        if self.fd is None:
            time.sleep(timeout)
            return None
        import select

        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        data = os.read(self.fd, 64)
        if not data:  # end of input: no more keys, Ctrl-C still works
            self.close()
            return None
        if b"q" in data.lower():
            return "quit"
        if any(ch in data for ch in b"rR \x0c"):
            return "redraw"
        return None


class TerminateRequested(BaseException):
    """SIGTERM or SIGHUP: end the watch as Ctrl-C does."""


@contextmanager
def stop_on_terminate() -> Iterator[None]:
    def stop(signum, frame):
        raise TerminateRequested

    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    saved = {n: signal.signal(getattr(signal, n), stop) for n in names}
    try:
        yield
    finally:
        for n, handler in saved.items():
            signal.signal(getattr(signal, n), handler)


def vt_console() -> bool:
    """Windows: turn on the console's VT processing (ANSI sequences); False where it cannot be."""
    if sys.platform != "win32":
        return True
    import ctypes

    kernel32 = ctypes.windll.kernel32
    handle = kernel32.GetStdHandle(-11)  # STD_OUTPUT_HANDLE
    mode = ctypes.c_uint32()
    if not kernel32.GetConsoleMode(handle, ctypes.byref(mode)):
        return False
    return bool(kernel32.SetConsoleMode(handle, mode.value | 0x0004))  # ENABLE_VIRTUAL_TERMINAL_PROCESSING
