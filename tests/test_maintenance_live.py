"""The idle maintenance queue with real processes: the demo gateway reports active agents
(`<profile home>/fake-gateway.json`), the controller runs detached, and every assertion goes
through the CLI (`maintenance status -o json`, `status -o json`, `events -o json`) or the
files the gateways and the controller write.

Each test has its own manifest, Hermes root and state directory under tmp_path. The `mfleet`
fixture tears everything down: it SIGKILLs by PID whatever this test's fleet created that is still
alive, the controller first (see tests/fleet_harness.py), and checks that nothing is left.

The controller polls a profile's activity every 5 s while a request is open (IDLE_POLL_SECONDS),
so waits on "the controller noticed" use deadlines of tens of seconds; none asserts speed.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jsonschema
import pytest

from fleet_harness import DEMO_HERMES, REPO, FleetHarness, alive
from helpers import poll_until, read_json, wait_until

pytestmark = [
    pytest.mark.skipif(os.name != "posix" or not sys.platform.startswith("linux"), reason="Linux process model"),
    pytest.mark.timeout(90),
]

GATEWAY_ENV = {"FAKE_HERMES_POLL_S": "0.05", "FAKE_HERMES_HEARTBEAT_S": "0.5"}
RESPONSE_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((REPO / "schemas" / "maintenance-response.schema.json").read_text(encoding="utf-8")))
NOTICE = 30.0  # deadline for "the controller noticed and acted" (it polls every 5 s while a request is open)


# -- fixture and helpers ------------------------------------------------------------------------------

class MaintenanceFleet(FleetHarness):
    """The shared harness plus the maintenance CLI. The environment is hermetic: HOME is under
    tmp_path, and HERMES_HOME names this fleet's Hermes root so that the update command the
    controller runs (`hermes update`) reads this test's `<root>/fake-update.json`."""

    hermes_home_in_env = True

    def env(self) -> dict[str, str]:
        env = super().env()
        env["HOME"] = str(self.tmp / "home")
        env.pop("HERMES_HOME", None)
        if self.hermes_home_in_env:
            env["HERMES_HOME"] = str(self.home)
        return env

    def setup(self, names, *, idle="1s", drain_timeout="5s", maintenance: dict | None = None, **kw) -> None:
        (self.tmp / "home").mkdir(exist_ok=True)
        profiles = {n: {"env": dict(GATEWAY_ENV)} for n in names}
        self.write_manifest(profiles, drain_timeout=drain_timeout,
                            extra={"maintenance": {"idle": idle, **(maintenance or {})}}, **kw)
        self.apply()

    # -- the CLI as JSON
    def mjson(self, *args: str, expect: int | None = 0):
        result = self.cli("maintenance", *args, "-o", "json")
        if expect is not None:
            assert result.returncode == expect, self.explain(result)
        assert "Traceback" not in result.stderr, result.stderr
        answer = json.loads(result.stdout)
        for one in answer if isinstance(answer, list) else [answer]:
            RESPONSE_SCHEMA.validate(one)  # every real answer, in every state the controller produces
        return answer

    def submit(self, payload: dict) -> dict:
        result = self.cli("maintenance", "submit", "--json", json.dumps(payload))
        assert "Traceback" not in result.stderr, result.stderr
        answer = json.loads(result.stdout)
        RESPONSE_SCHEMA.validate(answer)
        assert result.returncode == (0 if answer["ok"] else 1), self.explain(result)
        return answer

    def requests(self) -> dict[int, dict]:
        return {r["id"]: r for r in self.mjson("status", "--all")["requests"]}

    def request(self, rid: int) -> dict:
        return self.requests()[rid]

    def wait_request(self, rid: int, predicate, timeout: float = NOTICE, what: str = "") -> dict:
        last = {}

        def check():
            last["r"] = self.request(rid)
            return last["r"] if predicate(last["r"]) else None
        try:
            return wait_until(check, timeout, interval=0.2, what=what or f"request #{rid}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {json.dumps(last.get('r'), indent=1)}\n"
                                 f"{self.controller_log_tail()}") from None

    def wait_state(self, rid: int, *states: str, timeout: float = NOTICE) -> dict:
        return self.wait_request(rid, lambda r: r["state"] in states, timeout, f"request #{rid} to be {states}")

    def open_requests_fast(self):
        """The open requests straight from the store (read-only; fast enough to sample every 50 ms)."""
        from fleet.maintenance import queue
        from fleet.store.db import Store
        store = Store(self.state / "fleet.db", readonly=True)
        try:
            return queue.open_requests(store)
        finally:
            store.close()

    def controller_log_tail(self) -> str:
        try:
            return "--- controller.log\n" + (self.state / "logs" / "controller.log").read_text()[-2000:]
        except OSError:
            return ""

    # -- observations
    def pids(self) -> dict[str, int | None]:
        return {p["name"]: p["pid"] for p in self.status()["profiles"]}

    def drain_file(self, name: str):
        return self.profile_home(name) / ".drain_request.json"

    def gateway_state(self, name: str) -> dict:
        data = read_json(self.profile_home(name) / "gateway_state.json")
        return data if isinstance(data, dict) else {}

    def spawns(self, name: str, events: list[dict] | None = None) -> list[dict]:
        events = self.events() if events is None else events
        return [e for e in events if e["profile"] == name and e["kind"] == "spawned"]

    def hold_steady(self, names, pids: dict[str, int], seconds: float) -> None:
        """Observe for `seconds` that none of `names` is drained or replaced (a bounded negative check:
        it spans several idle windows and controller passes)."""
        def disturbed():
            for n in names:
                if self.drain_file(n).exists() or self.pid(n) != pids[n] or not alive(pids[n]):
                    return n
            return None
        hit = poll_until(disturbed, seconds, interval=0.05)
        assert hit is None, f"{hit} was drained or restarted while it should have been held"


