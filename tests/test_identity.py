"""Never signal what is not ours: the one identity rule (fleet/observe/identity.py) and the platform's
never_signal guard, with real processes. Every process a test starts is ended by the test (reaper / fleet
fixture); no real signal is ever aimed at pid 1, the test runner or a process of another user: where a
test asks the platform to do that, os.kill, os.killpg and psutil's signalling are replaced first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from factories import profile_spec, with_changes
from fleet.observe import identity
from fleet.platform.base import SignalRefused
from fleet.platform.linux import LinuxPlatform
from fleet.store.files import write_json_atomic
from fleet_harness import alive, environ_of, fleet, proc_start_ticks  # noqa: F401
from helpers import SIGNAL_LOGGER, ProcessReaper, reaper, wait_until  # noqa: F401

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process model"),
    pytest.mark.timeout(90),
]

STATE = "/nonexistent/fleet-state"  # identity compares the marker to this string only


def logger(reaper, tmp_path: Path, *, env: dict[str, str] | None, extra: tuple[str, ...] = (), name="decoy",
           empty_env: bool = False) -> tuple[subprocess.Popen, Path]:
    """A process of ours that notes every catchable signal in `<name>.log`; `empty_env` starts it via
    `env -i` (nothing in /proc/<pid>/environ), in its own session."""
    log = tmp_path / f"{name}.log"
    argv = [sys.executable, "-c", SIGNAL_LOGGER, str(log), *extra]
    proc = reaper.spawn(["env", "-i", *argv] if empty_env else argv, env=env)
    wait_until(lambda: Path(str(log) + ".ready").exists(), 10, what=f"{name} to start")
    return proc, log


def check(platform, pid: int, name: str = "alpha", state: str = STATE, spec=None) -> identity.Check:
    info = platform.process_info(pid)
    assert info is not None
    return identity.check(platform, pid, info.start_ticks, info.create_time, name, state, spec)


def marked(name: str = "alpha", state: str = STATE) -> dict[str, str]:
    return {**os.environ, **identity.markers(name, state)}


@pytest.fixture
def no_signals(monkeypatch):
    """Every way the platform could signal, replaced by a recorder."""
    sent: list[tuple] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append(("kill", pid, sig)))
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: sent.append(("killpg", pgid, sig)))
    monkeypatch.setattr(psutil.Process, "send_signal", lambda self, sig: sent.append(("psutil", self.pid, sig)))
    monkeypatch.setattr(psutil.Process, "kill", lambda self: sent.append(("psutil", self.pid, "KILL")))
    monkeypatch.setattr(psutil.Process, "terminate", lambda self: sent.append(("psutil", self.pid, "TERM")))
    return sent


# -- the platform guard -------------------------------------------------------------------------------------
def kernel_threads() -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2:].split()[1]) == 2:
                out.append(int(entry))
    return out


@pytest.mark.parametrize("what", ["init", "zero", "negative", "itself", "parent", "grandparent", "kthreadd",
                                  "kernel_thread"])
def test_never_signal_refuses_init_itself_ancestors_and_kernel_threads(what):
    pid = {"init": 1, "zero": 0, "negative": -1, "itself": os.getpid(), "parent": os.getppid(),
           "grandparent": psutil.Process(os.getppid()).ppid(), "kthreadd": 2}.get(what)
    if what == "kernel_thread":
        threads = kernel_threads()
        if not threads:
            pytest.skip("no kernel threads visible")
        pid = threads[-1]
    if what == "grandparent" and pid <= 1:
        pytest.skip("the runner's parent is init")
    assert LinuxPlatform().never_signal(pid)


def test_never_signal_refuses_another_users_process(reaper):
    platform = LinuxPlatform()
    if os.getuid() == 0:
        proc = reaper.spawn(["sleep", "60"], user=65534, group=65534)
        wait_until(lambda: platform.process_info(proc.pid) and platform.process_info(proc.pid).uid == 65534, 10,
                   what="the other user's process")
        pid = proc.pid
    else:
        pid = next((p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and
                    p.info["uids"].real != os.getuid() and p.pid > 2), None)
        if pid is None:
            pytest.skip("no process of another user visible")
    assert "another user" in LinuxPlatform().never_signal(pid)


def test_never_signal_refuses_a_zombie_and_allows_an_ordinary_process_of_ours(reaper):
    platform = LinuxPlatform()
    sleeper = reaper.spawn(["sleep", "60"])
    assert platform.never_signal(sleeper.pid) is None
    done = reaper.spawn(["true"])
    wait_until(lambda: psutil.Process(done.pid).status() == psutil.STATUS_ZOMBIE, 10, what="a zombie")
    assert "exited" in platform.never_signal(done.pid)


@pytest.mark.parametrize("what", ["init", "itself", "parent", "kthreadd"])
def test_protected_pids_are_refused_before_any_signal(what, no_signals):
    pid = {"init": 1, "itself": os.getpid(), "parent": os.getppid(), "kthreadd": 2}[what]
    platform = LinuxPlatform()
    with pytest.raises(SignalRefused):
        platform.request_stop(pid)
    with pytest.raises(SignalRefused):
        platform.kill_tree(pid, identity.markers("alpha", STATE))
    assert no_signals == []


# -- the identity rule ---------------------------------------------------------------------------------------
def test_an_empty_environment_proves_nothing_even_when_the_command_line_matches(reaper, tmp_path):
    platform = LinuxPlatform()
    decoy, _ = logger(reaper, tmp_path, env=None, empty_env=True, extra=("hermes", "-p", "alpha", "gateway", "run"))
    assert platform.process_environ(decoy.pid) == {}
    spec = profile_spec("alpha", match="gateway")
    assert check(platform, decoy.pid, spec=spec).verdict == "unrelated"


def test_an_unreadable_environment_proves_nothing(reaper, tmp_path, monkeypatch):
    platform = LinuxPlatform()
    proc, _ = logger(reaper, tmp_path, env=marked())
    assert check(platform, proc.pid).verdict == "alive"
    monkeypatch.setattr(platform, "process_environ", lambda pid: None)  # as for a non-dumpable process
    assert check(platform, proc.pid).verdict == "unrelated"


@pytest.mark.parametrize("markers", ["other_state_dir", "other_profile"])
def test_markers_naming_another_fleet_rule_out_a_matching_command_line(reaper, tmp_path, markers):
    platform = LinuxPlatform()
    env = marked(state="/elsewhere") if markers == "other_state_dir" else marked(name="beta")
    proc, _ = logger(reaper, tmp_path, env=env, extra=("hermes", "-p", "alpha", "gateway", "run"))
    c = check(platform, proc.pid, spec=profile_spec("alpha", match="gateway"))
    assert c.verdict == "unrelated" and "markers name" in c.proof.why_not


def test_this_profiles_markers_prove_it(reaper, tmp_path):
    proc, _ = logger(reaper, tmp_path, env=marked())
    c = check(LinuxPlatform(), proc.pid)
    assert c.verdict == "alive" and c.proof.how == identity.PROOF_MARKER


def test_a_child_we_hold_is_ours_only_for_the_profile_we_started_it_for(reaper, tmp_path):
    platform = LinuxPlatform()
    log = tmp_path / "child.log"
    pid = platform.spawn_detached([sys.executable, "-c", SIGNAL_LOGGER, str(log)], marked(), str(tmp_path),
                                  str(tmp_path / "out.log"))
    reaper.track(platform.children.popen(pid))
    c = check(platform, pid)
    assert c.verdict == "alive" and c.proof.how == identity.PROOF_CHILD
    assert check(platform, pid, name="beta").verdict == "unrelated"


@pytest.mark.parametrize("who", ["runner", "runner_parent"])
def test_the_controller_and_its_ancestors_are_never_ours(who):
    pid = os.getpid() if who == "runner" else os.getppid()
    c = check(LinuxPlatform(), pid, spec=profile_spec("alpha", match="."))
    assert c.verdict == "foreign" and c.proof.protected


# -- the tree kill --------------------------------------------------------------------------------------------
TREE = r"""
import json, os, subprocess, sys, time
out, state = sys.argv[1], sys.argv[2]
py = sys.executable
stay = "import time\nwhile True: time.sleep(3600)"
marked = dict(os.environ)
bare = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_FLEET_")}
# C: carries the marker but leaves our session; it starts G, unmarked, in yet another session.
c_code = ("import subprocess, sys, time\n"
          f"g = subprocess.Popen([sys.executable, '-c', {stay!r}], env={bare!r}, start_new_session=True)\n"
          f"open({out!r} + '.g.tmp', 'w').write(str(g.pid))\n"
          f"import os\nos.replace({out!r} + '.g.tmp', {out!r} + '.g')\n" + stay)
