"""`diff` text and JSON goldens for every action kind and reason family.

The inputs are the pure planner's, fed fake observations (tests/factories.py) at a fixed clock with fixed
paths, so a golden changes only when what `diff` prints changes. UPDATE_GOLDEN=1 regenerates them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import jsonschema
import pytest

from factories import (
    NOW, OLD_HASH, crashed, desired, fleet_spec, history, inventory, live, maintenance_request, make_plan,
    observation, observed, profile_spec, restart_request, running, status, with_changes,
)
from fleet.cli.render_plan import render_json, render_text
from fleet.controller.plan_report import PlanReport, plan_report
from fleet.controller.preview import Preview
from fleet.controller.status import ControllerStatus
from fleet.plan.model import Check
from fleet.spec.load import Manifest
from fleet.spec.model import MaintenancePolicy, MaintenanceWindow

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "plan"
MANIFEST_PATH = "/srv/hermes/fleet.yaml"
DIGEST = "sha256:" + "d" * 64
NATIVE = "/home/u/.config/systemd/user/hermes-gateway-alpha.service"
OTHER_FLEET = "/srv/other/gateway holds /srv/hermes/profiles/alpha (claim renewed 10s ago)"

A = profile_spec("alpha", env={"TELEGRAM_BOT_TOKEN": "123:new-secret", "LOG_LEVEL": "debug"})
A_BEFORE = profile_spec("alpha", env={"TELEGRAM_BOT_TOKEN": "123:old-secret", "LOG_LEVEL": "info"})
TOKEN_COMMAND = ("hermes", "-p", "alpha", "gateway", "run", "--token")
B = profile_spec("beta")
C = profile_spec("gamma")
ALPHA = profile_spec("alpha")
STOPPED = with_changes(ALPHA, desired="stopped")
RUNNING_CTL = ControllerStatus(running=True, pid=900, epoch=3, version="test", since=NOW - 60, generation=2,
                               observed_generation=2)
IDLE_CTL = dataclasses.replace(RUNNING_CTL, running=False, pid=None)


def _draining(name: str, intent: str, reason: str, **fields):
    base = dict(drain_intent=intent, drain_reason=reason, drain_pid=4242, drain_started=NOW - 2.0,
                drain_deadline=NOW + 58.0)
    base.update(fields)
    return history(name, **base)


def _windows(*wins):
    return with_changes(ALPHA, maintenance=MaintenancePolicy(1200.0, 1, ("hermes", "update"), tuple(wins)))


def _failed(name: str):
    return history(name, action_error="RuntimeError: reclaim exploded", action_error_kind="reclaim",
                   action_error_at=NOW - 0.5, action_errors=2)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One `diff` situation: what the manifest says, what was applied before, what the host shows."""
    fleet: object
    obs: object
    previous: tuple = ()
    last_generation: int = 2
    new_generation: bool = False
    controller: ControllerStatus = RUNNING_CTL
    extra_checks: tuple[Check, ...] = ()
    profile: str | None = None
    verbose: bool = False

    def report(self) -> PlanReport:
        return plan_report(self.preview(), self.profile)

    def preview(self) -> Preview:
        previous = {p.name: p for p in self.previous}
        want = self.fleet if not hasattr(self.fleet, "profiles") else desired(self.fleet, previous=previous)
        want = dataclasses.replace(want, generation=self.last_generation + (1 if self.new_generation else 0),
                                   previous=previous)
        result = make_plan(want, self.obs)
        manifest = Manifest(path=MANIFEST_PATH, text="", spec=want.spec, digest=DIGEST)
        return Preview(manifest=manifest, desired=want, observed=self.obs, plan=result, previous=previous,
                       last_generation=self.last_generation, new_generation=self.new_generation,
                       controller=self.controller, checks=result.checks + self.extra_checks)


