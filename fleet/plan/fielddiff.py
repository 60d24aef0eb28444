"""Field-level differences between two profile specs, for the diff renderers."""

from __future__ import annotations

from dataclasses import dataclass

from fleet.spec.model import ProfileSpec
from fleet.spec.secrets import is_secret, mask_argv


@dataclass(frozen=True)
class FieldChange:
    """One field that differs between two profile specs, with its value before and after."""
    path: str
    before: object
    after: object
    forces_replace: bool
    sensitive: bool

    @property
    def change(self) -> str:
        return "added" if self.before is None else "removed" if self.after is None else "changed"

    def shown(self) -> tuple[object, object] | None:
        """(before, after) safe to print, or None when only that it changed may be said.

        A secret value is never shown, nor anything derived from it; a command shows its
        other words, when those alone tell the change apart.
        """
        if not self.sensitive:
            return self.before, self.after
        if isinstance(self.before, list) and isinstance(self.after, list):
            before, after = mask_argv(self.before), mask_argv(self.after)
            if before != after:
                return before, after
        return None


def flatten(spec: ProfileSpec) -> dict[str, tuple[object, bool, bool]]:
    """path -> (value, forces_replace, sensitive)."""
    out: dict[str, tuple[object, bool, bool]] = {
        "driver": (spec.driver, True, False),
        "command": _argv(spec.command, True),
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
        "maintenance.update_command": _argv(spec.maintenance.update_command, False),
        "maintenance.windows": ([w.__dict__ for w in spec.maintenance.windows], False, False),
        "match": (spec.match, False, False),
    }
    for key, value in spec.env:
        out[f"env.{key}"] = (value, True, is_secret(key, value))
    return out


def _argv(argv, forces_replace: bool) -> tuple[object, bool, bool]:
    """A command is sensitive when any of its words is (`--token X`, a URL with a password...)."""
    words = list(argv)
    return words, forces_replace, mask_argv(words) != words


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
