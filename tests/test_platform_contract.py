"""The platform contract (fleet.platform.base.Platform), one set of checks for every implementation.

Each OS's own platform runs against the real OS: on Linux LinuxPlatform, on macOS MacPlatform, on Windows
WindowsPlatform. On Linux, MacPlatform and WindowsPlatform also run, their real code with only the lowest OS
calls replaced (tests/platform_fakes.py: kqueue, kernel32, CreateProcess, taskkill, msvcrt.locking, the
signal module); every process here is real either way. `pytest -m platform` runs this file and the Windows
controller pass (test_platform_windows_controller.py); see docs/platforms.md.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from fleet.observe import identity
from fleet.platform.base import Platform, SignalRefused
from fleet.platform.linux import LinuxPlatform
from fleet.platform.macos import MacPlatform
from fleet.platform.posix import PosixPlatform
from fleet.platform.wake import send_wake
from fleet.platform.windows import CREATE_BREAKAWAY_FROM_JOB, SPAWN_FLAGS, WindowsPlatform
from fleet.store.layout import StateDir
from helpers import SIGNAL_LOGGER, ProcessReaper, reaper, wait_until  # noqa: F401
from platform_fakes import FakeKqueueModule, WindowsFakes, mac_platform, windows_platform

pytestmark = [pytest.mark.platform, pytest.mark.timeout(60)]

NATIVE = "linux" if sys.platform.startswith("linux") else {"darwin": "macos", "win32": "windows"}.get(sys.platform)
# The stand-ins are made of Linux calls, so the other platforms run only on Linux; elsewhere, only the host's.
PLATFORMS = ["linux", "macos", "windows"] if NATIVE == "linux" else [NATIVE]
stand_ins_only = pytest.mark.skipif(NATIVE != "linux", reason="the stand-ins are made of Linux calls")
IMPLEMENTATIONS = [PosixPlatform, LinuxPlatform, MacPlatform, WindowsPlatform]
STATE = "/nonexistent/fleet-state"
SLEEPER = "import time\nwhile True: time.sleep(60)"
CHECKED: set[str] = set()


def checks(*methods: str) -> Callable:
    """Names the contract methods a test checks; test_every_method_of_the_contract_is_checked adds them up."""
    CHECKED.update(methods)
    return lambda test: test


@dataclass
class Subject:
    name: str
    platform: Any
    stand_ins: Any  # WindowsFakes, FakeKqueueModule, or None for the real OS
    reaper: ProcessReaper
    tmp: Path

    @property
    def posix(self) -> bool:
        return self.name != "windows"

    def env(self, profile: str = "alpha") -> dict[str, str]:
        return {**os.environ, **identity.markers(profile, STATE)}

    def spawn(self, code: str, *args: str, env: dict[str, str] | None = None) -> int:
        pid = self.platform.spawn_detached([sys.executable, "-c", code, *args], env or self.env(), str(self.tmp),
                                           str(self.tmp / "child.log"))
        self.reaper.track(self.platform.children.popen(pid))
        return pid

    def stranger(self, code: str = SLEEPER, *args: str) -> subprocess.Popen:
        """A process the platform did not spawn (an adopted gateway, say)."""
        return self.reaper.spawn([sys.executable, "-c", code, *args])


@pytest.fixture(params=PLATFORMS)
def subject(request, reaper, tmp_path) -> Subject:
    if request.param == NATIVE:
        native = {"linux": LinuxPlatform, "macos": MacPlatform, "windows": WindowsPlatform}[NATIVE]
        return Subject(NATIVE, native(), None, reaper, tmp_path)
    if request.param == "macos":
        platform, kq = mac_platform()
        return Subject("macos", platform, kq, reaper, tmp_path)
    platform, fakes = windows_platform()
    return Subject("windows", platform, fakes, reaper, tmp_path)


def readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def kill(pid: int) -> None:
    try:
        psutil.Process(pid).kill()
    except psutil.NoSuchProcess:
        pass


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ---------------------------------------------------------------------------------------------- the contract

def test_every_implementation_has_every_method_of_the_contract_with_its_parameters():
    contract = {name: inspect.signature(member) for name, member in vars(Platform).items()
                if callable(member) and not name.startswith("_")}
    for implementation in IMPLEMENTATIONS:
        for name, signature in contract.items():
            method = getattr(implementation, name, None)
            assert method is not None, f"{implementation.__name__} lacks {name}"
            assert list(inspect.signature(method).parameters) == list(signature.parameters), (
                f"{implementation.__name__}.{name}{inspect.signature(method)} differs from the contract's {signature}")


def test_every_method_of_the_contract_is_checked():
    contract = {name for name, member in vars(Platform).items() if callable(member) and not name.startswith("_")}
    assert contract - CHECKED == set(), "methods of the contract no test here checks"
    assert CHECKED - contract == set(), "checks named for methods the contract does not have"


# ---------------------------------------------------------------------------------------------- identity

@checks("spawn_detached", "process_info", "process_environ", "child_environ", "iter_processes", "process_starts",
        "current_uid", "process_group", "drain_epoch")
def test_a_spawned_child_is_seen_as_what_it_is(subject):
    env = subject.env()
    pid = subject.spawn(SLEEPER, "sentinel-word", env=env)
    platform = subject.platform
    info = wait_until(lambda: (i := platform.process_info(pid)) and "sentinel-word" in i.cmdline and i, 10,
                      what="the child's command line")
    assert info.pid == pid and info.alive and info.ppid == os.getpid()
    assert info.started_as(info.start_ticks, info.create_time)
    assert abs(info.create_time - psutil.Process(pid).create_time()) < 0.05
    assert platform.child_environ(pid) == env
    assert wait_until(lambda: (platform.process_environ(pid) or {}).get("HERMES_FLEET_PROFILE") == "alpha", 10)
    assert pid in {p.pid for p in platform.iter_processes()}
    [start] = [s for s in platform.process_starts() if s.pid == pid]
    assert (start.start_ticks, start.create_time) == (info.start_ticks, info.create_time)
    assert start.info is None or start.info.cmdline == info.cmdline
    assert platform.spawn_caveat(pid) is None
    if subject.posix:
        assert platform.current_uid() == os.getuid()
        assert platform.process_group(pid) == (pid, pid)  # its own session: no terminal hangup reaches it
    else:
        assert platform.current_uid() is None  # Windows users are names (ProcessInfo.username)
        assert platform.process_group(pid) == (None, None)
    if subject.name == "linux":
        boot_id, _, ticks = platform.drain_epoch().partition(":")
        assert boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip() and int(ticks) > 0
    else:
        assert platform.drain_epoch() == ""  # Hermes has no epoch there, so it checks none


@checks("reap")
def test_reap_gives_a_childs_exit_code_once_and_nothing_for_others(subject):
    pid = subject.spawn("import sys; sys.exit(3)")
    stranger = subject.stranger()
    assert wait_until(lambda: subject.platform.reap(pid)[0], 10, what="the exit") is True
    assert subject.platform.reap(pid) == (False, None)
    assert subject.platform.child_environ(pid) is None
    assert subject.platform.reap(stranger.pid) == (False, None)
    code = subject.spawn("import sys; sys.exit(3)")
    assert wait_until(lambda: (reaped := subject.platform.reap(code))[0] and reaped, 10) == (True, 3)


def test_a_gone_process_has_no_identity(subject):
    pid = subject.spawn(SLEEPER)
    kill(pid)
    wait_until(lambda: subject.platform.reap(pid)[0], 10, what="the exit")
    assert subject.platform.process_info(pid) is None
    assert subject.platform.process_environ(pid) is None


LOCK_HOLDER = """
import sys, time
f = open(sys.argv[1], "a+")
if sys.platform == "win32":  # as Hermes locks there: one byte at 1 MiB
    import msvcrt
    f.seek(1 << 20)
    msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
