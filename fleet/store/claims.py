"""Claims: which fleet (state directory) manages a Hermes profile home.

Two state directories over one Hermes home would each take the other's gateway for their own
and fight over it forever. The controller writes a claim into every Hermes home it manages; a
live claim of another fleet makes the profile a conflict for everyone else. A claim is live while
the state directory it names is still that directory (device, inode) and either a controller holds
its supervisor lock or the claim was renewed within the lease: a controller that died or is being
restarted by its service manager keeps its homes, as a Kubernetes lease outlives a holder's restart.
A stale claim (lease lapsed, or directory replaced) may be taken over; `down` gives the homes back."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from fleet.store.fence import file_id
from fleet.store.files import read_json, remove, write_json_atomic
from fleet.store.layout import StateDir

CLAIM_FILE = ".hermes-fleet-claim.json"
# Renewed by a pass at least this old (passes come at most ~36 s apart), so a dead controller's claim
# outlives it by 54 to 90 s: more than a service manager's restart delay and start burst.
CLAIM_LEASE_SECONDS = 90.0
CLAIM_RENEW_SECONDS = 15.0

HELD, LEASED, STALE = "held", "leased", "stale"


@dataclass(frozen=True)
class Claim:
    """A claim on a Hermes home: the fleet that manages it (state directory, its identity, store id) and its lease."""
    state_dir: str
    dev: int
    ino: int
    store_id: str
    controller_pid: int | None = None
    claimed_at: float = 0.0
    renewed_at: float = 0.0

    def same_fleet(self, other: Claim) -> bool:
        return (self.state_dir, self.dev, self.ino, self.store_id) == \
            (other.state_dir, other.dev, other.ino, other.store_id)

    def describe(self) -> str:
        by = f", controller pid {self.controller_pid}" if self.controller_pid else ""
        return f"the fleet of state directory {self.state_dir}{by}"

    def lapses_at(self) -> float:
        return self.renewed_at + CLAIM_LEASE_SECONDS


def claim_path(home: str) -> str:
    return os.path.join(home, CLAIM_FILE)


def read_claim(home: str) -> Claim | None:
    data = read_json(claim_path(home))
    if not isinstance(data, dict):
        return None
    try:
        return Claim(str(data["state_dir"]), int(data["dev"]), int(data["ino"]), str(data["store_id"]),
                     int(data["controller_pid"]) if data.get("controller_pid") is not None else None,
                     float(data.get("claimed_at") or 0.0), float(data.get("renewed_at") or 0.0))
    except (KeyError, TypeError, ValueError):
        return None


def own_claim(state: StateDir, store_id: str, controller_pid: int | None = None) -> Claim | None:
    """The claim this state directory writes; None when the directory is gone."""
    identity = file_id(state.root)
    if identity is None:
        return None
    now = time.time()
    return Claim(str(state.root), identity.dev, identity.ino, store_id, controller_pid, now, now)


def claim_liveness(claim: Claim, lock_is_held, now: float) -> str:
    """HELD while the named state directory is still the one that claimed (device, inode) and a controller
    runs there; LEASED while that directory stands and the claim was renewed within the lease; else STALE."""
    here = file_id(claim.state_dir)
    if here is None or (here.dev, here.ino) != (claim.dev, claim.ino):
        return STALE
    if lock_is_held(str(StateDir(Path(claim.state_dir)).lock)):
        return HELD
    return LEASED if 0.0 <= now - claim.renewed_at < CLAIM_LEASE_SECONDS else STALE


def write_claim(home: str, claim: Claim) -> None:
    os.makedirs(home, mode=0o700, exist_ok=True)
    write_json_atomic(claim_path(home), claim.__dict__, durable=False)


def release_claim(home: str, mine: Claim) -> bool:
    """Remove the claim only while it is still this fleet's."""
    current = read_claim(home)
    if current is None or not current.same_fleet(mine):
        return False
    return remove(claim_path(home))
