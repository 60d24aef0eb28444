"""Commands that read what the fleet wrote: a gateway's log, the journal's events, the applied revisions."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import typer

from fleet.cli.common import (
    check_output, columns, emit_json, fail, file_stamp, fleet_state, state_for, utc,
)
from fleet.cli.console import echo
from fleet.cli.options import FileLongOption, FileOption, OutputOption, StateDirOption
from fleet.store.db import JournalEntry, Store
from fleet.store.layout import StateDir


def logs(
    profile: str = typer.Argument(..., help="Profile whose gateway output to show ('controller' for the controller)."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines."),
    lines: int = typer.Option(50, "-n", "--lines", help="How many lines from the end."),
    state_dir: str | None = StateDirOption,
    file: Path = FileLongOption,
) -> None:
    """The gateway's stdout/stderr, as written to logs/<profile>.log by the gateway itself.

    With -f, keep printing what is appended, into the new file when a respawn rotates the log,
    until interrupted."""
    state = state_for(state_dir, file)
    path = state.controller_log if profile == "controller" else state.log(profile)
    if not path.exists():
        fail(f"no log for {profile!r} at {path}")
    try:
        _print_log(path, lines, follow)
    except KeyboardInterrupt:
        return


def _print_log(path: Path, lines: int, follow: bool) -> None:
    import codecs

    fh = open(path, "rb")  # noqa: SIM115 - reopened when the log rotates; closed in the finally below
    try:
        start = max(0, os.fstat(fh.fileno()).st_size - 256 * 1024)
        fh.seek(start)
        data = fh.read()
        if follow:  # an unfinished last line is printed whole once it is finished
            data = data[:data.rfind(b"\n") + 1]
            fh.seek(start + len(data))
        for line in (data.decode("utf-8", "replace").splitlines()[-lines:] if lines > 0 else []):
            echo(line)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while follow:
            chunk = fh.read(64 * 1024)
            if chunk:
                echo(decoder.decode(chunk), nl=False)
                continue
            try:
                now = os.stat(path)
            except FileNotFoundError:  # renamed away, the next spawn has not created it yet
                now = None
            held = os.fstat(fh.fileno())
            if now is not None and (now.st_ino, now.st_dev) != (held.st_ino, held.st_dev):
                # rotated: the old file is read to its end above; the new one from its start
                fh.close()
                fh = open(path, "rb")  # noqa: SIM115 - as above
                decoder.reset()
                continue
            if held.st_size < fh.tell():  # truncated in place
                fh.seek(0)
            time.sleep(0.1)
    finally:
        fh.close()


def events(
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new events, until Ctrl-C."),
    profile: str | None = typer.Option(None, "--profile", help="Only this profile's events."),
    output: str = OutputOption,
    limit: int = typer.Option(50, "-n", "--lines", help="How many of the latest events to print first."),
    state_dir: str | None = StateDirOption,
    file: Path = FileLongOption,
) -> None:
    """The journal: every action the controller took and every exit it saw, oldest first.

    With -f, also each new event as the controller records it (the store is looked at five
    times a second, a stat call each). With -o json: NDJSON, one object per line, written out
    at once so `events -f -o json | jq` runs live. Each has the same keys: id (grows), at
    (ISO-8601, UTC), at_unix (seconds since 1970), epoch (the controller start that wrote
    it), profile (null for the fleet), kind, message and data (null or an object). Secrets
    are masked in message and data, as in every output."""
    check_output(output)
    state = fleet_state(state_dir, file)
    try:
        batch, last = _latest_events(state, profile, limit)
        _print_events(batch, output)
        while follow:
            _wait_for_store(state)
            batch = _events_after(state, profile, last)
            if batch:
                last = batch[-1].id
            _print_events(batch, output)
    except KeyboardInterrupt:
        return
    except BrokenPipeError:  # the reader went away (`| head`): done, without a message at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _latest_events(state: StateDir, profile: str | None, limit: int) -> tuple[list[JournalEntry], int]:
    """The latest `limit` events, and the newest id of the journal (-f goes on after it, also with -n 0)."""
    store = Store(state.db, readonly=True)
    try:
        newest = store.events(limit=1)
        batch = store.events(profile=profile, limit=limit)  # a row recorded in between is in it: max below
        return batch, max([e.id for e in newest + batch[-1:]], default=0)
    finally:
        store.close()


def _events_after(state: StateDir, profile: str | None, last: int) -> list[JournalEntry]:
    store = Store(state.db, readonly=True)
    try:
        # Every row after `last` (-1: SQLite's "no limit"); the journal is bounded by its retention, and a
        # burst must not lose its first rows.
        return store.events(after_id=last, profile=profile, limit=-1)
    finally:
        store.close()


def _wait_for_store(state: StateDir, most: float = 2.0) -> None:
    """Until fleet.db or its WAL changed (every commit touches one), or `most` seconds passed."""
    wal = state.db.with_name(state.db.name + "-wal")
    before = (file_stamp(state.db), file_stamp(wal))
    deadline = time.monotonic() + most
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if (file_stamp(state.db), file_stamp(wal)) != before:
            return


def event_json(e: JournalEntry) -> dict:
    return {"id": e.id, "at": utc(e.at), "at_unix": e.at, "epoch": e.epoch, "profile": e.profile, "kind": e.kind,
            "message": e.message, "data": e.data}


def _print_events(batch: list[JournalEntry], output: str) -> None:
    for e in batch:
        if output == "json":
            echo(json.dumps(event_json(e), default=str))  # echo flushes: one line reaches a pipe at once
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
            echo(f"{stamp} {e.profile or '-':<12} {e.kind:<18} {e.message}")


def history(
    output: str = OutputOption,
    state_dir: str | None = StateDirOption,
    file: Path = FileOption,
) -> None:
    """Applied revisions: which generation, from which commit, made by which writer (ORIGIN: apply,
    controller run -f, rollback of N), by whom, with what result. `rollback N` goes back to generation N."""
    check_output(output)
    state = fleet_state(state_dir, file)
    store = Store(state.db, readonly=True)
    try:
        rows = store.revisions()  # origin: None in a row recorded before origins were kept
    finally:
        store.close()
    if output == "json":
        emit_json([{**r, "plan_summary": _summary(r["plan_summary"]), "started_at": utc(r["started_at"]),
                    "finished_at": utc(r["finished_at"])} for r in rows])
        return
    table = [("ID", "GEN", "APPLIED", "RESULT", "ORIGIN", "REVISION", "BY")]
    for r in rows:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started_at"]))
        table.append((str(r["id"]), str(r["generation"]), stamp, r["result"], r["origin"] or "-",
                      _short_revision(r["revision"]), r["applied_by"] or "-"))
    for line in columns(table, right={0, 1}):
        echo(line)


def _short_revision(revision: str) -> str:
    """Commit ids and digests cut to 12 hex digits, as `git log --oneline` does; a `+dirty` mark stays."""
    return re.sub(r"\b([0-9a-f]{12})[0-9a-f]{4,}\b", r"\1", revision)


def _summary(raw: str | None) -> dict | None:
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
