"""Planner table tests: (desired, observed, now) -> the plan, as `Plan.render()` lines.

Each row states one situation and the exact plan, in the compact form
`profile kind reason [(phase)] [@+seconds after NOW]`, built by `factories.plan_text`.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from factories import (
    DEFAULT_BACKOFF, EPOCH, NOW, OLD_HASH, crashed, desired, fleet_spec, history, inventory, live,
    maintenance_request, make_plan, observation, observed, plan_text, profile_spec, restart_request, running,
    status, takeover_row, with_changes,
)
from fleet.maintenance.model import Gate
from fleet.observe.model import Orphan, WriteRefusal
from fleet.plan.exits import classify_exit, describe_exit
from fleet.plan.model import KIND_ORDER, SYMBOLS, Action, Kind, Plan, Reason
from fleet.spec.model import DrainPolicy, MaintenancePolicy, MaintenanceWindow, RestartPolicy

A = profile_spec("alpha")
B = profile_spec("beta")
C = profile_spec("gamma")
ONE = fleet_spec(A)
STOPPED = fleet_spec(with_changes(A, desired="stopped"))
NATIVE = "/home/u/.config/systemd/user/hermes-gateway-alpha.service"
RELEASED = history("alpha", override_desired="stopped", override_by="release:ops", override_at=NOW - 60)


def handover(state: str, kind: str = "takeover", **kw):
    """alpha while a take-over (or release) of its native unit is in `state`."""
    return observation("alpha", takeover=takeover_row("alpha", state, kind=kind), **kw)


def units_gateway(**kw):
    """The native unit's gateway, found through Hermes' own pid file and lock (not the fleet's)."""
    return live(A, pid=5151, source="hermes_pidfile", **kw)


def policy(spec, name: str, **kw):
    base = dict(policy=name, backoff=DEFAULT_BACKOFF, cap=64.0, reset_after=60.0)
    base.update(kw)
    return with_changes(spec, restart=RestartPolicy(**base))


def draining(intent: str, pid: int = 4242, **kw):
    reason = {"replace": "spec_changed", "stop": "desired_stopped", "prune": "removed_from_manifest"}[intent]
    fields = dict(drain_intent=intent, drain_reason=reason, drain_pid=pid, drain_started=NOW - 2.0,
                  drain_deadline=NOW + 58.0)
    fields.update(kw)
    return history("alpha", **fields)


# Hermes' answer to the drain begun at NOW - 2 (see `draining`): draining, no agent left, written after it.
ANSWERED = status("draining", 0, updated_at=NOW - 1.0)


def windows(*wins):
    return with_changes(A, maintenance=MaintenancePolicy(1200.0, 1, ("hermes", "update"), tuple(wins)))


# NOW is 2023-11-14 22:13:20 UTC (a Tuesday)
CASES = [
    # ---- spawn -------------------------------------------------------------------------------
    ("spawn first_apply", ONE, observed(), "alpha spawn first_apply"),
    ("spawn not_running (ran before, exit unknown to us)", ONE,
     observed(observation("alpha", history=history("alpha", last_start=NOW - 500))), "alpha spawn not_running"),
    ("spawn crashed after backoff elapsed", ONE,
     observed(observation("alpha", history=crashed("alpha", failures=3, at=NOW - 10))), "alpha spawn crashed"),
    ("spawn crashed within backoff", ONE,
     observed(observation("alpha", history=crashed("alpha", failures=3, at=NOW))), "alpha spawn crashed @+4"),
    ("spawn after kill by signal is a crash", ONE,
     observed(observation("alpha", history=crashed("alpha", code=-9, klass="killed", at=NOW))),
     "alpha spawn crashed @+1"),
    ("spawn after unknown exit is a crash", ONE,
     observed(observation("alpha", history=crashed("alpha", code=None, klass="unknown", at=NOW))),
     "alpha spawn crashed @+1"),
    ("exit 75 restarts now, no backoff", ONE,
     observed(observation("alpha", history=crashed("alpha", code=75, klass="restart_now", failures=5, at=NOW))),
     "alpha spawn restart_requested"),
    ("exit 0 under always restarts after the first step", ONE,
     observed(observation("alpha", history=crashed("alpha", code=0, klass="clean", failures=0, at=NOW))),
     "alpha spawn not_running @+1"),
    ("planned exit (a replace) spawns the replacement now", ONE,
     observed(observation("alpha", history=crashed("alpha", code=0, klass="planned", failures=0, at=NOW))),
     "alpha spawn replacement"),
    ("replace finished: close the drain, spawn the replacement", ONE,
     observed(observation("alpha", history=draining("replace", last_start=NOW - 100, last_exit_class="planned",
                                                    last_exit_at=NOW - 1))),
     "alpha update drain_complete\nalpha spawn replacement"),
    ("exit 78 with another spec: retried", ONE,
     observed(observation("alpha", history=crashed("alpha", code=78, klass="fatal_config",
                                                   failed_spec_hash=OLD_HASH))), "alpha spawn not_running"),
    ("exit 78 with a fresh operator request: retried", ONE,
     observed(observation("alpha", history=crashed("alpha", code=78, klass="fatal_config", failed_spec_hash=A.spec_hash),
                          request=restart_request("alpha", created_at=NOW))), "alpha spawn not_running"),
    ("dead record reclaimed, then spawn", ONE, observed(observation("alpha", verdict="dead")),
     "alpha reclaim pid_dead\nalpha spawn first_apply"),
    # ---- wait (exit-code policy, suspend) ------------------------------------------------------
    ("exit 0 under on-failure stays down", fleet_spec(policy(A, "on-failure")),
     observed(observation("alpha", history=crashed("alpha", code=0, klass="clean", failures=0))),
     "alpha wait exited_cleanly"),
    ("crash under on-failure respawns", fleet_spec(policy(A, "on-failure")),
     observed(observation("alpha", history=crashed("alpha", failures=2, at=NOW))), "alpha spawn crashed @+2"),
    ("crash under never stays down", fleet_spec(policy(A, "never")),
     observed(observation("alpha", history=crashed("alpha"))), "alpha wait restart_policy_never"),
    ("never: an operator restart still starts it", fleet_spec(policy(A, "never")),
     observed(observation("alpha", history=crashed("alpha"), request=restart_request("alpha", created_at=NOW))),
     "alpha spawn crashed"),
    ("suspended: observed only", fleet_spec(with_changes(A, suspend=True)), observed(), "alpha wait suspended"),
    ("suspended: even a wedged process is left alone", fleet_spec(with_changes(A, suspend=True)),
     observed(running(A, heartbeat_at=NOW - 1000)), "alpha wait suspended"),
    # ---- conflict ----------------------------------------------------------------------------
    ("exit 78 with this spec: never retried", ONE,
     observed(observation("alpha", history=crashed("alpha", code=78, klass="fatal_config",
                                                   failed_spec_hash=A.spec_hash))), "alpha conflict config_conflict"),
    ("exit 0 in startup_failed with this spec: never retried", ONE,
     observed(observation("alpha", history=crashed("alpha", code=0, klass="startup_failed",
                                                   failed_spec_hash=A.spec_hash))), "alpha conflict startup_failed"),
    ("native service, nothing running", ONE, observed(observation("alpha", native_service=NATIVE)),
     "alpha conflict owned_by_native_service"),
    # ---- take-over and release of a native unit (fleet/store/takeovers.py) -----------------------
    ("take-over requested: the unit's gateway is neither adopted nor drained", ONE,
     observed(handover("requested", process=units_gateway(), native_service=NATIVE)), "alpha wait taking_over"),
    ("take-over draining: wait, never touch the unit's gateway", ONE,
     observed(handover("draining", process=units_gateway())), "alpha wait taking_over"),
    ("take-over gated, nothing runs: no spawn before the unit has stopped", ONE,
     observed(handover("gated")), "alpha wait taking_over"),
    ("take-over stopping: no spawn beside the stopping gateway", ONE,
     observed(handover("stopping", process=units_gateway())), "alpha wait taking_over"),
    ("take-over requested: our own dead record is still reclaimed", ONE,
     observed(handover("requested", verdict="dead")), "alpha reclaim pid_dead\nalpha wait taking_over"),
    ("take-over spawning: the fleet starts its gateway like any profile", ONE,
     observed(handover("spawning")), "alpha spawn first_apply"),
    ("take-over spawning: the fleet's gateway runs", ONE,
     observed(handover("spawning", process=live(A))), "alpha keep running @+85.05"),
    ("take-over spawning: a gateway that is not the fleet's is never adopted", ONE,
     observed(handover("spawning", process=units_gateway())), "alpha wait taking_over"),
    ("take-over spawning: the fleet's unrecorded gateway (its markers) is adopted", ONE,
     observed(handover("spawning", process=live(A, source="env_marker", spec_hash=A.spec_hash))),
     "alpha adopt record_missing\nalpha keep running @+85.05"),
    ("rollback: the fleet's gateway drains", ONE,
     observed(handover("giving_back", process=live(A))), "alpha drain giving_back (begin)"),
    ("rollback: the fleet's gateway drained, then the planned stop", ONE,
     observed(handover("giving_back", process=live(A), status=status("draining", active=0, updated_at=NOW - 1.0),
                       history=history("alpha", drain_intent="stop", drain_reason="giving_back", drain_pid=4242,
                                       drain_started=NOW - 2.0, drain_deadline=NOW + 58.0))),
     "alpha drain giving_back (stop)"),
    ("rollback: the fleet's gateway gone, the drain closes", ONE,
     observed(handover("giving_back", history=history("alpha", drain_intent="stop", drain_reason="giving_back"))),
     "alpha update drain_complete"),
    ("rollback: nothing of the fleet runs, the unit gets it back", ONE,
     observed(handover("giving_back")), "alpha wait giving_back"),
    ("rollback: the unit's own gateway (drain abandoned) is left alone", ONE,
     observed(handover("giving_back", process=units_gateway())), "alpha wait giving_back"),
    ("release: the fleet's gateway drains", ONE,
     observed(handover("giving_back", kind="release", process=live(A))), "alpha drain giving_back (begin)"),
    ("release: the unit starting", ONE,
     observed(handover("unit_starting", kind="release", process=units_gateway())), "alpha wait giving_back"),
    ("released: the unit's gateway runs, hands off", ONE,
     observed(observation("alpha", process=units_gateway(), native_service=NATIVE, history=RELEASED)),
     "alpha keep released"),
    ("released: our stale record is reclaimed, nothing spawned", ONE,
     observed(observation("alpha", verdict="dead", native_service=NATIVE, history=RELEASED)),
     "alpha reclaim pid_dead\nalpha keep released"),
    # ---- keep / update -----------------------------------------------------------------------
    ("keep", ONE, observed(running(A)), "alpha keep running @+85.05"),
    ("keep a fresh process without heartbeat yet", ONE, observed(running(A, heartbeat_at=None, started_at=NOW - 30)),
     "alpha keep running @+120.05"),
    ("keep a process whose spec is unknown (adopted earlier)", ONE, observed(running(A, spec_hash=None)),
     "alpha keep running @+85.05"),
    ("an old restart request is already satisfied", ONE,
     observed(running(A, request=restart_request("alpha", created_at=NOW - 7200))), "alpha keep running @+85.05"),
    ("stopped and absent", STOPPED, observed(), "alpha keep stopped"),
    ("policy change: in place", desired(ONE, previous={"alpha": with_changes(A, drain=DrainPolicy(30.0))}),
     observed(running(A)), "alpha update policy_changed"),
    ("unchanged previous: keep", desired(ONE, previous={"alpha": A}), observed(running(A)), "alpha keep running @+85.05"),
    ("stop finished: close the drain", STOPPED, observed(observation("alpha", history=draining("stop"))),
     "alpha update drain_complete"),
    ("removed, nothing running: finalize", fleet_spec(B),
     observed(running(B, pid=5), inventory=inventory("alpha", "beta")),
     "alpha update removed_from_manifest\nbeta keep running @+85.05"),
    ("removed with prune: false: let go", fleet_spec(B),
     observed(running(A), running(B, pid=5), inventory=inventory("beta") + inventory("alpha", prune=False)),
     "alpha update prune_disabled\nbeta keep running @+85.05"),
    # ---- adopt / reclaim ---------------------------------------------------------------------
    ("adopt a gateway started by hand", ONE, observed(observation("alpha", process=live(A, source="cmdline"))),
     "alpha adopt started_by_hand\nalpha keep running @+85.05"),
    ("adopt by match pattern", ONE, observed(observation("alpha", process=live(A, source="match"))),
     "alpha adopt started_by_hand\nalpha keep running @+85.05"),
    ("adopt from Hermes' own pid file", ONE,
     observed(observation("alpha", process=live(A, source="hermes_pidfile"))),
     "alpha adopt record_missing\nalpha keep running @+85.05"),
    ("adopt by environment marker", ONE,
     observed(observation("alpha", process=live(A, source="env_marker", spec_hash=A.spec_hash))),
     "alpha adopt record_missing\nalpha keep running @+85.05"),
    ("adopt from the previous controller", ONE, observed(running(A, record_epoch=EPOCH - 1)),
     "alpha adopt previous_controller\nalpha keep running @+85.05"),
    ("adopt without --external-supervisor: queue a replace", ONE,
     observed(observation("alpha", process=live(A, source="cmdline", flag=False))),
     "alpha adopt started_by_hand\nalpha replace adopted_argv_mismatch (begin)"),
    ("reclaim a reused pid", ONE, observed(observation("alpha", verdict="reused")),
     "alpha reclaim pid_reused\nalpha spawn first_apply"),
    ("reclaim a pid of another user", ONE, observed(observation("alpha", verdict="foreign")),
     "alpha reclaim pid_foreign\nalpha spawn first_apply"),
    ("reclaim a record naming a process that is not this profile's gateway", ONE,
     observed(observation("alpha", verdict="unrelated")), "alpha reclaim pid_unrelated\nalpha spawn first_apply"),
    ("reclaim a corrupt record", ONE, observed(observation("alpha", verdict="corrupt")),
     "alpha reclaim record_corrupt\nalpha spawn first_apply"),
    ("reclaim the stale record and adopt the gateway found by hand", ONE,
     observed(observation("alpha", verdict="dead", process=live(A, source="cmdline"))),
     "alpha reclaim pid_dead\nalpha adopt started_by_hand\nalpha keep running @+85.05"),
    # ---- replace -----------------------------------------------------------------------------
    ("spec changed, idle", ONE, observed(running(A, spec_hash=OLD_HASH)), "alpha replace spec_changed (begin)"),
    ("spec changed, busy: idle gate", ONE, observed(running(A, spec_hash=OLD_HASH, status=status(active=2))),
     "alpha wait idle_gate"),
    ("restart requested", ONE, observed(running(A, request=restart_request("alpha"))),
     "alpha replace restart_requested (begin)"),
    ("restart requested while busy: not idle-gated", ONE,
     observed(running(A, request=restart_request("alpha"), status=status(active=3))),
     "alpha replace restart_requested (begin)"),
    ("replace drained (acknowledged): planned stop", ONE,
     observed(running(A, spec_hash=OLD_HASH, history=draining("replace"), status=ANSWERED)),
     "alpha replace spec_changed (stop)"),
    # ---- drain -------------------------------------------------------------------------------
    ("desired stopped", STOPPED, observed(running(A)), "alpha drain desired_stopped (begin)"),
    ("operator stop overrides desired running", ONE,
     observed(running(A, history=history("alpha", override_desired="stopped"))), "alpha drain desired_stopped (begin)"),
    ("drain acknowledged: planned stop", STOPPED,
     observed(running(A, history=draining("stop"), status=ANSWERED)), "alpha drain desired_stopped (stop)"),
    ("drain acknowledged by the gateway's own pid: planned stop", STOPPED,
     observed(running(A, history=draining("stop"), status=status("draining", 0, updated_at=NOW - 1, pid=4242))),
     "alpha drain desired_stopped (stop)"),
    ("drain of a process-driver gateway stops at once", fleet_spec(profile_spec("alpha", driver="process",
                                                                                desired="stopped")),
     observed(running(profile_spec("alpha", driver="process"), history=draining("stop"))),
     "alpha drain desired_stopped (stop)"),
    ("a drain recorded for an older pid starts over", STOPPED,
     observed(running(A, history=draining("stop", pid=1))), "alpha drain desired_stopped (begin)"),
    ("prune: removed from the manifest", fleet_spec(B),
     observed(running(A), running(B, pid=5), inventory=inventory("alpha", "beta")),
     "alpha drain removed_from_manifest (begin)\nbeta keep running @+85.05"),
    ("prune resumes after a crash (inventory says removing)", fleet_spec(),
     observed(running(A, history=draining("prune"), status=status("stopped", 0, updated_at=NOW - 1)),
              inventory=inventory("alpha", state="removing")),
     "alpha drain removed_from_manifest (stop)"),
    ("prune of a process-driver profile (its last-applied spec says so): stops at once",
     desired(fleet_spec(B), previous={"alpha": profile_spec("alpha", driver="process")}),
     observed(running(profile_spec("alpha", driver="process"), history=draining("prune")), running(B, pid=5),
              inventory=inventory("alpha", "beta", state="removing")),
     "alpha drain removed_from_manifest (stop)\nbeta keep running @+85.05"),
    ("empty manifest with --allow-empty drains", desired(fleet_spec(), allow_empty=True),
     observed(running(A), inventory=inventory("alpha")), "alpha drain removed_from_manifest (begin)"),
    # ---- wait (drains, gates, prune) ---------------------------------------------------------
    ("drain waits for the acknowledgement", STOPPED, observed(running(A, history=draining("stop"))),
     "alpha wait draining @+1"),
    # Idle means idle under a drain (issue 16): Hermes 0.19 persists no API-server run outside a drain, so a
    # gateway serving a 25 s API turn says `running` with 0 active agents until it answers the drain request.
    ("an API turn in flight: running with 0 agents from before the drain is no answer, however long", STOPPED,
     observed(running(A, history=draining("stop", drain_started=NOW - 30), status=status("running", 0, NOW - 40))),
     "alpha wait draining @+1"),
    ("an unanswered drain idle past the old 5 s grace: still no stop", STOPPED,
     observed(running(A, history=draining("stop", drain_started=NOW - 6))), "alpha wait draining @+1"),
    ("running with 0 agents written after the request is no answer either", STOPPED,
     observed(running(A, history=draining("stop", drain_started=NOW - 30), status=status("running", 0, NOW - 1))),
     "alpha wait draining @+1"),
    ("draining with 0 agents, but written before this drain's request: no answer", STOPPED,
     observed(running(A, history=draining("stop"), status=status("draining", 0, updated_at=NOW - 3))),
     "alpha wait draining @+1"),
    ("stopped, written by another process (the previous gateway): no answer", STOPPED,
     observed(running(A, history=draining("stop"), status=status("stopped", 0, updated_at=NOW - 1, pid=1111))),
     "alpha wait draining @+1"),
    ("answered with the API run still in flight: waits for it", STOPPED,
     observed(running(A, history=draining("stop"), status=status("draining", 1, updated_at=NOW - 1))),
     "alpha wait draining @+1"),
    ("answered without a count of active agents: no stop", STOPPED,
     observed(running(A, history=draining("stop"), status=status("draining", None, updated_at=NOW - 1))),
     "alpha wait draining @+1"),
    ("prune with the spec lost: a Hermes drain's rule, the answer first", fleet_spec(B),
     observed(running(A, history=draining("prune", drain_started=NOW - 30)), running(B, pid=5),
              inventory=inventory("alpha", "beta", state="removing")),
     "alpha wait draining @+1\nbeta keep running @+85.05"),
    ("maintenance restart's drain: the idle gate only began it; a stale running/0 does not end it", ONE,
     observed(running(A, history=draining("replace", drain_reason="maintenance", drain_started=NOW - 10),
                      status=status("running", 0, NOW - 3600)),
              maintenance=(maintenance_request("alpha", state="draining"),)),
     "alpha wait draining @+1"),
    ("maintenance restart's drain answered idle: planned stop", ONE,
     observed(running(A, history=draining("replace", drain_reason="maintenance"), status=ANSWERED),
              maintenance=(maintenance_request("alpha", state="draining"),)),
     "alpha replace maintenance (stop)"),
    ("operator restart's drain with a stale running/0: waits for the answer", ONE,
     observed(running(A, request=restart_request("alpha", created_at=NOW - 20),
                      history=draining("replace", drain_reason="restart_requested", drain_started=NOW - 10),
                      status=status("running", 0))),
     "alpha wait draining @+1"),
    ("drain waits for active agents", STOPPED,
     observed(running(A, history=draining("stop", drain_started=NOW - 30), status=status("draining", 2))),
     "alpha wait draining @+1"),
    ("planned stop sent: wait for the exit until the deadline", STOPPED,
     observed(running(A, history=draining("stop", drain_signalled=NOW - 1))), "alpha wait stopping @+58"),
    ("replace waits for the drain", ONE, observed(running(A, spec_hash=OLD_HASH, history=draining("replace"))),
     "alpha wait draining @+1"),
    ("--no-prune defers the drain", desired(fleet_spec(B), prune=False),
     observed(running(A), running(B, pid=5), inventory=inventory("alpha", "beta")),
     "alpha wait prune_deferred\nbeta keep running @+85.05"),
    ("ours once, but in no inventory: never touched", fleet_spec(B),
     observed(running(A), running(B, pid=5), inventory=inventory("beta")),
     "alpha wait not_managed\nbeta keep running @+85.05"),
    # ---- kill --------------------------------------------------------------------------------
    ("heartbeat stale: wedged", ONE, observed(running(A, heartbeat_at=NOW - 200)), "alpha kill wedged"),
    ("no heartbeat since start (hermes driver)", ONE, observed(running(A, heartbeat_at=None)), "alpha kill wedged"),
    ("heartbeat from before the start does not count", ONE,
     observed(running(A, started_at=NOW - 1000, heartbeat_at=NOW - 1100)), "alpha kill wedged"),
    ("process driver without heartbeat is never judged", fleet_spec(profile_spec("alpha", driver="process")),
     observed(running(profile_spec("alpha", driver="process"), heartbeat_at=None)), "alpha keep running"),
    # A heartbeat that stopped while its directory refused writes (read-only, full) is not a hang: the gateway
    # could not have written it. It is judged again a whole limit (90 s) after the last refusal seen.
    ("stale heartbeat, its directory refusing writes: kept", ONE,
     observed(running(A, heartbeat_at=NOW - 200, heartbeat_blocked=WriteRefusal(NOW, "read-only file system"))),
     "alpha keep running @+90.05"),
    ("no heartbeat since start, its directory full: kept", ONE,
     observed(running(A, heartbeat_at=None, heartbeat_blocked=WriteRefusal(NOW - 89, "no space left"))),
     "alpha keep running @+1.05"),
    ("stale heartbeat, its directory taking writes again since a moment ago: kept a whole limit", ONE,
     observed(running(A, heartbeat_at=NOW - 200,
                      heartbeat_blocked=WriteRefusal(NOW - 1, "read-only file system", lifted=True))),
     "alpha keep running @+89.05"),
    ("stale heartbeat, its directory refused writes longer ago than the limit: wedged", ONE,
     observed(running(A, heartbeat_at=NOW - 200, heartbeat_blocked=WriteRefusal(NOW - 91, "no space left"))),
     "alpha kill wedged"),
    ("restart --force", ONE, observed(running(A, request=restart_request("alpha", kind="force_restart"))),
     "alpha kill forced"),
    ("drain deadline passed", STOPPED, observed(running(A, history=draining("stop", drain_deadline=NOW))),
     "alpha kill drain_timeout"),
    ("replace's drain deadline passed", ONE,
     observed(running(A, spec_hash=OLD_HASH, history=draining("replace", drain_deadline=NOW - 1))),
     "alpha kill drain_timeout"),
    ("signalled and the deadline passed", STOPPED,
     observed(running(A, history=draining("stop", drain_signalled=NOW - 30, drain_deadline=NOW - 1))),
     "alpha kill drain_timeout"),
    # ---- maintenance queue ---------------------------------------------------------------------
    ("maintenance restart: idle long enough", ONE,
     observed(running(A, history=history("alpha", idle_since=NOW - 1300)), maintenance=(maintenance_request("alpha"),)),
     "alpha replace maintenance (begin)"),
    ("maintenance restart: idle too briefly, wakes when idle enough", ONE,
     observed(running(A, history=history("alpha", idle_since=NOW - 200)), maintenance=(maintenance_request("alpha"),)),
     "alpha wait idle_gate @+1000"),
    ("maintenance restart: busy", ONE,
     observed(running(A, status=status(active=2), history=history("alpha", idle_since=NOW - 1300)),
              maintenance=(maintenance_request("alpha"),)), "alpha wait idle_gate"),
    ("maintenance restart: --now skips the gates", ONE,
     observed(running(A), maintenance=(maintenance_request("alpha", now=True),)), "alpha replace maintenance (begin)"),
    ("maintenance restart: not before", ONE,
     observed(running(A), maintenance=(maintenance_request("alpha", not_before=NOW + 600),)),
     "alpha wait maintenance @+600"),
    ("maintenance restart: own idle seconds", ONE,
     observed(running(A, history=history("alpha", idle_since=NOW - 100)),
              maintenance=(maintenance_request("alpha", idle_seconds=60),)), "alpha replace maintenance (begin)"),
    ("maintenance restart: already restarted since the request", ONE,
     observed(running(A, started_at=NOW - 10), maintenance=(maintenance_request("alpha", now=True),)),
     "alpha keep running @+85.05"),
    ("maintenance update: the update command runs first", ONE,
     observed(running(A), maintenance=(maintenance_request("alpha", action="update", now=True),)),
     "alpha wait update_command"),
    ("maintenance update: updated, now restart", ONE,
     observed(running(A), maintenance=(maintenance_request("alpha", action="update", now=True,
                                                           update_finished=NOW - 5),)),
     "alpha replace maintenance (begin)"),
    ("maintenance: outside the allowed window", fleet_spec(windows(MaintenanceWindow("allow", "0 3 * * *", 3600.0, "UTC"))),
     observed(running(A, history=history("alpha", idle_since=NOW - 1300)), maintenance=(maintenance_request("alpha"),)),
     "alpha wait window_closed"),
    ("maintenance: inside the allowed window", fleet_spec(windows(MaintenanceWindow("allow", "0 22 * * *", 3600.0, "UTC"))),
     observed(running(A, history=history("alpha", idle_since=NOW - 1300)), maintenance=(maintenance_request("alpha"),)),
     "alpha replace maintenance (begin)"),
    ("maintenance: a deny window wins", fleet_spec(windows(MaintenanceWindow("allow", "0 22 * * *", 3600.0, "UTC"),
                                                          MaintenanceWindow("deny", "* * * * tue", 60.0, "UTC"))),
     observed(running(A, history=history("alpha", idle_since=NOW - 1300)), maintenance=(maintenance_request("alpha"),)),
     "alpha wait window_closed"),
]


@pytest.mark.parametrize("fleet, obs, expected", [pytest.param(f, o, e, id=i) for i, f, o, e in CASES])
def test_plan_table(fleet, obs, expected):
    assert plan_text(fleet, obs) == expected


@pytest.mark.parametrize("st, note", [
    (None, "waiting for the gateway to acknowledge the drain"),
    (status("running", 0, NOW - 40), "waiting for the gateway to acknowledge the drain"),
    (status("running", 3, NOW - 1), "waiting for the gateway to acknowledge the drain"),
    (status("draining", 0, NOW - 3), "waiting for the gateway to acknowledge the drain"),
    (status("draining", 2, NOW - 1), "2 active agent(s)"),
    (status("draining", None, NOW - 1), "active agents unknown"),
])
def test_a_hermes_drain_says_what_it_waits_for(st, note):
    """Until the gateway answers the drain its count is not shown as the reason: outside a drain it misses
    API runs; once it answered, the agents it still runs are."""
    [wait] = make_plan(STOPPED, observed(running(A, history=draining("stop"), status=st))).actions
    assert (wait.kind, wait.reason, wait.message) == ("wait", "draining", note)


def test_every_action_kind_is_covered_by_the_table():
    kinds = {line.split()[1] for *_, text in CASES for line in text.splitlines()}
    assert kinds == set(SYMBOLS) == set(KIND_ORDER)


# -- backoff schedule -----------------------------------------------------------------------------

@pytest.mark.parametrize("failures, delay", [(1, 1), (2, 2), (3, 4), (4, 9), (5, 16), (6, 25), (7, 36), (8, 49),
                                             (9, 64), (10, 64), (50, 64)])
def test_backoff_schedule_after_consecutive_failures(failures, delay):
    obs = observed(observation("alpha", history=crashed("alpha", failures=failures, at=NOW)))
    assert plan_text(ONE, obs) == f"alpha spawn crashed @+{delay}"


def test_zero_failures_recorded_still_waits_the_first_step():
    obs = observed(observation("alpha", history=crashed("alpha", failures=0, at=NOW)))
    assert plan_text(ONE, obs) == "alpha spawn crashed @+1"


def test_backoff_cap_and_custom_schedule():
    spec = policy(A, "always", backoff=(5.0, 100.0), cap=30.0)
    for failures, delay in [(1, 5), (2, 30), (7, 30)]:
        obs = observed(observation("alpha", history=crashed("alpha", failures=failures, at=NOW)))
        assert plan_text(fleet_spec(spec), obs) == f"alpha spawn crashed @+{delay}"


@pytest.mark.parametrize("failures, delay", [(0, 0.0), (-1, 0.0), (1, 1.0), (3, 4.0), (9, 64.0), (99, 64.0)])
def test_restart_policy_delay(failures, delay):
    assert A.restart.delay(failures) == delay


def test_backoff_counts_from_the_exit_not_from_now():
    obs = observed(observation("alpha", history=crashed("alpha", failures=5, at=NOW - 10)))
    p = make_plan(ONE, obs)
    assert p.actions[0].not_before == NOW - 10 + 16
    assert p.actions[0].gates == (Gate("backoff", False, f"until {NOW + 6:.0f}"),)


# -- exit codes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("code, state, planned, klass", [
    (75, None, False, "restart_now"),
    (78, None, False, "fatal_config"),
    (0, None, False, "clean"),
    (0, "running", False, "clean"),
    (0, "startup_failed", False, "startup_failed"),
    (1, None, False, "crash"),
    (2, "startup_failed", False, "crash"),
    (-9, None, False, "killed"),
    (-15, "running", False, "killed"),
    (None, None, False, "unknown"),
    (None, "running", False, "unknown"),
    (None, "startup_failed", False, "startup_failed"),
    (None, "stopped", False, "clean"),
    (1, None, True, "planned"),
    (78, None, True, "planned"),
    (-9, None, True, "planned"),
])
def test_classify_exit(code, state, planned, klass):
    assert classify_exit(code, state, planned=planned) == klass