c = subprocess.Popen([py, "-c", c_code], env=marked, start_new_session=True)
d = subprocess.Popen([py, "-c", stay], env=bare)  # unmarked, in our session and group
e = subprocess.Popen([py, "-c", stay], env=bare, start_new_session=True)  # unmarked, its own session
while not os.path.exists(out + ".g"):
    time.sleep(0.01)
g = int(open(out + ".g").read())
with open(out + ".tmp", "w") as fh:
    json.dump({"c": c.pid, "d": d.pid, "e": e.pid, "g": g}, fh)
os.replace(out + ".tmp", out)
while True:
    time.sleep(3600)
"""


def test_a_tree_kill_reaches_only_marked_descendants_and_the_gateways_own_session(reaper, tmp_path):
    out = tmp_path / "tree.json"
    root = reaper.spawn([sys.executable, "-c", TREE, str(out), STATE], env=marked())
    tree = wait_until(lambda: json.loads(out.read_text()) if out.exists() else None, 15, what="the tree")
    created = {k: psutil.Process(p).create_time() for k, p in tree.items()}
    for key in ("e", "g"):  # the survivors are this test's to end
        reaper.track(tree[key])
    LinuxPlatform().kill_tree(root.pid, identity.markers("alpha", STATE))
    root.wait(timeout=10)
    wait_until(lambda: not alive(tree["c"], created["c"]) and not alive(tree["d"], created["d"]), 10,
               what="the marked child and the same-session child to die")
    assert alive(tree["g"], created["g"]), "an unmarked grandchild in another session was killed"
    assert alive(tree["e"], created["e"]), "an unmarked child in its own session was killed"


# -- the planner never plans a signal for such a record (through the real CLI) ---------------------------------
def forge(fleet, name: str, pid: int, **extra) -> dict:
    original = fleet.record(name)
    forged = dict(original, pid=pid, start_ticks=proc_start_ticks(pid),
                  create_time=psutil.Process(pid).create_time(), **extra)
    write_json_atomic(fleet.state / f"{name}.pid", forged)
    return original


@pytest.mark.parametrize("target", ["pid1", "pid1_adopted", "runner", "kthreadd"])
def test_diff_reclaims_a_record_naming_pid_1_or_the_runner_and_plans_no_signal(fleet, target):
    fleet.write_manifest({"alpha": None})
    fleet.apply()
    fleet.wait_running("alpha")
    result = fleet.cli("controller", "stop")
    assert result.returncode == 0, fleet.explain(result)
    pid = {"runner": os.getpid(), "kthreadd": 2}.get(target, 1)
    original = forge(fleet, "alpha", pid, **({"adopted": True} if target == "pid1_adopted" else {}))
    try:
        result = fleet.cli("diff")  # plan only: nothing is executed
    finally:
        # Whatever diff said, no controller may ever read the forged record.
        write_json_atomic(fleet.state / "alpha.pid", original)
    assert "alpha will have its record reclaimed (pid foreign)" in result.stdout, fleet.explain(result)
    assert "0 to replace, 0 to drain, 0 to kill" in result.stdout, fleet.explain(result)
    assert "Draining" not in result.stdout and "will be drained" not in result.stdout, fleet.explain(result)


def test_a_gateway_look_alike_with_an_empty_environment_is_never_adopted(fleet, reaper, tmp_path):
    fleet.write_manifest({"alpha": None})
    fleet.apply()
    gateway = fleet.wait_running("alpha")
    result = fleet.cli("controller", "stop")
    assert result.returncode == 0, fleet.explain(result)
    fleet.kill9(gateway)
    decoy, log = logger(reaper, tmp_path, env=None, empty_env=True, extra=("hermes", "-p", "alpha", "gateway", "run"))
    result = fleet.cli("diff")  # scans for unrecorded processes
    assert f"pid {decoy.pid}" in result.stdout and "unproven" in result.stdout, fleet.explain(result)
    assert "0 to adopt" in result.stdout and "alpha will be adopted" not in result.stdout, fleet.explain(result)



def test_restart_with_a_record_naming_an_empty_environment_decoy_never_signals_it(fleet, reaper, tmp_path):
    fleet.write_manifest({"alpha": None}, drain_timeout="5s")
    fleet.apply()
    gateway = fleet.wait_running("alpha")
    decoy, log = logger(reaper, tmp_path, env=None, empty_env=True)
    assert environ_of(decoy.pid) == {}
    forge(fleet, "alpha", decoy.pid)
    result = fleet.cli("restart", "alpha", "--timeout", "30s")
    assert result.returncode == 0, fleet.explain(result)
    new = fleet.wait_running("alpha", other_than=gateway)
    journal = "\n".join(f"{e.kind}: {e.message}" for e in fleet.journal("alpha"))
    assert decoy.poll() is None, f"the decoy was killed\n{journal}"
    assert not log.exists(), f"the decoy was signalled: {log.read_text()}\n{journal}"
    reclaimed = [e for e in fleet.journal_kinds("alpha", "reclaimed") if str(decoy.pid) in e.message]
    assert [e.data["reason"] for e in reclaimed] == ["pid_unrelated"], journal
    wait_until(lambda: fleet.marked_pids("alpha") == [new], 15, what="exactly one gateway for alpha")
    assert not alive(gateway), "the old gateway runs on beside the respawn"


WRAPPER = r"""
import os, subprocess, sys
state, out, keep = sys.argv[1], sys.argv[2], sys.argv[3] == "keep"
env = dict(os.environ)
if not keep:
    env.pop("HERMES_FLEET_PROFILE")
