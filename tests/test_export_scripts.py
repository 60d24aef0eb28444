"""The stop and liveness scripts of exported units and pods, run for real.

The exact text a unit's ExecStop=/ExecStartPre= or a pod's preStop/livenessProbe holds is
extracted from the rendered output (unit lines parsed the way systemd parses them, YAML
loaded) and run with /bin/sh against the demo's fake Hermes gateway, which implements the
gateway's drain request, planned-stop marker, stop file and heartbeat contract.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from helpers import read_json, reaper, wait_until  # noqa: F401
from fleet.export.kubernetes import KubernetesTarget
from fleet.export.systemd import SystemdTarget
from fleet.spec.load import parse_manifest

FAKE_HERMES = Path(__file__).resolve().parent.parent / "examples" / "demo" / "hermes"
pytestmark = [
    pytest.mark.skipif(not Path("/proc/self/stat").exists() or not Path("/bin/sh").exists(),
                       reason="the scripts need /bin/sh and /proc (Linux)"),
]
needs_fake = pytest.mark.skipif(not FAKE_HERMES.exists(), reason="examples/demo/hermes (the fake gateway) is missing")


# ---------------------------------------------------------------- systemd unit syntax, as systemd reads it


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) per setting: comments skipped, backslash continuations joined with a space."""
    entries: list[tuple[str, str, str]] = []
    section, pending = "", None
    for raw in text.split("\n"):
        if pending is None:
            stripped = raw.strip()
            if not stripped or stripped.startswith(("#", ";")):
                continue
            line = stripped
        else:
            line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = None
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(text: str, key: str) -> list[str]:
    return [v for _, k, v in unit_entries(text) if k == key]


def expand_specifiers(text: str, specifiers: dict[str, str]) -> str:
    def one(match: re.Match) -> str:
        c = match.group(1)
        if c == "%":
            return "%"
        if c not in specifiers:
            raise AssertionError(f"unexpected specifier %{c} in {text!r}")
        return specifiers[c]
    return re.sub(r"%(.)", one, text)


_C_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", " ": " ", "r": "\r", "a": "\a", "b": "\b",
              "f": "\f", "v": "\v", "s": " "}


def split_words(text: str) -> list[str]:
    """systemd's extract_first_word with EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE."""
    words, current, quote, in_word, i = [], [], None, False, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            nxt = text[i + 1]
            if nxt == "x":
                current.append(chr(int(text[i + 2:i + 4], 16)))
                i += 4
            else:
                assert nxt in _C_ESCAPES, f"bad escape \\{nxt} in {text!r}"
                current.append(_C_ESCAPES[nxt])
                i += 2
            in_word = True
            continue
        if quote:
            if c == quote:
                quote = None
            else:
                current.append(c)
        elif c in "\"'":
            quote, in_word = c, True
        elif c.isspace():
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
        else:
            current.append(c)
            in_word = True
        i += 1
    assert quote is None, f"unbalanced quotes in {text!r}"
    if in_word:
        words.append("".join(current))
    return words


def exec_argv(value: str, specifiers: dict[str, str], env: dict[str, str]) -> list[str]:
    """An Exec*= value as systemd runs it: prefixes dropped, specifiers, words, $VAR words, '$$'."""
    value = value.lstrip("-@:+!")
    argv: list[str] = []
    for word in split_words(expand_specifiers(value, specifiers)):
        if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", word):
            argv += env.get(word[1:], "").split()  # an empty variable word disappears
        else:
            assert not re.search(r"(?<!\$)\$(\{|[A-Za-z_])", word.replace("$$", "")), f"unescaped $ in {word!r}"
            argv.append(word.replace("$$", "$"))
    return argv


def environment(text: str, specifiers: dict[str, str]) -> dict[str, str]:
    env = {}
    for value in unit_values(text, "Environment"):
        for word in split_words(value):
            key, _, val = expand_specifiers(word, specifiers).partition("=")
            env[key] = val
    return env


# ---------------------------------------------------------------- a fake gateway under test


@dataclass
class Gateway:
    proc: subprocess.Popen
    home: Path
    log: Path

    def state(self) -> dict:
        data = read_json(self.home / "gateway_state.json")
        return data if isinstance(data, dict) else {}

    def set_active(self, n: int) -> None:
        (self.home / "fake-gateway.json").write_text(json.dumps({"active_agents": n}))


