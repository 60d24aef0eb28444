"""Exported systemd units: `systemd-analyze verify` finds no unknown or unparsable setting,
and the settings mean what fleet.yaml says (read back the way systemd reads them)."""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.export.systemd import DEFAULT_SYSTEMD_VERSION, SystemdTarget
from fleet.spec.load import parse_manifest
from test_export_scripts import environment, exec_argv, unit_entries, unit_values

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
# Lines that say the unit file itself is wrong; anything else (say, a missing executable)
# is about the host the test runs on.
UNIT_PROBLEM = re.compile(r"Unknown key|Unknown section|Unknown lvalue|[Ii]nvalid|Failed to parse|ignoring|"
                          r"Unbalanced|[Mm]issing '='|bad unit file setting")
AWKWARD_VALUE = "hello world; 100% \"quoted\" $HOME \\ back 'single' %t \t tab"


def host_systemd_version() -> int:
    out = subprocess.run([SYSTEMD_ANALYZE, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"systemd (\d+)", out)
    assert match, out
    return int(match.group(1))


def verify_manifest(tmp_path: Path) -> str:
    """Every executable exists on this host, so verify has nothing but the units to complain about."""
    home = tmp_path / "hermes"
    return yaml.safe_dump({
        "version": 1,
        "name": "verify",
        "hermes": {"home": str(home), "command": [sys.executable, "-m", "hermes_cli.main"]},
        "proxy": {"url": "http://proxy.internal:3128", "no_proxy": [".internal"]},
        "profiles": {
            "default": {},
            "alpha": {"env": {"TELEGRAM_BOT_TOKEN": "not-a-real-token", "GREETING": AWKWARD_VALUE},
                      "restart": {"policy": "on-failure"}, "drain": {"timeout": "2.5s"}},
            "stopped_one": {"desired": "stopped", "restart": {"policy": "never", "backoff": [0, 3]}},
            "worker": {"driver": "process", "command": [sys.executable, "-c", "print('hi there')", "a b"],
                       "cwd": str(tmp_path), "env": {"API_KEY": "k", "PLAIN": "x%y"}},
        },
    })


def verify(folder: Path, scope: str, tmp_path: Path) -> subprocess.CompletedProcess:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(runtime),
           "SYSTEMD_LOG_LEVEL": "info"}
    argv = [SYSTEMD_ANALYZE] + (["--user"] if scope == "user" else []) + ["verify"]
    argv += sorted(str(p) for p in folder.glob("*.service"))
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=folder)


