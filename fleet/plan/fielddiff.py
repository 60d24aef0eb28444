"""Field-level differences between two profile specs, for the diff renderers."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleet.spec.model import ProfileSpec

SECRET_KEY = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


URL_CREDENTIALS = re.compile(r"://[^/@\s]*:[^/@\s]*@")


def looks_secret(key: str, value: object = None) -> bool:
    """By name (TOKEN, KEY, SECRET, PASSWORD...) or by value (a URL carrying user:password@)."""
    return bool(SECRET_KEY.search(key)) or (isinstance(value, str) and bool(URL_CREDENTIALS.search(value)))


@dataclass(frozen=True)
class FieldChange:
    path: str
    before: object
    after: object
    forces_replace: bool
    sensitive: bool


def flatten(spec: ProfileSpec) -> dict[str, tuple[object, bool, bool]]:
    """path -> (value, forces_replace, sensitive)."""
    out: dict[str, tuple[object, bool, bool]] = {
        "driver": (spec.driver, True, False),
        "command": (list(spec.command), True, False),
        "cwd": (spec.cwd, True, False),
        "hermes_home": (spec.hermes_home, True, False),
        "desired": (spec.desired, False, False),
        "suspend": (spec.suspend, False, False),
        "prune": (spec.prune, False, False),
        "stagger_s": (spec.stagger, False, False),
        "restart.policy": (spec.restart.policy, False, False),
        "restart.backoff_s": (list(spec.restart.backoff), False, False),
        "restart.cap_s": (spec.restart.cap, False, False),
        "restart.reset_after_s": (spec.restart.reset_after, False, False),
        "drain.timeout_s": (spec.drain.timeout, False, False),
        "health.heartbeat_stale_s": (spec.health.heartbeat_stale, False, False),
        "health.startup_grace_s": (spec.health.startup_grace, False, False),
        "maintenance.idle_s": (spec.maintenance.idle, False, False),
        "maintenance.max_concurrent": (spec.maintenance.max_concurrent, False, False),
        "maintenance.update_command": (list(spec.maintenance.update_command), False, False),
        "maintenance.windows": ([w.__dict__ for w in spec.maintenance.windows], False, False),
        "match": (spec.match, False, False),
    }
    for key, value in spec.env:
        out[f"env.{key}"] = (value, True, looks_secret(key, value))
    return out


def diff_specs(before: ProfileSpec | None, after: ProfileSpec | None) -> list[FieldChange]:
    a = flatten(before) if before else {}
    b = flatten(after) if after else {}
    changes = []
    for path in sorted(set(a) | set(b)):
        va, fa, sa = a.get(path, (None, False, False))
        vb, fb, sb = b.get(path, (None, False, False))
        if va != vb:
            changes.append(FieldChange(path, va, vb, fa or fb, sa or sb))
    return changes
