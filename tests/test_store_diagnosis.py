"""Who holds a locked store: the write lock's holder from /proc/locks, else whoever has the file open."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fleet.platform.lock_holders import _write_lock, lock_holders

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

HOLD = """
import fcntl, sys
fh = open(sys.argv[1], "r+b")
if sys.argv[2] == "lock":
    fcntl.lockf(fh, fcntl.LOCK_EX)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize(("line", "expected"), [
    ("1: POSIX  ADVISORY  WRITE 26055 fe:00:2147288 128 128", (26055, (0xFE, 0, 2147288))),
    ("2: FLOCK  ADVISORY  WRITE 26057 fe:01:17 0 EOF", (26057, (0xFE, 1, 17))),
    ("3: OFDLCK ADVISORY  WRITE -1 08:02:9 0 EOF", (-1, (8, 2, 9))),
    ("4: POSIX  ADVISORY  READ 26055 fe:00:2147288 128 128", None),
    ("4: -> POSIX  ADVISORY  WRITE 26056 fe:00:2147288 128 128", None),
    ("5: POSIX  ADVISORY  WRITE", None),
    ("6: LEASE  ACTIVE    WRITE 26055 fe:00:2147288 0 EOF", None),
    ("7: POSIX  ADVISORY  WRITE x fe:00:1 0 EOF", None),
])
def test_a_proc_locks_line_names_a_held_write_lock_only(line, expected):
    assert _write_lock(line) == expected


def _holder(path, how: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), how], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@LINUX
@pytest.mark.parametrize("how", ["lock", "open"])
def test_the_holder_is_found_by_its_lock_or_its_open_file(tmp_path, how):
    db = tmp_path / "fleet.db"
    db.write_bytes(b"\0" * 4096)
    proc = _holder(db, how)
    try:
        assert lock_holders(str(db)) == [proc.pid]
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


@LINUX
def test_nobody_holds_a_store_only_this_process_opened(tmp_path):
    db = tmp_path / "fleet.db"
    db.write_bytes(b"\0" * 4096)
    with open(db, "rb"):
        assert os.getpid() not in lock_holders(str(db))
        assert lock_holders(str(db)) == []
