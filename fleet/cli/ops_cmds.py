"""Commands that operate a running fleet: status, restart/stop/start, down, logs, events, history."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import List, Optional

import typer

from fleet.cli.common import (
    EXIT_FAILED, EXIT_OK, FileOption, OutputOption, StateDirOption, check_output, emit_json, fail,
    open_store, state_for,
)
from fleet.cli.common import FileLongOption
from fleet.cli.controller_client import NO_CONTROLLER_HINT, running_controller_pid, stop_controller
from fleet.cli.render_plan import utc
from fleet.controller.status import fleet_status, held_down_message, hold_note
from fleet.controller.wake import wake
from fleet.platform import current_platform
from fleet.spec.durations import format_duration, parse_duration
from fleet.spec.markers import PROFILE_ENV
from fleet.spec.secrets import mask_argv
from fleet.store.db import Store, user_name


def _fleet_state(state_dir: str | None, file: Path):
    """The state directory, refusing one where no fleet was ever applied."""
    state = state_for(state_dir, file)
    if not state.db.exists():
        fail(f"no fleet state in {state.root}", hint="run `hermes-fleet apply -f fleet.yaml` first, or pass --state-dir")
    return state


def _fmt_age(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(max(0.0, seconds))


def status(
    profiles: List[str] = typer.Argument(None, help="Only these profiles."),
    deep: bool = typer.Option(False, "--deep", help="Per-probe PASS/FAIL checklist for each profile."),
    output: str = OutputOption,
    state_dir: Optional[str] = StateDirOption,
    file: Path = FileOption,
) -> None:
    """The fleet now: one row per profile, the controller, and what each profile waits on.

    Exit 0 when every profile is where the manifest wants it, 1 otherwise (a profile held
    stopped by `stop` or `down` included, or when no controller runs), 2 on error.
    """
    check_output(output)
    state = _fleet_state(state_dir, file)
    now = time.time()
    st = fleet_status(state, current_platform(), now, scan=deep)
    rows = [p for p in st.profiles if not profiles or p.name in profiles]
    unknown = set(profiles or []) - {p.name for p in st.profiles}
    if unknown:
        fail(f"unknown profile(s): {', '.join(sorted(unknown))}")
    ctl = st.controller
    if output == "json":
        emit_json({
            "format_version": "1.0", "kind": "status", "generated_at": utc(now),
            "controller": {"pid": ctl.pid, "running": ctl.running, "epoch": ctl.epoch, "version": ctl.version,
                           "since": utc(ctl.since), "generation": ctl.generation,
                           "observed_generation": ctl.observed_generation, "converged": st.converged,
                           "store_degraded": ctl.store_degraded},
            "profiles": [{
                "name": p.name, "phase": p.phase, "sync": p.sync, "health": p.health, "pid": p.pid,
                "uptime_s": int(now - p.started_at) if p.started_at else None, "restarts": p.restarts,
                "last_exit": p.last_exit, "heartbeat_age_s": int(p.heartbeat_age) if p.heartbeat_age is not None else None,
                "active_agents": p.active_agents, "gateway_state": p.gateway_state, "spec_hash": p.spec_hash,
                "desired_spec_hash": p.desired_spec_hash, "desired": p.desired, "note": p.note,
                "hold": None if p.hold is None else {"by": p.hold.by, "user": p.hold.user, "since": utc(p.hold.since)},
                "action": {"kind": p.action.kind, "reason": p.action.reason, "not_before": utc(p.action.not_before)},
                **({"checks": _deep_checks(state, st, p.name)} if deep else {}),
            } for p in rows],
        })
    else:
        if ctl.running:
            typer.echo(f"controller: running (pid {ctl.pid}, epoch {ctl.epoch}) generation {ctl.generation}, "
                       f"observed {ctl.observed_generation}" + ("" if st.converged else " — converging"))
        else:
            typer.echo(f"controller: NOT RUNNING — {NO_CONTROLLER_HINT}")
        if ctl.store_degraded:
            typer.echo(f"store degraded: {ctl.store_degraded}")
        downs = [p.hold for p in st.held if p.hold.by == "down"]
        if downs:
            first = min(downs, key=lambda h: h.since or now)
            typer.echo(f"fleet: {hold_note(first, now, 'PROFILE...')} ({len(downs)} profile(s))")
        table = [("PROFILE", "PHASE", "SYNC", "PID", "UP", "RESTARTS", "LAST EXIT", "BEAT", "ACTIVE", "NOTE")]
        for p in rows:
            table.append((p.name, p.phase, p.sync, str(p.pid or "-"),
                          _fmt_age(now - p.started_at) if p.started_at else "-", str(p.restarts), p.last_exit or "-",
                          _fmt_age(p.heartbeat_age), "-" if p.active_agents is None else str(p.active_agents), p.note))
        for line in _columns(table, right={3, 5, 8}):
            typer.echo(line)
        if deep:
            for p in rows:
                typer.echo(f"\n{p.name}:")
                for check in _deep_checks(state, st, p.name):
                    typer.echo(f"  [{check['result']}] {check['probe']}: {check['detail']}")
    ok = ctl.running and st.converged and not st.held
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


def _columns(table: list[tuple[str, ...]], right: set[int] = frozenset()) -> list[str]:
    """Rows of a table, each column as wide as its widest cell, two spaces apart; the last one unpadded."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    out = []
    for row in table:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells + [row[-1]]).rstrip())
    return out