else:
    import fcntl
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
open(sys.argv[2], "w").close()
while True:
    time.sleep(60)
"""


@checks("lock_is_held")
def test_a_gateway_lock_is_held_only_while_its_holder_lives(subject):
    lock = subject.tmp / "gateway.lock"
    ready = subject.tmp / "locked"
    holder = subject.stranger(LOCK_HOLDER, str(lock), str(ready))
    assert not subject.platform.lock_is_held(str(subject.tmp / "missing.lock"))
    wait_until(ready.exists, 10, what="the holder to lock")
    assert subject.platform.lock_is_held(str(lock))
    holder.kill()
    holder.wait(10)
    assert not subject.platform.lock_is_held(str(lock))


@checks("find_executable")
def test_a_program_is_found_by_its_path_or_on_path_and_nothing_else_is(subject, monkeypatch):
    """What `diff` and `apply` check a command's first word with ("executable_missing")."""
    tool_dir = subject.tmp / "bin"
    tool_dir.mkdir()
    tool, data, folder = tool_dir / "fleet-probe-tool", tool_dir / "fleet-probe-data", tool_dir / "fleet-probe-dir"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    data.write_text("not a program\n")
    data.chmod(0o644)
    folder.mkdir()
    monkeypatch.setenv("PATH", os.pathsep.join([str(subject.tmp / "missing"), str(tool_dir)]))
    find = subject.platform.find_executable
    assert find(sys.executable) == sys.executable
    assert find(tool.name) == str(tool)
    assert find(str(tool)) == str(tool)
    assert find("fleet-probe-absent") is None
    assert find(str(subject.tmp / "missing" / "fleet-probe-tool")) is None
    if subject.posix:
        assert find(data.name) is None and find(str(data)) is None  # not executable
    assert find(folder.name) is None and find(str(folder)) is None  # a directory
    monkeypatch.chdir(tool_dir)
    monkeypatch.setenv("PATH", "")
    assert find(tool.name) is None  # an empty PATH searches nowhere, not the current directory


