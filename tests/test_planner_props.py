"""Planner properties (hypothesis), over generated fleets and observations that are consistent
the way the observer builds them:

- idempotence / convergence: applying a plan's effects to Observed (with a small simulator of
  the executor and the processes) and replanning reaches a plan with nothing left to do now, and
  no action survives its own effect;
- never spawn beside a live identity;
- never signal (drain, kill, replace) a process that failed identity;
- a Hermes gateway's planned stop follows only its answer to the drain: idle under the drain;
- determinism: same inputs (in any dict order) -> identical Plan and Plan.render();
- sibling independence: changing one profile's observation never changes another's action kind
  or reason, except through stagger (not_before) and the maintenance budget.
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factories import (
    EPOCH, NOW, OLD_HASH, desired, fleet_spec, history, inventory, live, observation, observed, pid_record,
    profile_spec, render_relative, restart_request, status, takeover_row,
)
from fleet.observe.model import Observed, ProfileObservation
from fleet.plan.model import KIND_ORDER, RECORD_KINDS, Desired, Plan
from fleet.plan.planner import plan
from fleet.store.db import InventoryEntry, ProfileHistory
from fleet.store.takeovers import FLEET, PHASES

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
NAMES = ("alpha", "beta", "default", "delta", "gamma")
SIGNALS = ("drain", "kill", "replace")
EXIT_CLASSES = (None, "crash", "killed", "unknown", "clean", "restart_now", "fatal_config", "startup_failed",
                "planned")


# ============================================================================================
# strategies (few draws each: choices come from prebuilt tables, which keeps every property fast)
# ============================================================================================

def _spec_variants(name: str) -> list:
    out = []
    for driver in ("hermes", "process"):
        for want in ("running", "stopped"):
            for policy in ("always", "on-failure", "never"):
                for stagger in (0.0, 2.5, 10.0):
                    for env in ({}, {"LOG_LEVEL": "debug"}):
                        out.append(profile_spec(name, driver=driver, desired=want, policy=policy, stagger=stagger,
                                                env=env))
    # the usual case more often (hermes, running); suspended now and then
    usual = [s for s in out if s.driver == "hermes" and s.desired == "running"]
    suspended = [dataclasses.replace(s, suspend=True) for s in out[::8]]
    return usual * 4 + out + suspended


SPECS = {n: _spec_variants(n) for n in NAMES}
EXIT_CODES = {"crash": 1, "killed": -9, "unknown": None, "clean": 0, "restart_now": 75, "fatal_config": 78,
              "startup_failed": 0, "planned": 0}
EXITS = [None] * 100 + [(klass, ago, failures) for klass in EXIT_CLASSES if klass
                       for ago in (0.0, 0.5, 3.0, 30.0, 1000.0) for failures in (0, 1, 3, 12)]
DRAINS = [None] * 300 + [(intent, same_pid, started, deadline, signalled, reason)
                        for intent in ("replace", "stop", "prune") for same_pid in (True, False)
                        for started in (1.0, 10.0) for deadline in (-1.0, 0.0, 50.0) for signalled in (None, 1.0)
                        for reason in (None, "spec_changed", "desired_stopped")]
# (record verdict, where the live process was found: None = no live process)
IDENTITIES = [("none", None)] * 3 + [("alive", "record")] * 8 + [
    ("none", "hermes_pidfile"), ("none", "env_marker"), ("none", "cmdline"), ("none", "match"),
    ("dead", None), ("dead", "cmdline"), ("reused", None), ("reused", "env_marker"), ("foreign", None),
    ("unrelated", None), ("unrelated", "cmdline"), ("corrupt", None), ("corrupt", "hermes_pidfile")]
# Written at NOW - 5 unless said otherwise: between the drains begun at NOW - 10 and NOW - 1 (DRAINS).
STATUSES = [None, status("running", 0), status("running", 2), status("draining", 0), status("stopped", 0),
            status("starting", None), status("running", 0, NOW - 0.5), status("draining", 0, NOW - 0.5),
            status("draining", 2, NOW - 0.5), status("draining", None, NOW - 0.5),
            status("stopped", 0, NOW - 0.5, pid=1)]


def _desired(choice, spec_hash: str):
    return spec_hash if choice == "desired" else choice


# every strategy built once: building one per draw costs more than the planner itself
_LAST_START_AGO = st.sampled_from([None, 5.0, 500.0, 5000.0])
_EXIT = st.sampled_from(EXITS)
_FAILED_HASH = st.sampled_from(["desired", OLD_HASH, None])  # "desired": the spec's own hash
_DRAIN = st.sampled_from(DRAINS)
_OVERRIDE = st.sampled_from([None] * 8 + ["stopped", "running"])
_IDLE_AGO = st.sampled_from([None, 10.0, 5000.0])
_IDENTITY = st.sampled_from(IDENTITIES)
_RECORD_EPOCH = st.sampled_from([EPOCH, EPOCH, EPOCH - 1])
_RUNNING_HASH = st.sampled_from(["desired", "desired", OLD_HASH, None])
_STARTED_AGO = st.sampled_from([10.0, 100.0, 3600.0])
_ARGV_FLAG = st.sampled_from([True, True, True, False])
_HEARTBEAT = st.sampled_from([None, NOW - 5.0, NOW - 500.0, "before_start"])
_REQUEST = st.sampled_from([None] * 6 + [("restart", 1.0), ("restart", 5000.0), ("force_restart", 1.0)])
_NATIVE = st.sampled_from([None] * 9 + ["/etc/systemd/user/hermes-gateway.service"])
# A take-over or release of the profile's native unit, in any of its open states (mostly none).
_TAKEOVER = st.one_of(st.none(), st.none(), st.none(), st.tuples(st.sampled_from(sorted(PHASES)),
                                                                 st.sampled_from(["takeover", "release"])))
_STATUS = st.sampled_from(STATUSES)
_NAME = st.sampled_from(NAMES)
_SPEC = {n: st.sampled_from(SPECS[n]) for n in NAMES}
_IN_SPEC = st.sampled_from([1, 1, 1, 1, 0])
_BUDGET = st.sampled_from([1, 1, 2, 1000])
_WHERE = st.sampled_from(["both", "both", "observed", "inventory"])
_INVENTORY_ENTRY = st.sampled_from([("active", True), ("active", True), ("removing", True), ("active", False)])
_PREVIOUS = st.sampled_from([None, "same", "policy"])
_FLEET_FLAGS = st.sampled_from(  # (prune, allow_empty, last_spawn_at)
    [(p, a, t) for p in (True, True, False) for a in (False, True) for t in (None, NOW - 1.0, NOW - 100.0)])


@st.composite
def histories(draw, name: str, pid: int | None, spec_hash: str):
    fields: dict = {}
    last_start = draw(_LAST_START_AGO)
    if last_start is not None:
        fields["last_start"] = NOW - last_start
    exit_ = draw(_EXIT)
    if exit_ is not None:
        klass, ago, failures = exit_
        fields.update(last_exit_class=klass, last_exit_code=EXIT_CODES[klass], last_exit_at=NOW - ago,
                      failures=failures)
        if klass in ("fatal_config", "startup_failed"):
            failed = draw(_FAILED_HASH)
            fields["failed_spec_hash"] = spec_hash if failed == "desired" else failed
    drain = draw(_DRAIN)
    if drain is not None:
        intent, same_pid, started, deadline, signalled, reason = drain
        fields.update(drain_intent=intent, drain_reason=reason, drain_pid=pid if same_pid and pid else 1,
                      drain_started=NOW - started, drain_deadline=NOW + deadline,
                      drain_signalled=None if signalled is None else NOW - signalled)
    fields["override_desired"] = draw(_OVERRIDE)
    idle = draw(_IDLE_AGO)
    if idle is not None:
        fields["idle_since"] = NOW - idle
    return history(name, **fields)


@st.composite
def observations(draw, name: str, index: int, spec_hash: str) -> ProfileObservation:
    """One profile's observation, consistent the way the observer builds it. Pids are unique per
    profile: the live process is 1000+index, a stale record names 3000+index."""
    pid = 1000 + index
    verdict, source = draw(_IDENTITY)
    process = None
    if source is not None:
        process = live(name, pid=pid, source=source,
                       record_epoch=draw(_RECORD_EPOCH) if source == "record" else None,
                       spec_hash=_desired(draw(_RUNNING_HASH), spec_hash),
                       started_at=NOW - draw(_STARTED_AGO),
                       flag=draw(_ARGV_FLAG))
    kwargs = {}
    if verdict in ("dead", "reused", "foreign", "unrelated"):
        kwargs["record"] = pid_record(name, pid=3000 + index, started_at=NOW - 7200.0)
    heartbeat = None
    if process is not None:
        heartbeat = draw(_HEARTBEAT)
        if heartbeat == "before_start":
            heartbeat = process.started_at - 10.0
    request = draw(_REQUEST)
    if request is not None:
        request = restart_request(name, kind=request[0], created_at=NOW - request[1])
    native = draw(_NATIVE)
    handover = draw(_TAKEOVER)
    return observation(name, process=process, verdict=verdict,
                       history=draw(histories(name, process.pid if process else None, spec_hash)),
                       heartbeat_at=heartbeat, status=draw(_STATUS), native_service=native,
                       request=request, takeover=takeover_row(name, handover[0], kind=handover[1]) if handover else None,
                       **kwargs)


@st.composite
def worlds(draw, min_profiles: int = 1):
    """(Desired, Observed): a fleet over a few names, some desired, some only observed or inventoried."""
    names = sorted(draw(st.lists(_NAME, min_size=min_profiles, max_size=len(NAMES), unique=True)))
    spec_by_name = {n: draw(_SPEC[n]) for n in names if draw(_IN_SPEC)}
    fleet = fleet_spec(*spec_by_name.values(), max_concurrent=draw(_BUDGET))
    profiles = {}
    inv: list[InventoryEntry] = []
    for i, n in enumerate(names):
        spec_hash = spec_by_name[n].spec_hash if n in spec_by_name else OLD_HASH
        where = draw(_WHERE)
        if n in spec_by_name or where != "inventory":
            profiles[n] = draw(observations(n, i, spec_hash))
        if n in spec_by_name or where != "observed":
            state, prune = draw(_INVENTORY_ENTRY)
            inv.extend(inventory(n, state=state, prune=prune))
    previous = {}
    for n, s in spec_by_name.items():
        choice = draw(_PREVIOUS)
        if choice == "same":
            previous[n] = s
        elif choice == "policy":
            previous[n] = dataclasses.replace(s, stagger=s.stagger + 1.0)
    prune, allow_empty, last_spawn = draw(_FLEET_FLAGS)
    want = desired(fleet, previous=previous, prune=prune, allow_empty=allow_empty)
    obs = observed(*profiles.values(), inventory=tuple(inv), last_spawn_at=last_spawn)
    return want, obs


_RUNNING_SPEC = {n: st.sampled_from([x for x in SPECS[n] if x.desired == "running" and not x.suspend]) for n in NAMES}


@st.composite
def spawn_worlds(draw):
    """A fleet where nothing runs: every profile is about to be spawned, now or after its own
    backoff (the worlds that exercise the stagger)."""
    names = sorted(draw(st.lists(_NAME, min_size=1, max_size=len(NAMES), unique=True)))
    specs = [draw(_RUNNING_SPEC[n]) for n in names]
    obs = []
    for n in names:
        exit_ = draw(_EXIT)
        if exit_ is None or exit_[0] not in ("crash", "killed", "unknown", "clean", "restart_now", "planned"):
            obs.append(observation(n))
            continue
        klass, ago, failures = exit_
        obs.append(observation(n, history=history(n, last_start=NOW - 500.0, last_exit_class=klass,
                                                  last_exit_code=EXIT_CODES[klass], last_exit_at=NOW - ago,
                                                  failures=failures)))
    _, _, last_spawn = draw(_FLEET_FLAGS)
    return desired(fleet_spec(*specs)), observed(*obs, last_spawn_at=last_spawn)


# ============================================================================================
# a small simulator of the executor and the processes
# ============================================================================================

_CLEAR_DRAIN = dict(drain_intent=None, drain_reason=None, drain_started=None, drain_deadline=None,
                    drain_signalled=None, drain_pid=None)


class Sim:
    """Applies the effects of executed actions to (Desired, Observed), at one instant.

    Processes react at once: a drained, replaced or killed process exits, a spawned one runs
    the desired spec with our record. What the store would remember (history, inventory,
    last-applied specs, requests) is updated the way the executor does."""

    def __init__(self, want: Desired, obs: Observed, now: float):
        self.want, self.obs, self.now = want, obs, now
        self.next_pid = 50_000

    def get(self, name: str) -> ProfileObservation:
        return self.obs.profiles.get(name) or ProfileObservation(name=name, history=ProfileHistory(name))

    def put(self, ob: ProfileObservation, **obs_fields) -> None:
        profiles = dict(self.obs.profiles)
        profiles[ob.name] = dataclasses.replace(ob, **{k: v for k, v in obs_fields.items() if k != "observed"})
        self.obs = dataclasses.replace(self.obs, profiles=profiles, **obs_fields.get("observed", {}))

    def apply(self, actions) -> None:
        for a in actions:
            getattr(self, "do_" + a.kind)(a)

    def do_reclaim(self, a):
        ob = self.get(a.profile)
        rec = ob.record
        keep = rec is not None and ob.process is not None and ob.process.source == "record" and rec.pid == ob.process.pid
        self.put(ob, record=rec if keep else None, record_verdict="alive" if keep else "none", record_problem=None)

    def do_adopt(self, a):
        ob = self.get(a.profile)
        proc = dataclasses.replace(ob.process, source="record", record_epoch=self.obs.epoch)
        self.put(ob, process=proc, record=pid_record(a.profile, pid=proc.pid, started_at=proc.started_at,
                                                     spec_hash=proc.spec_hash, epoch=self.obs.epoch),
                 record_verdict="alive", record_problem=None)

    def do_update(self, a):
        ob = self.get(a.profile)
        spec = self.want.spec.profile(a.profile)
        if a.reason == "policy_changed":
            self.want = dataclasses.replace(self.want, previous={**self.want.previous, a.profile: spec})
        elif a.reason in ("removed_from_manifest", "prune_disabled"):
            inv = tuple(e for e in self.obs.inventory if e.name != a.profile)
            self.put(ob, history=dataclasses.replace(ob.history, **_CLEAR_DRAIN), observed={"inventory": inv})
        elif a.reason == "drain_complete":
            self.put(ob, history=dataclasses.replace(ob.history, **_CLEAR_DRAIN))
        else:
            raise AssertionError(f"unknown update: {a.render()}")

    def do_spawn(self, a):
        ob = self.get(a.profile)
        assert ob.process is None
        spec = self.want.spec.profile(a.profile)
        self.next_pid += 1
        proc = live(spec, pid=self.next_pid, started_at=self.now, source="record", spec_hash=spec.spec_hash,
                    record_epoch=self.obs.epoch)
        # Never put into the model below: a spawn there leaves the profile's history as it was.
        h = dataclasses.replace(  # noqa: F841
            ob.history, last_start=self.now, restarts=ob.history.restarts + 1, **_CLEAR_DRAIN)
        inv = self.obs.inventory
        if all(e.name != a.profile for e in inv):
            inv = inv + inventory(a.profile)
        self.want = dataclasses.replace(self.want, previous={**self.want.previous, a.profile: spec})
        self.put(ob, process=proc, record=pid_record(a.profile, pid=proc.pid, started_at=self.now,
                                                     spec_hash=spec.spec_hash, epoch=self.obs.epoch),
                 record_verdict="alive", record_problem=None, heartbeat_at=None, status=None, restart_request=None,
                 observed={"last_spawn_at": self.now, "inventory": inv})

    def _exit(self, a, ob, klass: str, **history_fields):
        assert ob.process is not None and ob.process.pid == a.pid
        h = dataclasses.replace(ob.history, last_exit_class=klass, last_exit_at=self.now,
                                last_exit_code=0 if klass == "planned" else -9, **history_fields)
        self.put(ob, process=None, record=None, record_verdict="none", record_problem=None, status=None,
                 heartbeat_at=None)
        return h

    def do_drain(self, a):
        ob = self.get(a.profile)
        intent = ob.history.drain_intent if ob.history.drain_pid == a.pid and ob.history.drain_intent else (
            "stop" if self.want.spec.profile(a.profile) is not None else "prune")
        h = self._exit(a, ob, "planned", drain_intent=intent, drain_pid=a.pid, drain_reason=a.reason)
        self.put(self.get(a.profile), history=h)

    def do_replace(self, a):
        ob = self.get(a.profile)
        intent = ob.history.drain_intent if ob.history.drain_pid == a.pid and ob.history.drain_intent else "replace"
        h = self._exit(a, ob, "planned", drain_intent=intent, drain_pid=a.pid, drain_reason=a.reason)
        self.put(self.get(a.profile), history=h)

    def do_kill(self, a):
        ob = self.get(a.profile)
        if a.reason == "wedged":
            h = self._exit(a, ob, "killed", failures=ob.history.failures + 1)
        else:  # drain_timeout or forced: we asked for the stop
            h = self._exit(a, ob, "planned")
        self.put(self.get(a.profile), history=h, restart_request=None if a.reason == "forced" else ob.restart_request)

    def do_keep(self, a):
        raise AssertionError("keep is never executed")

    do_wait = do_conflict = do_keep


def key(a) -> tuple:
    return (a.kind, a.profile, a.reason, a.stage)


# ============================================================================================
# properties
# ============================================================================================

@SETTINGS
@given(worlds())
def test_idempotence_converges_to_only_keep_and_wait(world):
    want, obs = world
    sim = Sim(want, obs, NOW)
    for _ in range(8):
        p = plan(sim.want, sim.obs, NOW)
        todo = p.executable(NOW)
        if not todo:
            break
        sim.apply(todo)
        after = plan(sim.want, sim.obs, NOW)
        # no action survives its own effect
        assert not {key(a) for a in todo} & {key(a) for a in after.executable(NOW)}, (p.render(), after.render())
    else:
        raise AssertionError(f"no convergence within 8 passes:\n{p.render()}")
    # what is left: keep/wait/conflict, or spawns scheduled for later (backoff, stagger)
    for a in p.actions:
        assert a.kind in ("keep", "wait", "conflict") or (a.kind == "spawn" and a.not_before is not None
                                                           and a.not_before > NOW), a.render()
    # and replanning the converged state gives the same plan
    assert plan(sim.want, sim.obs, NOW) == p


@SETTINGS
@given(worlds())
def test_record_fixes_are_idempotent(world):
    """Reclaim/adopt/update, applied once, are never planned again."""
    want, obs = world
    p = plan(want, obs, NOW)
    records = [a for a in p.actions if a.kind in RECORD_KINDS]
    sim = Sim(want, obs, NOW)
    sim.apply(records)
    again = plan(sim.want, sim.obs, NOW)
    assert not {key(a) for a in records} & {key(a) for a in again.actions if a.kind in RECORD_KINDS}


@SETTINGS
@given(worlds())
def test_never_spawn_beside_a_live_identity(world):
    want, obs = world
    for a in plan(want, obs, NOW).actions:
        if a.kind == "spawn":
            assert obs.get(a.profile).process is None, a.render()


@SETTINGS
@given(worlds())
def test_never_signal_a_process_that_failed_identity(world):
    want, obs = world
    untrusted_pids = {o.record.pid for o in obs.profiles.values()
                      if o.record is not None and o.record_verdict != "alive"}
    for a in plan(want, obs, NOW).actions:
        if a.kind in SIGNALS:
            proc = obs.get(a.profile).process
            assert proc is not None, a.render()
            assert a.pid == proc.pid, a.render()
            assert a.pid not in untrusted_pids, a.render()


@SETTINGS
@given(worlds())
def test_a_hermes_gateway_is_stopped_only_idle_under_its_drain(world):
    """Idle means idle under a drain (issue 16): the planned stop of a Hermes gateway (or of one whose spec is
    lost) follows only a state file that answers this drain: `draining` or `stopped`, written after the
    request by that very gateway, with no agent work left. Never `running` with 0 agents (API runs are not
    counted outside a drain), never an older file, never time alone."""
    want, obs = world
    for a in plan(want, obs, NOW).actions:
        if a.kind not in ("drain", "replace") or a.stage != "stop":
            continue
        spec = want.spec.profile(a.profile) or want.previous.get(a.profile)
        if spec is not None and spec.driver != "hermes":
            continue
        ob = obs.profiles[a.profile]
        st, h = ob.status, ob.history
        assert ob.process is not None and st is not None and h.drain_started is not None, a.render()
        assert st.state in ("draining", "stopped") and st.active == 0, (a.render(), st)
        assert st.updated_at is not None and st.updated_at >= h.drain_started, (a.render(), st, h.drain_started)
        assert st.pid in (None, ob.process.pid), (a.render(), st)


def test_every_state_file_a_hermes_drain_may_read_stops_only_when_it_answers_idle():
    """The same rule over every combination a drain can read (exhaustive, where the worlds above rarely
    meet one): each intent, drain begun 1 s or 30 s ago (past the old 5 s grace), every state, count, age
    and writer of the state file."""
    ages = {"unwritten": None, "before": -1.0, "after": +0.5}
    for intent, reason in (("stop", "desired_stopped"), ("replace", "maintenance"), ("prune", "removed_from_manifest")):
        spec = profile_spec("alpha", desired="stopped" if intent == "stop" else "running")
        fleet = fleet_spec() if intent == "prune" else fleet_spec(spec)
        want = desired(fleet, previous={"alpha": spec})
        for started in (1.0, 30.0):
            h = history("alpha", drain_intent=intent, drain_reason=reason, drain_pid=1000,
                        drain_started=NOW - started, drain_deadline=NOW + 30.0)
            for state in (None, "starting", "running", "degraded", "draining", "stopped", "startup_failed"):
                for active in (0, 1, None):
                    for age, offset in ages.items():
                        for writer in (None, 1000, 999):
                            st_ = None if state is None else status(
                                state, active, None if offset is None else NOW - started + offset, pid=writer)
                            ob = observation("alpha", process=live(spec, pid=1000), history=h, status=st_)
                            inv = inventory("alpha", state="removing" if intent == "prune" else "active")
                            [a] = plan(want, observed(ob, inventory=inv), NOW).actions
                            answered = (state in ("draining", "stopped") and active == 0 and age == "after"
                                        and writer in (None, 1000))
                            assert (a.stage == "stop") == answered, (intent, started, state, active, age, writer,
                                                                     a.render())
                            assert a.kind in ("drain", "replace", "wait"), a.render()


@SETTINGS
@given(worlds())
def test_a_native_unit_handed_over_is_never_touched_nor_spawned_beside(world):
    """While a take-over or release is under way, a process that is not positively the fleet's own (the unit's
    gateway passes Hermes' lock proof too) is never adopted or signalled, and nothing is spawned before the
    unit is stopped (the take-over's spawning state)."""
    want, obs = world
    for a in plan(want, obs, NOW).actions:
        o = obs.get(a.profile)
        if o.takeover is None or want.spec.profile(a.profile) is None or want.spec.profile(a.profile).suspend:
            continue
        fleets_own = o.process is not None and o.process.source in ("record", "env_marker")
        if a.kind in ("adopt",) + SIGNALS:
            assert fleets_own, (o.takeover.state, o.process, a.render())
        if a.kind == "spawn":
            assert o.takeover.phase == FLEET, (o.takeover.state, a.render())


@SETTINGS
@given(worlds())
def test_suspended_profiles_are_never_touched(world):
    want, obs = world
    suspended = {p.name for p in want.spec.profiles if p.suspend}
    for a in plan(want, obs, NOW).actions:
        if a.profile in suspended:
            assert a.kind not in ("spawn",) + SIGNALS, a.render()


@SETTINGS
@given(worlds())
def test_empty_fleet_guard(world):
    want, obs = world
    empty = dataclasses.replace(want, spec=dataclasses.replace(want.spec, profiles=()))
    p = plan(empty, obs, NOW)
    guarded = empty.prune and not empty.allow_empty and any(e.state == "active" for e in obs.inventory)
    assert (p.refusal is not None) == guarded
    if guarded:
        assert all(a.kind in RECORD_KINDS + ("keep",) for a in p.actions), p.render()


@SETTINGS
@given(worlds(), st.randoms(use_true_random=False))
def test_records_fixes_of_some_profiles_planned_alone_are_the_whole_plans(world, rnd):
    """plan(only=...) (a respawn after exits reclaims from it): each profile's records fixes are its own."""
    want, obs = world
    names = sorted(set(want.spec.names) | set(obs.profiles) | {e.name for e in obs.inventory})
    some = frozenset(rnd.sample(names, rnd.randint(0, len(names))))
    whole = [a for a in plan(want, obs, NOW).actions if a.kind in RECORD_KINDS and a.profile in some]
    alone = plan(want, obs, NOW, only=some)
    assert {a.profile for a in alone.actions} <= some
    assert [a for a in alone.actions if a.kind in RECORD_KINDS] == whole


@SETTINGS
@given(worlds(), st.randoms(use_true_random=False))
def test_determinism(world, rnd):
    want, obs = world
    first = plan(want, obs, NOW)
    assert plan(want, obs, NOW) == first
    # the same inputs in another order: dicts, inventory, fleet profiles
    items = list(obs.profiles.items())
    rnd.shuffle(items)
    inv = list(obs.inventory)
    rnd.shuffle(inv)
    shuffled_obs = dataclasses.replace(obs, profiles=dict(items), inventory=tuple(inv))
    prev = list(want.previous.items())
    rnd.shuffle(prev)
    shuffled_want = dataclasses.replace(want, previous=dict(prev))
    second = plan(shuffled_want, shuffled_obs, NOW)
    assert second.render() == first.render()
    assert second.actions == first.actions and second.refusal == first.refusal


@SETTINGS
@given(worlds())
def test_order_is_by_kind_phase_then_profile(world):
    want, obs = world
    actions = plan(want, obs, NOW).actions
    order = [(KIND_ORDER[a.kind], a.profile) for a in actions]
    assert order == sorted(order)


@SETTINGS
@given(worlds())
def test_one_decision_per_desired_profile(world):
    """Each desired profile gets at most one process-level decision, besides record fixes."""
    want, obs = world
    p = plan(want, obs, NOW)
    for spec in want.spec.profiles:
        mine = [a for a in p.actions if a.profile == spec.name]
        assert mine, spec.name
        decisions = [a for a in mine if a.kind not in RECORD_KINDS]
        assert len(decisions) <= 1, [a.render() for a in mine]


@SETTINGS
@given(worlds() | spawn_worlds())
def test_stagger_spacing(world):
    """Spawns are at least the stagger apart (in the order they start), never before the
    previous spawn plus the stagger, and never before now."""
    want, obs = world
    times = sorted(((a.not_before if a.not_before is not None else NOW), want.spec.profile(a.profile).stagger,
                    a.render()) for a in plan(want, obs, NOW).actions if a.kind == "spawn")
    previous = obs.last_spawn_at
    for at, _gap, text in times:
        assert at >= NOW, text
        if previous is not None:
            # several spawns at one instant only when their gaps allow it
            tied_gaps = [g for t, g, _ in times if t == at]
            assert at >= previous + min(tied_gaps) - 1e-6, text
        previous = at


@SETTINGS
@given(spawn_worlds() | worlds())
def test_a_spawn_waits_for_its_own_backoff_plus_at_most_the_stagger_of_the_others(world):
    """A sibling in a long backoff never holds a spawn back: a spawn starts no later than its own
    ready time (planned alone) plus one stagger gap per spawn scheduled no later than it."""
    want, obs = world
    p = plan(want, obs, NOW)
    spawns = [a for a in p.actions if a.kind == "spawn"]
    for a in spawns:
        solo_spec = dataclasses.replace(want.spec, profiles=(want.spec.profile(a.profile),))
        solo_obs = dataclasses.replace(obs, profiles={k: v for k, v in obs.profiles.items() if k == a.profile},
                                       inventory=tuple(e for e in obs.inventory if e.name == a.profile))
        alone = plan(dataclasses.replace(want, spec=solo_spec), solo_obs, NOW)
        own = next(b for b in alone.actions if b.profile == a.profile and b.kind == "spawn")
        own_time = own.not_before if own.not_before is not None else NOW
        max_gap = max(want.spec.profile(b.profile).stagger for b in spawns)
        at = a.not_before if a.not_before is not None else NOW
        earlier = sum(1 for b in spawns if (b.not_before if b.not_before is not None else NOW) <= at)
        assert at <= own_time + max_gap * earlier + 1e-6, (a.render(), own.render())


_CHANGE = st.sampled_from(["keep", "replace", "replace", "remove"])


@st.composite
def sibling_changes(draw):
    """A world, a target profile, and the same world with the siblings' observations changed:
    each sibling kept, replaced by another observation, or gone (changing them all at once is the
    stronger form of "changing one sibling never changes the target")."""
    want, obs = draw(worlds(min_profiles=2))
    names = sorted(set(obs.profiles) | set(want.spec.names) | {e.name for e in obs.inventory})
    target = draw(st.sampled_from(names))
    profiles = dict(obs.profiles)
    for i, sibling in enumerate(NAMES):
        if sibling == target:
            continue
        change = draw(_CHANGE)
        if change == "remove":
            profiles.pop(sibling, None)
        elif change == "replace":
            spec = want.spec.profile(sibling)
            profiles[sibling] = draw(observations(sibling, 10 + i, spec.spec_hash if spec else OLD_HASH))
    return want, obs, target, dataclasses.replace(obs, profiles=profiles)


def _decisions(p: Plan, name: str, budget_limited: bool) -> list[tuple]:
    out = []
    for a in p.actions:
        if a.profile != name:
            continue
        if budget_limited and ((a.kind == "wait" and a.reason == "budget_exhausted")
                               or (a.kind == "replace" and a.voluntary and a.stage == "begin")):
            out.append(("voluntary-replace-or-budget-wait", a.pid))  # the budget may couple these
            continue
        out.append((a.kind, a.reason, a.stage, a.pid))  # not_before left out: stagger may move it
    return out


@SETTINGS
@given(sibling_changes())
def test_sibling_independence(case):
    want, obs, target, changed = case
    budget_limited = want.spec.max_concurrent_maintenance < len(NAMES)
    before = _decisions(plan(want, obs, NOW), target, budget_limited)
    after = _decisions(plan(want, changed, NOW), target, budget_limited)
    assert before == after, target


@SETTINGS
@given(sibling_changes())
def test_sibling_independence_without_budget_pressure_is_exact(case):
    want, obs, target, changed = case
    want = dataclasses.replace(want, spec=dataclasses.replace(want.spec, max_concurrent_maintenance=1000))
    assert _decisions(plan(want, obs, NOW), target, False) == _decisions(plan(want, changed, NOW), target, False)


def test_simulator_smoke():
    """The simulator itself: a fresh fleet converges to running processes with staggered spawns."""
    want = desired(fleet_spec("a", "b"))
    sim = Sim(want, observed(), NOW)
    sim.apply(plan(sim.want, sim.obs, NOW).executable(NOW))
    p = plan(sim.want, sim.obs, NOW)
    assert render_relative(p) == "b spawn first_apply @+2.5\na keep running @+150.05"
    assert sim.obs.profiles["a"].process.spec_hash == want.spec.profile("a").spec_hash