@pytest.fixture
def mfleet(tmp_path):
    harness = MaintenanceFleet(tmp_path)
    harness._popens = []
    try:
        yield harness
    finally:
        harness.cleanup()
        leftovers = harness.leftovers()
        assert not leftovers, f"processes left behind: {leftovers}"


def set_busy(fleet: MaintenanceFleet, name: str, active: int) -> None:
    fleet.control(name, active_agents=active)
    wait_until(lambda: fleet.gateway_state(name).get("active_agents") == active, 10,
               what=f"{name} to report {active} active agents")


# -- the tests ------------------------------------------------------------------------------------------

def test_busy_gateway_waits_then_restarts_once_idle_and_duplicates_merge(mfleet):
    mfleet.setup(["alpha", "beta"], idle="1.5s")
    pids = {n: mfleet.wait_running(n) for n in ("alpha", "beta")}
    set_busy(mfleet, "alpha", 2)

    first = mfleet.mjson("restart", "alpha", "--reason", "new tools installed")
    assert first["ok"] and not first["merged"] and first["controller_running"]
    rid = first["request"]["id"]
    waiting = mfleet.wait_request(rid, lambda r: r["state"] == "waiting" and "2 active agents" in (r["waiting_on"] or ""))
    assert waiting["waiting_on"] == "alpha: 2 active agents"
    mfleet.hold_steady(["alpha", "beta"], pids, 2.0)  # busy, and longer than the idle window: nothing happens

    # A duplicate (here from an agent) merges into the same request; it also wakes the controller,
    # whose next pass must hold the busy gateway again.
    dup = mfleet.submit({"action": "queue_restart", "profile": "alpha", "reason": "skills changed",
                         "requested_by": "agent:test"})
    assert dup["ok"] and dup["merged"] and dup["request"]["id"] == rid
    assert dup["request"]["reasons"] == ["new tools installed", "skills changed"]
    mfleet.hold_steady(["alpha", "beta"], pids, 2.0)
    assert mfleet.request(rid)["state"] == "waiting"
    assert [r["id"] for r in mfleet.mjson("status")["requests"]] == [rid]  # one request, not two

    went_idle = time.time()
    set_busy(mfleet, "alpha", 0)
    done = mfleet.wait_state(rid, "done", "failed", "cancelled")
    assert done["state"] == "done" and done["outcome"] == "restarted: alpha", done
    assert done["reasons"] == ["new tools installed", "skills changed"]

    new_alpha = mfleet.wait_running("alpha", other_than=pids["alpha"])
    assert not alive(pids["alpha"])
    events = mfleet.events()
    assert [e["data"]["pid"] for e in mfleet.spawns("alpha", events)] == [pids["alpha"], new_alpha]  # exactly once
    drains = [e for e in events if e["profile"] == "alpha" and e["kind"] == "drain_started"]
    assert len(drains) == 1 and "(maintenance)" in drains[0]["message"]
    # It waited for the idle window, measured from when the gateway went idle.
    journal = {e.id: e for e in mfleet.journal("alpha")}
    assert journal[drains[0]["id"]].at >= went_idle + 1.5
    # beta was never touched, and the replacement counts as a restart of alpha only.
    assert mfleet.pid("beta") == pids["beta"] and alive(pids["beta"])
    assert len(mfleet.spawns("beta", events)) == 1
    assert mfleet.mjson("status")["requests"] == []  # nothing open any more


