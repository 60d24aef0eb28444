"""The controller with real processes (the demo gateway): start-up, crashes, hangs, exit codes.

Every test drives the `hermes-fleet` CLI as a subprocess against a fleet under tmp_path; the
`fleet` fixture tears everything down (down, then SIGKILL of whatever this fleet created).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

import fleet_harness
from fleet.platform.wake import send_wake
from fleet.store.layout import StateDir
from fleet_harness import alive, fleet  # noqa: F401
from helpers import read_json, recorded_idle_fleet, wait_until

pytestmark = [
    pytest.mark.skipif(os.name != "posix" or not sys.platform.startswith("linux"), reason="Linux process model"),
    pytest.mark.timeout(60),
]

THREE = {"alpha": None, "beta": None, "gamma": None}


def test_cold_start_spawns_every_profile_stagger_apart(fleet):
    fleet.write_manifest({"alpha": None, "beta": None, "gamma": None, "delta": None}, stagger="0.3s")
    result = fleet.apply()
    assert "Converged: 4 running." in result.stdout, fleet.explain(result)
    records = {name: fleet.record(name) for name in ("alpha", "beta", "gamma", "delta")}
    assert all(records.values()), records
    for name, rec in records.items():
        assert alive(rec["pid"]), name
        assert rec["managed_by"] == "hermes-fleet" and rec["adopted"] is False
        assert rec["controller_pid"] == fleet.controller_pid()
    # Spawned in name order, each at least `stagger` after the previous one.
    started = sorted((rec["started_at"], name) for name, rec in records.items())
    assert [name for _, name in started] == sorted(records)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(started)]
    assert all(gap >= 0.3 - 1e-3 for gap in gaps), gaps
    # Each gateway runs with its own home and the fleet's contract variables.
    for name, rec in records.items():
        status = read_json(fleet.profile_home(name) / "gateway_state.json")
        assert status["pid"] == rec["pid"]
        env = psutil.Process(rec["pid"]).environ()
        assert env["HERMES_FLEET_PROFILE"] == name
        assert env["HERMES_HOME"] == str(fleet.home)
        assert env["HERMES_GATEWAY_EXTERNAL_SUPERVISOR"] == "1"


def test_sigkill_of_one_gateway_respawns_only_it(fleet):
    fleet.write_manifest(THREE)
    fleet.apply()
    before = {n: fleet.wait_running(n) for n in THREE}
    fleet.kill9(before["beta"])
    new_beta = fleet.wait_running("beta", other_than=before["beta"])
    assert new_beta != before["beta"]
    for sibling in ("alpha", "gamma"):
        assert fleet.pid(sibling) == before[sibling] and alive(before[sibling]), sibling
    profiles = fleet.profiles()
    assert profiles["beta"]["restarts"] == 1
    assert profiles["beta"]["last_exit"].startswith("signal 9"), profiles["beta"]
    assert profiles["alpha"]["restarts"] == 0 and profiles["gamma"]["restarts"] == 0
    assert profiles["alpha"]["last_exit"] is None and profiles["gamma"]["last_exit"] is None
    assert [e.data["pid"] for e in fleet.journal_kinds("beta", "spawned")] == [before["beta"], new_beta]
    assert len(fleet.journal_kinds("alpha", "spawned")) == 1
    assert len(fleet.journal_kinds("gamma", "spawned")) == 1


def test_hung_gateway_is_killed_and_respawned(fleet):
    fleet.write_manifest({"alpha": {"env": {"FAKE_HERMES_HEARTBEAT_S": "0.2"}},
                          "beta": {"env": {"FAKE_HERMES_HEARTBEAT_S": "0.2"}}},
                         heartbeat_stale="1s", startup_grace="0.5s")
    fleet.apply()
    before = {n: fleet.wait_running(n) for n in ("alpha", "beta")}
    fleet.control("alpha", hang=True, once=True)  # wedge: no heartbeat, SIGTERM ignored
    new_alpha = fleet.wait_running("alpha", other_than=before["alpha"], timeout=12)
    assert not alive(before["alpha"]), "the wedged gateway must be killed"
    killed = fleet.journal_kinds("alpha", "killed")
    assert killed and killed[0].data["reason"] == "wedged" and killed[0].data["pid"] == before["alpha"]
    assert fleet.pid("beta") == before["beta"] and alive(before["beta"])
    assert new_alpha != before["alpha"]


def test_exit_78_is_not_retried(fleet):
    fleet.write_manifest(THREE)
    fleet.apply()
    before = {n: fleet.wait_running(n) for n in THREE}
    fleet.control("beta", exit=78)  # every instance of beta would exit 78 (fatal configuration)
    fleet.wait_gone(before["beta"])
    wait_until(lambda: fleet.profiles()["beta"]["phase"] == "Failed", 10, what="beta Failed")
    result = fleet.apply(expect=1)  # apply reports the failed profile
    assert "Failed: beta" in result.stderr, fleet.explain(result)
    profiles = fleet.profiles()
    beta = profiles["beta"]
    assert beta["phase"] == "Failed" and beta["pid"] is None
    assert beta["last_exit"].startswith("78"), beta
    assert "fatal configuration error" in beta["note"], beta
    assert profiles["alpha"]["pid"] == before["alpha"] and profiles["gamma"]["pid"] == before["gamma"]
    # A later pass of the controller (woken by a sibling's death) still does not retry beta.
    fleet.kill9(before["alpha"])
    fleet.wait_running("alpha", other_than=before["alpha"])
    assert len(fleet.journal_kinds("beta", "spawned")) == 1
    exited = fleet.journal_kinds("beta", "exited")
    assert [(e.data["code"], e.data["exit_class"]) for e in exited] == [(78, "fatal_config")]
    assert fleet.profiles()["beta"]["phase"] == "Failed"
    # `start` retries a profile that failed for good.
    fleet.clear_control("beta")
    result = fleet.cli("start", "beta")
    assert result.returncode == 0, fleet.explain(result)
    fleet.wait_running("beta", other_than=before["beta"])
    wait_until(lambda: fleet.profiles()["beta"]["phase"] == "Running", 10, what="beta Running")


SLOW_CONFLICT_GATEWAY = """\
import datetime, json, os, sys, time
# Like hermes 0.19.0 meeting a token-lock conflict: `starting` for a while, then exit 78
# with gateway_state startup_failed (hermes-contract sections 2 and 7).
argv = sys.argv[1:]
root = os.environ["HERMES_HOME"]
home = os.path.join(root, "profiles", argv[argv.index("-p") + 1]) if "-p" in argv else root
os.makedirs(home, exist_ok=True)
def state(value, **extra):
    now = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    with open(os.path.join(home, "gateway_state.json.tmp"), "w") as fh:
        json.dump(dict(pid=os.getpid(), kind="hermes-gateway", gateway_state=value, active_agents=0,
                       updated_at=now, **extra), fh)
    os.replace(os.path.join(home, "gateway_state.json.tmp"), os.path.join(home, "gateway_state.json"))
