"""Collecting samples per (scenario, supervisor) and turning them into results.json."""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import dataclass, field

import psutil

from bench.catalog import OURS, PEERS, SCALING, SCENARIOS, Scenario, parse_scaling_point_id
from bench.stats import difference_and_noise, summarize


@dataclass
class Cell:
    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: str | None = None
    pending: str | None = None
    extra: dict = field(default_factory=dict)


class Recorder:
    def __init__(self) -> None:
        self.cells: dict[tuple[str, str], Cell] = {}

    def cell(self, scenario_id: str, supervisor: str) -> Cell:
        return self.cells.setdefault((scenario_id, supervisor), Cell())

    def add(self, scenario_id: str, supervisor: str, value: float) -> None:
        self.cell(scenario_id, supervisor).samples.append(round(float(value), 3))

    def error(self, scenario_id: str, supervisor: str, message: str) -> None:
        self.cell(scenario_id, supervisor).errors.append(message)

    def skip(self, scenario_id: str, supervisor: str, reason: str) -> None:
        self.cell(scenario_id, supervisor).skipped = reason

    def pending(self, scenario_id: str, supervisor: str, reason: str) -> None:
        self.cell(scenario_id, supervisor).pending = reason

    def extra(self, scenario_id: str, supervisor: str, key: str, value) -> None:
        self.cell(scenario_id, supervisor).extra.setdefault(key, []).append(value)


def cell_result(c: Cell) -> dict:
    return {**summarize(c.samples).as_dict(), "samples": c.samples, "errors": c.errors, "skipped": c.skipped,
            "pending": c.pending, "extra": c.extra}


def scenario_result(s: Scenario, cells: dict[str, Cell], ref_cells: dict[str, Cell] | None = None) -> dict:
    per_supervisor = {supervisor: cell_result(c) for supervisor, c in cells.items()}
    peer_medians = {p: r["median"] for p, r in per_supervisor.items() if p in PEERS and r["median"] is not None}
    best_peer = min(peer_medians, key=peer_medians.get) if peer_medians else None
    if s.target.kind == "le_peer":
        best_peer = s.target.peer if s.target.peer in peer_medians else None
    ours = per_supervisor.get(OURS, {}).get("median")
    best = peer_medians.get(best_peer) if best_peer else None
    ratio = None
    if s.ratio and ours is not None and best:
        ratio = round(ours / best, 3)
    judged = per_supervisor.get(OURS, {}).get(s.target.stat)
    result = {
        "title": s.title,
        "unit": s.unit,
        "target": s.target.text or None,
        "spread": list(s.spread),
        "results": per_supervisor,
        "best_peer": best_peer,
        "best_peer_median": best,
        "ratio_ours_to_best_peer": ratio,
        "target_met": s.target.met(judged, best),
    }
    if s.target.kind == "within_noise":
        result.update(noise_verdict(s, cells.get(OURS), (ref_cells or {}).get(OURS)))
    return result


def per_second(cell: Cell | None) -> list[float]:
    """The per-second samples of every window of a cell (kept in its extras as one list per window)."""
    if cell is None:
        return []
    return [v for window in cell.extra.get("per_second", []) for v in window]


def noise_verdict(s: Scenario, ours: Cell | None, reference: Cell | None) -> dict:
    judged = difference_and_noise(per_second(ours), per_second(reference))
    if judged is None:
        return {"target_met": None, "compared_with": s.target.ref}
    delta, noise = judged
    return {"target_met": delta <= noise, "compared_with": s.target.ref,
            "difference": round(delta, 4), "noise": round(noise, 4)}


def build_results(recorder: Recorder, *, tools: dict, settings: dict, command: str, load: list[dict] | None = None) -> dict:
    scenarios = {}
    for s in SCENARIOS:
        if s.per_n:
            continue  # the scaling curve goes under "scaling"
        cells = {sup: c for (sid, sup), c in recorder.cells.items() if sid == s.id}
        ref_cells = {sup: c for (sid, sup), c in recorder.cells.items() if sid == s.target.ref} if s.target.ref else None
        if cells:
            scenarios[s.id] = scenario_result(s, cells, ref_cells)
    generated_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results = {
        "generated_at": generated_at,
        "command": command,
        "machine": machine_info(),
        "tools": tools,
        "settings": settings,
        "host_load": load or [],
        "scenarios": scenarios,
    }
    scaling = build_scaling(recorder, settings=settings, load=load or [])
    if scaling:
        results["scaling"] = {"generated_at": generated_at, "command": command, **scaling}
    return results


