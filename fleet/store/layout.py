"""The state directory: where each file lives, and the safety rules for opening it."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet.spec.markers import STATE_DIR_ENV


class StateDirError(Exception):
    """The state directory is unsafe or unusable; the message says what to do."""


def _named(*parts: str) -> property:
    """A file or folder of the state directory."""
    return property(lambda self: self.root.joinpath(*parts))


def _per_profile(suffix: str, folder: str = "") -> Callable[[StateDir, str], Path]:
    """A profile's own file: `<profile><suffix>`, in the root or one of its folders. Remembered: every pass asks
    for every profile's files, and building a Path costs more than reading the small file it names."""
    made: dict[tuple[Path, str], Path] = {}

    def path(self: StateDir, profile: str) -> Path:
        key = (self.root, profile)
        found = made.get(key)
        if found is None:
            if len(made) > 65536:
                made.clear()
            name = f"{profile}{suffix}"
            found = made[key] = self.root.joinpath(folder, name) if folder else self.root / name
        return found
    return path


@dataclass(frozen=True)
class StateDir:
    """Where each file lives (docs/architecture.md, "State directory")."""
    root: Path

    lock = _named(".supervisor.lock")
    holder = _named(".supervisor.json")
    wake_socket = _named(".controller.sock")
    wake_port = _named(".controller.wake")  # where no Unix socket can be: a loopback port and its token
    db = _named("fleet.db")
    metrics_status = _named(".metrics.json")  # where the controller's metrics endpoint listens, or why not
    logs = _named("logs")
    controller_log = _named("logs", "controller.log")
    record = _per_profile(".pid")
    stop_marker = _per_profile(".stop")
    state_file = _per_profile(".state.json")
    adopt_log = _per_profile(".adopt.log")
    log = _per_profile(".log", "logs")
    sources = _named("sources")  # what the controller keeps of a followed git source (fleet/controller/source_follow.py)
    source_mirror = _per_profile(".git", "sources")  # <name>.git: a bare, non-shallow mirror of the source
    source_fetch_log = _per_profile(".fetch.log", "sources")  # the output of the source's last fetch


def resolve_state_dir(explicit: str | None, manifest_default: str | None) -> StateDir:
    """--state-dir, then HERMES_FLEET_STATE_DIR, then the manifest's <hermes home>/gateway."""
    chosen = explicit or os.environ.get(STATE_DIR_ENV) or manifest_default
    if not chosen:
        chosen = os.path.join(os.path.expanduser("~/.hermes"), "gateway")
    return StateDir(Path(os.path.abspath(os.path.expanduser(chosen))))


def check_state_dir(state: StateDir) -> None:
    """Refuse a state directory owned by someone else, writable by others, or a symlink."""
    try:
        st = os.lstat(state.root)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise StateDirError(f"state directory {state.root} is a symlink; refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state directory {state.root} exists but is not a directory")
    if hasattr(os, "getuid"):
        if st.st_uid != os.getuid():
            raise StateDirError(f"state directory {state.root} is owned by uid {st.st_uid}, not by you (uid {os.getuid()})")
        if st.st_mode & 0o022:
            raise StateDirError(f"state directory {state.root} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                                f"run: chmod 700 {state.root}")


def ensure_state_dir(state: StateDir) -> None:
    check_state_dir(state)
    state.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    state.logs.mkdir(mode=0o700, exist_ok=True)
    check_state_dir(state)
    if os.path.islink(state.logs):
        raise StateDirError(f"{state.logs} is a symlink; refusing to write logs through it")
