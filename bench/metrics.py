"""The cost of the controller's Prometheus metrics (issue 15) at N=100, measured from outside.

hermes-fleet runs the same N=100 fleet twice per repetition, metrics off and then on
(`metrics: {listen: "127.0.0.1:0", textfile: <session>/fleet.prom}`), each a fresh
controller started by `apply`. After convergence and the usual settle, the idle window
gives the controller's RSS and CPU (the lifecycle scenario's `measure_idle`). With
metrics on, a second window of the same length scrapes GET /metrics once a second, as
Prometheus would, and then the bench sends back-to-back GETs: the latency of each (from
connect to the last byte, on the bench's side) and the body size. supervisord runs one
N=100 fleet in the same group; its idle RSS is the reference the RSS rows are judged by.

Idle CPU: the mean of the per-second samples over the window. Metrics on (and scraped)
count as within noise of metrics off when the difference of the means is at most two
standard errors of it (bench/stats.py), from every window of the run.
"""

from __future__ import annotations

import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench.adapters.base import Adapter
from bench.catalog import OURS
from bench.procs import Tracker, wait_until
from bench.results import Recorder
from bench.scenarios import MIB, ScenarioFailed, fleet, measure_idle, supervisor_processes

RSS_OFF, RSS_ON, RSS_SCRAPED = "metrics_rss_off_n100", "metrics_rss_on_n100", "metrics_rss_scraped_n100"
CPU_OFF, CPU_ON, CPU_SCRAPED = "metrics_cpu_off_n100", "metrics_cpu_on_n100", "metrics_cpu_scraped_n100"
SCRAPE, SCRAPE_BYTES = "metrics_scrape_n100", "metrics_scrape_bytes_n100"
IDS = (RSS_OFF, RSS_ON, RSS_SCRAPED, CPU_OFF, CPU_ON, CPU_SCRAPED, SCRAPE, SCRAPE_BYTES)
READY_TIMEOUT = 60.0
# What Prometheus 2.x sends (it asks for gzip; the controller answers plain text, which is allowed).
REQUEST = (b"GET /metrics HTTP/1.1\r\nHost: %s\r\nUser-Agent: hermes-fleet-bench\r\n"
           b"Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n"
           b"Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n")


@dataclass(frozen=True)
class Scrape:
    status: int
    body: bytes
    ms: float  # connect to the last byte, as the scraper sees it


def scrape(address: tuple[str, int], timeout: float = 10.0) -> Scrape:
    """One GET /metrics over a fresh connection (the server closes every connection)."""
    host, port = address
    t0 = time.perf_counter_ns()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(REQUEST % f"{host}:{port}".encode())
        chunks = []
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    elapsed = (time.perf_counter_ns() - t0) / 1e6
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    return Scrape(status, body, elapsed)


