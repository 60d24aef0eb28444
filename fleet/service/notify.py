"""Pure-Python sd_notify: readiness, status and watchdog pings to systemd (no libsystemd).

The whole protocol is one datagram per message to the AF_UNIX socket named in
$NOTIFY_SOCKET; a leading '@' names a socket in the Linux abstract namespace. Outside
systemd (no NOTIFY_SOCKET, another OS, a `vsock:` address) every method is a no-op that
returns False, so the controller calls them unconditionally.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping


class SdNotify:
    """Talks to the service manager that started this process, if any.

    The controller calls `ready()` after its first reconcile pass, `watchdog()` from its
    loop at least every `watchdog_interval` seconds (never from a side thread: a wedged
    loop must starve the watchdog), and `stopping()` when it exits on SIGTERM.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None):
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = _watchdog_usec(env, os.getpid() if pid is None else pid)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SdNotify:
        return cls(environ)

    @property
    def enabled(self) -> bool:
        """True when a notify socket was handed to us (Type=notify under systemd)."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings: half of WatchdogSec, as sd_watchdog_enabled(3) advises.

        None when no watchdog applies to this process (unset, zero, or WATCHDOG_PID names
        another process, e.g. a child that inherited the variables).
        """
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def ready(self, status: str = "") -> bool:
        fields = ["READY=1"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.notify(*fields)

    def watchdog(self) -> bool:
        if self.watchdog_interval is None:
            return False
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def stopping(self, status: str = "") -> bool:
        fields = ["STOPPING=1"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.notify(*fields)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start-up (or stop) time: EXTEND_TIMEOUT_USEC, for a slow first pass."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def notify(self, *fields: str) -> bool:
        """Send one datagram of newline-separated fields; False when there is no one to tell."""
        if self._address is None or sys.platform == "win32":  # Windows: no AF_UNIX, so never an address
            return False
        payload = "\n".join(fields).encode("utf-8", errors="replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | getattr(socket, "SOCK_CLOEXEC", 0)) as sock:
                sock.connect(self._address)
                sock.sendall(payload)
        except OSError:
            # The manager went away or the socket was never ours: losing a notification must
            # never take the controller down with it.
            return False
        return True


def _socket_address(value: str) -> str | None:
    if not value or not hasattr(socket, "AF_UNIX"):
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None  # "vsock:..." and anything else is not something we speak


def _watchdog_usec(env: Mapping[str, str], pid: int) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID", "")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != pid:
                return None
        except ValueError:
            return None
    return usec


def _one_line(text: str) -> str:
    # A newline would start a new field and could smuggle in e.g. MAINPID=.
    return " ".join(text.split())