def test_cancel_before_draining_works_and_after_is_refused(mfleet):
    mfleet.setup(["alpha"], drain_timeout="30s")
    pid = mfleet.wait_running("alpha")
    set_busy(mfleet, "alpha", 2)

    rid = mfleet.mjson("restart", "alpha", "--reason", "to be cancelled")["request"]["id"]
    mfleet.wait_request(rid, lambda r: r["state"] == "waiting" and "active agents" in (r["waiting_on"] or ""))
    cancelled = mfleet.mjson("cancel", str(rid))
    assert cancelled["ok"] and cancelled["request"]["state"] == "cancelled"
    assert cancelled["request"]["outcome"].startswith("cancelled by ")
    set_busy(mfleet, "alpha", 0)  # idle now: a live request would run, a cancelled one must not
    mfleet.hold_steady(["alpha"], {"alpha": pid}, 2.0)
    assert mfleet.request(rid)["state"] == "cancelled"

    # A person's --now skips the idle gate: the drain begins although two agents are busy,
    # and waits for them (the graceful path). From then on the request cannot be cancelled.
    set_busy(mfleet, "alpha", 2)
    rid2 = mfleet.mjson("restart", "alpha", "--reason", "right now", "--now")["request"]["id"]
    assert rid2 != rid
    mfleet.wait_state(rid2, "draining")
    assert mfleet.drain_file("alpha").exists()
    refused = mfleet.mjson("cancel", str(rid2), expect=1)
    assert refused["ok"] is False and refused["error"]["code"] == "not_cancellable"
    text = mfleet.cli("maintenance", "cancel", str(rid2))
    assert text.returncode == 1 and "not_cancellable" in text.stderr and "Traceback" not in text.stderr
    assert mfleet.request(rid2)["state"] == "draining"
    assert alive(pid) and mfleet.gateway_state("alpha").get("gateway_state") == "draining"  # waits for the agents

    set_busy(mfleet, "alpha", 0)
    done = mfleet.wait_state(rid2, "done", "failed")
    assert done["state"] == "done", done
    assert any(e["kind"] == "maintenance_now" for e in mfleet.events())  # --now is journalled
    assert len(mfleet.spawns("alpha")) == 2


def test_kill9_of_the_controller_while_waiting_loses_nothing(mfleet):
    mfleet.setup(["alpha"])
    pid = mfleet.wait_running("alpha")
    set_busy(mfleet, "alpha", 1)
    rid = mfleet.mjson("restart", "alpha", "--reason", "survive a crash")["request"]["id"]
    mfleet.wait_request(rid, lambda r: r["state"] == "waiting" and "1 active agent" in (r["waiting_on"] or ""))

    ctl = mfleet.controller_pid()
    mfleet.kill9(ctl)

    # The request waits durably and says why; a duplicate still merges into it.
    st = mfleet.mjson("status")
    assert st["controller_running"] is False
    assert [r["id"] for r in st["requests"]] == [rid]
    assert st["requests"][0]["waiting_on"] == "no controller is running; the request waits durably"
    text = mfleet.cli("maintenance", "status")
    assert "controller: NOT RUNNING" in text.stdout, mfleet.explain(text)
    dup = mfleet.submit({"action": "queue_restart", "profile": "alpha", "reason": "again, without a controller"})
    assert dup["ok"] and dup["merged"] and dup["request"]["id"] == rid and dup["controller_running"] is False
    assert alive(pid)

    mfleet.start_controller()
    wait_until(lambda: mfleet.controller_pid() not in (None, ctl), 15, what="a new controller")
    mfleet.wait_request(rid, lambda r: r["state"] == "waiting" and "1 active agent" in (r["waiting_on"] or ""))
    assert mfleet.pid("alpha") == pid and alive(pid)  # adopted, not restarted
    set_busy(mfleet, "alpha", 0)
    done = mfleet.wait_state(rid, "done", "failed", "cancelled")
    assert done["state"] == "done" and done["reasons"] == ["survive a crash", "again, without a controller"]
    new = mfleet.wait_running("alpha", other_than=pid)
    assert [e["data"]["pid"] for e in mfleet.spawns("alpha")] == [pid, new]  # restarted exactly once


def test_kill9_of_the_controller_while_draining_restarts_exactly_once(mfleet):
    mfleet.setup(["alpha"], drain_timeout="40s")
    pid = mfleet.wait_running("alpha")
    set_busy(mfleet, "alpha", 2)
    rid = mfleet.mjson("restart", "alpha", "--reason", "drain across a crash", "--now")["request"]["id"]
    mfleet.wait_state(rid, "draining")
    wait_until(lambda: mfleet.gateway_state("alpha").get("gateway_state") == "draining", 10,
               what="alpha to acknowledge the drain")

    ctl = mfleet.controller_pid()
    mfleet.kill9(ctl)
    st = mfleet.mjson("status", "--all")
    assert st["controller_running"] is False
    assert mfleet.request(rid)["state"] == "draining"
    assert alive(pid) and mfleet.gateway_state("alpha").get("gateway_state") == "draining"

    # A request made while the drain is under way is a new one, but the same restart satisfies it.
    late = mfleet.submit({"action": "queue_restart", "profile": "alpha", "reason": "asked during the drain"})
    assert late["ok"] and late["request"]["id"] != rid

    mfleet.start_controller()
    wait_until(lambda: mfleet.controller_pid() not in (None, ctl), 15, what="a new controller")
    # The new controller continues the drain: the busy gateway is neither stopped nor restarted.
    assert poll_until(lambda: not alive(pid) or mfleet.pid("alpha") != pid, 2.0, 0.05) is False
    set_busy(mfleet, "alpha", 0)
    done = mfleet.wait_state(rid, "done", "failed")
    assert done["state"] == "done", done
    late_done = mfleet.wait_state(late["request"]["id"], "done", "failed", "cancelled")
    assert late_done["state"] == "done" and late_done["outcome"] == "restarted: alpha"
    new = mfleet.wait_running("alpha", other_than=pid)
    events = mfleet.events()
    assert [e["data"]["pid"] for e in mfleet.spawns("alpha", events)] == [pid, new]  # exactly one restart
    assert [e["kind"] for e in events if e["profile"] == "alpha" and e["kind"] in ("drain_started", "killed")] \
        == ["drain_started"]  # one drain, never a kill
    assert any(e["kind"] == "adopted" and e["data"]["pid"] == pid for e in events)


def test_failing_update_leaves_the_gateway_up_and_the_request_failed_with_the_output_tail(mfleet):
    mfleet.setup(["alpha", "beta"])
    pids = {n: mfleet.wait_running(n) for n in ("alpha", "beta")}
    lines = [f"step {i}: downloading part {i} of the new release" for i in range(400)]
    lines.append("E: pip could not resolve hermes-agent==9.9 (the last line)")
    (mfleet.home / "fake-update.json").write_text(json.dumps({"exit": 3, "output": "\n".join(lines)}))

    answer = mfleet.mjson("update", "alpha", "--reason", "hermes-agent 9.9")
    rid = answer["request"]["id"]
    assert answer["request"]["action"] == "update" and answer["request"]["profile"] == "alpha"
    failed = mfleet.wait_state(rid, "failed", "done", "cancelled")
    assert failed["state"] == "failed", failed
    assert failed["update"]["exit_code"] == 3
    tail = failed["update"]["output_tail"]
    assert tail.rstrip().endswith("(the last line)") and "step 0:" not in tail and len(tail) <= 4000
    assert "exited 3" in failed["outcome"] and "(the last line)" in failed["outcome"]

    # The old gateways keep running: no drain, no stop, no spawn.
    assert mfleet.pids() == pids and all(alive(p) for p in pids.values())
    assert not mfleet.drain_file("alpha").exists()
    events = mfleet.events()
    kinds = [e["kind"] for e in events]
    assert kinds.count("maintenance_update") == 1
    fail_event = next(e for e in events if e["kind"] == "maintenance_failed")
    assert "(the last line)" in fail_event["data"]["output_tail"]
    assert not [e for e in events if e["kind"] in ("drain_started", "stop_sent", "killed")]
    assert len(mfleet.spawns("alpha", events)) == 1 and len(mfleet.spawns("beta", events)) == 1


