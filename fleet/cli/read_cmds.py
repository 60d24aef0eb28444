"""Commands that read what the fleet wrote: a gateway's log, the journal's events, the applied revisions."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import typer

from fleet.cli.common import (
    FileLongOption, FileOption, OutputOption, StateDirOption, check_output, columns, emit_json, fail, fleet_state,
    state_for,
)
from fleet.cli.render_plan import utc
from fleet.store.db import Store


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
            typer.echo(line)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while follow:
            chunk = fh.read(64 * 1024)
            if chunk:
                typer.echo(decoder.decode(chunk), nl=False)
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
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new events."),
    profile: str | None = typer.Option(None, "--profile", help="Only this profile's events."),
    output: str = OutputOption,
    limit: int = typer.Option(50, "-n", "--lines", help="How many of the latest events to print first."),
    state_dir: str | None = StateDirOption,
    file: Path = FileLongOption,
) -> None:
    """The journal: every action the controller took and every exit it saw."""
    check_output(output)
    state = fleet_state(state_dir, file)
    last = 0
    try:
        while True:
            store = Store(state.db, readonly=True)
            try:
                batch = store.events(after_id=last, profile=profile, limit=limit if last == 0 else 1000)
            finally:
                store.close()
            for e in batch:
                last = e.id
                if output == "json":
                    import json
                    typer.echo(json.dumps({"id": e.id, "at": utc(e.at), "epoch": e.epoch, "profile": e.profile,
                                           "kind": e.kind, "message": e.message, "data": e.data}))
                else:
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
                    typer.echo(f"{stamp} {e.profile or '-':<12} {e.kind:<18} {e.message}")
            if not follow:
                return
            time.sleep(0.5)
    except KeyboardInterrupt:
        return


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
        typer.echo(line)


def _short_revision(revision: str) -> str:
    """Commit ids and digests cut to 12 hex digits, as `git log --oneline` does; a `+dirty` mark stays."""
    return re.sub(r"\b([0-9a-f]{12})[0-9a-f]{4,}\b", r"\1", revision)


def _summary(raw: str | None) -> dict | None:
    import json
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
