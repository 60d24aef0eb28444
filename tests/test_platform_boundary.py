"""Every OS difference lives behind the platform: no module outside `fleet/platform` and `fleet/service`
mentions `sys.platform`, `os.name`, a signal other than through the platform, `/proc`, `AF_UNIX`,
`systemctl`, `launchctl` or `schtasks` (docs/architecture.md, `## Layers`).

"Mentions" is meant literally: code, comments, docstrings and strings alike. A comment that says `/proc`
is where the next `/proc` read goes, and a generated unit that names `systemctl` ties its module to one OS
as much as a call does. The words live in `fleet/platform` (or `fleet/service`, the service managers) and
everything else imports them from there."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLEET = REPO / "fleet"
# Where the words below belong. Everything under these may say them.
HOMES = ("fleet/platform/", "fleet/service/")

# The POSIX (and Windows) signal names; SIG alone would also match SIGNATURE, SIGNAL and the like.
_SIGNAL_NAMES = (
    "HUP INT QUIT ILL TRAP ABRT BUS FPE KILL USR1 SEGV USR2 PIPE ALRM TERM STKFLT CHLD CONT STOP TSTP TTIN TTOU "
    "URG XCPU XFSZ VTALRM PROF WINCH IO POLL PWR SYS BREAK RTMIN RTMAX"
).split()

# token (as the failure names it) -> pattern. Word boundaries keep `os.name` out of `hostname`, `/proc` out
# of `/process`, `systemctl` out of `systemctl_like_name`.
FORBIDDEN: dict[str, re.Pattern[str]] = {
    "sys.platform": re.compile(r"\bsys\.platform\b"),
    "os.name": re.compile(r"(?<![\w.])os\.name\b"),
    "signal.SIG*": re.compile(r"\bsignal\.SIG\w*"),
    "signal.signal": re.compile(r"\bsignal\.signal\b"),
    "import signal": re.compile(r"^\s*(?:import\s+signal\b|from\s+signal\s+import\b)"),
    "SIG<name>": re.compile(r"\bSIG(?:" + "|".join(_SIGNAL_NAMES) + r")\b"),
    "CTRL_*_EVENT": re.compile(r"\bCTRL_(?:C|BREAK)_EVENT\b"),
    "os.kill": re.compile(r"(?<![\w.])os\.kill\b"),
    "os.killpg": re.compile(r"(?<![\w.])os\.killpg\b"),
    "/proc": re.compile(r"/proc\b"),
    "AF_UNIX": re.compile(r"\bAF_UNIX\b"),
    "systemctl": re.compile(r"\bsystemctl\b"),
    "launchctl": re.compile(r"\blaunchctl\b"),
    "schtasks": re.compile(r"\bschtasks\b", re.IGNORECASE),
}

WHERE_IT_BELONGS = (
    "These are OS specifics: they belong in fleet/platform (behind `Platform`, or a module of its own there) or, "
    "for a service manager, in fleet/service; import the behaviour or the text from there. A signal goes through "
    "the platform (`request_stop`, `kill_process`, `kill_tree`); a comment or message can say what happens "
    "(`asked to stop`, `killed`) instead of how one OS does it."
)

# Files another change is moving behind the platform right now; each entry names exactly the tokens it may
# still mention, so nothing new slips in meanwhile. Delete an entry (and then the constant) once that file
# is clean: the test says when.
def offences(text: str) -> list[tuple[int, str, str]]:
    """(line, token, the line) of every mention in `text`."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for token, pattern in FORBIDDEN.items():
            if pattern.search(line):
                found.append((number, token, line.strip()))
    return found


def checked_files() -> list[Path]:
    return [p for p in sorted(FLEET.rglob("*.py")) if not p.relative_to(REPO).as_posix().startswith(HOMES)]


def test_no_module_outside_the_platform_mentions_an_os_specific():
    wrong = []
    for path in checked_files():
        relative = path.relative_to(REPO).as_posix()
        for line, token, text in offences(path.read_text(encoding="utf-8")):
            wrong.append(f"{relative}:{line}: {token}: {text}")
    assert not wrong, "\n".join(wrong) + "\n\n" + WHERE_IT_BELONGS


def test_the_patterns_catch_mentions_and_only_mentions():
    caught = {token for _, token, _ in offences("\n".join([
        "if sys.platform == 'linux':", "x = os.name", "signal.signal(signal.SIGTERM, f)", "import signal",
        "# SIGKILL after the grace", "os.kill(pid, 9)", "os.killpg(pgid, 9)", 'open("/proc/locks")',
        "socket.AF_UNIX", "`systemctl --user restart`", "launchctl bootout", "SCHTASKS.exe /Run",
        "os.kill(pid, signal.CTRL_BREAK_EVENT)",
    ]))}
    assert caught == set(FORBIDDEN)
    innocent = "\n".join([
        "socket.gethostname()", "host = os.hostname", "platform.os.name_of", "a SIGNATURE header", "SIG_DFL",
        "'/process/x'", "the signal. Then", "signals", "systemctl_like", "os.kill_tree", "my_os.name",
        "from fleet.platform import signals",
    ])
    assert offences(innocent) == []
