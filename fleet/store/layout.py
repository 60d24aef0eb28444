"""The state directory: where each file lives, and the safety rules for opening it."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from fleet.spec.markers import STATE_DIR_ENV


class StateDirError(Exception):
    """The state directory is unsafe or unusable; the message says what to do."""


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def lock(self) -> Path:
        return self.root / ".supervisor.lock"

    @property
    def holder(self) -> Path:
        return self.root / ".supervisor.json"

    @property
    def wake_socket(self) -> Path:
        return self.root / ".controller.sock"

    @property
    def db(self) -> Path:
        return self.root / "fleet.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def controller_log(self) -> Path:
        return self.logs / "controller.log"

    def record(self, profile: str) -> Path:
        return self.root / f"{profile}.pid"

    def stop_marker(self, profile: str) -> Path:
        return self.root / f"{profile}.stop"

    def state_file(self, profile: str) -> Path:
        return self.root / f"{profile}.state.json"

    def adopt_log(self, profile: str) -> Path:
        return self.root / f"{profile}.adopt.log"

    def log(self, profile: str) -> Path:
        return self.logs / f"{profile}.log"


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
