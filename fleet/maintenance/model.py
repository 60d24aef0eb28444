"""A maintenance request as the store holds it, and the gates an action waits on."""

from __future__ import annotations

import json
from dataclasses import dataclass

ALL = "*"
OPEN_STATES = ("pending", "waiting", "draining")
CANCELLABLE = ("pending", "waiting")


@dataclass(frozen=True)
class Gate:
    """One condition an action passed or waits on; it lives here, below the planner, because the
    maintenance gates build it too."""
    gate: str  # idle | budget | window | suspended | backoff | stagger
    open: bool
    detail: str = ""


@dataclass(frozen=True)
class MaintenanceRequest:
    """A request to restart or update a profile (or every profile), with its progress and outcome."""
    id: int
    profile: str  # a profile name, or "*" for every profile
    action: str  # restart | update
    reasons: tuple[str, ...]
    requested_by: str | None
    idle_seconds: float | None  # None: the profile's maintenance.idle
    now: bool  # a person skipped the idle and window gates
    not_before: float | None
    deadline: float | None
    state: str  # pending | waiting | draining | done | failed | cancelled
    waiting_on: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    outcome: str | None
    update_started: float | None
    update_finished: float | None
    update_exit: int | None
    update_output: str | None

    @classmethod
    def from_row(cls, row) -> MaintenanceRequest:
        return cls(id=row["id"], profile=row["profile"], action=row["action"],
                   reasons=tuple(json.loads(row["reasons"])), requested_by=row["requested_by"],
                   idle_seconds=row["idle_seconds"], now=bool(row["now"]), not_before=row["not_before"],
                   deadline=row["deadline"], state=row["state"], waiting_on=row["waiting_on"],
                   created_at=row["created_at"], updated_at=row["updated_at"], started_at=row["started_at"],
                   finished_at=row["finished_at"], outcome=row["outcome"], update_started=row["update_started"],
                   update_finished=row["update_finished"], update_exit=row["update_exit"],
                   update_output=row["update_output"])

    def targets(self, names) -> tuple[str, ...]:
        return tuple(sorted(names)) if self.profile == ALL else (self.profile,)

    def covers(self, name: str) -> bool:
        return self.profile in (ALL, name)

    @property
    def since(self) -> float:
        """A target counts as restarted once its process started after this instant."""
        if self.action == "update":
            return self.update_finished or float("inf")
        return self.created_at

    @property
    def update_pending(self) -> bool:
        return self.action == "update" and self.update_finished is None

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES
