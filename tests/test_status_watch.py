"""`status --watch` as a person uses it (in tmux: a live table that follows a killed gateway, Ctrl-C and q
give the screen back), as a script reads it (plain lines or NDJSON on a pipe, a frame per change), and
`events -o json` (NDJSON with stable keys, followed live with -f).

Every process a test starts is ended by that test: the fleet by the `fleet` fixture, readers on pipes by
the `reaper`, the tmux server by `kill-server` and then, if anything of it is left, by its PIDs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from fleet.cli.main import app
from fleet.cli.watch import ChangeSensor, Frame, Lines, Screen, clean, crop
from fleet.controller.status import fleet_status
from fleet.platform import current_platform
from fleet.store.db import Store
from fleet.store.layout import StateDir
from fleet_harness import alive, create_time, fleet  # noqa: F401
from helpers import reaper, wait_until  # noqa: F401
from factories import recorded_state

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process model")
TMUX = shutil.which("tmux")
EVENT_KEYS = ["id", "at", "at_unix", "epoch", "profile", "kind", "message", "data"]
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False, env={"HERMES_FLEET_STATE_DIR": None})


# -- a state directory with a recorded generation and no process ------------------------------------

@pytest.fixture
def recorded(tmp_path) -> StateDir:
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(yaml.safe_dump({"version": 1, "hermes": {"home": str(tmp_path / "hermes"), "command": ["true"]},
                                        "profiles": {"alpha": {}, "beta": {}}}))
    return recorded_state(manifest, tmp_path / "state")


def test_restarts_show_how_long_ago_the_last_exit_was(recorded):
    store = Store(recorded.db)
    try:
        store.update_history("alpha", restarts=3, last_exit_at=time.time() - 130, last_exit_code=1,
                             last_exit_class="crash")
    finally:
        store.close()
    result = run("status", "--state-dir", str(recorded.root))
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.startswith(("alpha", "beta"))}
    assert re.search(r"\s3 \(2m\d\d?s ago\)\s", rows["alpha"]), result.output  # 2m10s, or later on a slow host
    assert re.search(r"\s0\s", rows["beta"]) and "ago" not in rows["beta"], result.output


def test_a_draining_profile_shows_how_long_it_drains_and_when_it_is_killed():
    from fleet.cli.status_cmd import table_lines
    from fleet.controller.status import ControllerStatus, FleetStatus, Health, Phase, ProfileStatus, Sync
    from fleet.observe.model import Observed, ProfileObservation
    from fleet.plan.model import Action, Kind, Plan, Reason
    from fleet.store.db import ProfileHistory

    now = time.time()
    wait = Action(Kind.WAIT, "alpha", Reason.DRAINING, "2 active agent(s)", not_before=now + 1)
    row = ProfileStatus(name="alpha", phase=Phase.DRAINING, sync=Sync.SYNCED, health=Health.PROGRESSING, pid=42,
                        started_at=now - 600, restarts=0, last_exit=None, heartbeat_age=3.0, active_agents=2,
                        gateway_state="draining", spec_hash="v1:a", desired_spec_hash="v1:a", desired="stopped",
                        note="wait (draining): 2 active agent(s)", action=wait)
    history = ProfileHistory("alpha", drain_started=now - 65, drain_deadline=now + 235)
    st = FleetStatus(controller=ControllerStatus(True, 1, 1, "x", now, 1, 1), profiles=(row,), plan=Plan((wait,)),
                     observed=Observed(now, 1, {"alpha": ProfileObservation("alpha", history=history)}))
    lines = table_lines(st, [row], now)
    assert lines[1].endswith("wait (draining): 2 active agent(s) [draining 1m5s, kill in 3m55s]"), lines


@pytest.mark.parametrize("args, message", [
    (["--interval", "0"], "--interval must be more than 0"),
    (["--interval", "0s"], "--interval must be more than 0"),
    (["--interval", "soon"], "--interval: expected a duration"),
    (["--deep"], "--deep cannot be combined with --watch"),
])
def test_watch_refuses_what_it_cannot_do(recorded, args, message):
    result = run("status", "--watch", *args, "--state-dir", str(recorded.root))
    assert result.exit_code == 2 and message in result.output, result.output


# -- the pieces, without processes ----------------------------------------------------------------------

def test_the_sensor_sees_writes_renames_and_deaths_and_nothing_else(tmp_path, reaper):
    root = tmp_path / "state"
    root.mkdir()
    (root / "fleet.db").write_bytes(b"x")
    (root / "logs").mkdir()
    outside = tmp_path / "gateway_state.json"
    outside.write_text("{}")
    sleeper = reaper.spawn([sys.executable, "-c", "import time; time.sleep(600)"])
    sensor = ChangeSensor(root)
    assert sensor.look()  # the first look
    sensor.follow((str(outside),), (sleeper.pid,))
    assert not sensor.look()
    (root / "fleet.db-shm").write_bytes(b"readers write this")  # SQLite's shared memory: not a change
    (root / "logs" / "alpha.log").write_text("a gateway's output\n")  # logs: not a change
    assert not sensor.look()
    (root / "fleet.db-wal").write_bytes(b"commit")
    assert sensor.look() and not sensor.look()
    tmp = root / ".alpha.pid.tmp"
    tmp.write_text('{"pid": 1}')
    os.replace(tmp, root / "alpha.pid")  # a record renamed into place
    assert sensor.look() and not sensor.look()
    outside.write_text('{"gateway_state": "running"}')
    assert sensor.look() and not sensor.look()
    sleeper.kill()
    sleeper.wait(timeout=10)
    assert sensor.look() and not sensor.look()


def test_a_pipe_gets_a_frame_per_change_not_per_tick(recorded):
    st = fleet_status(recorded, current_platform(), time.time())
    for json_lines in (False, True):
        out = _Capture()
        view = Lines(out, json_lines, recorded)
        now = time.time()
        view.show(Frame(now, st, list(st.profiles)))
        view.show(Frame(now + 5, st, list(st.profiles)))  # only the clock moved
        view.show(Frame(now + 6, st, list(st.profiles[:1])))  # a row less: a change
        view.show(Frame(now + 7, error="disk gone"))
        text = out.getvalue()
        assert "\x1b" not in text
        if json_lines:
            docs = [json.loads(line) for line in text.splitlines()]
            assert [d["kind"] for d in docs] == ["status", "status", "error"], text
            assert [len(d["profiles"]) for d in docs[:2]] == [2, 1]
        else:
            assert text.count("\n--- ") + text.startswith("--- ") == 3, text
            assert "error: disk gone" in text


def test_the_screen_is_one_synchronized_write_per_frame_that_no_message_can_steer(recorded):
    store = Store(recorded.db)
    try:
        store.journal("note", "evil \x1b[2J\x1b]0;title\x07 text\nsecond line", profile="alpha")
    finally:
        store.close()
    from fleet.cli.watch import Reader
    frame = Reader(recorded, [], current_platform(), with_events=True).frame()
    out = _Capture()
    screen = Screen(out, "hermes-fleet status --watch", 2.0)
    screen.size = os.terminal_size((60, 12))
    with screen:
        screen.show(frame)
    text = out.getvalue()
    assert text.startswith(Screen.ENTER) and text.endswith(Screen.LEAVE)
    body = text[len(Screen.ENTER):-len(Screen.LEAVE)]
    assert body.startswith("\x1b[?2026h\x1b[H") and body.endswith("\x1b[J\x1b[?2026l")
    assert "\x1b[2J" not in body and "\x1b]" not in body and "\x07" not in body and "\n" not in body.replace("\r\n", "")
    lines = body.split("\r\n")
    assert len(lines) <= 12
    visible = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line) for line in lines]
    assert all(len(line) <= 59 for line in visible), visible
    assert any(line.startswith("PROFILE") for line in visible), visible
    assert any("evil" in line for line in visible), visible


def test_crop_and_clean():
    assert crop("abcdef", 4) == "abcd" and crop("ab", 4) == "ab"
    assert crop("日本語", 4) == "日本"  # two cells each
    assert clean("a\x1b[31mb\nc\td") == "a [31mb c d"


class _Capture:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        raise ValueError("not a real stream")

    def getvalue(self) -> str:
        return "".join(self.parts)


# -- events -o json ----------------------------------------------------------------------------------

def test_events_json_is_ndjson_with_stable_keys_and_masked_secrets(recorded):
    store = Store(recorded.db)
    try:
        store.journal("note", "fleet-wide")
        store.journal("spawn_failed", "could not start (API_TOKEN=hunter2hunter2 rejected)", profile="alpha",
                      data={"error": "Authorization: Bearer abcDEF123456789", "pid": 7})
    finally:
        store.close()
    result = run("events", "-o", "json", "--state-dir", str(recorded.root))
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.output.splitlines()]
    assert [list(d) for d in docs] == [EVENT_KEYS, EVENT_KEYS]
    assert [d["kind"] for d in docs] == ["note", "spawn_failed"] and docs[0]["id"] < docs[1]["id"]
    assert docs[0]["profile"] is None and docs[0]["data"] is None and docs[1]["data"]["pid"] == 7
    for d in docs:
        assert ISO_UTC.match(d["at"]), d
        parsed = datetime.fromisoformat(d["at"].replace("Z", "+00:00")).timestamp()
        assert isinstance(d["at_unix"], float) and 0 <= d["at_unix"] - parsed < 1, d
    assert "hunter2" not in result.output and "abcDEF123456789" not in result.output
    only = run("events", "-o", "json", "-n", "1", "--profile", "alpha", "--state-dir", str(recorded.root))
    assert [json.loads(line)["kind"] for line in only.output.splitlines()] == ["spawn_failed"]
    assert run("events", "-o", "json", "-n", "0", "--state-dir", str(recorded.root)).output == ""


def test_events_json_masks_an_assignment_after_a_colon(recorded):
    store = Store(recorded.db)
    try:
        store.journal("spawn_failed", "could not start: DB_PASSWD=foo2bar", profile="alpha")
    finally:
        store.close()
    result = run("events", "-o", "json", "--state-dir", str(recorded.root))
    assert "foo2bar" not in result.output, result.output


# -- readers on pipes, with a real fleet -----------------------------------------------------------------

class _Reader:
    """A follower's stdout lines, collected on a thread, so the test waits against deadlines."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def stop(self) -> int:
        """SIGINT, as Ctrl-C; the exit code."""
        os.kill(self.proc.pid, signal.SIGINT)
        code = self.proc.wait(timeout=20)
        self._thread.join(timeout=10)
        return code


