"""Transient scopes for gateways: when systemd-run --user is used, and what it runs."""

from __future__ import annotations

import os
import stat

from fleet.platform.systemd_scope import (
    SERVICE_ENV_TO_STRIP, scope_command, scope_unit_name, strip_service_env, user_manager_available,
)


def fake_bin(tmp_path, *names: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        tool = bin_dir / name
        tool.write_text("#!/bin/sh\nexit 0\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return str(bin_dir)


def user_runtime(tmp_path) -> str:
    runtime = tmp_path / "run"
    (runtime / "systemd").mkdir(parents=True)
    (runtime / "systemd" / "private").write_text("")  # stands for the manager's socket
    return str(runtime)


def test_scope_command_wraps_the_argv_when_a_user_manager_answers(tmp_path):
    env = {"XDG_RUNTIME_DIR": user_runtime(tmp_path), "PATH": fake_bin(tmp_path, "systemd-run", "env")}
    argv = scope_command("hermes-fleet-alpha-1", ["/usr/bin/hermes", "gateway", "run"], environ=env)
    assert argv == [
        "systemd-run", "--user", "--scope", "--quiet", "--collect", "--unit", "hermes-fleet-alpha-1", "--",
        os.path.join(env["PATH"], "env"), "-u", "INVOCATION_ID", "/usr/bin/hermes", "gateway", "run",
    ]


def test_stop_timeout_becomes_a_scope_property(tmp_path):
    env = {"XDG_RUNTIME_DIR": user_runtime(tmp_path), "PATH": fake_bin(tmp_path, "systemd-run", "env")}
    argv = scope_command("u", ["x"], stop_timeout=74.6, environ=env)
    assert "--property=TimeoutStopSec=75s" in argv
    assert argv.index("--property=TimeoutStopSec=75s") < argv.index("--")


def test_no_scope_without_a_user_manager_socket(tmp_path):
    path = fake_bin(tmp_path, "systemd-run", "env")
    assert scope_command("u", ["x"], environ={"PATH": path}) is None
    assert scope_command("u", ["x"], environ={"PATH": path, "XDG_RUNTIME_DIR": str(tmp_path / "missing")}) is None


def test_invocation_id_alone_is_not_enough(tmp_path):
    # A *system* unit sets INVOCATION_ID too, with no user manager reachable from it.
    env = {"INVOCATION_ID": "abc", "PATH": fake_bin(tmp_path, "systemd-run", "env")}
    assert not user_manager_available(env)


def test_no_scope_without_systemd_run(tmp_path):
    env = {"XDG_RUNTIME_DIR": user_runtime(tmp_path), "PATH": fake_bin(tmp_path, "env")}
    assert scope_command("u", ["x"], environ=env) is None


def test_unit_names_only_keep_characters_a_unit_may_hold():
    assert scope_unit_name("alpha", "1700000000000") == "hermes-fleet-alpha-1700000000000"
    assert scope_unit_name("a b/c", "t@1") == "hermes-fleet-a_b_c-t_1"
    assert len(scope_unit_name("p" * 300, "1")) <= 250


def test_strip_service_env_removes_exactly_the_service_variables():
    env = {key: "x" for key in SERVICE_ENV_TO_STRIP} | {"PATH": "/bin", "HOME": "/h"}
    assert strip_service_env(env) == {"PATH": "/bin", "HOME": "/h"}
    assert {"INVOCATION_ID", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} <= set(SERVICE_ENV_TO_STRIP)
