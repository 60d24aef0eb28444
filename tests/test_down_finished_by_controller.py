"""`down` finished by the controller it wakes (fleet/controller/down.py): the command holds every profile stopped
and leaves a request for the running controller; once a pass that changed nothing sees no gateway running, the
controller says so in the journal, drops the request and leaves. One pass at a time against a fake platform: no
real gateway is started and nothing on the host is signalled."""

from __future__ import annotations

import json
import time

import pytest

from fakes import FakePlatform, state, store  # noqa: F401
from helpers import reaper  # noqa: F401
from test_reconcile_once import record, reconciler

from fleet.controller import down
from fleet.controller.record import DOWN, record_manifest
from fleet.spec.load import load_manifest
from fleet.store.db import Store


def hold_down(store, request: str | None, names=("alpha", "beta")) -> None:
    """What the command's hold does (fleet/cli/profile_cmds.py)."""
    with store.tx():
        for name in names:
            store.update_history(name, override_desired="stopped", override_by=f"{DOWN}:someone", override_at=time.time())
        if request is not None:
            down.leave(store, request)


def journal(store, kind: str) -> list[dict]:
    return [json.loads(r[0] or "{}") for r in store.conn.execute("SELECT data FROM journal WHERE kind=? ORDER BY id",
                                                                 (kind,))]


def until_settled(passes, limit: int = 6):
    for _ in range(limit):
        result = passes.reconcile_once(time.time())
        if result.down_done or not result.replan_now:  # the loop returns on either
            return result
    raise AssertionError("the passes did not settle")


def test_the_controller_finishes_a_down_once_no_gateway_runs(state, store, tmp_path):
    record(store, tmp_path, names=("alpha", "beta"))
    platform = FakePlatform()
    passes = reconciler(state, store, platform)
    until_settled(passes)
    assert len(platform.children) == 2
    hold_down(store, "123-456")
    drained = passes.reconcile_once(time.time())  # the drains: gateways still ran when the pass looked
    assert not drained.down_done and {a.kind for a in drained.attempted} == {"drain"}
    assert down.pending(store, passes.epoch) == "123-456"
    result = until_settled(passes)
    assert result.down_done and platform.children == {}
    assert journal(store, down.DOWN_DONE) == [{"request": "123-456"}]
    assert down.finished(store, "123-456") and not down.finished(store, "123-457")
    assert down.pending(store) is None


def test_a_request_left_for_another_controller_is_not_this_ones(state, store, tmp_path):
    record(store, tmp_path, names=("alpha", "beta"))
    platform = FakePlatform()
    hold_down(store, "123-456")  # the request names the epoch of the controller that ran then
    passes = reconciler(state, store, platform)  # a controller started since: another epoch
    result = until_settled(passes)
    assert not result.down_done and journal(store, down.DOWN_DONE) == []
    assert down.pending(store) == "123-456" and down.pending(store, passes.epoch) is None


def _start_beta(store, tmp_path) -> None:
    store.update_history("beta", override_desired=None, override_by=None, override_at=None)  # what `start beta` writes


def _apply_again(store, tmp_path) -> None:
    record_manifest(store, load_manifest(str(tmp_path / "fleet.yaml")), {"revision": "1"}, prune=True, source="apply",
                    lift_down=True)  # `apply` lifts a `down`


@pytest.mark.parametrize(("bring_back", "back"), [(_start_beta, ["beta"]), (_apply_again, ["alpha", "beta"])],
                         ids=["start", "apply"])
def test_a_profile_brought_back_meanwhile_overtakes_the_down(state, store, tmp_path, bring_back, back):
    record(store, tmp_path, names=("alpha", "beta"))
    platform = FakePlatform()
    passes = reconciler(state, store, platform)
    until_settled(passes)
    hold_down(store, "123-456")
    bring_back(store, tmp_path)
    result = until_settled(passes)
    assert not result.down_done
    assert journal(store, "down_overtaken") == [{"request": "123-456"}]
    assert down.overtaken(store, "123-456") == f"down overtaken: {', '.join(back)} brought back"
    assert down.pending(store) is None  # the command sees it dropped and says what came back
    assert len(platform.children) == len(back)


