"""The controller's side of the maintenance queue: move requests through their states, cancel those whose
profile is gone, and run update commands (once per request). Idleness is tracked apart (fleet/controller/idle.py).

An update command runs in a thread of its own, which never writes the store: it hands its outcome to the
controller's pass, whose store connection keeps what it writes in memory while the store refuses writes (a full
disk, a read-only mount) and writes it once it can. A thread with a store of its own lost the outcome, died, and
left its request `draining` for ever."""

from __future__ import annotations

import collections
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fleet.execute.environment import child_environment
from fleet.maintenance import lifecycle, queue
from fleet.maintenance.model import ALL, OPEN_STATES, MaintenanceRequest
from fleet.observe.model import Observed, ProfileObservation
from fleet.plan.model import Action, Desired, Plan
from fleet.spec.markers import FLEET_ENV_PREFIX
from fleet.spec.model import ProfileSpec
from fleet.spec.secrets import mask_argv, mask_text, secret_values, secret_words
from fleet.store.db import Store
from fleet.store.layout import StateDir

OUTPUT_TAIL = 4000
UPDATE_TIMEOUT = 30 * 60.0


@dataclass(frozen=True)
class UpdateOutcome:
    """What an update thread hands to the pass: how its command ended."""
    request_id: int
    finished_at: float
    exit_code: int | None  # None: the update step itself failed (`error` says how)
    output_tail: str = ""
    error: str | None = None


class MaintenanceTick:
    def __init__(self, store_path: str, store: Store, epoch: int):
        self.store_path = store_path
        self.store = store
        self.epoch = epoch
        self.running_updates: dict[int, threading.Thread] = {}  # until the pass has recorded its outcome
        self._outcomes: collections.deque[UpdateOutcome] = collections.deque()  # appended by the threads

    def busy(self) -> bool:
        return bool(self._outcomes) or any(t.is_alive() for t in self.running_updates.values())

    def advance(self, desired: Desired, observed: Observed, current: Plan, now: float) -> None:
        recorded = self._record_outcomes()
        if not observed.maintenance:
            return
        profiles = _profile_facts(desired, observed, current)
        for req in observed.maintenance:
            if req.id in recorded:
                continue  # observed before its outcome was recorded: the next pass reads it as it is now
            step = lifecycle.advance(req, profiles, now, update_running=req.id in self.running_updates)
            self._perform(req, step, desired, now)

    def _record_outcomes(self) -> set[int]:
        recorded: set[int] = set()
        while self._outcomes:
            outcome = self._outcomes.popleft()
            self._record(outcome)
            self.running_updates.pop(outcome.request_id, None)
            recorded.add(outcome.request_id)
        return recorded

    def _record(self, o: UpdateOutcome) -> None:
        rid, tail = o.request_id, o.output_tail
        if o.exit_code is None:
            queue.transition(self.store, rid, "failed", expect=("draining", "waiting"), update_finished=o.finished_at,
                             outcome=f"the update step failed: {o.error}")
        elif o.exit_code == 0:
            # Back to waiting: each target now restarts through the normal graceful path and gates.
            queue.absorb_open_duplicates(self.store, rid, self.store.maintenance_request_profile(rid))
            queue.transition(self.store, rid, "waiting", expect=("draining",), update_finished=o.finished_at,
                             update_exit=0, update_output=tail)
            self.store.journal("maintenance_update_ok", f"#{rid} update command succeeded", epoch=self.epoch,
                               data={"output_tail": tail[-1000:]})
        else:
            queue.transition(self.store, rid, "failed", expect=("draining",), update_finished=o.finished_at,
                             update_exit=o.exit_code, update_output=tail,
                             outcome=f"update command exited {o.exit_code}; gateways left running. Output tail:\n"
                                     f"{tail[-600:]}")
            self.store.journal("maintenance_failed", f"#{rid} update command exited {o.exit_code}; gateways left "
                               "running", epoch=self.epoch, data={"output_tail": tail[-1000:]})

    def _perform(self, req: MaintenanceRequest, step: lifecycle.Transition, desired: Desired, now: float) -> None:
        if step.state in lifecycle.FINISHED:
            self._end(req, step.state, step.outcome)
        elif step.start_update:
            self._begin_update(req, step, desired, now)
        elif step.state == "draining":
            self._begin_drain(req)
        elif step.waiting_on is not None:
            queue.set_waiting_on(self.store, req.id, step.waiting_on)

    def _begin_update(self, req: MaintenanceRequest, step: lifecycle.Transition, desired: Desired, now: float) -> None:
        if queue.transition(self.store, req.id, "draining", expect=lifecycle.BEFORE_DRAINING, update_started=now):
            self._start_update(req, desired, step.targets)
        elif step.waiting_on is not None:  # a cancel moved it first; the text is stored only while it still waits
            queue.set_waiting_on(self.store, req.id, step.waiting_on)

    def _begin_drain(self, req: MaintenanceRequest) -> None:
        queue.transition(self.store, req.id, "draining", expect=lifecycle.BEFORE_DRAINING)
        self.store.journal("maintenance_draining", f"#{req.id} draining", epoch=self.epoch,
                           profile=_journal_profile(req))

    def _end(self, req: MaintenanceRequest, state: str, outcome: str | None) -> None:
        if queue.transition(self.store, req.id, state, expect=OPEN_STATES, outcome=outcome):
            self.store.journal(f"maintenance_{state}", f"#{req.id} {state}: {outcome}", epoch=self.epoch,
                               profile=_journal_profile(req))

    def _start_update(self, req: MaintenanceRequest, desired: Desired, targets: tuple[str, ...]) -> None:
        commands = _update_commands(desired, targets, StateDir(Path(self.store_path).parent))
        self.store.journal("maintenance_update", _update_announcement(req.id, commands), epoch=self.epoch)
        thread = threading.Thread(target=self._run_update, args=(req.id, commands), daemon=True,
                                  name=f"update-{req.id}")
        self.running_updates[req.id] = thread
        thread.start()

    def _run_update(self, request_id: int, commands: list[UpdateCommand]) -> None:
        try:
            outcome = _run_update_commands(request_id, commands)
        except Exception as exc:  # noqa: BLE001 - the request must never stay `draining` because this thread died
            outcome = UpdateOutcome(request_id, time.time(), None, error=f"{type(exc).__name__}: {exc}")
        self._outcomes.append(outcome)


