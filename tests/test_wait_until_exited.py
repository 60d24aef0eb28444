"""`wait_until_exited`: what `down` waits on between two looks at the fleet. Real processes this test starts and
ends; on Linux through one exit watch (pidfds), and through polling where a platform has no watch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import pytest

from fleet.platform import current_platform
from fleet.platform.base import wait_until_exited
from fleet.platform.exits import PollingExitWatch
from fleet.platform.posix import PosixPlatform

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the polling stand-in is the POSIX platform's")


class WithoutExitWatch(PosixPlatform):
    def exit_watch(self):
        return PollingExitWatch()


class CountingWatches:
    """The platform with a count of the exit watches opened and of the looks at a process."""

    def __init__(self, platform):
        self.platform = platform
        self.watches = 0
        self.looks = 0

    def exit_watch(self):
        self.watches += 1
        return self.platform.exit_watch()

    def process_info(self, pid):
        self.looks += 1
        return self.platform.process_info(pid)


@pytest.fixture
def sleepers(request):
    started: list[subprocess.Popen] = []

    def start(n: int) -> list[subprocess.Popen]:
        for _ in range(n):
            started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        return started[-n:]

    def end_all():
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)

    request.addfinalizer(end_all)
    return start


def _infos(platform, procs):
    infos = [platform.process_info(p.pid) for p in procs]
    assert all(i is not None for i in infos)
    return infos


@pytest.mark.parametrize("platform", [current_platform(), WithoutExitWatch()], ids=["exit watch", "polling"])
def test_it_returns_the_survivors_at_the_deadline_and_nothing_once_all_exited(sleepers, platform):
    procs = sleepers(3)
    infos = _infos(platform, procs)
    procs[0].kill()
    procs[1].kill()
    survivors = wait_until_exited(platform, infos, time.monotonic() + 0.3)
    assert [i.pid for i in survivors] == [procs[2].pid]
    procs[2].kill()
    began = time.monotonic()
    assert wait_until_exited(platform, infos, began + 30.0) == []
    assert time.monotonic() - began < 10.0  # it returned on the exit, not at the deadline


def test_one_watch_serves_every_exit(sleepers):
    """Each exit is taken as it comes: no watch opened again, no look at the others, per exit."""
    base = current_platform()
    if base.exit_watch().fileno() < 0:
        pytest.skip("this platform has no exit watch")
    procs = sleepers(20)
    infos = _infos(base, procs)
    counted = CountingWatches(base)
    for proc in procs:
        proc.kill()
    assert wait_until_exited(counted, infos, time.monotonic() + 30.0) == []  # type: ignore[arg-type]
    assert counted.watches == 1
    assert counted.looks <= len(procs)  # the first look at each; an exit watched needs none more


def test_a_pid_taken_by_another_process_counts_as_exited(sleepers):
    platform = current_platform()
    [proc] = sleepers(1)
    info = _infos(platform, [proc])[0]
    someone_else = dataclasses.replace(info, start_ticks=(info.start_ticks or 0) + 1, create_time=info.create_time + 1)
    assert wait_until_exited(platform, [someone_else], time.monotonic() + 5.0) == []
