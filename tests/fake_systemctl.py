#!/usr/bin/env python3
"""A stand-in for `systemctl --user`, for take-over tests that run a real controller (and kill it).

It keeps its units' state in files under $FAKE_SYSTEMD_DIR, reads the units (and their drop-ins) from
$XDG_CONFIG_HOME/systemd/user, and runs a unit's ExecStart detached, in its own session, with the unit's
Environment=. It honours what a take-over relies on: `ConditionPathExists=` of drop-ins at start (ConditionResult=no,
nothing runs), `stop` as its KillSignal= (SIGTERM by default) to the main PID, `show -p`, `is-enabled`, `enable`, `daemon-reload`,
`reset-failed`. It has no Restart= (the real `systemd --user` tests cover that).

Test hooks, files in $FAKE_SYSTEMD_DIR:
  block-<verb>   while it exists, <verb> waits (after touching blocked-<verb>): a controller can be killed there
  fail-<verb>    <verb> fails (exit 1, "injected failure"); the file holds how many times (default 1)
  start-delay    a started unit's process sleeps this many seconds before it execs ExecStart
  calls.log      every call, one JSON line each
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

STATE = Path(os.environ["FAKE_SYSTEMD_DIR"])
UNITS = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"


def start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else int(fields[19])


def load(unit: str) -> dict:
    try:
        return json.loads((STATE / f"{unit}.json").read_text())
    except (OSError, ValueError):
        return {"enabled": True}


def save(unit: str, data: dict) -> None:
    tmp = STATE / f".{unit}.json.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, STATE / f"{unit}.json")


def settings(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    files = [UNITS / unit] + sorted((UNITS / f"{unit}.d").glob("*.conf"))
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith(("#", ";", "[")):
                out.setdefault(key, []).append(value)
    return out


def environment(unit: str) -> dict[str, str]:
    env = {}
    for value in settings(unit).get("Environment", []):
        for word in shlex.split(value):
            k, _, v = word.partition("=")
            env[k] = v
    return env


def running(data: dict) -> bool:
    pid = data.get("pid")
    return bool(pid) and start_ticks(pid) is not None and start_ticks(pid) == data.get("start")


def result_of(unit: str, data: dict) -> str:
    """How a unit that ran ended: success when its gateway says it stopped as planned (Hermes exits 0 then)."""
    if data.get("result"):
        return data["result"]
    if not data.get("pid"):
        return "success"
    home = environment(unit).get("HERMES_HOME", "")
    try:
        state = json.loads(Path(home, "gateway_state.json").read_text())
    except (OSError, ValueError):
        state = {}
    ended = "success" if state.get("pid") == data["pid"] and state.get("gateway_state") == "stopped" else "exit-code"
    data["result"] = ended
    save(unit, data)
    return ended


def show(unit: str, props: list[str]) -> str:
    data = load(unit)
    alive = running(data)
    argv = settings(unit).get("ExecStart", [""])[-1]
    values = {
        "Id": unit, "LoadState": "loaded" if (UNITS / unit).exists() else "not-found",
        "ActiveState": "active" if alive else ("inactive" if result_of(unit, data) == "success" else "failed"),
        "SubState": "running" if alive else "dead", "MainPID": str(data["pid"] if alive else 0),
        "InvocationID": data.get("invocation", "") if alive else "", "Result": "success" if alive else result_of(unit, data),
        "FragmentPath": str(UNITS / unit), "ConditionResult": data.get("condition", "yes"),
        "DropInPaths": " ".join(str(p) for p in sorted((UNITS / f"{unit}.d").glob("*.conf"))),
        "Environment": " ".join(f"{k}={v}" for k, v in environment(unit).items()),
        "ExecStart": f"{{ path={shlex.split(argv)[0] if argv else ''} ; argv[]={argv} ; ignore_errors=no ; }}",
        "UnitFileState": "enabled" if data.get("enabled", True) else "disabled",
    }
    return "".join(f"{p}={values.get(p, '')}\n" for p in props)


def start(unit: str) -> int:
    data = load(unit)
    if running(data):
        return 0
    for value in settings(unit).get("ConditionPathExists", []):
        negate, path = value.startswith("!"), value.lstrip("!")
        if os.path.exists(path) == negate:
            data.update(condition="no", pid=None, result="success")
            save(unit, data)
            return 0
    argv = shlex.split(settings(unit)["ExecStart"][-1])
    delay = STATE / "start-delay"
    if delay.exists():
        argv = ["sh", "-c", f"sleep {delay.read_text().strip()}; exec \"$0\" \"$@\"", *argv]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
           "LANG": "C.UTF-8", "INVOCATION_ID": uuid.uuid4().hex, **environment(unit)}
    with open(STATE / f"{unit}.log", "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=env.get("HERMES_HOME") or "/")
    data.update(pid=proc.pid, start=start_ticks(proc.pid), invocation=env["INVOCATION_ID"], condition="yes",
                result=None, starts=data.get("starts", 0) + 1)
    save(unit, data)
    return 0


def stop(unit: str, block: bool) -> int:
    data = load(unit)
    if running(data):
        kill_signal = (settings(unit).get("KillSignal") or ["SIGTERM"])[-1]
        os.kill(data["pid"], getattr(signal, kill_signal))
        deadline = time.monotonic() + 15
        while block and running(data) and time.monotonic() < deadline:
            time.sleep(0.02)
    return 0


def hooks(verb: str) -> int | None:
    block = STATE / f"block-{verb}"
    if block.exists():
        (STATE / f"blocked-{verb}").touch()
        while block.exists():
            time.sleep(0.02)
    fail = STATE / f"fail-{verb}"
    if fail.exists():
        left = int(fail.read_text().strip() or "1") - 1
        fail.write_text(str(left)) if left > 0 else fail.unlink()
        print(f"Failed to {verb}: injected failure", file=sys.stderr)
        return 1
    return None


def main(argv: list[str]) -> int:
    args = [a for a in argv if a not in ("--user", "--no-block", "-q", "--quiet")]
    with open(STATE / "calls.log", "a") as fh:
        fh.write(json.dumps({"at": time.time(), "argv": argv, "pid": os.getpid()}) + "\n")
    verb = args[0] if args else ""
    failed = hooks(verb)
    if failed is not None:
        return failed
    unit = args[1] if len(args) > 1 else ""
    if verb == "show":
        props = args[args.index("-p") + 1].split(",") if "-p" in args else ["Id", "ActiveState", "MainPID"]
        sys.stdout.write(show(unit, props))
        return 0
    if verb == "is-enabled":
        enabled = load(unit).get("enabled", True)
        print("enabled" if enabled else "disabled")
        return 0 if enabled else 1
    if verb in ("enable", "disable"):
        data = load(unit)
        data["enabled"] = verb == "enable"
        save(unit, data)
        return 0
    if verb == "start":
        return start(unit)
    if verb == "stop":
        return stop(unit, "--no-block" not in argv)
    if verb in ("daemon-reload", "reset-failed"):
        return 0
    if verb == "status":
        sys.stdout.write(show(unit, ["ActiveState", "MainPID", "Result"]))
        return 0
    print(f"fake systemctl: unsupported {argv}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