@pytest.mark.parametrize("code, klass, text", [(None, None, "-"), (None, "unknown", "unknown"),
                                               (-9, "killed", "signal 9 (killed)"), (1, "crash", "1 (crash)"),
                                               (78, "fatal_config", "78 (fatal_config)")])
def test_describe_exit(code, klass, text):
    assert describe_exit(code, klass) == text


# -- stagger -----------------------------------------------------------------------------------

def test_stagger_spaces_spawns_in_name_order():
    assert plan_text(fleet_spec("a", "b", "c"), observed()) == (
        "a spawn first_apply\nb spawn first_apply @+2.5\nc spawn first_apply @+5")


def test_stagger_counts_from_the_last_spawn():
    assert plan_text(fleet_spec("a", "b"), observed(last_spawn_at=NOW - 1)) == (
        "a spawn first_apply @+1.5\nb spawn first_apply @+4")
    assert plan_text(fleet_spec("a"), observed(last_spawn_at=NOW - 100)) == "a spawn first_apply"


def test_stagger_uses_each_profiles_own_gap():
    fleet = fleet_spec(profile_spec("a"), profile_spec("b", stagger=10.0), profile_spec("c", stagger=0.0))
    assert plan_text(fleet, observed()) == "a spawn first_apply\nb spawn first_apply @+10\nc spawn first_apply @+10"


