"""Hermes' own files and command-line rules (hermes-contract sections 1-3), read-only and lenient."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from datetime import datetime

from fleet.store.files import read_json

DRAIN_REQUEST = ".drain_request.json"
PLANNED_STOP = ".gateway-planned-stop.json"
GATEWAY_STATE = "gateway_state.json"
GATEWAY_PID = "gateway.pid"
GATEWAY_LOCK = "gateway.lock"
HEARTBEAT = os.path.join("state", "gateway.heartbeat")


@dataclass(frozen=True)
class GatewayStatus:
    """A gateway's own report of its state, its active work and when it last showed activity."""
    state: str | None  # starting | running | degraded | draining | stopped | startup_failed | (process driver: free text)
    active: int | None  # active agents / runs
    updated_at: float | None
    exit_reason: str | None = None
    activity_at: float | None = None  # latest sign of work: Hermes' updated_at, the contract's last_activity_at
    pid: int | None = None  # the process that wrote it (Hermes' file); None when the format has no pid


@dataclass(frozen=True)
class HermesPidRecord:
    """What Hermes' gateway.pid says: the gateway's pid, start time and command line."""
    pid: int
    start_time: int | None  # start ticks where the platform has them (Linux), else create_time*100
    argv: tuple[str, ...]


def parse_iso(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _int_or_none(value) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def read_gateway_status(home: str) -> GatewayStatus | None:
    data = read_json(os.path.join(home, GATEWAY_STATE))
    if not isinstance(data, dict):
        return None
    return GatewayStatus(
        state=data.get("gateway_state") if isinstance(data.get("gateway_state"), str) else None,
        active=_int_or_none(data.get("active_agents")),
        updated_at=parse_iso(data.get("updated_at")),
        exit_reason=data.get("exit_reason") if isinstance(data.get("exit_reason"), str) else None,
        activity_at=parse_iso(data.get("updated_at")),
        pid=_int_or_none(data.get("pid")),
    )


# Hermes' states that answer a drain request: `draining` (the external drain, or its own stop), `stopped` (it
# stopped meanwhile; nothing runs any more).
DRAIN_ANSWERS = ("draining", "stopped")


def drain_acknowledged(status: GatewayStatus | None, requested_at: float | None, pid: int | None) -> bool:
    """Whether a Hermes gateway answered the drain requested at `requested_at`: its state file says so
    (DRAIN_ANSWERS), written after the request, by the gateway `pid` (when the file names its writer).

    Only such a file counts every run in `active_agents`: while draining Hermes rewrites it every second with
    all its work (chat turns, cron jobs, API-server runs), and admits no new turn. Outside a drain it persists
    the count only at chat-turn boundaries, so an API run leaves `running` with 0 active agents for as long as
    it lasts (hermes-native-services section 7): that file proves nothing, nor does one written before the
    request (a state left by an earlier drain, or another process)."""
    if status is None or requested_at is None or status.state not in DRAIN_ANSWERS:
        return False
    if status.updated_at is None or status.updated_at < requested_at:
        return False
    return status.pid is None or pid is None or status.pid == pid


def idle_under_drain(status: GatewayStatus | None, requested_at: float | None, pid: int | None) -> bool:
    """Idle as far as Hermes can tell anyone: the drain requested at `requested_at` is acknowledged
    (`drain_acknowledged`) and no agent work is left. The one read of `active_agents` a stop may follow."""
    return drain_acknowledged(status, requested_at, pid) and status is not None and status.active == 0


def read_contract_status(path: str) -> GatewayStatus | None:
    """The process driver's HERMES_FLEET_STATE_FILE: {updated_at, state, active_runs, last_activity_at}."""
    data = read_json(path)
    if not isinstance(data, dict):
        return None
    return GatewayStatus(state=data.get("state") if isinstance(data.get("state"), str) else None,
                         active=_int_or_none(data.get("active_runs")), updated_at=parse_iso(data.get("updated_at")),
                         activity_at=parse_iso(data.get("last_activity_at")))


def read_heartbeat(home: str) -> float | None:
    data = read_json(os.path.join(home, HEARTBEAT))
    return parse_iso(data.get("updated_at")) if isinstance(data, dict) else None


def read_hermes_pid(home: str) -> HermesPidRecord | None:
    for name in (GATEWAY_PID, GATEWAY_LOCK):
        data = read_json(os.path.join(home, name))
        if isinstance(data, int) and not isinstance(data, bool):
            return HermesPidRecord(pid=data, start_time=None, argv=())
        if isinstance(data, dict) and _int_or_none(data.get("pid")):
            recorded = data.get("argv")
            argv = recorded if isinstance(recorded, list) else []
            return HermesPidRecord(pid=int(data["pid"]), start_time=_int_or_none(data.get("start_time")),
                                   argv=tuple(str(a) for a in argv))
    return None


def drain_requested(home: str) -> bool:
    return os.path.exists(os.path.join(home, DRAIN_REQUEST))


def _tokens(cmdline: tuple[str, ...]) -> list[str]:
    return [t.lower() for t in cmdline]


def _strip_profile_flags(tokens: list[str]) -> tuple[list[str], str | None]:
    out, profile, skip = [], None, False
    for i, tok in enumerate(tokens):
        if skip:
            skip = False
            continue
        if tok in ("-p", "--profile"):
            profile = tokens[i + 1] if i + 1 < len(tokens) else None
            skip = True
            continue
        if tok.startswith("--profile=") or tok.startswith("-p="):
            profile = tok.split("=", 1)[1]
            continue
        out.append(tok)
    return out, profile


def gateway_subcommand(cmdline: tuple[str, ...]) -> str | None:
    """Hermes' _gateway_command_subcommand: 'run' when the command line is a gateway runtime."""
    tokens = _tokens(cmdline)
    if len(tokens) == 1 and " " in tokens[0]:
        try:
            tokens = [t.lower() for t in shlex.split(tokens[0])]
        except ValueError:
            pass
    for tok in tokens:
        base = os.path.basename(tok)
        if tok.endswith("gateway/run.py") or base in ("hermes-gateway", "hermes-gateway.exe"):
            return "run"
    if not any("hermes_cli.main" in t or "hermes_cli/main.py" in t or os.path.basename(t) in ("hermes", "hermes.exe")
               for t in tokens):
        return None
    rest, _ = _strip_profile_flags(tokens)
    if "gateway" not in rest:
        return None
    i = rest.index("gateway")
    after = rest[i + 1] if i + 1 < len(rest) else None
    if after is None or after.startswith("-") or after == "run":
        return "run"
    return after


def looks_like_gateway(cmdline: tuple[str, ...]) -> bool:
    return gateway_subcommand(cmdline) in ("run", "restart")


def cmdline_profile(cmdline: tuple[str, ...]) -> str:
    """The profile a gateway command line serves: the -p value, or 'default' without one."""
    _, profile = _strip_profile_flags(_tokens(cmdline))
    return profile or "default"


def has_external_supervisor_flag(cmdline: tuple[str, ...]) -> bool:
    return "--external-supervisor" in cmdline
