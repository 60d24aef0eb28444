"""Small builders for the planner's inputs: specs, observations, histories, inventory.

Every builder takes keyword overrides and fills in the rest with values that mirror the
schema's defaults, so a test states only what matters to it:

    fleet = fleet_spec(profile_spec("alpha"), profile_spec("beta", desired="stopped"))
    obs = observed(observation("alpha", process=live(fleet.profile("alpha"))), now=NOW)
    assert plan_text(fleet, obs) == "alpha keep running\\nbeta keep stopped"

Times are plain floats (seconds); NOW is a fixed instant, so nothing reads the clock.
"""

from __future__ import annotations

from pathlib import Path

import dataclasses

from fleet.maintenance.model import MaintenanceRequest
from fleet.observe.hermes_files import GatewayStatus
from fleet.observe.model import LiveProcess, Observed, Orphan, ProfileObservation, WriteRefusal
from fleet.plan.model import Desired, Plan
from fleet.plan.planner import plan
from fleet.spec.model import (
    DRIVER_HERMES, DrainPolicy, FleetSpec, HealthPolicy, MaintenancePolicy, MaintenanceWindow,
    ProfileSpec, RestartPolicy,
)
from fleet.store.db import InventoryEntry, OperatorRequest, ProfileHistory
from fleet.store.layout import StateDir
from fleet.store.records import PidRecord
from fleet.store.takeovers import Takeover

NOW = 1_700_000_000.0
EPOCH = 3
ROOT = "/srv/hermes"
DEFAULT_BACKOFF = (1.0, 2.0, 4.0, 9.0, 16.0, 25.0, 36.0, 49.0, 64.0)
OLD_HASH = "v1:" + "0" * 64

_HERMES_ENV = (
    ("HERMES_GATEWAY_EXTERNAL_SUPERVISOR", "1"),
    ("HERMES_GATEWAY_MAX_STARTS", "0"),
    ("HERMES_HOME", ROOT),
    ("HERMES_S6_SUPERVISED_CHILD", "1"),
    ("HERMES_SUPERVISED_CHILD", "1"),
    ("NO_PROXY", "127.0.0.1,localhost,::1"),
    ("no_proxy", "127.0.0.1,localhost,::1"),
)


# -- desired ---------------------------------------------------------------------------------

def profile_spec(name: str, *, driver: str = DRIVER_HERMES, command: tuple[str, ...] | None = None,
                 cwd: str | None = None, env: dict[str, str] | None = None, desired: str = "running",
                 suspend: bool = False, prune: bool = True, stagger: float = 2.5, policy: str = "always",
                 backoff: tuple[float, ...] = DEFAULT_BACKOFF, cap: float = 64.0, reset_after: float = 60.0,
                 drain_timeout: float = 60.0, heartbeat_stale: float = 90.0, startup_grace: float = 60.0,
                 idle: float = 1200.0, max_concurrent: int = 1, windows: tuple[MaintenanceWindow, ...] = (),
                 match: str | None = None) -> ProfileSpec:
    """An effective spec as the loader would build it (hermes driver by default)."""
    if driver == DRIVER_HERMES:
        base_command = ("hermes",) + (() if name == "default" else ("-p", name)) + \
            ("gateway", "run", "--external-supervisor")
        base_env = dict(_HERMES_ENV)
        home = ROOT if name == "default" else f"{ROOT}/profiles/{name}"
        update = ("hermes", "update")
    else:
        base_command = ("/srv/fleet/gateway.sh", name)
        base_env = {"NO_PROXY": "127.0.0.1,localhost,::1", "no_proxy": "127.0.0.1,localhost,::1"}
        home = ""
        update = ()
    base_env.update(env or {})
    return ProfileSpec(
        name=name, driver=driver, command=tuple(command or base_command), cwd=cwd or (ROOT if driver == DRIVER_HERMES
                                                                                      else "/srv/fleet"),
        env=tuple(sorted(base_env.items())), hermes_home=home, desired=desired, suspend=suspend, prune=prune,
        stagger=stagger,
        restart=RestartPolicy(policy=policy, backoff=tuple(backoff), cap=cap, reset_after=reset_after),
        drain=DrainPolicy(timeout=drain_timeout),
        health=HealthPolicy(heartbeat_stale=heartbeat_stale, startup_grace=startup_grace),
        maintenance=MaintenancePolicy(idle=idle, max_concurrent=max_concurrent, update_command=update,
                                      windows=tuple(windows)),
        match=match,
    )


def with_changes(spec: ProfileSpec, **changes) -> ProfileSpec:
    """A copy of a spec with fields replaced (the spec_hash is recomputed)."""
    return dataclasses.replace(spec, **changes)


