"""The scenarios: each opens a fresh fleet with one adapter, acts, and measures from outside.

Start times come from the children's own monotonic stamps in the started log, so the
polling interval of the harness does not blur them. A failed sample is recorded as an
error for that cell and the run goes on with the next one.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import psutil

from bench.adapters.base import Adapter
from bench.catalog import SCALING_NS
from bench.events import ChildEvent, EventLog
from bench.procs import Tracker, alive, wait_until
from bench.results import Recorder

MIB = 2**20
START_TIMEOUT = 120.0
STOP_TIMEOUT = 120.0


class ScenarioFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Settings:
    respawn_kills: int
    lifecycle_n10_reps: int
    lifecycle_n100_reps: int
    kill9_reps: int
    config_changes: int
    idle_window: float  # seconds
    idle_settle: float
    diff_reps: int
    plan_reps: int
    metrics_reps: int = 1  # metrics off/on pairs at N=100
    metrics_window: float = 5.0  # seconds of each metrics window (idle, and scraped every 1 s)
    scrapes: int = 50  # back-to-back GETs of /metrics per repetition
    scaling_ns: tuple[int, ...] = SCALING_NS  # the fleet sizes of the scaling curve
    scaling_window: float = 10.0  # seconds of the idle window at each N
    scaling_kills: int = 5  # SIGKILLs of different children at each N (respawn latency: their median)
    scaling_status_runs: int = 5  # runs of the status command at each N (latency: their median)


def now_ns() -> int:
    return time.monotonic_ns()


def ms_since(start_ns: int, end_ns: int) -> float:
    return (end_ns - start_ns) / 1e6


class Fleet:
    """One running fleet: the adapter, its started log, and the tracker of what it spawned."""

    def __init__(self, adapter: Adapter, tracker: Tracker, directory: Path, n: int) -> None:
        self.adapter = adapter
        self.tracker = tracker
        self.session = adapter.open_session(directory, n)
        self.log = EventLog(self.session.log)
        self.names = self.session.names

    def observe(self) -> list[ChildEvent]:
        fresh = self.log.refresh()
        for event in fresh:
            if event.kind == "start":
                self.tracker.add(event.pid, f"{self.adapter.name} child {event.name}")
        return fresh

    def first_starts_since(self, since_ns: int) -> dict[str, ChildEvent]:
        firsts: dict[str, ChildEvent] = {}
        for e in self.log.starts(since_ns=since_ns):
            firsts.setdefault(e.name, e)
        return firsts

    def wait_all_running(self, since_ns: int = 0, timeout: float = START_TIMEOUT) -> dict[str, ChildEvent]:
        """Every child has started since `since_ns` and a process of it is alive; returns the first starts."""

        def ready() -> bool:
            self.observe()
            if len(self.first_starts_since(since_ns)) < len(self.names):
                return False
            live = self.log.live_pids()
            return all(live.get(name) for name in self.names)

        if not wait_until(ready, timeout, 0.02):
            started = len(self.first_starts_since(since_ns))
            raise ScenarioFailed(f"only {started} of {len(self.names)} children started within {timeout:.0f}s")
        self.track_supervisor_helpers()
        return self.first_starts_since(since_ns)

    def track_supervisor_helpers(self) -> None:
        """Remember every descendant of the supervisor too (e.g. circus's stats process), so
        the clean-up ends helpers orphaned by a kill -9 of their supervisor."""
        for pid in self.adapter.supervisor_pids():
            try:
                descendants = psutil.Process(pid).children(recursive=True)
            except psutil.Error:
                continue
            for proc in descendants:
                self.tracker.add(proc.pid, f"{self.adapter.name} helper")

    def live_pid(self, name: str) -> int:
        self.observe()
        pids = self.log.live_pids(name).get(name)
        if not pids:
            raise ScenarioFailed(f"{name} is not running")
        return pids[-1]

    def fully_down(self) -> bool:
        self.observe()
        return self.adapter.supervisor_down() and not self.log.live_pids()

    def close(self) -> list[str]:
        """Stop whatever still runs, politely first; returns notes on what had to be ended by force."""
        notes = []
        try:
            if not self.adapter.supervisor_down():
                self.adapter.stop_all()
                wait_until(self.adapter.supervisor_down, 60.0, 0.05)
        except Exception as exc:  # noqa: BLE001 - clean-up goes on whatever failed
            notes.append(f"stop during clean-up failed: {exc}")
        try:
            self.adapter.teardown()
        except Exception as exc:  # noqa: BLE001
            notes.append(f"teardown failed: {exc}")
        # Sweep until no new child shows up: a supervisor might spawn one while we end the others.
        ended = []
        for _ in range(5):
            self.observe()
            ended += self.tracker.end_all()
            self.observe()
            if not self.tracker.survivors():
                break
        if ended:
            labels = sorted({e.label.rsplit(" ", 1)[0] if " child " in e.label else e.label for e in ended})
            notes.append(f"{len(ended)} process(es) still alive after the stop were ended by signal ({', '.join(labels)})")
        return notes


@contextmanager
def fleet(adapter: Adapter, tracker: Tracker, directory: Path, n: int, recorder: Recorder, scenario_ids: list[str]) -> Iterator[Fleet]:
    f = Fleet(adapter, tracker, directory, n)
    try:
        yield f
    finally:
        for note in f.close():
            recorder.extra(scenario_ids[0], adapter.name, "cleanup", note)


def supervisor_processes(adapter: Adapter) -> list[psutil.Process]:
    procs = []
    for pid in adapter.supervisor_pids():
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            pass
    if not procs:
        raise ScenarioFailed("supervisor process not found")
    return procs


def on_cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of all threads: nanosecond schedstat on Linux (clock ticks would quantize a
    1-second sample to 1 %), psutil's user+system elsewhere."""
    task_dir = f"/proc/{proc.pid}/task"
    try:
        total = 0
        for tid in os.listdir(task_dir):
            with open(f"{task_dir}/{tid}/schedstat") as handle:
                total += int(handle.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        return sum(proc.cpu_times()[:2])


def measure_idle(adapter: Adapter, window: float, settle: float,
                 tick: Callable[[], None] | None = None) -> tuple[list[float], list[float]]:
    """Per-second CPU % of one core and RSS (MiB) of the supervisor's own process(es). `tick`, if
    given, runs half-way through every second (e.g. a scrape): what it causes the supervisor to do
    is measured, the harness's own work for it is not."""
    time.sleep(settle)  # let start-up work finish: this is a measurement window, not a wait for a condition
    procs = supervisor_processes(adapter)

    def cpu_seconds() -> float:
        return sum(on_cpu_seconds(p) for p in procs)

    cpu, rss = [], []
    seconds = max(1, int(round(window)))
    begin = time.monotonic()
    previous_cpu, previous_t = cpu_seconds(), begin
    for i in range(1, seconds + 1):
        if tick is not None:
            time.sleep(max(0.0, begin + i - 0.5 - time.monotonic()))
            tick()
        time.sleep(max(0.0, begin + i - time.monotonic()))
        current_cpu, current_t = cpu_seconds(), time.monotonic()
        cpu.append(max(0.0, 100.0 * (current_cpu - previous_cpu) / (current_t - previous_t)))
        rss.append(sum(p.memory_info().rss for p in procs) / MIB)
        previous_cpu, previous_t = current_cpu, current_t
    return cpu, rss


def cold_start(f: Fleet, recorder: Recorder, sid: str, timeout: float = START_TIMEOUT, first_sid: str | None = None) -> None:
    """Start the supervisor from nothing; records the start command to the last child's own start stamp (and, under
    `first_sid`, to the first child's)."""
    adapter = f.adapter
    t0 = now_ns()
    adapter.start()
    returned = now_ns()
    firsts = f.wait_all_running(since_ns=t0, timeout=timeout)
    recorder.add(sid, adapter.name, ms_since(t0, max(e.monotonic_ns for e in firsts.values())))
    recorder.extra(sid, adapter.name, "start_command_ms", round(ms_since(t0, returned), 1))
    if first_sid is not None:
        recorder.add(first_sid, adapter.name, ms_since(t0, min(e.monotonic_ns for e in firsts.values())))


def record_idle(adapter: Adapter, recorder: Recorder, cpu_id: str, rss_id: str, window: float, settle: float) -> None:
    """One idle window (measure_idle): the mean CPU % under `cpu_id`, every per-second RSS sample under `rss_id`."""
    cpu, rss = measure_idle(adapter, window, settle)
    # CPU: the mean over the window (a median of 1 s samples would hide a
    # periodic pass); the per-second shape goes into the extras.
    recorder.add(cpu_id, adapter.name, sum(cpu) / len(cpu))
    recorder.extra(cpu_id, adapter.name, "per_second_max", round(max(cpu), 3))
    recorder.extra(cpu_id, adapter.name, "seconds_above_0.5pct", sum(v > 0.5 for v in cpu))
    for value in rss:
        recorder.add(rss_id, adapter.name, value)


def run_lifecycle(adapter: Adapter, tracker: Tracker, root: Path, n: int, reps: int, idle_window: float,
                  idle_settle: float, wanted: set[str], recorder: Recorder) -> None:
    """Cold start of N, idle overhead (first repetition only), graceful stop of the whole fleet."""
    cold, first, stop = f"cold_start_n{n}", f"first_child_n{n}", f"stop_n{n}"
    idle_cpu, idle_rss = f"idle_cpu_n{n}", f"idle_rss_n{n}"
    ids = [cold, first, stop, idle_cpu, idle_rss]
    for rep in range(reps):
        with fleet(adapter, tracker, root / f"lifecycle-n{n}-{rep}", n, recorder, ids) as f:
            try:
                cold_start(f, recorder, cold, first_sid=first)
            except Exception as exc:  # noqa: BLE001
                for sid in ids:
                    recorder.error(sid, adapter.name, f"start: {exc}")
                continue
            if rep == 0 and (idle_cpu in wanted or idle_rss in wanted):
                try:
                    record_idle(adapter, recorder, idle_cpu, idle_rss, idle_window, idle_settle)
                except Exception as exc:  # noqa: BLE001
                    recorder.error(idle_cpu, adapter.name, f"idle: {exc}")
            try:
                f.wait_all_running()
                t0 = now_ns()
                adapter.stop_all()
                returned = now_ns()
                if not wait_until(f.fully_down, STOP_TIMEOUT, 0.01):
                    raise ScenarioFailed(f"fleet not down within {STOP_TIMEOUT:.0f}s")
                recorder.add(stop, adapter.name, ms_since(t0, now_ns()))
                recorder.extra(stop, adapter.name, "stop_command_ms", round(ms_since(t0, returned), 1))
                graceful = {e.pid for e in f.log.events if e.kind == "stop"}
                started = {e.pid for e in f.log.starts()}
                recorder.extra(stop, adapter.name, "children_exited_via_handler", f"{len(started & graceful)}/{len(started)}")
            except Exception as exc:  # noqa: BLE001
                recorder.error(stop, adapter.name, f"stop: {exc}")


RESPAWN_SETTLE = 1.5  # seconds between all children running and the first kill


def run_respawn(adapter: Adapter, tracker: Tracker, root: Path, kills: int, recorder: Recorder, n: int = 10) -> None:
    """SIGKILL one child at a time; latency = its replacement's own start stamp minus the kill."""
    sid = "respawn_n10"
    sessions = max(1, -(-kills // n))  # each child is killed once per fleet, so no backoff carries over
    remaining = kills
    for session in range(sessions):
        with fleet(adapter, tracker, root / f"respawn-{session}", n, recorder, [sid]) as f:
            try:
                adapter.start()
                f.wait_all_running()
            except Exception as exc:  # noqa: BLE001
                recorder.error(sid, adapter.name, f"start: {exc}")
                continue
            # A measurement condition, not a wait for one: each kill is the crash of a running child, not of one just
            # started (hermes-fleet holds a second start of a profile until its floor, 0.25 s, has passed since the
            # first), as in the scaling curve, whose kills come after its idle window.
            time.sleep(RESPAWN_SETTLE)
            for k in range(min(n, remaining)):
                remaining -= 1
                name = f.names[k]
                try:
                    recorder.add(sid, adapter.name, time_respawn(f, name))
                    time.sleep(0.2)  # let the supervisor finish its bookkeeping before the next kill
                except Exception as exc:  # noqa: BLE001
                    recorder.error(sid, adapter.name, f"kill {name}: {exc}")


def time_respawn(f: Fleet, name: str, timeout: float = 30.0) -> float:
    """SIGKILL the running process of `name`; ms from the kill to its replacement's own start stamp."""
    victim = f.live_pid(name)
    t0 = now_ns()
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        f.observe()
        return any(e.pid != victim for e in f.log.starts(name, since_ns=t0))

    if not wait_until(replaced, timeout, 0.005):
        raise ScenarioFailed(f"{name} not replaced within {timeout:.0f}s")
    replacement = next(e for e in f.log.starts(name, since_ns=t0) if e.pid != victim)
    return ms_since(t0, replacement.monotonic_ns)


def run_kill9(adapter: Adapter, tracker: Tracker, root: Path, reps: int, recorder: Recorder, n: int = 10) -> None:
    """kill -9 the supervisor with N running, start it again; count adopted / duplicated / killed."""
    ids = ["kill9_adopted", "kill9_duplicated", "kill9_restarted", "kill9_killed", "kill9_converge"]
    for rep in range(reps):
        with fleet(adapter, tracker, root / f"kill9-{rep}", n, recorder, ids) as f:
            try:
                adapter.start()
                f.wait_all_running()
                before = {name: f.live_pid(name) for name in f.names}
                t_kill = now_ns()
                adapter.kill_supervisor()
                t0 = now_ns()
                adapter.restart_supervisor()

                def converged() -> bool:
                    managed = adapter.managed_child_pids()
                    return all(name in managed and alive(managed[name]) for name in f.names)

                if not wait_until(converged, 120.0, 0.02):
                    raise ScenarioFailed("fleet not converged within 120s after the restart")
                recorder.add("kill9_converge", adapter.name, ms_since(t0, now_ns()))
                time.sleep(2.0)  # late duplicates or kills would show up here
                f.observe()
                managed = adapter.managed_child_pids()
                live = f.log.live_pids()
                recorder.add("kill9_adopted", adapter.name, sum(managed.get(nm) == before[nm] for nm in f.names))
                recorder.add("kill9_duplicated", adapter.name, sum(len(live.get(nm, [])) > 1 for nm in f.names))
                recorder.add("kill9_restarted", adapter.name, len({e.name for e in f.log.starts(since_ns=t_kill)}))
                recorder.add("kill9_killed", adapter.name, sum(not alive(pid) for pid in before.values()))
                orphans = [pid for nm, pid in before.items() if alive(pid) and managed.get(nm) != pid]
                end_orphans(orphans, tracker)
                recorder.extra("kill9_duplicated", adapter.name, "orphans_ended_by_bench", len(orphans))
            except Exception as exc:  # noqa: BLE001
                for sid in ids:
                    recorder.error(sid, adapter.name, str(exc))


def end_orphans(pids: list[int], tracker: Tracker) -> None:
    """Old children nobody supervises any more: the bench started them (through the tool), so it ends them."""
    for pid in pids:
        tracker.add(pid, "orphaned child")
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    wait_until(lambda: not any(alive(p) for p in pids), 5.0, 0.02)


def run_config_change(adapter: Adapter, tracker: Tracker, root: Path, changes: int, recorder: Recorder, n: int = 10) -> None:
    """Change one child's config (its token) and apply; count restarts, time the changed one."""
    ids = ["config_apply", "config_restarted"]
    with fleet(adapter, tracker, root / "config", n, recorder, ids) as f:
        try:
            adapter.start()
            f.wait_all_running()
        except Exception as exc:  # noqa: BLE001
            for sid in ids:
                recorder.error(sid, adapter.name, f"start: {exc}")
            return
        for k in range(changes):
            name = f.names[(3 + 3 * k) % n]
            token = str(k + 2)
            try:
                f.wait_all_running()
                t0 = now_ns()
                adapter.change_config(name, token)
                returned = now_ns()

                def runs_new_config() -> bool:
                    f.observe()
                    return any(e.token == token for e in f.log.starts(name, since_ns=t0))

                if not wait_until(runs_new_config, 120.0, 0.01):
                    raise ScenarioFailed(f"{name} never ran the new config")
                changed = next(e for e in f.log.starts(name, since_ns=t0) if e.token == token)
                recorder.add("config_apply", adapter.name, ms_since(t0, changed.monotonic_ns))
                recorder.extra("config_apply", adapter.name, "apply_command_ms", round(ms_since(t0, returned), 1))
                time.sleep(1.5)  # restarts of unchanged children, if any, show up here
                f.observe()
                recorder.add("config_restarted", adapter.name, len({e.name for e in f.log.starts(since_ns=t0)}))
            except Exception as exc:  # noqa: BLE001
                for sid in ids:
                    recorder.error(sid, adapter.name, f"change {name}: {exc}")
