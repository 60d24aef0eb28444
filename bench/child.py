"""The tiny child every supervisor runs in the bench (stdlib only, silent on stdout).

argv: <name> <started-log>. On start it appends one line
`<name> <pid> <token> <monotonic_ns> <time_ns> start` to the started log in a single
O_APPEND write (so concurrent children never interleave), then sleeps until SIGTERM or
SIGINT (PM2's default stop signal), appends the same line with `stop`, and exits 0.
The token comes from BENCH_TOKEN, so the harness sees which config a child runs.
The monotonic clock is system-wide, so the harness compares these stamps with its own.
"""

import os
import signal
import sys
import time

TOKEN_VARIABLE = "BENCH_TOKEN"


def event_line(name: str, token: str, event: str) -> bytes:
    return f"{name} {os.getpid()} {token} {time.monotonic_ns()} {time.time_ns()} {event}\n".encode()


def append(path: str, line: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    name, log_path = argv[1], argv[2]
    token = os.environ.get(TOKEN_VARIABLE, "-")

    # Blocked, then taken with sigwait: a handler plus pause() can miss a signal that lands between the
    # interpreter's check for pending signals and the pause, and then wait forever.
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    append(log_path, event_line(name, token, "start"))
    signal.sigwait(stops)
    append(log_path, event_line(name, token, "stop"))
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv))
