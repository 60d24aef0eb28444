"""The controller's side of the maintenance queue: track idleness, move requests through their
states, cancel those whose profile is gone, and run update commands (once per request)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from fleet.maintenance import queue
from fleet.maintenance.model import ALL, MaintenanceRequest
from fleet.observe.model import Observed
from fleet.plan.model import Desired, Plan
from fleet.spec.secrets import mask_argv, mask_text, secret_values, secret_words
from fleet.store.db import Store

OUTPUT_TAIL = 4000
UPDATE_TIMEOUT = 30 * 60.0
IDLE_POLL_SECONDS = 5.0


def track_idle(store: Store, observed: Observed, now: float) -> None:
    """idle_since: set at the first idle observation, cleared by any sign of work (Hermes has no
    last-activity field, so a rewrite of its status during an idle spell counts as activity)."""
    for name, obs in observed.profiles.items():
        h, st, proc = obs.history, obs.status, obs.process
        idle = proc is not None and st is not None and st.state in ("running", None) and not st.active \
            and not h.drain_intent
        if proc is not None and st is None:
            idle = not h.drain_intent  # a process-driver child without the state contract: nothing says busy
        activity = st.activity_at if st else None
        moved = activity is not None and h.activity_seen is not None and activity > h.activity_seen
        fields = {}
        if activity is not None and activity != h.activity_seen:
            fields["activity_seen"] = activity
        if idle and (h.idle_since is None or moved):
            fields["idle_since"] = now
        elif not idle and h.idle_since is not None:
            fields["idle_since"] = None
        if fields:
            store.update_history(name, **fields)


class MaintenanceTick:
    def __init__(self, store_path: str, store: Store, epoch: int):
        self.store_path = store_path
        self.store = store
        self.epoch = epoch
        self.running_updates: dict[int, threading.Thread] = {}

    def busy(self) -> bool:
        return any(t.is_alive() for t in self.running_updates.values())

    def advance(self, desired: Desired, observed: Observed, current: Plan, now: float) -> None:
        by_profile = {}
        for a in current.actions:
            if a.kind not in ("reclaim", "adopt"):
                by_profile.setdefault(a.profile, a)
        for req in observed.maintenance:
            self._advance_one(req, desired, observed, by_profile, now)

    def _advance_one(self, req: MaintenanceRequest, desired: Desired, observed: Observed, by_profile, now) -> None:
        spec = desired.spec
        if req.profile != ALL:
            pspec = spec.profile(req.profile)
            if pspec is None:
                return self._end(req, "cancelled", "the profile was removed from fleet.yaml")
            obs = observed.get(req.profile)
            wanted = obs.history.override_desired or pspec.desired
            if pspec.suspend:
                return self._end(req, "cancelled", "the profile is suspended")
            if wanted == "stopped":
                return self._end(req, "cancelled", "the profile is stopped")
        targets = [n for n in req.targets(spec.names) if _wanted_running(spec, observed, n)]
        if req.deadline is not None and now > req.deadline and req.state in ("pending", "waiting"):
            return self._end(req, "failed", "deadline passed before the gates opened")
        if req.update_pending:
            if req.update_started is not None and req.id not in self.running_updates:
                return self._end(req, "failed", "the controller stopped while the update command ran; the gateways "
                                                "were left as they were; submit the update again to retry")
            if req.update_started is None and req.state in ("pending", "waiting"):
                ready = all(by_profile.get(n) is None or by_profile[n].reason == "update_command"
                            or observed.get(n).process is None for n in targets)
                if ready and queue.transition(self.store, req.id, "draining", expect=("pending", "waiting"),
                                              update_started=now):
                    self._start_update(req, desired, targets, observed)
                    return
            if req.update_started is None:
                self._waiting(req, targets, by_profile)
            return
        satisfied = [n for n in targets if observed.get(n).process is not None
                     and observed.get(n).process.started_at > req.since]
        if len(satisfied) == len(targets) and (targets or req.state != "pending"):
            return self._end(req, "done", "restarted: " + ", ".join(targets) if targets else "nothing to restart")
        started = any(observed.get(n).history.drain_reason == "maintenance" for n in targets)
        if started and req.state in ("pending", "waiting"):
            queue.transition(self.store, req.id, "draining", expect=("pending", "waiting"))
            self.store.journal("maintenance_draining", f"#{req.id} draining", epoch=self.epoch,
                               profile=None if req.profile == ALL else req.profile)
        elif req.state in ("pending", "waiting"):
            self._waiting(req, targets, by_profile)

    def _waiting(self, req, targets, by_profile) -> None:
        texts = []
        for n in targets:
            a = by_profile.get(n)
            if a is not None and a.kind == "wait":
                texts.append(f"{n}: {a.message.split(': ', 1)[-1]}")
        queue.set_waiting_on(self.store, req.id, "; ".join(texts) or "waiting for the controller")

    def _end(self, req, state: str, outcome: str) -> None:
        if queue.transition(self.store, req.id, state, expect=("pending", "waiting", "draining"), outcome=outcome):
            self.store.journal(f"maintenance_{state}", f"#{req.id} {state}: {outcome}", epoch=self.epoch,
                               profile=None if req.profile == ALL else req.profile)

    def _start_update(self, req: MaintenanceRequest, desired: Desired, targets: list[str], observed: Observed) -> None:
        from fleet.execute.environment import child_environment
        from fleet.store.layout import StateDir

        state = StateDir(Path(self.store_path).parent)
        # (argv, env, cwd): the command sees the profile's HERMES_HOME, but none of the markers that
        # would make it look like the profile's gateway.
        commands = []
        for n in targets or list(desired.spec.names):
            spec = desired.spec.profile(n)
            cmd = spec.maintenance.update_command
            if cmd and all(cmd != c[0] for c in commands):
                env = {k: v for k, v in child_environment(spec, state).items() if not k.startswith("HERMES_FLEET_")}
                commands.append((cmd, env, spec.cwd if os.path.isdir(spec.cwd) else None))
        self.store.journal("maintenance_update", f"#{req.id} running the update command: "
                           + " | ".join(" ".join(mask_argv(c[0])) for c in commands) if commands else f"#{req.id}: no update_command; "
                           "restart only", epoch=self.epoch)
        thread = threading.Thread(target=self._run_update, args=(req.id, commands), daemon=True,
                                  name=f"update-{req.id}")
        self.running_updates[req.id] = thread
        thread.start()

    def _run_update(self, request_id: int, commands: list) -> None:
        try:
            self._run_update_commands(request_id, commands)
        except Exception as exc:  # noqa: BLE001 - the request must never stay `draining` because this thread died
            store = Store(self.store_path)
            try:
                queue.transition(store, request_id, "failed", expect=("draining", "waiting"), update_finished=time.time(),
                                 outcome=f"the update step failed: {type(exc).__name__}: {exc}")
            finally:
                store.close()

    def _run_update_commands(self, request_id: int, commands: list) -> None:
        output, code = "", 0
        for cmd, env, cwd in commands:
            try:
                done = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True, timeout=UPDATE_TIMEOUT,
                                      text=True, errors="replace", env=env, cwd=cwd)
                output += done.stdout + done.stderr
                code = done.returncode
            except (OSError, subprocess.TimeoutExpired) as exc:
                output += f"{exc}\n"
                code = 127 if isinstance(exc, OSError) else 124
            if code != 0:
                break
        # The command's output may echo its env: hide those secrets by value before anyone reads it.
        known = [v for cmd, env, _ in commands for v in (*secret_values(env.items()), *secret_words(cmd))]
        tail = mask_text(output, known=known)[-OUTPUT_TAIL:]
        store = Store(self.store_path)  # this thread's own connection
        try:
            now = time.time()
            if code == 0:
                # Back to waiting: each target now restarts through the normal graceful path and gates.
                row = store.conn.execute("SELECT profile FROM maintenance_requests WHERE id=?", (request_id,)).fetchone()
                queue.absorb_open_duplicates(store, request_id, row[0])
                queue.transition(store, request_id, "waiting", expect=("draining",), update_finished=now,
                                 update_exit=0, update_output=tail)
                store.journal("maintenance_update_ok", f"#{request_id} update command succeeded", epoch=self.epoch,
                              data={"output_tail": tail[-1000:]})
            else:
                queue.transition(store, request_id, "failed", expect=("draining",), update_finished=now,
                                 update_exit=code, update_output=tail,
                                 outcome=f"update command exited {code}; gateways left running. Output tail:\n{tail[-600:]}")
                store.journal("maintenance_failed", f"#{request_id} update command exited {code}; gateways left running",
                              epoch=self.epoch, data={"output_tail": tail[-1000:]})
        finally:
            store.close()


def _wanted_running(spec, observed: Observed, name: str) -> bool:
    p = spec.profile(name)
    if p is None or p.suspend:
        return False
    return (observed.get(name).history.override_desired or p.desired) == "running"
