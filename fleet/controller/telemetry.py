"""The controller's metrics, as fleet.yaml's `metrics` asks: an HTTP endpoint and a node_exporter textfile,
reconciled like any desired state (started, moved, stopped when the manifest changes; a failed bind retried).

Nothing of it loads unless a manifest asks for it (fleet/controller/metrics_on_demand.py, which also removes a
killed predecessor's .metrics.json at start), and nothing here can stall the loop: the endpoint runs in
its own thread on bytes published after each pass, and every failure is reported, never raised."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fleet.controller.log import log
from fleet.controller.metrics_snapshot import GenerationFacts, PhaseClock, build_snapshot, process_metrics, rows_of
from fleet.controller.pass_counters import PassCounters
from fleet.controller.reconcile import PassResult
from fleet.controller.status import source_status
from fleet.spec.model import MetricsSpec
from fleet.store.db import Store
from fleet.store.files import write_atomic
from fleet.store.layout import StateDir
from fleet.store.metrics_state import EndpointState, write_endpoint_state

if TYPE_CHECKING:  # loaded only when a manifest asks for metrics
    import psutil

    from fleet.metrics.server import MetricsServer, Published

TEXTFILE_EVERY = 60.0  # the textfile is rewritten at least this often, so its mtime tells a live controller
STARTING_POLL = 1.0
STARTING_POLL_FOR = 60.0  # a gateway that never says it runs is not looked at every second forever
RETRY_SECONDS = 30.0  # a listener that could not bind (port taken) is tried again this often
MIN_ALIVE_SECONDS = 60.0  # /healthz: the next pass is due within 3x the loop's wait, and never sooner than this


class Telemetry:
    def __init__(self, state: StateDir, store: Store, epoch: int, clock: Callable[[], float] = time.time, *,
                 counters: PassCounters | None = None):
        self.state = state
        self.store = store
        self.epoch = epoch
        self.clock = clock
        self.counters = counters if counters is not None else PassCounters()  # the passes before it was loaded
        self.phases = PhaseClock()
        self.spec = MetricsSpec()
        self.server: MetricsServer | None = None
        self.listen_error = ""
        self.retry_at = 0.0
        self.token_stamp: tuple[int, int] | None = None
        self.textfile_at: float | None = None
        self.textfile_error = ""
        self.facts: GenerationFacts | None = None
        self.published: Published | None = None
        self.reported = EndpointState()
        self.process: psutil.Process | None = None

    # -- each pass --------------------------------------------------------------------------
    def after_pass(self, result: PassResult, started: float, ended: float, wait: float) -> None:
        self.counters.count(result, max(0.0, ended - started))
        if result.desired is None:
            return
        self._configure(result.desired.spec.metrics, ended)
        if not self.spec.enabled:
            return
        try:
            self._publish(result, ended, wait)
        except Exception as exc:  # noqa: BLE001 - metrics never stop the fleet
            self._note_error("listen_error", f"metrics snapshot failed: {type(exc).__name__}: {exc}")
        # A listener started in this pass is announced (.metrics.json, `status`) once it has a body to serve: a
        # scraper told the address earlier got 503 for its first scrape.
        self._report()

    def bound(self, timeout: float, now: float) -> float:
        """The loop waits no longer than the textfile may go unwritten, and while a gateway starts it looks
        again every STARTING_POLL seconds for its first minute: its Running (and the fleet's converged) is
        written by the gateway, which wakes no one."""
        if not self.spec.enabled:
            return timeout
        if any(phase == "Starting" and now - since < STARTING_POLL_FOR for phase, since in self.phases.since.values()):
            timeout = min(timeout, STARTING_POLL)
        if self.spec.textfile and self.textfile_at is not None:
            timeout = min(timeout, max(0.0, self.textfile_at + TEXTFILE_EVERY - now))
        return timeout

    def close(self) -> None:
        self._stop_server()

    # -- configuration ----------------------------------------------------------------------
    def _configure(self, wanted: MetricsSpec, now: float) -> None:
        if wanted != self.spec:
            if (wanted.listen, wanted.token_file) != (self.spec.listen, self.spec.token_file):
                self._stop_server()
                self.retry_at = 0.0
            if wanted.textfile != self.spec.textfile:
                self.textfile_at, self.textfile_error = None, ""
            self.spec = wanted
            self._report()
        if wanted.listen and self.server is None and now >= self.retry_at:
            self._start_server(now)
        elif self.server is not None and wanted.token_file:
            self._reload_token_if_changed()

    def _start_server(self, now: float) -> None:
        from fleet.metrics.server import MetricsServer, bind
        from fleet.spec.listen import format_listen, parse_listen

        self.retry_at = now + RETRY_SECONDS
        try:
            token = self._read_token() if self.spec.token_file else None
            host, port = parse_listen(self.spec.listen)
            listener = bind(host, port)
        except (OSError, ValueError) as exc:
            self._note_error("listen_error", f"metrics on {self.spec.listen}: {_reason(exc)}")
            return
        self.server = MetricsServer(listener, self._current, token).start()
        bound = format_listen(*self.server.address)
        self.listen_error = ""
        log(f"metrics: serving http://{bound}/metrics" + (" (bearer token required)" if token else ""))
        self.store.journal("metrics_listening", f"metrics served on http://{bound}/metrics", epoch=self.epoch)

    def _stop_server(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            self._report()

    def _read_token(self) -> bytes:
        path = self.spec.token_file
        st = os.stat(path)
        self.token_stamp = (st.st_mtime_ns, st.st_size)
        with open(path, "rb") as fh:
            token = fh.read(4096).strip()
        if not token:
            raise ValueError(f"the token file {path} is empty")
        return token

    def _reload_token_if_changed(self) -> None:
        assert self.server is not None
        try:
            st = os.stat(self.spec.token_file)
            if (st.st_mtime_ns, st.st_size) != self.token_stamp:
                self.server.token = self._read_token()
                log("metrics: bearer token reloaded")
        except (OSError, ValueError) as exc:
            # Never serve without the token that was asked for: stop until the file is readable again.
            self._stop_server()
            self._note_error("listen_error", f"metrics on {self.spec.listen}: {_reason(exc)}")

    # -- publishing -------------------------------------------------------------------------
    def _current(self) -> Published | None:
        return self.published

    def _publish(self, result: PassResult, ended: float, wait: float) -> None:
        from fleet.metrics.exposition import render
        from fleet.metrics.server import Published

        assert result.desired is not None
        rows = rows_of(result, ended)
        self.counters.forget_missing({r.name for r in rows})
        changed = self.phases.update(rows, ended)
        observed_generation = self.store.observed_generation
        snapshot = build_snapshot(
            result, self.counters, self.phases, rows, self._facts(result.desired.generation),
            observed_generation=observed_generation, ended=ended, store_degraded=self.store.degraded is not None,
            source=source_status(self.store), process=self._process_metrics() if self.server else None)
        if self.server is not None:
            alive_until = ended + max(3 * wait, MIN_ALIVE_SECONDS)
            ready = (("supervisor-lock", True), ("store-writable", self.store.degraded is None),
                     ("generation-observed", observed_generation == result.desired.generation))
            self.published = Published(render(snapshot), alive_until, ready)
        if self.spec.textfile and (changed or result.attempted or self.textfile_at is None
                                   or ended - self.textfile_at >= TEXTFILE_EVERY):
            self._write_textfile(render(snapshot, constant_labels=(("fleet", result.desired.spec.name),),
                                        textfile=True), ended)

    def _write_textfile(self, data: bytes, now: float) -> None:
        path = self.spec.textfile
        self.textfile_at = now  # a failing write is retried on the minute, not on every pass
        try:
            if os.path.islink(path):
                raise OSError(f"{path} is a symlink; refusing to write through it")
            write_atomic(path, data, 0o644, durable=False)
        except OSError as exc:
            self._note_error("textfile_error", f"metrics textfile {path}: {_reason(exc)}")
            return
        if self.textfile_error:
            self.textfile_error = ""
            self._report()

    def _facts(self, generation: int) -> GenerationFacts:
        if self.facts is None or self.facts.generation != generation:
            digest, commit = "", ""
            for row in self.store.revisions(5):
                if row.get("generation") == generation:
                    digest, commit = row.get("manifest_digest") or "", row.get("git_commit") or ""
                    break
            self.facts = GenerationFacts(generation, digest, commit)
        return self.facts

    def _process_metrics(self):
        if self.process is None:
            import psutil
            self.process = psutil.Process()
        return process_metrics(self.process)

    # -- reporting --------------------------------------------------------------------------
    def _note_error(self, which: str, message: str) -> None:
        if getattr(self, which) == message:
            return  # said once; the state file keeps saying it
        setattr(self, which, message)
        log(message)
        self.store.journal("metrics_error", message, epoch=self.epoch)
        self._report()

    def _report(self) -> None:
        from fleet.spec.listen import format_listen
        now = EndpointState(
            listen=format_listen(*self.server.address) if self.server is not None else "",
            listen_error=self.listen_error if self.spec.listen else "",
            textfile=self.spec.textfile, textfile_error=self.textfile_error if self.spec.textfile else "")
        if now == self.reported:
            return
        self.reported = now
        try:
            write_endpoint_state(self.state, now)
        except OSError:
            pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f" ({exc.filename})" if exc.filename else "")
    return str(exc)