def _start(reaper, fleet, *args: str) -> _Reader:
    proc = reaper.spawn([*fleet.cli_entry, *args], cwd=str(fleet.tmp), env=_env(fleet), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
    return _Reader(proc)


def _env(fleet) -> dict[str, str]:
    env = fleet.env()  # carries HERMES_FLEET_STATE_DIR of this test's fleet
    env.update(HOME=str(fleet.tmp / "home"), PYTHONUNBUFFERED="1")
    for key in ("TMUX", "TMUX_PANE", "COLUMNS", "LINES"):
        env.pop(key, None)
    return env


def _frames(lines: list[str]) -> list[list[str]]:
    frames: list[list[str]] = []
    for line in lines:
        if line.startswith("--- "):
            frames.append([])
        elif frames:
            frames[-1].append(line)
    return frames


def _row(frame: list[str], name: str) -> list[str]:
    return next((line.split() for line in frame if line.split()[:1] == [name]), [])


@LINUX
@pytest.mark.timeout(120)
def test_plain_watch_on_a_pipe_follows_a_fleet_without_its_controller(fleet, reaper):
    fleet.write_manifest({"alpha": None, "beta": None})
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in ("alpha", "beta")}
    fleet.kill9(fleet.controller_pid())  # the controller crashed; its gateways run on
    # A long interval: what shows the death below is the sensor, not the clock.
    watch = _start(reaper, fleet, "status", "--watch", "--interval", "60")
    wait_until(lambda: any(_row(f, "beta")[3:4] == [str(pids["beta"])] for f in _frames(watch.lines)), 30,
               what=f"a frame with beta's pid {pids['beta']}; got {watch.lines}")
    first = _frames(watch.lines)[-1]
    assert any("controller: NOT RUNNING" in line for line in first), first
    assert _row(first, "PROFILE")[:4] == ["PROFILE", "PHASE", "SYNC", "PID"], first
    seen = len(_frames(watch.lines))
    fleet.kill9(pids["beta"])  # no controller: nothing respawns it, no file changes
    wait_until(lambda: any(_row(f, "beta")[3:4] == ["-"] for f in _frames(watch.lines)[seen:]), 10,
               what=f"a frame without beta's pid; got {watch.lines[-8:]}")
    last = _frames(watch.lines)[-1]
    assert _row(last, "alpha")[3] == str(pids["alpha"]), last
    assert watch.stop() == 0, watch.proc.stderr.read()
    assert not any("\x1b" in line for line in watch.lines)
    assert watch.proc.stderr.read() == b""


