"""The controller's side of take-overs and releases of Hermes' own gateway units (fleet/store/takeovers.py, the
sequence in docs/service.md, "Taking over Hermes' own units").

Each pass moves every open row at most one step. A step looks at the host before it acts and is safe to repeat
(the gate, the drain request, the stop, the give-back), and the row's new state is written only after the step
acted: a controller killed anywhere resumes from the last state written and repeats at most one step. Every
failure of a take-over rolls it back to the unit as it was, and the row says why.

The unit's gateway is drained and stopped through Hermes' own markers and its service manager
(fleet/service/unit_control.py); the fleet's own gateway is spawned, drained and stopped by the planner and the
executor like any other (the planner reads the row: fleet/plan/planner.py, `_native_handover`). Two gateways
never run for one home: the fleet spawns only once the unit is gated and its gateway gone (the lock free), and a
unit is given the home back only once the fleet's gateway is gone (no record, no process, the lock free or held
by the unit's own gateway)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleet.controller.log import log
from fleet.execute.executor import write_drain_request, write_planned_stop
from fleet.observe import hermes_files as hf
from fleet.observe.model import Observed, ProfileObservation
from fleet.plan.model import Action, Desired
from fleet.plan.planner import FLEETS_OWN
from fleet.platform.base import Platform
from fleet.service.base import CommandRunner
from fleet.service.native import NativeIndex, NativeUnit, Places, same_home
from fleet.service.unit_control import (
    Running, UnitError, UnitFacts, UnitManager, command_runner, manager_for, serves_home,
)
from fleet.spec.model import DRIVER_HERMES, ProfileSpec
from fleet.store import takeovers as tk
from fleet.store.db import Store
from fleet.store.files import remove
from fleet.store.layout import StateDir
from fleet.store.takeovers import Takeover

POLL_SECONDS = 0.5  # while a row is open, the next pass comes at least this soon
STARTING_GRACE = 30.0  # a unit whose gateway has not taken the lock yet is waited for this long at `requested`
STOP_TIMEOUT = 90.0  # the unit's planned stop (systemd's TimeoutStopSec=60 of Hermes' unit, and a margin)
SPAWN_TIMEOUT_FLOOR = 5.0  # the fleet's gateway is verified running within its health.startup_grace, at least this
UNIT_START_TIMEOUT = 60.0  # the unit serves again (Hermes' own backoff after many starts adds 10-20 s)
GIVE_BACK_WAIT = 300.0  # beyond the drain timeout: a home held by a process that is neither ours nor the unit's
GIVE_BACK_ATTEMPTS = 5  # failed attempts of a give-back step before it is left to a person


@dataclass(frozen=True)
class Holder:
    """Who holds a home's gateway.lock: Hermes' gateway.pid (or the lock's own record), if it names a live
    process with the recorded start."""
    held: bool
    pid: int | None = None
    start: int | None = None


class TakeoverTick:
    def __init__(self, state: StateDir, store: Store, platform: Platform, epoch: int, *,
                 runner: CommandRunner | None = None, places: Places | None = None,
                 managers: Callable[[NativeUnit], UnitManager] | None = None):
        self.state = state
        self.store = store
        self.platform = platform
        self.epoch = epoch
        self.places = places
        self.moved = False  # a row changed state in this pass
        self.runner = runner or command_runner()
        self.managers = managers or (lambda unit: manager_for(unit, self.runner))

    def advance(self, desired: Desired, observed: Observed, attempted: tuple[Action, ...], now: float, *,
                rows: list[Takeover] | None = None) -> float | None:
        """One step of every open row (`rows`: those the caller has just read); when the controller should look
        again (None: nothing is under way)."""
        rows = tk.open_takeovers(self.store) if rows is None else rows
        touched = {a.profile for a in attempted}
        self.moved = False
        for row in rows:
            try:
                self._step(row, desired, observed.get(row.profile), row.profile in touched, now)
            except Exception as exc:  # noqa: BLE001 - one row's trouble never stops the loop or the other rows
                self._failed(row, exc, now)
        if not rows:
            return None
        return now if self.moved else now + POLL_SECONDS  # a step taken: the next one (and the plan) at once

    # -- the steps -------------------------------------------------------------------------------------
    def _step(self, row: Takeover, desired: Desired, obs: ProfileObservation, touched: bool, now: float) -> None:
        spec = desired.spec.profile(row.profile)
        if row.state == tk.REQUESTED:
            self._requested(row, spec, obs, now) if row.kind == tk.TAKEOVER else self._release_requested(row, now)
        elif row.state == tk.RECORDED:
            self._gate(row)
        elif row.state == tk.GATED:
            self._begin_drain(row, spec, obs, now)
        elif row.state == tk.DRAINING:
            self._draining(row, now)
        elif row.state == tk.STOPPING:
            self._stopping(row, spec, obs, now)
        elif row.state == tk.SPAWNING:
            self._spawning(row, obs, now)
        elif row.state == tk.GIVING_BACK:
            self._giving_back(row, obs, touched, now)
        elif row.state == tk.UNIT_STARTING:
            self._unit_starting(row, now)

    def _requested(self, row: Takeover, spec: ProfileSpec | None, obs: ProfileObservation, now: float) -> None:
        """Record what the unit is now; refuse (nothing changed) what cannot be taken over safely."""
        units = self._units(row.home)
        problem = _unfit(row, spec, obs) or (None if units else f"no native unit serves {row.home}")
        facts = [] if problem else [self._manager(u).record(u) for u in units]
        problem = problem or _not_serving(row.home, units, facts)
        serving = None
        if problem is None:
            holder = self._holder(row.home)
            serving, problem = _serving_gateway(holder, facts, obs)
            if self._gateway_starting(row, holder, facts, problem, now):
                return
        if problem is not None:
            self._finish(row, tk.ROLLED_BACK, f"nothing changed: {problem}")
            return
        self._move(row, tk.RECORDED, f"recorded {_summary(facts)}", units=[f.as_json() for f in facts],
                   gateway_pid=serving.pid if serving else None, gateway_start=serving.start if serving else None,
                   deadline=None, detail=None)

    def _gateway_starting(self, row: Takeover, holder: Holder, facts: list[UnitFacts], problem: str | None,
                          now: float) -> bool:
        """A unit runs a process that has not locked the home yet (its gateway is booting): wait for it a while
        rather than stop a gateway mid-start."""
        starting = [f for f in facts if f.active and f.tracks_pid and f.main_pid and f.main_pid != holder.pid]
        if not starting or (problem is None and holder.held) or (row.deadline is not None and now >= row.deadline):
            return False
        self._detail(row, f"{starting[0].name} runs pid {starting[0].main_pid}, which has not locked the home yet",
                     deadline=row.deadline or now + STARTING_GRACE)
        return True

    def _release_requested(self, row: Takeover, now: float) -> None:
        units = self._units(row.home)
        if not units:
            self._finish(row, tk.FAILED, f"nothing changed: no native unit serves {row.home}")
            return
        before = _facts_before_takeover(self.store, row.profile)
        facts = [before.get(u.name) or self._manager(u).record(u) for u in units]
        self._move(row, tk.GIVING_BACK, f"giving {row.profile} back to {', '.join(u.name for u in units)}",
                   units=[f.as_json() for f in facts], deadline=None, detail=None, failures=0)

    def _gate(self, row: Takeover) -> None:
        for unit in self._row_units(row):
            self._manager(unit).gate(unit, row.home, str(self.state.root))
        self._move(row, tk.GATED, f"gated {row.unit_names}: it does not start while the fleet owns {row.home}")

    def _begin_drain(self, row: Takeover, spec: ProfileSpec | None, obs: ProfileObservation, now: float) -> None:
        gateway = self._units_gateway(row, obs)
        if gateway is None:
            self._move(row, tk.STOPPING, "no gateway of the unit runs: nothing to drain", deadline=None)
            return
        timeout = spec.drain.timeout if spec is not None else 60.0
        write_drain_request(row.home, self.platform.drain_epoch(), now)
        self._move(row, tk.DRAINING, f"drain requested from pid {gateway.pid}; up to {timeout:g}s",
                   deadline=now + timeout, gateway_pid=gateway.pid, gateway_start=gateway.start)

    def _units_gateway(self, row: Takeover, obs: ProfileObservation) -> Holder | None:
        """The gateway of the unit that holds the home now: the one recorded, or one the unit started since
        (a restart just before the gate, a gateway that had not locked the home when the unit was recorded)."""
        holder = self._holder(row.home)
        if not holder.held or holder.pid is None:
            return None
        if holder.pid == row.gateway_pid:
            return holder
        proc = obs.process
        if proc is not None and proc.source in FLEETS_OWN and proc.pid == holder.pid:
            return None  # the fleet's own gateway: not the unit's to drain
        facts = _facts(row)
        mains = {self._manager(u).running(u).main_pid for u in self._row_units(row)}
        return holder if holder.pid in mains or not any(f.tracks_pid for f in facts.values()) else None

    def _draining(self, row: Takeover, now: float) -> None:
        pid = row.gateway_pid
        if pid is None or not self._alive(pid, row.gateway_start):
            self._move(row, tk.STOPPING, f"pid {pid} has exited", deadline=None)
            return
        st = hf.read_gateway_status(row.home)
        active = st.active if st is not None and st.pid == pid else None
        if st is not None and st.pid == pid and st.state in ("draining", "stopped") and not active:
            self._move(row, tk.STOPPING, f"pid {pid} drained (no active agent)", deadline=None)
            return
        if row.deadline is not None and now >= row.deadline:
            raise Rollback(f"the unit's gateway (pid {pid}) did not drain in time"
                           + (f": {active} agent(s) still active" if active else ""))
        self._detail(row, f"{active} active agent(s)" if active else "waiting for the gateway to acknowledge the drain")

    def _stopping(self, row: Takeover, spec: ProfileSpec | None, obs: ProfileObservation, now: float) -> None:
        units = self._row_units(row)
        if row.stop_sent is None:
            self._send_stop(row, units, now)
            return
        ended = [(u, self._manager(u).stopped(u)) for u in units]
        holder = self._holder(row.home)
        results = "; ".join(s.result for _, s in ended)
        fleets = obs.process is not None and obs.process.source in FLEETS_OWN and obs.process.pid == holder.pid
        if all(s.done for _, s in ended) and (not holder.held or fleets):
            for unit, s in ended:
                if not s.clean:
                    self._journal(row, "warning", f"{unit.name} ended {s.result}, not as a planned stop does")
            remove(os.path.join(row.home, hf.DRAIN_REQUEST))
            grace = spec.health.startup_grace if spec is not None else 0.0
            self._move(row, tk.SPAWNING, f"{row.unit_names} stopped ({results}); the fleet starts its gateway",
                       deadline=now + max(SPAWN_TIMEOUT_FLOOR, grace), detail=None)
            return
        locked = f"; pid {holder.pid} holds the lock" if holder.held else ""
        if now >= row.stop_sent + STOP_TIMEOUT:
            raise Rollback(f"{row.unit_names} did not stop within {STOP_TIMEOUT:g}s: {results}{locked}")
        self._detail(row, f"waiting for it to stop{locked}")

    def _send_stop(self, row: Takeover, units: list[NativeUnit], now: float) -> None:
        """Hermes' planned-stop marker for the unit's gateway, then the manager's stop: it exits 0, cleanly."""
        pid = row.gateway_pid
        if pid is not None and self._alive(pid, row.gateway_start):
            write_planned_stop(row.home, pid, row.gateway_start, now)
        for unit in units:
            self._manager(unit).stop(unit)
        self._detail(row, "planned stop sent", stop_sent=now)

    def _spawning(self, row: Takeover, obs: ProfileObservation, now: float) -> None:
        proc = obs.process
        if proc is not None and proc.source in FLEETS_OWN and self._verified(row.home, proc.pid, proc.start_ticks):
            self._finish(row, tk.DONE, f"taken over: the fleet's gateway pid {proc.pid} holds {row.home} and runs")
            return
        if row.deadline is not None and now >= row.deadline:
            h = obs.history
            why = h.action_error or (f"last exit: {h.last_exit_class} ({h.last_exit_code})" if h.last_exit_class else
                                     "it did not report running")
            raise Rollback(f"the fleet's gateway did not come up in time: {why}")
        self._detail(row, f"waiting for the fleet's gateway (pid {proc.pid})" if proc else "waiting for the spawn")

    def _giving_back(self, row: Takeover, obs: ProfileObservation, touched: bool, now: float) -> None:
        """Once the fleet's gateway is gone, the gate goes and the unit starts again (if it ran, or for a release)."""
        units = self._row_units(row)
        facts = _facts(row)
        wait = self._give_back_blocked(row, obs, touched, facts)
        if wait is not None:
            if row.deadline is None:
                self._detail(row, wait, deadline=now + GIVE_BACK_WAIT)
            elif now >= row.deadline:
                self._finish(row, tk.FAILED, f"{wait}; the unit was not started: look at the host, then "
                                             f"`hermes-fleet takeover {row.profile}` or `release {row.profile}`")
            else:
                self._detail(row, wait)
            return
        remove(os.path.join(row.home, hf.DRAIN_REQUEST))
        wanted = [u for u in units if _to_start(row, facts[u.name], facts)]
        serving = self._holder(row.home).held  # the unit's own gateway still serves (its drain was abandoned)
        started = []
        for unit in units:
            manager = self._manager(unit)
            manager.ungate(unit, row.home, facts[unit.name])
            if unit in wanted and not serving and manager.running(unit).active is not True:
                manager.start(unit, facts[unit.name])
                started.append(unit.name)
        if not wanted:
            self._end_give_back(row)
            return
        self._move(row, tk.UNIT_STARTING, f"gate removed; {', '.join(started) or 'nothing to'} start"
                   + ("ed" if started else ""), started_units=[u.name for u in wanted],
                   deadline=now + UNIT_START_TIMEOUT, detail=None, failures=0)

    def _give_back_blocked(self, row: Takeover, obs: ProfileObservation, touched: bool,
                           facts: dict[str, UnitFacts]) -> str | None:
        """Why the unit may not have the home yet: the fleet's gateway (or a process nobody accounts for)."""
        proc = obs.process
        if touched or (proc is not None and proc.source in FLEETS_OWN) or os.path.exists(self.state.record(row.profile)):
            return "waiting for the fleet's gateway to drain and stop"
        holder = self._holder(row.home)
        if not holder.held:
            return None
        mains = {f.main_pid for f in facts.values() if f.tracks_pid and f.main_pid}
        for unit in self._row_units(row):
            now_running = self._manager(unit).running(unit)
            if now_running.main_pid:
                mains.add(now_running.main_pid)
        if holder.pid in mains or (not any(f.tracks_pid for f in facts.values()) and holder.pid is not None):
            return None  # the unit's own gateway (its drain was abandoned): it keeps serving
        return f"pid {holder.pid} holds {row.home}/{hf.GATEWAY_LOCK}"

    def _unit_starting(self, row: Takeover, now: float) -> None:
        units = [u for u in self._row_units(row) if u.name in row.started_units]
        states = [(u, self._manager(u).running(u)) for u in units]
        holder = self._holder(row.home)
        if _unit_serves(holder, states, _facts(row)):
            self._end_give_back(row, f"; {', '.join(u.name for u in units)} serves {row.home} again "
                                     f"(pid {holder.pid})")
            return
        words = "; ".join(f"{u.name} {r.state}" for u, r in states)
        if row.deadline is not None and now >= row.deadline:
            hints = ", ".join(self._manager(u).hint(u) for u in units)
            self._finish(row, tk.FAILED, f"{row.error + '; ' if row.error else ''}{row.unit_names} did not come up "
                                         f"within {UNIT_START_TIMEOUT:g}s ({words}): nothing runs {row.profile} now; "
                                         f"see {hints}, then `hermes-fleet takeover {row.profile}` or start the unit")
            return
        self._detail(row, words + (f"; pid {holder.pid} holds the lock" if holder.held
                                   else "; its gateway has not locked the home yet"))

    def _end_give_back(self, row: Takeover, note: str = "") -> None:
        if row.kind != tk.RELEASE:
            self._finish(row, tk.ROLLED_BACK, f"rolled back{note}: {row.error or 'as asked'}")
            return
        with self.store.tx():  # the row and the hold together: a kill between them cannot leave one alone
            outcome = f"released to {row.unit_names}{note}"
            if tk.transition(self.store, row.id, tk.RELEASED, expect=(row.state,), detail=None, outcome=outcome):
                self.store.update_history(row.profile, override_desired="stopped",
                                          override_by=f"{tk.RELEASE}:{_user(row.requested_by)}",
                                          override_at=time.time())
                self._journal(row, "released", f"#{row.id} {outcome}")
        log(f"{row.profile}: release #{row.id}: {outcome}")

    # -- failures ----------------------------------------------------------------------------------------
    def _failed(self, row: Takeover, exc: Exception, now: float) -> None:
        error = str(exc) if isinstance(exc, (Rollback, UnitError)) else f"{type(exc).__name__}: {exc}"
        current = tk.get(self.store, row.id)
        if current is None or not current.open:
            return
        if current.state == tk.REQUESTED:
            final = tk.ROLLED_BACK if current.kind == tk.TAKEOVER else tk.FAILED
            self._finish(current, final, f"nothing changed: {error}")
        elif current.state in (tk.GIVING_BACK, tk.UNIT_STARTING):
            failures = current.failures + 1
            if failures >= GIVE_BACK_ATTEMPTS:
                self._finish(current, tk.FAILED, f"{current.error + '; ' if current.error else ''}giving back failed "
                                                 f"{failures} times: {error}; nothing may run {row.profile} now: "
                                                 f"look at {current.unit_names}, then `hermes-fleet takeover "
                                                 f"{row.profile}` or start the unit")
            else:
                self._detail(current, f"retrying after: {error}", failures=failures)
                log(f"{row.profile}: {current.kind} #{row.id} {current.state}: {error}")
        else:
            self._move(current, tk.GIVING_BACK, f"rolling back: {error}", error=error, deadline=None, detail=None,
                       failures=0)

    # -- helpers ---------------------------------------------------------------------------------------
    def _units(self, home: str) -> list[NativeUnit]:
        index = NativeIndex(self.places)
        return index.supervising(home) + index.gated(home)

    def _row_units(self, row: Takeover) -> list[NativeUnit]:
        """The units the row recorded, as they are on disk now (a unit file that went away is skipped)."""
        known = {u.name: u for u in NativeIndex(self.places).serving(row.home)}
        return [known[str(f.get("name"))] for f in row.units if str(f.get("name")) in known] or \
            [NativeUnit(str(f.get("manager")), str(f.get("name")), str(f.get("path")), (same_home(row.home),))
             for f in row.units]

    def _manager(self, unit: NativeUnit) -> UnitManager:
        return self.managers(unit)

    def _holder(self, home: str) -> Holder:
        held = self.platform.lock_is_held(os.path.join(home, hf.GATEWAY_LOCK))
        rec = hf.read_hermes_pid(home)
        if rec is None or not self._alive(rec.pid, rec.start_time):
            return Holder(held)
        return Holder(held, rec.pid, rec.start_time)

    def _alive(self, pid: int, start: int | None) -> bool:
        info = self.platform.process_info(pid)
        return info is not None and info.alive and (start is None or info.start_ticks is None or
                                                     info.start_ticks == start)

    def _verified(self, home: str, pid: int, start: int | None) -> bool:
        """The fleet's gateway holds the home: the lock, gateway.pid naming it, and it says it runs."""
        holder = self._holder(home)
        st = hf.read_gateway_status(home)
        return holder.held and holder.pid == pid and (start is None or holder.start in (None, start)) \
            and st is not None and st.pid == pid and st.state == "running"

    def _move(self, row: Takeover, state: str, message: str, **fields) -> None:
        if tk.transition(self.store, row.id, state, expect=(row.state,), **fields):
            self.moved = True
            self._journal(row, f"{row.kind}_{state}", f"#{row.id} {message}")

    def _finish(self, row: Takeover, state: str, outcome: str) -> None:
        if tk.transition(self.store, row.id, state, expect=(row.state,), outcome=outcome, detail=None):
            self.moved = True
            kind = "error" if state == tk.FAILED else f"{row.kind}_{state}"
            self._journal(row, kind, f"#{row.id} {row.kind} {state}: {outcome}")
            log(f"{row.profile}: {row.kind} #{row.id} {state}: {outcome}")

    def _detail(self, row: Takeover, detail: str, **fields) -> None:
        if detail != row.detail or any(getattr(row, k) != v for k, v in fields.items()):
            tk.set_detail(self.store, row.id, detail, **fields)

    def _journal(self, row: Takeover, kind: str, message: str) -> None:
        self.store.journal(kind, message, profile=row.profile, epoch=self.epoch,
                           data={"id": row.id, "kind": row.kind})


class Rollback(Exception):
    """A take-over step found it cannot go on: roll back, with this reason."""


def _user(requested_by: str | None) -> str:
    """The person in `who()`'s "user@host pid N"."""
    return (requested_by or "").split("@", 1)[0] or "unknown"


def _unfit(row: Takeover, spec: ProfileSpec | None, obs: ProfileObservation) -> str | None:
    """Why the fleet cannot run this profile after a take-over (nothing is changed then)."""
    if spec is None:
        return f"{row.profile} is not in the applied fleet.yaml"
    if spec.driver != DRIVER_HERMES:
        return f"{row.profile} does not use the hermes driver"
    if spec.suspend:
        return f"{row.profile} is suspended (suspend: true)"
    if obs.other_fleet:
        return obs.other_fleet
    if obs.history.desired_state(spec) != "running":
        return f"{row.profile} is held stopped ({obs.history.override_verb or 'desired: stopped'}); start it first"
    return None


def _not_serving(home: str, units: list[NativeUnit], facts: list[UnitFacts]) -> str | None:
    for unit, fact in zip(units, facts, strict=True):
        if not serves_home(fact, unit, home):
            return f"{unit.name} runs {', '.join(fact.homes)}, not {home}, as its service manager says"
    return None


def _unit_serves(holder: Holder, states: list[tuple[NativeUnit, Running]], facts: dict[str, UnitFacts]) -> bool:
    """The given-back unit serves again: its gateway holds the home's lock (a manager that knows the PID says
    it is its main process) and no manager says it is not active."""
    if not holder.held or holder.pid is None or any(r.active is False for _, r in states):
        return False
    trackers = any(facts[u.name].tracks_pid for u, _ in states if u.name in facts)
    return holder.pid in {r.main_pid for _, r in states if r.main_pid} or not trackers


def _serving_gateway(holder: Holder, facts: list[UnitFacts], obs: ProfileObservation) -> tuple[Holder | None, str | None]:
    """(the unit's gateway to drain and stop, or None; why the take-over cannot go on, or None)."""
    if not holder.held:
        return None, None
    if holder.pid is None:
        return None, "the home's gateway.lock is held, but gateway.pid names no live process"
    if any(f.tracks_pid and f.main_pid == holder.pid for f in facts):
        return holder, None
    proc = obs.process
    if proc is not None and proc.source in FLEETS_OWN and proc.pid == holder.pid:
        return None, None  # the fleet's own gateway already serves it: only the unit is gated and stopped
    if facts and not any(f.tracks_pid for f in facts):
        return holder, None  # a Windows task never knows its gateway's PID: the lock holder is its
    return None, (f"pid {holder.pid} holds the home's gateway.lock, but none of "
                  f"{', '.join(f.name for f in facts)} runs it (started by hand?): stop it first")


def _summary(facts: list[UnitFacts]) -> str:
    return "; ".join(f"{f.name}: {'enabled' if f.enabled else 'not enabled' if f.enabled is False else 'enabled ?'}, "
                     f"{f.state}" + (f", pid {f.main_pid}" if f.main_pid else "") for f in facts)


def _facts(row: Takeover) -> dict[str, UnitFacts]:
    return {str(u.get("name")): UnitFacts.from_json(u) for u in row.units}


def _to_start(row: Takeover, fact: UnitFacts, facts: dict[str, UnitFacts]) -> bool:
    """Which units the give-back starts: a rollback, those that ran; a release, those that ran before the
    take-over, else those enabled, else every one."""
    if row.kind == tk.TAKEOVER:
        return bool(fact.active)
    if any(f.active for f in facts.values()):
        return bool(fact.active)
    if any(f.enabled for f in facts.values()):
        return bool(fact.enabled)
    return True


def _facts_before_takeover(store: Store, profile: str) -> dict[str, UnitFacts]:
    """What the last successful take-over of this profile recorded of its units."""
    done = [r for r in tk.recent(store, profile, 50) if r.kind == tk.TAKEOVER and r.state == tk.DONE]
    return _facts(done[-1]) if done else {}
