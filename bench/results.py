"""Collecting samples per (scenario, supervisor) and turning them into results.json."""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import dataclass, field

import psutil

from bench.catalog import OURS, PEERS, SCENARIOS, Scenario
from bench.stats import summarize


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


def scenario_result(s: Scenario, cells: dict[str, Cell]) -> dict:
    per_supervisor = {}
    for supervisor, c in cells.items():
        summary = summarize(c.samples)
        per_supervisor[supervisor] = {
            **summary.as_dict(),
            "samples": c.samples,
            "errors": c.errors,
            "skipped": c.skipped,
            "pending": c.pending,
            "extra": c.extra,
        }
    peer_medians = {p: r["median"] for p, r in per_supervisor.items() if p in PEERS and r["median"] is not None}
    best_peer = min(peer_medians, key=peer_medians.get) if peer_medians else None
    ours = per_supervisor.get(OURS, {}).get("median")
    best = peer_medians.get(best_peer) if best_peer else None
    ratio = None
    if s.ratio and ours is not None and best:
        ratio = round(ours / best, 3)
    return {
        "title": s.title,
        "unit": s.unit,
        "target": s.target.text or None,
        "results": per_supervisor,
        "best_peer": best_peer,
        "best_peer_median": best,
        "ratio_ours_to_best_peer": ratio,
        "target_met": s.target.met(ours, best),
    }


def build_results(recorder: Recorder, *, tools: dict, settings: dict, command: str, load: list[dict] | None = None) -> dict:
    scenarios = {}
    for s in SCENARIOS:
        cells = {sup: c for (sid, sup), c in recorder.cells.items() if sid == s.id}
        if cells:
            scenarios[s.id] = scenario_result(s, cells)
    return {
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(),
        "tools": tools,
        "settings": settings,
        "host_load": load or [],
        "scenarios": scenarios,
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
