"""The one identity rule: when a live process is a profile's gateway.

The observer (records, Hermes' pid file, the scan) and the executor (right before every signal) both ask
here, so a process is never ours by one path and not by another. Beyond the PID, its start time and our
user, identity needs positive proof, one of:

- the child's environment we spawned it with, while we still hold it unreaped (its PID cannot be reused);
- the `HERMES_FLEET_PROFILE` / `HERMES_FLEET_STATE_DIR` markers naming this profile and this state dir
  (a gateway's subprocesses carry them too: the scan for unrecorded processes skips those, see
  `is_gateway_subprocess`);
- Hermes' own proof for a hermes-driver profile: `gateway.lock` held in the profile's home, `gateway.pid`
  naming this very process, and a gateway command line for this profile;
- the profile's `match` pattern on its command line.

An environment that is unreadable or empty proves nothing (a non-dumpable process, a process of another
user, a kernel thread, a process mid-exit). Markers that name another profile or state dir rule the
others out. And a process the platform would never signal (pid 1, the controller, its ancestors, other
users, kernel threads) is never ours, whatever a record says.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from fleet.observe import hermes_files as hf
from fleet.observe.model import Verdict
from fleet.platform.base import Platform, ProcessInfo
from fleet.service.native import same_home
from fleet.spec.markers import PROFILE_ENV, STATE_DIR_ENV
from fleet.spec.model import DRIVER_HERMES, ProfileSpec


PROOF_CHILD, PROOF_MARKER, PROOF_HERMES, PROOF_MATCH = "child", "marker", "hermes_lock", "match"


@dataclass(frozen=True)
class Proof:
    """How a process was shown to be a profile's gateway, or why it was not."""
    how: str | None  # child | marker | hermes_lock | match; None: not ours
    why_not: str = ""  # when `how` is None: what the record's reader is told
    protected: bool = False  # the platform would refuse to signal it at all
    env: dict[str, str] | None = None  # the environment that was read (for the spec hash), if any

    def __bool__(self) -> bool:
        return self.how is not None


def markers(name: str, state_root: str) -> dict[str, str]:
    """What every process of `name`'s gateway tree carries; a tree kill reaches only those (or the
    gateway's own session, group or scope)."""
    return {PROFILE_ENV: name, STATE_DIR_ENV: state_root}


def prove(platform: Platform, info: ProcessInfo, name: str, state_root: str, spec: ProfileSpec | None) -> Proof:
    """Positive proof that the live process `info` is `name`'s gateway under state dir `state_root`."""
    refusal = platform.never_signal(info.pid)
    if refusal:
        return Proof(None, refusal, protected=True)
    given = platform.child_environ(info.pid)
    if given is not None:
        if given.get(PROFILE_ENV) == name and given.get(STATE_DIR_ENV) == state_root:
            return Proof(PROOF_CHILD, env=given)
        return Proof(None, f"pid {info.pid} is a gateway this controller started for another profile")
    env = platform.process_environ(info.pid)
    if not env:
        return Proof(None, f"pid {info.pid}'s environment is unreadable or empty, so nothing proves it ours")
    marker = env.get(PROFILE_ENV)
    if marker is not None:
        if marker == name and env.get(STATE_DIR_ENV) == state_root:
            return Proof(PROOF_MARKER, env=env)
        return Proof(None, f"pid {info.pid}'s markers name profile {marker!r} of state dir "
                           f"{env.get(STATE_DIR_ENV)!r}", env=env)
    if _hermes_proof(platform, info, name, spec, env):
        return Proof(PROOF_HERMES, env=env)
    if spec is not None and spec.match and info.cmdline and re.search(spec.match, " ".join(info.cmdline)):
        return Proof(PROOF_MATCH, env=env)
    return Proof(None, f"nothing proves pid {info.pid} is {name}'s gateway (no marker, no Hermes lock)", env=env)


