"""`hermes-fleet maintenance ...`: request restarts and updates that run only when a profile is idle.

Also the agent tool interface: `maintenance submit` takes one JSON object and answers one JSON
object (schemas/maintenance-request.schema.json, schemas/maintenance-response.schema.json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from fleet.cli.common import (
    EXIT_ERROR, EXIT_FAILED, EXIT_OK, check_output, emit_json, fail, state_for, utc,
)
from fleet.cli.console import Exit, echo
from fleet.cli.options import FileOption, OutputOption, StateDirOption
from fleet.cli.controller_client import NO_CONTROLLER_HINT, running_controller_pid
from fleet.controller.desired import DesiredSource
from fleet.platform.wake import send_wake
from fleet.maintenance import queue
from fleet.maintenance.model import ALL, MaintenanceRequest
from fleet.spec.durations import parse_duration
from fleet.store.db import Store, StoreError
from fleet.store.layout import StateDirError, ensure_state_dir

API_VERSION = "1.0"
ACTIONS = {"queue_restart": "restart", "queue_update": "update"}

maintenance_app = typer.Typer(help="Queue restarts and updates that run only once a profile is idle.",
                              no_args_is_help=True)


def _describe(req: MaintenanceRequest, position: int | None, controller_running: bool) -> dict:
    waiting_on = req.waiting_on
    if req.is_open and req.state != "draining" and not controller_running:
        waiting_on = "no controller is running; the request waits durably"
    return {
        "id": req.id, "action": req.action, "profile": req.profile, "state": req.state,
        "reasons": list(req.reasons), "requested_by": req.requested_by, "idle_seconds": req.idle_seconds,
        "now": req.now, "position": position, "waiting_on": waiting_on,
        "created_at": utc(req.created_at), "started_at": utc(req.started_at), "finished_at": utc(req.finished_at),
        "outcome": req.outcome,
        "update": None if req.action != "update" else {
            "started_at": utc(req.update_started), "finished_at": utc(req.update_finished),
            "exit_code": req.update_exit, "output_tail": req.update_output},
    }


def _positions(store: Store) -> dict[int, int]:
    return {r.id: i + 1 for i, r in enumerate(queue.open_requests(store))}


class ApiError(Exception):
    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def handle(state, payload: object, *, person_now: bool = False) -> dict:
    """One agent/tool request -> one answer. Never raises for bad input: errors carry a code.
    person_now: the CLI's --now (a person's decision); agents cannot skip the gates."""
    try:
        return _handle(state, payload, person_now)
    except ApiError as exc:
        return {"format_version": API_VERSION, "ok": False, "error": {"code": exc.code, "message": str(exc)}}
    except queue.QueueError as exc:
        return {"format_version": API_VERSION, "ok": False, "error": {"code": exc.code, "message": str(exc)}}
    except (StoreError, StateDirError, OSError) as exc:
        return {"format_version": API_VERSION, "ok": False, "error": {"code": "state_unavailable", "message": str(exc)}}


MAX_ID = 2**63 - 1


def _handle(state, payload: object, person_now: bool) -> dict:
    if not isinstance(payload, dict):
        raise ApiError("bad_request", "expected one JSON object")
    action = payload.get("action")
    allowed = {"action", "profile", "reason", "idle_seconds", "id", "requested_by", "now"}
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise ApiError("unknown_field", f"unknown field(s): {', '.join(unknown)}")
    if action not in ("queue_restart", "queue_update", "status", "cancel"):
        raise ApiError("bad_action", "action must be one of queue_restart, queue_update, status, cancel")
    if payload.get("now"):
        raise ApiError("now_not_allowed", "--now (skipping the idle gate) is for people at the CLI, not for agents")
    by = payload.get("requested_by")
    if by is not None and (not isinstance(by, str) or len(by) > 200):
        raise ApiError("bad_request", "'requested_by' must be a string of at most 200 characters")
    ensure_state_dir(state)
    store = Store(state.db)
    try:
        controller = running_controller_pid(state) is not None
        if action == "status":
            reqs = queue.recent(store)
            positions = _positions(store)
            return {"format_version": API_VERSION, "ok": True, "controller_running": controller,
                    "requests": [_describe(r, positions.get(r.id), controller) for r in reqs]}
        if action == "cancel":
            rid = payload.get("id")
            if not isinstance(rid, int) or isinstance(rid, bool) or not 0 < rid <= MAX_ID:
                raise ApiError("bad_request", "cancel needs a positive integer 'id'")
            req = queue.cancel(store, rid, by=payload.get("requested_by"))
            return {"format_version": API_VERSION, "ok": True, "controller_running": controller,
                    "request": _describe(req, None, controller)}
        reason = payload.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ApiError("missing_reason", "a non-empty 'reason' is required")
        idle = payload.get("idle_seconds")
        if idle is not None and (isinstance(idle, bool) or not isinstance(idle, (int, float)) or idle < 0 or idle > 7 * 86400):
            raise ApiError("bad_idle_seconds", "idle_seconds must be a number of seconds between 0 and 604800")
        profile = payload.get("profile")
        if profile is None and ACTIONS[action] == "update":
            profile = ALL
        if not isinstance(profile, str):
            raise ApiError("bad_request", "'profile' must be a profile name" + (" or '*'" if action == "queue_update" else ""))
        _, specs = DesiredSource(store).current()
        if profile != ALL and profile not in specs:
            raise ApiError("unknown_profile", f"no profile {profile!r} in the applied fleet"
                           + (f" (profiles: {', '.join(sorted(specs))})" if specs else "; apply a manifest first"))
        sub = queue.submit(store, profile=profile, action=ACTIONS[action], reason=reason.strip(),
                           requested_by=by, idle_seconds=idle, now_flag=person_now)
        if person_now:
            store.journal("maintenance_now", f"#{sub.request.id}: idle and window gates skipped (--now)",
                          profile=None if profile == ALL else profile)
        positions = _positions(store)
    finally:
        store.close()
    send_wake(state)
    return {"format_version": API_VERSION, "ok": True, "controller_running": controller, "merged": sub.merged,
            "request": _describe(sub.request, positions.get(sub.request.id), controller)}


def _print_answer(answer: dict, output: str) -> None:
    if output == "json":
        emit_json(answer)
        return
    if not answer["ok"]:
        echo(f"error ({answer['error']['code']}): {answer['error']['message']}", err=True)
        return
    req = answer["request"]
    verb = "merged into" if answer.get("merged") else "queued"
    echo(f"{verb} #{req['id']}: {req['action']} {req['profile']} — {req['state']}"
               + (f", waiting on: {req['waiting_on']}" if req.get("waiting_on") else ""))
    if not answer["controller_running"]:
        echo(f"note: no controller is running; the request waits durably. {NO_CONTROLLER_HINT}", err=True)


def _queue_cli(state, profiles: list[str], action: str, reason: str, idle_seconds: str | None, now: bool,
               output: str) -> None:
    check_output(output)
    idle = None
    if idle_seconds is not None:
        try:
            idle = parse_duration(idle_seconds if not idle_seconds.replace(".", "", 1).isdigit() else float(idle_seconds))
        except ValueError as exc:
            fail(f"--idle-seconds: {exc}")
    answers = []
    for profile in profiles:
        payload: dict[str, object] = {"action": "queue_" + action, "profile": profile, "reason": reason}
        if idle is not None:
            payload["idle_seconds"] = idle
        answer = handle(state, payload, person_now=now)
        answers.append(answer)
        _print_answer(answer, "text") if output == "text" else None
    if output == "json":
        emit_json(answers[0] if len(answers) == 1 else answers)
    if not all(a["ok"] for a in answers):
        raise Exit(EXIT_ERROR)


@maintenance_app.command("restart")
def restart_cmd(
    profiles: list[str] = typer.Argument(..., help="Profiles to restart once idle."),
    reason: str = typer.Option(..., "--reason", help="Why (shown to operators, kept in the journal)."),
    idle_seconds: str | None = typer.Option(None, "--idle-seconds", help="Idle time required (default: maintenance.idle)."),
    now: bool = typer.Option(False, "--now", help="Skip the idle and window gates (a person's decision; journalled)."),
    output: str = OutputOption, state_dir: str | None = StateDirOption, file: Path = FileOption,
) -> None:
    """Queue a restart that runs only after the profile has been idle long enough.
    A second request for the same profile merges into the first (same id)."""
    _queue_cli(state_for(state_dir, file), profiles, "restart", reason, idle_seconds, now, output)


@maintenance_app.command("update")
def update_cmd(
    profiles: list[str] = typer.Argument(None, help="Profiles to update (default: all)."),
    reason: str = typer.Option(..., "--reason"),
    idle_seconds: str | None = typer.Option(None, "--idle-seconds"),
    now: bool = typer.Option(False, "--now", help="Skip the idle and window gates."),
    output: str = OutputOption, state_dir: str | None = StateDirOption, file: Path = FileOption,
) -> None:
    """Queue an update: once the profiles are idle, run maintenance.update_command once, then
    restart each affected profile through the idle gate. A failed update leaves the gateways running."""
    _queue_cli(state_for(state_dir, file), profiles or [ALL], "update", reason, idle_seconds, now, output)


@maintenance_app.command("cancel")
def cancel_cmd(request_id: int = typer.Argument(..., help="Request id."), output: str = OutputOption,
               state_dir: str | None = StateDirOption, file: Path = FileOption) -> None:
    """Cancel a pending or waiting request. Once draining it can no longer be cancelled."""
    check_output(output)
    answer = handle(state_for(state_dir, file), {"action": "cancel", "id": request_id})
    if output == "json":
        emit_json(answer)
    elif answer["ok"]:
        echo(f"#{request_id} cancelled")
    else:
        echo(f"error ({answer['error']['code']}): {answer['error']['message']}", err=True)
    raise Exit(EXIT_OK if answer["ok"] else EXIT_FAILED)


@maintenance_app.command("status")
def status_cmd(output: str = OutputOption, all_: bool = typer.Option(False, "--all", help="Include finished requests."),
               state_dir: str | None = StateDirOption, file: Path = FileOption) -> None:
    """Each request, what it waits on ("2 active agents", "idle 4m of 20m", "window opens 02:00",
    "budget: executor in maintenance") and its outcome."""
    check_output(output)
    answer = handle(state_for(state_dir, file), {"action": "status"})
    if not answer["ok"]:
        _print_answer(answer, output)
        raise Exit(EXIT_ERROR)
    reqs = [r for r in answer["requests"] if all_ or r["state"] in ("pending", "waiting", "draining")]
    if output == "json":
        emit_json({**answer, "requests": reqs})
        return
    if not answer["controller_running"]:
        echo(f"controller: NOT RUNNING — requests wait durably. {NO_CONTROLLER_HINT}")
    if not reqs:
        echo("no open maintenance requests" + ("" if all_ else " (--all shows finished ones)"))
        return
    for r in reqs:
        echo(f"#{r['id']:<4} {r['action']:<8} {r['profile']:<12} {r['state']:<10} "
                   f"{(r['waiting_on'] or r['outcome'] or '')}")
        echo(f"      reasons: {'; '.join(r['reasons'])}  (by {r['requested_by']}, {r['created_at']})")


@maintenance_app.command("submit")
def submit_cmd(payload: str | None = typer.Option(None, "--json", help="The request; default: read from stdin."),
               state_dir: str | None = StateDirOption, file: Path = FileOption) -> None:
    """The agent tool interface: one JSON object in, one JSON object out.

    In:  {"action": "queue_restart", "profile": "advisor", "reason": "new tools installed", "idle_seconds": 1200}
         (also queue_update, status, cancel with "id").
    Out: {"format_version": "1.0", "ok": true, "request": {"id", "state", "position", "waiting_on", ...}}
         or {"ok": false, "error": {"code", "message"}}. Exit 0 when ok, 1 otherwise.
    """
    text = payload if payload is not None else sys.stdin.read()
    try:
        data = json.loads(text)
    except ValueError as exc:
        answer = {"format_version": API_VERSION, "ok": False, "error": {"code": "bad_json", "message": str(exc)}}
    else:
        try:
            state = state_for(state_dir, file)
        except Exit:
            raise
        answer = handle(state, data)
    echo(json.dumps(answer, sort_keys=True))
    raise Exit(EXIT_OK if answer["ok"] else EXIT_FAILED)