def _deep_checks(state, st, name: str) -> list[dict]:
    """Each probe behind a profile's state, so an operator can see why without reading code."""
    from fleet.controller.desired import DesiredSource
    from fleet.observe import hermes_files as hf
    from fleet.observe.native import find_native_service

    obs = st.observed.get(name)
    store = Store(state.db, readonly=True)
    try:
        _, specs = DesiredSource(store).current()
        last_events = store.events(profile=name, limit=1)
    finally:
        store.close()
    pspec = specs.get(name)
    row = next((p for p in st.profiles if p.name == name), None)
    checks: list[dict] = []

    def add(probe: str, ok: bool | None, detail: str) -> None:
        checks.append({"probe": probe, "result": {True: "PASS", False: "FAIL", None: "SKIP"}[ok], "detail": detail})

    rec, proc = obs.record, obs.process
    add("record present", rec is not None,
        f"{state.record(name)}" + (f" pid {rec.pid}" if rec else f" ({obs.record_problem or 'missing'})"))
    add("identity (pid + start time + user)", proc is not None,
        f"pid {proc.pid}, start {proc.start_ticks}, found via {proc.source}" if proc else f"verdict: {obs.record_verdict}")
    if proc:
        add("command line", True, " ".join(mask_argv(proc.cmdline))[:200])
    desired_hash = row.desired_spec_hash if row else None
    add("spec current", None if proc is None or proc.spec_hash is None else proc.spec_hash == desired_hash,
        f"running {proc.spec_hash if proc else '-'}, desired {desired_hash or '-'}")
    if pspec is not None and pspec.driver == "hermes":
        lock = os.path.join(pspec.hermes_home, hf.GATEWAY_LOCK)
        held = current_platform().lock_is_held(lock) if os.path.exists(lock) else False
        add("gateway.lock held by a live process", held, lock)
        if obs.status:
            age = time.time() - obs.status.updated_at if obs.status.updated_at else None
            add("gateway_state.json", obs.status.state in ("running", "draining", "starting"),
                f"state {obs.status.state}, active_agents {obs.status.active}, updated {_fmt_age(age)} ago")
        else:
            add("gateway_state.json", False, "missing or unreadable")
        overridden = _proxy_keys_in_dotenv(os.path.join(pspec.hermes_home, ".env"))
        add("proxy not overridden by the profile's .env", not overridden,
            "overridden there: " + ", ".join(overridden) if overridden else "no proxy keys in .env")
    if obs.heartbeat_at and proc:
        age = time.time() - obs.heartbeat_at
        limit = pspec.health.heartbeat_stale if pspec else 90.0
        add("heartbeat fresh", age <= limit, f"{_fmt_age(age)} old (limit {format_duration(limit)})")
    else:
        add("heartbeat fresh", None, "no heartbeat from this process")
    add("last lifecycle event", True if last_events else None,
        f"{utc(last_events[-1].at)} {last_events[-1].kind}: {last_events[-1].message}" if last_events else "none")
    native = find_native_service(name)
    add("no native service conflict", native is None, native or "none found")
    return checks


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