state("starting")
time.sleep(float(os.environ.get("SLOW_START_S", "1.5")))
state("startup_failed", exit_reason="telegram_lock: token already in use (fake)")
sys.exit(78)
"""


def test_apply_waits_for_a_starting_gateway_and_fails_on_exit_78(fleet, tmp_path):
    script = tmp_path / "bin" / "hermes"
    script.parent.mkdir()
    script.write_text(SLOW_CONFLICT_GATEWAY)
    fleet.write_manifest({"alpha": None, "beta": {"command": [sys.executable, str(script)]}})
    result = fleet.apply(expect=None)
    beta = fleet.profiles()["beta"]
    assert result.returncode == 1 and "Failed: beta" in result.stderr, fleet.explain(result)
    assert beta["phase"] == "Failed" and "telegram_lock" in beta["note"], beta


BALLAST_WRAPPER = """\
import os, runpy, sys
# Memory the kernel must tear down when this process exits: for a few hundred ms the exiting
# process still runs, but /proc/<pid>/cmdline is already empty.
ballast = bytearray(b"\\x01") * (int(os.environ.get("BALLAST_MB", "0")) << 20)
sys.argv = [{demo!r}] + sys.argv[1:]
try:
    runpy.run_path({demo!r}, run_name="__main__")
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    os._exit(code)
"""


def test_an_exiting_gateway_is_not_mistaken_for_a_gateway_without_the_supervisor_flag(fleet, tmp_path):
    wrapper = tmp_path / "bin" / "hermes"
    wrapper.parent.mkdir()
    wrapper.write_text(BALLAST_WRAPPER.format(demo=str(fleet_harness.DEMO_HERMES)))
    fleet.write_manifest({"alpha": None,
                          "beta": {"command": [sys.executable, str(wrapper)], "env": {"BALLAST_MB": "768"}}})
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in ("alpha", "beta")}
    stop = threading.Event()

    def hammer():  # wake the controller again and again, as CLI commands do
        while not stop.is_set():
            send_wake(StateDir(fleet.state))
            time.sleep(0.002)
    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        fleet.control("beta", exit=78)
        fleet.wait_gone(pids["beta"])
    finally:
        stop.set()
        thread.join()
    wait_until(lambda: fleet.journal_kinds("beta", "exited"), 10, what="beta's exit in the journal")
    exited = fleet.journal_kinds("beta", "exited")[0]
    assert not fleet.journal_kinds("beta", "drain_started"), [e.message for e in fleet.journal("beta")]
    assert (exited.data["code"], exited.data["exit_class"]) == (78, "fatal_config"), exited


def test_exit_75_restarts_at_once_without_backoff(fleet):
    fleet.write_manifest({"alpha": None, "beta": None}, backoff=["30s"])
    fleet.apply()
    before = fleet.wait_running("alpha")
    fleet.control("alpha", exit=75, once=True)
    after = fleet.wait_running("alpha", other_than=before, timeout=10)  # well inside the 30s backoff
    exited = fleet.journal_kinds("alpha", "exited")
    assert exited and exited[-1].data["code"] == 75 and exited[-1].data["exit_class"] == "restart_now"
    spawned = fleet.journal_kinds("alpha", "spawned")
    assert spawned[-1].data["pid"] == after
    assert spawned[-1].at - exited[-1].at < 30.0  # the 30s crash backoff was not applied
    profile = fleet.profiles()["alpha"]
    assert profile["last_exit"].startswith("75") and profile["restarts"] == 1


def test_crash_loop_follows_the_backoff_schedule(fleet):
    fleet.write_manifest({"alpha": None, "beta": None}, backoff=["0.5s", "1s", "1.5s"])
    fleet.apply()
    beta = fleet.wait_running("beta")
    fleet.wait_running("alpha")
    fleet.control("alpha", crash=True)  # every instance crashes at once: a crash loop
    wait_until(lambda: len(fleet.journal_kinds("alpha", "spawned")) >= 6, 15, interval=0.1,
               what="five respawns of the crashing profile")
    fleet.clear_control("alpha")
    spawned = [e.at for e in fleet.journal_kinds("alpha", "spawned")][1:6]
    exits = [e for e in fleet.journal_kinds("alpha", "exited")][:5]
    assert all(e.data["code"] == 1 and e.data["exit_class"] == "crash" for e in exits), exits
    # Respawn n waits at least step n of the schedule after exit n; the last step repeats.
    for exited, respawn, step in zip(exits, spawned, [0.5, 1.0, 1.5, 1.5, 1.5], strict=False):
        assert respawn - exited.at >= step - 0.05, ([e.at for e in exits], spawned, step)
    # The sibling was never disturbed.
    assert len(fleet.journal_kinds("beta", "spawned")) == 1
    assert fleet.pid("beta") == beta and alive(beta)
    fleet.wait_running("alpha", timeout=10)


def test_crash_loop_does_not_starve_a_sibling_at_cold_start(fleet):
    # alpha crash-loops from its first start, long before beta's stagger slot comes up (1s);
    # beta must still get its first start.
    fleet.write_manifest({"alpha": None, "beta": None}, stagger="1s", backoff=["0.5s", "1s"])
    fleet.control("alpha", crash=True)
    fleet.apply("--no-wait")
    fleet.wait_running("beta", timeout=8)


def test_a_controller_started_by_the_cli_is_nobodys_child(fleet):
    """A CLI run inside a gateway's process tree (an agent calling `hermes-fleet apply`) starts the
    controller; the never-signal guard protects the controller's ancestors, so the controller must not
    count that gateway among them, not even while the CLI still waits."""
    fleet.write_manifest({"alpha": {"env": {"FAKE_HERMES_EXIT_AFTER": "0.1", "FAKE_HERMES_EXIT_CODE": "1"}}},
                         backoff=["5s"])
    argv = [sys.executable, "-m", "fleet.cli.main", "apply", "--timeout", "30s", "--state-dir", str(fleet.state),
            "--file", str(fleet.manifest)]
    cli = subprocess.Popen(argv, cwd=str(fleet.tmp), env=fleet.env(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        controller = wait_until(fleet.controller_pid, 20)
        assert cli.poll() is None, "apply should still be waiting on the crash-looping gateway"
        ancestors = [p.pid for p in psutil.Process(controller).parents()]
        assert cli.pid not in ancestors and os.getpid() not in ancestors, ancestors
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.wait(10)
        fleet.note_pids()


def test_the_resident_controller_loads_no_library_it_does_not_use(tmp_path):
    """Its idle RSS is the budget (at or below supervisord's): no manifest loader (PyYAML, the schema), no shutil
    with the bz2 and lzma compressors (tempfile, argparse's terminal width, shutil.which), no uuid once its
    store exists, no time zone database without maintenance windows, no lock library (with logging and decimal)
    for the supervisor lock, no OpenSSL for hashing specs or comparing the metrics endpoint's token (hashlib, hmac:
    3.5 MiB). Each was a megabyte or more."""
    code = (
        "import sys, time\n"
        "from fleet.controller.__main__ import arguments\n"
        "import fleet.controller.loop, fleet.controller.reconcile, fleet.controller.telemetry\n"
        "from fleet.platform import current_platform\n"
        "from fleet.platform.systemd_scope import user_manager_available\n"
        "from fleet.store.db import Store\n"
        "from fleet.store.layout import StateDir\n"
        "from fleet.store.lock import SupervisorLock\n"
        "from fleet.store.files import write_json_atomic\n"
        "from fleet.maintenance.gates import window_gate\n"
        "arguments().format_help(); current_platform(); user_manager_available()\n"
        "Store(sys.argv[1]).close(); write_json_atomic(sys.argv[2], {'x': 1}); window_gate((), time.time())\n"
        "from pathlib import Path; lock = SupervisorLock(StateDir(Path(sys.argv[3]))); lock.acquire(); lock.release()\n"
        "import fleet.metrics.server, fleet.platform.wake; from fleet.spec.hashing import sha256_hex, same_secret\n"
        "sha256_hex('spec'); same_secret(b'token', b'token')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('yaml', 'jsonschema', 'shutil', 'tempfile', 'bz2', 'lzma', 'uuid', 'zoneinfo', 'typer', 'click', "
        "'filelock', 'logging', 'decimal', 'hashlib', '_hashlib', 'hmac', 'ssl')))")
    db, record = tmp_path / "fleet.db", tmp_path / "a.pid"
    subprocess.run([sys.executable, "-c", f"from fleet.store.db import Store; Store({str(db)!r}).close()"],
                   check=True, timeout=60)  # the store exists already, as it does for a running controller
    out = subprocess.run([sys.executable, "-c", code, str(db), str(record), str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


_PASSES = """
import dataclasses, json, sys, time, types
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from pass_parts import pass_parts
from fleet.controller.record import record_manifest
from fleet.maintenance import queue
from fleet.spec.model import MetricsSpec
from fleet.store import sources, takeovers
from fleet.store.layout import StateDir

OPTIONAL = ('fleet.controller.maintenance_tick', 'fleet.controller.takeover_tick', 'fleet.service.unit_control',
            'fleet.controller.source_follow', 'fleet.controller.telemetry', 'fleet.controller.metrics_snapshot',
            'fleet.controller.status', 'fleet.metrics.catalog')
state = StateDir(Path(sys.argv[1]))
store, reconciler, metrics = pass_parts(state)

def passes(what):
    for _ in range(3):
        now = time.time()
        result = reconciler.reconcile_once(now)
        metrics.after_pass(result, now, time.time(), 1.0)
    print(json.dumps([what, sorted(m for m in OPTIONAL if m in sys.modules)]), flush=True)

passes('none')
request = queue.submit(store, profile='alpha', action='restart', reason='lazy loading').request
passes('maintenance')
print(json.dumps(['request_state', queue.get(store, request.id).state]), flush=True)
row = takeovers.submit(store, profile='alpha', kind=takeovers.TAKEOVER, home=sys.argv[2], requested_by='test')
passes('takeover')
print(json.dumps(['takeover_state', takeovers.get(store, row.id).state]), flush=True)
config = sources.SourceConfig('default', 'git', sys.argv[2], 'main', 'fleet.yaml', 60.0, 30.0)
sources.set_source(store, config, by='test', at=time.time())
sources.suspend_source(store, 'default', reason='test', by='test', at=time.time())
passes('source')
desired, _ = reconciler.source.current()
spec = dataclasses.replace(desired.spec, metrics=MetricsSpec(textfile=sys.argv[3]))
record_manifest(store, types.SimpleNamespace(spec=spec, digest='with metrics'), {'revision': '2'}, prune=True,
                source='test', lift_down=False)
passes('metrics')
print(json.dumps(['counted', metrics.counters.reconciles]), flush=True)
"""


def test_the_optional_features_load_only_with_their_first_work(tmp_path):
    """A fleet without maintenance requests, take-overs, a git source or metrics never imports their code; each
    loads with the fleet's first work for it, and does that work in the same pass. The pass counters count
    from the start, so metrics turned on later see every pass."""
    state = StateDir(recorded_idle_fleet(tmp_path, "lazy"))
    textfile = tmp_path / "fleet.prom"
    out = subprocess.run([sys.executable, "-c", _PASSES, str(state.root), str(tmp_path / "home"), str(textfile),
                          os.path.dirname(os.path.abspath(__file__))],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    seen = dict(json.loads(line) for line in out.stdout.splitlines())
    assert seen["none"] == []
    assert seen["maintenance"] == ["fleet.controller.maintenance_tick"]
    assert seen["request_state"] == "cancelled"  # handled: the profile is suspended
    assert seen["takeover"] == ["fleet.controller.maintenance_tick", "fleet.controller.takeover_tick",
                                "fleet.service.unit_control"]
    assert seen["takeover_state"] == "rolled_back"  # handled: nothing changed, alpha is no hermes-driver profile
    assert "fleet.controller.source_follow" in seen["source"] and "fleet.controller.telemetry" not in seen["source"]
    assert {"fleet.controller.telemetry", "fleet.controller.metrics_snapshot"} <= set(seen["metrics"])
    assert seen["counted"] == 15
    written = [line for line in textfile.read_text().splitlines() if line.startswith("hermes_fleet_reconcile_total")]
    assert len(written) == 1 and float(written[0].split()[-1]) >= 13, written  # the 12 passes before metrics too
