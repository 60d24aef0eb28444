"""The plan a manifest would produce against the live host: what `diff` prints and `apply` records.
It is the same pure planner the controller runs, fed the same durable inputs."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fleet.controller.desired import DesiredSource
from fleet.controller.status import ControllerStatus, controller_status
from fleet.observe.model import Observed
from fleet.observe.observer import Observer
from fleet.plan.model import Check, Desired, Plan
from fleet.plan.planner import plan
from fleet.platform.base import Platform
from fleet.spec.load import Manifest
from fleet.spec.model import DRIVER_HERMES, ProfileSpec
from fleet.store.db import Store
from fleet.store.layout import StateDir


@dataclass(frozen=True)
class Preview:
    """The plan a manifest would produce against the live host, and everything it was computed from."""
    manifest: Manifest
    desired: Desired
    observed: Observed
    plan: Plan
    previous: dict[str, ProfileSpec]  # last-applied spec per profile (incl. removed ones)
    last_generation: int
    new_generation: bool
    controller: ControllerStatus
    checks: tuple[Check, ...]


def preview(manifest: Manifest, state: StateDir, store: Store, platform: Platform, now: float, *,
            prune: bool = True, allow_empty: bool = False, controller: ControllerStatus | None = None) -> Preview:
    """`controller`: the controller's status when the caller knows it (the controller itself, which must not
    probe its own lock); else read from the state directory."""
    source = DesiredSource(store)
    current = store.current_generation()
    previous: dict[str, ProfileSpec] = {}
    if current is not None:
        previous = source.profiles(current.generation, source.spec(current))
    spec = manifest.spec
    new_generation = current is None or current.digest != manifest.digest
    generation = (current.generation if current else 0) + (1 if new_generation else 0)
    desired = Desired(spec=spec, generation=generation, prune=prune, allow_empty=allow_empty, previous=previous)
    specs = dict(previous)
    specs.update({p.name: p for p in spec.profiles})
    observed = Observer(state, store, platform).observe(specs, now=now, scan=True)
    result = plan(desired, observed, now)
    return Preview(manifest=manifest, desired=desired, observed=observed, plan=result, previous=previous,
                   last_generation=current.generation if current else 0, new_generation=new_generation,
                   controller=controller or controller_status(state, store, platform), checks=result.checks + preflight(spec.profiles, platform))


def preflight(profiles, platform: Platform) -> tuple[Check, ...]:
    """Problems found without acting (Nomad's scheduler dry-run)."""
    checks = []
    tokens: dict[tuple[str, str], str] = {}
    found: dict[str, bool] = {}  # a fleet's profiles mostly share one executable; PATH is searched once for it
    for p in profiles:
        exe = p.command[0]
        if exe not in found:
            found[exe] = platform.find_executable(exe) is not None
        if not found[exe]:
            checks.append(Check("error", "executable_missing", f"{exe} not found (neither a path nor on PATH)", p.name,
                                "install it or fix the command in fleet.yaml"))
        for key, value in p.env:
            if key.endswith("_BOT_TOKEN") or (key.endswith("_TOKEN") and "BOT" in key):
                other = tokens.get((key, value))
                if other:
                    checks.append(Check("error", "shared_bot_token", f"shares {key} with {other}; the gateway would exit 78",
                                        p.name, "give each profile its own bot"))
                tokens[(key, value)] = p.name
        if p.driver == DRIVER_HERMES and p.name != "default" and not os.path.isdir(p.hermes_home):
            checks.append(Check("warning", "profile_home_missing",
                                f"{p.hermes_home} does not exist yet; it will be created on first spawn", p.name))
    return tuple(checks)