def test_update_runs_the_command_once_then_restarts_each_profile_when_idle(mfleet):
    counter = mfleet.tmp / "update-runs.txt"
    wrapper = mfleet.tmp / "update-wrapper.py"
    wrapper.write_text(
        "import os, sys\n"
        f"open({str(counter)!r}, 'a').write('ran\\n')\n"
        f"os.execv(sys.executable, [sys.executable, {str(DEMO_HERMES)!r}, 'update'])\n")
    mfleet.setup(["alpha", "beta"], maintenance={"update_command": [sys.executable, str(wrapper)]})
    pids = {n: mfleet.wait_running(n) for n in ("alpha", "beta")}
    (mfleet.home / "fake-update.json").write_text(json.dumps({"exit": 0, "output": "Updated to 9.9."}))
    set_busy(mfleet, "beta", 1)

    rid = mfleet.mjson("update", "--reason", "hermes-agent 9.9")["request"]["id"]
    # The command waits for every target to be idle; beta is busy.
    mfleet.wait_request(rid, lambda r: "beta: 1 active agent" in (r["waiting_on"] or ""))
    assert not counter.exists()
    set_busy(mfleet, "beta", 0)
    for n in ("alpha", "beta"):  # the records on disk: each profile restarted
        mfleet.wait_running(n, other_than=pids[n], timeout=60)
    done = mfleet.wait_state(rid, "done", "failed", "cancelled", timeout=15)
    assert done["state"] == "done" and done["outcome"] == "restarted: alpha, beta", done
    assert done["update"]["exit_code"] == 0 and "Updated to 9.9." in done["update"]["output_tail"]
    assert counter.read_text() == "ran\n"  # once per request, not once per profile
    events = mfleet.events()
    ok = next(e for e in events if e["kind"] == "maintenance_update_ok")
    assert "Updated to 9.9." in ok["data"]["output_tail"]
    for n in ("alpha", "beta"):
        spawned = mfleet.spawns(n, events)
        assert len(spawned) == 2 and spawned[0]["data"]["pid"] == pids[n], n
        assert spawned[1]["id"] > ok["id"]  # restarted after the update, not before


def test_budget_one_never_has_two_profiles_in_maintenance(mfleet):
    names = ["alpha", "beta"]
    mfleet.setup(names)  # maintenance.max_concurrent defaults to 1
    pids = {n: mfleet.wait_running(n) for n in names}
    both_draining: list[float] = []
    saw: set[str] = set()

    def sample():
        """One sample (every ~50 ms): the gateways' drain requests, and what the queue waits on."""
        if all(mfleet.drain_file(n).exists() for n in names):
            both_draining.append(time.time())
        reqs = mfleet.open_requests_fast()
        saw.update(r.waiting_on for r in reqs if r.waiting_on)
        return reqs

    # alpha's drain is held open by two busy agents (a person's --now skips only its idle gate) ...
    set_busy(mfleet, "alpha", 2)
    ra = mfleet.mjson("restart", "alpha", "--reason", "rolling restart", "--now")["request"]["id"]
    mfleet.wait_state(ra, "draining")
    # ... so beta, idle and past its idle window, must wait for the budget.
    rb = mfleet.mjson("restart", "beta", "--reason", "rolling restart")["request"]["id"]
    wait_until(lambda: sample() is not None and "beta: budget: alpha in maintenance" in saw, NOTICE, 0.05,
               what=f"beta to wait on the budget (saw {saw})")
    assert mfleet.request(rb)["state"] == "waiting" and not mfleet.drain_file("beta").exists()

    set_busy(mfleet, "alpha", 0)
    wait_until(lambda: not sample(), 60, 0.05, what="both requests to finish")
    assert not both_draining, f"two drain requests at once at {both_draining}"
    reqs = mfleet.requests()
    assert (reqs[ra]["state"], reqs[rb]["state"]) == ("done", "done"), reqs

    # The journal agrees: each profile's maintenance window [drain_started, spawned] is disjoint.
    events = mfleet.events()
    windows = {}
    for n in names:
        start = [e["id"] for e in events if e["profile"] == n and e["kind"] == "drain_started"]
        end = [e["id"] for e in mfleet.spawns(n, events)][1:]
        assert len(start) == 1 and len(end) == 1, (n, start, end)
        windows[n] = (start[0], end[0])
    assert windows["alpha"][1] < windows["beta"][0], f"maintenance windows overlap: {windows}"
    for n in names:
        assert mfleet.pid(n) != pids[n]