def _run_update_commands(request_id: int, commands: list[UpdateCommand]) -> UpdateOutcome:
    output, code = "", 0
    for c in commands:
        try:
            done = subprocess.run(list(c.argv), stdin=subprocess.DEVNULL, capture_output=True, timeout=UPDATE_TIMEOUT,
                                  text=True, errors="replace", env=c.env, cwd=c.cwd)
            output += done.stdout + done.stderr
            code = done.returncode
        except (OSError, subprocess.TimeoutExpired) as exc:
            output += f"{exc}\n"
            code = 127 if isinstance(exc, OSError) else 124
        if code != 0:
            break
    # The command's output may echo its env: hide those secrets by value before anyone reads it.
    known = [v for c in commands for v in (*secret_values(c.env.items()), *secret_words(c.argv))]
    return UpdateOutcome(request_id, time.time(), code, mask_text(output, known=known)[-OUTPUT_TAIL:])


@dataclass(frozen=True)
class UpdateCommand:
    """A profile's update command as it is run: its arguments, environment and working directory."""
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None


def _profile_facts(desired: Desired, observed: Observed, current: Plan) -> dict[str, lifecycle.ProfileFacts]:
    planned = _planned_actions(current)
    return {p.name: _facts(p, observed.get(p.name), planned.get(p.name)) for p in desired.spec.profiles}


def _planned_actions(current: Plan) -> dict[str, Action]:
    """Each profile's first planned action; the record fixes say nothing about its process."""
    by_profile: dict[str, Action] = {}
    for a in current.actions:
        if a.kind not in ("reclaim", "adopt"):
            by_profile.setdefault(a.profile, a)
    return by_profile


def _facts(spec: ProfileSpec, obs: ProfileObservation, action: Action | None) -> lifecycle.ProfileFacts:
    return lifecycle.ProfileFacts(
        name=spec.name, suspended=spec.suspend, wanted=obs.history.desired_state(spec),
        process_started_at=obs.process.started_at if obs.process is not None else None,
        drain_reason=obs.history.drain_reason, planned_reason=action.reason if action is not None else None,
        wait_note=action.message.split(": ", 1)[-1] if action is not None and action.kind == "wait" else None)


def _update_commands(desired: Desired, targets: tuple[str, ...], state: StateDir) -> list[UpdateCommand]:
    """Each distinct update command once. It sees the profile's HERMES_HOME, but none of the markers that
    would make it look like the profile's gateway."""
    commands: list[UpdateCommand] = []
    for name in targets or desired.spec.names:
        spec = desired.spec.profile(name)
        if spec is None:  # targets are names from this same manifest
            continue
        argv = spec.maintenance.update_command
        if argv and all(argv != c.argv for c in commands):
            env = {k: v for k, v in child_environment(spec, state).items() if not k.startswith(FLEET_ENV_PREFIX)}
            commands.append(UpdateCommand(argv, env, spec.cwd if os.path.isdir(spec.cwd) else None))
    return commands


def _update_announcement(request_id: int, commands: list[UpdateCommand]) -> str:
    if not commands:
        return f"#{request_id}: no update_command; restart only"
    return f"#{request_id} running the update command: " + " | ".join(" ".join(mask_argv(c.argv)) for c in commands)


def _journal_profile(req: MaintenanceRequest) -> str | None:
    return None if req.profile == ALL else req.profile