def is_gateway_subprocess(spec: ProfileSpec | None, info: ProcessInfo) -> bool:
    """Every process a gateway starts inherits its markers, and some outlive it: Hermes 0.19 answers every stop
    with a detached `timeout 5 bash -c 'ps auxf ...'` shutdown diagnostic in its own session that lives up to 5 s
    more. For a hermes-driver profile, an unrecorded marked process without a gateway command line for that
    profile is such a subprocess, never the gateway to adopt. A recorded PID needs no such test: we spawned it
    (its command may be a wrapper Hermes' rules do not know), or adopted it through the scan that applies this.
    (An empty command line is a process mid-exit: it decides nothing.)"""
    return (spec is not None and spec.driver == DRIVER_HERMES and bool(info.cmdline)
            and not (hf.looks_like_gateway(info.cmdline) and hf.cmdline_profile(info.cmdline) == spec.name))


def may_be_the_gateway(spec: ProfileSpec | None, info: ProcessInfo) -> bool:
    """A process-driver gateway holds no lock or pid file of its own: a marked process running the profile's
    very command may be its gateway (for the scan to adopt, or to report as a duplicate), never a leftover to
    end on the word of a record that may be forged. (A hermes gateway is told by its held lock instead.)"""
    return (spec is not None and spec.driver != DRIVER_HERMES and bool(info.cmdline)
            and tuple(info.cmdline) == tuple(spec.command))


def runs_in_root(spec: ProfileSpec, root: str) -> bool:
    """A gateway whose HERMES_HOME is `root` belongs to this profile's Hermes root (or is its home), symlinks
    followed: a unit's gateway has the resolved path, a manifest may name the same place through a symlink."""
    here = same_home(root)
    return any(here == same_home(mine) for mine in (spec.env_map.get("HERMES_HOME"), spec.hermes_home) if mine)


def _hermes_proof(platform: Platform, info: ProcessInfo, name: str, spec: ProfileSpec | None, env: dict[str, str]) -> bool:
    if spec is None or spec.driver != DRIVER_HERMES:
        return False
    if not hf.looks_like_gateway(info.cmdline) or hf.cmdline_profile(info.cmdline) != name:
        return False
    root = env.get("HERMES_HOME")
    if root is not None and not runs_in_root(spec, root):
        return False  # a gateway of another Hermes root
    rec = hf.read_hermes_pid(spec.hermes_home)
    if rec is None or rec.pid != info.pid:
        return False
    if rec.start_time is not None and info.start_ticks is not None and rec.start_time != info.start_ticks:
        return False
    return platform.lock_is_held(os.path.join(spec.hermes_home, hf.GATEWAY_LOCK))


@dataclass(frozen=True)
class Check:
    """The verdict on a PID record's process, with the process and its proof when there is one."""
    verdict: Verdict
    info: ProcessInfo | None
    proof: Proof | None = None

    def proven(self) -> tuple[ProcessInfo, Proof]:
        """The process and the proof that it is the gateway, for an ALIVE verdict (which has both)."""
        assert self.info is not None and self.proof is not None, f"{self.verdict} carries no proven process"
        return self.info, self.proof


def check(platform: Platform, pid: int, start_ticks: int | None, create_time: float, name: str, state_root: str,
          spec: ProfileSpec | None) -> Check:
    """The full rule for a PID someone wrote down (our record, or the executor's last observation)."""
    info = platform.process_info(pid)
    if info is None or not info.alive:
        return Check(Verdict.DEAD, None)
    if not info.started_as(start_ticks, create_time):
        return Check(Verdict.REUSED, info)
    me = platform.current_uid()
    if info.uid is not None and me is not None and info.uid != me:
        return Check(Verdict.FOREIGN, info)
    proof = prove(platform, info, name, state_root, spec)
    if proof:
        return Check(Verdict.ALIVE, info, proof)
    again = platform.process_info(pid)  # a process mid-exit reads as empty: dead, not unrelated
    if again is None or not again.alive:
        return Check(Verdict.DEAD, None)
    return Check(Verdict.FOREIGN if proof.protected else Verdict.UNRELATED, info, proof)
