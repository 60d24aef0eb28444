"""FleetSpec <-> plain JSON, so the store can keep generations and the controller can
reload them without YAML or the schema validator."""

from __future__ import annotations

import dataclasses

from fleet.spec.hashing import canonical_json, sha256_hex
from fleet.spec.model import (
    DrainPolicy, FleetSpec, HealthPolicy, MaintenancePolicy, MaintenanceWindow, MetricsSpec, ProfileSpec,
    RestartPolicy, RetentionPolicy,
)

# Settings added after the first release are written only when they differ from their defaults,
# so a manifest that leaves them alone keeps the digest (and generation) it had before.
_RESTART_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RestartPolicy)
                     if f.default is not dataclasses.MISSING}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _flat(obj) -> dict:
    """A policy dataclass as a dict (dataclasses.asdict deep-copies and is ~20x slower)."""
    names = _FIELD_NAMES.get(type(obj))
    if names is None:
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in dataclasses.fields(obj))
    return {name: getattr(obj, name) for name in names}


def profile_to_dict(p: ProfileSpec) -> dict:
    m = p.maintenance
    return {
        "name": p.name, "driver": p.driver, "command": list(p.command), "cwd": p.cwd,
        "env": [list(kv) for kv in p.env], "hermes_home": p.hermes_home, "desired": p.desired,
        "suspend": p.suspend, "prune": p.prune, "stagger": p.stagger,
        "restart": {**{k: v for k, v in _flat(p.restart).items()
                       if k not in _RESTART_DEFAULTS or v != _RESTART_DEFAULTS[k]},
                    "backoff": list(p.restart.backoff)},
        "drain": _flat(p.drain), "health": _flat(p.health),
        "maintenance": {"idle": m.idle, "max_concurrent": m.max_concurrent, "update_command": list(m.update_command),
                        "windows": [_flat(w) for w in m.windows]},
        "match": p.match, "spec_hash": p.spec_hash,
    }


def fleet_to_dict(spec: FleetSpec) -> dict:
    out = {"name": spec.name, "stagger": spec.stagger, "max_concurrent_maintenance": spec.max_concurrent_maintenance,
           "profiles": [profile_to_dict(p) for p in spec.profiles], "hermes_root": spec.hermes_root,
           "default_state_dir": spec.default_state_dir}
    if spec.retention != RetentionPolicy():
        out["retention"] = _flat(spec.retention)
    if spec.metrics != MetricsSpec():
        out["metrics"] = _flat(spec.metrics)
    return out


def profile_from_dict(d: dict) -> ProfileSpec:
    m = d["maintenance"]
    return ProfileSpec(
        name=d["name"], driver=d["driver"], command=tuple(d["command"]), cwd=d["cwd"],
        env=tuple((k, v) for k, v in d["env"]), hermes_home=d["hermes_home"],
        desired=d["desired"], suspend=d["suspend"], prune=d["prune"], stagger=d["stagger"],
        restart=RestartPolicy(policy=d["restart"]["policy"], backoff=tuple(d["restart"]["backoff"]),
                              cap=d["restart"]["cap"], reset_after=d["restart"]["reset_after"],
                              **{k: d["restart"][k] for k in _RESTART_DEFAULTS if k in d["restart"]}),
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
        retention=RetentionPolicy(**d["retention"]) if d.get("retention") else RetentionPolicy(),
        metrics=MetricsSpec(**d["metrics"]) if d.get("metrics") else MetricsSpec(),
    )


def fleet_digest(spec: FleetSpec) -> str:
    return "sha256:" + sha256_hex(canonical_json(fleet_to_dict(spec)))
