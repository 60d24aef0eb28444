"""The metrics endpoint on a real loopback socket: routes, the bearer token, health, and hostile clients
(slowloris, a huge request, a connection flood) that must not stall or grow it."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from fleet.metrics import server as server_mod
from fleet.metrics.server import MetricsServer, Published, bind
from helpers import wait_until

BODY = b"# HELP hermes_fleet_reconcile_total x\n# TYPE hermes_fleet_reconcile_total counter\nhermes_fleet_reconcile_total 1\n"


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served(request):
    """A started server on an ephemeral port; `published` and the wall clock are the test's."""
    state = {"published": None}
    wall = Clock()
    token = getattr(request, "param", None)
    srv = MetricsServer(bind("127.0.0.1", 0), lambda: state["published"], token, wall=wall).start()
    request.addfinalizer(srv.close)
    srv.state, srv.wall_clock = state, wall  # type: ignore[attr-defined]
    return srv


def publish(srv, *, alive_until: float = 2000.0, ready=(("store-writable", True),)):
    srv.state["published"] = Published(BODY, alive_until, ready)


def request(srv, raw: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(srv.address, timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def get(srv, path: str, *extra: str, method: str = "GET"):
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{h}\r\n" for h in extra) + "\r\n"
    return request(srv, head.encode())


def test_metrics_is_served_in_the_text_format(served):
    assert get(served, "/metrics")[0] == 503  # no pass has ended yet
    publish(served)
    status, headers, body = get(served, "/metrics")
    assert (status, body) == (200, BODY)
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert headers["Connection"] == "close" and int(headers["Content-Length"]) == len(BODY)


def test_only_a_fixed_table_of_get_routes(served):
    publish(served)
    assert get(served, "/nope")[0] == 404
    assert get(served, "/metrics/../etc/passwd")[0] == 404
    status, headers, _ = get(served, "/metrics", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert get(served, "/metrics", method="DELETE")[0] == 405
    status, headers, body = get(served, "/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(BODY)
    assert get(served, "/")[0] == 200
    assert request(served, b"garbage\r\n\r\n")[0] == 400


@pytest.mark.parametrize("served", [b"s3cret-token"], indirect=True)
def test_a_configured_token_guards_metrics_but_not_health(served):
    publish(served)
    status, headers, _ = get(served, "/metrics")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert get(served, "/metrics", "Authorization: Bearer wrong")[0] == 401
    assert get(served, "/metrics", "Authorization: Basic s3cret-token")[0] == 401
    assert get(served, "/metrics", "Authorization: Bearer s3cret-token") == get(
        served, "/metrics", "authorization: bearer s3cret-token")
    assert get(served, "/metrics", "Authorization: Bearer s3cret-token")[0] == 200
    assert get(served, "/healthz")[0] == 200  # probes stay open; their bodies reveal nothing


def test_healthz_fails_once_the_loop_misses_its_next_pass(served):
    publish(served, alive_until=1010.0)
    assert get(served, "/healthz")[2] == b"ok\n"
    served.wall_clock.now = 1011.0  # the loop published nothing since
    status, _, body = get(served, "/healthz")
    assert status == 503 and body == b"[-]reconcile-loop failed: reason withheld\n"


def test_readyz_lists_its_checks_and_withholds_reasons(served):
    assert get(served, "/readyz")[0] == 503  # before the first pass
    publish(served, ready=(("store-writable", False), ("generation-observed", True)))
    status, _, body = get(served, "/readyz?verbose")
    assert status == 503
    assert body.decode().splitlines() == ["[+]reconcile-loop ok", "[+]first-pass ok",
                                          "[-]store-writable failed: reason withheld", "[+]generation-observed ok",
                                          "failed"]
    publish(served)
    assert get(served, "/readyz")[0::2] == (200, b"ok\n")


def test_a_huge_request_is_refused_and_cut(served):
    publish(served)
    status, _, _ = request(served, b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 100_000 + b"\r\n\r\n")
    assert status == 431


def test_slow_clients_cannot_stall_a_scrape_and_are_dropped(served, monkeypatch):
    monkeypatch.setattr(server_mod, "EXCHANGE_SECONDS", 1.0)
    publish(served)
    slow = []
    try:
        for _ in range(server_mod.MAX_CONNECTIONS + 20):  # more than it keeps: the oldest are dropped
            sock = socket.create_connection(served.address, timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")  # and never the rest (slowloris)
            slow.append(sock)
        started = time.monotonic()
        assert get(served, "/metrics")[0] == 200
        assert time.monotonic() - started < 1.0
        wait_until(lambda: len(served.connections) == 0, timeout=5, what="slow connections dropped")
        for sock in slow:  # every slow client was cut off without an answer
            sock.settimeout(5)
            assert sock.recv(100) == b""
    finally:
        for sock in slow:
            sock.close()


def test_a_reader_that_never_reads_does_not_block_others(served, monkeypatch):
    monkeypatch.setattr(server_mod, "EXCHANGE_SECONDS", 1.0)
    served.state["published"] = Published(b"x" * 5_000_000, 2000.0, ())  # far beyond the socket buffers
    stuck = socket.create_connection(served.address, timeout=5)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stuck.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        publish(served)
        assert get(served, "/healthz")[0] == 200
        wait_until(lambda: len(served.connections) == 0, timeout=5, what="stuck reader dropped")
    finally:
        stuck.close()


def test_publishing_never_waits_for_the_server_thread(served):
    """The loop's side is a reference swap: it completes while a client holds a connection open."""
    sock = socket.create_connection(served.address, timeout=5)
    try:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        done = threading.Event()
        threading.Thread(target=lambda: (publish(served), done.set()), daemon=True).start()
        assert done.wait(1.0)
    finally:
        sock.close()


def test_close_ends_the_thread_and_frees_the_port():
    srv = MetricsServer(bind("127.0.0.1", 0), lambda: None, None).start()
    host, port = srv.address
    srv.close()
    assert not srv.thread.is_alive()
    bind(host, port).close()  # the port is free again at once


def test_a_taken_port_raises_for_the_caller_to_report():
    first = bind("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            bind("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()