def series_count(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def run_metrics(adapter: Adapter, tracker: Tracker, root: Path, reps: int, window: float, settle: float,
                scrapes: int, recorder: Recorder, n: int = 100) -> None:
    if adapter.name == OURS:
        for rep in range(reps):  # off and on alternate, so both meet the same stretch of host load
            _ours_off(adapter, tracker, root / f"metrics-off-{rep}", n, window, settle, recorder)
            _ours_on(adapter, tracker, root / f"metrics-on-{rep}", n, window, settle, scrapes, recorder)
    else:
        _reference(adapter, tracker, root / "metrics-reference", n, window, settle, recorder)


def _record_cpu(recorder: Recorder, sid: str, cpu: list[float]) -> None:
    """The window's mean, and its two parts: the seconds between passes (their median: the steady
    cost, e.g. of being scraped) and the seconds above 0.5 % (the passes: CPU ms spent in them)."""
    recorder.add(sid, OURS, sum(cpu) / len(cpu))
    recorder.extra(sid, OURS, "per_second", [round(v, 4) for v in cpu])
    recorder.extra(sid, OURS, "per_second_median", round(statistics.median(cpu), 4))
    recorder.extra(sid, OURS, "per_second_max", round(max(cpu), 3))
    recorder.extra(sid, OURS, "seconds_above_0.5pct", sum(v > 0.5 for v in cpu))
    recorder.extra(sid, OURS, "cpu_ms_in_those_seconds", round(sum(v * 10 for v in cpu if v > 0.5), 1))


def _record_rss(recorder: Recorder, sid: str, supervisor: str, rss: list[float]) -> None:
    for value in rss:
        recorder.add(sid, supervisor, value)


def _reference(adapter: Adapter, tracker: Tracker, directory: Path, n: int, window: float, settle: float,
               recorder: Recorder) -> None:
    """A peer's idle RSS at N=100: the same fleet and window as the lifecycle scenario's idle RSS."""
    rss_ids = (RSS_OFF, RSS_ON, RSS_SCRAPED)
    with fleet(adapter, tracker, directory, n, recorder, list(rss_ids)) as f:
        try:
            adapter.start()
            f.wait_all_running()
            _cpu, rss = measure_idle(adapter, window, settle)
        except Exception as exc:  # noqa: BLE001
            for sid in rss_ids:
                recorder.error(sid, adapter.name, f"idle: {exc}")
            return
        for sid in rss_ids:
            _record_rss(recorder, sid, adapter.name, rss)


def _ours_off(adapter: Adapter, tracker: Tracker, directory: Path, n: int, window: float, settle: float,
              recorder: Recorder) -> None:
    adapter.metrics = None  # type: ignore[attr-defined]
    with fleet(adapter, tracker, directory, n, recorder, [RSS_OFF, CPU_OFF]) as f:
        try:
            adapter.start()
            f.wait_all_running()
            cpu, rss = measure_idle(adapter, window, settle)
        except Exception as exc:  # noqa: BLE001
            for sid in (RSS_OFF, CPU_OFF):
                recorder.error(sid, OURS, f"metrics off: {exc}")
            return
        _record_cpu(recorder, CPU_OFF, cpu)
        _record_rss(recorder, RSS_OFF, OURS, rss)


def _ours_on(adapter: Adapter, tracker: Tracker, directory: Path, n: int, window: float, settle: float,
             scrapes: int, recorder: Recorder) -> None:
    textfile = directory / "fleet.prom"
    adapter.metrics = {"listen": "127.0.0.1:0", "textfile": str(textfile)}  # type: ignore[attr-defined]
    try:
        with fleet(adapter, tracker, directory, n, recorder, [RSS_ON]) as f:
            try:
                adapter.start()
                f.wait_all_running()
                address = _wait_for_endpoint(adapter)
            except Exception as exc:  # noqa: BLE001
                for sid in (RSS_ON, RSS_SCRAPED, CPU_ON, CPU_SCRAPED, SCRAPE, SCRAPE_BYTES):
                    recorder.error(sid, OURS, f"metrics on: {exc}")
                return
            try:
                cpu, rss = measure_idle(adapter, window, settle)
                _record_cpu(recorder, CPU_ON, cpu)
                _record_rss(recorder, RSS_ON, OURS, rss)
            except Exception as exc:  # noqa: BLE001
                for sid in (RSS_ON, CPU_ON):
                    recorder.error(sid, OURS, f"metrics on, idle: {exc}")
            paced: list[Scrape] = []

            def tick() -> None:
                try:
                    paced.append(scrape(address))
                except OSError:
                    paced.append(Scrape(0, b"", 0.0))

            try:
                cpu, rss = measure_idle(adapter, window, 0.0, tick=tick)
                _record_cpu(recorder, CPU_SCRAPED, cpu)
                _record_rss(recorder, RSS_SCRAPED, OURS, rss)
                bad = [s.status for s in paced if s.status != 200]
                if bad:
                    recorder.error(CPU_SCRAPED, OURS, f"{len(bad)} of {len(paced)} paced scrapes answered {bad[0]}")
                ms = sorted(s.ms for s in paced if s.status == 200) or [0.0]
                recorder.extra(SCRAPE, OURS, "paced_1s_median_ms", round(statistics.median(ms), 2))
                recorder.extra(SCRAPE, OURS, "paced_1s_max_ms", round(ms[-1], 2))
            except Exception as exc:  # noqa: BLE001
                for sid in (RSS_SCRAPED, CPU_SCRAPED):
                    recorder.error(sid, OURS, f"metrics on, scraped every 1 s: {exc}")
            _burst(adapter, address, scrapes, textfile, recorder)
    finally:
        adapter.metrics = None  # type: ignore[attr-defined]


def _burst(adapter: Adapter, address: tuple[str, int], scrapes: int, textfile: Path, recorder: Recorder) -> None:
    """Back-to-back GETs: latency of each, and the body size."""
    sizes, series, failed = [], set(), []
    for _ in range(scrapes):
        try:
            s = scrape(address)
        except OSError as exc:
            failed.append(str(exc))
            continue
        if s.status != 200:
            failed.append(f"HTTP {s.status}")
            continue
        recorder.add(SCRAPE, OURS, s.ms)
        sizes.append(len(s.body))
        series.add(series_count(s.body))
    if failed:
        recorder.error(SCRAPE, OURS, f"{len(failed)} of {scrapes} scrapes failed, e.g. {failed[0]}")
    if sizes:
        recorder.add(SCRAPE_BYTES, OURS, statistics.median(sizes))
        recorder.extra(SCRAPE_BYTES, OURS, "series", max(series))
    try:
        recorder.extra(SCRAPE_BYTES, OURS, "textfile_bytes", textfile.stat().st_size)
        recorder.extra(RSS_SCRAPED, OURS, "rss_after_burst_mib",
                       round(sum(p.memory_info().rss for p in supervisor_processes(adapter)) / MIB, 2))
    except (OSError, ScenarioFailed) as exc:
        recorder.error(SCRAPE_BYTES, OURS, f"after the burst: {exc}")


def _wait_for_endpoint(adapter: Adapter) -> tuple[str, int]:
    """The address from <state>/.metrics.json, once GET /metrics answers 200 (a pass has published)."""
    found: list[tuple[str, int]] = []

    def serving() -> bool:
        address = adapter.metrics_address()  # type: ignore[attr-defined]
        if address is None:
            return False
        try:
            if scrape(address, timeout=2.0).status != 200:
                return False
        except OSError:
            return False
        found.append(address)
        return True

    if not wait_until(serving, READY_TIMEOUT, 0.1):
        raise ScenarioFailed(f"no 200 from GET /metrics within {READY_TIMEOUT:.0f}s (.metrics.json: "
                             f"{adapter.metrics_address()})")  # type: ignore[attr-defined]
    return found[-1]