def _need_profiles(state, names: list[str]) -> Store:
    store = open_store(state, write=True)
    from fleet.controller.desired import DesiredSource
    desired, specs = DesiredSource(store).current()
    known = set(specs)
    unknown = [n for n in names if n not in known]
    if unknown:
        store.close()
        fail(f"unknown profile(s): {', '.join(unknown)}", hint="profiles: " + ", ".join(sorted(known)) if known
             else "apply a manifest first")
    return store


def _after_request(state, message: str) -> None:
    typer.echo(message)
    if running_controller_pid(state) is None:
        typer.echo(f"warning: no controller is running; the request waits durably. {NO_CONTROLLER_HINT}", err=True)
        raise typer.Exit(EXIT_FAILED)
    wake(state)


def restart(
    profiles: List[str] = typer.Argument(..., help="Profiles to restart."),
    force: bool = typer.Option(False, "--force", help="Kill at once instead of draining first."),
    state_dir: Optional[str] = StateDirOption,
    file: Path = FileOption,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the new process runs."),
    timeout: str = typer.Option("3m", "--timeout", help="How long --wait waits, e.g. 90s, 3m."),
) -> None:
    """Restart profiles: drain (wait for active agents to finish), planned stop, respawn.
    A drain that outlasts the profile's drain timeout ends in a kill. `--force` kills at once.
    Only the named profiles are touched."""
    state = state_for(state_dir, file)
    store = _need_profiles(state, profiles)
    try:
        ids = {p: store.add_request(p, "force_restart" if force else "restart") for p in profiles}
    finally:
        store.close()
    _after_request(state, "restart requested: " + ", ".join(f"{p} (#{i})" for p, i in ids.items()))
    if wait:
        _wait_requests(state, ids, parse_duration(timeout))


