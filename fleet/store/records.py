"""PID records (<profile>.pid) and planned-stop markers (<profile>.stop)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from fleet.store.files import UnsafeFile, read_small, remove, write_json_atomic

MANAGED_BY = "hermes-fleet"


@dataclass(frozen=True)
class PidRecord:
    profile: str
    pid: int
    start_ticks: int | None
    create_time: float
    spec_hash: str | None  # None: adopted a process whose spec is unknown (started by hand)
    started_at: float
    controller_pid: int
    epoch: int
    adopted: bool = False
    managed_by: str = MANAGED_BY
    caveat: str | None = None  # what the spawn had to settle for (Platform.spawn_caveat); None: nothing


@dataclass(frozen=True)
class RecordRead:
    record: PidRecord | None
    problem: str | None  # why a present file was not trusted


def read_record(path) -> RecordRead:
    try:
        raw = read_small(path)
    except UnsafeFile as exc:
        return RecordRead(None, str(exc))
    except OSError as exc:
        return RecordRead(None, f"unreadable: {exc.strerror}")
    if raw is None:
        return RecordRead(None, None)
    try:
        data = json.loads(raw.decode("utf-8"))
        rec = PidRecord(
            profile=str(data["profile"]), pid=int(data["pid"]),
            start_ticks=None if data.get("start_ticks") is None else int(data["start_ticks"]),
            create_time=float(data["create_time"]), spec_hash=data.get("spec_hash"),
            started_at=float(data["started_at"]), controller_pid=int(data.get("controller_pid", 0)),
            epoch=int(data.get("epoch", 0)), adopted=bool(data.get("adopted", False)),
            managed_by=str(data.get("managed_by", "")),
            caveat=None if data.get("caveat") is None else str(data["caveat"]),
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, OverflowError):
        return RecordRead(None, "corrupt record (not the JSON hermes-fleet writes)")
    if rec.pid <= 0:
        return RecordRead(None, f"corrupt record (pid {rec.pid})")
    if rec.managed_by != MANAGED_BY:
        return RecordRead(None, f"record written by {rec.managed_by or 'an unknown tool'}, not hermes-fleet")
    return RecordRead(rec, None)


def write_record(path, record: PidRecord) -> None:
    # Atomic, not fsynced: a record only matters while its process lives, and no process outlives a power loss.
    write_json_atomic(path, asdict(record), durable=False)


def remove_record(path) -> bool:
    return remove(path)
