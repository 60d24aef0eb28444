"""`status`: the fleet now, and with --deep each probe behind a profile's state."""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict
from pathlib import Path

from fleet.cli.common import (
    EXIT_FAILED, EXIT_OK, FILE, OUTPUT, STATE_DIR, check_output, columns, emit_json, fail, fleet_state, utc,
)
from fleet.cli.console import Exit, echo
from fleet.cli.declared import Arg, Opt, declare
from fleet.cli.controller_client import NO_CONTROLLER_HINT
from fleet.cli.source_view import source_json, source_summary
from fleet.controller.status import FleetStatus, Phase, ProfileStatus, fleet_status, hold_note
from fleet.observe.model import ProfileObservation
from fleet.platform import current_platform
from fleet.spec.durations import format_duration, parse_duration
from fleet.spec.model import ProfileSpec
from fleet.spec.secrets import mask_argv
from fleet.store.db import Store
from fleet.store.layout import StateDir
from fleet.store.metrics_state import EndpointState


def _fmt_age(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(max(0.0, seconds))


@declare(
    Arg("profiles", "Only these profiles."),
    Opt("deep", ("--deep",), "Per-probe PASS/FAIL checklist for each profile."),
    Opt("watch", ("-w", "--watch"), "Keep showing the fleet, redrawn when it changes, until Ctrl-C or q."),
    Opt("interval", ("--interval",), "With --watch: recompute at least this often (ages move); more than 0, "
        "e.g. 0.5, 2s."),
    OUTPUT, STATE_DIR, FILE,
)
def status(
    profiles: list[str] | None = None,
    deep: bool = False,
    watch: bool = False,
    interval: str = "2s",
    output: str = "text",
    state_dir: str | None = None,
    file: Path = Path("fleet.yaml"),
) -> None:
    """The fleet now: one row per profile, the controller, and what each profile waits on.

    With a followed git source (`source set`), also the source: the last fetched and applied
    commits, when, whether the fleet runs the branch's commit, and a commit that failed.

    RESTARTS: how often the controller started the gateway again (after a crash, a
    replacement or `restart`), and how long ago its last exit was, as kubectl shows it:
    `3 (2m ago)`.

    Exit 0 when every profile is where the manifest wants it, 1 otherwise (a profile held
    stopped by `stop` or `down` included, or when no controller runs), 2 on error. A failed
    commit of the source does not change it: `source show` exits 1 for that.

    With -w/--watch, one process keeps the view current: it looks at the state directory
    five times a second (file times and sizes, no query), recomputes the view when something
    changed, and at least every --interval so ages move. It only reads, so it works without
    a controller too. It ends with exit 0 on q, Ctrl-C, or when the OS asks it to stop.

    On a terminal, --watch fills the screen (the alternate screen, restored at the end) with
    the table and the latest events under it. Keys: q quits, r or space redraws.

    When stdout is not a terminal (a pipe, a file), --watch prints plain lines, never escape
    codes: a frame each time something other than an age changed, as a `--- <date time>`
    line and then what `status` prints. With -o json it prints NDJSON: one line per frame,
    each the object `status -o json` prints.
    """
    check_output(output)
    if watch:
        if deep:
            fail("--deep cannot be combined with --watch")
        every = _interval(interval)
    state = fleet_state(state_dir, file)
    now = time.time()
    st = fleet_status(state, current_platform(), now, scan=deep)
    rows = selected(st, profiles)
    if watch:
        from fleet.cli.watch import watch_status

        raise Exit(watch_status(state, profiles or [], every, output, first=(st, now)))
    if output == "json":
        emit_json(status_json(state, st, rows, now, deep))
    else:
        _print_status(state, st, rows, now, deep)
    ok = st.controller.running and st.converged and not st.held
    raise Exit(EXIT_OK if ok else EXIT_FAILED)


def _interval(text: str) -> float:
    """--interval: a duration (0.5, 2s, 500ms), more than zero."""
    try:
        seconds = parse_duration(float(text) if text.replace(".", "", 1).isdigit() else text)
    except ValueError as exc:
        fail(f"--interval: {exc}")
    if seconds <= 0:
        fail(f"--interval must be more than 0; got {text!r}")
    return seconds


def selected(st: FleetStatus, profiles: list[str] | None) -> list[ProfileStatus]:
    """The rows of the profiles asked for (all without a list); an unknown name is an error."""
    unknown = set(profiles or []) - {p.name for p in st.profiles}
    if unknown:
        fail(f"unknown profile(s): {', '.join(sorted(unknown))}")
    return [p for p in st.profiles if not profiles or p.name in profiles]


def status_json(state: StateDir, st: FleetStatus, rows: list[ProfileStatus], now: float, deep: bool) -> dict:
    ctl = st.controller
    return {
        "format_version": "1.0", "kind": "status", "generated_at": utc(now),
        "controller": {"pid": ctl.pid, "running": ctl.running, "epoch": ctl.epoch, "version": ctl.version,
                       "since": utc(ctl.since), "generation": ctl.generation,
                       "observed_generation": ctl.observed_generation, "converged": st.converged,
                       "store_degraded": ctl.store_degraded,
                       "metrics": None if ctl.metrics is None else asdict(ctl.metrics)},
        "source": source_json(st.source) if st.source is not None else None,
        "profiles": [{
            **_profile_json(p, now),
            **({"checks": _deep_checks(state, st, p.name)} if deep else {}),
        } for p in rows],
    }


def _profile_json(p: ProfileStatus, now: float) -> dict:
    return {
        "name": p.name, "phase": p.phase, "sync": p.sync, "health": p.health, "pid": p.pid,
        "uptime_s": int(now - p.started_at) if p.started_at else None, "restarts": p.restarts,
        "last_exit": p.last_exit, "heartbeat_age_s": int(p.heartbeat_age) if p.heartbeat_age is not None else None,
        "active_agents": p.active_agents, "gateway_state": p.gateway_state, "spec_hash": p.spec_hash,
        "desired_spec_hash": p.desired_spec_hash, "desired": p.desired, "note": p.note,
        "hold": None if p.hold is None else {"by": p.hold.by, "user": p.hold.user, "since": utc(p.hold.since)},
        "action": {"kind": p.action.kind, "reason": p.action.reason, "not_before": utc(p.action.not_before)},
    }


def _print_status(state: StateDir, st: FleetStatus, rows: list[ProfileStatus], now: float, deep: bool) -> None:
    for line in fleet_lines(st, now) + table_lines(st, rows, now):
        echo(line)
    if deep:
        for p in rows:
            echo(f"\n{p.name}:")
            for check in _deep_checks(state, st, p.name):
                echo(f"  [{check['result']}] {check['probe']}: {check['detail']}")


def fleet_lines(st: FleetStatus, now: float) -> list[str]:
    """The controller, the store's health, the source and a fleet-wide `down`, above the table."""
    ctl = st.controller
    if ctl.running:
        lines = [f"controller: running (pid {ctl.pid}, epoch {ctl.epoch}) generation {ctl.generation}, "
                 f"observed {ctl.observed_generation}" + ("" if st.converged else " — converging")]
    else:
        lines = [f"controller: NOT RUNNING — {NO_CONTROLLER_HINT}"]
    if ctl.store_degraded:
        lines.append(f"store degraded: {ctl.store_degraded}")
    lines += metrics_lines(ctl.metrics)
    if st.source is not None:
        lines += source_summary(st.source, now)
    downs = [p.hold for p in st.profiles if p.hold is not None and p.hold.by == "down"]
    if downs:
        first = min(downs, key=lambda h: h.since or now)
        lines.append(f"fleet: {hold_note(first, now, 'PROFILE...')} ({len(downs)} profile(s))")
    return lines


def metrics_lines(endpoint: EndpointState | None) -> list[str]:
    """Where the controller serves its metrics, or why it does not (docs/observability.md)."""
    if endpoint is None:
        return []
    lines = []
    if endpoint.listen:
        lines.append(f"metrics: http://{endpoint.listen}/metrics")
    if endpoint.listen_error:
        lines.append(f"metrics: NOT SERVED — {endpoint.listen_error}")
    if endpoint.textfile:
        lines.append(f"metrics textfile: {endpoint.textfile}" +
                     (f" — NOT WRITTEN: {endpoint.textfile_error}" if endpoint.textfile_error else ""))
    return lines


PROFILE_COLUMNS = ("PROFILE", "PHASE", "SYNC", "PID", "UP", "RESTARTS", "LAST EXIT", "BEAT", "ACTIVE", "NOTE")
PHASE_COLUMN = PROFILE_COLUMNS.index("PHASE")
TABLE_RIGHT = frozenset(PROFILE_COLUMNS.index(c) for c in ("PID", "RESTARTS", "ACTIVE"))  # numbers, right-aligned


def table_lines(st: FleetStatus, rows: list[ProfileStatus], now: float) -> list[str]:
    """The profile table: a header, then a row per profile, aligned."""
    return columns(profile_table(st, rows, now), right=TABLE_RIGHT)


def profile_table(st: FleetStatus, rows: list[ProfileStatus], now: float) -> list[tuple[str, ...]]:
    table: list[tuple[str, ...]] = [PROFILE_COLUMNS]
    for p in rows:
        table.append((p.name, p.phase, p.sync, str(p.pid or "-"),
                      _fmt_age(now - p.started_at) if p.started_at else "-", _restarts(st, p, now),
                      p.last_exit or "-", _fmt_age(p.heartbeat_age),
                      "-" if p.active_agents is None else str(p.active_agents), _note(st, p, now)))
    return table


def _note(st: FleetStatus, p: ProfileStatus, now: float) -> str:
    """What the profile waits on; while it drains, also how long it has been draining and how much is left."""
    h = st.observed.get(p.name).history
    if p.phase not in (Phase.DRAINING, Phase.REMOVING) or h.drain_started is None:
        return p.note
    progress = f"draining {format_duration(max(0, round(now - h.drain_started)))}"
    if h.drain_deadline is not None:
        progress += f", kill in {format_duration(max(0, round(h.drain_deadline - now)))}"
    return f"{p.note} [{progress}]" if p.note else f"[{progress}]"


def _restarts(st: FleetStatus, p: ProfileStatus, now: float) -> str:
    """`3 (2m ago)` as kubectl prints it: the count, and how long ago the last exit was."""
    last_exit = st.observed.get(p.name).history.last_exit_at
    if not p.restarts or last_exit is None:
        return str(p.restarts)
    return f"{p.restarts} ({format_duration(max(0, round(now - last_exit)))} ago)"


def _deep_checks(state: StateDir, st: FleetStatus, name: str) -> list[dict]:
    """Each probe behind a profile's state, so an operator can see why without reading code."""
    from fleet.controller.desired import DesiredSource

    obs = st.observed.get(name)
    store = Store(state.db, readonly=True)
    try:
        _, specs = DesiredSource(store).current()
        last_events = store.events(profile=name, limit=1)
    finally:
        store.close()
    pspec = specs.get(name)
    row = next((p for p in st.profiles if p.name == name), None)
    checks = _process_checks(state, name, obs, row.desired_spec_hash if row else None)
    if pspec is not None and pspec.driver == "hermes":
        checks += _hermes_checks(pspec, obs)
    checks.append(_heartbeat_check(obs, pspec))
    checks.append(_check("last lifecycle event", True if last_events else None,
                         f"{utc(last_events[-1].at)} {last_events[-1].kind}: {last_events[-1].message}"
                         if last_events else "none"))
    native = obs.native_service  # a unit gated by a take-over is none
    checks.append(_check("no native service conflict", native is None, native or "none found"))
    return checks


def _check(probe: str, ok: bool | None, detail: str) -> dict:
    return {"probe": probe, "result": {True: "PASS", False: "FAIL", None: "SKIP"}[ok], "detail": detail}


def _process_checks(state: StateDir, name: str, obs: ProfileObservation, desired_hash: str | None) -> list[dict]:
    """The record, the process it names, and whether that process runs the desired spec."""
    rec, proc = obs.record, obs.process
    checks = [
        _check("record present", rec is not None,
               f"{state.record(name)}" + (f" pid {rec.pid}" if rec else f" ({obs.record_problem or 'missing'})")),
        _check("identity (pid + start time + user)", proc is not None,
               f"pid {proc.pid}, start {proc.start_ticks}, found via {proc.source}" if proc
               else f"verdict: {obs.record_verdict}"),
    ]
    if proc:
        checks.append(_check("command line", True, " ".join(mask_argv(proc.cmdline))[:200]))
    if rec is not None and not rec.adopted:
        checks.append(_check("started with every protection the OS offers", rec.caveat is None, rec.caveat or "yes"))
    spec_current = None if proc is None or proc.spec_hash is None else proc.spec_hash == desired_hash
    checks.append(_check("spec current", spec_current,
                         f"running {proc.spec_hash if proc else '-'}, desired {desired_hash or '-'}"))
    return checks


def _hermes_checks(pspec: ProfileSpec, obs: ProfileObservation) -> list[dict]:
    """Hermes' own files in the profile's home: its gateway lock, its state file, its .env."""
    from fleet.observe import hermes_files as hf

    lock = os.path.join(pspec.hermes_home, hf.GATEWAY_LOCK)
    held = current_platform().lock_is_held(lock) if os.path.exists(lock) else False
    checks = [_check("gateway.lock held by a live process", held, lock)]
    if obs.status:
        age = time.time() - obs.status.updated_at if obs.status.updated_at else None
        checks.append(_check(
            "gateway_state.json", obs.status.state in ("running", "draining", "starting"),
            f"state {obs.status.state}, active_agents {obs.status.active}, updated {_fmt_age(age)} ago"))
    else:
        checks.append(_check("gateway_state.json", False, "missing or unreadable"))
    overridden = _proxy_keys_in_dotenv(os.path.join(pspec.hermes_home, ".env"))
    checks.append(_check("proxy not overridden by the profile's .env", not overridden,
                         "overridden there: " + ", ".join(overridden) if overridden else "no proxy keys in .env"))
    return checks


def _heartbeat_check(obs: ProfileObservation, pspec: ProfileSpec | None) -> dict:
    if not (obs.heartbeat_at and obs.process):
        return _check("heartbeat fresh", None, "no heartbeat from this process")
    age = time.time() - obs.heartbeat_at
    limit = pspec.health.heartbeat_stale if pspec else 90.0
    return _check("heartbeat fresh", age <= limit, f"{_fmt_age(age)} old (limit {format_duration(limit)})")


def _proxy_keys_in_dotenv(path: str) -> list[str]:
    """Hermes loads <home>/.env with override=True: a proxy there beats the one the fleet passes."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            keys = dotenv_keys(fh.read())
    except OSError:
        return []
    return [k for k in keys if "PROXY" in k.upper()]


_DOTENV_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=(.*)$")


def dotenv_keys(text: str) -> list[str]:
    """The keys a .env file sets, read as python-dotenv (Hermes' loader) reads them: `#` comments and
    blank lines set nothing, `export ` is optional, and a quoted value may span lines (its inner lines
    are value, not assignments). An empty value counts: it still overrides."""
    keys: list[str] = []
    lines = iter(text.splitlines())
    for line in lines:
        match = _DOTENV_ASSIGNMENT.match(line)
        if not match:
            continue
        keys.append(match.group(1))
        value = match.group(2).lstrip()
        if value[:1] in ("'", '"'):
            quote, rest = value[0], value[1:]
            while not _closes(rest, quote):
                rest = next(lines, None)
                if rest is None:
                    break
    return keys


def _closes(text: str, quote: str) -> bool:
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quote == '"':
            escaped = True
        elif ch == quote:
            return True
    return False
