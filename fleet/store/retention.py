"""Bounded history: the journal, finished operator requests and the adoption logs are trimmed by
age and by size (manifest `retention`), so the state directory stays small under any crash loop."""

from __future__ import annotations

import json
import os
from datetime import datetime

from fleet.spec.model import RetentionPolicy
from fleet.store.db import Store
from fleet.store.files import write_atomic
from fleet.store.layout import StateDir

ADOPT_LOG_SUFFIX = ".adopt.log"


def apply_retention(store: Store, state: StateDir, policy: RetentionPolicy, now: float) -> int:
    """Trim everything the policy covers; returns how many journal/request rows and log lines went."""
    gone = store.enforce_retention(now, max_age=policy.max_age, journal_rows=policy.journal_rows,
                                   request_rows=policy.request_rows)
    try:
        names = [e for e in os.listdir(state.root) if e.endswith(ADOPT_LOG_SUFFIX)]
    except OSError:
        return gone
    for entry in names:
        gone += trim_adopt_log(os.path.join(state.root, entry), now - policy.max_age, policy.adopt_log_bytes)
    return gone


def trim_adopt_log(path: str, cutoff: float, max_bytes: int) -> int:
    """Keep the newest lines, newer than cutoff, within max_bytes. Never follows a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return 0
    try:
        size = os.fstat(fd).st_size
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read()
    finally:
        os.close(fd)
    lines = data.splitlines(keepends=True)
    kept = [line for line in lines if (at := _line_time(line)) is None or at >= cutoff]
    total = sum(len(line) for line in kept)
    while kept and total > max_bytes:
        total -= len(kept.pop(0))
    if len(kept) == len(lines) and size <= max_bytes:
        return 0
    write_atomic(path, b"".join(kept), 0o600, durable=False)
    return len(lines) - len(kept)


def _line_time(line: bytes) -> float | None:
    try:
        at = json.loads(line).get("at")
        return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() if at else None
    except (ValueError, AttributeError, TypeError):
        return None