def write_units(export, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in export.files:
        (folder / f.path).write_text(f.text, encoding="utf-8")


def problems_of(result: subprocess.CompletedProcess) -> list[str]:
    text = result.stdout + result.stderr
    if "Failed to initialize manager" in text or "Failed to lookup RuntimeDirectory" in text:
        pytest.skip(f"systemd-analyze cannot start a manager here: {text.strip()[:200]}")
    return [line for line in text.splitlines() if UNIT_PROBLEM.search(line)]


@needs_analyze
@pytest.mark.parametrize("scope", ["user", "system"])
def test_units_verify_cleanly_for_this_hosts_systemd(tmp_path, scope):
    version = host_systemd_version()
    spec = parse_manifest(verify_manifest(tmp_path), "fleet.yaml", str(tmp_path)).spec
    user = getpass.getuser() if scope == "system" else None
    export = SystemdTarget(scope=scope, user_name=user, systemd_version=version).render(spec)
    folder = tmp_path / "units"
    write_units(export, folder)
    result = verify(folder, scope, tmp_path)
    assert problems_of(result) == [], result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr


@needs_analyze
def test_verify_catches_keys_this_systemd_does_not_know(tmp_path):
    """The check above can fail: newer keys, or a made-up one, are reported as unknown."""
    version = host_systemd_version()
    spec = parse_manifest(verify_manifest(tmp_path), "fleet.yaml", str(tmp_path)).spec
    export = SystemdTarget(systemd_version=max(version, DEFAULT_SYSTEMD_VERSION)).render(spec)
    folder = tmp_path / "units"
    write_units(export, folder)
    bogus = folder / "hermes-gateway-alpha.service"
    bogus.write_text(bogus.read_text().replace("[Service]\n", "[Service]\nRestartSteeps=3\n"))
    problems = problems_of(verify(folder, "user", tmp_path))
    assert any("RestartSteeps" in line for line in problems), problems
    if version < DEFAULT_SYSTEMD_VERSION:
        assert any("RestartSteps" in line for line in problems), problems
    else:
        assert not any("'RestartSteps'" in line for line in problems), problems


def test_units_say_what_fleet_yaml_says(tmp_path):
    spec = parse_manifest(verify_manifest(tmp_path), "fleet.yaml", str(tmp_path)).spec
    files = {f.path: f.text for f in SystemdTarget().render(spec).files}
    assert sorted(files) == ["hermes-gateway-alpha.service", "hermes-gateway-default.service",
                             "hermes-gateway-stopped_one.service", "hermes-gateway-worker.service"]
    alpha = files["hermes-gateway-alpha.service"]
    settings_ = {k: v for _, k, v in unit_entries(alpha)}
    assert settings_["Restart"] == "on-failure"
    assert settings_["RestartForceExitStatus"] == "75" and settings_["RestartPreventExitStatus"] == "78"
    assert settings_["StartLimitIntervalSec"] == "0" and settings_["KillMode"] == "mixed"
    assert (settings_["RestartSec"], settings_["RestartSteps"], settings_["RestartMaxDelaySec"]) == ("1s", "8", "64s")
    assert settings_["TimeoutStopSec"] == "33s"  # drain 2.5s rounded up + 30 s teardown
    assert settings_["EnvironmentFile"] == "%E/hermes-fleet/verify/alpha.env"
    assert exec_argv(settings_["ExecStart"], {}, {}) == [sys.executable, "-m", "hermes_cli.main", "-p", "alpha",
                                                         "gateway", "run", "--external-supervisor"]
    env = environment(alpha, {"t": "/run/user/1000"})
    assert env["GREETING"] == AWKWARD_VALUE
    assert env["HERMES_FLEET_PROFILE"] == "alpha" and env["HERMES_HOME"] == str(tmp_path / "hermes")
    assert env["NO_PROXY"].startswith("127.0.0.1,localhost,::1") and env["no_proxy"] == env["NO_PROXY"]
    assert env["HTTPS_PROXY"] == "http://proxy.internal:3128"
    assert "TELEGRAM_BOT_TOKEN" not in env and "not-a-real-token" not in alpha

    default = files["hermes-gateway-default.service"]
    assert exec_argv(unit_values(default, "ExecStart")[0], {}, {})[3:] == ["gateway", "run", "--external-supervisor"]

    stopped = files["hermes-gateway-stopped_one.service"]
    assert unit_values(stopped, "Restart") == ["no"]
    assert unit_values(stopped, "RestartSec") == ["100ms"]  # a 0 s first step cannot grow geometrically
    assert "do not enable or start it" in stopped

    worker = files["hermes-gateway-worker.service"]
    assert exec_argv(unit_values(worker, "ExecStart")[0], {}, {}) == [sys.executable, "-c", "print('hi there')", "a b"]
    worker_env = environment(worker, {"t": "/run/user/1000"})
    assert worker_env["PLAIN"] == "x%y"
    assert worker_env["HERMES_FLEET_STOP_FILE"] == "/run/user/1000/hermes-fleet-verify-worker/stop"
    assert unit_values(worker, "WorkingDirectory") == [str(tmp_path)]


def test_old_systemd_gets_a_fixed_delay_and_the_gateways_own_storm_breaker(tmp_path):
    spec = parse_manifest(verify_manifest(tmp_path), "fleet.yaml", str(tmp_path)).spec
    unit = next(f.text for f in SystemdTarget(systemd_version=252).render(spec).files
                if f.path == "hermes-gateway-alpha.service")
    assert unit_values(unit, "RestartSteps") == [] and unit_values(unit, "RestartSec") == ["1s"]
    assert "HERMES_GATEWAY_MAX_STARTS" not in environment(unit, {})
    new = next(f.text for f in SystemdTarget(systemd_version=254).render(spec).files
               if f.path == "hermes-gateway-alpha.service")
    assert environment(new, {})["HERMES_GATEWAY_MAX_STARTS"] == "0"


def test_system_units_run_as_the_given_user_after_the_network(tmp_path):
    spec = parse_manifest(verify_manifest(tmp_path), "fleet.yaml", str(tmp_path)).spec
    unit = next(f.text for f in SystemdTarget(scope="system", user_name="hermes").render(spec).files
                if f.path == "hermes-gateway-alpha.service")
    assert unit_values(unit, "User") == ["hermes"]
    assert unit_values(unit, "After") == ["network-online.target"]
    assert unit_values(unit, "WantedBy") == ["multi-user.target"]
    assert "/usr/local/lib/systemd/system/hermes-gateway-alpha.service" in unit


_env_text = st.text(alphabet=st.one_of(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
                                       st.sampled_from("\n\t\r\x1b%$\\\"';")), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_env_text, arg=_env_text.filter(bool))
def test_environment_and_arguments_survive_systemd_quoting(tmp_path, value, arg):
    doc = {"version": 1, "profiles": {"p": {"driver": "process", "command": ["/bin/echo", arg], "cwd": "/srv",
                                            "env": {"V": value}}}}
    spec = parse_manifest(yaml.safe_dump(doc), "f.yaml", "/srv").spec
    unit = SystemdTarget().render(spec).files[0].text
    assert environment(unit, {"t": "/run"})["V"] == value
    assert exec_argv(unit_values(unit, "ExecStart")[0], {}, {}) == ["/bin/echo", arg]