def start_gateway(reaper, tmp_path: Path, profile: str = "alpha", extra_env: dict | None = None,
                  active: int = 0) -> Gateway:
    root = tmp_path / "root"
    home = root / "profiles" / profile
    home.mkdir(parents=True, exist_ok=True)
    (home / "fake-gateway.json").write_text(json.dumps({"active_agents": active}))
    log = tmp_path / f"{profile}.log"
    env = dict(os.environ, HERMES_HOME=str(root), HERMES_GATEWAY_EXTERNAL_SUPERVISOR="1",
               HERMES_S6_SUPERVISED_CHILD="1", HERMES_GATEWAY_MAX_STARTS="0", FAKE_HERMES_POLL_S="0.05",
               HERMES_GATEWAY_LOCK_DIR=str(tmp_path / "locks"), **(extra_env or {}))
    with log.open("wb") as out:
        proc = reaper.spawn([sys.executable, str(FAKE_HERMES), "-p", profile, "gateway", "run",
                             "--external-supervisor"], env=env, stdout=out, stderr=subprocess.STDOUT)
    gateway = Gateway(proc, home, log)
    wait_until(lambda: gateway.state().get("gateway_state") == "running" and gateway.state().get("pid") == proc.pid,
               timeout=20, what="the fake gateway to run")
    return gateway


def wait_exit(proc: subprocess.Popen, timeout: float = 20) -> int:
    wait_until(lambda: proc.poll() is not None, timeout=timeout, what=f"pid {proc.pid} to exit")
    return proc.returncode


def proc_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[19])


def boot_epoch() -> str:
    return f"{Path('/proc/sys/kernel/random/boot_id').read_text().strip()}:{proc_ticks(1)}"


def manifest(tmp_path: Path, drain: str = "30s") -> str:
    return f"""
version: 1
name: t
hermes: {{home: {tmp_path / 'root'}, command: [{sys.executable}, {FAKE_HERMES}]}}
drain: {{timeout: {drain}}}
profiles:
  alpha: {{}}
  worker:
    driver: process
    command: [{sys.executable}, {FAKE_HERMES}, -p, worker, gateway, run]
    cwd: {tmp_path}
"""


def rendered_unit(tmp_path: Path, profile: str, drain: str = "30s") -> str:
    spec = parse_manifest(manifest(tmp_path, drain), "t.yaml", str(tmp_path)).spec
    export = SystemdTarget().render(spec)
    return next(f.text for f in export.files if f.path == f"hermes-gateway-{profile}.service")


def rendered_container(tmp_path: Path, profile: str, drain: str = "30s") -> dict:
    spec = parse_manifest(manifest(tmp_path, drain), "t.yaml", str(tmp_path)).spec
    export = KubernetesTarget().render(spec)
    text = next(f.text for f in export.files if f.path == f"{profile}.yaml")
    deployment = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]


def run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def log_index(gateway: Gateway, text: str) -> int:
    log = gateway.log.read_text(errors="replace")
    assert text in log, log
    return log.index(text)


# ---------------------------------------------------------------- the Hermes drain


@needs_fake
def test_systemd_exec_stop_drains_then_plans_the_stop(tmp_path, reaper):
    gateway = start_gateway(reaper, tmp_path)
    unit = rendered_unit(tmp_path, "alpha")
    [stop] = unit_values(unit, "ExecStop")
    argv = exec_argv(stop, {"t": str(tmp_path / "rt")}, {"MAINPID": str(gateway.proc.pid)})
    assert argv[:2] == ["/bin/sh", "-c"] and argv[-1] == str(gateway.proc.pid)
    done = run(argv)
    assert done.returncode == 0, done.stderr
    assert wait_exit(gateway.proc) == 0  # a planned stop, not an unexpected one (1)
    assert gateway.state()["gateway_state"] == "stopped"
    assert log_index(gateway, "-> draining") < log_index(gateway, "planned stop (planned-stop marker)")
    request = json.loads((gateway.home / ".drain_request.json").read_text())
    assert request["action"] == "drain" and request["epoch"] == boot_epoch()
    assert request["principal"] == "hermes-fleet:systemd-stop" and request["suppress_notification"] is False
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", request["requested_at"])

    # The next start clears the drain request: on one host its epoch would still match.
    [clear] = unit_values(unit, "ExecStartPre")
    assert clear.startswith("-")
    assert run(exec_argv(clear, {"t": str(tmp_path / "rt")}, {})).returncode == 0
    assert not (gateway.home / ".drain_request.json").exists()


