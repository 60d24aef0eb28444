"""The controller follows a git branch (`hermes-fleet source set git REPO --ref main --path fleet.yaml`).

Every pass calls `SourceFollower.step(now)`, which never waits. When the source is due (its interval, with up
to 10 % jitter; at once after a `sync`, a configuration change, a `resume` or the controller's start) it starts
`git fetch` into a bare, non-shallow mirror (`<state>/sources/<name>.git`) as a helper process in a process
group of its own, and returns. Later passes poll it (the pass asks to run again within a second while it
runs) and kill its whole group at the source's timeout. Once it has fetched, the manifest is read at the
fetched commit (`git cat-file`, no work tree), its signature checked when `--verify` asks for it, validated by
the very loader `apply -f` uses (problems name the path in the repository: `fleet.yaml:12:7`), planned as
`apply` plans it (the same refusals: the empty-fleet guard, a native service), and recorded through
fleet/controller/record.py as a generation whose revision is `<ref>@sha1:<commit>`, applied by `source <name>`.

A commit that fails any of this is not applied: the fleet keeps its generation, the attempt is kept in the
store (`source show`, `status`) and journaled, and the same commit is not looked at again until a new commit,
a configuration change, a `resume` or a `sync`. A fetch that fails or times out backs off: the interval times
2, 4, 8, ... up to min(8 x interval, 10 min). A ref that moved backwards (the new commit does not descend
from the applied one) is applied like any other commit, and the journal says the ref was rewound.

Every decision is made from the store's row, so a controller killed at any line resumes where it was: a fetch
it left running is ended by the next controller (its pid and create time are in the row), and a commit it had
recorded is not recorded twice (the same manifest is no new generation).

The resident controller stays lean: no git library, only the `git` program; the manifest loader, the schema
validator and the plan preview are imported the first time a commit is looked at."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fleet.controller.log import log
from fleet.controller.record import record_manifest
from fleet.platform.base import Platform
from fleet.platform.helper_process import end_helper, end_orphaned_helper, run_helper, start_helper
from fleet.spec.durations import format_duration
from fleet.store.db import Store
from fleet.store.layout import StateDir
from fleet.store.sources import (
    APPLIED, HELD, INVALID, MISSING, REFUSED, UNVERIFIED, Source, get_source, update_progress,
)

FETCHED_REF = "refs/hermes/fetched"  # what the last fetch brought: the followed ref's commit
APPLIED_REF = "refs/hermes/applied"  # the commit applied last: kept reachable for the rewind check
FAST_POLL = 0.1  # how soon a young fetch is looked at again (a local fetch takes tens of milliseconds)
FAST_FOR = 2.0  # ... for this long; then every SLOW_POLL
SLOW_POLL = 1.0
JITTER = 0.1  # an interval waits up to 10 % longer, so hosts following one repository spread out
MAX_BACKOFF = 600.0
LOCAL_TIMEOUT = 30.0  # git's local commands on the mirror (init, rev-parse, ls-tree, cat-file, verify-commit)
STEP_ERROR_RETRY = 30.0  # a step that raised (a store in trouble, a vanished mirror) is tried again after this
ERROR_CHARS = 4000
NO_PROGRAM = "hermes-fleet-verification-disabled"  # a program that does not exist: that signature kind never verifies

# The controller's environment is not the fetch's: git gets what it needs to reach a repository (the user's
# home for its config and ssh keys, the agent, proxies, the CA bundle) and no more; it never prompts.
_ENV_KEPT = (
    "PATH", "HOME", "USERPROFILE", "SYSTEMROOT", "SystemRoot", "TMPDIR", "TEMP", "TMP", "SSH_AUTH_SOCK",
    "http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
    "GIT_SSH_COMMAND", "GIT_SSH_VARIANT", "GIT_SSL_CAINFO", "GIT_SSL_CAPATH", "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL",
)
BATCH_SSH = "ssh -o BatchMode=yes -o ConnectTimeout=15"


def git_env(environ: Mapping[str, str]) -> dict[str, str]:
    env = {k: environ[k] for k in _ENV_KEPT if k in environ}
    env.setdefault("GIT_SSH_COMMAND", BATCH_SSH)
    env.update(GIT_TERMINAL_PROMPT="0", GCM_INTERACTIVE="never", LC_ALL="C", LANGUAGE="C")
    return env


def full_ref(ref: str) -> str:
    """A branch name as a full ref name: `git fetch --prune` with a short name on the source side takes the
    destination ref for stale and deletes it in the same fetch that writes it."""
    return ref if ref.startswith("refs/") else f"refs/heads/{ref}"


def backoff(interval: float, failures: int) -> float:
    """How long after the `failures`-th failed fetch in a row the next one starts."""
    return min(interval * 2 ** min(failures, 16), min(8 * interval, MAX_BACKOFF))


def worth_reporting(failures: int) -> bool:
    return failures <= 3 or failures % 20 == 0


def short(commit: str | None) -> str:
    return (commit or "-")[:12]


@dataclass
class _Fetch:
    """A fetch of the followed git source under way."""
    proc: subprocess.Popen
    started: float
    deadline: float
    token: str | None  # the `sync` this fetch answers
    config: str  # the source's configuration digest when it started


@dataclass(frozen=True)
class Rejection:
    """Why a commit of the followed source is not applied."""
    result: str  # INVALID | REFUSED | UNVERIFIED | MISSING
    error: str


class SourceFollower:
    def __init__(self, state: StateDir, store: Store, platform: Platform, *, epoch: int,
                 clock: Callable[[], float] = time.time, environ: Mapping[str, str] | None = None,
                 jitter: Callable[[], float] = random.random, fenced: Callable[[], bool] = lambda: False):
        self.state = state
        self.store = store
        self.platform = platform
        self.epoch = epoch
        self.clock = clock
        self.env = git_env(os.environ if environ is None else environ)
        self.jitter = jitter
        self.fenced = fenced
        self.fetch: _Fetch | None = None
        self.started = False
        self.wanted = False  # a `sync` message asked for a fetch now (its token in the store says the same)

    # -- the step ------------------------------------------------------------------------------------
    def step(self, now: float) -> float | None:
        """Look at the source once; returns when it wants to be asked again (None: no source to follow)."""
        try:
            return self._step(now)
        except Exception as exc:  # noqa: BLE001 - following a source never stops the fleet
            return self.step_failed(exc, now)

    @staticmethod
    def step_failed(exc: Exception, now: float) -> float:
        """A step that raised is said in the log and tried again later."""
        log(f"source: {type(exc).__name__}: {exc}")
        return now + STEP_ERROR_RETRY

    def close(self) -> None:
        """The controller leaves: a fetch in flight is ended with its group, nothing is left behind."""
        if self.fetch is not None:
            end_helper(self.fetch.proc)
            self.fetch = None
            if self.fenced():
                return  # nothing goes into a store that may be another controller's now
            try:
                source = get_source(self.store)
                if source is not None:
                    update_progress(self.store, source.name, fetch_pid=None, fetch_create_time=None)
            except Exception:  # noqa: BLE001 - a store in trouble: the next controller ends nothing then
                pass

    def _step(self, now: float) -> float | None:
        if self.fenced():
            return None  # the state directory may be another controller's: its store is not ours to write
        source = get_source(self.store)
        first = not self.started
        if first:
            self.started = True
            self._end_orphan(source)
        if source is None or source.suspended:
            self._abandon(source)
            return None
        if self.fetch is not None:
            return self._poll(source, now)
        due = first or self.wanted or source.sync_requested or source.next_attempt_at is None \
            or now >= source.next_attempt_at
        if not due:
            return source.next_attempt_at
        self.wanted = False
        return self._start(source, now)

    def _end_orphan(self, source: Source | None) -> None:
        """A fetch a killed controller left running would hold the mirror's locks: end it."""
        if source is None or source.fetch_pid is None:
            return
        why_not = "its start time is unknown" if source.fetch_create_time is None else end_orphaned_helper(
            self.platform, source.fetch_pid, source.fetch_create_time, "git")
        if why_not is None:
            log(f"source {source.name}: ended git pid {source.fetch_pid}, left running by a previous controller")
        else:
            log(f"source {source.name}: git pid {source.fetch_pid} of a previous controller not ended: {why_not}")
        update_progress(self.store, source.name, fetch_pid=None, fetch_create_time=None)

    def _abandon(self, source: Source | None) -> None:
        """Suspended or removed while fetching: the fetch ends, its result would not be used."""
        if self.fetch is None:
            return
        end_helper(self.fetch.proc)
        self.fetch = None
        if source is not None:
            update_progress(self.store, source.name, fetch_pid=None, fetch_create_time=None)

    # -- fetching --------------------------------------------------------------------------------------
    def _start(self, source: Source, now: float) -> float:
        mirror = self._mirror(source)
        argv = ["git", "-c", "protocol.file.allow=always", "--git-dir", mirror, "fetch", "--prune",
                "--no-auto-gc", "--no-tags", "--quiet", "--", source.url, f"+{full_ref(source.ref)}:{FETCHED_REF}"]
        proc = start_helper(argv, env=self.env, cwd=None, output_path=str(self.state.source_fetch_log(source.name)))
        info = self.platform.process_info(proc.pid)
        update_progress(self.store, source.name, fetch_pid=proc.pid,
                        fetch_create_time=info.create_time if info is not None else None)
        self.fetch = _Fetch(proc, now, now + source.timeout_s,
                            source.requested_token if source.sync_requested else None, source.config_digest)
        return min(now + FAST_POLL, self.fetch.deadline)

    def _mirror(self, source: Source) -> str:
        path = self.state.source_mirror(source.name)
        if not (path / "HEAD").exists():
            self.state.sources.mkdir(mode=0o700, exist_ok=True)
            result = run_helper(["git", "init", "--bare", "--quiet", str(path)], env=self.env, cwd=None,
                                timeout=LOCAL_TIMEOUT)
            if result.code != 0:
                raise OSError(f"git init --bare {path} failed: {_text(result.stderr)}")
        return str(path)

    def _poll(self, source: Source, now: float) -> float:
        fetch = self.fetch
        assert fetch is not None, "polled only while fetching"
        code = fetch.proc.poll()
        if code is None and now < fetch.deadline:
            pause = FAST_POLL if now - fetch.started < FAST_FOR else SLOW_POLL
            return min(now + pause, fetch.deadline)
        self.fetch = None
        if code is None:
            end_helper(fetch.proc)
        if fetch.config != source.config_digest:  # `source set` changed it meanwhile: fetch what it says now
            return self._start(source, now)
        if code is None:
            return self._fetch_failed(source, f"git fetch timed out after {format_duration(source.timeout_s)}",
                                      now, fetch.token)
        if code != 0:
            return self._fetch_failed(source, f"git fetch failed (exit {code}): {self._fetch_output(source)}",
                                      now, fetch.token)
        result = self._git(source, "rev-parse", "--verify", "--quiet", f"{FETCHED_REF}^{{commit}}")
        commit = _text(result.stdout)
        if result.code != 0 or not commit:
            return self._fetch_failed(source, f"{source.ref} is not a commit: {_text(result.stderr)}", now,
                                      fetch.token)
        return self._fetched(source, commit, now, fetch.token)

    def _fetch_output(self, source: Source) -> str:
        try:
            with open(self.state.source_fetch_log(source.name), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - ERROR_CHARS))
                return _text(fh.read()) or "no output"
        except OSError:
            return "no output"

    def _fetch_failed(self, source: Source, error: str, now: float, token: str | None) -> float:
        failures = source.failures + 1
        next_at = now + backoff(source.interval_s, failures)
        update_progress(self.store, source.name, failures=failures, last_error=error[:ERROR_CHARS],
                        last_error_at=now, next_attempt_at=next_at, handled_token=token or source.handled_token,
                        fetch_pid=None, fetch_create_time=None)
        if worth_reporting(failures):
            message = (f"source {source.name}: {error} (failure {failures} in a row; next try in "
                       f"{format_duration(next_at - now)})")
            self.store.journal("source_fetch_failed", message, epoch=self.epoch,
                               data={"source": source.name, "failures": failures})
            log(message)
        return next_at

    def _fetched(self, source: Source, commit: str, now: float, token: str | None) -> float:
        next_at = now + source.interval_s * (1 + JITTER * self.jitter())
        update_progress(self.store, source.name, fetched_commit=commit, fetched_at=now, failures=0, last_error=None,
                        last_error_at=None, next_attempt_at=next_at, fetch_pid=None, fetch_create_time=None)
        if source.failures:
            self.store.journal("source_fetch_recovered", f"source {source.name}: fetched again after "
                               f"{source.failures} failure(s)", epoch=self.epoch, data={"source": source.name})
        if commit != source.fetched_commit:
            self.store.journal("source_fetched", f"source {source.name}: {source.ref} is at {short(commit)} "
                               f"(was {short(source.fetched_commit)})", epoch=self.epoch,
                               data={"source": source.name, "commit": commit, "previous": source.fetched_commit})
        try:
            self._consider(source, commit, now, synced=token is not None)
        finally:
            if token:  # only now: a `sync --wait` reads the outcome the moment it sees its token handled
                update_progress(self.store, source.name, handled_token=token)
        now_source = get_source(self.store)
        if now_source is not None and now_source.sync_requested:
            return now  # a sync asked for while this commit was handled: fetch again at once
        return next_at

    # -- a fetched commit -------------------------------------------------------------------------------
    def _consider(self, source: Source, commit: str, now: float, *, synced: bool) -> None:
        """Apply `commit` unless it was attempted already (under this configuration): a failed commit is
        tried again only when a `sync` asks; an applied one never needs to be."""
        if commit == source.attempted_commit and source.attempted_config == source.config_digest \
                and (not synced or source.attempted_result == APPLIED):
            return
        if commit == source.held_commit:
            self._hold(source, commit, now)
            return
        if self._rewound(source, commit):
            self.store.journal("source_rewound", f"source {source.name}: {source.ref} was rewound from "
                               f"{short(source.applied_commit)} to {short(commit)}, which does not descend from "
                               f"it; applying it like any commit (the branch is the truth)", epoch=self.epoch,
                               data={"source": source.name, "from": source.applied_commit, "to": commit})
        outcome = self._evaluate(source, commit, now)
        if isinstance(outcome, Rejection):
            self._reject(source, commit, outcome, now)
        else:
            self._record(source, commit, outcome[0], outcome[1], now)

    def _hold(self, source: Source, commit: str, now: float) -> None:
        """The branch is still at the commit a rollback rolled back from: wait for a new one."""
        if source.attempted_commit == commit and source.attempted_result == HELD:
            return
        message = (f"source {source.name}: {source.revision(commit)} is held after a rollback; a new commit on "
                   f"{source.ref} (or `hermes-fleet source resume --accept-current`) applies it")
        update_progress(self.store, source.name, attempted_commit=commit, attempted_config=source.config_digest,
                        attempted_result=HELD, attempted_error=message, attempted_at=now)
        self.store.journal("source_held", message, epoch=self.epoch, data={"source": source.name, "commit": commit})
        log(message)

    def _rewound(self, source: Source, commit: str) -> bool:
        if not source.applied_commit or source.applied_commit == commit:
            return False
        return self._git(source, "merge-base", "--is-ancestor", source.applied_commit, commit).code == 1

    def _evaluate(self, source: Source, commit: str, now: float):
        """(manifest, plan report) when the commit may be applied, else a Rejection saying why."""
        if source.verify_mode != "none":
            problem = self._verify(source, commit)
            if problem:
                return Rejection(UNVERIFIED, problem)
        data = self._blob(source, commit)
        if isinstance(data, Rejection):
            return data
        # Imported here, the first time a commit is looked at: the resident controller does not carry the
        # schema validator and the plan preview while it only follows an unchanged branch.
        from fleet.controller.plan_report import plan_report
        from fleet.controller.preview import preview
        from fleet.controller.status import ControllerStatus
        from fleet.spec.errors import ManifestError
        from fleet.spec.load import load_manifest_bytes

        try:
            manifest = load_manifest_bytes(data, source.path, base_dir=str(self.state.root.parent))
        except ManifestError as exc:
            return Rejection(INVALID, "\n".join(p.render() for p in exc.problems))
        me = ControllerStatus(running=True, pid=os.getpid(), epoch=self.epoch, version=None, since=None,
                              generation=0, observed_generation=self.store.observed_generation)
        report = plan_report(preview(manifest, self.state, self.store, self.platform, now, prune=True,
                                     allow_empty=source.allow_empty, controller=me))
        reason = report.refusal_reason
        if reason is not None:
            if report.refusal and not source.allow_empty:
                reason += "; a source that may do this is set with `hermes-fleet source set ... --allow-empty`"
            return Rejection(REFUSED, reason)
        return manifest, report

    def _verify(self, source: Source, commit: str) -> str | None:
        """Why `commit` is not signed by a key the source trusts, or None when it is. Only the configured kind
        of signature can pass: the other kinds' programs are set to one that does not exist."""
        if source.verify_mode == "ssh":
            config = [f"gpg.ssh.allowedSignersFile={source.allowed_signers}", f"gpg.openpgp.program={NO_PROGRAM}",
                      f"gpg.x509.program={NO_PROGRAM}"]
            env = self.env
        else:
            config = [f"gpg.ssh.program={NO_PROGRAM}", f"gpg.x509.program={NO_PROGRAM}"]
            env = {**self.env, "GNUPGHOME": source.gpg_home or ""}
        args = [a for item in config for a in ("-c", item)]
        result = run_helper(["git", *args, "--git-dir", str(self.state.source_mirror(source.name)), "verify-commit",
                             commit], env=env, cwd=None, timeout=LOCAL_TIMEOUT)
        if result.code == 0:
            return None
        detail = _text(result.stderr) or "no signature"
        return f"commit {short(commit)} is not signed by a key the source trusts ({source.verify_mode}): {detail}"

    def _blob(self, source: Source, commit: str) -> bytes | Rejection:
        from fleet.spec.load import MAX_MANIFEST_BYTES

        listed = self._git(source, "ls-tree", "-l", "--full-tree", commit, "--", source.path)
        fields = _text(listed.stdout).split(None, 4)
        if listed.code != 0 or len(fields) < 5 or fields[1] != "blob":
            what = "is not a file" if len(fields) >= 5 else "does not exist"
            return Rejection(MISSING, f"{source.path}: {what} at commit {short(commit)} of {source.ref}")
        if fields[3].isdigit() and int(fields[3]) > MAX_MANIFEST_BYTES:
            return Rejection(INVALID, f"{source.path}: the file is larger than "
                                      f"{MAX_MANIFEST_BYTES // (1024 * 1024)} MiB")
        blob = self._git(source, "cat-file", "blob", fields[2])
        if blob.code != 0:
            raise OSError(f"git cat-file blob {fields[2]} failed: {_text(blob.stderr)}")
        return blob.stdout

    def _reject(self, source: Source, commit: str, rejection: Rejection, now: float) -> None:
        update_progress(self.store, source.name, attempted_commit=commit, attempted_config=source.config_digest,
                        attempted_result=rejection.result, attempted_error=rejection.error[:ERROR_CHARS],
                        attempted_at=now)
        lines = rejection.error.splitlines() or [""]
        more = f" (and {len(lines) - 1} more; see `hermes-fleet source show`)" if len(lines) > 1 else ""
        current = self.store.current_generation()
        keeps = f"generation {current.generation} keeps running" if current else "nothing was applied yet"
        message = (f"source {source.name}: {source.revision(commit)} not applied ({rejection.result}): "
                   f"{lines[0]}{more}; {keeps}")
        self.store.journal("source_rejected", message, epoch=self.epoch,
                           data={"source": source.name, "commit": commit, "result": rejection.result,
                                 "error": rejection.error[:ERROR_CHARS]})
        log(message)

    def _record(self, source: Source, commit: str, manifest, report, now: float) -> None:
        if self.fenced():
            return
        revision = {"revision": source.revision(commit), "commit": commit, "branch": source.ref, "dirty": False,
                    "path": f"{source.path} in {source.url}", "applied_by": f"source {source.name}",
                    "summary": report.counts}
        with self.store.tx():
            current = get_source(self.store, source.name)
            if current is None or current.suspended or current.config_digest != source.config_digest:
                return  # suspended, removed or changed while this commit was looked at: not this one's turn
            recorded = record_manifest(self.store, manifest, revision, prune=True, source=f"source {source.name}",
                                       lift_down=False)
            update_progress(self.store, source.name, attempted_commit=commit, attempted_config=source.config_digest,
                            attempted_result=APPLIED, attempted_error=None, attempted_at=now, applied_commit=commit,
                            applied_generation=recorded.generation, applied_at=now, held_commit=None)
        self._git(source, "update-ref", APPLIED_REF, commit)
        log(f"source {source.name}: {source.revision(commit)} recorded as generation {recorded.generation}"
            + ("" if recorded.created else " (no change)"))

    def _git(self, source: Source, *args: str):
        return run_helper(["git", "--git-dir", str(self.state.source_mirror(source.name)), *args], env=self.env,
                          cwd=None, timeout=LOCAL_TIMEOUT)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip()