# ---------------------------------------------------------------------------------------------- exits

@checks("exit_watch")
def test_the_exit_watch_wakes_for_a_child_and_a_stranger_once_each(subject):
    watch = subject.platform.exit_watch()
    try:
        child = subject.spawn(SLEEPER)
        stranger = subject.stranger()
        assert watch.watch(frozenset({child, stranger.pid})) == frozenset()
        assert not readable(watch.fileno(), 0)
        kill(child)
        assert readable(watch.fileno(), 10), "no wake-up for the child's exit"
        assert watch.exited() == {child}
        assert not readable(watch.fileno(), 0), "the reported exit keeps waking the loop"
        assert watch.watch(frozenset({child, stranger.pid})) == frozenset()  # still listed: not armed again
        stranger.kill()
        assert readable(watch.fileno(), 10), "no wake-up for a process that is not our child"
        assert watch.exited() == {stranger.pid}
        stranger.wait(10)
        subject.platform.reap(child)
        assert watch.watch(frozenset({child})) == frozenset()  # a reported PID stays reported while listed
        late = subject.spawn("pass")
        wait_until(lambda: subject.platform.reap(late)[0], 10)
        assert watch.watch(frozenset({late})) == {late}, "a PID already gone must be left to polling"
    finally:
        watch.close()


@stand_ins_only
def test_the_windows_exit_watch_waits_on_at_most_64_handles_per_thread(reaper):
    platform, fakes = windows_platform()
    sleepers = [reaper.spawn(["sleep", "300"]) for _ in range(70)]
    watch = platform.exit_watch()
    try:
        assert watch.watch(frozenset(p.pid for p in sleepers)) == frozenset()
        last = sleepers[-1]
        last.kill()
        assert readable(watch.fileno(), 10)
        assert watch.exited() == {last.pid}
        assert fakes.kernel32.max_handles_per_wait == 64  # 63 processes and the batch's own stop event
        fakes.kernel32.denied.add(sleepers[0].pid)
        assert watch.watch(frozenset(p.pid for p in sleepers[1:])) == frozenset()
        fresh = reaper.spawn(["sleep", "300"])
        fakes.kernel32.denied.add(fresh.pid)
        assert watch.watch(frozenset({fresh.pid})) == {fresh.pid}, "a handle we may not open is polled"
    finally:
        watch.close()


