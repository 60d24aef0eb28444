"""What each scenario measures, in which unit, and the target hermes-fleet must meet.

Targets compare our median (or another statistic, `stat`) with the best peer measured in
the same run ("best" is the lowest value), with one named peer, with a fixed number, or
with another of our scenarios within the noise of the two (`within_noise`: the
difference of the means of per-second samples is at most two standard errors). The
report and the JSON both read this table.
"""

from __future__ import annotations

from dataclasses import dataclass

OURS = "hermes-fleet"
PEERS = ("supervisord", "circus", "pm2")
SUPERVISORS = (OURS, *PEERS)


@dataclass(frozen=True)
class Target:
    kind: str  # le_best_peer | lt_best_peer | le_peer | eq | lt | within_noise | none
    value: float | None = None
    text: str = ""
    stat: str = "median"  # which of our statistics is judged (median, p95, p99, max)
    peer: str = ""  # le_peer: the peer compared with
    ref: str = ""  # within_noise: the scenario compared with

    def met(self, ours: float | None, best_peer: float | None) -> bool | None:
        """`best_peer` is the reference value: the best peer's median, or `peer`'s for le_peer.
        within_noise is judged from samples (bench.results), not here."""
        if ours is None or self.kind in ("none", "within_noise"):
            return None
        if self.kind in ("le_best_peer", "lt_best_peer", "le_peer"):
            if best_peer is None:
                return None
            return ours < best_peer if self.kind == "lt_best_peer" else ours <= best_peer
        if self.kind == "eq":
            return ours == self.value
        if self.kind == "lt":
            return ours < self.value
        raise ValueError(self.kind)


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    unit: str
    group: str  # which runner produces it (see bench/scenarios.py)
    target: Target = Target("none")
    ours_only: bool = False
    ratio: bool = True  # counts have no meaningful ratio
    only: tuple[str, ...] = ()  # the supervisors this scenario runs for (empty: all; see ours_only)
    spread: tuple[str, ...] = ("p95",)  # the statistics shown after the median in the table
    per_n: bool = False  # a scaling curve: one point per fleet size N (results.json "scaling", not the main table)
    label: str = ""  # a short name (the scaling table)

    def applies_to(self, supervisor: str) -> bool:
        if self.ours_only:
            return supervisor == OURS
        return not self.only or supervisor in self.only


