"""hermes-fleet only: the pure planner on 1,000 profiles, and `diff` wall time on a 1,000-profile manifest."""

from __future__ import annotations

import importlib
import subprocess
import time
from pathlib import Path

from bench import procs
from bench.adapters.base import ChildProgram, base_env
from bench.adapters.hermes_fleet import render_manifest
from bench.install import ToolInstall
from bench.results import Recorder

OURS = "hermes-fleet"
PROFILES = 1000


def big_manifest(path: Path, child: ChildProgram, n: int = PROFILES) -> Path:
    log = path.parent / "started.log"
    profiles = {f"p{i:04d}": (child.argv(f"p{i:04d}", log), "1") for i in range(n)}
    path.write_text(render_manifest(profiles))
    return path


def run_diff(tool: ToolInstall, child: ChildProgram, root: Path, reps: int, recorder: Recorder) -> None:
    sid = "diff_1000"
    root.mkdir(parents=True, exist_ok=True)
    manifest = big_manifest(root / "big.yaml", child)
    env = base_env(root / "home")
    for rep in range(reps):
        state = root / f"empty-state-{rep}"
        argv = [tool.executable("hermes-fleet"), "diff", "-f", str(manifest), "--state-dir", str(state), "-o", "json"]
        t0 = time.perf_counter()
        done = procs.run(argv, 120, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        elapsed = (time.perf_counter() - t0) * 1000
        if done.returncode not in (0, 2):  # 2 = "changes pending", like terraform -detailed-exitcode
            recorder.error(sid, OURS, f"diff exited {done.returncode}: {done.stderr.strip()[-300:]}")
            continue
        recorder.add(sid, OURS, elapsed)


def run_plan(reps: int, recorder: Recorder) -> None:
    sid = "plan_1000"
    try:
        planner = importlib.import_module("fleet.plan.planner")
        plan = planner.plan
    except (ImportError, AttributeError) as exc:
        recorder.pending(sid, OURS, f"fleet.plan.planner.plan not available yet ({exc.__class__.__name__}: {exc})")
        return
    try:
        desired, observed, now = synthetic_inputs(PROFILES)
    except Exception as exc:  # noqa: BLE001 - the planner's input types may still be moving
        recorder.pending(sid, OURS, f"cannot build synthetic planner inputs: {exc.__class__.__name__}: {exc}")
        return
    plan(desired, observed, now)  # warm-up
    for _ in range(reps):
        t0 = time.perf_counter()
        plan(desired, observed, now)
        recorder.add(sid, OURS, (time.perf_counter() - t0) * 1000)


def synthetic_inputs(n: int):
    """Desired and observed state for n profiles, built from the planner's own types."""
    raise NotImplementedError("the planner's input types are not settled yet")
