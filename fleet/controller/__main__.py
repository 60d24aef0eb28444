"""`python -m fleet.controller --state-dir DIR`: the lean controller entry point. It imports no
CLI, rendering or schema code, so a resident controller stays small."""

from __future__ import annotations

import gc
import os
import sqlite3
import sys
from typing import TYPE_CHECKING, NoReturn

from fleet.dataclass_code import use_cached_dataclass_code
from fleet.platform import current_platform
from fleet.spec.markers import STATE_DIR_ENV

if TYPE_CHECKING:
    import argparse

    from fleet.store.layout import StateDir

# A pass allocates tens of thousands of objects and leaves few cycles: the default (a young collection every 700)
# collected many times per pass. Measured: no change in the resident size at 100 gateways.
COLLECT_AFTER_ALLOCATIONS = 10_000


def arguments() -> argparse.ArgumentParser:
    import argparse

    # A fixed help width: argparse asks shutil for the terminal's otherwise, and shutil loads the bz2 and lzma
    # compressors into a process that stays resident.
    parser = argparse.ArgumentParser(prog="hermes-fleet-controller", description=__doc__,
                                     formatter_class=lambda prog: argparse.HelpFormatter(prog, width=100))
    parser.add_argument("--state-dir", help=f"state directory (default: ${STATE_DIR_ENV} or ~/.hermes/gateway)")
    # Started by an `apply` while it still plans (fleet/cli/early_controller.py): the imports are done by the time
    # the generation is recorded. Nothing is touched, not even the state directory, until the apply writes a
    # byte to stdin; if it closes stdin without one (it failed, or was refused), the process just ends.
    parser.add_argument("--held", action="store_true", help=argparse.SUPPRESS)
    return parser


def usual_arguments(argv: list[str]) -> tuple[str | None, bool] | None:
    """(state directory, held) of the invocations `apply` and the services write (`--state-dir DIR` or
    `--state-dir=DIR`, `--held`), read without argparse: with gettext and locale it is ~4 ms before a cold start's
    first gateway. None for anything else (help, an abbreviation, a repeat, a typo): argparse answers that."""
    state_dir: str | None = None
    held = False
    words = iter(argv)
    for word in words:
        if word == "--held" and not held:
            held = True
        elif word == "--state-dir" and state_dir is None:
            state_dir = next(words, "-")
            if state_dir.startswith("-"):
                return None
        elif word.startswith("--state-dir=") and state_dir is None:
            state_dir = word.partition("=")[2]
        else:
            return None
    return state_dir, held


def released(state: StateDir) -> bool:
    """Wait for the word of the `apply` that started this controller (--held); then its output goes to the
    controller log, where a controller started the usual way writes from its first line."""
    if not os.read(0, 1):
        return False
    from fleet.store.files import open_append
    from fleet.store.layout import ensure_state_dir

    ensure_state_dir(state)
    log_fd = open_append(state.controller_log)
    for fd in (1, 2):
        os.dup2(log_fd, fd)
    os.close(log_fd)
    return True


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    usual = usual_arguments(given)
    if usual is None:
        args = arguments().parse_args(given)
        usual = (args.state_dir, args.held)
    state_dir, held = usual
    # Imported here, once the compiled dataclass methods are at hand: the loop's modules create ~80 classes.
    # The table is dropped after them, so the resident process does not keep it.
    compiled = use_cached_dataclass_code("controller")
    from fleet.controller.loop import EXIT_CONFIG, EXIT_FATAL, Controller
    from fleet.store.db import StoreError
    from fleet.store.layout import StateDirError, resolve_state_dir

    compiled.release()
    # What the imports made lives as long as the process: kept out of the collector's sight, which otherwise walked
    # all of it again and again as each pass allocates (a fifth of the controller's CPU in a cold start of 100).
    gc.freeze()
    gc.set_threshold(COLLECT_AFTER_ALLOCATIONS, 10, 10)
    state = resolve_state_dir(state_dir, None)
    try:
        if held and not released(state):
            return 0
    except OSError as exc:
        print(f"hermes-fleet controller: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return Controller(state, current_platform()).run()
    except (StateDirError, StoreError, OSError) as exc:
        print(f"hermes-fleet controller: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except sqlite3.Error as exc:  # the gateways keep running; a restarted controller adopts them
        full = " (is the disk full?)" if "full" in str(exc).lower() else ""
        print(f"hermes-fleet controller: the state store failed: {exc}{full}; gateways left running", file=sys.stderr)
        return EXIT_FATAL


def exit_at_once(code: int) -> NoReturn:
    """By the time `main` returns, the store, the lock and every socket are closed and the only threads are
    daemons: the interpreter's teardown of its modules would hold up the exit a `down` or a service stop
    waits for (by about 50 ms), and nothing is left for it to release."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream loses nothing more by not flushing
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_at_once(main())
