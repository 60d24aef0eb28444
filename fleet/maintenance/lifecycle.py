"""The maintenance request lifecycle as a pure transition function: the request, what the controller
knows of its profiles and the time in, the next state and what to do about it out. No I/O, no clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fleet.maintenance.model import ALL, CANCELLABLE, MaintenanceRequest

FINISHED = ("done", "failed", "cancelled")
# Draining is the point of no return: a request may be cancelled, and may time out, only before it.
BEFORE_DRAINING = CANCELLABLE
CONTROLLER_STOPPED = ("the controller stopped while the update command ran; the gateways were left as they were; "
                      "submit the update again to retry")


@dataclass(frozen=True)
class ProfileFacts:
    """One profile of the manifest, as far as a request's lifecycle depends on it."""
    name: str
    suspended: bool
    wanted: str  # the operator's override, else the manifest's desired state
    process_started_at: float | None  # None: no gateway runs
    drain_reason: str | None  # why the profile is being drained, if it is
    planned_reason: str | None  # the reason of the profile's planned action; None: none planned
    wait_note: str | None  # what the profile's planned wait is for; None: it is not waiting

    @property
    def wanted_running(self) -> bool:
        return not self.suspended and self.wanted == "running"

    @property
    def ready_for_update(self) -> bool:
        """Nothing but the update itself holds the profile, or no gateway of it runs."""
        return self.planned_reason in (None, "update_command") or self.process_started_at is None

    def restarted_after(self, instant: float) -> bool:
        return self.process_started_at is not None and self.process_started_at > instant


@dataclass(frozen=True)
class Transition:
    """What one pass does with an open request. Every move is a compare-and-set from the open states,
    so a cancel racing the controller wins."""
    state: str | None = None  # the state the request moves to; None: it stays as it is
    outcome: str | None = None  # why it finished (done, failed, cancelled)
    start_update: bool = False  # on the move to draining: run the update command for `targets`
    targets: tuple[str, ...] = ()
    waiting_on: str | None = None  # what it waits for; also kept when the move to draining did not take


STAY = Transition()


def advance(req: MaintenanceRequest, profiles: Mapping[str, ProfileFacts], now: float, *,
            update_running: bool) -> Transition:
    """`profiles`: every profile of the manifest by name; `update_running`: this controller runs the
    request's update command right now."""
    cancelled = _cancellation(req, profiles)
    if cancelled is not None:
        return cancelled
    targets = [profiles[n] for n in req.targets(profiles) if profiles[n].wanted_running]
    if req.deadline is not None and now > req.deadline and req.state in BEFORE_DRAINING:
        return _finish("failed", "deadline passed before the gates opened")
    if req.update_pending:
        return _update_step(req, targets, update_running)
    return _restart_step(req, targets)


def _cancellation(req: MaintenanceRequest, profiles: Mapping[str, ProfileFacts]) -> Transition | None:
    if req.profile == ALL:
        return None
    facts = profiles.get(req.profile)
    if facts is None:
        return _finish("cancelled", "the profile was removed from fleet.yaml")
    if facts.suspended:
        return _finish("cancelled", "the profile is suspended")
    if facts.wanted == "stopped":
        return _finish("cancelled", "the profile is stopped")
    return None


def _update_step(req: MaintenanceRequest, targets: list[ProfileFacts], update_running: bool) -> Transition:
    if req.update_started is not None:
        return STAY if update_running else _finish("failed", CONTROLLER_STOPPED)
    waiting_on = _waiting_text(targets)
    if req.state in BEFORE_DRAINING and all(t.ready_for_update for t in targets):
        return Transition(state="draining", start_update=True, targets=_names(targets), waiting_on=waiting_on)
    return Transition(state="waiting", waiting_on=waiting_on)


def _restart_step(req: MaintenanceRequest, targets: list[ProfileFacts]) -> Transition:
    if all(t.restarted_after(req.since) for t in targets) and (targets or req.state != "pending"):
        names = _names(targets)
        return _finish("done", "restarted: " + ", ".join(names) if names else "nothing to restart")
    if req.state not in BEFORE_DRAINING:
        return STAY
    if any(t.drain_reason == "maintenance" for t in targets):
        return Transition(state="draining")
    return Transition(state="waiting", waiting_on=_waiting_text(targets))


def _finish(state: str, outcome: str) -> Transition:
    return Transition(state=state, outcome=outcome)


def _names(targets: list[ProfileFacts]) -> tuple[str, ...]:
    return tuple(t.name for t in targets)


def _waiting_text(targets: list[ProfileFacts]) -> str:
    notes = [f"{t.name}: {t.wait_note}" for t in targets if t.wait_note is not None]
    return "; ".join(notes) or "waiting for the controller"