@LINUX
@pytest.mark.timeout(120)
def test_json_watch_and_events_follow_stream_a_respawn(fleet, reaper):
    fleet.write_manifest({"alpha": None, "beta": None})
    fleet.apply()
    old = {n: fleet.wait_running(n) for n in ("alpha", "beta")}
    before = fleet.journal()[-1].id
    watch = _start(reaper, fleet, "status", "--watch", "-o", "json", "--interval", "60")
    events = _start(reaper, fleet, "events", "-f", "-o", "json", "-n", "1")

    def pids_in(line: str) -> dict:
        return {p["name"]: p["pid"] for p in json.loads(line)["profiles"]}
    wait_until(lambda: watch.lines and pids_in(watch.lines[-1]) == old, 30, what=f"a frame; got {watch.lines}")
    wait_until(lambda: events.lines, 30, what="the latest event, printed first")  # -f follows from here on
    fleet.kill9(old["beta"])
    new = fleet.wait_pid("beta", other_than=old["beta"])

    def respawn_shown():
        return any(pids_in(line).get("beta") == new for line in watch.lines)
    wait_until(respawn_shown, 10, what=f"a frame with beta's new pid {new}; got {watch.lines[-3:]}")

    def streamed(kind: str, pid: int):
        return [d for d in map(json.loads, list(events.lines)) if d["kind"] == kind and (d["data"] or {}).get("pid") == pid]
    wait_until(lambda: streamed("exited", old["beta"]) and streamed("spawned", new), 10,
               what=f"the exit and the respawn as events; got {events.lines}")
    assert watch.stop() == 0 and events.stop() == 0
    frames = [json.loads(line) for line in watch.lines]  # every line is one whole object
    assert all(f["kind"] == "status" and f["format_version"] == "1.0" for f in frames)
    betas = [next(p for p in f["profiles"] if p["name"] == "beta") for f in frames]
    assert any(b["pid"] == new and b["restarts"] == 1 for b in betas), betas
    docs = [json.loads(line) for line in events.lines]
    assert all(list(d) == EVENT_KEYS for d in docs), docs
    ids = [d["id"] for d in docs]
    assert ids[0] >= before and ids == sorted(set(ids)), ids  # -n 1: the latest, then each new one once


