"""The controller's in-memory holds: an action that failed while the store could not record the failure
waits 1, 2, 5, 10, 30, 60 s, and never blocks another profile or another kind of action."""

from __future__ import annotations

from fleet.controller.holds import ERROR_BACKOFF, ActionRetry, Holds, backoff_after

NOW = 1_000.0


def test_the_backoff_follows_the_steps_and_stays_on_the_last():
    assert [backoff_after(n) for n in range(1, 9)] == [1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 60.0, 60.0]
    assert backoff_after(len(ERROR_BACKOFF)) == ERROR_BACKOFF[-1]


def test_a_failed_action_is_held_until_its_retry_is_due():
    holds = Holds().after_failure("alpha", "drain", 1, NOW)
    assert holds.held(NOW) == {("alpha", "drain")}
    assert holds.held(NOW + 0.999) == {("alpha", "drain")}
    assert holds.held(NOW + 1.0) == frozenset()  # due at retry_at exactly
    assert holds.next_retry(NOW) == NOW + 1.0
    assert holds.next_retry(NOW + 1.0) is None  # a due retry is no deadline to wait for


def test_a_failure_again_replaces_the_hold_with_the_longer_wait():
    holds = Holds().after_failure("alpha", "drain", 1, NOW).after_failure("alpha", "drain", 3, NOW + 1)
    assert holds.retries == (ActionRetry("alpha", "drain", 3, NOW + 1 + 5.0),)
    assert holds.failures("alpha", "drain") == 3


def test_holds_are_per_profile_and_kind():
    holds = Holds().after_failure("alpha", "drain", 2, NOW).after_failure("beta", "kill", 1, NOW)
    assert holds.held(NOW) == {("alpha", "drain"), ("beta", "kill")}
    assert holds.failures("alpha", "kill") == 0
    assert holds.failures("gamma", "drain") == 0
    assert holds.next_retry(NOW) == NOW + 1.0  # beta's is the earlier one
    cleared = holds.cleared("alpha", "drain")
    assert cleared.held(NOW) == {("beta", "kill")}
    assert cleared.failures("alpha", "drain") == 0
    assert holds.held(NOW) == {("alpha", "drain"), ("beta", "kill")}  # a value: clearing made a new one


def test_no_holds_hold_nothing():
    assert Holds().held(NOW) == frozenset()
    assert Holds().next_retry(NOW) is None
    assert Holds().cleared("alpha", "spawn") == Holds()
    assert ActionRetry("alpha", "spawn", 1, NOW).due(NOW)
    assert not ActionRetry("alpha", "spawn", 1, NOW).due(NOW - 0.5)
