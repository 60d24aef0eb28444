"""The Prometheus text format (0.0.4), written directly: a few thousand lines per scrape need no client
library (which would cost the controller megabytes and load ssl, email and http.server).

Rules kept (Prometheus "Exposition formats"): one HELP and TYPE per family before its samples, every known
series present with zeros kept, label values escaped, no sample timestamps, a final newline. Lines are built
as strings with each label set formatted once per render: this runs after every pass of a 100-profile fleet."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fleet.metrics import catalog
from fleet.metrics.model import FleetMetrics, ProfileMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float | int | bool) -> str:
    if isinstance(value, int):  # bool included
        return str(int(value))
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def label_text(labels: Labels) -> str:
    return ",".join(f'{k}="{escape_label(v)}"' for k, v in labels)


class _Writer:
    """Sample lines of one family; `base` is the label text every line starts with (constant labels)."""

    def __init__(self, name: str, base: str):
        self.name = name
        self.base = base
        self.lines: list[str] = []

    def add(self, value: float | int | bool | None, labels: str = "", suffix: str = "") -> None:
        if value is None:
            return
        text = self.base + ("," if self.base and labels else "") + labels
        self.lines.append(f"{self.name}{suffix}{{{text}}} {format_value(value)}\n" if text
                          else f"{self.name}{suffix} {format_value(value)}\n")

    def state_set(self, label: str, states: Iterable[str], current: str | None, labels: str = "") -> None:
        states = tuple(states)
        if current is not None and current not in states:
            states += (current,)  # a state a newer release added: shown rather than lost
        prefix = labels + "," if labels else ""
        for state in states:
            self.add(1 if state == current else 0, f'{prefix}{label}="{escape_label(state)}"')

    def counts(self, label: str, kinds: Iterable[str], counts: Iterable[tuple[str, int]], labels: str = "") -> None:
        known = dict(counts)
        prefix = labels + "," if labels else ""
        for kind in kinds:
            self.add(known.get(kind, 0), f'{prefix}{label}="{kind}"')


def render(snapshot: FleetMetrics, *, constant_labels: Labels = (), textfile: bool = False) -> bytes:
    """The whole exposition. `constant_labels` go on every series (the textfile's fleet="<name>"); the
    textfile leaves out the process_* families, which node_exporter has of its own."""
    base = label_text(constant_labels)
    profiles = [(p, f'profile="{escape_label(p.name)}"') for p in snapshot.profiles]
    out: list[str] = []
    for family in catalog.FAMILIES:
        if textfile and family.http_only:
            continue
        writer = _Writer(family.full_name, base)
        if family.labels and family.labels[0] == "profile":
            fill = _PROFILE[family.name]
            for p, labels in profiles:
                fill(writer, p, labels)
        else:
            _FLEET[family.name](writer, snapshot)
        if writer.lines:
            out.append(f"# HELP {family.full_name} {escape_help(family.help)}\n# TYPE {family.full_name} {family.type}\n")
            out.extend(writer.lines)
    return "".join(out).encode("utf-8")


def _histogram(w: _Writer, m: FleetMetrics) -> None:
    h = m.duration
    for bound, n in zip(catalog.DURATION_BUCKETS, h.buckets, strict=True):
        w.add(n, f'le="{format_value(bound)}"', "_bucket")
    w.add(h.count, 'le="+Inf"', "_bucket")
    w.add(h.sum, suffix="_sum")
    w.add(h.count, suffix="_count")


def _phase_counts(profiles: tuple[ProfileMetrics, ...]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in profiles:
        counts[p.phase] = counts.get(p.phase, 0) + 1
    return counts


def _source(w: _Writer, m: FleetMetrics, fill: Callable) -> None:
    if m.source is not None:
        fill(w, m.source)


def _process(w: _Writer, m: FleetMetrics, pick: Callable) -> None:
    if m.process is not None:
        w.add(pick(m.process))


_FLEET: dict[str, Callable[[_Writer, FleetMetrics], None]] = {
    "build_info": lambda w, m: w.add(1, label_text((("version", m.version), ("python_version", m.python_version)))),
    "generation_info": lambda w, m: w.add(1, label_text((("generation", str(m.generation)), ("digest", m.digest),
                                                         ("commit", m.commit)))),
    "desired_generation": lambda w, m: w.add(m.generation),
    "observed_generation": lambda w, m: w.add(m.observed_generation),
    "converged": lambda w, m: w.add(m.converged),
    "reconcile_total": lambda w, m: w.add(m.reconciles),
    "reconcile_duration_seconds": _histogram,
    "last_reconcile_timestamp_seconds": lambda w, m: w.add(m.last_reconcile_at),
    "actions_total": lambda w, m: w.counts("kind", catalog.ACTION_KINDS, m.actions),
    "action_errors_total": lambda w, m: w.counts("kind", catalog.ACTION_KINDS, m.action_errors),
    "profiles": lambda w, m: w.counts("phase", catalog.PHASES, _phase_counts(m.profiles).items()),
    "profiles_desired_running": lambda w, m: w.add(sum(p.desired_running for p in m.profiles)),
    "profiles_running": lambda w, m: w.add(sum(p.up for p in m.profiles)),
    "maintenance_requests": lambda w, m: w.counts("state", catalog.MAINTENANCE_STATES, m.maintenance),
    "maintenance_oldest_request_timestamp_seconds": lambda w, m: w.add(m.maintenance_oldest_at),
    "store_degraded": lambda w, m: w.add(m.store_degraded),
    "source_sync": lambda w, m: _source(w, m, lambda w, s: w.state_set("status", catalog.SOURCE_STATUSES, s.sync)),
    "source_failing": lambda w, m: _source(w, m, lambda w, s: w.add(s.failing)),
    "source_last_fetch_timestamp_seconds": lambda w, m: _source(w, m, lambda w, s: w.add(s.last_fetch_at)),
    "process_start_time_seconds": lambda w, m: _process(w, m, lambda p: p.start_time),
    "process_cpu_seconds_total": lambda w, m: _process(w, m, lambda p: p.cpu_seconds),
    "process_resident_memory_bytes": lambda w, m: _process(w, m, lambda p: p.resident_bytes),
    "process_open_fds": lambda w, m: _process(w, m, lambda p: p.open_fds),
}


def _exit_class(w: _Writer, p: ProfileMetrics, labels: str) -> None:
    if p.last_exit_class is not None:
        w.state_set("class", catalog.EXIT_CLASSES, p.last_exit_class, labels)


_PROFILE: dict[str, Callable[[_Writer, ProfileMetrics, str], None]] = {
    "profile_up": lambda w, p, lab: w.add(p.up, lab),
    "profile_desired_running": lambda w, p, lab: w.add(p.desired_running, lab),
    "profile_phase": lambda w, p, lab: w.state_set("phase", catalog.PHASES, p.phase, lab),
    "profile_phase_transition_timestamp_seconds": lambda w, p, lab: w.add(p.phase_since, lab),
    "profile_sync": lambda w, p, lab: w.state_set("status", catalog.SYNC_STATUSES, p.sync, lab),
    "profile_restarts_total": lambda w, p, lab: w.add(p.restarts, lab),
    "profile_consecutive_failures": lambda w, p, lab: w.add(p.consecutive_failures, lab),
    "profile_last_exit_code": lambda w, p, lab: w.add(p.last_exit_code if p.last_exit_class else None, lab),
    "profile_last_exit_timestamp_seconds": lambda w, p, lab: w.add(p.last_exit_at, lab),
    "profile_last_exit_class": _exit_class,
    "profile_start_time_seconds": lambda w, p, lab: w.add(p.started_at, lab),
    "profile_last_heartbeat_timestamp_seconds": lambda w, p, lab: w.add(p.heartbeat_at, lab),
    "profile_active_agents": lambda w, p, lab: w.add(p.active_agents, lab),
    "profile_drain_deadline_timestamp_seconds": lambda w, p, lab: w.add(p.drain_deadline, lab),
    "profile_actions_total": lambda w, p, lab: w.counts("kind", catalog.ACTION_KINDS, p.actions, lab),
}
