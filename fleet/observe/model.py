"""What is true on the host right now, per profile; rebuilt from scratch on every pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from fleet.maintenance.model import MaintenanceRequest
from fleet.observe.hermes_files import GatewayStatus
from fleet.store.db import InventoryEntry, OperatorRequest, ProfileHistory
from fleet.store.records import PidRecord
from fleet.store.takeovers import Takeover


class Verdict(StrEnum):
    """What a PID record says of its process, after the identity rule (fleet/observe/identity.py)."""
    NONE = "none"  # no record
    ALIVE = "alive"  # this profile's gateway
    DEAD = "dead"
    REUSED = "reused"  # the PID now names another program
    FOREIGN = "foreign"  # not ours to signal: another user's, or a protected process
    UNRELATED = "unrelated"  # ours to signal, but nothing proves it this profile's gateway
    CORRUPT = "corrupt"  # the record itself could not be read


@dataclass(frozen=True)
class LiveProcess:
    """A live process that passed identity for this profile."""
    pid: int
    start_ticks: int | None
    create_time: float
    cmdline: tuple[str, ...]
    started_at: float
    spec_hash: str | None  # what it runs: from our record or its HERMES_FLEET_SPEC_HASH; None = unknown
    source: str  # record | hermes_pidfile | env_marker | cmdline | match
    record_epoch: int | None  # epoch of the record that names it; None without a record
    external_supervisor_flag: bool = True


@dataclass(frozen=True)
class WriteRefusal:
    """A directory found refusing writes (read-only, full), and whether it takes them again."""
    # The last moment the directory may have refused writes: when a probe found it refusing, or, once lifted,
    # when a probe first found it taking writes again (it may have refused them until just before).
    at: float
    why: str  # "read-only file system" | "no space left" | ...
    lifted: bool = False


@dataclass(frozen=True)
class ProfileObservation:
    """What one profile's record, files and process look like on this pass."""
    name: str
    record: PidRecord | None = None
    record_problem: str | None = None  # a present record that was not trusted, and why
    record_verdict: Verdict = Verdict.NONE
    process: LiveProcess | None = None
    status: GatewayStatus | None = None
    heartbeat_at: float | None = None
    # The last time this controller found the heartbeat's directory refusing writes (read-only, full), and why:
    # a heartbeat that stopped then says nothing of the gateway, which could not have written it.
    heartbeat_blocked: WriteRefusal | None = None
    drain_file: bool = False  # Hermes' .drain_request.json is present
    native_service: str | None = None  # path of a native unit/agent/task that supervises this profile's home
    takeover: Takeover | None = None  # a take-over or release of its native unit under way (fleet/store/takeovers.py)
    history: ProfileHistory = field(default_factory=lambda: ProfileHistory(""))
    restart_request: OperatorRequest | None = None
    other_fleet: str | None = None  # another fleet's gateway or live claim holds this Hermes home: why
    claim: str = ""  # our claim on the Hermes home: ours | none | stale | other ("" without a home)
    claim_note: str = ""  # whose claim it is when not ours


@dataclass(frozen=True)
class Orphan:
    """A live process that looks like a profile's gateway, but not one this fleet runs as it."""
    pid: int
    profile: str
    cmdline: tuple[str, ...]
    reason: str  # why it looks like a gateway


@dataclass(frozen=True)
class Observed:
    """Everything one pass saw of the host: each profile, the inventory, orphans and open maintenance requests."""
    observed_at: float
    epoch: int
    profiles: dict[str, ProfileObservation]
    inventory: tuple[InventoryEntry, ...] = ()
    orphans: tuple[Orphan, ...] = ()
    last_spawn_at: float | None = None
    scanned: bool = False  # whether unrecorded processes were searched for
    maintenance: tuple[MaintenanceRequest, ...] = ()  # open requests, oldest first

    def get(self, name: str) -> ProfileObservation:
        return self.profiles.get(name) or ProfileObservation(name=name, history=ProfileHistory(name))
