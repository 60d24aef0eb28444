"""The pure decisions of `service install` and `service uninstall`: a table of observed situations and
the steps each one must lead to, with no service manager, file or process involved."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fleet.service.base import ApiCall, Artifact, Command, RegistrationStatus
from fleet.service.holder import ControllerHolder
from fleet.service.lifecycle_plan import (
    FoundRegistration, InstallSituation, UninstallSituation, plan_install, plan_uninstall,
)

LIVE = ControllerHolder(pid=4242, create_time=1.0, version="1", started_at=None, epoch=1, alive=True)
DEAD = replace(LIVE, alive=False)
UNIT = Artifact("/home/u/.config/systemd/user/hermes-fleet.service", "[Unit]\n")
REGISTER = (Command(("systemctl", "--user", "daemon-reload")), Command(("systemctl", "--user", "start", "x")))
RUNNING = RegistrationStatus("systemd", "hermes-fleet.service", "/unit", installed=True, enabled=True, running=True)
ABSENT = RegistrationStatus("systemd", "hermes-fleet.service", "/unit", installed=False)

CURRENT = InstallSituation(mechanism="systemd", before=RUNNING, holder=LIVE, owned=True, changed=(), current=True,
                           register_steps=REGISTER)


def descriptions(steps) -> list[str]:
    return [step.display() for step in steps]


HANDOVER = "stop the controller PID 4242 that runs outside systemd"


@pytest.mark.parametrize("situation, up_to_date, handover", [
    pytest.param(CURRENT, True, False, id="current and running under the manager: nothing to do"),
    pytest.param(replace(CURRENT, owned=None), True, False, id="cannot tell who started it, nothing changes"),
    pytest.param(replace(CURRENT, owned=False), False, True, id="a controller outside the manager is handed over"),
    pytest.param(replace(CURRENT, changed=(UNIT,)), False, False, id="a changed file under our controller"),
    pytest.param(replace(CURRENT, changed=(UNIT,), owned=None), False, True, id="changed file, owner unknown"),
    pytest.param(replace(CURRENT, current=False, owned=None), False, True, id="stale registration, owner unknown"),
    pytest.param(replace(CURRENT, current=None), True, False, id="registration currency unknown counts as current"),
    pytest.param(replace(CURRENT, before=ABSENT, owned=None), False, True, id="not installed, a controller runs"),
    pytest.param(replace(CURRENT, before=replace(RUNNING, enabled=False)), False, False, id="disabled"),
    pytest.param(replace(CURRENT, before=replace(RUNNING, running=False), owned=None), False, False,
                 id="the manager says stopped, the owner is unknown"),
    pytest.param(replace(CURRENT, holder=DEAD, owned=None), False, False, id="the recorded controller is dead"),
    pytest.param(replace(CURRENT, holder=None, owned=None), False, False, id="no controller recorded"),
])
def test_install_decides_between_nothing_a_registration_and_a_handover(situation, up_to_date, handover):
    plan = plan_install(situation)
    assert plan.up_to_date is up_to_date
    if up_to_date:
        assert plan.steps == () and plan.writes == ()
        return
    expected = ([HANDOVER] if handover else []) + descriptions(REGISTER)
    assert [d.split(",")[0] for d in descriptions(plan.steps)] == expected
    assert isinstance(plan.steps[0], ApiCall) is handover
    assert plan.writes == situation.changed


def test_install_waits_for_a_controller_other_than_the_live_one():
    assert plan_install(replace(CURRENT, owned=False)).previous == LIVE
    assert plan_install(replace(CURRENT, holder=DEAD, owned=None)).previous is None


def registration(mechanism: str, owns: bool | None, files: tuple[str, ...] = ()) -> FoundRegistration:
    return FoundRegistration(
        mechanism=mechanism, location=f"/{mechanism}", owns_controller=owns,
        uninstall_steps=(Command((mechanism, "unregister")),), files=files,
        after_steps=(Command((mechanism, "cleanup"), may_fail=True),),
    )


def uninstall(*found: FoundRegistration, holder=LIVE, stop_fleet=False) -> UninstallSituation:
    return UninstallSituation(python="/venv/bin/python", state_dir="/state", holder=holder, found=found,
                              stop_fleet=stop_fleet)


def test_uninstall_removes_each_registration_then_its_files_then_cleans_up():
    plan = plan_uninstall(uninstall(registration("scheduled-task", True, ("/task.xml",)),
                                    registration("startup-folder", False, ("/a.vbs", "/b.vbs"))))
    assert descriptions(plan.steps) == [
        "scheduled-task unregister", "remove /task.xml", "scheduled-task cleanup",
        "startup-folder unregister", "remove /a.vbs", "remove /b.vbs", "startup-folder cleanup",
    ]


def test_uninstall_with_stop_fleet_drains_through_down_first():
    plan = plan_uninstall(uninstall(registration("systemd", True), stop_fleet=True))
    first = plan.steps[0]
    assert isinstance(first, Command)
    assert first.argv == ("/venv/bin/python", "-m", "fleet.cli.main", "down", "--state-dir", "/state")
    assert first.timeout == 900
    assert descriptions(plan.steps[1:]) == ["systemd unregister", "systemd cleanup"]


@pytest.mark.parametrize("owners, holder, waits", [
    pytest.param((True,), LIVE, True, id="its controller must exit"),
    pytest.param((None,), LIVE, True, id="owner unknown: wait for it too"),
    pytest.param((False,), LIVE, False, id="a controller outside the manager keeps running"),
    pytest.param((False, True), LIVE, True, id="any removed registration that ran it"),
    pytest.param((True,), DEAD, False, id="a dead controller is not waited for"),
    pytest.param((None,), None, False, id="no controller recorded"),
])
def test_uninstall_waits_only_for_a_live_controller_a_removed_registration_ran(owners, holder, waits):
    found = [registration(f"m{i}", owns) for i, owns in enumerate(owners)]
    plan = plan_uninstall(uninstall(*found, holder=holder))
    assert plan.wait_gone == (holder if waits else None)
