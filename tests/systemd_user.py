"""A private `systemd --user` for tests (docs/service.md, "How it is tested"): as root, a private mount namespace
gets its own /run/systemd (so systemd believes it was booted with systemd), a delegated cgroup and a private
XDG_RUNTIME_DIR; `systemd --user` runs there and is driven with `systemctl --user` over its private socket.
Nothing of the host's service managers is touched; everything started here is ended by PID.

`user_manager` (one per test module) skips, with the reason, where the set-up is impossible (not root, no unshare,
no systemd binary, a cgroup layout we cannot delegate, the manager does not come up); `private_env` points a
test's environment (HOME, XDG_*, the bus) at it. Import both into a test module."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SYSTEMD_CANDIDATES = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")


def wait_for(condition, timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


# ------------------------------------------------------------------ the private manager


@dataclass
class UserManager:
    pid: int
    env: dict[str, str]
    runtime_dir: Path
    home: Path
    cgroup_dirs: list[Path]

    def systemctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["systemctl", "--user", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def show(self, unit: str, props: str = "ActiveState,SubState,MainPID,NRestarts,StatusText,LoadState") -> dict[str, str]:
        out = self.systemctl("show", unit, "-p", props).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def inside(self, argv: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a program in the manager's mount namespace, where /run/systemd/system exists: outside it,
        `systemctl --user is-system-running` says offline, and tools that ask (hermes gateway install) give up."""
        return subprocess.run(["nsenter", "--target", str(self.pid), "--mount", "--", *argv], env=env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for top in self.cgroup_dirs:
            for procs in top.rglob("cgroup.procs"):
                try:
                    pids |= {int(x) for x in procs.read_text().split()}
                except OSError:
                    pass
        return pids


def _cgroup_tops(name: str) -> list[Path] | None:
    root = Path("/sys/fs/cgroup")
    if (root / "unified").is_dir() and (root / "systemd").is_dir():
        return [root / "unified" / name, root / "systemd" / name]  # hybrid layout (systemd 252 here)
    if (root / "cgroup.controllers").exists():
        return [root / name]  # pure cgroup v2
    return None


@pytest.fixture(scope="module")
def user_manager(tmp_path_factory):
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root: a private systemd --user needs a private mount namespace and a delegated cgroup")
    systemd_bin = next((p for p in SYSTEMD_CANDIDATES if os.access(p, os.X_OK)), None)
    missing = [tool for tool in ("unshare", "systemctl", "systemd-run") if shutil.which(tool) is None]
    if systemd_bin is None or missing:
        pytest.skip(f"missing: {', '.join(missing) or 'the systemd binary'}")
    base = tmp_path_factory.mktemp("sdlive")
    name = f"hermes-fleet-test-{os.getpid()}"
    tops = _cgroup_tops(name)
    if tops is None:
        pytest.skip("unknown cgroup layout: cannot delegate a cgroup to the test manager")
    runtime, home = base / "xdg", base / "home"
    runtime.mkdir(mode=0o700)
    (home / ".config").mkdir(parents=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_RUNTIME_DIR": str(runtime), "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime}/bus",
        "USER": "root", "LANG": "C.UTF-8",
    }
    moves = "\n".join(f'mkdir -p "{t}" && echo $$ > "{t}/cgroup.procs"' for t in tops)
    inner = base / "inner.sh"
    inner.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        set -e
        mount -t tmpfs tmpfs /run/systemd 2>/dev/null || {{ mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd; }}
        mkdir -p /run/systemd/system
        {moves}
        exec {systemd_bin} --user
        """))
    inner.chmod(0o755)
    log = open(base / "manager.log", "wb")  # noqa: SIM115 - written for the fixture's whole life; closed in its finally
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", str(inner)], env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    manager = UserManager(proc.pid, env, runtime, home, tops)
    try:
        deadline = time.monotonic() + 20
        while not (runtime / "systemd" / "private").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (base / "manager.log").read_text(errors="replace")[-600:]
                pytest.skip(f"systemd --user did not start here: {tail.strip() or 'no output'}")
            time.sleep(0.05)
        yield manager
    finally:
        _teardown(proc, manager)
        log.close()


def _teardown(proc: subprocess.Popen, manager: UserManager) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # the user manager's own orderly exit
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    # Whatever the manager left in its cgroups was started by this test (KillMode=process
    # leftovers): end those PIDs, then remove the cgroups, deepest first.
    for pid in manager.cgroup_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for top in manager.cgroup_dirs:
        if top.exists():
            wait_for(lambda: not any(p.read_text().split() for p in top.rglob("cgroup.procs")), 10, "empty cgroups")
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                d.rmdir()
            top.rmdir()


@pytest.fixture
def private_env(user_manager, monkeypatch):
    for key, value in user_manager.env.items():
        monkeypatch.setenv(key, value)
    return user_manager