def test_stagger_adds_a_gate_and_keeps_backoff():
    fleet = fleet_spec("a", "b")
    p = make_plan(fleet, observed(observation("b", history=crashed("b", failures=1, at=NOW))))
    b = p.actions[1]
    assert (b.profile, b.not_before) == ("b", NOW + 2.5)
    assert [g.gate for g in b.gates] == ["backoff", "stagger"]
    assert b.gates[1] == Gate("stagger", False, "2.5s between spawns")


def test_ready_spawns_take_the_early_slots_and_backoff_keeps_its_own_time():
    fleet = fleet_spec("a", "b", "c")
    obs = observed(observation("a", history=crashed("a", failures=2, at=NOW)),  # backoff 2 s
                   observation("b", history=crashed("b", failures=9, at=NOW)))  # backoff 64 s
    assert plan_text(fleet, obs) == "a spawn crashed @+2.5\nb spawn crashed @+64\nc spawn first_apply"


def test_stagger_does_not_delay_non_spawn_actions():
    fleet = fleet_spec("a", "b")
    obs = observed(observation("b", process=live(profile_spec("b"), spec_hash=OLD_HASH)))
    assert plan_text(fleet, obs) == "a spawn first_apply\nb replace spec_changed (begin)"


def test_a_siblings_backoff_does_not_delay_a_spawn_beyond_the_stagger():
    """Once a BUG (slots were given in name order, so beta waited 66.5 s behind alpha's backoff)."""
    fleet = fleet_spec("alpha", "beta")
    obs = observed(observation("alpha", history=crashed("alpha", failures=9, at=NOW)),  # backoff 64 s
                   observation("beta", history=crashed("beta", failures=1, at=NOW)))  # backoff 1 s
    p = make_plan(fleet, obs)
    spawns = {a.profile: a.not_before for a in p.actions if a.kind == "spawn"}
    assert spawns["alpha"] == NOW + 64
    # its own backoff, plus at most one stagger gap; and still >= 2.5 s away from alpha's slot
    assert spawns["beta"] <= NOW + 1 + 2.5