NO_TARGET = Target("none")
METRICS_RUNS = (OURS, "supervisord")  # the metrics group measures supervisord only as the RSS reference

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("respawn_n10", "respawn latency after SIGKILL (N=10)", "ms", "respawn",
             Target("le_best_peer", text="median <= fastest peer")),
    Scenario("cold_start_n10", "cold start, N=10", "ms", "lifecycle_n10"),
    Scenario("cold_start_n100", "cold start, N=100", "ms", "lifecycle_n100",
             Target("lt_best_peer", text="faster than every peer")),
    Scenario("first_child_n10", "cold start, N=10: to the first child's start", "ms", "lifecycle_n10",
             Target("le_best_peer", text="median <= fastest peer")),
    Scenario("first_child_n100", "cold start, N=100: to the first child's start", "ms", "lifecycle_n100",
             Target("le_best_peer", text="median <= fastest peer")),
    Scenario("idle_cpu_n10", "idle CPU of the supervisor, N=10 (mean over the window)", "% of one core", "lifecycle_n10"),
    Scenario("idle_rss_n10", "idle RSS of the supervisor, N=10", "MiB", "lifecycle_n10"),
    Scenario("idle_cpu_n100", "idle CPU of the supervisor, N=100 (mean over the window)", "% of one core", "lifecycle_n100",
             Target("le_best_peer", text="no higher than the leanest peer")),
    Scenario("idle_rss_n100", "idle RSS of the supervisor, N=100", "MiB", "lifecycle_n100",
             Target("le_best_peer", text="no higher than the leanest peer")),
    # Metrics (issue 15): hermes-fleet at N=100 with metrics off and on (HTTP listener and textfile), and
    # supervisord's idle RSS at N=100 from the same run as the reference (the same samples in each RSS row).
    Scenario("metrics_rss_off_n100", "idle RSS of the controller, N=100, metrics off", "MiB", "metrics",
             only=METRICS_RUNS),
    Scenario("metrics_rss_on_n100", "idle RSS of the controller, N=100, metrics on (HTTP + textfile)", "MiB", "metrics",
             Target("le_peer", text="<= supervisord's", peer="supervisord"), only=METRICS_RUNS),
    Scenario("metrics_rss_scraped_n100", "RSS of the controller, N=100, metrics on, scraped every 1 s", "MiB", "metrics",
             Target("le_peer", text="<= supervisord's", peer="supervisord"), only=METRICS_RUNS),
    Scenario("metrics_cpu_off_n100", "idle CPU of the controller, N=100, metrics off (mean over the window)",
             "% of one core", "metrics", ours_only=True, ratio=False),
    Scenario("metrics_cpu_on_n100", "idle CPU of the controller, N=100, metrics on (mean over the window)",
             "% of one core", "metrics", Target("within_noise", text="within noise of metrics off",
                                                ref="metrics_cpu_off_n100"), ours_only=True, ratio=False),
    Scenario("metrics_cpu_scraped_n100", "CPU of the controller, N=100, metrics on, scraped every 1 s (mean over the window)",
             "% of one core", "metrics", Target("within_noise", text="within noise of metrics off",
                                                ref="metrics_cpu_off_n100"), ours_only=True, ratio=False),
    Scenario("metrics_scrape_n100", "GET /metrics at N=100, back to back: latency", "ms", "metrics",
             Target("lt", 20, "under 20 ms (p99)", stat="p99"), ours_only=True, ratio=False, spread=("p99", "max")),
    Scenario("metrics_scrape_bytes_n100", "GET /metrics at N=100: body size", "bytes", "metrics",
             ours_only=True, ratio=False, spread=("max",)),
    Scenario("kill9_adopted", "supervisor kill -9 + restart (N=10): children adopted", "of 10", "kill9", ratio=False),
    Scenario("kill9_duplicated", "supervisor kill -9 + restart (N=10): children duplicated", "of 10", "kill9",
             Target("eq", 0, "zero duplicates"), ratio=False),
    Scenario("kill9_restarted", "supervisor kill -9 + restart (N=10): children started anew", "of 10", "kill9",
             Target("eq", 0, "zero restarts"), ratio=False),
    Scenario("kill9_killed", "supervisor kill -9 + restart (N=10): old children dead", "of 10", "kill9",
             Target("eq", 0, "none killed"), ratio=False),
    Scenario("kill9_converge", "supervisor kill -9 + restart (N=10): time to converged", "ms", "kill9"),
    Scenario("config_restarted", "config change of 1 of 10: children restarted", "count", "config",
             Target("eq", 1, "exactly one restart"), ratio=False),
    Scenario("config_apply", "config change of 1 of 10: time until it runs the new config", "ms", "config"),
    Scenario("stop_n10", "graceful stop of the fleet, N=10", "ms", "lifecycle_n10"),
    Scenario("stop_n100", "graceful stop of the fleet, N=100", "ms", "lifecycle_n100",
             Target("lt", 1000, "under 1 s")),
    Scenario("plan_1000_steady", "plan() for 1,000 running profiles (pure function)", "ms", "plan", ours_only=True, ratio=False),
    Scenario("plan_1000_cold", "plan() for 1,000 profiles, none running (pure function)", "ms", "plan", ours_only=True, ratio=False),
    Scenario("plan_10000_steady", "plan() for 10,000 running profiles (pure function)", "ms", "plan",
             Target("lt", 150, "under 150 ms"), ours_only=True, ratio=False),
    Scenario("diff_10", "`diff` wall time, 10-profile manifest", "ms", "diff",
             Target("lt", 120, "under 120 ms"), ours_only=True, ratio=False),
    Scenario("diff_1000", "`diff` wall time, 1,000-profile manifest", "ms", "diff",
             Target("lt", 300, "under 300 ms"), ours_only=True, ratio=False),
    Scenario("diff_10000", "`diff` wall time, 10,000-profile manifest", "ms", "diff",
             Target("lt", 3000, "under 3 s"), ours_only=True, ratio=False),
    # What a person waits for at the keyboard, each a fresh CLI process (a running fleet of 10).
    Scenario("cli_version", "`hermes-fleet --version`", "ms", "cli", Target("lt", 60, "under 60 ms"),
             ours_only=True, ratio=False),
    Scenario("cli_status_n10", "`status`, a running fleet of 10", "ms", "cli", Target("lt", 100, "under 100 ms"),
             ours_only=True, ratio=False),
    Scenario("cli_apply_noop_n10", "`apply` that changes nothing, a running fleet of 10", "ms", "cli",
             Target("lt", 150, "under 150 ms"), ours_only=True, ratio=False),
)

# The scaling curve: the same measurements at several fleet sizes (run.py --scaling-n), one point per
# (tool, N). Recorded per point under `scaling_point_id(id, n)`; results.json keeps them apart from the
# table above, under "scaling", and bench/plots.py draws one PNG per entry (`<id>.png`).
SCALING_NS = (10, 100, 500, 1000)
SCALING: tuple[Scenario, ...] = (
    Scenario("scaling_cold_start", "cold start: from the start command to the last child's start", "ms", "scaling",
             per_n=True, label="cold start"),
    Scenario("scaling_respawn", "respawn latency after SIGKILL of one child (median of the kills)", "ms", "scaling",
             per_n=True, label="respawn after SIGKILL"),
    Scenario("scaling_idle_cpu", "idle CPU of the supervisor (mean over the window)", "% of one core", "scaling",
             per_n=True, label="idle CPU of the supervisor"),
    Scenario("scaling_rss", "idle RSS of the supervisor", "MiB", "scaling", per_n=True, label="idle RSS of the supervisor"),
    Scenario("scaling_status", "status command (status / supervisorctl status / circusctl status / pm2 jlist)",
             "ms", "scaling", per_n=True, label="status command"),
)
SCENARIOS += SCALING

GROUPS = tuple(dict.fromkeys(s.group for s in SCENARIOS))


def scaling_point_id(scenario_id: str, n: int) -> str:
    """The recorder's id of one point of a scaling curve, e.g. `scaling_rss_n500`."""
    return f"{scenario_id}_n{n}"


def parse_scaling_point_id(cell_id: str) -> tuple[str, int] | None:
    """(`scaling_rss`, 500) for `scaling_rss_n500`; None for anything else."""
    base, sep, n = cell_id.rpartition("_n")
    if not sep or not n.isdigit() or not any(s.id == base for s in SCALING):
        return None
    return base, int(n)


def scenario(scenario_id: str) -> Scenario:
    return next(s for s in SCENARIOS if s.id == scenario_id)