# -- in tmux, as a person -------------------------------------------------------------------------------

class Tmux:
    """A private tmux server (its own socket directory) with one 160x40 session; every process of it is
    known by PID, so `close()` ends exactly those."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="hfw-")  # short: a socket path must fit in ~100 bytes
        self.name = f"watch-{uuid.uuid4().hex[:8]}"
        self.env: dict[str, str] = {}
        self.procs: list[tuple[int, float | None]] = []

    def __call__(self, *args: str) -> str:
        result = subprocess.run([TMUX, "-L", self.name, *args], env=self.env, capture_output=True, text=True,
                                timeout=20)
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    def start(self, command: str, env: dict[str, str], cwd: Path) -> None:
        self.env = {**env, "TMUX_TMPDIR": self.dir}
        self("new-session", "-d", "-s", "w", "-x", "160", "-y", "40", "-c", str(cwd), command)
        self("set-option", "-t", "w", "remain-on-exit", "on")  # the pane stays readable after the command
        for pid in (int(self("display", "-p", "-t", "w", "#{pid}")), int(self("display", "-p", "-t", "w", "#{pane_pid}"))):
            self.procs.append((pid, create_time(pid)))

    def note_children(self) -> None:
        """The watch under the pane's shell, so that it too is ended by PID."""
        pane = self.procs[-1][0]
        try:
            kids = psutil.Process(pane).children(recursive=True)
        except psutil.Error:
            return
        self.procs += [(p.pid, create_time(p.pid)) for p in kids if p.pid not in {q for q, _ in self.procs}]

    def screen(self, history: bool = False) -> str:
        """What the pane shows; with history, also the primary screen's lines that scrolled away (the
        alternate screen keeps none)."""
        return self("capture-pane", "-p", "-J", "-t", "w", *(["-S", "-"] if history else []))

    def alternate(self) -> bool:
        return self("display", "-p", "-t", "w", "#{alternate_on}").strip() == "1"

    def close(self) -> None:
        if self.env:
            subprocess.run([TMUX, "-L", self.name, "kill-server"], env=self.env, capture_output=True, timeout=20)
        for pid, ct in self.procs:
            if ct is not None and alive(pid, ct):
                os.kill(pid, signal.SIGKILL)
        for pid, ct in self.procs:
            wait_until(lambda pid=pid, ct=ct: ct is None or not alive(pid, ct), 10, what=f"tmux pid {pid} to end")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def tmux():
    if TMUX is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    t = Tmux()
    try:
        yield t
    finally:
        t.close()


