"""Render results.json as results.md (a scenario x supervisor table, and the scaling curve's table with
links to its plots); run it to regenerate.

    python bench/report.py [bench/results.json] [-o bench/results.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.catalog import SUPERVISORS  # noqa: E402


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms" and value >= 1000:
        return f"{value / 1000:.2f} s"
    if unit in ("of 10", "count"):
        return f"{value:g}"
    if unit == "bytes":
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1 or value == 0:
        return f"{value:.2f}"
    return f"{value:.3f}"


def with_unit(value: float | None, unit: str) -> str:
    text = fmt(value, unit)
    if value is None or text.endswith(" s"):
        return text
    return f"{text} ms" if unit == "ms" else text


def cell_text(result: dict | None, unit: str, spread: tuple[str, ...] = ("p95",)) -> str:
    if result is None:
        return "n/a"
    if result.get("skipped"):
        return "skipped"
    if result.get("pending"):
        return "pending"
    if result.get("median") is None:
        return "error" if result.get("errors") else "-"
    text = with_unit(result["median"], unit)
    if unit not in ("of 10", "count") and result.get("n", 0) > 1:
        shown = [(stat, result.get(stat)) for stat in spread if result.get(stat) is not None]
        if list(spread) == ["p95"] and shown:
            text += f" ({with_unit(shown[0][1], unit)})"
        elif shown:
            text += " (" + ", ".join(f"{stat} {with_unit(value, unit)}" for stat, value in shown) + ")"
    if result.get("errors"):
        text += " !"
    return text


def met_text(met: bool | None, sc: dict | None = None) -> str:
    text = {True: "yes", False: "**no**", None: "-"}[met]
    if sc is not None and sc.get("noise") is not None:
        text += f" ({sc['difference']:+.3f} vs noise {sc['noise']:.3f})"
    return text


def render_markdown(results: dict) -> str:
    present = set(results.get("tools", {}))
    for sc in results.get("scenarios", {}).values():
        present.update(sc["results"])
    supervisors = [s for s in SUPERVISORS if s in present]
    out = ["# hermes-fleet benchmark results", ""]
    settings = results.get("settings", {})
    if settings.get("quick"):
        out += ["**Quick smoke run: too few repetitions to quote.**", ""]
    if settings.get("note") and results.get("scaling", {}).get("generated_at") != results.get("generated_at"):
        out += [f"Note on the run of {results.get('generated_at', '?')}: {settings['note']}", ""]  # else under Scaling
    out += [
        f"Generated {results.get('generated_at', '?')} by `{results.get('command', 'python bench/run.py')}`.",
        "Cells: median (p95) over repetitions, unless the cell names other statistics. Idle CPU: mean over one idle "
        "window; idle RSS: per-second samples in it.",
        "Ratio: hermes-fleet median / best peer median in the same run (lower is better).",
        "",
        "| scenario | unit | " + " | ".join(supervisors) + " | ours / best peer | target | met |",
        "|---|---|" + "---|" * len(supervisors) + "---|---|---|",
    ]
    for sid, sc in results.get("scenarios", {}).items():
        row = [sc["title"], sc["unit"]]
        row += [cell_text(sc["results"].get(sup), sc["unit"], tuple(sc.get("spread", ("p95",)))) for sup in supervisors]
        ratio = sc.get("ratio_ours_to_best_peer")
        best = sc.get("best_peer")
        row.append(f"{ratio:.2f} (vs {best})" if ratio is not None else "-")
        row.append(sc.get("target") or "-")
        row.append(met_text(sc.get("target_met"), sc) if sc.get("target") else "-")
        out.append("| " + " | ".join(row) + " |")
    out += _provenance(results)
    out += _scaling(results, supervisors)
    out += ["", "## Tools", ""]
    for name, tool in results.get("tools", {}).items():
        state = f"version {tool['version']}" if tool.get("available") else f"skipped: {tool.get('reason')}"
        out.append(f"- {name}: {state}")
    notes = _notes(results)
    if notes:
        out += ["", "## Notes, errors and pending scenarios", ""] + notes
    load = results.get("host_load", [])
    if load:
        values = [v for entry in load for v in (entry["loadavg_1m_before"], entry["loadavg_1m_after"])]
        cpus = results.get("machine", {}).get("logical_cpus") or 1
        out += ["", "## Host load", "",
                f"1-minute load average around each scenario group: min {min(values):.2f}, max {max(values):.2f} "
                f"on {cpus} logical CPUs. Groups run one supervisor after the other, so each tool meets a similar load."]
        for run in results.get("earlier_runs", []):
            earlier = [v for entry in run.get("host_load", []) for v in (entry["loadavg_1m_before"], entry["loadavg_1m_after"])]
            if earlier:
                out.append(f"Earlier run of {run.get('generated_at')}: min {min(earlier):.2f}, max {max(earlier):.2f}.")
                values += earlier
        if max(values) > 0.75 * cpus:
            out.append("**Other work was running on this host during the run; treat small differences as noise.**")
    machine = results.get("machine", {})
    if machine:
        out += ["", "## Machine", ""]
        out += [f"- {key}: {value}" for key, value in machine.items()]
    return "\n".join(out) + "\n"


def _provenance(results: dict) -> list[str]:
    """Which rows an earlier run measured, when results.json was merged (run.py --merge)."""
    by_run: dict[tuple, list[str]] = {}
    for sc in results.get("scenarios", {}).values():
        if sc.get("run"):
            by_run.setdefault((sc["run"].get("generated_at"), sc["run"].get("command")), []).append(sc["title"])
    if not by_run:
        return []
    measured = [sc["title"] for sc in results["scenarios"].values() if not sc.get("run")]
    groups = ", ".join(results.get("settings", {}).get("scenario_groups", [])) or "?"
    out = ["", "Rows measured in this run: " + "; ".join(measured) + "." if measured
           else f"No row of this table was measured in this run (it ran: {groups})."]
    for (generated, command), titles in by_run.items():
        out.append(f"All other rows come from an earlier run, generated {generated} by `{command}`."
                   if len(by_run) == 1 else f"Generated {generated} by `{command}`: " + "; ".join(titles) + ".")
    return out


def _scaling(results: dict, supervisors: list[str]) -> list[str]:
    """The `## Scaling` section: how the curve was measured, a metric x N x tool table, the plots."""
    scaling = results.get("scaling")
    if not scaling or not scaling.get("results"):
        return []
    tools = [s for s in supervisors if s in scaling["results"]] + sorted(set(scaling["results"]) - set(supervisors))
    ns = sorted(int(n) for n in scaling.get("n", []))
    given = scaling.get("settings", {})
    cfg = {key: f"{given[key]:g}" if isinstance(given.get(key), (int, float)) else "?"
           for key in ("scaling_window", "idle_settle", "scaling_status_runs", "scaling_kills")}
    out = ["", "## Scaling", ""]
    if scaling.get("quick"):
        out += ["**Quick smoke run: too few repetitions to quote.**", ""]
    out.append(f"Measured {scaling.get('generated_at', '?')} by `{scaling.get('command', '?')}`.")
    if scaling.get("note"):
        out.append(f"Note on this run: {scaling['note']}")
    out += [
        "",
        f"N = {', '.join(f'{n:,}' for n in ns)} children of `bench/child.py`: one fresh fleet per tool and N, N "
        "ascending, each tool configured as for the other scenarios. Per point: cold start (one start: from the "
        "start command to the last child's own start stamp); idle CPU (mean over "
        f"{cfg['scaling_window']} s after a {cfg['idle_settle']} s settle, % of one core) and "
        "RSS (median of the per-second samples) of the supervisor's own process(es), not the children; the status "
        f"command (median of {cfg['scaling_status_runs']} runs of the whole command: `hermes-fleet status`, "
        "`supervisorctl status`, `circusctl status`, `pm2 jlist`); respawn latency (median of "
        f"{cfg['scaling_kills']} SIGKILLs of different children, each until its replacement's start stamp). "
        "Cells: median (p95) where there are several samples.",
    ]
    load = [v for e in scaling.get("host_load", []) for v in (e["loadavg_1m_before"], e["loadavg_1m_after"])]
    if load:
        cpus = results.get("machine", {}).get("logical_cpus") or 1
        out.append(f"1-minute load average around each tool's curve: min {min(load):.2f}, max {max(load):.2f} on "
                   f"{cpus} logical CPUs; per point in the last row.")
    out += ["", "| metric | N | " + " | ".join(tools) + " |", "|---|---|" + "---|" * len(tools)]
    metrics = scaling.get("metrics", {})
    missing: list[str] = []
    for sid, meta in metrics.items():
        for i, n in enumerate(ns):
            label = f"{meta.get('label') or meta['title']} ({meta['unit']})"
            row = [label if i == 0 else "", f"{n:,}"]
            for tool in tools:
                entry = scaling["results"][tool]
                point = entry.get("points", {}).get(str(n), {}).get(sid)
                if entry.get("skipped"):
                    row.append("skipped")
                elif point is None:
                    row.append("-")
                elif point.get("median") is None:
                    row.append("missing")
                    reason = point.get("skipped") or next(iter(point.get("errors", [])), "no sample")
                    missing.append(f"- {tool}, N={n:,}, {meta['title']}: {reason}")
                else:
                    row.append(cell_text(point, meta["unit"]))
                    missing += [f"- {tool}, N={n:,}, {meta['title']}: error: {err}"
                                for err in dict.fromkeys(point.get("errors", []))]
            out.append("| " + " | ".join(row) + " |")
    for i, n in enumerate(ns):
        row = ["host load (1-min average, before / after)" if i == 0 else "", f"{n:,}"]
        for tool in tools:
            first = metrics and scaling["results"][tool].get("points", {}).get(str(n), {}).get(next(iter(metrics)))
            extra = (first or {}).get("extra", {})
            before, after = extra.get("loadavg_1m_before"), extra.get("loadavg_1m_after")
            row.append(f"{before[0]:.2f} / {after[0]:.2f}" if before and after else "-")
        out.append("| " + " | ".join(row) + " |")
    kept = {tool: e["run"] for tool, e in scaling["results"].items() if e.get("run")}
    if kept:
        out.append("")
        out += [f"- {tool}: from an earlier run, generated {run.get('generated_at')} by `{run.get('command')}`."
                for tool, run in kept.items()]
    skipped = [f"- {tool}: skipped: {e['skipped']}" for tool, e in scaling["results"].items() if e.get("skipped")]
    cleanup = [f"- {tool}, N={int(n):,}: clean-up: {note}" for tool, e in scaling["results"].items()
               for n, point in e.get("points", {}).items() for cell in point.values()
               for note in dict.fromkeys(cell.get("extra", {}).get("cleanup", []))]
    if skipped or missing or cleanup:
        out += ["", "Missing points, errors and clean-up:", ""] + skipped + list(dict.fromkeys(missing)) + cleanup
    out += ["", "Plots (one line per tool; N on a log axis, and the value axis too where the tools differ by more "
                "than 20x):", ""]
    for sid, meta in metrics.items():
        out.append(f"![{meta['title']}]({meta.get('plot', sid + '.png')})")
    out += ["", "Regenerate them from the JSON with `python bench/plots.py bench/results.json` (needs matplotlib, a "
                "bench-only extra: `pip install -e '.[bench]'`)."]
    return out


HIDDEN_EXTRAS = {"per_second"}  # raw samples kept in the JSON for the noise verdicts


def _notes(results: dict) -> list[str]:
    notes = []
    skipped: dict[str, str] = {}
    for sc in results.get("scenarios", {}).values():
        for sup, r in sc["results"].items():
            if r.get("skipped"):
                skipped.setdefault(sup, r["skipped"])
    notes += [f"- {sup}: skipped: {reason}" for sup, reason in skipped.items()]
    for sid, sc in results.get("scenarios", {}).items():
        for sup, r in sc["results"].items():
            if r.get("pending"):
                notes.append(f"- {sid} / {sup}: pending: {r['pending']}")
            for err in dict.fromkeys(r.get("errors", [])):
                notes.append(f"- {sid} / {sup}: error: {err}")
            for key, values in r.get("extra", {}).items():
                if key in HIDDEN_EXTRAS:
                    continue
                if key == "cleanup":
                    for note in dict.fromkeys(values):
                        notes.append(f"- {sid} / {sup}: clean-up: {note}")
                elif values and all(isinstance(v, (int, float)) for v in values):
                    ordered = sorted(values)
                    notes.append(f"- {sid} / {sup}: {key}: median {fmt(ordered[len(ordered) // 2], 'x')}, all {values}")
                else:
                    notes.append(f"- {sid} / {sup}: {key}: {', '.join(map(str, dict.fromkeys(values)))}")
    return notes


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", default=str(here / "results.json"))
    parser.add_argument("-o", "--output", default=None, help="default: results.md next to the JSON")
    args = parser.parse_args(argv)
    source = Path(args.results)
    target = Path(args.output) if args.output else source.with_suffix(".md")
    target.write_text(render_markdown(json.loads(source.read_text())))
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
