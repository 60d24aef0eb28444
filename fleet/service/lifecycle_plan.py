"""What `service install` and `service uninstall` decide, apart from what they observe and do.

Each decision is a function from the situation, observed once (fleet.service.lifecycle does
that), to the steps to run, as frozen values; nothing here reads a file, asks a service
manager or signals a process, so every rule can be checked with a table of situations.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from fleet.service.base import ApiCall, Artifact, Command, RegistrationStatus, ServiceError, Step
from fleet.service.holder import ControllerHolder, stop_holder

# `down` drains every gateway through the running controller; a large fleet takes its time.
DOWN_TIMEOUT_S = 900
HANDOVER_TIMEOUT_S = 45


@dataclass(frozen=True)
class InstallSituation:
    """What install found before changing anything."""

    mechanism: str
    before: RegistrationStatus
    holder: ControllerHolder | None
    owned: bool | None  # whether the service manager started the live controller (None: cannot tell, or none runs)
    changed: tuple[Artifact, ...]  # the rendered files that differ from what is on disk
    current: bool | None  # the registration matches what install would write (None: cannot tell)
    register_steps: tuple[Step, ...]  # the mechanism's own steps to (re)register and start

    @property
    def live_holder(self) -> ControllerHolder | None:
        return self.holder if self.holder is not None and self.holder.alive else None


@dataclass(frozen=True)
class InstallPlan:
    """What install will do: the files to write, the steps to run and the controller to replace."""

    up_to_date: bool  # nothing to do: the registration is current and its controller runs
    writes: tuple[Artifact, ...] = ()
    steps: tuple[Step, ...] = ()
    previous: ControllerHolder | None = None  # the live controller; the one that comes up must be another


def plan_install(situation: InstallSituation) -> InstallPlan:
    previous = situation.live_holder
    if _install_is_current(situation):
        return InstallPlan(up_to_date=True, previous=previous)
    return InstallPlan(up_to_date=False, writes=situation.changed,
                       steps=_handover_steps(situation) + situation.register_steps, previous=previous)


def _registration_is_current(situation: InstallSituation) -> bool:
    before = situation.before
    return not situation.changed and situation.current is not False and before.installed and before.enabled is not False


def _install_is_current(situation: InstallSituation) -> bool:
    return (_registration_is_current(situation) and situation.live_holder is not None
            and situation.owned is not False and situation.before.running is not False)


def _handover_steps(situation: InstallSituation) -> tuple[Step, ...]:
    holder = situation.live_holder
    if holder is None or not _needs_handover(situation):
        return ()
    return (handover_step(holder, situation.mechanism),)


def _needs_handover(situation: InstallSituation) -> bool:
    """A live controller the service manager did not start would fight the service's one for the lock.
    When the manager cannot tell who started it, a registration that changes hands it over too."""
    if situation.owned is None:
        return bool(situation.changed) or not situation.before.installed or situation.current is False
    return situation.owned is False


def handover_step(holder: ControllerHolder, mechanism: str) -> ApiCall:
    def hand_over() -> None:
        if not stop_holder(holder, timeout=HANDOVER_TIMEOUT_S):
            raise ServiceError(f"the controller PID {holder.pid} did not exit within {HANDOVER_TIMEOUT_S} s")

    return ApiCall(
        f"stop the controller PID {holder.pid} that runs outside {mechanism}, so the service's "
        "controller can take the fleet over (gateways keep running and are adopted)", hand_over,
    )


@dataclass(frozen=True)
class FoundRegistration:
    """One mechanism's registration as uninstall found it."""

    mechanism: str
    location: str
    owns_controller: bool | None  # whether it started the live controller (None: cannot tell, or none runs)
    uninstall_steps: tuple[Step, ...]
    files: tuple[str, ...]  # its files to remove
    after_steps: tuple[Step, ...]


@dataclass(frozen=True)
class UninstallSituation:
    """What uninstall found before changing anything."""

    python: str
    state_dir: str
    holder: ControllerHolder | None
    found: tuple[FoundRegistration, ...]
    stop_fleet: bool


@dataclass(frozen=True)
class UninstallPlan:
    """What uninstall will do: the steps to run and the controller that must exit."""

    steps: tuple[Step, ...]
    wait_gone: ControllerHolder | None  # the controller a removed registration ran, which must exit


def plan_uninstall(situation: UninstallSituation) -> UninstallPlan:
    steps: list[Step] = [down_command(situation.python, situation.state_dir)] if situation.stop_fleet else []
    for registration in situation.found:
        steps += registration.uninstall_steps
        steps += [ApiCall(f"remove {path}", remover(path)) for path in registration.files]
        steps += registration.after_steps
    return UninstallPlan(steps=tuple(steps), wait_gone=_controller_of(situation))


def _controller_of(situation: UninstallSituation) -> ControllerHolder | None:
    holder = situation.holder
    if holder is None or not holder.alive:
        return None
    owned = any(registration.owns_controller is not False for registration in situation.found)
    return holder if owned else None


def down_command(python: str, state_dir: str) -> Command:
    # `down` drains every profile through the running controller and keeps them stopped,
    # so a controller the service manager restarts meanwhile does not bring them back.
    return Command((python, "-m", "fleet.cli.main", "down", "--state-dir", state_dir), timeout=DOWN_TIMEOUT_S)


def remover(path: str) -> Callable[[], None]:
    def remove() -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    return remove