SCALING_SETTINGS = ("scaling_window", "idle_settle", "scaling_kills", "scaling_status_runs")


def build_scaling(recorder: Recorder, *, settings: dict, load: list[dict]) -> dict:
    """The scaling curve: per tool, per N, per metric the summary of its cell (as in "scenarios"). A tool
    skipped as a whole (not installed) has "skipped"; a point that could not be measured has errors or a
    skip reason in its cells and no median."""
    by_tool: dict[str, dict] = {}
    for (cid, sup), c in recorder.cells.items():
        if any(cid == s.id for s in SCALING):  # the whole tool was skipped (run.py mark_skipped)
            by_tool.setdefault(sup, {"skipped": None, "points": {}})["skipped"] = c.skipped
            continue
        point = parse_scaling_point_id(cid)
        if point is None:
            continue
        sid, n = point
        entry = by_tool.setdefault(sup, {"skipped": None, "points": {}})
        entry["points"].setdefault(n, {})[sid] = cell_result(c)
    if not by_tool:
        return {}
    ns = sorted({n for entry in by_tool.values() for n in entry["points"]} | set(settings.get("scaling_ns") or ()))
    for entry in by_tool.values():
        entry["points"] = {str(n): entry["points"][n] for n in sorted(entry["points"])}
    return {
        "n": ns,
        "metrics": {s.id: {"title": s.title, "label": s.label, "unit": s.unit, "plot": f"{s.id}.png"} for s in SCALING},
        "settings": {key: settings[key] for key in SCALING_SETTINGS if key in settings},
        "quick": bool(settings.get("quick")),
        "note": settings.get("note") or "",
        "host_load": [entry for entry in load if entry.get("group") == "scaling"],
        "results": by_tool,
    }


def machine_info() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        model = platform.processor()
    return {
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


def merge_results(earlier: dict, latest: dict) -> dict:
    """`latest` with the scenarios of `earlier` it did not measure (re-running one group keeps the rest
    of a committed results.json). Each kept scenario says which run it came from, in "run"."""
    kept = {}
    for sid, sc in earlier.get("scenarios", {}).items():
        if sid not in latest.get("scenarios", {}):
            kept[sid] = {**sc, "run": sc.get("run") or {"generated_at": earlier.get("generated_at"),
                                                         "command": earlier.get("command")}}
    order = [s.id for s in SCENARIOS] + sorted(set(kept) - {s.id for s in SCENARIOS})
    scenarios = {sid: latest["scenarios"].get(sid) or kept[sid] for sid in order
                 if sid in latest.get("scenarios", {}) or sid in kept}
    earlier_runs = [*earlier.get("earlier_runs", []),
                    {"generated_at": earlier.get("generated_at"), "command": earlier.get("command"),
                     "settings": earlier.get("settings", {}), "host_load": earlier.get("host_load", [])}]
    merged = {**latest, "tools": {**earlier.get("tools", {}), **latest.get("tools", {})},
              "earlier_runs": earlier_runs, "scenarios": scenarios}
    scaling = merge_scaling(earlier.get("scaling"), latest.get("scaling"))
    if scaling:
        merged["scaling"] = scaling
    return merged


def merge_scaling(earlier: dict | None, latest: dict | None) -> dict | None:
    """The scaling curve of `latest`, plus the tools of `earlier`'s curve it did not measure (each marked
    with its run); a run without the scaling group keeps the earlier curve as it was."""
    if not latest:
        return earlier
    if not earlier:
        return latest
    results = dict(latest.get("results", {}))
    for tool, entry in earlier.get("results", {}).items():
        if tool not in results:
            results[tool] = {**entry, "run": entry.get("run") or {"generated_at": earlier.get("generated_at"),
                                                                  "command": earlier.get("command")}}
    ns = sorted({int(n) for entry in results.values() for n in entry.get("points", {})} | set(latest.get("n", [])))
    return {**latest, "n": ns, "results": results}
