"""The CLI-to-controller wake channel: CLI commands poke the controller after writing to the store (and
`stop` asks it to leave). Messages are hints; the controller always re-reads everything.

Two kinds, both usable only by the controller's own user:
- a Unix datagram socket in the state directory, mode 0600 (POSIX);
- a loopback UDP socket whose port and a random token are in a 0600 file of the state directory
  (Windows, which has no Unix datagram sockets; and POSIX when the socket's path is too long for
  sun_path). Every datagram must start with the token, so another user's process on the same host,
  which can reach the port but cannot read the file, is ignored.
The sender tries whichever the state directory names.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fleet.spec.hashing import same_secret
from fleet.store.fence import FileId, file_id, remove_if_same
from fleet.store.files import UnsafeFile, read_json, remove, write_json_atomic
from fleet.store.layout import StateDir

if TYPE_CHECKING:
    import _socket
    import socket

MAX_MESSAGE = 256
LOOPBACK = "127.0.0.1"
TOKEN_BYTES = 32


class NoWakeChannel:
    """No channel could be opened: the controller polls the store instead."""

    def __init__(self, path: str):
        self.path = path
        self.identity: FileId | None = None

    def fileno(self) -> int:
        return -1

    def drain(self) -> set[str]:
        return set()

    def close(self) -> None:
        pass


class _DatagramChannel:
    """What both kinds share: a bound, non-blocking datagram socket and the state-directory file naming it."""

    def __init__(self, path: str, sock: socket.socket):
        self.path = path
        self.sock = sock
        sock.setblocking(False)
        self.identity: FileId | None = file_id(path)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> set[str]:
        messages = set()
        while True:
            try:
                data, sender = self.sock.recvfrom(MAX_MESSAGE + TOKEN_BYTES * 2 + 1)
            except OSError:  # nothing more to read (BlockingIOError), or a reset from a datagram's sender
                break
            message = self._accept(data, sender)
            if message is not None:
                messages.add(message)
        return messages

    def _accept(self, data: bytes, sender: object) -> str | None:
        return data.decode("ascii", "replace")

    def close(self) -> None:
        self.sock.close()
        # A successor controller may have made its own file at this name: that one stays.
        remove_if_same(self.path, self.identity)


class UnixWakeChannel(_DatagramChannel):
    """A Unix datagram socket in the state directory, mode 0600."""


class LoopbackWakeChannel(_DatagramChannel):
    """A loopback UDP socket; its port and token are in a 0600 file; every datagram carries the token."""

    def __init__(self, path: str, sock: socket.socket, token: str):
        super().__init__(path, sock)
        self._token = token.encode("ascii")

    def _accept(self, data: bytes, sender: object) -> str | None:
        token, _, message = data.partition(b" ")
        host = sender[0] if isinstance(sender, tuple) and sender else None
        if host != LOOPBACK or not same_secret(token, self._token):
            return None
        return message.decode("ascii", "replace")


def open_unix_channel(state: StateDir) -> UnixWakeChannel | None:
    """None where the OS has no Unix datagram sockets or the path is too long for one."""
    import socket

    family = getattr(socket, "AF_UNIX", None)
    path = str(state.wake_socket)
    if family is None:
        return None
    try:
        os.unlink(path)
    except OSError:
        pass
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
    except OSError:
        sock.close()
        return None
    return UnixWakeChannel(path, sock)


def open_loopback_channel(state: StateDir) -> LoopbackWakeChannel | NoWakeChannel:
    import secrets  # its token generator: only a loopback channel needs one
    import socket

    path = str(state.wake_port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((LOOPBACK, 0))
        token = secrets.token_hex(TOKEN_BYTES)
        write_json_atomic(path, {"port": sock.getsockname()[1], "token": token}, 0o600, durable=False)
    except OSError:
        sock.close()
        return NoWakeChannel(path)
    return LoopbackWakeChannel(path, sock, token)


def open_wake_channel(state: StateDir, *, unix: bool) -> UnixWakeChannel | LoopbackWakeChannel | NoWakeChannel:
    """The Unix socket where `unix` asks for it and it can be made, else the loopback one. Whichever is not
    used is removed, so a sender never reaches a dead predecessor's channel."""
    channel = open_unix_channel(state) if unix else None
    if channel is not None:
        try:
            remove(state.wake_port)
        except (OSError, UnsafeFile):
            pass
        return channel
    return open_loopback_channel(state)


def send_wake(state: StateDir, message: str = "wake") -> bool:
    """Poke the controller of `state`; False when no channel answers (no controller, or it polls)."""
    # The socket type alone: the `socket` module's enums cost a command ~2 ms before its wake, which is what
    # sets the controller going (a `down`'s drains begin with it).
    import _socket

    family = getattr(_socket, "AF_UNIX", None)
    if family is not None and os.path.exists(state.wake_socket):
        data = message.encode("ascii")
        try:
            _send_once(_socket.socket(family, _socket.SOCK_DGRAM), data, str(state.wake_socket))
            return True
        except OSError:
            pass
    record = read_json(state.wake_port)
    if not isinstance(record, dict) or not isinstance(record.get("port"), int) or not isinstance(
            record.get("token"), str):
        return False
    try:
        data = f"{record['token']} {message}".encode("ascii")
        _send_once(_socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM), data, (LOOPBACK, record["port"]))
        return True
    except (OSError, UnicodeEncodeError, OverflowError):
        return False


def _send_once(sock: _socket.socket, data: bytes, address: str | tuple[str, int]) -> None:
    try:
        sock.sendto(data, address)
    finally:
        sock.close()
