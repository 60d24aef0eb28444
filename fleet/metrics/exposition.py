"""The Prometheus text format (0.0.4), written directly: a few hundred lines of output per scrape need no
client library (which would cost the controller megabytes and load ssl, email and http.server).

Rules kept (Prometheus "Exposition formats"): one HELP and TYPE per family before its samples, every known
series present with zeros kept, label values escaped, no sample timestamps, a final newline."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fleet.metrics import catalog
from fleet.metrics.catalog import Family
from fleet.metrics.model import FleetMetrics, ProfileMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]  # (suffix, labels, value): suffix is "", "_bucket", "_sum" or "_count"


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def render(snapshot: FleetMetrics, *, constant_labels: Labels = (), textfile: bool = False) -> bytes:
    """The whole exposition. `constant_labels` go on every series (the textfile's fleet="<name>"); the
    textfile leaves out the process_* families, which node_exporter has of its own."""
    out: list[str] = []
    for family in catalog.FAMILIES:
        if textfile and family.http_only:
            continue
        samples = list(_samples(family, snapshot))
        if not samples:
            continue
        name = family.full_name
        out.append(f"# HELP {name} {escape_help(family.help)}\n# TYPE {name} {family.type}\n")
        for suffix, labels, value in samples:
            out.append(f"{name}{suffix}{_labels(constant_labels + labels)} {format_value(value)}\n")
    return "".join(out).encode("utf-8")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels) + "}"


def _state_set(label: str, states: Iterable[str], current: str | None, base: Labels = ()) -> list[Sample]:
    states = tuple(states)
    if current is not None and current not in states:
        states += (current,)  # a state a newer release added: shown rather than lost
    return [("", base + ((label, state),), 1.0 if state == current else 0.0) for state in states]


def _counts(label: str, kinds: Iterable[str], counts: tuple[tuple[str, int], ...], base: Labels = ()) -> list[Sample]:
    known = dict(counts)
    return [("", base + ((label, kind),), float(known.get(kind, 0))) for kind in kinds]


def _one(value: float | None) -> list[Sample]:
    return [] if value is None else [("", (), float(value))]


def _samples(family: Family, m: FleetMetrics) -> list[Sample]:
    if family.labels and family.labels[0] == "profile":
        return [s for p in m.profiles for s in _profile_samples(family.name, p)]
    return _FLEET_SAMPLES[family.name](m)


def _histogram(m: FleetMetrics) -> list[Sample]:
    h = m.duration
    rows: list[Sample] = [("_bucket", (("le", format_value(bound)),), float(n))
                          for bound, n in zip(catalog.DURATION_BUCKETS, h.buckets, strict=True)]
    rows.append(("_bucket", (("le", "+Inf"),), float(h.count)))
    rows.append(("_sum", (), h.sum))
    rows.append(("_count", (), float(h.count)))
    return rows


def _source(m: FleetMetrics, pick) -> list[Sample]:
    return [] if m.source is None else pick(m.source)


def _process(m: FleetMetrics, pick) -> list[Sample]:
    return [] if m.process is None else _one(pick(m.process))


_FLEET_SAMPLES: dict[str, Callable[[FleetMetrics], list[Sample]]] = {
    "build_info": lambda m: [("", (("version", m.version), ("python_version", m.python_version)), 1.0)],
    "generation_info": lambda m: [("", (("generation", str(m.generation)), ("digest", m.digest),
                                        ("commit", m.commit)), 1.0)],
    "desired_generation": lambda m: _one(m.generation),
    "observed_generation": lambda m: _one(m.observed_generation),
    "converged": lambda m: _one(float(m.converged)),
    "reconcile_total": lambda m: _one(m.reconciles),
    "reconcile_duration_seconds": _histogram,
    "last_reconcile_timestamp_seconds": lambda m: _one(m.last_reconcile_at),
    "actions_total": lambda m: _counts("kind", catalog.ACTION_KINDS, m.actions),
    "action_errors_total": lambda m: _counts("kind", catalog.ACTION_KINDS, m.action_errors),
    "profiles": lambda m: _counts("phase", catalog.PHASES, _phase_counts(m.profiles)),
    "profiles_desired_running": lambda m: _one(sum(p.desired_running for p in m.profiles)),
    "profiles_running": lambda m: _one(sum(p.up for p in m.profiles)),
    "maintenance_requests": lambda m: _counts("state", catalog.MAINTENANCE_STATES, m.maintenance),
    "maintenance_oldest_request_timestamp_seconds": lambda m: _one(m.maintenance_oldest_at),
    "store_degraded": lambda m: _one(float(m.store_degraded)),
    "source_sync": lambda m: _source(m, lambda s: _state_set("status", catalog.SOURCE_STATUSES, s.sync)),
    "source_failing": lambda m: _source(m, lambda s: _one(float(s.failing))),
    "source_last_fetch_timestamp_seconds": lambda m: _source(m, lambda s: _one(s.last_fetch_at)),
    "process_start_time_seconds": lambda m: _process(m, lambda p: p.start_time),
    "process_cpu_seconds_total": lambda m: _process(m, lambda p: p.cpu_seconds),
    "process_resident_memory_bytes": lambda m: _process(m, lambda p: p.resident_bytes),
    "process_open_fds": lambda m: _process(m, lambda p: p.open_fds),
}


def _phase_counts(profiles: tuple[ProfileMetrics, ...]) -> tuple[tuple[str, int], ...]:
    counts: dict[str, int] = {}
    for p in profiles:
        counts[p.phase] = counts.get(p.phase, 0) + 1
    return tuple(counts.items())


def _profile_samples(name: str, p: ProfileMetrics) -> list[Sample]:
    base: Labels = (("profile", p.name),)

    def one(value: float | None) -> list[Sample]:
        return [] if value is None else [("", base, float(value))]

    if name == "profile_phase":
        return _state_set("phase", catalog.PHASES, p.phase, base)
    if name == "profile_sync":
        return _state_set("status", catalog.SYNC_STATUSES, p.sync, base)
    if name == "profile_last_exit_class":
        return [] if p.last_exit_class is None else _state_set("class", catalog.EXIT_CLASSES, p.last_exit_class, base)
    if name == "profile_actions_total":
        return _counts("kind", catalog.ACTION_KINDS, p.actions, base)
    return one({
        "profile_up": float(p.up),
        "profile_desired_running": float(p.desired_running),
        "profile_phase_transition_timestamp_seconds": p.phase_since,
        "profile_restarts_total": p.restarts,
        "profile_consecutive_failures": p.consecutive_failures,
        "profile_last_exit_code": p.last_exit_code,
        "profile_last_exit_timestamp_seconds": p.last_exit_at,
        "profile_start_time_seconds": p.started_at,
        "profile_last_heartbeat_timestamp_seconds": p.heartbeat_at,
        "profile_active_agents": p.active_agents,
    }[name])