def test_a_gateway_that_does_not_stop_keeps_the_request_pending(state, store, tmp_path):
    record(store, tmp_path, names=("alpha",))
    platform = FakePlatform()
    passes = reconciler(state, store, platform)
    until_settled(passes)
    [pid] = platform.children
    platform.stubborn.add(pid)  # ignores its planned stop
    hold_down(store, "123-456", names=("alpha",))
    for _ in range(3):
        assert not passes.reconcile_once(time.time()).down_done
    assert down.pending(store, passes.epoch) == "123-456"


def test_without_a_request_a_fleet_held_down_keeps_its_controller(state, store, tmp_path):
    """A controller restarted after a `down` (a reboot, a service's restart) stays, idle: `start` needs it."""
    record(store, tmp_path, names=("alpha", "beta"))
    hold_down(store, None)
    result = until_settled(reconciler(state, store, FakePlatform()))
    assert not result.down_done and result.planned


def test_a_down_with_nothing_ever_applied_is_finished_at_once(state, store):
    passes = reconciler(state, store, FakePlatform())
    down.leave(store, "123-456")
    result = passes.reconcile_once(time.time())
    assert result.down_done and down.finished(store, "123-456")


# The command's side (fleet/cli/profile_cmds.py): it waits for the controller to leave, then believes only the
# journal; a controller gone without a word, or a request dropped, sends it back to its own looks.
SLEEPER = "import time; time.sleep(60)"


def _controller_stand_in(reaper):
    import sys

    from fleet.platform import current_platform

    proc = reaper.spawn([sys.executable, "-c", SLEEPER])
    info = current_platform().process_info(proc.pid)
    assert info is not None
    return proc, info


def test_the_command_believes_a_controller_that_left_saying_the_fleet_is_down(state, store, reaper):
    from fleet.cli.profile_cmds import _finished_by

    proc, info = _controller_stand_in(reaper)
    down.leave(store, "123-456")
    down.drop(store, "123-456", store.epoch, "the fleet is down", done=True)
    proc.kill()
    assert _finished_by(state, info, "123-456", time.monotonic() + 10)


def test_a_controller_gone_without_a_word_sends_the_command_to_its_own_looks(state, store, reaper):
    from fleet.cli.profile_cmds import _finished_by

    proc, info = _controller_stand_in(reaper)
    down.leave(store, "123-456")
    proc.kill()  # a crash: no down_done
    assert not _finished_by(state, info, "123-456", time.monotonic() + 10)


def test_a_request_dropped_while_the_controller_stays_ends_the_wait_long_before_the_deadline(state, store, reaper):
    from fleet.cli.profile_cmds import DROPPED_LOOK, _finished_by

    _, info = _controller_stand_in(reaper)
    down.leave(store, "123-456")
    down.drop(store, "123-456", store.epoch, "down overtaken: beta brought back", done=False)
    started = time.monotonic()
    assert not _finished_by(state, info, "123-456", started + 30)
    assert time.monotonic() - started < 5 * DROPPED_LOOK + 1


def test_a_down_overtaken_fails_at_once_saying_what_came_back(state, store):
    from fleet.cli.console import Exit
    from fleet.cli.profile_cmds import EXIT_FAILED, _overtaken_or_refused

    down.leave(store, "123-456")
    down.drop(store, "123-456", store.epoch, "down overtaken: beta brought back", done=False)
    with pytest.raises(Exit) as failed:
        _overtaken_or_refused(state, "123-456")
    assert failed.value.code == EXIT_FAILED