@stand_ins_only
def test_the_macos_exit_watch_arms_one_shot_filters_in_one_kqueue(reaper):
    kq = FakeKqueueModule()
    watch = MacPlatform(kq=kq).exit_watch()
    try:
        a, b = reaper.spawn(["sleep", "300"]), reaper.spawn(["sleep", "300"])
        assert watch.watch(frozenset({a.pid, b.pid})) == frozenset()
        assert sorted(kq.added) == sorted([a.pid, b.pid])
        assert watch.watch(frozenset({a.pid})) == frozenset()  # b disarmed
        b.kill()
        b.wait(10)
        assert not readable(watch.fileno(), 0.2), "a disarmed PID still wakes the loop"
    finally:
        watch.close()


# ---------------------------------------------------------------------------------------------- stopping

@checks("never_signal")
def test_never_signal_refuses_this_process_its_ancestors_and_the_system(subject):
    never = subject.platform.never_signal
    assert never(os.getpid())
    assert never(os.getppid())
    assert never(1 if os.name == "posix" else 4)  # init; Windows' System process
    assert never(subject.spawn(SLEEPER)) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the /proc walk is Linux's")
def test_the_linux_walk_up_the_process_tree_finds_what_psutil_finds(tmp_path):
    """LinuxPlatform reads the ancestors never_signal refuses from /proc itself (a `status` need not load psutil)."""
    walk = LinuxPlatform()._parents
    assert walk(os.getpid()) == {p.pid for p in psutil.Process().parents()}
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert walk(child.pid) == {os.getpid()} | {p.pid for p in psutil.Process().parents()}
    finally:
        child.stdin.close()
        child.wait(10)
    assert walk(child.pid) == frozenset()  # gone (reaped): nothing above it


@checks("request_stop")
def test_request_stop_is_sigterm_or_sigint_on_posix_and_nothing_on_windows(subject, monkeypatch):
    log = subject.tmp / "signals.log"
    pid = subject.spawn(SIGNAL_LOGGER, str(log))
    wait_until(lambda: Path(str(log) + ".ready").exists(), 10)
    with pytest.raises(SignalRefused):
        subject.platform.request_stop(os.getpid())
    with pytest.raises(SignalRefused):
        subject.platform.request_stop(os.getpid(), interrupt=True)
    if subject.posix:
        subject.platform.request_stop(pid)
        wait_until(lambda: log.exists() and log.read_text().split() == ["SIGTERM"], 10, what="the SIGTERM")
        subject.platform.request_stop(pid, interrupt=True)
        wait_until(lambda: log.read_text().split() == ["SIGTERM", "SIGINT"], 10, what="the SIGINT")
        return
    sent: list = []
    monkeypatch.setattr(os, "kill", lambda *a: sent.append(a))
    subject.platform.request_stop(pid)  # the planned-stop marker is the graceful stop there
    subject.platform.request_stop(pid, interrupt=True)
    assert sent == [] and not gone(pid)
    assert subject.stand_ins is None or subject.stand_ins.taskkill.calls == []


