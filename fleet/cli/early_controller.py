"""`apply` starts the controller while it plans, when none runs.

A controller takes about 0.1 s to import its modules, and `apply` about as long to import its own, read the
manifest, plan and record the generation: started the usual way, after the record, the controller's start
came on top (most of a cold start of ten gateways). So the console script starts it first, `--held`: it
imports, then waits on its stdin, touching nothing (not even the state directory). Once the generation is
recorded, `ensure_controller` writes it one byte and it goes on as any controller does, lock first. Every
other end of the command (a refusal, an invalid manifest, a crash, a kill) closes the pipe, and the held
controller ends unseen.

The state directory must be known before the manifest is parsed: `--state-dir`, `$HERMES_FLEET_STATE_DIR`,
or a manifest that names no Hermes home of its own (the default then). A guess that turns out wrong costs
nothing but the head start: a held controller is released only for the state directory `apply` resolved.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from fleet.store.layout import StateDir

# apply's options that take a value (tests/test_early_controller.py holds this to apply's declaration).
VALUE_OPTIONS = frozenset({"-f", "--file", "--state-dir", "--timeout", "--check-revision", "-o", "--output"})
# A manifest that may set `hermes:` (its home decides the default state directory): a top-level key, quoted or
# not, a top-level merge that may bring one, or a flow-style document.
_MAY_SET_HOME = re.compile(r"""(?m)^(?:["']?hermes["']?\s*:|<<\s*:|\{)""")


def controller_command(state: StateDir) -> list[str]:
    return [sys.executable, "-m", "fleet.controller", "--state-dir", str(state.root)]


@dataclass
class HeldController:
    """A controller started `--held` for `state_root`, and the write end of its stdin."""
    state_root: Path
    pid: int
    word: int  # the pipe's write end: a byte releases the controller, closing it ends it

    def release(self) -> bool:
        """Let it go on; False when it is gone already (it could not read the word)."""
        try:
            os.write(self.word, b"\n")
        except OSError:
            return False
        finally:
            self.dismiss()
        return True

    def dismiss(self) -> None:
        if self.word >= 0:
            os.close(self.word)
            self.word = -1


_held: HeldController | None = None


def start_for(args: list[str]) -> None:
    """Start a held controller for `apply ARGS` when its state directory is known and no controller holds it."""
    global _held
    root = state_root_of(args)
    if root is None:
        return
    from fleet.platform import current_platform
    from fleet.store.lock import lock_is_free

    state = StateDir(root)
    if not lock_is_free(state):
        return  # a controller runs: apply wakes it
    read_end, write_end = os.pipe()
    quiet = os.open(os.devnull, os.O_WRONLY)
    try:
        pid = current_platform().spawn_daemon([*controller_command(state), "--held"], quiet, stdin_fd=read_end)
    except OSError:
        os.close(write_end)  # apply starts its controller the usual way
        return
    finally:
        os.close(read_end)
        os.close(quiet)
    _held = HeldController(root, pid, write_end)


def take(state_root: Path) -> HeldController | None:
    """The held controller for `state_root`, handed over once; one held for another directory is dismissed."""
    global _held
    held, _held = _held, None
    if held is not None and held.state_root != state_root:
        held.dismiss()
        return None
    return held


def dismiss() -> None:
    """The command is over: a held controller nobody took ends."""
    global _held
    held, _held = _held, None
    if held is not None:
        held.dismiss()


def state_root_of(args: list[str]) -> Path | None:
    """The state directory `apply ARGS` resolves, when it can be told without parsing the manifest; None when
    not (or for help, or a saved plan, whose file names its own)."""
    from fleet.spec.markers import STATE_DIR_ENV
    from fleet.store.layout import resolve_state_dir

    explicit, manifest = None, "fleet.yaml"
    words = iter(args)
    for word in words:
        name, has_value, value = word.partition("=")
        if word in ("-h", "--help") or not word.startswith("-"):
            return None  # help, or the positional PLAN
        if name in VALUE_OPTIONS:
            if not has_value:
                value = next(words, "")
            if name == "--state-dir":
                explicit = value
            elif name in ("-f", "--file"):
                manifest = value
    if not explicit and not os.environ.get(STATE_DIR_ENV):
        try:
            with open(manifest, encoding="utf-8") as fh:
                text = fh.read(1 << 20)
        except (OSError, UnicodeDecodeError):
            return None
        if _MAY_SET_HOME.search(text):
            return None
    return resolve_state_dir(explicit, None).root
