"""`hermes-fleet takeover P...` and `release P...`: move a profile from Hermes' own service (a systemd unit, a
LaunchAgent, a scheduled task) under the fleet, and give it back. The CLI writes the request and waits; the
controller does the steps (fleet/controller/takeover_tick.py), so a command interrupted, or a controller killed,
loses nothing: the request finishes or rolls back."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from fleet.cli.common import (
    EXIT_ERROR, EXIT_FAILED, EXIT_OK, check_output, emit_json, fail, fleet_state, open_store, timeout_option, utc,
)
from fleet.cli.console import Exit, echo
from fleet.cli.options import FileOption, OutputOption, StateDirOption
from fleet.cli.controller_client import ensure_controller, running_controller_pid
from fleet.spec.model import DRIVER_HERMES, ProfileSpec
from fleet.store import takeovers as tk
from fleet.store.db import Store, who
from fleet.store.layout import StateDir

NO_CONTROLLER_GRACE = 10.0  # the controller gone this long while waiting: say so and stop waiting


def takeover(
    profiles: list[str] = typer.Argument(..., help="Profiles whose native unit the fleet takes over."),
    file: Path = FileOption,
    state_dir: str | None = StateDirOption,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until each take-over is done or rolled back."),
    timeout: str = typer.Option("10m", "--timeout", help="How long --wait waits, e.g. 90s, 10m."),
    output: str = OutputOption,
) -> None:
    """Move profiles from Hermes' own service (systemd unit, LaunchAgent, scheduled task) under the fleet.

    For each profile, the controller records the unit as it is, gates every way it could start again (a
    drop-in condition that survives `hermes update` and `gateway install --force`), drains its gateway through
    Hermes' drain request until no agent is active (no turn is cut off), stops it as a planned stop, checks the
    home's lock is free, then starts the fleet's gateway and verifies it (lock, gateway.pid, running).
    Any failure rolls back to the unit as it was, and says why (exit 1). `release P` gives it back."""
    _run(tk.TAKEOVER, profiles, file, state_dir, wait, timeout, output)


def release(
    profiles: list[str] = typer.Argument(..., help="Profiles to give back to their native unit."),
    file: Path = FileOption,
    state_dir: str | None = StateDirOption,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until each unit serves again."),
    timeout: str = typer.Option("10m", "--timeout", help="How long --wait waits, e.g. 90s, 10m."),
    output: str = OutputOption,
) -> None:
    """Give profiles back to their native unit: the reverse of `takeover`.

    The fleet's gateway drains and stops (a planned stop), the gate goes, the unit starts again (and is
    enabled again if it was) and is verified serving. The profile then stays held for its unit, across
    `apply` and controller restarts, until `hermes-fleet takeover P` takes it back."""
    _run(tk.RELEASE, profiles, file, state_dir, wait, timeout, output)


def _run(kind: str, profiles: list[str], file: Path, state_dir: str | None, wait: bool, timeout: str,
         output: str) -> None:
    check_output(output)
    wait_for = timeout_option(timeout)
    state = fleet_state(state_dir, file)
    rows = _submit(state, kind, list(dict.fromkeys(profiles)))
    try:
        pid, started = ensure_controller(state)
    except RuntimeError as exc:
        fail(f"{exc}; the request waits durably", EXIT_FAILED)
    if output == "text":
        for row in rows:
            echo(f"{kind} #{row.id} of {row.profile} requested; controller pid {pid} "
                       f"{'started' if started else 'notified'}")
    if not wait:
        if output == "json":
            emit_json({"format_version": "1.0", "kind": kind, "result": "accepted", "controller_pid": pid,
                       "requests": [describe(r) for r in rows]})
        raise Exit(EXIT_OK)
    final = wait_rows(state, [r.id for r in rows], wait_for, output == "text")
    code = EXIT_OK if final and all(r.state in tk.SUCCEEDED for r in final) else EXIT_FAILED
    if output == "json":
        emit_json({"format_version": "1.0", "kind": kind, "controller_pid": pid,
                   "result": "done" if code == EXIT_OK else "failed", "requests": [describe(r) for r in final]})
    raise Exit(code)


def _submit(state: StateDir, kind: str, names: list[str]) -> list[tk.Takeover]:
    """Every profile checked first, then one request each: nothing is asked for when any of them cannot be."""
    from fleet.controller.desired import DesiredSource
    from fleet.service.native import NativeIndex

    store = open_store(state, write=True)
    try:
        _, specs = DesiredSource(store).current()
        index = NativeIndex()
        problems = [p for p in (_problem(kind, n, specs.get(n), store, index) for n in names) if p]
        if problems:
            fail("; ".join(problems), EXIT_ERROR,
                 hint="" if specs else "apply a manifest first (`apply --take-over` records it and takes over)")
        by = who()
        try:
            return [tk.submit(store, profile=n, kind=kind, home=specs[n].hermes_home, requested_by=by,
                              lift_release=kind == tk.TAKEOVER) for n in names]
        except tk.TakeoverError as exc:
            fail(str(exc), EXIT_ERROR)
    finally:
        store.close()


def _problem(kind: str, name: str, spec: ProfileSpec | None, store: Store, index) -> str | None:
    if spec is None:
        return f"{name} is not in the applied fleet"
    if spec.driver != DRIVER_HERMES:
        return f"{name} does not use the hermes driver: Hermes installed no unit for it"
    busy = next((r for r in tk.open_takeovers(store) if r.profile == name), None)
    if busy is not None:
        return f"{name}: {busy.kind} #{busy.id} is under way ({busy.describe()})"
    history = store.history(name)
    released = history.override_verb == tk.RELEASE
    if kind == tk.RELEASE and released:
        return f"{name} is released already; `hermes-fleet takeover {name}` takes it back"
    if kind == tk.TAKEOVER and not released and history.desired_state(spec) != "running":
        return (f"{name} is held stopped ({history.override_verb or 'desired: stopped'}); "
                f"the fleet would not run it: `hermes-fleet start {name}` first")
    units = index.serving(spec.hermes_home)
    if not units:
        return f"{name}: no native unit (systemd unit, LaunchAgent, scheduled task) runs {spec.hermes_home}"
    if kind == tk.RELEASE and not index.gated(spec.hermes_home):
        return f"{name}: {units[0].name} was not taken over by the fleet; there is nothing to give back"
    if kind == tk.TAKEOVER and not index.supervising(spec.hermes_home):
        return f"{name} is taken over already: {', '.join(u.name for u in units)} gated for {spec.hermes_home}"
    return None


def wait_rows(state: StateDir, ids: list[int], timeout: float, text: bool) -> list[tk.Takeover]:
    """Follow the requests until each has finished (or the time is up, or no controller runs); print each
    step once. Returns the rows as last read."""
    deadline = time.monotonic() + timeout
    shown: dict[int, tuple[str, str | None]] = {}
    gone_since: float | None = None
    rows: list[tk.Takeover] = []
    while True:
        rows = _read(state, ids)
        if text:
            for row in rows:
                _show(row, shown)
        if all(not r.open for r in rows):
            return rows
        now = time.monotonic()
        if running_controller_pid(state) is None:
            gone_since = gone_since or now
            if now - gone_since >= NO_CONTROLLER_GRACE:
                _stop_waiting(rows, "no controller is running; the requests resume when one starts "
                                    "(`hermes-fleet apply`, `controller run`, or its service)", text)
                return rows
        else:
            gone_since = None
        if now >= deadline:
            _stop_waiting(rows, "timed out waiting; the controller goes on (`hermes-fleet status`)", text)
            return rows
        time.sleep(0.2)


def _read(state: StateDir, ids: list[int]) -> list[tk.Takeover]:
    store = Store(state.db, readonly=True)
    try:
        return [r for r in (tk.get(store, i) for i in ids) if r is not None]
    finally:
        store.close()


def _show(row: tk.Takeover, shown: dict[int, tuple[str, str | None]]) -> None:
    key = (row.state, row.detail)
    if shown.get(row.id) == key:
        return
    shown[row.id] = key
    if row.open:
        echo(f"  {row.profile}: {row.describe()}")
    elif row.state in tk.SUCCEEDED:
        echo(f"{row.profile}: {row.state}: {row.outcome}")
    else:
        echo(f"{row.profile}: {row.state.upper().replace('_', ' ')}: {row.outcome}", err=True)


def _stop_waiting(rows: list[tk.Takeover], why: str, text: bool) -> None:
    if text:
        pending = ", ".join(f"{r.profile} ({r.state})" for r in rows if r.open)
        echo(f"{why}: {pending}", err=True)


def describe(row: tk.Takeover) -> dict:
    return {"id": row.id, "profile": row.profile, "kind": row.kind, "home": row.home, "state": row.state,
            "units": [u.get("name") for u in row.units], "detail": row.detail, "outcome": row.outcome,
            "error": row.error, "requested_by": row.requested_by, "created_at": utc(row.created_at),
            "finished_at": utc(row.finished_at)}


def submit_for_apply(store: Store, specs: dict[str, ProfileSpec], names: list[str]) -> list[int]:
    """`apply --take-over`: a take-over of each named profile, in the transaction that records the manifest."""
    by = who()
    return [tk.submit(store, profile=n, kind=tk.TAKEOVER, home=specs[n].hermes_home, requested_by=by,
                      lift_release=True).id for n in names]


def report_after_apply(state: StateDir, ids: list[int], code: int, timeout: float, text: bool) -> int:
    """After `apply --take-over`'s wait: each take-over's outcome (waited for, within `timeout`: a fleet may
    look converged while a take-over still verifies, or rolls back), and exit 1 when one did not succeed."""
    rows = wait_rows(state, ids, timeout, False) if ids else []
    for row in rows if text else []:
        if row.open:
            echo(f"{row.profile}: take-over #{row.id} still under way: {row.describe()}", err=True)
        elif row.state in tk.SUCCEEDED:
            echo(f"{row.profile}: {row.outcome}")
        else:
            echo(f"{row.profile}: take-over {row.state.replace('_', ' ')}: {row.outcome}", err=True)
    return code if all(r.state in tk.SUCCEEDED for r in rows) else max(code, EXIT_FAILED)
