"""Benchmark hermes-fleet against supervisord, circus and PM2 on this machine.

    python bench/run.py [--quick] [--only SUPERVISOR,...] [--scenarios GROUP,...] [--reps N] [--scaling-n N,...]
                        [--workdir DIR] [--out DIR] [--merge] [--note TEXT]

Installs the peers into their own environments under a work directory, runs every
scenario against every available supervisor with the same tiny child program, and
writes results.json and results.md (see bench/README.md), and with the scaling group its PNG plots
(bench/plots.py, when matplotlib is installed). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import install, metrics, microbench, plots, scaling, scenarios  # noqa: E402
from bench.adapters.base import Adapter, ChildProgram, python_executable  # noqa: E402
from bench.adapters.circus import CircusAdapter  # noqa: E402
from bench.adapters.hermes_fleet import HermesFleetAdapter  # noqa: E402
from bench.adapters.pm2 import Pm2Adapter  # noqa: E402
from bench.adapters.supervisord import SupervisordAdapter  # noqa: E402
from bench.catalog import GROUPS, OURS, SCALING_NS, SCENARIOS, SUPERVISORS  # noqa: E402
from bench.procs import Reaper, Tracker  # noqa: E402
from bench.report import render_markdown  # noqa: E402
from bench.results import Recorder, build_results, merge_results  # noqa: E402
from bench.scenarios import Settings  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
ADAPTERS: dict[str, type[Adapter]] = {
    OURS: HermesFleetAdapter,
    "supervisord": SupervisordAdapter,
    "circus": CircusAdapter,
    "pm2": Pm2Adapter,
}

# The metrics windows are 60 s: the idle controller's resync pass comes every 24-36 s, so a window
# holds about two of them and the mean depends less on where they fall.
FULL = Settings(respawn_kills=20, lifecycle_n10_reps=5, lifecycle_n100_reps=3, kill9_reps=3,
                config_changes=5, idle_window=30.0, idle_settle=3.0, diff_reps=10, plan_reps=30,
                metrics_reps=2, metrics_window=60.0, scrapes=500)
QUICK = Settings(respawn_kills=5, lifecycle_n10_reps=2, lifecycle_n100_reps=1, kill9_reps=1,
                 config_changes=2, idle_window=5.0, idle_settle=1.0, diff_reps=3, plan_reps=5,
                 metrics_reps=1, metrics_window=5.0, scrapes=50,
                 scaling_ns=(10, 100), scaling_window=3.0, scaling_kills=3, scaling_status_runs=3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, 5 s idle windows (a smoke run)")
    parser.add_argument("--only", default=",".join(SUPERVISORS), help=f"comma list of supervisors ({', '.join(SUPERVISORS)})")
    parser.add_argument("--scenarios", default=",".join(GROUPS), help=f"comma list of scenario groups ({', '.join(GROUPS)})")
    parser.add_argument("--reps", type=int, default=None, help="repetitions for every scenario (overrides the defaults)")
    parser.add_argument("--scaling-n", dest="scaling_n", default=None,
                        help=f"fleet sizes of the scaling group (default: {','.join(map(str, SCALING_NS))}; "
                             f"with --quick: {','.join(map(str, QUICK.scaling_ns))})")
    parser.add_argument("--workdir", default=None, help="work directory (kept; reuses installed peers); default: a fresh temp dir, removed afterwards")
    parser.add_argument("--out", default=None, help="where results.json/results.md go (default: bench/, or the workdir with --quick)")
    parser.add_argument("--merge", action="store_true", help="keep the scenarios of the results.json already in --out that this run does not measure (each marked with its run)")
    parser.add_argument("--hermes-fleet", dest="hermes_fleet", default=None, help="path of the hermes-fleet CLI (default: next to this interpreter, or on PATH)")
    parser.add_argument("--note", default="", help="a remark about this run for results.md (e.g. that other work shared the host)")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for name in args.only:
        if name not in ADAPTERS:
            parser.error(f"unknown supervisor {name!r}")
    for group in args.scenarios:
        if group not in GROUPS:
            parser.error(f"unknown scenario group {group!r}")
    if args.scaling_n is not None:
        try:
            args.scaling_n = tuple(sorted({int(n) for n in args.scaling_n.split(",") if n.strip()}))
        except ValueError:
            parser.error(f"--scaling-n takes a comma list of fleet sizes, not {args.scaling_n!r}")
        if not args.scaling_n or min(args.scaling_n) < 1:
            parser.error("--scaling-n needs at least one fleet size, each at least 1")
    return args


def settings_for(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else FULL
    if getattr(args, "scaling_n", None):
        base = dataclasses.replace(base, scaling_ns=args.scaling_n)
    if args.reps is None:
        return base
    r = args.reps
    return dataclasses.replace(base, respawn_kills=r, lifecycle_n10_reps=r, lifecycle_n100_reps=r, kill9_reps=r,
                               config_changes=r, diff_reps=r, plan_reps=r, metrics_reps=r, scaling_kills=r,
                               scaling_status_runs=r)


def install_tools(root: Path, wanted: list[str], hermes_fleet: str | None) -> dict[str, install.ToolInstall]:
    installers = {
        OURS: lambda: install.locate_hermes_fleet(hermes_fleet),
        "supervisord": lambda: install.install_supervisord(root),
        "circus": lambda: install.install_circus(root),
        "pm2": lambda: install.install_pm2(root),
    }
    tools = {}
    for name in wanted:
        log(f"installing {name} ...")
        try:
            tools[name] = installers[name]()
        except Exception as exc:  # noqa: BLE001 - an installer crash skips that tool, not the run
            tools[name] = install.ToolInstall(name, False, reason=f"installer failed: {exc}")
        t = tools[name]
        log(f"  {name}: {'ok ' + t.version if t.available else 'SKIPPED: ' + t.reason}")
    return tools


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def group_steps(adapter: Adapter, tracker: Tracker, root: Path, settings: Settings, groups: list[str],
                recorder: Recorder) -> dict:
    wanted = {s.id for s in SCENARIOS if s.group in groups}
    return {
        "respawn": lambda: scenarios.run_respawn(adapter, tracker, root, settings.respawn_kills, recorder),
        "lifecycle_n10": lambda: scenarios.run_lifecycle(adapter, tracker, root, 10, settings.lifecycle_n10_reps,
                                                         settings.idle_window, settings.idle_settle, wanted, recorder),
        "lifecycle_n100": lambda: scenarios.run_lifecycle(adapter, tracker, root, 100, settings.lifecycle_n100_reps,
                                                          settings.idle_window, settings.idle_settle, wanted, recorder),
        "kill9": lambda: scenarios.run_kill9(adapter, tracker, root, settings.kill9_reps, recorder),
        "config": lambda: scenarios.run_config_change(adapter, tracker, root, settings.config_changes, recorder),
        "diff": lambda: microbench.run_diff(adapter.tool, adapter.child, root / "diff", settings.diff_reps, recorder),
        "plan": lambda: microbench.run_plan(adapter.child, root / "plan", settings.plan_reps, recorder),
        "cli": lambda: microbench.run_cli(adapter, tracker, root, settings.diff_reps, recorder),
        "metrics": lambda: metrics.run_metrics(adapter, tracker, root, settings.metrics_reps, settings.metrics_window,
                                               settings.idle_settle, settings.scrapes, recorder),
        "scaling": lambda: scaling.run_scaling(adapter, tracker, root, settings.scaling_ns, settings.scaling_window,
                                               settings.idle_settle, settings.scaling_kills,
                                               settings.scaling_status_runs, recorder),
    }


def run_groups(adapters: list[Adapter], tracker: Tracker, root: Path, settings: Settings, groups: list[str],
               recorder: Recorder, load: list[dict]) -> None:
    """Scenario group outermost, supervisors inside: every tool meets the same stretch of host load."""
    for group in groups:
        for adapter in adapters:
            if not any(s.applies_to(adapter.name) for s in SCENARIOS if s.group == group):
                continue
            log(f"{adapter.name}: {group}")
            before, started = os.getloadavg()[0], time.monotonic()
            try:
                group_steps(adapter, tracker, root / adapter.name, settings, groups, recorder)[group]()
            finally:
                tracker.end_all()
            load.append({"group": group, "supervisor": adapter.name, "seconds": round(time.monotonic() - started, 1),
                         "loadavg_1m_before": round(before, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)})
            log(f"{adapter.name}: {group} done in {time.monotonic() - started:.1f}s (load {before:.2f} -> {os.getloadavg()[0]:.2f})")


def command_line(argv: list[str]) -> str:
    """The command as results.md quotes it, without --note (results.md shows the note on its own)."""
    kept, skip, folder = [], False, False
    for arg in argv:
        if skip:
            skip = False
        elif folder:  # a folder of this host means nothing elsewhere
            kept.append(arg if not os.path.isabs(arg) else "DIR")
            folder = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            kept.append(arg)
            folder = arg in ("--workdir", "--out", "--hermes-fleet")
    return shlex.join(["python", "bench/run.py", *kept])


def mark_skipped(recorder: Recorder, supervisor: str, reason: str, groups: list[str]) -> None:
    for s in SCENARIOS:
        if s.group in groups and s.applies_to(supervisor):
            recorder.skip(s.id, supervisor, reason)


def _interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    # A SIGTERM to the harness unwinds through every finally-block, like Ctrl-C.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_for(args)
    keep = args.workdir is not None
    workdir = Path(args.workdir).resolve() if keep else Path(tempfile.mkdtemp(prefix="hermes-fleet-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out).resolve() if args.out else (workdir if args.quick else BENCH_DIR)
    signal.signal(signal.SIGTERM, _interrupt)
    tracker, reaper, recorder = Tracker(), Reaper(), Recorder()
    reaper.start()
    log(f"work directory: {workdir}")
    try:
        tools = install_tools(workdir / "tools", args.only, args.hermes_fleet)
        child = ChildProgram(python_executable())
        adapters = []
        for name in args.only:
            tool = tools[name]
            if tool.available:
                adapters.append(ADAPTERS[name](tool, child, tracker))
            else:
                mark_skipped(recorder, name, tool.reason, args.scenarios)
        load: list[dict] = []
        run_groups(adapters, tracker, workdir / "runs", settings, args.scenarios, recorder, load)
        results = build_results(
            recorder,
            tools={name: t.as_dict() for name, t in tools.items()},
            settings={"quick": args.quick, "only": args.only, "scenario_groups": args.scenarios,
                      "orphan_reaper": reaper.enabled, **settings.__dict__, "note": args.note},
            command=command_line(argv if argv is not None else sys.argv[1:]),
            load=load,
        )
        out.mkdir(parents=True, exist_ok=True)
        if args.merge and (out / "results.json").exists():
            results = merge_results(json.loads((out / "results.json").read_text()), results)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / "results.md").write_text(render_markdown(results))
        log(f"wrote {out / 'results.md'} and {out / 'results.json'}")
        if "scaling" in args.scenarios and results.get("scaling"):
            try:
                written = plots.render_plots(results, out)
                log(f"wrote {len(written)} scaling plots: {', '.join(p.name for p in written)}")
            except plots.PlotsUnavailable as exc:
                log(f"scaling plots skipped: {exc}")
        return 0
    finally:
        survivors = tracker.end_all()
        if survivors:
            log(f"ended {len(survivors)} leftover process(es) by PID")
        reaper.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