def test_a_deny_window_blocks_execution_until_a_person_says_now(mfleet):
    mfleet.setup(["alpha"], maintenance={"windows": [
        {"kind": "allow", "schedule": "* * * * *", "duration": "1h"},   # always allowed ...
        {"kind": "deny", "schedule": "* * * * *", "duration": "1h"},    # ... but always denied: deny wins
    ]})
    pid = mfleet.wait_running("alpha")
    rid = mfleet.mjson("restart", "alpha", "--reason", "held by the window")["request"]["id"]
    # Once the idle window has passed, the deny window is the only thing holding it.
    held = mfleet.wait_request(rid, lambda r: (r["waiting_on"] or "").startswith("alpha: deny window"))
    assert held["state"] == "waiting" and held["waiting_on"] == "alpha: deny window (* * * * *, 1h) is open"
    mfleet.hold_steady(["alpha"], {"alpha": pid}, 2.0)  # idle for longer than the 1 s window
    # Another request wakes the controller: its pass, with the idle gate open, still holds alpha.
    dup = mfleet.submit({"action": "queue_restart", "profile": "alpha", "reason": "still held"})
    assert dup["merged"] and dup["request"]["id"] == rid
    mfleet.hold_steady(["alpha"], {"alpha": pid}, 2.0)
    assert mfleet.request(rid)["state"] == "waiting"
    profile = mfleet.status()["profiles"][0]
    assert profile["action"]["kind"] == "wait" and profile["action"]["reason"] == "window_closed"

    # An agent cannot skip the window; a person can.
    refused = mfleet.submit({"action": "queue_restart", "profile": "alpha", "reason": "skip it", "now": True})
    assert refused["ok"] is False and refused["error"]["code"] == "now_not_allowed"
    again = mfleet.mjson("restart", "alpha", "--reason", "a person decides", "--now")
    assert again["merged"] and again["request"]["id"] == rid
    done = mfleet.wait_state(rid, "done", "failed", "cancelled")
    assert done["state"] == "done", done
    mfleet.wait_running("alpha", other_than=pid)


def test_the_update_command_runs_against_the_fleets_hermes_root(mfleet):
    mfleet.hermes_home_in_env = False  # a controller started from a shell without HERMES_HOME (or by systemd)
    mfleet.setup(["alpha"])
    pid = mfleet.wait_running("alpha")
    (mfleet.home / "fake-update.json").write_text(json.dumps({"exit": 5, "output": "E: update refused"}))
    rid = mfleet.mjson("update", "alpha", "--reason", "new release")["request"]["id"]
    ran = mfleet.wait_request(rid, lambda r: r["update"]["exit_code"] is not None
                              or r["state"] in ("done", "failed", "cancelled"))
    assert ran["update"]["exit_code"] == 5, ran  # the root's fake-update.json says 5
    assert mfleet.pid("alpha") == pid


def test_the_update_command_and_its_output_never_show_a_secret(mfleet):
    # The command echoes its environment and a header, as a verbose installer would.
    wrapper = mfleet.tmp / "noisy-update.py"
    wrapper.write_text(
        "import os, sys\n"
        "print('using DB_PASSWD from the env:', os.environ['DB_PASSWD'])\n"
        "print('Authorization: Bearer hdrSecretJ34abc.def')\n"
        "print('token given:', sys.argv[2])\n"
        "sys.exit(3)\n")
    mfleet.write_manifest({"alpha": {"env": {**GATEWAY_ENV, "DB_PASSWD": "envSecretK35value"}}}, drain_timeout="5s",
                          extra={"maintenance": {"idle": "1s", "update_command": [
                              sys.executable, str(wrapper), "--api-token", "cliSecretL36value"]}})
    mfleet.apply()
    mfleet.wait_running("alpha")
    rid = mfleet.mjson("update", "alpha", "--reason", "noisy")["request"]["id"]
    failed = mfleet.wait_state(rid, "failed", "done", "cancelled")
    assert failed["state"] == "failed" and "using DB_PASSWD" in failed["update"]["output_tail"], failed
    texts = [json.dumps(failed), json.dumps(mfleet.events())]
    for args in (("maintenance", "status", "--all"), ("events", "-n", "1000"), ("logs", "controller", "-n", "1000")):
        result = mfleet.cli(*args)
        assert "Traceback" not in result.stderr, mfleet.explain(result)
        texts.append(result.stdout)
    leaked = [s for s in ("envSecretK35value", "hdrSecretJ34abc", "cliSecretL36value") for t in texts if s in t]
    assert not leaked, (leaked, texts)
    assert any("--api-token (sensitive)" in t for t in texts), texts  # the command is still shown