proc = subprocess.Popen([sys.executable, "-m", "fleet.controller", "--state-dir", state], env=env,
                        stdin=subprocess.DEVNULL, stdout=open(out, "ab"), stderr=subprocess.STDOUT)
sys.exit(proc.wait())
"""


@pytest.mark.parametrize("target", ["controller", "controller_parent"])
def test_a_record_naming_the_controller_or_its_parent_is_reclaimed_never_signalled(fleet, reaper, tmp_path,
                                                                                    target):
    """Both carry this profile's markers (a controller started from a gateway's shell), so only the
    guard stands between the record and a signal."""
    fleet.write_manifest({"alpha": None}, drain_timeout="5s")
    fleet.apply()
    gateway = fleet.wait_running("alpha")
    result = fleet.cli("controller", "stop")
    assert result.returncode == 0, fleet.explain(result)
    env = {**fleet.env(), "HERMES_FLEET_PROFILE": "alpha"}
    wrapper = reaper.spawn([sys.executable, "-c", WRAPPER, str(fleet.state), str(tmp_path / "controller.log"),
                            "keep" if target == "controller" else "drop"], env=env, cwd=str(tmp_path))
    controller = wait_until(lambda: fleet.controller_pid(), 15, what="the controller under the wrapper")
    assert psutil.Process(controller).ppid() == wrapper.pid
    wait_until(lambda: (fleet.record("alpha") or {}).get("controller_pid") == controller, 15,
               what="alpha adopted by the new controller")
    victim = controller if target == "controller" else wrapper.pid
    assert environ_of(victim).get("HERMES_FLEET_PROFILE") == "alpha"
    forge(fleet, "alpha", victim)
    result = fleet.cli("restart", "alpha", "--timeout", "30s")
    assert result.returncode == 0, fleet.explain(result)
    journal = "\n".join(f"{e.kind}: {e.message}" for e in fleet.journal("alpha"))
    assert wrapper.poll() is None and alive(controller), f"the controller or its parent was signalled\n{journal}"
    assert fleet.controller_pid() == controller
    reclaimed = [e for e in fleet.journal_kinds("alpha", "reclaimed") if str(victim) in e.message]
    assert [e.data["reason"] for e in reclaimed] == ["pid_foreign"], journal
    new = fleet.wait_running("alpha", other_than=gateway)
    wait_until(lambda: set(fleet.marked_pids("alpha")) - {wrapper.pid, controller} == {new}, 15,
               what="exactly one gateway for alpha")
    result = fleet.cli("controller", "stop")
    assert result.returncode == 0, fleet.explain(result)
    assert wrapper.wait(timeout=15) == 0


# -- the executor's re-check right before a signal --------------------------------------------------------------
@pytest.mark.parametrize("target", ["init", "runner", "empty_env_decoy", "other_profile"])
@pytest.mark.parametrize("kind", ["kill", "stop"])
def test_the_executor_rechecks_identity_and_never_signals_what_is_not_ours(tmp_path, reaper, no_signals, target,
                                                                            kind):
    from fleet.execute.executor import Executor
    from fleet.observe.model import LiveProcess, ProfileObservation
    from fleet.plan.model import Action
    from fleet.store.db import ProfileHistory, Store
    from fleet.store.layout import StateDir, ensure_state_dir

    state = StateDir(tmp_path / "state")
    ensure_state_dir(state)
    if target == "init":
        pid = 1
    elif target == "runner":
        pid = os.getpid()
    elif target == "empty_env_decoy":
        pid = logger(reaper, tmp_path, env=None, empty_env=True)[0].pid
    else:
        pid = logger(reaper, tmp_path, env=marked(name="beta", state=str(state.root)))[0].pid
    platform = LinuxPlatform()
    info = platform.process_info(pid)
    spec = profile_spec("alpha", driver="process", command=(sys.executable, "-c", "pass"), cwd=str(tmp_path),
                        match=".")
    store = Store(state.db, durable=False)
    try:
        executor = Executor(state, store, platform, epoch=1, spec_of=lambda n: spec)
        proc = LiveProcess(pid=pid, start_ticks=info.start_ticks, create_time=info.create_time, cmdline=info.cmdline,
                           started_at=time.time(), spec_hash=spec.spec_hash, source="record", record_epoch=1)
        obs = ProfileObservation(name="alpha", process=proc, history=ProfileHistory("alpha"))
        action = Action("kill", "alpha", "forced", "forced", pid=pid, target=proc) if kind == "kill" else \
            Action("drain", "alpha", "desired_stopped", "drain", pid=pid, stage="stop", target=proc)
        executor.execute(action, obs)
        journal = store.events(profile="alpha", limit=1000)
    finally:
        store.close()
    assert no_signals == []
    refused = [e for e in journal if e.kind == "refused"]
    assert len(refused) == 1 and f"pid {pid} " in refused[0].message, journal


GROUP_WITH_ANOTHER_USER = r"""
import json, os, subprocess, sys, time
out = sys.argv[1]
other = subprocess.Popen(["sleep", "600"], user=65534, group=65534)  # stays in our group, another user
mine = subprocess.Popen(["sleep", "600"])
with open(out + ".tmp", "w") as fh:
    json.dump({"other": other.pid, "mine": mine.pid}, fh)