def _watch_command(tmp: Path, *args: str) -> tuple[str, Path]:
    """A shell that prints a marker on the primary screen, runs the watch, and writes its exit code. Ctrl-C
    reaches the whole foreground group: the shell traps it (a no-op handler, which the watch does not
    inherit, unlike an ignored signal) so that it lives on to write the code."""
    done = tmp / "watch.exit"
    argv = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "fleet", "status", "--watch", *args])
    script = f"trap : INT; echo PRIMARY-SCREEN; {argv}; echo EXIT=$? > {shlex.quote(str(done))}"
    return f"sh -c {shlex.quote(script)}", done


def _screen_row(screen: str, name: str) -> str:
    return next((line for line in screen.splitlines() if line.split()[:1] == [name]), "")


@LINUX
@pytest.mark.timeout(120)
def test_live_table_in_tmux_follows_a_killed_gateway_and_ctrl_c_gives_the_screen_back(fleet, tmux):
    fleet.write_manifest({"alpha": None, "beta": None})
    fleet.apply()
    old = {n: fleet.wait_running(n) for n in ("alpha", "beta")}
    command, done = _watch_command(fleet.tmp, "--interval", "0.5")
    tmux.start(command, _env(fleet), fleet.tmp)

    def table_shows_both():
        screen = tmux.screen()
        return all(str(old[n]) in _screen_row(screen, n) for n in old) and screen
    screen = wait_until(table_shows_both, 30, what="the table with both gateways")
    tmux.note_children()
    assert tmux.alternate() and "PRIMARY-SCREEN" not in screen, screen
    assert "hermes-fleet status --watch" in screen and "controller: running" in screen, screen
    assert re.search(r"^PROFILE\s+PHASE\s+SYNC\s+PID\s+UP\s+RESTARTS", screen, re.M), screen
    assert re.search(r"^TIME\s+PROFILE\s+EVENT\s+MESSAGE", screen, re.M), screen  # the events under the table

    fleet.kill9(old["beta"])
    killed = time.monotonic()

    def respawn_shown():
        row = _screen_row(tmux.screen(), "beta")
        new = fleet.pid("beta")
        return new not in (None, old["beta"]) and re.search(rf"\s{new}\s.*\s1 \(\S+ ago\)\s", row) and row
    row = wait_until(respawn_shown, 10, what="beta's new pid and 1 restart on screen")
    took = time.monotonic() - killed
    print(f"the respawn was on screen {took:.2f}s after the kill")
    assert took <= 2.0, f"the screen showed the respawn {took:.2f}s after the kill: {row}"
    assert str(old["alpha"]) in _screen_row(tmux.screen(), "alpha")

    tmux("send-keys", "-t", "w", "C-c")
    wait_until(lambda: done.exists() and done.read_text().strip(), 10, what="the watch to exit")
    assert done.read_text().strip() == "EXIT=0"
    wait_until(lambda: not tmux.alternate(), 10, what="the primary screen")
    screen = tmux.screen(history=True)
    assert "PRIMARY-SCREEN" in screen and "PROFILE" not in screen and "Traceback" not in screen, screen


@LINUX
@pytest.mark.timeout(60)
def test_live_table_in_tmux_without_a_controller_quits_on_q(recorded, tmux, tmp_path):
    command, done = _watch_command(tmp_path, "--interval", "0.5")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERMES_FLEET_", "TMUX"))}
    env.update(HOME=str(tmp_path / "home"), HERMES_FLEET_STATE_DIR=str(recorded.root))
    tmux.start(command, env, tmp_path)
    screen = wait_until(lambda: (s := tmux.screen()) and _screen_row(s, "beta") and s, 30, what="the table")
    tmux.note_children()
    assert "controller: NOT RUNNING" in screen and tmux.alternate(), screen
    tmux("send-keys", "-t", "w", "q")
    wait_until(lambda: done.exists() and done.read_text().strip(), 10, what="the watch to exit")
    assert done.read_text().strip() == "EXIT=0"
    wait_until(lambda: not tmux.alternate(), 10, what="the primary screen")
    screen = tmux.screen(history=True)
    assert "PRIMARY-SCREEN" in screen and "PROFILE" not in screen, screen
