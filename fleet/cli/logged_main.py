"""Run the hermes-fleet CLI with stdout/stderr in a log file (Windows hidden launch).

The Scheduled Task and the Startup-folder launcher run pythonw.exe, which has no console
streams at all (sys.stdout is None), so the controller's output would vanish. This entry
point redirects both streams into the controller log, in the same process (Task Scheduler
then tracks the controller itself, not a wrapper), and calls the CLI:

    pythonw -m fleet.cli.logged_main --log-file LOG --service task -- controller run ...
"""

from __future__ import annotations

import os
import sys

from fleet.spec.markers import SERVICE_ENV

ROTATE_BYTES = 10 * 1024 * 1024


def split_args(argv: list[str]) -> tuple[str, str, list[str]]:
    """(log file, service label, CLI arguments); raises ValueError on a malformed line."""
    log_file, service, rest = "", "", list(argv)
    while rest and rest[0] != "--":
        if rest[0] == "--log-file" and len(rest) >= 2:
            log_file, rest = rest[1], rest[2:]
        elif rest[0] == "--service" and len(rest) >= 2:
            service, rest = rest[1], rest[2:]
        else:
            raise ValueError(f"unexpected argument {rest[0]!r}")
    if not log_file or not rest:
        raise ValueError("usage: --log-file LOG [--service NAME] -- CLI ARGS...")
    return log_file, service, rest[1:]


def rotate(path: str, limit: int = ROTATE_BYTES) -> None:
    """Keep one previous log: LOG -> LOG.1 once LOG is over `limit` bytes."""
    try:
        if os.path.getsize(path) > limit:
            os.replace(path, path + ".1")
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    try:
        log_file, service, cli_args = split_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"fleet.cli.logged_main: {exc}", file=sys.stderr or sys.__stderr__)
        raise SystemExit(2) from None
    os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
    rotate(log_file)
    stream = open(log_file, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 - lives as long as the process
    sys.stdout = sys.stderr = stream
    if service:
        os.environ[SERVICE_ENV] = service
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    from fleet.cli.main import app

    app(args=cli_args, prog_name="hermes-fleet")


if __name__ == "__main__":
    main()
