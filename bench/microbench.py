"""hermes-fleet only: the pure planner on 1,000 and 10,000 profiles, `diff` wall time on manifests of 10 to
10,000 profiles, and what a person waits for at the command line (`--version`, `status`, an `apply` that
changes nothing) against a running fleet of 10."""

from __future__ import annotations

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


DIFF_SIZES = (10, 1000, 10000)


def run_diff(tool: ToolInstall, child: ChildProgram, root: Path, reps: int, recorder: Recorder) -> None:
    root.mkdir(parents=True, exist_ok=True)
    env = base_env(root / "home", ours=True)
    for n in DIFF_SIZES:
        sid = f"diff_{n}"
        manifest = big_manifest(root / f"big-{n}.yaml", child, n)
        for rep in range(reps if n < 10000 else max(1, reps // 3)):
            state = root / f"empty-state-{n}-{rep}"
            argv = [tool.executable("hermes-fleet"), "diff", "-f", str(manifest), "--state-dir", str(state), "-o", "json"]
            t0 = time.perf_counter()
            done = procs.run(argv, 300, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            elapsed = (time.perf_counter() - t0) * 1000
            if done.returncode not in (0, 1):  # 1 = changes pending (kubectl/GNU diff convention), 2 = error
                recorder.error(sid, OURS, f"diff exited {done.returncode}: {done.stderr.strip()[-300:]}")
                continue
            recorder.add(sid, OURS, elapsed)


def run_cli(adapter, tracker, root: Path, reps: int, recorder: Recorder) -> None:
    """`--version`, `status` and an `apply` that changes nothing, each a fresh CLI process, against a running
    fleet of 10 (what `hermes-fleet` costs a person at the keyboard)."""
    from bench.scenarios import fleet

    ids = ["cli_version", "cli_status_n10", "cli_apply_noop_n10"]
    with fleet(adapter, tracker, root / "cli", 10, recorder, ids) as f:
        try:
            adapter.start()
            f.wait_all_running()
        except Exception as exc:  # noqa: BLE001 - one failed start is this group's error, not the run's
            for sid in ids:
                recorder.error(sid, OURS, f"start: {exc}")
            return
        where = ["-f", str(adapter.manifest), "--state-dir", str(adapter.state)]
        commands = {"cli_version": ["--version"], "cli_status_n10": ["status", *where],
                    "cli_apply_noop_n10": ["apply", *where]}
        for sid, args in commands.items():
            for _ in range(reps):
                t0 = time.perf_counter()
                done = procs.run([adapter.cli, *args], 60, env=adapter._env(), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                elapsed = (time.perf_counter() - t0) * 1000
                if done.returncode != 0:
                    recorder.error(sid, OURS, f"{' '.join(args[:1])} exited {done.returncode}: {done.stderr.strip()[-300:]}")
                    break
                recorder.add(sid, OURS, elapsed)


def run_plan(child: ChildProgram, root: Path, reps: int, recorder: Recorder) -> None:
    """The planner on 1,000 profiles: steady state (all running, 1,000 keeps: what every
    controller pass computes) and a cold fleet (nothing running, 1,000 spawns)."""
    ids = ("plan_1000_steady", "plan_1000_cold", "plan_10000_steady")
    try:
        from fleet.plan.planner import plan
    except ImportError as exc:
        for sid in ids:
            recorder.pending(sid, OURS, f"fleet.plan.planner.plan not importable ({exc})")
        return
    try:
        inputs = [*synthetic_inputs(child, root, PROFILES), synthetic_inputs(child, root, 10 * PROFILES)[0]]
    except Exception as exc:  # noqa: BLE001 - the planner's input types may move; say so instead of failing
        for sid in ids:
            recorder.pending(sid, OURS, f"cannot build synthetic planner inputs: {exc.__class__.__name__}: {exc}")
        return
    for sid, (desired, observed, now, expected_kind) in zip(ids, inputs, strict=True):
        result = plan(desired, observed, now)  # warm-up, and a check that the input means what we think
        kinds = {a.kind for a in result.actions}
        size = len(desired.spec.profiles)
        if kinds != {expected_kind} or len(result.actions) != size:
            recorder.error(sid, OURS, f"synthetic input planned {result.counts()}, expected {size} x {expected_kind}")
            continue
        for _ in range(reps):
            t0 = time.perf_counter()
            plan(desired, observed, now)
            recorder.add(sid, OURS, (time.perf_counter() - t0) * 1000)


def synthetic_inputs(child: ChildProgram, root: Path, n: int):
    """(desired, observed, now, expected action kind) for a steady and a cold fleet of n profiles."""
    from fleet.observe.model import LiveProcess, Observed, ProfileObservation
    from fleet.plan.model import Desired
    from fleet.spec.load import parse_manifest
    from fleet.store.db import InventoryEntry, ProfileHistory
    from fleet.store.records import PidRecord

    root.mkdir(parents=True, exist_ok=True)
    manifest = big_manifest(root / "plan.yaml", child, n)
    spec = parse_manifest(manifest.read_text(), str(manifest), str(root)).spec
    now, started, epoch = 1_000_000.0, 999_000.0, 1
    profiles = {}
    for i, p in enumerate(spec.profiles):
        pid = 100_000 + i
        record = PidRecord(profile=p.name, pid=pid, start_ticks=None, create_time=started, spec_hash=p.spec_hash,
                           started_at=started, controller_pid=99, epoch=epoch)
        process = LiveProcess(pid=pid, start_ticks=None, create_time=started, cmdline=p.command, started_at=started,
                              spec_hash=p.spec_hash, source="record", record_epoch=epoch)
        profiles[p.name] = ProfileObservation(name=p.name, record=record, record_verdict="alive", process=process,
                                              history=ProfileHistory(p.name, last_start=started))
    inventory = tuple(InventoryEntry(p.name, 1, 1, "active", True) for p in spec.profiles)
    steady = (Desired(spec=spec, generation=1, previous={p.name: p for p in spec.profiles}),
              Observed(observed_at=now, epoch=epoch, profiles=profiles, inventory=inventory), now, "keep")
    cold = (Desired(spec=spec, generation=1), Observed(observed_at=now, epoch=epoch, profiles={}), now, "spawn")
    return steady, cold