TREE = """
import os, subprocess, sys, time
own = {"start_new_session": True} if os.name == "posix" else {"creationflags": 0x00000200}
child = "import sys, time; open(sys.argv[1], 'w').close(); time.sleep(300)"
marked = subprocess.Popen([sys.executable, "-c", child, sys.argv[1] + ".marked"], **own)
bare_env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_FLEET_")}
bare = subprocess.Popen([sys.executable, "-c", child, sys.argv[1] + ".bare"], env=bare_env, **own)
open(sys.argv[1] + ".tmp", "w").write(f"{marked.pid} {bare.pid}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""


@checks("kill_tree", "kill_process")
def test_kill_tree_ends_the_root_and_its_marked_descendants_only(subject):
    pids = subject.tmp / "tree"
    root = subject.spawn(TREE, str(pids))
    wait_until(pids.exists, 10, what="the tree")
    marked, bare = (int(p) for p in pids.read_text().split())
    for pid in (marked, bare):
        subject.reaper.track(pid)
    wait_until(lambda: all(Path(f"{pids}.{n}").exists() for n in ("marked", "bare")), 10, what="the descendants")
    with pytest.raises(SignalRefused):
        subject.platform.kill_tree(os.getpid(), identity.markers("alpha", STATE))
    subject.platform.kill_tree(root, identity.markers("alpha", STATE))
    wait_until(lambda: gone(root) and gone(marked), 10, what="the root and its marked descendant to die")
    assert not gone(bare), "a descendant without the markers that left the group is not the gateway's"
    if subject.stand_ins is not None and not subject.posix:
        assert ["taskkill", "/F", "/PID", str(root)] in subject.stand_ins.taskkill.calls
    other = subject.spawn(SLEEPER)
    with pytest.raises(SignalRefused):
        subject.platform.kill_process(os.getpid())
    subject.platform.kill_process(other)
    wait_until(lambda: subject.platform.reap(other)[0], 10, what="kill_process")
    subject.platform.kill_process(other)  # already gone: nothing to do, no error


@checks("spawn_daemon", "scoped_command")
def test_spawn_daemon_starts_a_process_that_is_nobodys_child_reading_what_it_is_given(subject):
    started = subject.tmp / "daemon"
    fd = os.open(subject.tmp / "daemon.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    read_end, write_end = os.pipe()
    try:
        pid = subject.platform.spawn_daemon(
            [sys.executable, "-c", f"import sys, time\nword = sys.stdin.read()\n"
                                   f"open({str(started)!r}, 'w').write(word)\ntime.sleep(300)"], fd, stdin_fd=read_end)
    finally:
        os.close(fd)
        os.close(read_end)
    subject.reaper.track(pid)
    os.write(write_end, b"go")
    os.close(write_end)  # the daemon holds no copy of it: it reads to the end
    wait_until(lambda: started.exists() and started.read_text() == "go", 10, what="the daemon")
    if subject.posix:
        assert psutil.Process(pid).ppid() != os.getpid()
    elif subject.stand_ins is not None:
        assert subject.stand_ins.popen.flags[-1] == SPAWN_FLAGS & ~CREATE_BREAKAWAY_FROM_JOB
    argv = ["gateway", "run"]
    scoped = subject.platform.scoped_command("hermes-fleet-alpha-1", argv, stop_timeout=30)
    assert scoped == argv or (subject.name == "linux" and scoped[0] == "systemd-run" and scoped[-2:] == argv)


@checks("spawn_caveat")
@stand_ins_only
def test_windows_children_are_detached_and_broken_away_or_say_why_not(tmp_path, reaper):
    platform, fakes = windows_platform()
    pid = platform.spawn_detached([sys.executable, "-c", SLEEPER], dict(os.environ), str(tmp_path),
                                  str(tmp_path / "a.log"))
    reaper.track(platform.children.popen(pid))
    assert fakes.popen.flags == [SPAWN_FLAGS] and platform.spawn_caveat(pid) is None
    platform, fakes = windows_platform(WindowsFakes())
    fakes.popen.refuse_breakaway = True
    pid = platform.spawn_detached([sys.executable, "-c", SLEEPER], dict(os.environ), str(tmp_path),
                                  str(tmp_path / "b.log"))
    reaper.track(platform.children.popen(pid))
    assert fakes.popen.flags == [SPAWN_FLAGS, SPAWN_FLAGS & ~CREATE_BREAKAWAY_FROM_JOB]
    assert "does not allow breakaway" in platform.spawn_caveat(pid) and "does not allow breakaway" in fakes.warnings[0]


# ---------------------------------------------------------------------------------------------- the controller

@checks("open_wake_channel")
def test_the_wake_channel_carries_messages_from_the_cli_only(subject):
    state = StateDir(subject.tmp / "state")
    state.root.mkdir(mode=0o700)
    channel = subject.platform.open_wake_channel(state)
    try:
        assert channel.fileno() >= 0 and channel.identity is not None and os.path.exists(channel.path)
        if os.name == "posix":
            assert os.stat(channel.path).st_mode & 0o077 == 0, "the channel's file is the user's alone"
        assert send_wake(state, "scan")
        assert readable(channel.fileno(), 5)
        assert channel.drain() == {"scan"}
        if not subject.posix:
            port = __import__("json").loads(Path(channel.path).read_text())["port"]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as forger:
                forger.sendto(b"not-the-token stop", ("127.0.0.1", port))
            assert readable(channel.fileno(), 5)
            assert channel.drain() == set(), "a datagram without the token was taken"
    finally:
        channel.close()
    assert not os.path.exists(channel.path)
    assert not send_wake(state, "scan")


@pytest.mark.skipif(NATIVE != "linux", reason="Linux's sun_path limit")
def test_a_unix_socket_path_too_long_falls_back_to_the_loopback_channel(tmp_path):
    deep = tmp_path / ("d" * 100) / "state"
    deep.mkdir(parents=True, mode=0o700)
    state = StateDir(deep)
    channel = LinuxPlatform().open_wake_channel(state)
    try:
        assert channel.path == str(state.wake_port)
        assert send_wake(state, "wake") and readable(channel.fileno(), 5) and channel.drain() == {"wake"}
    finally:
        channel.close()


@checks("on_stop_request")
def test_the_stop_requests_of_the_os_reach_the_handler(subject):
    called: list[str] = []
    signals: Any = getattr(subject.stand_ins, "signals", signal)
    names = ("SIGTERM", "SIGINT", "SIGHUP") if subject.posix else ("SIGINT", "SIGBREAK")
    numbers = [getattr(signals, name) for name in names]
    previous = {signum: signals.getsignal(signum) for signum in numbers}
    try:
        subject.platform.on_stop_request(lambda: called.append("stop"))
        for signum in numbers:
            if subject.posix:
                signal.raise_signal(signum)
            else:  # a console control event would reach the test runner too: the handler is called as Python would
                signals.getsignal(signum)(signum, None)
    finally:
        for signum, handler in previous.items():
            signals.signal(signum, handler)
    assert called == ["stop"] * len(names)


CONTROLLER = """
import select, signal, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from fleet.platform.wake import open_wake_channel
from fleet.store.layout import StateDir
if sys.argv[2] == "windows":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the wake channel's stop can end it gracefully
channel = open_wake_channel(StateDir(Path(sys.argv[1])), unix=sys.argv[2] != "windows")
open(sys.argv[1] + "/ready", "w").close()
while True:
    select.select([channel.fileno()], [], [])
    if "stop" in channel.drain():
        sys.exit(0)
