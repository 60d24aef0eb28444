"""Run each gateway in its own transient systemd scope when a user manager is there.

A gateway in its own scope (`app.slice/<unit>.scope`) leaves the controller's cgroup: it
survives any restart of the controller, and it gets a real SIGTERM (not the SIGKILL that
ends leftovers in `user@.service`) when the user manager shuts down at logout or reboot.
`systemd-run --scope` execs the command in place, so the PID of the spawned process is the
gateway's own PID.

systemd-run puts the *scope's* INVOCATION_ID into the command's environment, so stripping
it from the controller's environment is not enough: the command goes through
`env -u INVOCATION_ID`, which execs in place too (same PID, the gateway's own cmdline), and
the gateway sees the same environment whether the controller runs under systemd or not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from fleet.platform.executables import which

# Variables systemd gives the controller that must not reach a gateway: with them a Hermes
# gateway would notify *our* unit, or believe it runs under its own systemd unit.
SERVICE_ENV_TO_STRIP = (
    "INVOCATION_ID", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
    "JOURNAL_STREAM", "MANAGERPID", "SYSTEMD_EXEC_PID",
)

_UNIT_UNSAFE = re.compile(r"[^A-Za-z0-9:_.\-]")
_MAX_UNIT_NAME = 250  # 255 minus ".scope"


def _env_binary(environ: Mapping[str, str]) -> str | None:
    return which("env", environ.get("PATH", os.defpath))


def user_manager_available(environ: Mapping[str, str] | None = None) -> bool:
    """Cheap check that `systemd-run --user` has a user manager to talk to.

    The manager's private socket in XDG_RUNTIME_DIR is what systemd-run --user connects
    to; INVOCATION_ID alone is not enough (a *system* unit sets it too, without any user
    manager reachable from it).
    """
    env = os.environ if environ is None else environ
    runtime_dir = env.get("XDG_RUNTIME_DIR", "")
    if not runtime_dir or not os.path.exists(os.path.join(runtime_dir, "systemd", "private")):
        return False
    return which("systemd-run", env.get("PATH", os.defpath)) is not None and _env_binary(env) is not None


def scope_command(
    unit_name: str, argv: list[str], *, stop_timeout: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str] | None:
    """The argv that runs `argv` in a transient scope, or None to spawn it plainly.

    `unit_name` must be unique per spawn (see `scope_unit_name`); `--collect` drops the
    scope once it ends, so a respawn never meets "unit already exists". `stop_timeout`
    sets how long the manager waits after SIGTERM before SIGKILL when it stops the scope
    (give the gateway's drain timeout plus a margin).
    """
    env = os.environ if environ is None else environ
    env_binary = _env_binary(env)
    if env_binary is None or not user_manager_available(env):
        return None
    command = ["systemd-run", "--user", "--scope", "--quiet", "--collect", "--unit", unit_name]
    if stop_timeout is not None:
        command.append(f"--property=TimeoutStopSec={max(1, round(stop_timeout))}s")
    return [*command, "--", env_binary, "-u", "INVOCATION_ID", *argv]


def scope_unit_name(profile: str, token: str) -> str:
    """`hermes-fleet-<profile>-<token>`, reduced to the characters a unit name may hold."""
    name = _UNIT_UNSAFE.sub("_", f"hermes-fleet-{profile}-{token}")
    return name[:_MAX_UNIT_NAME]


def strip_service_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` without the variables in SERVICE_ENV_TO_STRIP."""
    return {k: v for k, v in env.items() if k not in SERVICE_ENV_TO_STRIP}
