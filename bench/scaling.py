"""The scaling curve: the same tool and child at several fleet sizes N (run.py --scaling-n).

One fresh fleet per (tool, N), N ascending, with each tool's usual bench config (bench/adapters).
Each point, in this order:

- cold start: from the start command (no daemon running) to the start stamp of the last of the N
  children (`cold_start`, as the lifecycle scenarios measure it);
- idle CPU (% of one core, the mean over the window) and RSS (MiB, per-second samples) of the
  supervisor's own process(es), not the children, after the usual settle (`record_idle`);
- the tool's status/list command (`hermes-fleet status`, `supervisorctl status`, `circusctl status`,
  `pm2 jlist`): wall time of the whole command, each run to completion, all of them one after another;
- respawn latency: SIGKILL one child and take its replacement's own start stamp (`time_respawn`), for
  a few different children spread over the fleet, 0.2 s apart.

A point that cannot start its fleet (a tool too slow for that N, say) is recorded as missing with the
reason, and the larger N of that tool are not tried (each says why); the run goes on with the next tool.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.adapters.base import COMMAND_TIMEOUT, Adapter
from bench.catalog import SCALING, scaling_point_id
from bench.procs import Tracker
from bench.results import Recorder
from bench.scenarios import START_TIMEOUT, cold_start, fleet, ms_since, now_ns, record_idle, time_respawn

COLD, RESPAWN, CPU, RSS, STATUS = (s.id for s in SCALING)
START_SECONDS_PER_CHILD = 0.3  # the start timeout grows with N: max(START_TIMEOUT, this * N), and the tool
# commands may take a minute longer (the adapter's command_timeout)


def start_timeout(n: int) -> float:
    return max(START_TIMEOUT, START_SECONDS_PER_CHILD * n)


def victims(names: tuple[str, ...], kills: int) -> list[str]:
    """`kills` different children, spread over the fleet (the first, then evenly apart)."""
    n, count = len(names), min(kills, len(names))
    return [names[(k * n) // count] for k in range(count)]


def run_scaling(adapter: Adapter, tracker: Tracker, root: Path, ns: tuple[int, ...], window: float, settle: float,
                kills: int, status_runs: int, recorder: Recorder) -> None:
    failed = ""
    for n in sorted(ns):
        ids = {s.id: scaling_point_id(s.id, n) for s in SCALING}
        if failed:
            for cid in ids.values():
                recorder.skip(cid, adapter.name, f"not tried: {failed}")
            continue
        adapter.command_timeout = max(COMMAND_TIMEOUT, start_timeout(n) + 60)
        try:
            problem = run_point(adapter, tracker, root / f"scaling-n{n}", n, window, settle, kills, status_runs, ids,
                                recorder)
        finally:
            adapter.command_timeout = COMMAND_TIMEOUT
        if problem:
            failed = f"N={n} failed ({problem})"


def run_point(adapter: Adapter, tracker: Tracker, directory: Path, n: int, window: float, settle: float, kills: int,
              status_runs: int, ids: dict[str, str], recorder: Recorder) -> str:
    """One (tool, N) point; returns why its fleet could not start, or "" when it did."""
    name = adapter.name
    load_before = round(os.getloadavg()[0], 2)
    with fleet(adapter, tracker, directory, n, recorder, [ids[COLD]]) as f:
        try:
            cold_start(f, recorder, ids[COLD], timeout=start_timeout(n))
        except Exception as exc:  # noqa: BLE001 - a point that cannot start is recorded as missing
            for cid in ids.values():
                recorder.error(cid, name, f"start: {exc}")
            return f"start: {exc}"
        try:
            record_idle(adapter, recorder, ids[CPU], ids[RSS], window, settle)
        except Exception as exc:  # noqa: BLE001
            recorder.error(ids[CPU], name, f"idle: {exc}")
            recorder.error(ids[RSS], name, f"idle: {exc}")
        for _ in range(status_runs):
            try:
                t0 = now_ns()
                adapter.status()
                recorder.add(ids[STATUS], name, ms_since(t0, now_ns()))
            except Exception as exc:  # noqa: BLE001
                recorder.error(ids[STATUS], name, f"status: {exc}")
                break
        try:
            f.wait_all_running(timeout=start_timeout(n))
        except Exception as exc:  # noqa: BLE001
            recorder.error(ids[RESPAWN], name, f"before the kills: {exc}")
        else:
            for victim in victims(f.names, kills):
                try:
                    recorder.add(ids[RESPAWN], name, time_respawn(f, victim))
                    time.sleep(0.2)  # let the supervisor finish its bookkeeping before the next kill
                except Exception as exc:  # noqa: BLE001
                    recorder.error(ids[RESPAWN], name, f"kill {victim}: {exc}")
        recorder.extra(ids[COLD], name, "loadavg_1m_before", load_before)
        recorder.extra(ids[COLD], name, "loadavg_1m_after", round(os.getloadavg()[0], 2))
    return ""
