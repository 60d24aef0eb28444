"""How the followed git source reads in `status` and `source show`, and the one-writer rule `apply` keeps with
it: the parts of the source commands that `status` and `apply` need, without the CLI framework."""

from __future__ import annotations

import time
from pathlib import Path

from fleet.cli.common import utc
from fleet.controller.status import SourceStatus
from fleet.spec.durations import format_duration
from fleet.store.db import Store
from fleet.store.sources import Source, get_source


def when_text(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    ago = now - ts
    return f"{stamp} ({format_duration(abs(ago))} {'ago' if ago >= 0 else 'from now'})"


def source_summary(st: SourceStatus, now: float) -> list[str]:
    """`status`'s lines about the source."""
    s = st.source
    lines = [f"source: {s.name} follows {s.ref} of {s.url} ({s.path}) — {st.sync.value}"]
    if s.suspended:
        lines.append(f"  suspended since {when_text(s.suspended_at, now)} by {s.suspended_by or 'someone'}"
                     + (f": {s.suspend_reason}" if s.suspend_reason else "") + "; `hermes-fleet source resume` "
                     "follows it again")
    lines.append(f"  fetched {s.revision(s.fetched_commit) or '-'} at {when_text(s.fetched_at, now)}")
    lines.append(f"  applied {s.revision(s.applied_commit) or '-'}"
                 + (f" as generation {s.applied_generation} at {when_text(s.applied_at, now)}" if s.applied_commit else ""))
    if s.attempt_failed:
        first = (s.attempted_error or "").splitlines()[:1] or [""]
        lines.append(f"  NOT APPLIED: {s.revision(s.attempted_commit)} ({s.attempted_result}): {first[0]}")
    if s.held_commit:
        lines.append(f"  held after a rollback: {s.revision(s.held_commit)} (a new commit or "
                     "`source resume --accept-current` applies the branch again)")
    if s.failures:
        lines.append(f"  FETCH FAILING ({s.failures} in a row): {_first_line(s.last_error)}")
    return lines


def _first_line(text: str | None) -> str:
    return ((text or "").strip().splitlines() or [""])[0]


def source_json(st: SourceStatus) -> dict:
    s = st.source
    return {
        "name": s.name, "kind": s.kind, "url": s.url, "ref": s.ref, "path": s.path,
        "interval_s": s.interval_s, "timeout_s": s.timeout_s,
        "verify": {"mode": s.verify_mode, "allowed_signers": s.allowed_signers, "gpg_home": s.gpg_home},
        "allow_empty": s.allow_empty, "set_by": s.set_by, "set_at": utc(s.set_at),
        "suspended": {"by": s.suspended_by, "reason": s.suspend_reason, "at": utc(s.suspended_at)}
        if s.suspended else None,
        "sync": st.sync.value, "failing": st.failing, "generation": st.generation,
        "fetched": {"commit": s.fetched_commit, "revision": s.revision(s.fetched_commit), "at": utc(s.fetched_at)},
        "applied": {"commit": s.applied_commit, "revision": s.revision(s.applied_commit),
                    "generation": s.applied_generation, "at": utc(s.applied_at)},
        "last_attempt": {"commit": s.attempted_commit, "revision": s.revision(s.attempted_commit),
                         "result": s.attempted_result, "error": s.attempted_error, "at": utc(s.attempted_at)},
        "fetch": {"failures": s.failures, "error": s.last_error, "error_at": utc(s.last_error_at),
                  "next_attempt": utc(s.next_attempt_at), "in_flight": s.fetch_pid is not None},
        "sync_requested": s.sync_requested,
        "held": {"commit": s.held_commit, "revision": s.revision(s.held_commit)} if s.held_commit else None,
    }


def followed_source(store: Store) -> Source | None:
    """The source a local `apply -f` would fight with: set and not suspended."""
    source = get_source(store)
    return source if source is not None and not source.suspended else None


def one_writer_refusal(source: Source, file: Path) -> str:
    return (f"the fleet follows source {source.name} ({source.ref} of {source.url}, {source.path}); "
            f"a local apply of {file} would be overwritten by its next commit. Either suspend it first "
            f"(`hermes-fleet source suspend --reason ...`; `source resume` hands the fleet back to the branch), "
            f"or `hermes-fleet apply --force -f {file}`, which suspends the source and applies {file}")
