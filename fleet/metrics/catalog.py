"""Every metric the controller exposes: name, type, labels and help, in one table.

The renderer writes families from here only, and docs/observability.md's list is generated from it
(tests/test_metrics_exposition.py checks that the two agree)."""

from __future__ import annotations

from dataclasses import dataclass

from fleet.metrics.buckets import DURATION_BUCKETS

PREFIX = "hermes_fleet_"

PHASES = ("Running", "Starting", "Backoff", "Draining", "Stopped", "Failed", "Suspended", "Waiting", "Missing",
          "Removing")
SYNC_STATUSES = ("Synced", "OutOfSync", "Unknown")
SOURCE_STATUSES = ("Synced", "OutOfSync", "Suspended", "Unknown")
EXIT_CLASSES = ("crash", "killed", "unknown", "clean", "planned", "restart_now", "fatal_config", "startup_failed")
ACTION_KINDS = ("spawn", "adopt", "replace", "drain", "kill", "reclaim", "update")
MAINTENANCE_STATES = ("pending", "waiting", "draining")


@dataclass(frozen=True)
class Family:
    """One metric family the controller exposes: its name, type, help text and labels."""
    name: str  # without PREFIX for ours; the standard process_* families are named in full
    type: str  # gauge | counter | histogram
    help: str
    labels: tuple[str, ...] = ()
    when: str = ""  # when the family (or a series of it) is absent; "" = always present
    http_only: bool = False  # not written to the textfile (node_exporter exposes its own process_*)

    @property
    def full_name(self) -> str:
        return self.name if self.name.startswith("process_") else PREFIX + self.name


def _f(name: str, type_: str, help_: str, labels: tuple[str, ...] = (), when: str = "", http_only: bool = False):
    return Family(name, type_, help_, labels, when, http_only)


FLEET = (
    _f("build_info", "gauge", "hermes-fleet build of the controller, value 1.", ("version", "python_version")),
    _f("generation_info", "gauge", "The desired generation the controller acts on, value 1: its manifest digest and, "
       "when it came from a followed git source, the commit.", ("generation", "digest", "commit")),
    _f("desired_generation", "gauge", "Newest generation of fleet.yaml in the store."),
    _f("observed_generation", "gauge", "Generation the controller last completed a pass for."),
    _f("converged", "gauge", "1 when every profile is where fleet.yaml wants it and nothing is left to do."),
    _f("reconcile_total", "counter", "Reconcile passes since the controller started."),
    _f("reconcile_duration_seconds", "histogram", "Time of one reconcile pass (observe, plan, execute)."),
    _f("last_reconcile_timestamp_seconds", "gauge", "When the last reconcile pass ended."),
    _f("actions_total", "counter", "Actions executed since the controller started, by kind.", ("kind",)),
    _f("action_errors_total", "counter", "Actions that failed since the controller started, by kind.", ("kind",)),
    _f("profiles", "gauge", "Profiles per phase.", ("phase",)),
    _f("profiles_desired_running", "gauge", "Profiles fleet.yaml wants running."),
    _f("profiles_running", "gauge", "Profiles with a live gateway."),
    _f("maintenance_requests", "gauge", "Open maintenance requests (restart, update), by state.", ("state",)),
    _f("maintenance_oldest_request_timestamp_seconds", "gauge", "When the longest-waiting open maintenance request "
       "became due (made, or its not-before time passed).", when="no request is open"),
    _f("store_degraded", "gauge", "1 while the store refuses writes and the controller keeps its bookkeeping in "
       "memory."),
    _f("source_sync", "gauge", "Whether the fleet runs what the followed git branch says: 1 for the current status.",
       ("status",), when="no git source is followed"),
    _f("source_failing", "gauge", "1 when the followed source's last fetch or apply failed.",
       when="no git source is followed"),
    _f("source_last_fetch_timestamp_seconds", "gauge", "When the followed source was last fetched.",
       when="no git source is followed, or nothing was fetched yet"),
)

