"""The controller's HTTP endpoint: GET /metrics, /healthz, /readyz and a landing page, nothing else.

One daemon thread multiplexes every connection with a selector and serves bytes the loop published (a
reference swap, no lock): a scrape never waits on a pass and a pass never waits on a client. Hostile
clients are bounded: a request line and headers of at most 8 KiB, 5 s for a whole exchange (slowloris),
at most MAX_CONNECTIONS open (the oldest is dropped for a newer one), GET and HEAD only, a fixed table of
paths, no control route, `Connection: close`. Health bodies reveal nothing but check names."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleet.metrics.exposition import CONTENT_TYPE
from fleet.spec.hashing import same_secret

MAX_REQUEST_BYTES = 8192
EXCHANGE_SECONDS = 5.0
MAX_CONNECTIONS = 64
ACCEPTS_PER_TURN = 16  # a connection flood cannot keep the thread (and the GIL) busy for long at a time

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 503: "Service Unavailable"}
LANDING = (b"hermes-fleet controller: /metrics (Prometheus text format), /healthz (the loop is alive), "
           b"/readyz (ready to act)\n")


@dataclass(frozen=True)
class Published:
    """What the endpoint serves until the loop publishes the next one."""
    metrics: bytes
    alive_until: float  # /healthz fails once the wall clock passes this (the loop missed its next pass)
    ready: tuple[tuple[str, bool], ...]  # (check, passed) for /readyz


@dataclass
class _Connection:
    """One open client connection: what it has sent so far and what is left to send it."""
    sock: socket.socket
    opened: float
    received: bytearray
    reply: list[memoryview] | None = None  # what is left to send: the head, then the body (never joined:
    # the published body is sent from where it lies, not copied per scrape)


class MetricsServer:
    """Serves `published()` on an already-bound listening socket until `close()`."""

    def __init__(self, listener: socket.socket, published: Callable[[], Published | None], token: bytes | None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.listener = listener
        self.published = published
        self.token = token
        self.clock = clock
        self.wall = wall
        self.selector = selectors.DefaultSelector()
        self.connections: dict[int, _Connection] = {}
        self._stop_r, self._stop_w = socket.socketpair()
        self._stop_r.setblocking(False)
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ)
        self.selector.register(self._stop_r, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return host, port

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def close(self) -> None:
        try:
            self._stop_w.send(b"x")
        except OSError:
            pass
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        for conn in list(self.connections.values()):
            self._drop(conn)
        self.selector.close()
        self.listener.close()
        self._stop_r.close()
        self._stop_w.close()

    # -- the thread -------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            timeout = self._next_deadline()
            for key, mask in self.selector.select(timeout):
                if key.fileobj is self._stop_r:
                    return
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    conn = self.connections.get(key.fd)
                    if conn is not None:
                        self._step(conn, mask)
            self._expire()

    def _next_deadline(self) -> float | None:
        if not self.connections:
            return None  # idle: no wake-ups at all
        oldest = min(c.opened for c in self.connections.values())
        return max(0.0, oldest + EXCHANGE_SECONDS - self.clock())

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and friends: the connections we hold expire and free descriptors
            if len(self.connections) >= MAX_CONNECTIONS:
                self._drop(min(self.connections.values(), key=lambda c: c.opened))
            sock.setblocking(False)
            conn = _Connection(sock, self.clock(), bytearray())
            self.connections[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ)

    def _expire(self) -> None:
        now = self.clock()
        for conn in [c for c in self.connections.values() if now - c.opened >= EXCHANGE_SECONDS]:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        fd = conn.sock.fileno()
        self.connections.pop(fd, None)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _step(self, conn: _Connection, mask: int) -> None:
        try:
            if conn.reply is None and mask & selectors.EVENT_READ:
                self._read(conn)
            if conn.reply is not None:
                self._write(conn)
        except OSError:
            self._drop(conn)

    def _read(self, conn: _Connection) -> None:
        chunk = conn.sock.recv(MAX_REQUEST_BYTES + 1 - len(conn.received))
        if not chunk:
            self._drop(conn)
            return
        conn.received += chunk
        end = conn.received.find(b"\r\n\r\n")
        if end < 0:
            end = conn.received.find(b"\n\n")
        if end >= 0:
            self._reply(conn, self._respond(bytes(conn.received[:end])))
        elif len(conn.received) > MAX_REQUEST_BYTES:
            self._reply(conn, _response(431, b"request too large\n"))

    def _reply(self, conn: _Connection, parts: tuple[bytes, bytes]) -> None:
        conn.reply = [memoryview(p) for p in parts if p]
        self.selector.modify(conn.sock, selectors.EVENT_WRITE)

    def _write(self, conn: _Connection) -> None:
        assert conn.reply is not None
        while conn.reply:
            try:
                sent = conn.sock.send(conn.reply[0])
            except (BlockingIOError, InterruptedError):
                return
            if sent < len(conn.reply[0]):
                conn.reply[0] = conn.reply[0][sent:]
                return
            conn.reply.pop(0)
        if not conn.reply:
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._drop(conn)

    # -- routing ----------------------------------------------------------------------------
    def _respond(self, head: bytes) -> tuple[bytes, bytes]:
        lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response(400, b"bad request\n")
        method, target, _version = parts
        if method not in ("GET", "HEAD"):
            return _response(405, b"only GET and HEAD\n", extra=(("Allow", "GET, HEAD"),))
        path, _, query = target.partition("?")
        headers = _headers(lines[1:])
        published = self.published()
        if path == "/metrics":
            if self.token is not None and not _bearer_matches(headers.get("authorization", ""), self.token):
                return _response(401, b"unauthorized\n", head_only=method == "HEAD",
                                 extra=(("WWW-Authenticate", 'Bearer realm="hermes-fleet"'),))
            if published is None:
                return _response(503, b"no reconcile pass has ended yet\n", head_only=method == "HEAD")
            return _response(200, published.metrics, CONTENT_TYPE, head_only=method == "HEAD")
        if path in ("/healthz", "/readyz"):
            alive = published is not None and self.wall() <= published.alive_until
            checks: tuple[tuple[str, bool], ...] = (("reconcile-loop", alive),)
            if path == "/readyz":
                checks += (("first-pass", published is not None),) + (published.ready if published else ())
            return _health(checks, "verbose" in query.split("&"), method == "HEAD")
        if path == "/":
            return _response(200, LANDING, head_only=method == "HEAD")
        return _response(404, b"not found\n", head_only=method == "HEAD")


def _headers(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def _bearer_matches(header: str, token: bytes) -> bool:
    scheme, _, credentials = header.partition(" ")
    return scheme.lower() == "bearer" and same_secret(credentials.strip().encode("latin-1"), token)


def _health(checks: tuple[tuple[str, bool], ...], verbose: bool, head_only: bool) -> tuple[bytes, bytes]:
    ok = all(passed for _, passed in checks)
    if verbose:
        body = "".join(f"[+]{name} ok\n" if passed else f"[-]{name} failed: reason withheld\n"
                       for name, passed in checks)
        body += "ok\n" if ok else "failed\n"
    else:
        body = "ok\n" if ok else "".join(f"[-]{name} failed: reason withheld\n" for name, passed in checks
                                         if not passed)
    return _response(200 if ok else 503, body.encode(), head_only=head_only)


def _response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", *,
              head_only: bool = False, extra: tuple[tuple[str, str], ...] = ()) -> tuple[bytes, bytes]:
    head = [f"HTTP/1.1 {status} {REASONS[status]}", f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}", "Connection: close", "Cache-Control: no-store"]
    head += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1"), b"" if head_only else body


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (raises OSError, e.g. EADDRINUSE)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR lets a restarted controller bind at once past TIME_WAIT; on Windows it would let a
        # second process steal a bound port, which SO_EXCLUSIVEADDRUSE forbids instead.
        exclusive = getattr(socket, "SO_EXCLUSIVEADDRUSE", None)
        if exclusive is not None:
            sock.setsockopt(socket.SOL_SOCKET, exclusive, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock
