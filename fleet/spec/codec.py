"""FleetSpec <-> plain JSON, so the store can keep generations and the controller can
reload them without YAML or the schema validator."""

from __future__ import annotations

import dataclasses

from fleet.spec.hashing import canonical_json, sha256_hex
from fleet.spec.model import (
    DrainPolicy, FleetSpec, HealthPolicy, MaintenancePolicy, MaintenanceWindow, ProfileSpec, RestartPolicy,
)


def profile_to_dict(p: ProfileSpec) -> dict:
    d = dataclasses.asdict(p)
    d["env"] = [list(kv) for kv in p.env]
    return d


def fleet_to_dict(spec: FleetSpec) -> dict:
    d = dataclasses.asdict(spec)
    d["profiles"] = [profile_to_dict(p) for p in spec.profiles]
    return d


def profile_from_dict(d: dict) -> ProfileSpec:
    m = d["maintenance"]
    return ProfileSpec(
        name=d["name"], driver=d["driver"], command=tuple(d["command"]), cwd=d["cwd"],
        env=tuple((k, v) for k, v in d["env"]), hermes_home=d["hermes_home"],
        desired=d["desired"], suspend=d["suspend"], prune=d["prune"], stagger=d["stagger"],
        restart=RestartPolicy(policy=d["restart"]["policy"], backoff=tuple(d["restart"]["backoff"]),
                              cap=d["restart"]["cap"], reset_after=d["restart"]["reset_after"]),
        drain=DrainPolicy(**d["drain"]),
        health=HealthPolicy(**d["health"]),
        maintenance=MaintenancePolicy(idle=m["idle"], max_concurrent=m["max_concurrent"],
                                      update_command=tuple(m["update_command"]),
                                      windows=tuple(MaintenanceWindow(**w) for w in m["windows"])),
        match=d.get("match"),
    )


def fleet_from_dict(d: dict) -> FleetSpec:
    return FleetSpec(
        name=d["name"], stagger=d["stagger"], max_concurrent_maintenance=d["max_concurrent_maintenance"],
        profiles=tuple(profile_from_dict(p) for p in d["profiles"]),
        hermes_root=d["hermes_root"], default_state_dir=d["default_state_dir"],
    )


def fleet_digest(spec: FleetSpec) -> str:
    return "sha256:" + sha256_hex(canonical_json(fleet_to_dict(spec)))