PROFILE = (
    _f("profile_up", "gauge", "1 when the profile has a live gateway.", ("profile",)),
    _f("profile_desired_running", "gauge", "1 when fleet.yaml (and no stop or down) wants the profile running.",
       ("profile",)),
    _f("profile_phase", "gauge", "The profile's phase: 1 for the current one, 0 for the other nine.",
       ("profile", "phase")),
    _f("profile_phase_transition_timestamp_seconds", "gauge", "When the profile entered its current phase (as this "
       "controller saw it).", ("profile",)),
    _f("profile_sync", "gauge", "Whether what runs is what fleet.yaml says: 1 for the current status.",
       ("profile", "status")),
    _f("profile_restarts_total", "counter", "Restarts of the profile's gateway, kept in the store across controller "
       "restarts.", ("profile",)),
    _f("profile_consecutive_failures", "gauge", "Unexpected exits in a row (drives the restart backoff).",
       ("profile",)),
    _f("profile_last_exit_code", "gauge", "Exit code of the last exit; negative: killed by that signal.", ("profile",),
       when="no exit was seen yet"),
    _f("profile_last_exit_timestamp_seconds", "gauge", "When the gateway last exited.", ("profile",),
       when="no exit was seen yet, or its time is unknown"),
    _f("profile_last_exit_class", "gauge", "Class of the last exit: 1 for it, 0 for the others.", ("profile", "class"),
       when="no exit was seen yet"),
    _f("profile_start_time_seconds", "gauge", "When the live gateway started.", ("profile",),
       when="no gateway runs"),
    _f("profile_last_heartbeat_timestamp_seconds", "gauge", "When the live gateway last wrote its state file.",
       ("profile",), when="no heartbeat from the live gateway"),
    _f("profile_drain_deadline_timestamp_seconds", "gauge", "When the drain under way ends in a kill if the gateway "
       "has not stopped.", ("profile",), when="no drain is under way"),
    _f("profile_active_agents", "gauge", "Conversations the gateway serves now, as it reports them.", ("profile",),
       when="the gateway does not report it"),
    _f("profile_actions_total", "counter", "Actions executed on the profile since the controller started, by kind.",
       ("profile", "kind")),
)

PROCESS = (
    _f("process_start_time_seconds", "gauge", "Start time of the controller process since unix epoch in seconds.",
       http_only=True),
    _f("process_cpu_seconds_total", "counter", "Total user and system CPU time of the controller in seconds.",
       http_only=True),
    _f("process_resident_memory_bytes", "gauge", "Resident memory size of the controller in bytes.", http_only=True),
    _f("process_open_fds", "gauge", "Open file descriptors (handles on Windows) of the controller.", http_only=True),
)

FAMILIES = FLEET + PROFILE + PROCESS
BY_NAME = {f.name: f for f in FAMILIES}
METRIC_NAMES = tuple(f.full_name for f in FAMILIES)


def markdown() -> str:
    """The metric reference of docs/observability.md (`python -m fleet.metrics.catalog` prints it)."""
    rows = ["| metric | type | labels | absent when | what it says |", "|---|---|---|---|---|"]
    for f in FAMILIES:
        labels = ", ".join(f"`{label}`" for label in f.labels) or "-"
        where = "in the textfile" if f.http_only else f.when
        rows.append(f"| `{f.full_name}` | {f.type} | {labels} | {where or '-'} | {f.help} |")
    values = [f"- `phase`: {', '.join(PHASES)}", f"- `status` (profile_sync): {', '.join(SYNC_STATUSES)}",
              f"- `status` (source_sync): {', '.join(SOURCE_STATUSES)}", f"- `class`: {', '.join(EXIT_CLASSES)}",
              f"- `kind`: {', '.join(ACTION_KINDS)}", f"- `state`: {', '.join(MAINTENANCE_STATES)}",
              f"- `le` (seconds): {', '.join(str(b) for b in DURATION_BUCKETS)}, +Inf"]
    return "\n".join(rows) + "\n\nLabel values:\n\n" + "\n".join(values) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