# -- budget ------------------------------------------------------------------------------------

def _changed(*specs, **kw):
    return [running(s, pid=100 + i, spec_hash=OLD_HASH, **kw) for i, s in enumerate(specs)]


def test_budget_one_replace_at_a_time_in_name_order():
    assert plan_text(fleet_spec(A, B, C), observed(*_changed(A, B, C))) == (
        "alpha replace spec_changed (begin)\nbeta wait budget_exhausted\ngamma wait budget_exhausted")


def test_budget_of_two():
    assert plan_text(fleet_spec(A, B, C, max_concurrent=2), observed(*_changed(A, B, C))) == (
        "alpha replace spec_changed (begin)\nbeta replace spec_changed (begin)\ngamma wait budget_exhausted")


def test_budget_taken_by_a_replace_in_flight():
    obs = observed(*_changed(A, B), running(C, pid=3, history=history("gamma", drain_intent="replace", drain_pid=3,
                                                                       drain_started=NOW - 1, drain_deadline=NOW + 50)))
    assert plan_text(fleet_spec(A, B, C), obs) == (
        "alpha wait budget_exhausted\nbeta wait budget_exhausted\ngamma wait draining @+1")


def test_budget_taken_by_a_crashed_sibling():
    obs = observed(*_changed(A, B), observation("gamma", history=crashed("gamma", failures=2, at=NOW)))
    assert plan_text(fleet_spec(A, B, C), obs) == (
        "gamma spawn crashed @+2\nalpha wait budget_exhausted\nbeta wait budget_exhausted")


def test_budget_does_not_gate_involuntary_or_requested_restarts():
    obs = observed(running(A, spec_hash=OLD_HASH), running(B, pid=2, request=restart_request("beta")),
                   observation("gamma", history=crashed("gamma", failures=2, at=NOW)))
    assert plan_text(fleet_spec(A, B, C), obs) == (
        "gamma spawn crashed @+2\nbeta replace restart_requested (begin)\nalpha wait budget_exhausted")


def test_budget_wait_keeps_the_gates_and_says_who_holds_the_budget():
    p = make_plan(fleet_spec(A, B), observed(*_changed(A, B)))
    wait = p.actions[1]
    assert (wait.kind, wait.reason, wait.voluntary, wait.pid) == ("wait", "budget_exhausted", True, 101)
    assert [g.gate for g in wait.gates] == ["idle", "budget"]
    assert wait.gates[-1] == Gate("budget", False, "1 of 1 in use")
    assert "alpha" in wait.message


def test_maintenance_for_every_profile_goes_through_the_budget():
    obs = observed(running(A), running(B, pid=2), maintenance=(maintenance_request("*", now=True),))
    assert plan_text(fleet_spec(A, B), obs) == "alpha replace maintenance (begin)\nbeta wait budget_exhausted"


def test_a_stopped_profile_does_not_hold_the_budget():
    fleet = fleet_spec(A, with_changes(B, desired="stopped"))
    obs = observed(running(A, spec_hash=OLD_HASH),
                   observation("beta", history=crashed("beta", failures=2, at=NOW - 1000)))
    assert plan_text(fleet, obs) == "alpha replace spec_changed (begin)\nbeta keep stopped"


# -- prune and the empty-fleet guard ------------------------------------------------------------------

def test_empty_manifest_is_refused_with_records_only():
    obs = observed(running(A), observation("beta", verdict="dead"), running(C, pid=3, record_epoch=EPOCH - 1),
                   inventory=inventory("alpha", "beta", "gamma"))
    p = make_plan(fleet_spec(), obs)
    assert p.refusal == ("the manifest has no profiles but the fleet runs 3; refusing to drain everything "
                         "(pass --allow-empty if you mean it)")
    assert render(p) == "beta reclaim pid_dead\ngamma adopt previous_controller\nalpha keep refused"
    assert not p.in_sync


def test_empty_manifest_without_prune_is_not_refused():
    p = make_plan(desired(fleet_spec(), prune=False), observed(running(A), inventory=inventory("alpha")))
    assert p.refusal is None and render(p) == "alpha wait prune_deferred"


def test_empty_manifest_with_only_removing_entries_resumes_the_prune():
    obs = observed(running(A), inventory=inventory("alpha", state="removing"))
    p = make_plan(fleet_spec(), obs)
    assert p.refusal is None and render(p) == "alpha drain removed_from_manifest (begin)"


def test_empty_manifest_and_empty_inventory_is_simply_empty():
    p = make_plan(fleet_spec(), observed())
    assert p.refusal is None and p.actions == () and p.in_sync


