"""Smoke test of the benchmark harness (bench/): the child program and result rendering.

No peer is installed and nothing is timed; the real bench runs with `python bench/run.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import run as bench_run  # noqa: E402
from bench.adapters.base import ChildProgram  # noqa: E402
from bench.adapters.hermes_fleet import render_manifest  # noqa: E402
from bench.catalog import OURS  # noqa: E402
from bench.events import EventLog  # noqa: E402
from bench.report import render_markdown  # noqa: E402
from bench.results import Recorder, build_results  # noqa: E402
from bench.stats import summarize  # noqa: E402


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def child_process(tmp_path):
    started = []

    def start(name: str, token: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / "started.log"
        env = {**os.environ, "BENCH_TOKEN": token}
        proc = subprocess.Popen(ChildProgram(sys.executable).argv(name, log), env=env)
        started.append(proc)
        return proc, log

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


def test_child_logs_its_start_with_token_and_exits_zero_on_sigterm(child_process):
    before = time.monotonic_ns()
    proc, log_path = child_process("c007", "42")
    log = EventLog(log_path)
    assert wait_for(lambda: log.refresh() or log.starts("c007"))
    start = log.starts("c007")[0]
    assert (start.pid, start.token) == (proc.pid, "42")
    assert start.monotonic_ns >= before  # same system-wide clock as the harness
    assert log.live_pids() == {"c007": [proc.pid]}

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    log.refresh()
    assert [e.kind for e in log.events] == ["start", "stop"]
    assert log.live_pids() == {}


def test_event_log_reads_only_complete_lines(tmp_path):
    path = tmp_path / "started.log"
    path.write_bytes(b"c000 10 1 5 6 start\nc001 11 1 7")
    log = EventLog(path)
    assert [e.name for e in log.refresh()] == ["c000"]
    with open(path, "ab") as handle:
        handle.write(b" 8 start\n")
    assert [(e.name, e.monotonic_ns) for e in log.refresh()] == [("c001", 7)]


def test_summary_median_and_nearest_rank_p95():
    s = summarize([float(v) for v in range(1, 21)])
    assert (s.median, s.p95, s.n) == (10.5, 19.0, 20)
    assert summarize([]).median is None


def test_results_ratio_targets_and_markdown_from_synthetic_samples():
    rec = Recorder()
    for value in (10.0, 12.0, 11.0):
        rec.add("respawn_n10", OURS, value)
        rec.add("respawn_n10", "pm2", value * 2)
        rec.add("respawn_n10", "supervisord", value * 100)
    rec.add("kill9_duplicated", OURS, 0)
    rec.add("kill9_duplicated", "circus", 10)
    rec.add("stop_n100", OURS, 1500.0)
    rec.skip("stop_n100", "circus", "pip install circus failed: no network")
    rec.pending("plan_1000_steady", OURS, "planner not there yet")
    results = build_results(rec, tools={OURS: {"available": True, "version": "0", "reason": ""}}, settings={}, command="x")

    respawn = results["scenarios"]["respawn_n10"]
    assert respawn["best_peer"] == "pm2"
    assert respawn["ratio_ours_to_best_peer"] == 0.5
    assert respawn["target_met"] is True
    assert results["scenarios"]["kill9_duplicated"]["target_met"] is True
    assert results["scenarios"]["stop_n100"]["target_met"] is False

    text = render_markdown(results)
    assert "| respawn latency after SIGKILL (N=10) | ms | 11.0 ms (12.0 ms) |" in text
    assert "0.50 (vs pm2)" in text
    assert "skipped" in text and "pending: planner not there yet" in text
    assert "**no**" in text  # the missed stop target is visible


def test_bench_manifest_is_valid_for_the_spec_loader(tmp_path):
    from fleet.spec.load import parse_manifest

    argv = ChildProgram(sys.executable).argv("c000", tmp_path / "started.log")
    manifest = parse_manifest(render_manifest({"c000": (argv, "7")}), "fleet.yaml", str(tmp_path))
    profile = manifest.spec.profiles[0]
    assert profile.command == tuple(argv)
    assert ("BENCH_TOKEN", "7") in profile.env
    assert profile.restart.backoff[0] == 0 and profile.stagger == 0


def test_harness_command_line_parses():
    args = bench_run.parse_args(["--quick", "--only", "supervisord,pm2", "--scenarios", "respawn,kill9"])
    assert args.only == ["supervisord", "pm2"] and args.scenarios == ["respawn", "kill9"]
    assert bench_run.settings_for(args).idle_window < bench_run.FULL.idle_window


def test_tracker_ends_survivors_by_pid_and_ignores_dead_ones():
    from bench import procs

    proc = procs.popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tracker = procs.Tracker()
        assert tracker.add(proc.pid, "sleeper") is not None
        ended = tracker.end_all(grace=5.0)
        assert [e.pid for e in ended] == [proc.pid]
        assert proc.wait(timeout=5) == -signal.SIGTERM
        assert tracker.survivors() == [] and tracker.end_all() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
