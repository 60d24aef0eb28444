"""Saved plans: `diff --out PLAN` writes the plan with what it was computed from; `apply PLAN` carries out
exactly that plan, or refuses (exit 3) when anything it was computed from has changed since (Terraform's
saved-plan mode: a plan never goes stale silently).

A plan file holds the plan as `diff -o json` renders it and, beside it, its basis: the format and tool
version, the state directory and store id, the generation the store was at, the manifest's path and digest
(the digest `apply` records), the prune options, each profile's spec hash, the actions (profile, kind,
steps, reason, pid, phase) and the identity of every process an action acts on (pid, start ticks, create
time, as the PID records have them). It names no secret value: the rendered plan masks them by the one rule
of fleet/spec/secrets.py, and its free text is masked again with the manifest's own secret values, as the
journal does. The manifest itself is not copied (it may hold secrets): `apply PLAN` reads it again and
refuses when its digest differs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fleet import __version__
from fleet.cli.common import utc
from fleet.cli.render_plan import render_json
from fleet.controller.plan_report import PlanReport
from fleet.observe.model import Observed
from fleet.platform.base import CREATE_TIME_TOLERANCE
from fleet.spec.model import ProfileSpec
from fleet.spec.secrets import mask_text, secret_values, secret_words
from fleet.store.files import write_atomic

KIND = "saved_plan"
FORMAT_VERSION = "1.0"


class PlanFileError(ValueError):
    """The file is not a saved plan this version can read."""


@dataclass(frozen=True)
class SavedPlan:
    """A plan file as read back: where it lies and the document it holds (the plan and its basis)."""
    path: Path
    doc: dict

    @property
    def basis(self) -> dict:
        return self.doc["basis"]

    @property
    def manifest_path(self) -> str:
        return str(self.basis["manifest"]["path"])

    @property
    def manifest_digest(self) -> str:
        return str(self.basis["manifest"]["digest"])

    @property
    def generation(self) -> int:
        return int(self.basis["generation"])

    @property
    def state_dir(self) -> str:
        return str(self.basis["state_dir"])

    @property
    def store_id(self) -> str | None:
        return self.basis.get("store_id")

    @property
    def prune(self) -> bool:
        return bool(self.basis["options"]["prune"])

    @property
    def allow_empty(self) -> bool:
        return bool(self.basis["options"]["allow_empty"])


# -- writing ------------------------------------------------------------------------------------------

def plan_document(report: PlanReport, observed: Observed, desired: Iterable[ProfileSpec],
                  previous: Iterable[ProfileSpec], *, state_dir: str, store_id: str | None, prune: bool,
                  allow_empty: bool) -> dict:
    """The saved plan of `report` (the whole plan, not one profile's), computed from `observed`, for the
    manifest's profiles `desired` over the last applied `previous`: the secret values of both are masked in
    its free text."""
    desired = sorted(desired, key=lambda p: p.name)
    known = _secrets_of([*desired, *previous])
    return {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "tool_version": __version__,
        "created_at": utc(report.generated_at),
        "basis": {
            "state_dir": state_dir,
            "store_id": store_id,
            "generation": report.last_generation,
            "manifest": {"path": os.path.abspath(report.manifest_path), "digest": report.manifest_digest},
            "options": {"prune": prune, "allow_empty": allow_empty},
            "spec_hashes": [{"profile": p.name, "spec_hash": p.spec_hash} for p in desired],
            "actions": action_keys(report),
            "processes": identities(report, observed),
        },
        "plan": _masked_plan(render_json(report), known),
    }


def write_plan(path: Path, doc: dict) -> None:
    """Atomically (a temp file beside it, fsync, rename) and readable by the owner alone."""
    write_atomic(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"), 0o600)


def action_keys(report: PlanReport) -> list[dict]:
    """What a plan does, without what moves with the clock (not_before, stagger slots, messages): two plans
    with the same keys perform the same actions on the same processes."""
    return [{"profile": a.profile, "action": str(a.kind), "steps": list(a.steps), "reason": str(a.reason),
             "pid": a.pid, "phase": str(a.stage) if a.stage else None}
            for a in (r.action for r in report.changes)]


def identities(report: PlanReport, observed: Observed) -> list[dict]:
    """Every process an action acts on, as observed: the live process it adopts, drains, replaces or kills,
    and the record a reclaim removes. pid and start ticks (create time where there are none), as the PID
    records have them."""
    out = []
    for r in report.changes:
        a = r.action
        if a.target is not None:
            out.append({"profile": a.profile, "action": str(a.kind), "of": "process", "pid": a.target.pid,
                        "start_ticks": a.target.start_ticks, "create_time": a.target.create_time})
        elif a.record is not None:
            out.append({"profile": a.profile, "action": str(a.kind), "of": "record", "pid": a.record.pid,
                        "start_ticks": a.record.start_ticks, "create_time": a.record.create_time})
    return out


def _secrets_of(specs: Iterable[ProfileSpec]) -> tuple[str, ...]:
    known: set[str] = set()
    for p in specs:
        known.update(secret_values(p.env))
        known.update(secret_words(p.command))
        known.update(secret_words(p.maintenance.update_command))
    return tuple(sorted(known))


def _masked_plan(doc: dict, known: tuple[str, ...]) -> dict:
    """`diff -o json`'s document with its free text (messages, notes, hints, gate details) masked with the
    manifest's own secret values too: a message may quote an error that quotes a command."""
    def text(value):
        return mask_text(value, known) if isinstance(value, str) else value

    doc = dict(doc)
    doc["refusal"] = text(doc.get("refusal"))
    doc["changes"] = [{**c, "message": text(c.get("message")),
                       "gates": [{**g, "detail": text(g.get("detail"))} for g in c.get("gates", [])]}
                      for c in doc.get("changes", [])]
    doc["drift"] = [{**d, "message": text(d.get("message"))} for d in doc.get("drift", [])]
    doc["checks"] = [{**c, "message": text(c.get("message")), "hint": text(c.get("hint"))}
                     for c in doc.get("checks", [])]
    return doc


# -- reading and checking ------------------------------------------------------------------------------

def read_plan(path: Path) -> SavedPlan:
    """The saved plan in `path`; PlanFileError when it is none (a manifest given by mistake, another format)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlanFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        doc = None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise PlanFileError(f"{path} is not a saved plan (`hermes-fleet diff --out PLAN` writes one); to apply a "
                            f"manifest, use `hermes-fleet apply -f {path}`")
    major = str(doc.get("format_version", "")).split(".")[0]
    if major != FORMAT_VERSION.split(".")[0]:
        raise PlanFileError(f"{path} is a saved plan of format {doc.get('format_version')!r}; this version reads "
                            f"{FORMAT_VERSION}")
    try:
        saved = SavedPlan(path, doc)
        (saved.manifest_path, saved.manifest_digest, saved.generation, saved.state_dir, saved.prune,
         saved.allow_empty, list(saved.basis["actions"]), list(saved.basis["processes"]))
    except (KeyError, TypeError, ValueError):
        raise PlanFileError(f"{path} is a damaged saved plan (a field of its basis is missing)") from None
    return saved


def short_digest(digest: str) -> str:
    return digest.rpartition(":")[2][:12]


def tool_change(saved: SavedPlan) -> str | None:
    if saved.doc.get("tool_version") != __version__:
        return (f"saved plan was made by hermes-fleet {saved.doc.get('tool_version')}; this is {__version__}: "
                f"make the plan again")
    return None


def process_change(saved: SavedPlan, observed: Observed) -> str | None:
    """The first process the saved plan acts on that is no longer the one it observed, re-observed through the
    same observer `diff` uses."""
    for ident in saved.basis["processes"]:
        obs = observed.profiles.get(ident["profile"])
        now = None if obs is None else (obs.process if ident["of"] == "process" else obs.record)
        if now is None or now.pid != ident["pid"] or not _same_start(ident, now.start_ticks, now.create_time):
            return (f"executor: pid {ident['pid']} is no longer the recorded process "
                    f"(profile {ident['profile']}, planned {ident['action']})")
    return None


def _same_start(ident: dict, start_ticks: int | None, create_time: float) -> bool:
    if ident.get("start_ticks") is not None and start_ticks is not None:
        return int(ident["start_ticks"]) == start_ticks
    return abs(float(ident["create_time"]) - create_time) < CREATE_TIME_TOLERANCE


def action_change(saved: SavedPlan, report: PlanReport) -> str | None:
    """How the plan computed now differs from the saved one, profile by profile; None when it does not."""
    def by_profile(keys: list[dict]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for k in keys:
            out.setdefault(k["profile"], []).append(k)
        return out

    before, after = by_profile(saved.basis["actions"]), by_profile(action_keys(report))
    moved = [f"{name}: {_describe(before.get(name))} -> {_describe(after.get(name))}"
             for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]
    if not moved:
        return None
    more = f" and {len(moved) - 3} more" if len(moved) > 3 else ""
    return f"saved plan is stale: the plan computed now differs ({'; '.join(moved[:3])}{more})"


def _describe(keys: list[dict] | None) -> str:
    if not keys:
        return "nothing"
    return ", ".join(" ".join(str(k[f]) for f in ("action", "reason", "phase") if k.get(f))
                     + (f" pid {k['pid']}" if k.get("pid") else "") for k in keys)