def test_prune_candidates_come_only_from_the_inventory():
    # a running, recorded gateway of a profile never applied is reported, never drained
    obs = observed(running(A), orphans=(Orphan(pid=77, profile="zeta", cmdline=("hermes", "-p", "zeta"),
                                               reason="unmanaged (cmdline)"),))
    p = make_plan(fleet_spec(), obs)
    assert render(p) == "alpha wait not_managed"
    assert [(c.severity, c.code, c.profile) for c in p.checks] == [("warning", "unmanaged_orphan", "zeta")]


# -- checks, fields, helpers ------------------------------------------------------------------------

def render(p: Plan) -> str:
    return p.render()


def test_checks():
    obs = observed(observation("alpha", verdict="reused"), running(B, pid=2, native_service=NATIVE),
                   orphans=(Orphan(pid=90, profile="beta", cmdline=("hermes",), reason="duplicate"),))
    p = make_plan(fleet_spec(A, B), obs)
    assert [(c.severity, c.code, c.profile) for c in p.checks] == [
        ("warning", "record_untrusted", "alpha"),
        ("error", "owned_by_native_service", "beta"),
        ("warning", "duplicate_process", "beta"),
    ]
    assert p.checks[0].message == "record names pid 3131, which is now another program"


def test_actions_carry_the_pid_they_act_on():
    obs = observed(running(A, pid=11, spec_hash=OLD_HASH), running(B, pid=22, heartbeat_at=NOW - 500),
                   observation("gamma", verdict="dead"))
    p = make_plan(fleet_spec(A, B, C), obs)
    assert {(a.profile, a.kind): a.pid for a in p.actions} == {
        ("gamma", "reclaim"): 3131, ("beta", "kill"): 22, ("gamma", "spawn"): None, ("alpha", "replace"): 11}


def test_voluntary_flags():
    obs = observed(running(A, spec_hash=OLD_HASH), running(B, pid=2, heartbeat_at=NOW - 500))
    p = make_plan(fleet_spec(A, B), obs)
    assert {a.profile: (a.kind, a.voluntary) for a in p.actions} == {"alpha": ("replace", True),
                                                                     "beta": ("kill", False)}


def test_plan_order_records_kills_spawns_replaces_drains_then_the_rest():
    d = profile_spec("d", desired="stopped")
    fleet = fleet_spec(A, B, C, d, profile_spec("e"), profile_spec("f", suspend=True), profile_spec("g"))
    obs = observed(
        running(A, pid=1, spec_hash=OLD_HASH),  # replace
        running(B, pid=2, heartbeat_at=NOW - 500),  # kill
        observation("gamma", verdict="dead"),  # reclaim + spawn
        running(d, pid=4),  # drain
        observation("e", process=live(profile_spec("e"), pid=5, source="cmdline")),  # adopt + keep
        running(profile_spec("g"), pid=7),  # keep
        inventory=inventory("alpha", "beta", "gamma", "d", "e", "f", "g"),
    )
    assert plan_text(fleet, obs) == "\n".join([
        "gamma reclaim pid_dead", "e adopt started_by_hand", "beta kill wedged", "gamma spawn first_apply",
        "alpha replace spec_changed (begin)", "d drain desired_stopped (begin)", "f wait suspended",
        "e keep running @+85.05", "g keep running @+85.05"])


def test_plan_value_helpers():
    fleet = fleet_spec(A, B, C)
    obs = observed(observation("alpha", verdict="dead"), running(B, pid=2),
                   observation("gamma", history=crashed("gamma", failures=3, at=NOW)))
    p = make_plan(fleet, obs)
    assert plan_text(fleet, obs) == "alpha reclaim pid_dead\nalpha spawn first_apply\ngamma spawn crashed @+4\n" \
                                    "beta keep running @+85.05"
    assert p.counts() == {"spawn": 2, "replace": 0, "drain": 0, "kill": 0, "adopt": 0, "update": 0, "reclaim": 1,
                          "keep": 1, "wait": 0, "conflict": 0}
    assert [a.kind for a in p.changes] == ["reclaim", "spawn", "spawn"]
    assert not p.in_sync
    assert [a.render() for a in p.executable(NOW)] == ["alpha reclaim pid_dead"]  # records first, on their own
    assert p.next_deadline(NOW) == NOW + 4
    assert p.next_deadline(NOW + 10) == math.ceil(NOW + 85.05)  # beta's heartbeat deadline, at a whole second
    assert p.next_deadline(NOW + 100) is None


def test_executable_without_record_fixes_runs_everything_due():
    obs = observed(running(A, heartbeat_at=NOW - 500), observation("gamma", history=crashed("gamma", failures=3,
                                                                                            at=NOW)))
    p = make_plan(fleet_spec(A, B, C), obs)
    assert [f"{a.profile} {a.kind}" for a in p.executable(NOW)] == ["alpha kill", "beta spawn"]
    assert [f"{a.profile} {a.kind}" for a in p.executable(NOW + 5)] == ["alpha kill", "beta spawn", "gamma spawn"]


def test_in_sync():
    p = make_plan(ONE, observed(running(A)))
    assert p.in_sync and p.changes == () and p.executable(NOW) == ()


def test_action_steps_and_symbols():
    assert Action("replace", "a", "spec_changed").steps == ("drain", "spawn")
    assert Action("kill", "a", "wedged").steps == ("kill",)
    assert Action("adopt", "a", "record_missing").steps == ()


def test_the_vocabulary_is_closed_and_keeps_its_text():
    action = Action("spawn", "a", "crashed")
    assert action.kind is Kind.SPAWN and action.reason is Reason.CRASHED
    assert json.dumps({"kind": action.kind, "reason": action.reason}) == '{"kind": "spawn", "reason": "crashed"}'
    with pytest.raises(ValueError):
        Action("spwan", "a", "crashed")
    with pytest.raises(ValueError):
        Action("spawn", "a", "crashd")
    assert Reason.carried("forced") is Reason.FORCED
    assert Reason.carried(None) is Reason.DRAINING and Reason.carried("from a newer version") is Reason.DRAINING
    assert {k: v for k, v in SYMBOLS.items() if v == "~"} == {"adopt": "~", "update": "~", "reclaim": "~"}


def test_render_format():
    assert Action("spawn", "alpha", "crashed", not_before=1234.5).render() == "alpha spawn crashed @1234.5"
    assert Action("drain", "alpha", "desired_stopped", stage="begin").render() == "alpha drain desired_stopped (begin)"
    assert Plan(actions=(Action("keep", "a", "running"), Action("keep", "b", "running"))).render() == (
        "a keep running\nb keep running")