SCENARIOS = {
    "in_sync": Scenario(fleet_spec(ALPHA, B), observed(running(ALPHA), running(B, pid=5)), verbose=True),
    "spawn_first_apply": Scenario(fleet_spec(ALPHA, B), observed(), last_generation=0, new_generation=True,
                                  controller=IDLE_CTL),
    "spawn_crashed_backoff": Scenario(fleet_spec(ALPHA),
                                      observed(observation("alpha", history=crashed("alpha", failures=3, at=NOW)))),
    "replace_sensitive": Scenario(fleet_spec(A), observed(running(A, spec_hash=OLD_HASH)), previous=(A_BEFORE,),
                                  new_generation=True),
    "replace_sensitive_command": Scenario(fleet_spec(with_changes(ALPHA, command=TOKEN_COMMAND + ("new-token-1",))),
                                          observed(running(ALPHA, spec_hash=OLD_HASH)),
                                          previous=(with_changes(ALPHA, command=("hermes", "--verbose") + TOKEN_COMMAND[1:] + ("old-token-1",)),),
                                          new_generation=True),
    "replace_restart_requested": Scenario(fleet_spec(ALPHA),
                                          observed(running(ALPHA, request=restart_request("alpha")))),
    "drain_desired_stopped": Scenario(fleet_spec(STOPPED), observed(running(ALPHA)), previous=(ALPHA,),
                                      new_generation=True),
    "drain_removed_from_manifest": Scenario(fleet_spec(B), observed(running(ALPHA), running(B, pid=5),
                                                                    inventory=inventory("alpha", "beta")),
                                            previous=(ALPHA, B), new_generation=True),
    "drain_stop_phase": Scenario(fleet_spec(STOPPED), observed(running(ALPHA, history=_draining(
        "alpha", "stop", "desired_stopped"), status=status("draining", 0, updated_at=NOW - 1.0))),
        previous=(STOPPED,)),
    "kill_wedged": Scenario(fleet_spec(ALPHA), observed(running(ALPHA, heartbeat_at=NOW - 200))),
    "kill_drain_timeout": Scenario(fleet_spec(STOPPED), observed(running(ALPHA, history=_draining(
        "alpha", "stop", "desired_stopped", drain_deadline=NOW))), previous=(STOPPED,)),
    "kill_forced": Scenario(fleet_spec(ALPHA), observed(running(ALPHA, request=restart_request(
        "alpha", kind="force_restart")))),
    "wait_idle_gate": Scenario(fleet_spec(ALPHA), observed(running(ALPHA, spec_hash=OLD_HASH,
                                                                   status=status(active=2)))),
    "wait_idle_gate_maintenance": Scenario(fleet_spec(ALPHA), observed(
        running(ALPHA, history=history("alpha", idle_since=NOW - 200)), maintenance=(maintenance_request("alpha"),))),
    "wait_window_closed": Scenario(fleet_spec(_windows(MaintenanceWindow("allow", "0 3 * * *", 3600.0, "UTC"))),
                                   observed(running(ALPHA, history=history("alpha", idle_since=NOW - 1300)),
                                            maintenance=(maintenance_request("alpha"),))),
    "wait_budget_exhausted": Scenario(fleet_spec(ALPHA, B, C), observed(
        *[running(s, pid=100 + i, spec_hash=OLD_HASH) for i, s in enumerate((ALPHA, B, C))])),
    "wait_update_command": Scenario(fleet_spec(ALPHA), observed(
        running(ALPHA), maintenance=(maintenance_request("alpha", action="update", now=True),))),
    "wait_maintenance_not_before": Scenario(fleet_spec(ALPHA), observed(
        running(ALPHA), maintenance=(maintenance_request("alpha", not_before=NOW + 600),))),
    "wait_suspended": Scenario(fleet_spec(with_changes(ALPHA, suspend=True)), observed(running(ALPHA))),
    "wait_action_failed": Scenario(fleet_spec(ALPHA), observed(observation("alpha", verdict="dead",
                                                                           history=_failed("alpha")))),
    "wait_draining": Scenario(fleet_spec(STOPPED), observed(running(ALPHA, history=_draining(
        "alpha", "stop", "desired_stopped"))), previous=(STOPPED,)),
    "wait_stopping": Scenario(fleet_spec(STOPPED), observed(running(ALPHA, history=_draining(
        "alpha", "stop", "desired_stopped", drain_signalled=NOW - 1))), previous=(STOPPED,)),
    "wait_prune_deferred": Scenario(desired(fleet_spec(B), prune=False), observed(
        running(ALPHA), running(B, pid=5), inventory=inventory("alpha", "beta")), previous=(ALPHA, B)),
    "wait_not_managed": Scenario(fleet_spec(B), observed(running(ALPHA), running(B, pid=5),
                                                         inventory=inventory("beta"))),
    "refusal_empty_fleet": Scenario(fleet_spec(), observed(
        running(ALPHA), observation("beta", verdict="dead"), running(C, pid=3, record_epoch=2),
        inventory=inventory("alpha", "beta", "gamma")), previous=(ALPHA, B, C), new_generation=True),
    "drift": Scenario(fleet_spec(ALPHA, B, C, profile_spec("delta")), observed(
        observation("alpha", verdict="dead", process=live(ALPHA, source="cmdline")),
        observation("beta", process=live(B, pid=77, source="env_marker")),
        observation("gamma", verdict="corrupt", record_problem="not valid JSON:  Expecting value"),
        observation("delta", verdict="reused"))),
    "drift_one_profile": Scenario(fleet_spec(ALPHA, B), observed(
        observation("alpha", verdict="dead", process=live(ALPHA, source="cmdline")),
        observation("beta", process=live(B, pid=77, source="hermes_pidfile"))), profile="beta"),
    "conflict_native_service": Scenario(fleet_spec(ALPHA), observed(observation("alpha", native_service=NATIVE)),
                                        extra_checks=(Check("warning", "executable_missing", "hermes not found",
                                                            "alpha", "install it"),)),
    "conflict_other_fleet": Scenario(fleet_spec(ALPHA), observed(dataclasses.replace(
        observation("alpha"), other_fleet=OTHER_FLEET))),
    "conflict_config": Scenario(fleet_spec(ALPHA), observed(observation("alpha", history=crashed(
        "alpha", code=78, klass="fatal_config", failed_spec_hash=ALPHA.spec_hash)))),
}


@pytest.fixture(autouse=True)
def utc_clock(monkeypatch):
    """The text form shows local wall-clock times; the goldens are written in UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _json_text(doc: dict) -> str:
    doc = {**doc, "tool_version": "<version>"}
    return json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n"


def _check_golden(name: str, text: str) -> None:
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"{name} differs from its golden; UPDATE_GOLDEN=1 regenerates it"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_text_golden(name):
    case = SCENARIOS[name]
    _check_golden(f"{name}.txt", render_text(case.report(), verbose=case.verbose) + "\n")


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_json_golden(name):
    case = SCENARIOS[name]
    doc = render_json(case.report())
    jsonschema.validate(doc, json.loads((ROOT / "schemas/plan.schema.json").read_text()))
    _check_golden(f"{name}.json", _json_text(doc))


def test_no_secret_value_is_printed():
    case = SCENARIOS["replace_sensitive"]
    outputs = render_text(case.report()) + _json_text(render_json(case.report()))
    assert "new-secret" not in outputs and "old-secret" not in outputs
    assert "(sensitive value changed)" in outputs
    case = SCENARIOS["replace_sensitive_command"]
    outputs = render_text(case.report()) + _json_text(render_json(case.report()))
    assert "new-token-1" not in outputs and "old-token-1" not in outputs
