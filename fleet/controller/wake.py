"""A datagram socket in the state directory: CLI commands poke the controller after writing
to the store. Wake-ups are hints; the controller always re-reads everything."""

from __future__ import annotations

import os
import socket

from fleet.store.fence import FileId, file_id, remove_if_same
from fleet.store.layout import StateDir


class WakeSocket:
    def __init__(self, state: StateDir):
        self.path = str(state.wake_socket)
        self.sock: socket.socket | None = None
        self.identity: FileId | None = None  # the socket file this process bound
        if not hasattr(socket, "AF_UNIX"):
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(self.path)
            os.chmod(self.path, 0o600)
            sock.setblocking(False)
            self.sock = sock
            self.identity = file_id(self.path)
        except OSError:  # path too long for AF_UNIX: the controller falls back to polling the store
            self.sock = None

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock else -1

    def drain(self) -> set[str]:
        messages = set()
        while self.sock:
            try:
                messages.add(self.sock.recv(256).decode("ascii", "replace"))
            except (BlockingIOError, OSError):
                break
        return messages

    def close(self) -> None:
        if self.sock:
            self.sock.close()
            # A successor controller may have bound its own socket at this name: that one stays.
            remove_if_same(self.path, self.identity)


def wake(state: StateDir, message: str = "wake") -> bool:
    if not hasattr(socket, "AF_UNIX"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode("ascii"), str(state.wake_socket))
        return True
    except OSError:
        return False