def test_a_down_whose_last_exits_are_handled_before_the_look_is_finished_in_that_pass(state, store, tmp_path):
    """The last gateways' exits alone wake the loop: the pass reclaims them before its look (after_exits), then
    looks at every profile and has nothing left to do. That pass is the last one for a while (nothing asks for
    another), so it must be the one that finishes the `down`."""
    record(store, tmp_path, names=("alpha", "beta"))
    platform = FakePlatform()
    passes = reconciler(state, store, platform)
    until_settled(passes)
    pids = set(platform.children)
    platform.stubborn.update(pids)  # they exit a moment after their planned stop, not at once
    hold_down(store, "123-456")
    waiting = until_settled(passes)  # drains sent; the gateways still run
    assert not waiting.down_done and set(platform.children) == pids
    for pid in pids:
        platform.end(pid, 0)
    result = passes.reconcile_once(time.time(), frozenset(pids))
    assert result.first and not result.replan_now  # the loop would wait for the next resync
    assert result.down_done and down.finished(store, "123-456")


def test_a_down_left_after_the_pass_looked_is_judged_by_a_later_look(state, store, tmp_path):
    """`apply --no-wait` then `down` at once: the pass that looked before the hold must not read the request left
    with it as overtaken (its look still shows every profile wanted running)."""
    record(store, tmp_path, names=("alpha", "beta"))
    platform = FakePlatform()
    passes = reconciler(state, store, platform)
    until_settled(passes)
    look = passes.observer.observe

    def look_then_hold(*args, **kwargs):
        seen = look(*args, **kwargs)
        hold_down(store, "123-456")  # the command's hold lands between the look and the end of the pass
        return seen

    passes.observer.observe = look_then_hold
    first = passes.reconcile_once(time.time())
    passes.observer.observe = look
    assert not first.down_done and not first.attempted
    assert journal(store, down.OVERTAKEN) == [] and down.pending(store, passes.epoch) == "123-456"
    result = until_settled(passes)  # the wake the command sends after its hold brings these passes
    assert result.down_done and platform.children == {}
    assert journal(store, down.DOWN_DONE) == [{"request": "123-456"}]


def test_the_pass_that_records_the_last_exits_finishes_the_down(state, store, tmp_path):
    """The drains' pass asks for another at once, whose look finds the gateways gone: it reclaims them, looks at
    those profiles again (`_after_reclaims`) and has nothing more to do. That second look saw every action's
    effect, so the pass finishes the `down` itself instead of leaving it to one more look at the whole fleet."""
    record(store, tmp_path, names=("alpha", "beta"))
    platform = FakePlatform()
    passes = reconciler(state, store, platform)
    until_settled(passes)
    pids = set(platform.children)
    platform.stubborn.update(pids)
    hold_down(store, "123-456")
    drained = passes.reconcile_once(time.time())
    assert {a.kind for a in drained.attempted} == {"drain"} and set(platform.children) == pids
    for pid in pids:
        platform.end(pid, 0)
    result = passes.reconcile_once(time.time())
    assert "reclaim" in {a.kind for a in result.attempted}
    assert result.down_done and down.finished(store, "123-456")


def test_a_down_lifted_after_the_pass_looked_is_not_finished_by_that_look(state, store, tmp_path):
    """The other way round: the pass looked while every profile was held down and no gateway ran, then `apply`
    (another process: its own connection) lifted the hold before the pass judged the `down`. That look must not end
    the `down` (the controller would leave the fleet the `apply` asked for): the next pass sees the profiles wanted
    again and reports the `down` overtaken."""
    record(store, tmp_path, names=("alpha", "beta"))
    platform = FakePlatform()
    passes = reconciler(state, store, platform)
    until_settled(passes)
    hold_down(store, "123-456")
    drained = passes.reconcile_once(time.time())
    assert {a.kind for a in drained.attempted} == {"drain"}
    after_the_looks = passes._retain_when_due
    applied = []

    def apply_then_go_on(*args, **kwargs):
        if not platform.children and not applied:  # the pass whose looks showed the fleet down
            other = Store(str(state.db))
            try:
                _apply_again(other, tmp_path)
            finally:
                other.close()
            applied.append(True)
        return after_the_looks(*args, **kwargs)

    passes._retain_when_due = apply_then_go_on
    results = [passes.reconcile_once(time.time()) for _ in range(4)]
    assert applied and not any(r.down_done for r in results) and journal(store, down.DOWN_DONE) == []
    assert journal(store, down.OVERTAKEN) == [{"request": "123-456"}]