os.replace(out + ".tmp", out)
while True:
    time.sleep(3600)
"""


@pytest.mark.skipif(os.getuid() != 0, reason="starting another user's process needs root")
def test_a_tree_kill_never_reaches_another_users_process_in_the_gateways_group(reaper, tmp_path):
    out = tmp_path / "group.json"
    root = reaper.spawn([sys.executable, "-c", GROUP_WITH_ANOTHER_USER, str(out)], env=marked())
    tree = wait_until(lambda: json.loads(out.read_text()) if out.exists() else None, 15, what="the group")
    created = {k: psutil.Process(p).create_time() for k, p in tree.items()}
    reaper.track(tree["other"])
    assert os.getpgid(tree["other"]) == root.pid
    LinuxPlatform().kill_tree(root.pid, identity.markers("alpha", STATE))
    root.wait(timeout=10)
    wait_until(lambda: not alive(tree["mine"], created["mine"]), 10, what="our own group member to die")
    assert alive(tree["other"], created["other"]), "another user's process in the group was killed"


def test_a_gateway_of_the_profiles_root_is_known_through_a_symlink_either_way(tmp_path):
    """A unit's gateway carries HERMES_HOME resolved; the manifest may name the root through a symlink (or the
    other way round). The same place is the same root; another place is another root."""
    disk = tmp_path / "disk"
    (disk / "profiles" / "alpha").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    linked = tmp_path / "linked"
    linked.symlink_to(disk)
    via_link = with_changes(profile_spec("alpha", env={"HERMES_HOME": str(linked)}),
                            hermes_home=str(linked / "profiles" / "alpha"))
    assert identity.runs_in_root(via_link, str(disk))
    assert identity.runs_in_root(via_link, str(disk / "profiles" / "alpha"))
    assert not identity.runs_in_root(via_link, str(tmp_path / "other"))
    resolved = with_changes(profile_spec("alpha"), hermes_home=str(disk / "profiles" / "alpha"))
    assert identity.runs_in_root(resolved, str(linked / "profiles" / "alpha"))
