"""The pure-Python sd_notify, against a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket

import pytest

from fleet.service.notify import SdNotify

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="AF_UNIX datagram sockets needed")


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield path, sock
    finally:
        sock.close()


def receive(sock) -> str:
    return sock.recv(4096).decode()


def test_ready_with_status_is_one_datagram(listener):
    path, sock = listener
    notify = SdNotify({"NOTIFY_SOCKET": path})
    assert notify.enabled
    assert notify.ready("3 profiles converged")
    assert receive(sock) == "READY=1\nSTATUS=3 profiles converged"


def test_status_stopping_and_extend_timeout(listener):
    path, sock = listener
    notify = SdNotify({"NOTIFY_SOCKET": path})
    assert notify.status("draining alpha")
    assert receive(sock) == "STATUS=draining alpha"
    assert notify.stopping()
    assert receive(sock) == "STOPPING=1"
    assert notify.extend_timeout(30)
    assert receive(sock) == "EXTEND_TIMEOUT_USEC=30000000"


def test_a_newline_in_a_status_cannot_add_fields(listener):
    path, sock = listener
    notify = SdNotify({"NOTIFY_SOCKET": path})
    notify.status("line one\nMAINPID=1")
    assert receive(sock) == "STATUS=line one MAINPID=1"


def test_watchdog_interval_is_half_of_watchdog_usec_and_pings(listener):
    path, sock = listener
    notify = SdNotify({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000"})
    assert notify.watchdog_interval == 30.0
    assert notify.watchdog()
    assert receive(sock) == "WATCHDOG=1"


def test_watchdog_for_another_pid_is_not_ours(listener):
    path, _ = listener
    pid = os.getpid()
    theirs = SdNotify({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(pid + 1)}, pid=pid)
    assert theirs.watchdog_interval is None
    assert theirs.watchdog() is False
    ours = SdNotify({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(pid)}, pid=pid)
    assert ours.watchdog_interval == 2.0


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_no_watchdog_without_a_valid_interval(listener, usec):
    path, _ = listener
    assert SdNotify({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": usec}).watchdog_interval is None


def test_everything_is_a_no_op_outside_systemd():
    notify = SdNotify({})
    assert not notify.enabled
    assert notify.watchdog_interval is None
    assert notify.ready("x") is False
    assert notify.watchdog() is False
    assert notify.status("x") is False
    assert notify.stopping() is False


def test_unsupported_address_kinds_are_ignored():
    assert not SdNotify({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    assert not SdNotify({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_a_vanished_socket_returns_false_instead_of_raising(tmp_path):
    notify = SdNotify({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notify.enabled
    assert notify.ready() is False


@pytest.mark.skipif(not os.path.exists("/proc/net/unix"), reason="abstract sockets are Linux-only")
def test_abstract_namespace_socket():
    name = f"hermes-fleet-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert SdNotify({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_reads_the_process_environment_by_default(listener, monkeypatch):
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert SdNotify().ready()
    assert receive(sock) == "READY=1"
