"""Actions -> platform calls, record files and journal entries. The only code that touches processes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime

from fleet.execute.environment import child_environment
from fleet.execute.logs import rotate_if_large
from fleet.observe import hermes_files as hf
from fleet.observe import identity
from fleet.observe.leftovers import ProcessSnapshot, find_leftovers
from fleet.observe.model import LiveProcess, ProfileObservation, Verdict
from fleet.platform.base import Platform, SignalRefused, still_runs
from fleet.plan.exits import TERMINAL_CLASSES, count_exit, describe_exit
from fleet.plan.model import Action, Stage
from fleet.spec.model import DRIVER_HERMES, ProfileSpec
from fleet.store.db import Store
from fleet.store.files import UnsafeFile, append_line, remove, write_json_atomic
from fleet.store.layout import StateDir
from fleet.store.records import PidRecord, remove_record, spare_of, write_record


STRAY_LOOK_FOR = 1.0  # seconds one look at the process table serves the stray searches of later spawns
LEFTOVER_GRACE = 1.0  # a dead gateway's leftovers get this long after the stop request, then the kill
LEFTOVER_KILL_WAIT = 2.0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def write_drain_request(home: str, epoch: str, now: float) -> None:
    """Hermes' external drain request: the gateway refuses new turns, finishes those in flight, and says so
    in gateway_state.json (`draining`, `active_agents`)."""
    write_json_atomic(os.path.join(home, hf.DRAIN_REQUEST), {
        "action": "drain", "requested_at": iso(now), "principal": "hermes-fleet", "epoch": epoch,
        "suppress_notification": False}, durable=False)


def write_planned_stop(home: str, pid: int, start_ticks: int | None, now: float) -> None:
    """Hermes' planned-stop marker for exactly this process: the stop that follows exits 0 (a clean stop),
    not 1 (an unexpected one)."""
    write_json_atomic(os.path.join(home, hf.PLANNED_STOP), {
        "target_pid": pid, "target_start_time": start_ticks, "stopper_pid": os.getpid(),
        "written_at": iso(now)}, durable=False)


class Executor:
    def __init__(self, state: StateDir, store: Store, platform: Platform, *, epoch: int, spec_of, clock=time.time):
        self.state = state
        self.store = store
        self.platform = platform
        self.epoch = epoch
        self.spec_of = spec_of  # name -> ProfileSpec | None (desired, or last applied for removed profiles)
        self.clock = clock
        self._ended: set[str] = set()  # profiles whose dead gateway's leftovers were ended since their last spawn
        # (pid, start ticks) of the process this controller spawned or adopted, per profile, and the other way round
        # (the leftover look skips the other profiles' gateways: processes, not leftovers; one that has ended since
        # is in no process table, and its pid, reused, comes with another start)
        self._known: dict[str, tuple[int, int | None]] = {}
        self._owners: dict[tuple[int, int | None], str] = {}
        self._table: tuple[float, int, ProcessSnapshot] | None = None  # (when, in which pass, the process table)
        self._pass = 0  # counts passes (begin_pass); 0: called outside a pass

    def execute(self, action: Action, obs: ProfileObservation,
                superseded: Callable[[], bool] = lambda: False) -> bool:
        """Perform one action; False when it started nothing because `superseded()` says the desired state
        it was planned from changed meanwhile (the pass then plans again)."""
        handler = getattr(self, f"_{action.kind}")
        record = action.record
        if action.kind == "reclaim" and action.reason in ("pid_dead", "pid_reused") and record is not None \
                and self._known.get(action.profile) == (record.pid, record.start_ticks):
            # Like KillMode=control-group: what the gateway left is ended before a successor can start
            # (outside the transaction: this may wait for processes). Only for a record this controller wrote:
            # a forged or lost one says nothing true about which processes came after the gateway, so the
            # spawn's sweep (after a scan that has found any live gateway) deals with them instead.
            self._end_leftovers(action.profile, record, obs)
            self._ended.add(action.profile)
        elif action.kind == "spawn" and action.profile not in self._ended:
            # The dead gateway may be unknown to us (its record lost or forged, a previous controller's
            # child): whatever still carries this profile's markers is ended before the new one starts.
            self._end_strays(action.profile, obs)
        if action.kind == "spawn" and superseded():
            # Ending leftovers can hold a pass for seconds: a gateway started now from an older spec, or
            # against a `stop` given meanwhile, would only be replaced or stopped on the next pass.
            return False
        try:
            with self.store.tx():  # one commit per action: its history, journal and request updates together
                handler(action, obs)
        except BaseException:
            self._ended.discard(action.profile)  # what a failed action left behind is unknown
            raise
        if action.kind == "spawn":
            self._ended.discard(action.profile)
        return True

    def saw_its_gateway_end(self, name: str) -> bool:
        """True once a reclaim removed a record this controller wrote (its own child or adoptee ended, and
        what it left was ended too), until the next spawn: a respawn then needs no look at the host first."""
        return name in self._ended

    def journal(self, kind: str, message: str, profile: str | None = None, **data) -> None:
        self.store.journal(kind, message, profile=profile, epoch=self.epoch, data=data or None)

    # -- records only ---------------------------------------------------------------------------
    def _reclaim(self, action: Action, obs: ProfileObservation) -> None:
        name, now, record, count = action.profile, self.clock(), action.record, action.exit_count
        if record is not None and count is not None:
            _, code = self.platform.reap(record.pid)
            ran = now - record.started_at
            outcome = count_exit(code, obs.status.state if obs.status else None, planned=count.planned,
                                 failures=count.failures, ran=ran, reset_after=count.reset_after)
            fields = dict(last_exit_code=code, last_exit_at=now, last_exit_class=outcome.exit_class,
                          failures=outcome.failures, idle_since=None)
            if outcome.exit_class in TERMINAL_CLASSES:
                reason = (obs.status.exit_reason if obs.status and obs.status.exit_reason else
                          "exit 78 (fatal configuration)" if outcome.exit_class == "fatal_config" else "startup_failed")
                fields.update(failed_reason=reason, failed_spec_hash=record.spec_hash)
            self.store.update_history(name, **fields)
            self.journal("exited", f"pid {record.pid} exited {describe_exit(code, outcome.exit_class)} after "
                         f"{ran:.1f}s", name, pid=record.pid, code=code, exit_class=outcome.exit_class)
        else:
            self.journal("reclaimed", f"record removed: {action.message}", name, reason=action.reason)
        remove_record(self.state.record(name))

    def _adopt(self, action: Action, obs: ProfileObservation) -> None:
        proc = action.process()
        record = PidRecord(profile=action.profile, pid=proc.pid, start_ticks=proc.start_ticks,
                           create_time=proc.create_time, spec_hash=proc.spec_hash, started_at=proc.started_at,
                           controller_pid=os.getpid(), epoch=self.epoch, adopted=True)
        write_record(self.state.record(action.profile), record)
        self._remember(action.profile, (proc.pid, proc.start_ticks))
        if obs.history.last_start is None:
            self.store.update_history(action.profile, last_start=proc.started_at)
        line = json.dumps({"at": iso(self.clock()), "event": "adopt", "pid": proc.pid, "reason": action.reason,
                           "source": proc.source, "epoch": self.epoch, "spec_hash": proc.spec_hash}, sort_keys=True)
        try:
            append_line(self.state.adopt_log(action.profile), line)
        except OSError as exc:  # e.g. a symlink planted there: refuse to write through it, still adopt
            self.journal("warning", f"{self.state.adopt_log(action.profile)} not written: {exc.strerror or exc}",
                         action.profile)
        self.journal("adopted", f"pid {proc.pid} adopted ({action.reason}); not restarted", action.profile,
                     pid=proc.pid, reason=action.reason)

    def _update(self, action: Action, obs: ProfileObservation) -> None:
        name = action.profile
        if action.reason == "drain_complete":
            self._clear_drain(name)
            self.journal("drained", "previous process gone; drain finished", name)
        elif action.reason in ("removed_from_manifest", "prune_disabled"):
            record = str(self.state.record(name))
            for path in [*self._drain_files(name), record, spare_of(record)]:
                try:
                    remove(path)
                except UnsafeFile as exc:
                    # Not a file this fleet wrote (a directory in its place): left alone, and it must not
                    # keep a profile the manifest dropped from being forgotten.
                    self.journal("warning", f"{exc}; {name} is forgotten all the same", name)
            self.store.forget(name)
            what = "removed" if action.reason == "removed_from_manifest" else "left running unmanaged (prune: false)"
            self.journal("pruned", f"{name} {what}", name)
        else:
            self.journal("updated", action.message, name, reason=action.reason)

    def _drain_files(self, name: str) -> list[str]:
        spec = self.spec_of(name)
        hermes = [os.path.join(spec.hermes_home, hf.DRAIN_REQUEST)] if spec and spec.driver == DRIVER_HERMES else []
        return [*hermes, str(self.state.stop_marker(name))]

    def _clear_drain(self, name: str) -> None:
        for path in self._drain_files(name):
            remove(path)
        self.store.update_history(name, drain_intent=None, drain_reason=None, drain_started=None,
                                  drain_deadline=None, drain_signalled=None, drain_pid=None)

    # -- processes ------------------------------------------------------------------------------
    def _spawn(self, action: Action, obs: ProfileObservation) -> None:
        name, now = action.profile, self.clock()
        spec: ProfileSpec = self.spec_of(name)
        h = obs.history
        starts = (h.recent_starts + (now,))[-max(spec.restart.start_limit_burst, 1):]
        try:
            argv = self._prepare_spawn(name, spec, now)
            pid = self.platform.spawn_detached(argv, child_environment(spec, self.state), spec.cwd,
                                               str(self.state.log(name)))
        except Exception as exc:  # noqa: BLE001 - whatever stops a start is this profile's failure, never the loop's
            self._spawn_failed(name, spec, obs, now, starts, _spawn_error(exc))
            return
        info = self.platform.process_info(pid)
        record = PidRecord(profile=name, pid=pid, start_ticks=info.start_ticks if info else None,
                           create_time=info.create_time if info else now, spec_hash=spec.spec_hash,
                           started_at=now, controller_pid=os.getpid(), epoch=self.epoch,
                           caveat=self.platform.spawn_caveat(pid))
        self._remember(name, (pid, record.start_ticks))
        write_record(self.state.record(name), record)
        self._spawned(action, spec, obs, now, starts, pid)

    def _spawn_failed(self, name: str, spec: ProfileSpec, obs: ProfileObservation, now: float,
                      starts: tuple[float, ...], error: str) -> None:
        # Counted as an attempt (start limit) and a failure (backoff), but not as a start: a sibling's
        # stagger slot is only taken by a process that runs.
        h = obs.history
        self.store.update_history(name, last_exit_code=None, last_exit_at=now, last_exit_class="crash",
                                  failures=h.failures + 1, recent_starts=starts, action_error=error[:500],
                                  action_error_kind="spawn", action_error_at=now,
                                  action_errors=(h.action_errors if h.action_error_kind == "spawn" else 0) + 1)
        self.journal("spawn_failed", f"could not start {spec.command[0] if spec.command else name}: {error}",
                     name, error=error[:500])

    def _spawned(self, action: Action, spec: ProfileSpec, obs: ProfileObservation, now: float,
                 starts: tuple[float, ...], pid: int) -> None:
        name, h = action.profile, obs.history
        fields = dict(last_start=now, restarts=h.restarts + (1 if action.restart else 0),
                      idle_since=None, drain_intent=None, drain_reason=None, drain_started=None,
                      drain_deadline=None, drain_signalled=None, drain_pid=None, recent_starts=starts,
                      action_error=None, action_error_kind=None, action_error_at=None, action_errors=0)
        if action.clears_failure:
            fields.update(failed_reason=None, failed_spec_hash=None)
        self.store.update_history(name, **fields)
        for req in self.store.pending_requests():
            if req.profile == name and req.created_at <= now:
                self.store.finish_request(req.id, "done", f"spawned pid {pid}")
        self.journal("spawned", f"pid {pid} started ({action.reason})", name, pid=pid, reason=action.reason,
                     spec_hash=spec.spec_hash)

    def _prepare_spawn(self, name: str, spec: ProfileSpec, now: float) -> list[str]:
        if spec.driver == DRIVER_HERMES:
            os.makedirs(spec.hermes_home, mode=0o700, exist_ok=True)
        # A leftover drain request would boot the new gateway straight into a drain (same boot epoch).
        self._clear_drain(name)
        remove(self.state.state_file(name))
        rotate_if_large(str(self.state.log(name)))
        argv = list(spec.command)
        return self.platform.scoped_command(f"hermes-fleet-{name}-{int(now * 1000)}", argv,
                                            stop_timeout=spec.drain.timeout + 30)

    def _replace(self, action: Action, obs: ProfileObservation) -> None:
        self._drain(action, obs)

    def _drain(self, action: Action, obs: ProfileObservation) -> None:
        name, now, proc = action.profile, self.clock(), action.process()
        spec = self.spec_of(name)
        hermes = spec is not None and spec.driver == DRIVER_HERMES
        if action.drain is not None:
            drain = action.drain
            self.store.update_history(name, drain_intent=drain.intent, drain_reason=drain.reason, drain_started=now,
                                      drain_deadline=now + drain.timeout, drain_signalled=None, drain_pid=proc.pid)
            if hermes:
                write_drain_request(spec.hermes_home, self.platform.drain_epoch(), now)
                self.journal("drain_started", f"drain requested ({action.reason}); up to {drain.timeout:g}s", name,
                             pid=proc.pid, intent=drain.intent)
            else:
                self.journal("drain_started", f"stopping ({action.reason}); up to {drain.timeout:g}s", name,
                             pid=proc.pid, intent=drain.intent)
                self._planned_stop(name, spec, proc, drain.reason, now + drain.timeout)
        elif action.stage == Stage.STOP:
            self._planned_stop(name, spec, proc, obs.history.drain_reason, obs.history.drain_deadline)

    def _planned_stop(self, name: str, spec: ProfileSpec | None, proc: LiveProcess, reason: str | None,
                      deadline: float | None) -> None:
        why = self._not_ours(name, proc)
        if why:
            self.journal("refused", f"pid {proc.pid} no longer passes identity ({why}); not signalled", name)
            return
        now = self.clock()
        hermes_home = spec.hermes_home if spec is not None and spec.driver == DRIVER_HERMES else None
        if hermes_home is not None:
            write_planned_stop(hermes_home, proc.pid, proc.start_ticks, now)
        write_json_atomic(self.state.stop_marker(name), {"requested_at": iso(now), "reason": reason or "stop",
                                                          "deadline": iso(deadline or now), "pid": proc.pid},
                          durable=False)
        # A Hermes gateway takes the interrupt as planned whatever its markers say. The usual stop request is
        # planned only while the marker is there, and Hermes' own watcher may consume the marker (and begin the
        # stop) first: the request that follows then counts as unexpected, and the gateway exits 1.
        self.platform.request_stop(proc.pid, interrupt=hermes_home is not None)
        self.store.update_history(name, drain_signalled=now)
        self.journal("stop_sent", f"planned stop sent to pid {proc.pid}", name, pid=proc.pid)

    def _kill(self, action: Action, obs: ProfileObservation) -> None:
        name, proc = action.profile, action.process()
        why = self._not_ours(name, proc)
        if why:
            self.journal("refused", f"pid {proc.pid} no longer passes identity ({why}); not killed", name)
            return
        now = self.clock()
        if action.drain is not None:  # the kill is the stop
            drain = action.drain
            self.store.update_history(name, drain_intent=drain.intent, drain_reason=drain.reason, drain_started=now,
                                      drain_deadline=now + drain.timeout, drain_signalled=now, drain_pid=proc.pid)
        elif action.kill_grace is not None:
            self.store.update_history(name, drain_deadline=now + action.kill_grace)
        self.platform.kill_tree(proc.pid, identity.markers(name, str(self.state.root)))
        self.journal("killed", f"pid {proc.pid} and its tree killed ({action.reason}: {action.message})", name,
                     pid=proc.pid, reason=action.reason)

    def _not_ours(self, name: str, proc) -> str | None:
        """The identity rule again right before a signal: the PID may have been reused since we looked."""
        check = identity.check(self.platform, proc.pid, proc.start_ticks, proc.create_time, name,
                               str(self.state.root), self.spec_of(name))
        if check.verdict == Verdict.ALIVE:
            return None
        return (check.proof.why_not if check.proof is not None else "") or check.verdict

    def _end_leftovers(self, name: str, record: PidRecord, obs: ProfileObservation) -> None:
        """End the processes that positively carry this fleet's and this profile's markers (children,
        setsid children, double-forked daemons); report, never signal, unmarked members of the dead
        gateway's session or process group."""
        gateway_pid = record.pid
        found = find_leftovers(self.platform, str(self.state.root), name,
                               group_of=gateway_pid if gateway_pid > 1 else None,
                               exclude=self._live_gateways(name, obs), snapshot=self._processes(), born_after=record,
                               gateways=self._owners)
        spec = self.spec_of(name)
        marked = [f.info for f in found if f.profile == name
                  and self.platform.child_environ(f.info.pid) is None  # a gateway we spawned is no leftover
                  and not identity.may_be_the_gateway(spec, f.info)]
        unmarked = [f.info for f in found if f.profile != name]
        if unmarked:
            self.journal("warning", f"pid(s) {', '.join(str(i.pid) for i in unmarked[:20])} in the session of exited pid "
                         f"{gateway_pid} carry no markers of {name}; left running", name,
                         pids=[i.pid for i in unmarked])
        self._end(name, marked, f"left by pid {gateway_pid}")

    def begin_pass(self) -> None:
        """A pass begins: its observation saw every death it reclaims, so one look at the process table taken
        from now on serves all of them and its spawns (a `down` of 100 gateways looked 100 times)."""
        self._pass += 1

    def _processes(self, *, stale_ok: float = 0.0) -> ProcessSnapshot:
        """The process table, read once per pass (fresh at each call outside one). A dead gateway's leftovers
        need a look taken after its death was seen (this pass's); strays of a profile with no recent death may
        use a look up to `stale_ok` seconds old (one look serves a cold start's many staggered spawns). A
        process a look misses is found by a later one; whatever is signalled is checked again first."""
        now = time.monotonic()
        if self._table is not None:
            taken, in_pass, table = self._table
            if (self._pass and in_pass == self._pass) or now - taken <= stale_ok:
                return table
        table = ProcessSnapshot(self.platform)
        self._table = (now, self._pass, table)
        return table

    def _end_strays(self, name: str, obs: ProfileObservation) -> None:
        exclude = self._live_gateways(name, obs)
        spec = self.spec_of(name)
        # An older look serves only a profile that never ran: one that did may have died unseen (its record lost
        # or forged), and what it left may be younger than that look.
        stale_ok = STRAY_LOOK_FOR if obs.history.last_start is None else 0.0
        strays = [f.info for f in find_leftovers(self.platform, str(self.state.root), name,
                                                 snapshot=self._processes(stale_ok=stale_ok),
                                                 gateways=self._owners)
                  if f.profile == name and f.info.pid not in exclude
                  and self.platform.child_environ(f.info.pid) is None and not identity.may_be_the_gateway(spec, f.info)]
        self._end(name, strays, "left by an earlier gateway")

    def _end(self, name: str, marked: list, origin: str) -> None:
        if not marked:
            return
        for info in marked:
            self._signal_leftover(name, info, self.platform.request_stop)
        survivors = self._wait_gone(marked, LEFTOVER_GRACE)
        for info in survivors:
            self._signal_leftover(name, info, self.platform.kill_process)
        remaining = self._wait_gone(survivors, LEFTOVER_KILL_WAIT)
        pids = [i.pid for i in marked]
        self.journal("leftovers_ended", f"{len(marked) - len(remaining)} process(es) {origin} ended "
                     f"({len(survivors)} had to be killed): {', '.join(map(str, pids))}", name, pids=pids,
                     killed=[i.pid for i in survivors])
        if remaining:
            self.journal("warning", f"pid(s) {', '.join(str(i.pid) for i in remaining)} {origin} "
                         f"survived being killed", name, pids=[i.pid for i in remaining])

    def _wait_gone(self, infos: list, timeout: float) -> list:
        deadline = time.monotonic() + timeout
        alive = [i for i in infos if still_runs(self.platform, i)]
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            alive = [i for i in alive if still_runs(self.platform, i)]
        return alive

    def _remember(self, name: str, process: tuple[int, int | None]) -> None:
        before = self._known.get(name)
        if before is not None and self._owners.get(before) == name:
            del self._owners[before]
        self._known[name] = process
        self._owners[process] = name

    def _live_gateways(self, name: str, obs: ProfileObservation) -> frozenset[int]:
        """Marked processes that may be the profile's gateway itself, not a leftover, should the record be
        wrong: the one observed and the one Hermes' pid file names while its lock is held."""
        out = set()
        if obs.process is not None:
            out.add(obs.process.pid)
        spec = self.spec_of(name)
        if spec is not None and spec.driver == DRIVER_HERMES:
            rec = hf.read_hermes_pid(spec.hermes_home)
            if rec is not None and self.platform.lock_is_held(os.path.join(spec.hermes_home, hf.GATEWAY_LOCK)):
                out.add(rec.pid)
        return frozenset(out)

    def _signal_leftover(self, name: str, info, send) -> None:
        """Only a process that still passes identity by this profile's markers (same start, our user, not
        protected) is signalled; the markers were read moments ago, the PID may have been reused since."""
        check = identity.check(self.platform, info.pid, info.start_ticks, info.create_time, name,
                               str(self.state.root), self.spec_of(name))
        if check.verdict != Verdict.ALIVE or check.proof is None or check.proof.how != identity.PROOF_MARKER:
            return
        try:
            send(info.pid)
        except SignalRefused:
            pass


def _spawn_error(exc: Exception) -> str:
    """One line for what stopped a start; an OSError's file names the path that failed."""
    if not isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
