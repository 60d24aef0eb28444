"""Commands that change what runs: restart, stop and start of profiles, and `down` of the whole fleet."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.cli.common import EXIT_FAILED, FILE, STATE_DIR, fail, fleet_state, open_store, state_for, timeout_option
from fleet.cli.console import Exit, echo
from fleet.cli.declared import Arg, Opt, declare
from fleet.cli.controller_client import NO_CONTROLLER_HINT, running_controller, running_controller_pid, stop_controller
from fleet.platform.wake import send_wake
from fleet.platform import current_platform
from fleet.platform.base import ProcessInfo, wait_until_exited
from fleet.spec.markers import PROFILE_ENV
from fleet.spec.secrets import mask_argv
from fleet.store.db import Store, user_name
from fleet.store.layout import StateDir

if TYPE_CHECKING:
    from fleet.controller.status import ProfileStatus


def _need_profiles(state, names: list[str]) -> Store:
    store = open_store(state, write=True)
    from fleet.controller.desired import DesiredSource
    _, specs = DesiredSource(store).current()
    known = set(specs)
    unknown = [n for n in names if n not in known]
    if unknown:
        store.close()
        fail(f"unknown profile(s): {', '.join(unknown)}", hint="profiles: " + ", ".join(sorted(known)) if known
             else "apply a manifest first")
    return store


def _after_request(state, message: str) -> None:
    echo(message)
    if running_controller_pid(state) is None:
        echo(f"warning: no controller is running; the request waits durably. {NO_CONTROLLER_HINT}", err=True)
        raise Exit(EXIT_FAILED)
    send_wake(state)


@declare(
    Arg("profiles", "Profiles to restart.", required=True),
    Opt("force", ("--force",), "Kill at once instead of draining first."),
    STATE_DIR, FILE,
    Opt("wait", ("--wait",), "Wait until the new process runs.", negative=("--no-wait",)),
    Opt("timeout", ("--timeout",), "How long --wait waits, e.g. 90s, 3m."),
)
def restart(
    profiles: list[str],
    force: bool = False,
    state_dir: str | None = None,
    file: Path = Path("fleet.yaml"),
    wait: bool = True,
    timeout: str = "3m",
) -> None:
    """Restart profiles: drain (wait for active agents to finish), planned stop, respawn.
    A drain that outlasts the profile's drain timeout ends in a kill. `--force` kills at once.
    Only the named profiles are touched."""
    wait_for = timeout_option(timeout)  # before the request: a mistyped duration changes nothing
    state = state_for(state_dir, file)
    store = _need_profiles(state, profiles)
    released = [p for p in profiles if store.history(p).override_verb == "release"]
    if released:
        store.close()
        fail(f"released to its native unit, not the fleet's to restart: {', '.join(released)}",
             hint=f"`hermes-fleet takeover {' '.join(released)}` takes it back")
    try:
        ids = {p: store.add_request(p, "force_restart" if force else "restart") for p in profiles}
    finally:
        store.close()
    _after_request(state, "restart requested: " + ", ".join(f"{p} (#{i})" for p, i in ids.items()))
    if wait:
        _wait_requests(state, ids, wait_for)


def _wait_requests(state, ids: dict[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = dict(ids)
    while pending and time.monotonic() < deadline:
        store = Store(state.db, readonly=True)
        try:
            for name, rid in list(pending.items()):
                req = store.request(rid)
                if req is None or req.state != "pending":
                    echo(f"  {name}: restarted")
                    del pending[name]
        finally:
            store.close()
        time.sleep(0.1)
    if pending:
        echo("still waiting for: " + ", ".join(pending) + " (see `hermes-fleet status`)", err=True)
        raise Exit(EXIT_FAILED)


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


def _override_command(verb: str, desired: str | None, doing: str, doc: str):
    """`stop` and `start`: the operator's override of a profile's desired state, kept across applies."""
    def command(profiles: list[str], state_dir: str | None = None, file: Path = Path("fleet.yaml")) -> None:
        state = state_for(state_dir, file)
        _set_override(state, profiles, desired, verb)
        _after_request(state, f"{doing}: " + ", ".join(profiles))

    command.__name__, command.__doc__ = verb, doc
    return declare(Arg("profiles", f"Profiles to {verb}.", required=True), STATE_DIR, FILE)(command)


stop = _override_command("stop", "stopped", "stopping",
                         "Drain and stop profiles, and keep them stopped (across applies) until `start`.")
start = _override_command("start", None, "starting",
                          "Undo `stop`, and retry a profile that failed for good (exit 78, startup failure).")


@declare(STATE_DIR, FILE, Opt("timeout", ("--timeout",), "How long to wait for the drains."))
def down(state_dir: str | None = None, file: Path = Path("fleet.yaml"), timeout: str = "5m") -> None:
    """Drain every profile, then stop the controller. Nothing of the fleet keeps running.

    The fleet stays down, across controller restarts and reboots (a service's controller
    included), until `apply` brings it back, or `start P` brings back one profile."""
    wait_for = timeout_option(timeout)  # before the hold: a mistyped duration changes nothing
    state = fleet_state(state_dir, file)
    controller = running_controller(state)
    if controller is None:
        _refuse_live_gateways_without_controller(state)
        _hold_every_profile_down(state, None)
        echo("nothing runs; the fleet stays down until `apply` or `start`")
        return
    request = f"{os.getpid()}-{time.time_ns()}"  # the controller finishes this `down` (fleet/controller/down.py)
    _hold_every_profile_down(state, request)
    send_wake(state)
    deadline = time.monotonic() + wait_for
    pid: int | None = controller.pid
    if not _finished_by(state, controller, request, deadline):
        _overtaken_or_refused(state, request)  # an `apply` or `start` since, or a crash with gateways left
        _wait_drained(state, deadline)  # the controller left without a word: look, then stop whatever took over
        pid = stop_controller(state)
    left = _fleet_leftovers(state, deadline)
    if left:
        fail(f"all gateways stopped, but {len(left)} process(es) of the fleet still run: "
             + ", ".join(f"pid {i.pid} ({name}) `{' '.join(mask_argv(i.cmdline))[:60]}`" for i, name in left)
             + f"; controller {f'pid {pid} ' if pid else ''}stopped",
             EXIT_FAILED, hint=f"they carry the fleet's markers ({PROFILE_ENV}); check them and end them by hand")
    echo(f"all profiles stopped; nothing of the fleet runs; controller {f'pid {pid} ' if pid else ''}stopped; "
               "the fleet stays down until `apply` or `start`")


# How often the wait for the controller to finish a `down` checks that its request still stands (an `apply` or
# `start` since drops it).
DROPPED_LOOK = 0.1


def _finished_by(state: StateDir, controller: ProcessInfo, request: str, deadline: float) -> bool:
    """Until the controller leaves: True when it said the fleet is down for `request` (fleet/controller/down.py);
    False when it left without a word, dropped the request, or the deadline came first."""
    from fleet.controller import down as requests
    platform = current_platform()
    store = Store(state.db, readonly=True)
    try:
        while True:
            if not wait_until_exited(platform, [controller], min(deadline, time.monotonic() + DROPPED_LOOK)):
                return requests.finished(store, request)
            if time.monotonic() >= deadline or requests.pending(store) != request:
                return False
    finally:
        store.close()


def _overtaken_or_refused(state: StateDir, request: str) -> None:
    from fleet.controller import down as requests
    store = Store(state.db, readonly=True)
    try:
        why = requests.overtaken(store, request)
    finally:
        store.close()
    if why:
        fail(f"{why} since; the other profiles stay down and the controller runs", EXIT_FAILED,
             hint="`hermes-fleet status` shows what runs; run `down` again to take it all down")
    if running_controller(state) is None:
        _refuse_live_gateways_without_controller(state)


def _live_gateways(state: StateDir) -> list[ProfileStatus]:
    from fleet.controller.down import waited_for
    from fleet.controller.status import fleet_status
    st = fleet_status(state, current_platform(), time.time())
    return [p for p in st.profiles if waited_for(p.pid, p.action)]


def _refuse_live_gateways_without_controller(state: StateDir) -> None:
    alive = _live_gateways(state)
    if alive:
        fail("no controller is running to drain: " + ", ".join(f"{p.name} (pid {p.pid})" for p in alive),
             EXIT_FAILED, hint="start one with `hermes-fleet controller run` and run `down` again")


def _hold_every_profile_down(state: StateDir, request: str | None) -> None:
    """Holds every profile stopped and, with a `request`, leaves it for the running controller to finish."""
    store = open_store(state, write=True)
    from fleet.controller import down as requests
    from fleet.controller.desired import DesiredSource
    from fleet.controller.record import DOWN
    try:
        now = time.time()
        with store.tx():
            names = DesiredSource(store).names()
            histories = store.histories()
            for name in names:
                if name in histories and histories[name].override_desired == "stopped":
                    continue  # already held by `stop` (which outlives `apply`) or by an earlier `down`
                store.update_history(name, override_desired="stopped", override_by=f"{DOWN}:{user_name()}",
                                     override_at=now)
            if request is not None:
                requests.leave(store, request)
            store.journal("down", f"{user_name()}: draining {len(names)} profile(s), then stopping the controller; "
                                  "the fleet stays down until `apply` or `start`", data={"by": user_name()})
    finally:
        store.close()


def _wait_drained(state: StateDir, deadline: float) -> None:
    """Until the fleet's status shows no gateway. Between two looks at it (a store read, the records and a plan),
    only the processes the last look showed are watched, until each has exited."""
    platform = current_platform()
    while True:
        alive = _live_gateways(state)
        if not alive:
            return
        if time.monotonic() > deadline:
            fail("timed out draining: " + ", ".join(f"{p.name} (pid {p.pid})" for p in alive), EXIT_FAILED)
        shown = [info for info in (platform.process_info(p.pid) for p in alive if p.pid) if info is not None]
        wait_until_exited(platform, shown, deadline)


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
