"""What a gateway left behind: live processes that carry this fleet's and a profile's markers
(HERMES_FLEET_STATE_DIR naming this state directory and HERMES_FLEET_PROFILE), and the members of
a dead gateway's session or process group. Read-only; fleet/execute decides what to end."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fleet.platform.base import Platform, ProcessInfo
from fleet.spec.markers import PROFILE_ENV, STATE_DIR_ENV
from fleet.store.records import PidRecord


@dataclass(frozen=True)
class Leftover:
    """A live process a gateway left behind, and the profile its markers name."""
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


class ProcessSnapshot:
    """This user's live processes, read once: one look at the process table serves every gateway whose leftovers a
    pass ends. A process's environment is read the first time a question needs it (most are never asked about: a
    dead gateway's leftovers all started after it), then kept."""

    def __init__(self, platform: Platform):
        self.platform = platform
        me = os.getpid()
        self.processes = [info for info in platform.iter_processes() if info.pid != me and info.alive]
        self._environs: dict[int, dict[str, str]] = {}

    def environ(self, pid: int) -> dict[str, str]:
        env = self._environs.get(pid)
        if env is None:
            env = self._environs[pid] = self.platform.process_environ(pid) or {}  # unreadable: carries nothing
        return env


def started_after(info: ProcessInfo, record: PidRecord) -> bool:
    """Whether `info` started no earlier than the gateway `record` names: what that gateway forked cannot have."""
    if record.start_ticks is not None and info.start_ticks is not None:
        return info.start_ticks >= record.start_ticks
    return info.create_time >= record.create_time - 0.05  # a damaged record (NaN) proves nothing: not ended


def find_leftovers(platform: Platform, state_root: str, profile: str | None = None, *, group_of: int | None = None,
                   exclude: frozenset[int] = frozenset(), snapshot: ProcessSnapshot | None = None,
                   born_after: PidRecord | None = None) -> list[Leftover]:
    """This user's live processes that carry the markers of `profile` (any profile of the fleet when
    None), plus those in the session or process group led by `group_of` (a dead gateway's pid, which
    was its session leader) whatever they carry. Never this process or those in `exclude`; with
    `born_after` (the dead gateway's record), only processes that started after that gateway did."""
    out: list[Leftover] = []
    table = snapshot or ProcessSnapshot(platform)
    for info in table.processes:
        if info.pid in exclude or (born_after is not None and not started_after(info, born_after)):
            continue
        env = table.environ(info.pid)
        if carries_markers(env, state_root, profile):
            found = Leftover(info, env.get(PROFILE_ENV))
        elif group_of is not None and group_of in platform.process_group(info.pid):
            found = Leftover(info, env.get(PROFILE_ENV) if carries_markers(env, state_root) else None)
        else:
            continue
        # Asked only of the few that qualify: the refusal walks the process tree.
        if not platform.never_signal(info.pid):
            out.append(found)
    return out
