"""Where hermes-fleet's time goes in a bench scenario: its controller (or CLI) under cProfile.

    python bench/profile_ours.py respawn|idle|down|diff [--n N] [--kills K] [--seconds S] [--top K] [--workdir DIR]

respawn: N children, each (or the first --kills K) killed once with SIGKILL while the controller runs under
         cProfile.
idle:    N children, the controller profiled over S idle seconds (its periodic resync passes).
down:    N children, `hermes-fleet down` while the controller runs under cProfile (the CLI
         side is profiled too, in-process).
diff:    `hermes-fleet diff` on a 1,000-profile manifest, in-process under cProfile.
The profiles are printed (cumulative and own time) and kept as .prof files in the work dir.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import install, procs  # noqa: E402
from bench.adapters.base import ChildProgram, python_executable  # noqa: E402
from bench.adapters.hermes_fleet import HermesFleetAdapter  # noqa: E402
from bench.microbench import big_manifest  # noqa: E402
from bench.procs import Reaper, Tracker, wait_until  # noqa: E402
from bench.scenarios import Fleet  # noqa: E402


def print_profile(path: Path, top: int, title: str) -> None:
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        stats = pstats.Stats(str(path), stream=out)
        stats.strip_dirs().sort_stats(key).print_stats(top)
        print(f"===== {title}: top {top} by {key} =====")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:12000])


def profile_diff(tool: install.ToolInstall, root: Path, top: int) -> None:
    manifest = big_manifest(root / "big.yaml", ChildProgram(python_executable()))
    out = root / "diff.prof"
    argv = ["hermes-fleet", "diff", "-f", str(manifest), "--state-dir", str(root / "empty-state"), "-o", "json"]
    saved, sys.argv = sys.argv, argv
    devnull = open(os.devnull, "w")
    real_stdout, sys.stdout = sys.stdout, devnull
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    try:
        profiler.runcall(runpy.run_module, "fleet.cli.main", run_name="__main__")
    except SystemExit:
        pass
    finally:
        sys.stdout, sys.argv = real_stdout, saved
        devnull.close()
    print(f"diff in-process: {(time.perf_counter() - t0) * 1000:.0f} ms (imports included, under cProfile)")
    profiler.dump_stats(str(out))
    print_profile(out, top, "diff")


# The controller leaves without the interpreter's teardown (`exit_at_once`), so `python -m cProfile` would never
# write its profile: this runs its `main` under a profiler and writes the profile before that exit.
PROFILED_CONTROLLER = """
import cProfile, sys
out = sys.argv[1]
sys.argv = ["fleet.controller", *sys.argv[2:]]
from fleet.controller.__main__ import exit_at_once, main
profiler = cProfile.Profile()
code = profiler.runcall(main)
profiler.dump_stats(out)
exit_at_once(code)
"""


def profile_controller(mode: str, tool: install.ToolInstall, root: Path, n: int, seconds: float, top: int,
                       kills: int | None = None) -> None:
    tracker = Tracker()
    adapter = HermesFleetAdapter(tool, ChildProgram(python_executable()), tracker)
    fleet = Fleet(adapter, tracker, root / f"{mode}-fleet", n)
    controller: subprocess.Popen | None = None
    out = root / f"controller-{mode}.prof"
    try:
        adapter.start()
        fleet.wait_all_running()
        adapter.run([adapter.cli, "controller", "stop", "--state-dir", str(adapter.state)])  # gateways keep running
        controller = procs.popen([python_executable_of(tool), "-c", PROFILED_CONTROLLER, str(out),
                                  "--state-dir", str(adapter.state)], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        tracker.add(controller.pid, "profiled controller")
        if not wait_until(lambda: len(adapter.managed_child_pids()) == n, 60):
            raise RuntimeError("the profiled controller did not adopt the fleet")
        t0 = time.monotonic()
        if mode == "respawn":
            latencies = []
            for name in fleet.names[:kills]:
                victim = fleet.live_pid(name)
                start = time.monotonic_ns()
                os.kill(victim, signal.SIGKILL)
                wait_until(lambda: fleet.observe() is not None and any(e.pid != victim for e in fleet.log.starts(name, start)), 30, 0.005)
                replacement = next(e for e in fleet.log.starts(name, start) if e.pid != victim)
                latencies.append((replacement.monotonic_ns - start) / 1e6)
                time.sleep(0.2)
            print("respawn latencies under cProfile (ms):", ", ".join(f"{v:.0f}" for v in latencies))
        elif mode == "idle":
            time.sleep(seconds)
        elif mode == "down":
            started = time.perf_counter()
            adapter.stop_all()
            print(f"down under cProfile: {(time.perf_counter() - started) * 1000:.0f} ms")
        print(f"workload: {time.monotonic() - t0:.1f}s")
        if controller.poll() is None:
            controller.send_signal(signal.SIGTERM)
        controller.wait(timeout=60)
        print_profile(out, top, f"controller ({mode}, N={n})")
    finally:
        if controller is not None and controller.poll() is None:
            controller.kill()
            controller.wait()
        for note in fleet.close():
            print("clean-up:", note)


def python_executable_of(tool: install.ToolInstall) -> str:
    """The interpreter the CLI's script runs with (its shebang), so the controller is the real one."""
    first = Path(tool.executable("hermes-fleet")).read_text().splitlines()[0]
    return first[2:].strip() if first.startswith("#!") else sys.executable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("respawn", "idle", "down", "diff"))
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--kills", type=int, default=None, help="respawn: kill only the first K children")
    parser.add_argument("--seconds", type=float, default=65.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    keep = args.workdir is not None
    root = Path(args.workdir).resolve() if keep else Path(tempfile.mkdtemp(prefix="hermes-fleet-profile-"))
    root.mkdir(parents=True, exist_ok=True)
    tool = install.locate_hermes_fleet(None)
    if not tool.available:
        print(tool.reason, file=sys.stderr)
        return 1
    reaper = Reaper()
    reaper.start()
    try:
        if args.mode == "diff":
            profile_diff(tool, root, args.top)
        else:
            profile_controller(args.mode, tool, root, args.n, args.seconds, args.top, args.kills)
        return 0
    finally:
        reaper.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