def fleet_spec(*profiles: ProfileSpec | str, stagger: float = 2.5, max_concurrent: int = 1,
               name: str = "default") -> FleetSpec:
    specs = [profile_spec(p) if isinstance(p, str) else p for p in profiles]
    return FleetSpec(name=name, stagger=stagger, max_concurrent_maintenance=max_concurrent,
                     profiles=tuple(sorted(specs, key=lambda p: p.name)), hermes_root=ROOT,
                     default_state_dir=f"{ROOT}/gateway")


def desired(fleet: FleetSpec, *, previous: dict[str, ProfileSpec] | None = None, prune: bool = True,
            allow_empty: bool = False, generation: int = 2) -> Desired:
    return Desired(spec=fleet, generation=generation, prune=prune, allow_empty=allow_empty,
                   previous=dict(previous or {}))


# -- observed --------------------------------------------------------------------------------

def history(name: str, **fields) -> ProfileHistory:
    return ProfileHistory(name, **fields)


def crashed(name: str, *, code: int = 1, at: float = NOW - 0.5, failures: int = 1, klass: str = "crash",
            **fields) -> ProfileHistory:
    """History of a profile whose last process exited unexpectedly at `at`."""
    return ProfileHistory(name, restarts=failures, failures=failures, last_start=at - 100.0, last_exit_code=code,
                          last_exit_at=at, last_exit_class=klass, **fields)


def live(spec: ProfileSpec | str, *, pid: int = 4242, started_at: float = NOW - 3600.0, source: str = "record",
         spec_hash: str | type(...) | None = ..., record_epoch: int | type(...) | None = ...,
         flag: bool = True, cmdline: tuple[str, ...] | None = None) -> LiveProcess:
    """A live process that passed identity. By default: ours (from our record, this epoch), running the spec."""
    if isinstance(spec, str):
        spec = profile_spec(spec)
    if spec_hash is ...:
        spec_hash = spec.spec_hash if source == "record" else None
    if record_epoch is ...:
        record_epoch = EPOCH if source == "record" else None
    return LiveProcess(pid=pid, start_ticks=int(started_at * 100), create_time=started_at,
                       cmdline=tuple(cmdline or spec.command), started_at=started_at, spec_hash=spec_hash,
                       source=source, record_epoch=record_epoch, external_supervisor_flag=flag)


def pid_record(name: str, *, pid: int = 4242, started_at: float = NOW - 3600.0, spec_hash: str | None = None,
               epoch: int = EPOCH) -> PidRecord:
    return PidRecord(profile=name, pid=pid, start_ticks=int(started_at * 100), create_time=started_at,
                     spec_hash=spec_hash, started_at=started_at, controller_pid=100, epoch=epoch)


def status(state: str = "running", active: int | None = 0, updated_at: float | None = NOW - 5.0,
           exit_reason: str | None = None, pid: int | None = None) -> GatewayStatus:
    """Hermes' gateway_state.json as read; `pid` is the process that wrote it (None: not named)."""
    return GatewayStatus(state=state, active=active, updated_at=updated_at, exit_reason=exit_reason, pid=pid)


def restart_request(profile: str, *, kind: str = "restart", created_at: float = NOW - 1.0, id: int = 1,
                    requested_by: str | None = "alice") -> OperatorRequest:
    return OperatorRequest(id=id, profile=profile, kind=kind, created_at=created_at, requested_by=requested_by,
                           state="pending")


def maintenance_request(profile: str, *, action: str = "restart", id: int = 7, created_at: float = NOW - 60.0,
                        now: bool = False, idle_seconds: float | None = None, not_before: float | None = None,
                        state: str = "pending", update_finished: float | None = None,
                        reasons: tuple[str, ...] = ("security fix",)) -> MaintenanceRequest:
    """An open maintenance request (restart or update) as the store returns it."""
    return MaintenanceRequest(id=id, profile=profile, action=action, reasons=reasons, requested_by="ops",
                              idle_seconds=idle_seconds, now=now, not_before=not_before, deadline=None, state=state,
                              waiting_on=None, created_at=created_at, updated_at=created_at, started_at=None,
                              finished_at=None, outcome=None, update_started=None, update_finished=update_finished,
                              update_exit=None, update_output=None)


