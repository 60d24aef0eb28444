"""`status --watch`: one process that keeps the status view current.

It does not run `status` on a clock. It looks at what the status computation reads, cheaply,
every POLL_S (ChangeSensor: the file times and sizes of the state directory, the gateways'
`gateway_state.json`, whether the processes on screen still exist), and recomputes the
read-only `fleet_status()` only when something changed, or when `--interval` has passed (so
ages move, and a change no file shows, such as a gateway dying while no controller runs, is
seen). A frame is shown as a full-screen table on a terminal (plain ANSI on the alternate
screen, each frame one synchronized write, so nothing flickers; no rich, whose import alone
costs ~65 ms), as plain lines on a pipe, or as NDJSON with `-o json`. Nothing here writes to
the state directory.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path


from fleet.cli.common import EXIT_OK, columns, file_stamp, utc
from fleet.cli.status_cmd import (
    PHASE_COLUMN, TABLE_RIGHT, fleet_lines, profile_table, status_json, table_lines,
)
from fleet.controller.status import FleetStatus, ProfileStatus, fleet_status
from fleet.observe.hermes_files import GATEWAY_STATE
from fleet.platform import current_platform
from fleet.platform.base import Platform
from fleet.platform.terminal import Keys, TerminateRequested, pid_exists, stop_on_terminate, vt_console
from fleet.spec.durations import format_duration
from fleet.spec.model import DRIVER_HERMES
from fleet.store.db import JournalEntry, Store, StoreError
from fleet.store.layout import StateDir

POLL_S = 0.2  # how often the sensor looks; also the longest a key press waits
DUTY = 0.2  # the most of its time the watch spends computing frames after changes
MAX_EVENTS = 10  # journal rows read per frame; the screen shows as many as fit
READ_ERRORS = (sqlite3.Error, StoreError, OSError)


# -- change detection -------------------------------------------------------------------------

def _entries(root: Path) -> frozenset:
    """(name, inode, mtime, size) of each regular file in the state directory, except SQLite's shared
    memory (readers write it) and what is not a file (logs/, the wake socket)."""
    found = []
    try:
        with os.scandir(root) as it:
            for entry in it:
                if entry.name.endswith("-shm") or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                found.append((entry.name, st.st_ino, st.st_mtime_ns, st.st_size))
    except OSError as exc:
        found.append((f"?{exc.errno}", 0, 0, 0))
    return frozenset(found)


@dataclass
class ChangeSensor:
    """Whether anything `status` shows may have changed since the last look, for a few stat calls.

    Every write the controller makes lands in the state directory: a commit grows or touches
    fleet.db-wal (a checkpoint touches fleet.db), a PID record or stop marker is renamed into
    place, the holder file is rewritten, a gateway's heartbeat file is replaced. Outside it, a
    Hermes gateway rewrites `<home>/gateway_state.json` when its state or active agents change.
    And a gateway that dies while no controller runs changes no file: the processes on screen
    are asked whether they still exist. A look costs about 0.1 ms (a scandir, a stat per file)."""
    root: Path
    files: tuple[str, ...] = ()  # outside the state directory
    pids: tuple[int, ...] = ()
    _dir: frozenset | None = None
    _files: tuple = ()
    _pids: tuple = ()

    def look(self) -> bool:
        """True when something changed since the previous look (and at the first)."""
        now = (_entries(self.root), self._file_stats(), self._alive())
        changed = now != (self._dir, self._files, self._pids)
        self._dir, self._files, self._pids = now
        return changed

    def follow(self, files: tuple[str, ...], pids: tuple[int, ...]) -> None:
        """Watch these files and processes from now on (what the newest frame shows). Their baseline is
        taken now; the directory's stays as it was before the frame was computed, so a write made
        meanwhile is still seen at the next look."""
        self.files, self.pids = files, pids
        self._files, self._pids = self._file_stats(), self._alive()

    def _file_stats(self) -> tuple:
        return tuple(file_stamp(p) for p in self.files)

    def _alive(self) -> tuple:
        return tuple(pid_exists(pid) for pid in self.pids)


# -- one frame ----------------------------------------------------------------------------------

@dataclass
class Frame:
    """One view of the fleet: its status at `at`, the profiles shown, the latest journal rows, or the read error."""
    at: float
    st: FleetStatus | None = None
    rows: list[ProfileStatus] = field(default_factory=list)
    events: list[JournalEntry] = field(default_factory=list)
    error: str | None = None


@dataclass
class Reader:
    """Computes frames: `fleet_status()` as `status` runs it, and the latest journal rows."""
    state: StateDir
    profiles: list[str]
    platform: Platform
    with_events: bool
    homes: tuple[str, ...] = ()  # the gateway_state.json of each Hermes profile of `generation`
    generation: int | None = None

    def frame(self, first: tuple[FleetStatus, float] | None = None) -> Frame:
        st, now = first if first is not None else (None, time.time())
        try:
            if st is None:
                st = fleet_status(self.state, self.platform, now)
            frame = Frame(now, st, [p for p in st.profiles if not self.profiles or p.name in self.profiles])
            if self.with_events or st.controller.generation != self.generation:
                self._read_store(frame)
        except READ_ERRORS as exc:
            return Frame(now, error=f"cannot read the fleet's state: {exc}")
        return frame

    def _read_store(self, frame: Frame) -> None:
        assert frame.st is not None
        store = Store(self.state.db, readonly=True)
        try:
            if self.with_events:
                batch = store.events(profile=self.profiles[0] if len(self.profiles) == 1 else None,
                                     limit=MAX_EVENTS if len(self.profiles) <= 1 else 50 * MAX_EVENTS)
                frame.events = [e for e in batch if not self.profiles or e.profile in self.profiles][-MAX_EVENTS:]
            if frame.st.controller.generation != self.generation:
                from fleet.controller.desired import DesiredSource

                _, specs = DesiredSource(store).current()
                self.homes = tuple(os.path.join(s.hermes_home, GATEWAY_STATE) for s in specs.values()
                                   if s.driver == DRIVER_HERMES and s.hermes_home)
                self.generation = frame.st.controller.generation
        finally:
            store.close()


def _pids(frame: Frame) -> tuple[int, ...]:
    if frame.st is None:
        return ()
    pids = [p.pid for p in frame.st.profiles if p.pid]
    if frame.st.controller.pid:
        pids.append(frame.st.controller.pid)
    return tuple(pids)


def _stable(doc: dict) -> str:
    """A frame's JSON without what moves with the clock and the heartbeats alone (the ages, and the
    time a `keep` is looked at again, which each heartbeat pushes on): a pipe gets a frame per change."""
    def steady(p: dict) -> dict:
        row = {k: v for k, v in p.items() if k not in ("uptime_s", "heartbeat_age_s")}
        if p["action"]["kind"] == "keep":
            row["action"] = {**p["action"], "not_before": None}
        return row
    return json.dumps({**doc, "generated_at": None, "profiles": [steady(p) for p in doc["profiles"]]},
                      sort_keys=True, default=str)


# -- text -----------------------------------------------------------------------------------------

_CONTROL = {c: " " for c in [*range(0x20), 0x7f, *range(0x80, 0xa0)]}


def clean(text: str) -> str:
    """One screen line: control characters (a journal message may carry an escape or a newline)
    become spaces, so no text from a gateway drives the terminal."""
    return text.translate(_CONTROL)


def crop(text: str, width: int) -> str:
    """At most `width` cells (wide characters take two)."""
    if len(text) * 2 <= width:
        return text
    used = 0
    for i, ch in enumerate(text):
        used += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
        if used > width:
            return text[:i]
    return text


def _event_lines(events: list[JournalEntry]) -> list[str]:
    rows = [(time.strftime("%H:%M:%S", time.localtime(e.at)), e.profile or "-", e.kind, e.message) for e in events]
    return [clean(line) for line in columns([("TIME", "PROFILE", "EVENT", "MESSAGE"), *rows])]


# -- views ----------------------------------------------------------------------------------------

RED, YELLOW, DIM, BOLD = "\x1b[31m", "\x1b[33m", "\x1b[2m", "\x1b[1m"
PHASE_STYLE = {"Failed": RED, "Backoff": RED, "Missing": RED, "Starting": YELLOW, "Draining": YELLOW,
               "Removing": YELLOW, "Waiting": YELLOW, "Suspended": DIM, "Stopped": DIM}


class Screen:
    """The terminal view: the alternate screen, the cursor hidden, each frame drawn over the last in
    one write inside a synchronized update (ESC[?2026h ... ESC[?2026l; ignored where unknown), every
    line followed by erase-to-end-of-line and the frame by erase-below, so nothing is cleared first and
    nothing flickers. Lines are cut to the width (auto-wrap is off) and the frame to the height."""

    ENTER = "\x1b[?1049h\x1b[?25l\x1b[?7l"
    LEAVE = "\x1b[?2026l\x1b[0m\x1b[?7h\x1b[?25h\x1b[?1049l"

    def __init__(self, out, title: str, interval: float) -> None:
        self.out = out
        self.title = title
        self.interval = interval
        self.color = not os.environ.get("NO_COLOR")
        self.size = self._size()
        self.last: Frame | None = None

    def __enter__(self) -> Screen:
        self._write(self.ENTER)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._write(self.LEAVE)
        except OSError:  # the terminal is gone (hang-up)
            pass

    def _size(self) -> os.terminal_size:
        try:
            return os.get_terminal_size(self.out.fileno())
        except (OSError, ValueError):
            return os.terminal_size((80, 24))

    def resized(self) -> bool:
        size = self._size()
        changed, self.size = size != self.size, size
        return changed

    def show(self, frame: Frame) -> None:
        self.last = frame
        self.redraw()

    def redraw(self) -> None:
        if self.last is None:
            return
        cols, rows = self.size.columns, self.size.lines
        lines = self._lines(self.last, rows)
        if len(lines) > rows:
            lines = lines[:max(0, rows - 1)] + [(f"... {len(lines) - rows + 1} more line(s) below", DIM)]
        body = []
        for i, (text, style) in enumerate(lines):
            text = crop(clean(text), max(1, cols - 1))  # never the last column: no pending wrap to erase
            if style and self.color:
                text = f"{style}{text}\x1b[0m"
            body.append(text + "\x1b[K" + ("\r\n" if i < len(lines) - 1 else ""))
        self._write("\x1b[?2026h\x1b[H" + "".join(body) + "\x1b[J\x1b[?2026l")

    def _lines(self, frame: Frame, height: int) -> list[tuple[str, str | None]]:
        clock = time.strftime("%H:%M:%S", time.localtime(frame.at))
        head = f"{self.title}   every {format_duration(self.interval)}   q quits, r redraws"
        pad = max(1, self.size.columns - 1 - len(head) - len(clock))
        lines: list[tuple[str, str | None]] = [(head + " " * pad + clock, BOLD), ("", None)]
        if frame.st is None:
            return lines + [(f"error: {frame.error}", RED)]
        lines += [(line, None) for line in fleet_lines(frame.st, frame.at)] + [("", None)]
        table = profile_table(frame.st, frame.rows, frame.at)
        for i, line in enumerate(columns(table, right=TABLE_RIGHT)):
            lines.append((line, BOLD if i == 0 else PHASE_STYLE.get(table[i][PHASE_COLUMN])))
        room = height - len(lines) - 3  # a blank line, the header, and at least one event
        events = _event_lines(frame.events)
        if room >= 0 and frame.events:
            shown = [events[0], *events[1:][-(room + 1):]]
            lines += [("", None), (shown[0], BOLD)] + [(line, None) for line in shown[1:]]
        return lines

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class Lines:
    """A pipe or a file: a frame each time something other than an age changed, as plain lines (a
    `--- <time>` line, then what `status` prints), or as one JSON object per line with -o json."""

    def __init__(self, out, json_lines: bool, state: StateDir) -> None:
        self.out = out
        self.json_lines = json_lines
        self.state = state
        self.key: str | None = None

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def resized(self) -> bool:
        return False

    def redraw(self) -> None:
        pass

    def show(self, frame: Frame) -> None:
        if frame.st is None:
            key, doc = f"error: {frame.error}", {"kind": "error", "generated_at": utc(frame.at),
                                                 "message": frame.error}
        else:
            doc = status_json(self.state, frame.st, frame.rows, frame.at, False)
            key = _stable(doc)
        if key == self.key:
            return
        self.key = key
        if self.json_lines:
            text = json.dumps(doc, default=str) + "\n"
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(frame.at))
            body = ([f"error: {frame.error}"] if frame.st is None
                    else fleet_lines(frame.st, frame.at) + table_lines(frame.st, frame.rows, frame.at))
            text = "".join(clean(line) + "\n" for line in [f"--- {stamp}", *body])
        self.out.write(text)
        self.out.flush()




# -- keys and signals -----------------------------------------------------------------------------

# -- the loop -----------------------------------------------------------------------------------

def watch_status(state: StateDir, profiles: list[str], interval: float, output: str,
                 first: tuple[FleetStatus, float] | None = None) -> int:
    """Show the fleet until Ctrl-C, q or a stop request from the OS; the exit code (0)."""
    out = sys.stdout
    tty = output != "json" and out.isatty() and os.environ.get("TERM") != "dumb" and vt_console()
    reader = Reader(state, profiles, current_platform(), with_events=tty)
    view: Screen | Lines = (Screen(out, "hermes-fleet status --watch", interval) if tty
                            else Lines(out, output == "json", state))
    keys = Keys(sys.stdin if tty else None)
    try:
        with stop_on_terminate(), view:
            _loop(reader, view, keys, ChangeSensor(state.root), interval, first)
    except (KeyboardInterrupt, TerminateRequested):
        pass
    except BrokenPipeError:  # `| head` closed the pipe: done, quietly (and no error at exit's flush)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    finally:
        keys.close()
    return EXIT_OK


def _loop(reader: Reader, view: Screen | Lines, keys: Keys, sensor: ChangeSensor, interval: float,
          first: tuple[FleetStatus, float] | None) -> None:
    """Show a frame; then look every POLL_S and compute the next one when the sensor saw a change, r
    was pressed or `interval` passed. Computing a frame of a big fleet costs (the identity checks read
    the OS for each gateway, ~2.5 ms a profile), so the watch computes at most DUTY of its time: with
    hundreds of heartbeats a minute, or an interval shorter than a computation, frames come less
    often instead of in a busy loop."""
    sensor.look()
    started = time.monotonic()
    frame = reader.frame(first)
    while True:
        view.show(frame)
        sensor.follow(reader.homes, _pids(frame))
        ended = time.monotonic()
        due = started + interval
        rest = (ended - started) * (1 - DUTY) / DUTY  # the pause that keeps the share of time at DUTY
        pending = False
        while True:
            key = keys.wait(min(POLL_S, interval))
            if key == "quit":
                return
            pending = sensor.look() or pending or key == "redraw"
            now = time.monotonic()
            if now >= ended + rest and (pending or now >= due):
                break
            if view.resized():
                view.redraw()
        started = time.monotonic()
        frame = reader.frame()
