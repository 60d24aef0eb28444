"""Draw the scaling curve of results.json as PNGs: one per metric, one line per tool (N on a log axis).

    python bench/plots.py [bench/results.json] [-o DIR]

Writes `scaling_cold_start.png`, `scaling_respawn.png`, `scaling_idle_cpu.png`, `scaling_rss.png` and
`scaling_status.png` next to the JSON (or into DIR). Needs matplotlib, a bench-only dependency
(`pip install -e '.[bench]'`, or `pip install matplotlib`); it is imported only when plotting, with the
non-interactive Agg backend, so the rest of the bench runs without it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.catalog import SUPERVISORS

INSTALL_HINT = ("install it with `pip install -e '.[bench]'` or `pip install matplotlib`, then draw them with "
                "`python bench/plots.py bench/results.json`")
STYLE = {  # the same colour and marker for a tool in every plot
    "hermes-fleet": ("tab:blue", "o"),
    "supervisord": ("tab:orange", "s"),
    "circus": ("tab:green", "^"),
    "pm2": ("tab:purple", "D"),
}
STATUS_COMMANDS = {"hermes-fleet": "hermes-fleet status", "supervisord": "supervisorctl status",
                   "circus": "circusctl status", "pm2": "pm2 jlist"}


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed: the plots are skipped, the JSON and Markdown are not."""


@dataclass(frozen=True)
class Plot:
    metric: str  # the scaling scenario id; the file is <metric>.png
    title: str
    ylabel: str
    scale: float = 1.0  # multiplies the recorded value (ms -> s)


PLOTS = (
    Plot("scaling_cold_start", "Cold start: start command to the last child running", "cold start (s)", 1e-3),
    Plot("scaling_respawn", "Respawn latency after SIGKILL of one child (median)", "respawn latency (ms)"),
    Plot("scaling_idle_cpu", "Idle CPU of the supervisor (not the children)", "CPU (% of one core, mean)"),
    Plot("scaling_rss", "Idle RSS of the supervisor (not the children)", "RSS (MiB, median)"),
    Plot("scaling_status", "Status command latency (whole command, median)", "wall time (ms)"),
)


def series(scaling: dict, metric: str, tool: str, scale: float = 1.0) -> tuple[list[int], list[float], list[int]]:
    """(N with a value, the medians there, N without one) of one tool's curve."""
    xs, ys, missing = [], [], []
    for n_text, point in sorted(scaling["results"][tool].get("points", {}).items(), key=lambda kv: int(kv[0])):
        median = (point.get(metric) or {}).get("median")
        if median is None:
            missing.append(int(n_text))
        else:
            xs.append(int(n_text))
            ys.append(median * scale)
    return xs, ys, missing


def _matplotlib():
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotsUnavailable(f"matplotlib is not installed; {INSTALL_HINT}") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    return plt, FuncFormatter, LogLocator, NullFormatter


def render_plots(results: dict, out_dir: Path) -> list[Path]:
    """One PNG per scaling metric in `out_dir`; returns the files written. Raises PlotsUnavailable without
    matplotlib."""
    scaling = results.get("scaling")
    if not scaling or not scaling.get("results"):
        return []
    plt, FuncFormatter, LogLocator, NullFormatter = _matplotlib()
    tools = [t for t in SUPERVISORS if t in scaling["results"]] + sorted(set(scaling["results"]) - set(SUPERVISORS))
    ns = sorted(int(n) for n in scaling.get("n", []))
    subtitle = f"measured {str(scaling.get('generated_at', '?'))[:10]}"
    cpus = results.get("machine", {}).get("logical_cpus")
    if cpus:
        subtitle += f" on {cpus} logical CPUs"
    loads = [v for e in scaling.get("host_load", []) for v in (e["loadavg_1m_before"], e["loadavg_1m_after"])]
    if loads:
        subtitle += f", 1-min load {min(loads):.1f}-{max(loads):.1f}"
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for plot in PLOTS:
        fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
        curves = {tool: series(scaling, plot.metric, tool, plot.scale) for tool in tools}
        positive = [v for xs, ys, _ in curves.values() for v in ys if v > 0]
        log_y = bool(positive) and max(positive) / min(positive) > 20
        floor = min(positive) / 2 if log_y else 0.0  # where a measured 0 is drawn on a log axis
        zeros = False
        for tool, (xs, ys, missing) in curves.items():
            if not xs and not missing:
                continue
            label = STATUS_COMMANDS.get(tool, tool) if plot.metric == "scaling_status" else tool
            if missing:
                label += " (no point at N=" + ", ".join(f"{n:,}" for n in missing) + ")"
            colour, marker = STYLE.get(tool, (None, "o"))
            drawn = [max(y, floor) for y in ys]
            ax.plot(xs, drawn, marker=marker, color=colour, label=label, linewidth=2.2 if tool == "hermes-fleet" else 1.5,
                    markersize=6)
            at_floor = [(x, y) for x, y, raw in zip(xs, drawn, ys, strict=True) if log_y and raw <= 0]
            if at_floor:
                zeros = True
                ax.plot(*zip(*at_floor, strict=True), linestyle="none", marker=marker, markersize=7,
                        markerfacecolor="white", markeredgecolor=colour)
        ax.set_xscale("log")
        if zeros:
            ax.annotate("hollow marker: 0 measured, drawn at the bottom of the log axis", xy=(0.01, 0.01),
                        xycoords="axes fraction", fontsize=8, color="0.35")
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            if max(positive) / min(positive) <= 300:  # few decades: label 2x and 5x too
                ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
                ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            else:
                ax.yaxis.set_minor_formatter(NullFormatter())
            ylabel = plot.ylabel + ", log scale"
        else:
            ax.set_ylim(bottom=0)
            ylabel = plot.ylabel
        if ns:
            ax.set_xticks(ns)
            ax.set_xticklabels([f"{n:,}" for n in ns])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlim(min(ns) / 1.4, max(ns) * 1.4)
        ax.set_xlabel("children N (log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{plot.title}\n{subtitle}", fontsize=11)
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", axis="y", alpha=0.12)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"{plot.metric}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", default=str(here / "results.json"))
    parser.add_argument("-o", "--out-dir", default=None, help="default: the directory of the JSON")
    args = parser.parse_args(argv)
    source = Path(args.results)
    results = json.loads(source.read_text())
    if not results.get("scaling"):
        print(f"{source}: no scaling curve (run: python bench/run.py --scenarios scaling --merge)", file=sys.stderr)
        return 1
    try:
        written = render_plots(results, Path(args.out_dir) if args.out_dir else source.parent)
    except PlotsUnavailable as exc:
        print(f"plots skipped: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
