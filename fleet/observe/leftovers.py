"""What a gateway left behind: live processes that carry this fleet's and a profile's markers
(HERMES_FLEET_STATE_DIR naming this state directory and HERMES_FLEET_PROFILE), and the members of
a dead gateway's session or process group. Read-only; fleet/execute decides what to end."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from fleet.platform.base import Platform, ProcessInfo, ProcessStart
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
    """This user's live processes, looked at once: one look at the process table serves every gateway whose leftovers
    a pass ends. It reads each process's start first (a dead gateway's leftovers all started after it); the rest of a
    process (owner, command line, status) and its environment are read the first time a question needs them, then
    kept."""

    def __init__(self, platform: Platform):
        self.platform = platform
        me = os.getpid()
        self.starts = [start for start in platform.process_starts() if start.pid != me]
        self._uid = platform.current_uid()
        self._infos: dict[int, ProcessInfo | None] = {}
        self._environs: dict[int, dict[str, str]] = {}

    def info(self, start: ProcessStart) -> ProcessInfo | None:
        """The process as it is now: None unless it is still the one that started then, alive and this user's."""
        if start.pid not in self._infos:
            info = start.info
            if info is None:  # read now: the owner is checked here, which the platform's look left out
                info = self.platform.process_info(start.pid)
                if info is not None and self._uid is not None and info.uid != self._uid:
                    info = None
            keep = info is not None and info.alive and info.started_as(start.start_ticks, start.create_time)
            self._infos[start.pid] = info if keep else None
        return self._infos[start.pid]

    def environ(self, pid: int) -> dict[str, str]:
        env = self._environs.get(pid)
        if env is None:
            env = self._environs[pid] = self.platform.process_environ(pid) or {}  # unreadable: carries nothing
        return env


def started_after(start: ProcessStart, record: PidRecord) -> bool:
    """Whether the process started no earlier than the gateway `record` names: what that gateway forked cannot have."""
    if record.start_ticks is not None and start.start_ticks is not None:
        return start.start_ticks >= record.start_ticks
    return start.create_time >= record.create_time - 0.05  # a damaged record (NaN) proves nothing: not ended


def find_leftovers(platform: Platform, state_root: str, profile: str | None = None, *, group_of: int | None = None,
                   exclude: frozenset[int] = frozenset(), snapshot: ProcessSnapshot | None = None,
                   born_after: PidRecord | None = None,
                   gateways: Mapping[tuple[int, int | None], str] | None = None) -> list[Leftover]:
    """This user's live processes that carry the markers of `profile` (any profile of the fleet when
    None), plus those in the session or process group led by `group_of` (a dead gateway's pid, which
    was its session leader) whatever they carry. Never this process, those in `exclude`, or the gateways of other
    profiles than `profile` in `gateways` ((pid, start ticks) -> profile: those the caller spawned or adopted; each
    is its own profile's, never what another left); with `born_after` (the dead gateway's record), only processes
    that started after that gateway did. So only the few left are read whole."""
    out: list[Leftover] = []
    table = snapshot or ProcessSnapshot(platform)
    others = gateways or {}
    for start in table.starts:
        # Asked of every process of the host once per spawn: kept to lookups a C loop answers.
        if start.pid in exclude or (born_after is not None and not started_after(start, born_after)) \
                or others.get((start.pid, start.start_ticks), profile) != profile:
            continue
        info = table.info(start)
        if info is None:
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
