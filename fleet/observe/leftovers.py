"""What a gateway left behind: live processes that carry this fleet's and a profile's markers
(HERMES_FLEET_STATE_DIR naming this state directory and HERMES_FLEET_PROFILE), and the members of
a dead gateway's session or process group. Read-only; fleet/execute decides what to end."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fleet.platform.base import Platform, ProcessInfo
from fleet.spec.markers import PROFILE_ENV, STATE_DIR_ENV


@dataclass(frozen=True)
class Leftover:
    info: ProcessInfo
    profile: str | None  # the profile its markers name; None: no markers (found by session/group only)


def carries_markers(env: dict[str, str] | None, state_root: str, profile: str | None = None) -> bool:
    """Positively this fleet's (and, when given, this profile's): both markers present and equal.
    An unreadable environment is never a yes."""
    if not env:
        return False
    marked = env.get(PROFILE_ENV)
    if not marked or env.get(STATE_DIR_ENV) != state_root:
        return False
    return profile is None or marked == profile


def find_leftovers(platform: Platform, state_root: str, profile: str | None = None, *, group_of: int | None = None,
                   exclude: frozenset[int] = frozenset()) -> list[Leftover]:
    """This user's live processes that carry the markers of `profile` (any profile of the fleet when
    None), plus those in the session or process group led by `group_of` (a dead gateway's pid, which
    was its session leader) whatever they carry. Never this process or those in `exclude`."""
    me = os.getpid()
    out: list[Leftover] = []
    for info in platform.iter_processes():
        if info.pid == me or info.pid in exclude or not info.alive or platform.never_signal(info.pid):
            continue
        env = platform.process_environ(info.pid) or {}  # unreadable: carries nothing
        if carries_markers(env, state_root, profile):
            out.append(Leftover(info, env.get(PROFILE_ENV)))
            continue
        if group_of is not None and group_of in platform.process_group(info.pid):
            marked = env.get(PROFILE_ENV) if carries_markers(env, state_root) else None
            out.append(Leftover(info, marked))
    return out