def observation(name: str, *, process: LiveProcess | None = None, verdict: str | None = None,
                record: PidRecord | type(...) | None = ..., record_problem: str | None = None,
                history: ProfileHistory | None = None, heartbeat_at: float | type(...) | None = ...,
                status: GatewayStatus | None = None, native_service: str | None = None,
                request: OperatorRequest | None = None, drain_file: bool = False,
                takeover: Takeover | None = None, heartbeat_blocked: WriteRefusal | None = None) -> ProfileObservation:
    """One profile's observation, consistent the way the observer builds it:

    - a process from our record comes with that record (verdict "alive");
    - verdict dead/reused/foreign/unrelated names a record whose pid is not (or no longer) ours;
    - verdict corrupt has no record, only a problem.
    A live process gets a fresh heartbeat unless `heartbeat_at` says otherwise.
    """
    if verdict is None:
        verdict = "alive" if process is not None and process.source == "record" else "none"
    if record is ...:
        if verdict == "alive" and process is not None:
            record = pid_record(name, pid=process.pid, started_at=process.started_at, spec_hash=process.spec_hash,
                                epoch=process.record_epoch if process.record_epoch is not None else EPOCH)
        elif verdict in ("dead", "reused", "foreign", "unrelated"):
            record = pid_record(name, pid=3131, started_at=NOW - 7200.0)
        else:
            record = None
    if record_problem is None:
        record_problem = {
            "reused": f"record names pid {record.pid if record else 0}, which is now another program",
            "foreign": f"record names pid {record.pid if record else 0}, which belongs to another user",
            "unrelated": f"record names pid {record.pid if record else 0}, which is not this profile's gateway",
            "corrupt": "not valid JSON",
        }.get(verdict)
    if heartbeat_at is ...:
        heartbeat_at = NOW - 5.0 if process is not None else None
    return ProfileObservation(name=name, record=record, record_problem=record_problem, record_verdict=verdict,
                              process=process, status=status, heartbeat_at=heartbeat_at,
                              heartbeat_blocked=heartbeat_blocked, drain_file=drain_file, native_service=native_service, history=history or ProfileHistory(name),
                              restart_request=request, takeover=takeover)


def takeover_row(profile: str, state: str, *, kind: str = "takeover", id: int = 3,
                 unit: str = "hermes-gateway-alpha.service") -> Takeover:
    """An open take-over (or release) of a profile's native unit, as the store returns it."""
    return Takeover(id=id, profile=profile, kind=kind, home=f"/srv/hermes/profiles/{profile}", state=state,
                    requested_by="ops@host pid 1", created_at=NOW - 30.0, updated_at=NOW - 1.0, finished_at=None,
                    units=({"name": unit, "manager": "systemd-user", "active": True, "enabled": True},),
                    gateway_pid=5151, gateway_start=None, deadline=None, stop_sent=None, started_units=(),
                    failures=0, detail=None, outcome=None, error=None, epoch=EPOCH)


def running(spec: ProfileSpec, **kw) -> ProfileObservation:
    """Shorthand: the spec's own process, ours, healthy."""
    proc_kw = {k: kw.pop(k) for k in ("pid", "started_at", "source", "spec_hash", "record_epoch", "flag")
               if k in kw}
    return observation(spec.name, process=live(spec, **proc_kw), **kw)


def inventory(*names: str, state: str = "active", prune: bool = True, first: int = 1,
              last: int = 1) -> tuple[InventoryEntry, ...]:
    return tuple(InventoryEntry(name=n, first_generation=first, last_generation=last, state=state, prune=prune)
                 for n in names)


def observed(*observations: ProfileObservation, now: float = NOW, epoch: int = EPOCH,
             inventory: tuple[InventoryEntry, ...] = (), orphans: tuple[Orphan, ...] = (),
             last_spawn_at: float | None = None, maintenance: tuple = ()) -> Observed:
    kwargs = {"maintenance": tuple(maintenance)} if maintenance else {}
    return Observed(observed_at=now, epoch=epoch, profiles={o.name: o for o in observations},
                    inventory=tuple(inventory), orphans=tuple(orphans), last_spawn_at=last_spawn_at, **kwargs)


# -- planning --------------------------------------------------------------------------------

def make_plan(fleet: FleetSpec | Desired, obs: Observed, now: float = NOW) -> Plan:
    want = fleet if isinstance(fleet, Desired) else desired(fleet)
    return plan(want, obs, now)


def plan_text(fleet: FleetSpec | Desired, obs: Observed, now: float = NOW) -> str:
    """The plan's actions as Action.render() lines, with `not_before` shown relative to `now`
    (`@+2.5`), so tables stay readable whatever the epoch."""
    return render_relative(make_plan(fleet, obs, now), now)


def render_relative(p: Plan, now: float = NOW) -> str:
    lines = []
    for a in p.actions:
        line = dataclasses.replace(a, not_before=None).render()
        if a.not_before is not None:
            line += f" @+{a.not_before - now:g}"
        lines.append(line)
    return "\n".join(lines)


def recorded_state(manifest: Path, root: Path, revision: dict | None = None) -> StateDir:
    """A state directory at `root` whose one applied generation is `manifest`, with no controller."""
    from fleet.spec.codec import fleet_to_dict
    from fleet.spec.hashing import canonical_json
    from fleet.spec.load import load_manifest
    from fleet.store.db import Store
    from fleet.store.layout import ensure_state_dir

    loaded = load_manifest(manifest)
    state = StateDir(root)
    ensure_state_dir(state)
    store = Store(state.db)
    try:
        store.record_generation(loaded.digest, canonical_json(fleet_to_dict(loaded.spec)),
                                {p.name: p.prune for p in loaded.spec.profiles}, revision or {"revision": "test"},
                                prune=True)
    finally:
        store.close()
    return state