def _wait_requests(state, ids: dict[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = dict(ids)
    while pending and time.monotonic() < deadline:
        store = Store(state.db, readonly=True)
        try:
            for name, rid in list(pending.items()):
                req = store.request(rid)
                if req is None or req.state != "pending":
                    typer.echo(f"  {name}: restarted")
                    del pending[name]
        finally:
            store.close()
        time.sleep(0.1)
    if pending:
        typer.echo("still waiting for: " + ", ".join(pending) + " (see `hermes-fleet status`)", err=True)
        raise typer.Exit(EXIT_FAILED)


def _set_override(state, names: list[str], desired: str | None, by: str) -> None:
    store = _need_profiles(state, names)
    try:
        for name in names:
            fields = dict(override_desired=desired, override_by=f"{by}:{user_name()}" if desired else None,
                          override_at=time.time() if desired else None)
            if desired is None:
                fields.update(failed_reason=None, failed_spec_hash=None, failures=0, last_exit_class=None)
            store.update_history(name, **fields)
            store.journal("override", f"{name}: {desired or 'as in the manifest'} ({by})", profile=name)
    finally:
        store.close()


def stop(
    profiles: List[str] = typer.Argument(..., help="Profiles to stop."),
    state_dir: Optional[str] = StateDirOption,
    file: Path = FileOption,
) -> None:
    """Drain and stop profiles, and keep them stopped (across applies) until `start`."""
    state = state_for(state_dir, file)
    _set_override(state, profiles, "stopped", "stop")
    _after_request(state, "stopping: " + ", ".join(profiles))


def start(
    profiles: List[str] = typer.Argument(..., help="Profiles to start."),
    state_dir: Optional[str] = StateDirOption,
    file: Path = FileOption,
) -> None:
    """Undo `stop`, and retry a profile that failed for good (exit 78, startup failure)."""
    state = state_for(state_dir, file)
    _set_override(state, profiles, None, "start")
    _after_request(state, "starting: " + ", ".join(profiles))


def down(
    state_dir: Optional[str] = StateDirOption,
    file: Path = FileOption,
    timeout: str = typer.Option("5m", "--timeout", help="How long to wait for the drains."),
) -> None:
    """Drain every profile, then stop the controller. Nothing of the fleet keeps running.

    The fleet stays down, across controller restarts and reboots (a service's controller
    included), until `apply` brings it back, or `start P` brings back one profile."""
    state = _fleet_state(state_dir, file)
    running = running_controller_pid(state) is not None
    if not running:
        st = fleet_status(state, current_platform(), time.time())
        alive = [p for p in st.profiles if p.pid]
        if alive:
            fail("no controller is running to drain: " + ", ".join(f"{p.name} (pid {p.pid})" for p in alive),
                 EXIT_FAILED, hint="start one with `hermes-fleet controller run` and run `down` again")
    store = open_store(state, write=True)
    from fleet.controller.desired import DesiredSource
    from fleet.controller.record import DOWN
    try:
        _, specs = DesiredSource(store).current()
        now = time.time()
        with store.tx():
            for name in specs:
                if store.history(name).override_desired == "stopped":
                    continue  # already held by `stop` (which outlives `apply`) or by an earlier `down`
                store.update_history(name, override_desired="stopped", override_by=f"{DOWN}:{user_name()}",
                                     override_at=now)
            store.journal("down", f"{user_name()}: draining {len(specs)} profile(s), then stopping the controller; "
                                  "the fleet stays down until `apply` or `start`", data={"by": user_name()})
    finally:
        store.close()
    if not running:
        typer.echo("nothing runs; the fleet stays down until `apply` or `start`")
        return
    wake(state)
    deadline = time.monotonic() + parse_duration(timeout)
    while True:
        st = fleet_status(state, current_platform(), time.time())
        alive = [p for p in st.profiles if p.pid]
        if not alive:
            break
        if time.monotonic() > deadline:
            fail("timed out draining: " + ", ".join(f"{p.name} (pid {p.pid})" for p in alive), EXIT_FAILED)
        time.sleep(0.05)
    left = _fleet_leftovers(state, deadline)
    pid = stop_controller(state)
    if left:
        fail(f"all gateways stopped, but {len(left)} process(es) of the fleet still run: "
             + ", ".join(f"pid {i.pid} ({name}) `{' '.join(mask_argv(i.cmdline))[:60]}`" for i, name in left)
             + f"; controller {f'pid {pid} ' if pid else ''}stopped",
             EXIT_FAILED, hint=f"they carry the fleet's markers ({PROFILE_ENV}); check them and end them by hand")
    typer.echo(f"all profiles stopped; nothing of the fleet runs; controller {f'pid {pid} ' if pid else ''}stopped; "
               "the fleet stays down until `apply` or `start`")


def _fleet_leftovers(state, deadline: float) -> list:
    """Processes that carry this fleet's markers once every gateway is gone; the controller ends a
    dead gateway's leftovers when it reclaims it, so give it until the deadline."""
    from fleet.observe.leftovers import find_leftovers
    platform = current_platform()
    while True:
        left = [(f.info, f.profile) for f in find_leftovers(platform, str(state.root))]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def logs(
    profile: str = typer.Argument(..., help="Profile whose gateway output to show ('controller' for the controller)."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines."),
    lines: int = typer.Option(50, "-n", "--lines", help="How many lines from the end."),
    state_dir: Optional[str] = StateDirOption,
    file: Path = FileLongOption,
) -> None:
    """The gateway's stdout/stderr, as written to logs/<profile>.log by the gateway itself.

    With -f, keep printing what is appended, into the new file when a respawn rotates the log,
    until interrupted."""
    state = state_for(state_dir, file)
    path = state.controller_log if profile == "controller" else state.log(profile)
    if not path.exists():
        fail(f"no log for {profile!r} at {path}")
    try:
        _print_log(path, lines, follow)
    except KeyboardInterrupt:
        return


def _print_log(path: Path, lines: int, follow: bool) -> None:
    import codecs

    fh = open(path, "rb")
    try:
        start = max(0, os.fstat(fh.fileno()).st_size - 256 * 1024)
        fh.seek(start)
        data = fh.read()
        if follow:  # an unfinished last line is printed whole once it is finished
            data = data[:data.rfind(b"\n") + 1]
            fh.seek(start + len(data))
        for line in (data.decode("utf-8", "replace").splitlines()[-lines:] if lines > 0 else []):
            typer.echo(line)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while follow:
            chunk = fh.read(64 * 1024)
            if chunk:
                typer.echo(decoder.decode(chunk), nl=False)
                continue
            try:
                now = os.stat(path)
            except FileNotFoundError:  # renamed away, the next spawn has not created it yet
                now = None
            held = os.fstat(fh.fileno())
            if now is not None and (now.st_ino, now.st_dev) != (held.st_ino, held.st_dev):
                # rotated: the old file is read to its end above; the new one from its start
                fh.close()
                fh = open(path, "rb")
                decoder.reset()
                continue
            if held.st_size < fh.tell():  # truncated in place
                fh.seek(0)
            time.sleep(0.1)
    finally:
        fh.close()


def events(
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new events."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Only this profile's events."),
    output: str = OutputOption,
    limit: int = typer.Option(50, "-n", "--lines", help="How many of the latest events to print first."),
    state_dir: Optional[str] = StateDirOption,
    file: Path = FileLongOption,
) -> None:
    """The journal: every action the controller took and every exit it saw."""
    check_output(output)
    state = _fleet_state(state_dir, file)
    last = 0
    try:
        while True:
            store = Store(state.db, readonly=True)
            try:
                batch = store.events(after_id=last, profile=profile, limit=limit if last == 0 else 1000)
            finally:
                store.close()
            for e in batch:
                last = e.id
                if output == "json":
                    import json
                    typer.echo(json.dumps({"id": e.id, "at": utc(e.at), "epoch": e.epoch, "profile": e.profile,
                                           "kind": e.kind, "message": e.message, "data": e.data}))
                else:
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
                    typer.echo(f"{stamp} {e.profile or '-':<12} {e.kind:<18} {e.message}")
            if not follow:
                return
            time.sleep(0.5)
    except KeyboardInterrupt:
        return


def history(
    output: str = OutputOption,
    state_dir: Optional[str] = StateDirOption,
    file: Path = FileOption,
) -> None:
    """Applied revisions: which generation, from which commit, by whom, with what result."""
    check_output(output)
    state = _fleet_state(state_dir, file)
    store = Store(state.db, readonly=True)
    try:
        rows = store.revisions()
    finally:
        store.close()
    if output == "json":
        emit_json([{**r, "plan_summary": _summary(r["plan_summary"]), "started_at": utc(r["started_at"]),
                    "finished_at": utc(r["finished_at"])} for r in rows])
        return
    table = [("ID", "GEN", "APPLIED", "RESULT", "REVISION", "BY")]
    for r in rows:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started_at"]))
        table.append((str(r["id"]), str(r["generation"]), stamp, r["result"], _short_revision(r["revision"]),
                      r["applied_by"] or "-"))
    for line in _columns(table, right={0, 1}):
        typer.echo(line)


def _short_revision(revision: str) -> str:
    """Commit ids and digests cut to 12 hex digits, as `git log --oneline` does; a `+dirty` mark stays."""
    return re.sub(r"\b([0-9a-f]{12})[0-9a-f]{4,}\b", r"\1", revision)


def _summary(raw: str | None) -> dict | None:
    import json
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


controller_app = typer.Typer(help="Run or stop the controller itself.", no_args_is_help=True)


@controller_app.command("run")
def controller_run(
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="Apply this manifest before starting."),
    state_dir: Optional[str] = StateDirOption,
) -> None:
    """Run the controller in the foreground (what a service manager runs).

    Exit 0 on SIGTERM (gateways keep running), 2 on a bad manifest or state directory,
    3 when another controller holds the lock."""
    from fleet.cli.common import load_or_exit

    manifest = load_or_exit(file) if file is not None else None
    state = state_for(state_dir, file, manifest)
    if manifest is not None:
        from fleet.cli.gitinfo import revision_of
        from fleet.controller.record import record_manifest
        store = open_store(state, write=True)
        try:
            recorded = record_manifest(store, manifest, revision_of(str(file), manifest.digest), prune=True,
                                       source="controller run", lift_down=False)
        finally:
            store.close()
        if recorded.held_down:
            # The service log is where an operator looks when a rebooted host runs no gateway.
            typer.echo(f"hermes-fleet: {held_down_message(recorded.held_down, time.time())}", err=True)
    import sys
    # exec keeps the PID (systemd's MainPID) and sheds the CLI's imports from the resident process.
    os.execv(sys.executable, [sys.executable, "-m", "fleet.controller", "--state-dir", str(state.root)])


@controller_app.command("stop")
def controller_stop(state_dir: Optional[str] = StateDirOption, file: Path = FileOption) -> None:
    """Stop the controller. Gateways keep running; the next controller adopts them."""
    state = state_for(state_dir, file)
    try:
        pid = stop_controller(state)
    except RuntimeError as exc:
        fail(str(exc), EXIT_FAILED)
    if pid is None:
        typer.echo(f"no controller is running for {state.root}")
        raise typer.Exit(EXIT_FAILED)
    typer.echo(f"controller pid {pid} stopped; gateways left running")