@needs_fake
def test_the_stop_waits_for_in_flight_turns_before_planning_the_stop(tmp_path, reaper):
    gateway = start_gateway(reaper, tmp_path, active=1)
    [stop] = unit_values(rendered_unit(tmp_path, "alpha", drain="60s"), "ExecStop")
    script = subprocess.Popen(exec_argv(stop, {}, {"MAINPID": str(gateway.proc.pid)}),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reaper.track(script)
    wait_until(lambda: gateway.state().get("gateway_state") == "draining", timeout=20, what="draining")
    # Busy: the script keeps waiting, so no planned-stop marker yet and the gateway lives on.
    assert not (gateway.home / ".gateway-planned-stop.json").exists()
    assert gateway.proc.poll() is None and script.poll() is None
    gateway.set_active(0)
    assert wait_exit(gateway.proc) == 0
    assert wait_exit(script) == 0
    assert log_index(gateway, "active_agents: 1 -> 0") < log_index(gateway, "planned stop (planned-stop marker)")


@needs_fake
def test_the_stop_gives_up_waiting_after_the_drain_budget(tmp_path, reaper):
    gateway = start_gateway(reaper, tmp_path, active=2)
    [stop] = unit_values(rendered_unit(tmp_path, "alpha", drain="1s"), "ExecStop")
    done = run(exec_argv(stop, {}, {"MAINPID": str(gateway.proc.pid)}))
    assert done.returncode == 0, done.stderr
    # Still busy, but the budget is spent: the marker makes the following signal a planned stop.
    assert wait_exit(gateway.proc) == 0
    assert gateway.state()["gateway_state"] == "stopped"


@needs_fake
def test_kubernetes_prestop_finds_the_gateway_by_its_pid_file(tmp_path, reaper):
    gateway = start_gateway(reaper, tmp_path)
    container = rendered_container(tmp_path, "alpha")
    argv = container["lifecycle"]["preStop"]["exec"]["command"]
    assert argv[4] == "/opt/data/profiles/alpha"  # the in-container home; here, the test's
    argv = argv[:4] + [str(gateway.home)] + argv[5:]
    assert argv[7:] == ["auto", "30"]  # the script reads gateway.pid; then up to 30 s for the gateway to exit
    script = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_exit(gateway.proc) == 0  # interrupted: a planned stop, whoever took the marker first
        # The hook returns only once the gateway is gone: the kubelet's SIGTERM that follows finds nothing to
        # turn into an unexpected stop.
        _, err = script.communicate(timeout=15)
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
    assert script.returncode == 0, err
    request = json.loads((gateway.home / ".drain_request.json").read_text())
    assert request["principal"] == "hermes-fleet:kubernetes-prestop" and request["epoch"] == boot_epoch()


def test_the_stop_does_nothing_for_a_gateway_that_is_gone(tmp_path):
    home = tmp_path / "root" / "profiles" / "alpha"
    home.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    [stop] = unit_values(rendered_unit(tmp_path, "alpha"), "ExecStop")
    assert run(exec_argv(stop, {}, {"MAINPID": str(gone.pid)})).returncode == 0
    assert run(exec_argv(stop, {}, {})).returncode == 0  # no main PID at all: pid 1 of a host is not ours
    assert not (home / ".gateway-planned-stop.json").exists()
    assert not (home / ".drain_request.json").exists()


def test_the_planned_stop_marker_names_the_process_and_its_start_time(tmp_path, reaper):
    home = tmp_path / "root" / "profiles" / "alpha"
    home.mkdir(parents=True)
    (home / "gateway_state.json").write_text(json.dumps({"gateway_state": "draining", "active_agents": 0}))
    target = reaper.spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    [stop] = unit_values(rendered_unit(tmp_path, "alpha"), "ExecStop")
    done = run(exec_argv(stop, {}, {"MAINPID": str(target.pid)}))
    assert done.returncode == 0, done.stderr
    marker = json.loads((home / ".gateway-planned-stop.json").read_text())
    assert marker["target_pid"] == target.pid
    assert marker["target_start_time"] == proc_ticks(target.pid)
    assert isinstance(marker["stopper_pid"], int) and marker["written_at"].endswith("+00:00")
    assert not list(home.glob("*.tmp*"))  # written atomically, nothing left over


# ---------------------------------------------------------------- the process driver's stop file


@needs_fake
def test_process_driver_stop_file_stops_the_child(tmp_path, reaper):
    runtime = tmp_path / "rt"
    unit = rendered_unit(tmp_path, "worker")
    env = environment(unit, {"t": str(runtime)})
    stop_file = Path(env["HERMES_FLEET_STOP_FILE"])
    stop_file.parent.mkdir(parents=True)  # systemd's RuntimeDirectory=
    assert stop_file.parent.name == unit_values(unit, "RuntimeDirectory")[0]
    gateway = start_gateway(reaper, tmp_path, profile="worker", extra_env={
        "HERMES_FLEET_STOP_FILE": str(stop_file), "HERMES_FLEET_STATE_FILE": env["HERMES_FLEET_STATE_FILE"]})
    [stop] = unit_values(unit, "ExecStop")
    done = run(exec_argv(stop, {"t": str(runtime)}, {"MAINPID": str(gateway.proc.pid)}))
    assert done.returncode == 0, done.stderr
    assert wait_exit(gateway.proc) == 0
    marker = json.loads(stop_file.read_text())
    assert marker["reason"] == "systemd stop" and marker["requested_at"] and "deadline" in marker

    [clear] = unit_values(unit, "ExecStartPre")
    assert run(exec_argv(clear, {"t": str(runtime)}, {})).returncode == 0
    assert not stop_file.exists()


def test_kubernetes_process_container_clears_a_leftover_stop_file_then_runs_the_child(tmp_path):
    container = rendered_container(tmp_path, "worker")
    argv = container["command"]
    stop_file = tmp_path / "stop"
    stop_file.write_text("{}")
    assert argv[4] == "/run/hermes-fleet/stop"
    out = tmp_path / "started"
    child = [sys.executable, "-c", f"open({str(out)!r}, 'w').write('ok')"]
    done = run(argv[:4] + [str(stop_file)] + child)
    assert done.returncode == 0, done.stderr
    assert not stop_file.exists() and out.read_text() == "ok"

    prestop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[4] == "/run/hermes-fleet/stop"
    assert run(prestop[:4] + [str(stop_file)] + prestop[5:]).returncode == 0
    assert json.loads(stop_file.read_text())["reason"] == "kubernetes preStop"


# ---------------------------------------------------------------- liveness


def test_liveness_probe_fails_only_for_a_stale_heartbeat(tmp_path):
    container = rendered_container(tmp_path, "alpha")
    probe = container["livenessProbe"]["exec"]["command"]
    assert probe[4].endswith("/state/gateway.heartbeat") and probe[5] == "90"
    heartbeat = tmp_path / "gateway.heartbeat"
    argv = probe[:4] + [str(heartbeat), probe[5]]
    assert run(argv).returncode == 0  # none yet: not a verdict
    heartbeat.write_text("{}")
    assert run(argv).returncode == 0
    old = time.time() - 300
    os.utime(heartbeat, (old, old))
    stale = run(argv)
    assert stale.returncode == 1 and "limit 90s" in stale.stdout


@needs_fake
def test_liveness_probe_passes_for_a_live_gateway(tmp_path, reaper):
    gateway = start_gateway(reaper, tmp_path)
    probe = rendered_container(tmp_path, "alpha")["livenessProbe"]["exec"]["command"]
    heartbeat = gateway.home / "state" / "gateway.heartbeat"
    assert heartbeat.exists()
    assert run(probe[:4] + [str(heartbeat), probe[5]]).returncode == 0
    gateway.proc.send_signal(signal.SIGINT)
    assert wait_exit(gateway.proc) == 0
