"""Smoke test of the benchmark harness (bench/): the child program and result rendering.

No peer is installed and nothing is timed; the real bench runs with `python bench/run.py`.
The metrics and scaling scenarios run once end to end on a tiny fleet (no peer, no timing assertion).
The scaling plots need matplotlib, a bench-only extra: their test is skipped without it.
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
    args = bench_run.parse_args(["--quick", "--only", "hermes-fleet,supervisord", "--scenarios", "metrics", "--merge"])
    assert args.scenarios == ["metrics"] and args.merge
    quick = bench_run.settings_for(args)
    assert quick.metrics_window < bench_run.FULL.metrics_window and quick.scrapes < bench_run.FULL.scrapes
    assert bench_run.settings_for(bench_run.parse_args(["--reps", "4"])).metrics_reps == 4


def test_metrics_group_runs_for_ours_and_supervisord_only():
    from bench.catalog import SCENARIOS

    group = [s for s in SCENARIOS if s.group == "metrics"]
    assert group and all(s.applies_to(OURS) for s in group)
    assert any(s.applies_to("supervisord") for s in group)
    assert not any(s.applies_to(peer) for s in group for peer in ("circus", "pm2"))


def test_bench_manifest_with_metrics_is_valid_for_the_spec_loader(tmp_path):
    from fleet.spec.load import parse_manifest

    argv = ChildProgram(sys.executable).argv("c000", tmp_path / "started.log")
    textfile = str(tmp_path / "fleet.prom")
    text = render_manifest({"c000": (argv, "7")}, {"listen": "127.0.0.1:0", "textfile": textfile})
    metrics = parse_manifest(text, "fleet.yaml", str(tmp_path)).spec.metrics
    assert (metrics.listen, metrics.textfile) == ("127.0.0.1:0", textfile)


def test_metrics_targets_and_markdown_from_synthetic_samples():
    rec = Recorder()
    for value in (30.0, 30.5, 31.0):
        rec.add("metrics_rss_on_n100", OURS, value)
        rec.add("metrics_rss_on_n100", "supervisord", 26.5)
    quiet, busy = [0.01, 0.02, 0.01, 0.3, 0.01, 0.02], [0.3, 0.31, 0.29, 0.6, 0.3, 0.3]
    for sid, per_second in (("metrics_cpu_off_n100", quiet), ("metrics_cpu_on_n100", quiet),
                            ("metrics_cpu_scraped_n100", busy)):
        rec.add(sid, OURS, sum(per_second) / len(per_second))
        rec.extra(sid, OURS, "per_second", per_second)
    for ms in [0.4] * 98 + [25.0, 30.0]:
        rec.add("metrics_scrape_n100", OURS, ms)
    rec.add("metrics_scrape_bytes_n100", OURS, 170_000)
    results = build_results(rec, tools={}, settings={}, command="x")
    sc = results["scenarios"]

    assert sc["metrics_rss_on_n100"]["best_peer"] == "supervisord"
    assert sc["metrics_rss_on_n100"]["target_met"] is False  # 30.5 MiB > supervisord's 26.5
    assert sc["metrics_cpu_on_n100"]["target_met"] is True and sc["metrics_cpu_on_n100"]["difference"] == 0
    assert sc["metrics_cpu_scraped_n100"]["target_met"] is False  # a steady 0.3 % more is beyond the noise
    scrape = sc["metrics_scrape_n100"]["results"][OURS]
    assert (scrape["median"], scrape["p99"], scrape["max"]) == (0.4, 25.0, 30.0)
    assert sc["metrics_scrape_n100"]["target_met"] is False  # judged on p99, not the median

    text = render_markdown(results)
    assert "| 0.400 ms (p99 25.0 ms, max 30.0 ms) |" in text
    assert "| 170,000 |" in text
    assert "yes (+0.000 vs noise" in text and "**no** (+" in text
    assert "per_second:" not in text  # raw samples stay in the JSON


def test_merge_keeps_what_the_new_run_did_not_measure():
    from bench.results import merge_results

    old, new = Recorder(), Recorder()
    old.add("respawn_n10", OURS, 20.0)
    old.add("metrics_scrape_n100", OURS, 9.0)
    new.add("metrics_scrape_n100", OURS, 1.0)
    earlier = build_results(old, tools={"pm2": {"available": True, "version": "7"}}, settings={}, command="full")
    latest = build_results(new, tools={OURS: {"available": True, "version": "0"}}, settings={}, command="metrics only")
    merged = merge_results(earlier, latest)
    assert list(merged["scenarios"]) == ["respawn_n10", "metrics_scrape_n100"]  # catalogue order
    assert merged["scenarios"]["metrics_scrape_n100"]["results"][OURS]["median"] == 1.0
    assert merged["scenarios"]["respawn_n10"]["run"]["command"] == "full"
    assert set(merged["tools"]) == {"pm2", OURS}
    text = render_markdown(merged)
    assert "come from an earlier run" in text and "`full`" in text


def test_scrape_client_against_the_controllers_metrics_server():
    from bench.metrics import scrape, series_count
    from fleet.metrics.server import MetricsServer, Published, bind

    body = b"# HELP x y\n# TYPE x gauge\nx 1\nx{a=\"b\"} 2\n"
    server = MetricsServer(bind("127.0.0.1", 0), lambda: Published(body, time.time() + 60, ()), None).start()
    try:
        got = scrape(server.address)
        assert (got.status, got.body) == (200, body) and series_count(got.body) == 2
    finally:
        server.close()


def ours():
    """(adapter, tracker, recorder) for hermes-fleet as the bench finds it; the test is skipped without it."""
    from bench import install, procs
    from bench.adapters.hermes_fleet import HermesFleetAdapter

    tool = install.locate_hermes_fleet(None)
    if not tool.available:
        pytest.skip(tool.reason)
    tracker = procs.Tracker()
    return HermesFleetAdapter(tool, ChildProgram(sys.executable), tracker), tracker, Recorder()


def test_metrics_scenario_end_to_end_on_a_tiny_fleet(tmp_path):
    """The metrics scenario against a real controller (3 children, 1 s windows): every row gets
    samples and nothing is left running. Nothing is timed."""
    from bench import metrics

    adapter, tracker, rec = ours()
    try:
        metrics.run_metrics(adapter, tracker, tmp_path, reps=1, window=1.0, settle=0.0, scrapes=5, recorder=rec, n=3)
    finally:
        tracker.end_all()
    cells = {sid: cell for (sid, sup), cell in rec.cells.items() if sup == OURS}
    assert {sid: c.errors for sid, c in cells.items() if c.errors} == {}
    assert set(cells) >= set(metrics.IDS)
    assert all(cells[sid].samples for sid in metrics.IDS)
    assert len(cells[metrics.SCRAPE].samples) == 5 and cells[metrics.SCRAPE_BYTES].samples[0] > 0
    assert adapter.metrics is None
    assert tracker.survivors() == []


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


def scaling_recorder() -> Recorder:
    """A small fake scaling curve: ours and pm2 at N=10 and 100, pm2 failing to start at 100 (so 500 is not
    tried), circus not installed."""
    from bench.catalog import SCALING, scaling_point_id

    rec = Recorder()
    for n, factor in ((10, 1.0), (100, 4.0)):
        ids = {s.id: scaling_point_id(s.id, n) for s in SCALING}
        rec.add(ids["scaling_cold_start"], OURS, 500.0 * factor)
        rec.extra(ids["scaling_cold_start"], OURS, "loadavg_1m_before", 1.5)
        rec.extra(ids["scaling_cold_start"], OURS, "loadavg_1m_after", 1.75)
        for ms in (20.0, 22.0, 30.0):
            rec.add(ids["scaling_respawn"], OURS, ms * factor)
        rec.add(ids["scaling_idle_cpu"], OURS, 0.05 * factor)
        for mib in (25.0, 25.5):
            rec.add(ids["scaling_rss"], OURS, mib + factor)
        rec.add(ids["scaling_status"], OURS, 400.0 + factor)
        if n == 10:
            for sid, cid in ids.items():
                rec.add(cid, "pm2", 2.0 if sid != "scaling_cold_start" else 900.0)
        else:
            for cid in ids.values():
                rec.error(cid, "pm2", "start: only 37 of 100 children started within 120s")
    for cid in (scaling_point_id(s.id, 500) for s in SCALING):
        rec.skip(cid, "pm2", "not tried: N=100 failed (start: only 37 of 100 children started within 120s)")
    for s in SCALING:
        rec.skip(s.id, "circus", "pip install circus failed: no network")
    rec.add("respawn_n10", OURS, 21.0)
    return rec


SCALING_SETTINGS = {"scaling_ns": (10, 100, 500), "scaling_window": 10.0, "idle_settle": 3.0, "scaling_kills": 5,
                    "scaling_status_runs": 5, "note": "other work shared the host"}


def test_scaling_curve_goes_to_its_own_section_and_renders():
    results = build_results(scaling_recorder(), tools={}, settings=SCALING_SETTINGS, command="scaling",
                            load=[{"group": "scaling", "supervisor": OURS, "seconds": 1.0, "loadavg_1m_before": 1.0,
                                   "loadavg_1m_after": 2.0}])
    assert set(results["scenarios"]) == {"respawn_n10"}  # the curve is not a row of the main table
    scaling = results["scaling"]
    assert scaling["n"] == [10, 100, 500] and scaling["command"] == "scaling"
    ours = scaling["results"][OURS]["points"]
    assert ours["10"]["scaling_respawn"]["median"] == 22.0 and ours["100"]["scaling_cold_start"]["median"] == 2000.0
    assert scaling["results"]["pm2"]["points"]["100"]["scaling_status"]["median"] is None
    assert scaling["results"]["circus"]["skipped"].startswith("pip install circus failed")

    text = render_markdown(results)
    section = text[text.index("## Scaling"):text.index("## Tools")]
    assert "| metric | N | hermes-fleet | circus | pm2 |" in section
    assert "| cold start (ms) | 10 | 500 ms | skipped | 900 ms |" in section
    assert "|  | 100 | 2.00 s | skipped | missing |" in section
    assert "| respawn after SIGKILL (ms) | 10 | 22.0 ms (30.0 ms) |" in section
    assert "- pm2, N=100, cold start: from the start command to the last child's start: start: only 37" in section
    assert "- pm2, N=500," in section and "not tried: N=100 failed" in section
    assert "Note on this run: other work shared the host" in section
    assert "| host load (1-min average, before / after) | 10 | 1.50 / 1.75 |" in section
    for name in ("scaling_cold_start", "scaling_respawn", "scaling_idle_cpu", "scaling_rss", "scaling_status"):
        assert f"]({name}.png)" in section
    assert "python bench/plots.py bench/results.json" in section


def test_merge_keeps_the_other_scenarios_and_the_other_tools_curves():
    from bench.catalog import SCALING, scaling_point_id
    from bench.results import merge_results

    full = build_results(scaling_recorder(), tools={}, settings=SCALING_SETTINGS, command="full")
    again = Recorder()
    for s in SCALING:
        again.add(scaling_point_id(s.id, 10), OURS, 1.0)
    latest = build_results(again, tools={}, settings={"scaling_ns": (10,), "scenario_groups": ["scaling"]},
                           command="scaling, ours only")
    merged = merge_results(full, latest)
    assert merged["scenarios"]["respawn_n10"]["run"]["command"] == "full"  # the main table is kept
    curves = merged["scaling"]["results"]
    assert curves[OURS]["points"]["10"]["scaling_rss"]["median"] == 1.0 and "100" not in curves[OURS]["points"]
    assert curves["pm2"]["run"]["command"] == "full" and curves["pm2"]["points"]["10"]["scaling_rss"]["median"] == 2.0
    assert merged["scaling"]["n"] == [10, 100, 500]
    text = render_markdown(merged)
    assert "- pm2: from an earlier run" in text and "No row of this table was measured in this run (it ran: scaling)" in text

    other = build_results(Recorder(), tools={}, settings={}, command="something else")
    assert "scaling" not in other
    assert merge_results(full, other)["scaling"] == full["scaling"]  # a run without the group keeps the curve


def test_scaling_options_and_victims():
    from bench.scaling import victims

    assert bench_run.settings_for(bench_run.parse_args([])).scaling_ns == (10, 100, 500, 1000)
    assert bench_run.settings_for(bench_run.parse_args(["--quick"])).scaling_ns == (10, 100)
    args = bench_run.parse_args(["--scenarios", "scaling", "--scaling-n", "100,10", "--merge"])
    assert args.scenarios == ["scaling"] and bench_run.settings_for(args).scaling_ns == (10, 100)
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--scaling-n", "ten"])
    names = tuple(f"c{i:03d}" for i in range(1000))
    assert victims(names, 5) == ["c000", "c200", "c400", "c600", "c800"]
    assert victims(names[:2], 5) == ["c000", "c001"]


def test_scaling_plots_from_synthetic_points(tmp_path):
    pytest.importorskip("matplotlib")
    from bench import plots

    results = build_results(scaling_recorder(), tools={}, settings=SCALING_SETTINGS, command="x")
    written = plots.render_plots(results, tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{p.metric}.png" for p in plots.PLOTS)
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
    assert plots.series(results["scaling"], "scaling_cold_start", "pm2") == ([10], [900.0], [100, 500])


def test_scaling_scenario_end_to_end_on_a_tiny_fleet(tmp_path):
    """The scaling runner against a real controller at N=3 (1 s window): every metric gets a sample, nothing
    is left running. Nothing is timed."""
    from bench import scaling
    from bench.catalog import SCALING, scaling_point_id

    adapter, tracker, rec = ours()
    try:
        scaling.run_scaling(adapter, tracker, tmp_path, (3,), window=1.0, settle=0.0, kills=2, status_runs=1,
                            recorder=rec)
    finally:
        tracker.end_all()
    cells = {sid: rec.cells.get((scaling_point_id(sid, 3), OURS)) for sid in (s.id for s in SCALING)}
    assert {sid: c.errors for sid, c in cells.items() if c is not None and c.errors} == {}
    assert all(c is not None and c.samples for c in cells.values())
    assert len(cells["scaling_respawn"].samples) == 2
    assert tracker.survivors() == []
