"""PID records (<profile>.pid) and planned-stop markers (<profile>.stop).

A record must be writable on a full disk: without it a respawned gateway runs unrecorded (`status` loses it,
the controller retries its adoption every pass). So a reclaimed record is not unlinked but kept, as
`.<profile>.pid.spare`, and when a write finds the disk full the new record goes into the spare's own
blocks: a rewrite in place then a rename, which needs no free block whoever took the ones freed meanwhile."""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import asdict, dataclass

from fleet.platform.fileio import write_at
from fleet.store.files import O_NOFOLLOW, UnsafeFile, read_small, remove, write_atomic

MANAGED_BY = "hermes-fleet"


@dataclass(frozen=True)
class PidRecord:
    """A PID record: the process that runs a profile, how to know it again, and who started or adopted it."""
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
    """A PID record as read: the record, or why a file that is there was not trusted."""
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


_FULL = (errno.ENOSPC, errno.EDQUOT)


def spare_of(path) -> str:
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.spare")


def write_record(path, record: PidRecord) -> None:
    # Atomic, not fsynced: a record only matters while its process lives, and no process outlives a power loss.
    data = (json.dumps(asdict(record), sort_keys=True) + "\n").encode("utf-8")
    try:
        write_atomic(path, data, durable=False)
    except OSError as exc:
        if exc.errno not in _FULL or not _write_into_spare(os.fspath(path), data):
            raise


def _write_into_spare(path: str, data: bytes) -> bool:
    """The disk is full: write `data` into the spare's blocks and rename it over `path` (the replaced record
    becomes the next spare). False when there is no spare to use."""
    spare = spare_of(path)
    try:
        fd = os.open(spare, os.O_WRONLY | O_NOFOLLOW)
    except OSError:
        return False
    try:
        if write_at(fd, data, 0) != len(data):
            return False
        os.ftruncate(fd, len(data))
    except OSError:
        return False
    finally:
        os.close(fd)
    previous = f"{spare}.previous"
    try:
        remove(previous)  # left by a crash between the renames below
        os.link(path, previous)  # keeps the replaced record's blocks (a link needs none on a full disk)
    except OSError:
        previous = ""
    os.replace(spare, path)
    if previous:
        os.replace(previous, spare)
    return True


def remove_record(path) -> bool:
    """Ends a record, keeping its blocks as the profile's spare (see the module's note)."""
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):  # a directory or a symlink in its place is no spare
            os.replace(path, spare_of(path))
            return True
    except FileNotFoundError:
        return False
    except OSError:
        pass
    return remove(path)