"""


def _info(platform, pid: int):
    info = platform.process_info(pid)
    assert info is not None, f"pid {pid} is not there"
    return info


@checks("stop_controller_process")
def test_a_controller_is_asked_to_stop_the_way_its_os_can_ask(subject):
    state = StateDir(subject.tmp / "state")
    state.root.mkdir(mode=0o700)
    repo = str(Path(__file__).resolve().parents[1])
    proc = subject.reaper.spawn([sys.executable, "-c", CONTROLLER.format(repo=repo), str(state.root), subject.name])
    wait_until((state.root / "ready").exists, 10, what="the controller stand-in")
    subject.platform.stop_controller_process(state, _info(subject.platform, proc.pid), 20)
    assert proc.wait(10) == (0 if not subject.posix else -signal.SIGTERM)


@checks("stop_controller_process")
def test_a_controller_pid_taken_by_another_process_is_left_alone(subject):
    state = StateDir(subject.tmp / "state")
    state.root.mkdir(mode=0o700)
    proc = subject.reaper.spawn([sys.executable, "-c", SLEEPER])
    info = _info(subject.platform, proc.pid)
    earlier = dataclasses.replace(info, start_ticks=None if info.start_ticks is None else info.start_ticks - 500,
                                  create_time=info.create_time - 5)  # the controller that had this PID before
    subject.platform.stop_controller_process(state, earlier, 0.4)
    assert proc.poll() is None, "a process that only reuses the controller's PID was stopped"


@pytest.mark.skipif(NATIVE not in ("linux", "windows"), reason="the Windows platform runs here on neither")
def test_a_windows_controller_that_ignores_the_stop_message_is_terminated_after_half_the_timeout(tmp_path, reaper):
    platform = windows_platform()[0] if NATIVE == "linux" else WindowsPlatform()
    state = StateDir(tmp_path / "state")
    state.root.mkdir(mode=0o700)
    proc = reaper.spawn([sys.executable, "-c", SLEEPER])
    Path(state.wake_port).write_text('{"port": 9, "token": "x"}')  # a channel no one reads
    asked = time.monotonic()
    platform.stop_controller_process(state, _info(platform, proc.pid), 0.4)
    assert time.monotonic() - asked >= 0.2, "terminated without waiting for the stop message to work"
    assert proc.wait(10) is not None
