"""Claims: which fleet (state directory) manages a Hermes profile home.

Two state directories over one Hermes home would each take the other's gateway for their own
and fight over it forever. The controller writes a claim into every Hermes home it manages; a
live claim of another fleet makes the profile a conflict for everyone else. A claim is live while
the state directory it names is still that directory (device, inode) and a controller holds its
supervisor lock; a stale claim may be taken over."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from fleet.store.fence import file_id
from fleet.store.files import read_json, remove, write_json_atomic
from fleet.store.layout import StateDir

CLAIM_FILE = ".hermes-fleet-claim.json"


@dataclass(frozen=True)
class Claim:
    state_dir: str
    dev: int
    ino: int
    store_id: str
    controller_pid: int | None = None
    claimed_at: float = 0.0

    def same_fleet(self, other: "Claim") -> bool:
        return (self.state_dir, self.dev, self.ino, self.store_id) == \
            (other.state_dir, other.dev, other.ino, other.store_id)

    def describe(self) -> str:
        by = f", controller pid {self.controller_pid}" if self.controller_pid else ""
        return f"the fleet of state directory {self.state_dir}{by}"


def claim_path(home: str) -> str:
    return os.path.join(home, CLAIM_FILE)


def read_claim(home: str) -> Claim | None:
    data = read_json(claim_path(home))
    if not isinstance(data, dict):
        return None
    try:
        return Claim(str(data["state_dir"]), int(data["dev"]), int(data["ino"]), str(data["store_id"]),
                     int(data["controller_pid"]) if data.get("controller_pid") is not None else None,
                     float(data.get("claimed_at") or 0.0))
    except (KeyError, TypeError, ValueError):
        return None


def own_claim(state: StateDir, store_id: str, controller_pid: int | None = None) -> Claim | None:
    """The claim this state directory writes; None when the directory is gone."""
    identity = file_id(state.root)
    if identity is None:
        return None
    return Claim(str(state.root), identity.dev, identity.ino, store_id, controller_pid, time.time())


def claim_is_live(claim: Claim, lock_is_held) -> bool:
    """The named state directory is still the one that claimed (device, inode) and a controller runs there."""
    now = file_id(claim.state_dir)
    if now is None or (now.dev, now.ino) != (claim.dev, claim.ino):
        return False
    return bool(lock_is_held(str(StateDir(Path(claim.state_dir)).lock)))


def write_claim(home: str, claim: Claim) -> None:
    os.makedirs(home, mode=0o700, exist_ok=True)
    write_json_atomic(claim_path(home), claim.__dict__, durable=False)


def release_claim(home: str, mine: Claim) -> bool:
    """Remove the claim only while it is still this fleet's."""
    current = read_claim(home)
    if current is None or not current.same_fleet(mine):
        return False
    return remove(claim_path(home))
