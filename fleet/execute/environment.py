"""The environment a gateway starts with: the manifest's variables, the fleet contract and a
short documented list of host variables passed through from the controller. Nothing else of
the controller's environment reaches a gateway, so a secret exported in the shell that first
ran `apply` never leaks into the fleet, and the environment is the same whether the controller
was started by `apply`, by `controller run` or by a service manager."""

from __future__ import annotations

import os

from fleet.spec.markers import PROFILE_ENV, SPEC_HASH_ENV, STATE_DIR_ENV, STATE_FILE_ENV, STOP_FILE_ENV
from fleet.spec.model import ProfileSpec
from fleet.store.layout import StateDir

# The host variables a program expects to find (locale, time zone, who and where it runs, the
# runtime directory a user service manager is reached through) plus the few that Windows
# needs to start a process at all. Absent names are simply not passed.
PASSTHROUGH_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "XDG_RUNTIME_DIR",
    "SYSTEMROOT", "SYSTEMDRIVE", "WINDIR", "COMSPEC", "PATHEXT", "USERPROFILE", "USERNAME", "APPDATA",
    "LOCALAPPDATA", "PROGRAMDATA", "TEMP", "TMP",
)
PASSTHROUGH_PREFIXES = ("LC_",)

def passes_through(key: str) -> bool:
    upper = key.upper()  # Windows names are case-insensitive
    return upper in PASSTHROUGH_ENV or upper.startswith(PASSTHROUGH_PREFIXES)


def passed_through(base: dict[str, str] | None = None) -> dict[str, str]:
    """The part of `base` (default: this process's environment) that a gateway inherits."""
    source = os.environ if base is None else base
    return {k: v for k, v in source.items() if passes_through(k)}


def child_environment(spec: ProfileSpec, state: StateDir, base: dict[str, str] | None = None) -> dict[str, str]:
    env = passed_through(base)
    env.update(spec.env_map)
    env.update({
        PROFILE_ENV: spec.name,
        STATE_DIR_ENV: str(state.root),
        STATE_FILE_ENV: str(state.state_file(spec.name)),
        STOP_FILE_ENV: str(state.stop_marker(spec.name)),
        SPEC_HASH_ENV: spec.spec_hash,
    })
    return env