def test_render_keeps_not_before_exact_for_real_timestamps():
    early = Action("spawn", "alpha", "crashed", not_before=NOW + 1).render()
    late = Action("spawn", "alpha", "crashed", not_before=NOW + 64).render()
    assert early != late
    assert early == "alpha spawn crashed @1700000001"


def test_a_native_unit_under_take_over_or_released_is_no_conflict():
    for obs in (handover("draining", process=units_gateway(), native_service=NATIVE),
                observation("alpha", process=units_gateway(), native_service=NATIVE, history=RELEASED)):
        p = make_plan(ONE, observed(obs))
        assert not [c for c in p.checks if c.code == "owned_by_native_service"], p.checks
        assert all(a.kind not in ("conflict", "adopt", "drain", "kill", "spawn") for a in p.actions), p.render()
    released = make_plan(ONE, observed(observation("alpha", native_service=NATIVE, history=RELEASED)))
    assert released.actions[0].message == ("released to hermes-gateway-alpha.service; `hermes-fleet takeover alpha` "
                                           "takes it back")
    waiting = make_plan(ONE, observed(handover("draining")))
    assert waiting.actions[0].message == "taking over from hermes-gateway-alpha.service: draining"


def test_a_take_over_never_touches_a_gateway_that_is_not_the_fleets_in_any_state():
    from fleet.store.takeovers import PHASES
    for state in PHASES:
        for kind in ("takeover", "release"):
            # even a gateway whose heartbeat is long stale (a wedge the fleet would kill if it were its own)
            p = make_plan(ONE, observed(handover(state, kind=kind, process=units_gateway(), heartbeat_at=NOW - 1000)))
            touching = [a for a in p.actions if a.kind in ("adopt", "drain", "kill", "replace", "spawn")]
            assert not touching, (state, kind, p.render())


def test_no_adoption_of_a_process_owned_by_a_native_service():
    obs = observed(observation("alpha", process=live(A, source="cmdline"), native_service=NATIVE))
    assert plan_text(ONE, obs) == "alpha conflict owned_by_native_service"


def test_messages_name_the_cause():
    p = make_plan(ONE, observed(observation("alpha", history=crashed("alpha", code=3, failures=2, at=NOW))))
    assert p.actions[0].message == "exited 3; restart 2"
    p = make_plan(ONE, observed(observation("alpha", history=crashed(
        "alpha", code=78, klass="fatal_config", failed_spec_hash=A.spec_hash, failed_reason="token in use"))))
    assert p.actions[0].message == ("exit 78: configuration conflict (token in use); not retried until the spec "
                                    "changes or `hermes-fleet start alpha`")
    p = make_plan(ONE, observed(running(A, heartbeat_at=NOW - 200)))
    assert p.actions[0].message == "heartbeat 200s old (limit 90s)"


def test_plan_does_not_mutate_its_inputs():
    want = desired(fleet_spec(A, B), previous={"alpha": A})
    obs = observed(running(A, spec_hash=OLD_HASH), observation("beta", verdict="dead"),
                   inventory=inventory("alpha", "beta"))
    before = (dataclasses.astuple(want.spec), dict(want.previous), dict(obs.profiles), obs.inventory)
    make_plan(want, obs)
    assert before == (dataclasses.astuple(want.spec), dict(want.previous), dict(obs.profiles), obs.inventory)


# -- keep carries the heartbeat deadline (the controller wakes then) -----------------------------

@pytest.mark.parametrize("spec, started_ago, heartbeat_ago, deadline", [
    (A, 3600.0, 5.0, 85.05),  # heartbeat 5 s old, stale after 90 s
    (A, 30.0, None, 120.05),  # fresh, no heartbeat yet: startup grace 60 s + 90 s, from the start
    (A, 30.0, 1.0, 30.05),  # fresh with a heartbeat: not judged before the grace ends
    (A, 100.0, 80.0, 10.05),  # heartbeat 80 s ago (20 s after the start), past the grace
    (profile_spec("alpha", driver="process"), 3600.0, None, None),  # process driver without heartbeat: never
    (profile_spec("alpha", driver="process"), 30.0, None, 30.05),  # once, at the grace's end: has it begun to beat?
    (profile_spec("alpha", driver="process"), 3600.0, 5.0, 85.05),
])
def test_keep_wakes_at_the_heartbeat_deadline(spec, started_ago, heartbeat_ago, deadline):
    obs = observed(running(spec, started_at=NOW - started_ago,
                           heartbeat_at=None if heartbeat_ago is None else NOW - heartbeat_ago))
    (action,) = make_plan(fleet_spec(spec), obs).actions
    assert (action.kind, action.reason) == ("keep", "running")
    if deadline is None:
        assert action.not_before is None
    else:
        assert action.not_before == pytest.approx(NOW + deadline)


def test_gateways_started_together_share_the_look_at_their_heartbeat_deadlines():
    """A cold start spreads the grace ends of its gateways over a fraction of a second: one look for them all,
    at the next whole second, not one each. A backoff's deadline stays exact (a respawn waits for it)."""
    started = [profile_spec(name, driver="process") for name in ("alpha", "beta", "gamma", "delta")]
    spread = [NOW - 30.0 + 0.15 * i for i in range(4)]  # their graces end 0.15 s apart
    obs = observed(*(running(spec, pid=10 + i, started_at=at, heartbeat_at=None)
                     for i, (spec, at) in enumerate(zip(started, spread, strict=True))))
    p = make_plan(fleet_spec(*started), obs)
    ends = sorted(a.not_before for a in p.actions)
    assert ends == pytest.approx([at + 60.05 for at in spread])  # each keep says its own deadline
    wake = p.next_deadline(NOW)
    assert wake == math.ceil(ends[0]) == NOW + 31 and all(end <= wake for end in ends)  # one look for all four
    crashed_obs = observed(observation("gamma", history=crashed("gamma", failures=3, at=NOW)))
    assert make_plan(fleet_spec(C), crashed_obs).next_deadline(NOW) == NOW + 4  # not rounded


def test_at_the_heartbeat_deadline_the_keep_becomes_a_kill():
    obs = observed(running(A, heartbeat_at=NOW - 5.0))
    deadline = make_plan(ONE, obs).actions[0].not_before
    assert make_plan(ONE, dataclasses.replace(obs, observed_at=deadline), deadline).render() == "alpha kill wedged"
    just_before = deadline - 0.1
    assert make_plan(ONE, obs, just_before).actions[0].kind == "keep"
