"""Exit codes as Hermes means them (hermes-contract section 4 and 9.7)."""

from __future__ import annotations

from dataclasses import dataclass

RESTART_NOW = 75  # EX_TEMPFAIL: a restart was requested
FATAL_CONFIG = 78  # EX_CONFIG: do not retry

CRASH_CLASSES = ("crash", "killed", "unknown")
TERMINAL_CLASSES = ("fatal_config", "startup_failed")


@dataclass(frozen=True)
class ExitOutcome:
    """How an exit is classed, and the failure count it leaves."""
    exit_class: str
    failures: int  # the profile's consecutive failures after this exit


def count_exit(code: int | None, gateway_state: str | None, *, planned: bool, failures: int, ran: float,
               reset_after: float) -> ExitOutcome:
    """What an exit does to the failure count: a crash or a clean exit adds one (or starts afresh after a
    run of `reset_after`), a planned stop after such a run clears it, anything else leaves it."""
    klass = classify_exit(code, gateway_state, planned=planned)
    if klass in CRASH_CLASSES or klass == "clean":
        failures = 1 if ran >= reset_after else failures + 1
    elif klass == "planned":
        failures = 0 if ran >= reset_after else failures
    return ExitOutcome(klass, failures)


def classify_exit(code: int | None, gateway_state: str | None, *, planned: bool) -> str:
    """planned: we asked it to stop (drain, replace, forced restart), so its exit is no failure."""
    if planned:
        return "planned"
    if code == RESTART_NOW:
        return "restart_now"
    if code == FATAL_CONFIG:
        return "fatal_config"
    if code == 0:
        return "startup_failed" if gateway_state == "startup_failed" else "clean"
    if code is None:
        # Not our child: the exit code is lost; Hermes' own status file is the best witness.
        if gateway_state == "startup_failed":
            return "startup_failed"
        if gateway_state == "stopped":
            return "clean"
        return "unknown"
    if code < 0:
        return "killed"
    return "crash"


def describe_exit(code: int | None, klass: str | None) -> str:
    if klass is None:
        return "-"
    if code is None:
        return klass
    if code < 0:
        return f"signal {-code} ({klass})"
    return f"{code} ({klass})"
