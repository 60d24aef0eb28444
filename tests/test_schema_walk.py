"""Nothing in schemas/fleet.schema.json is silently ignored.

The walk visits every property of the schema, fleet-wide and per profile, recursively (through $ref, lists
and the profiles map). Each property it finds must have a row in EXPECT saying what setting it does:
either it changes a named part of the effective spec (that part, not merely "something", must differ from
the base manifest's), or fleet.yaml refuses it there with a clear message. A property added to the schema
without a row fails test_every_property_has_a_row, so a new key cannot be accepted and ignored.

Rows are keyed by the property's path inside its block ("restart.cap"); a key set per profile is looked
up first as "profiles.*.restart.cap", then as "restart.cap". A fleet-wide block is a default for every
profile, so the same row holds at both levels and is read on profile "a", which sets nothing itself.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from fleet.spec.errors import ManifestError
from fleet.spec.load import parse_manifest
from fleet.spec.model import FleetSpec
from fleet.spec.schema import load_schema

SCHEMA = load_schema()
WINDOW = {"schedule": "0 3 * * *", "duration": "1h"}


@dataclass(frozen=True)
class Changes:
    """Setting the property to `value` changes `part` of the effective spec (given the base plus `base`)."""
    value: Any
    part: Callable[[FleetSpec], Any]
    base: dict | None = None  # extra settings both manifests need (merged at the top level)


@dataclass(frozen=True)
class Refused:
    """fleet.yaml refuses the property there: the message names it and says what to do instead."""
    value: Any
    message: str


def _a(fleet: FleetSpec):
    return fleet.profile("a")


def _env(key: str) -> Callable[[FleetSpec], Any]:
    return lambda f: _a(f).env_map.get(key)


PROCESS = {"profiles": {"a": {"command": ["./gateway.sh"]}}}

EXPECT: dict[str, Changes | Refused] = {
    "version": Refused(2, "version: expected 1; found 2"),
    "name": Changes("other", lambda f: f.name),
    "driver": Changes("process", lambda f: (_a(f).driver, _a(f).hermes_home), base=PROCESS),
    "stagger": Changes("9s", lambda f: (f.stagger, _a(f).stagger)),
    "profiles.*.stagger": Changes("9s", lambda f: _a(f).stagger),
    "hermes.home": Changes("elsewhere", lambda f: (_a(f).hermes_home, _a(f).env_map["HERMES_HOME"])),
    "hermes.command": Changes(["my-hermes"], lambda f: (_a(f).command, _a(f).maintenance.update_command)),
    "proxy.url": Changes("http://proxy.example:3128", _env("ALL_PROXY")),
    "proxy.http": Changes("http://proxy.example:3128", _env("HTTP_PROXY")),
    "proxy.https": Changes("http://proxy.example:3128", _env("HTTPS_PROXY")),
    "proxy.all": Changes("socks5://proxy.example:1080", _env("ALL_PROXY")),
    "proxy.no_proxy": Changes(["example.org"], _env("NO_PROXY")),
    "restart.policy": Changes("never", lambda f: _a(f).restart.policy),
    "restart.backoff": Changes(["5s"], lambda f: _a(f).restart.backoff),
    "restart.cap": Changes("5s", lambda f: _a(f).restart.cap),
    "restart.reset_after": Changes("5m", lambda f: _a(f).restart.reset_after),
    "restart.floor": Changes("2s", lambda f: _a(f).restart.floor),
    "restart.start_limit_burst": Changes(9, lambda f: _a(f).restart.start_limit_burst),
    "restart.start_limit_interval": Changes("1m", lambda f: _a(f).restart.start_limit_interval),
    "retention.max_age": Changes("2d", lambda f: f.retention.max_age),
    "retention.journal_rows": Changes(500, lambda f: f.retention.journal_rows),
    "retention.request_rows": Changes(50, lambda f: f.retention.request_rows),
    "retention.adopt_log_bytes": Changes(8192, lambda f: f.retention.adopt_log_bytes),
    "metrics.listen": Changes(":9464", lambda f: f.metrics.listen),
    "metrics.token_file": Changes("metrics.token", lambda f: f.metrics.token_file),
    "metrics.textfile": Changes("fleet.prom", lambda f: f.metrics.textfile),
    "drain.timeout": Changes("5m", lambda f: _a(f).drain.timeout),
    "health.heartbeat_stale": Changes("5m", lambda f: _a(f).health.heartbeat_stale),
    "health.startup_grace": Changes("5m", lambda f: _a(f).health.startup_grace),
    "maintenance.idle": Changes("1h", lambda f: _a(f).maintenance.idle),
    # The planner's budget reads FleetSpec.max_concurrent_maintenance (test_planner_table: test_budget_of_two).
    "maintenance.max_concurrent": Changes(3, lambda f: (f.max_concurrent_maintenance, _a(f).maintenance.max_concurrent)),
    "profiles.*.maintenance.max_concurrent": Refused(
        3, "profiles.a.maintenance.max_concurrent: 'max_concurrent' cannot be set in a profile (Fleet-wide only: "
           "the budget counts profiles across the whole fleet, so set maintenance.max_concurrent at the top level "
           "of fleet.yaml.)"),
    "maintenance.update_command": Changes(["upgrade-it"], lambda f: _a(f).maintenance.update_command),
    "maintenance.windows.[].kind": Changes("deny", lambda f: _a(f).maintenance.windows[0].kind),
    "maintenance.windows.[].schedule": Changes("0 4 * * *", lambda f: _a(f).maintenance.windows[0].schedule),
    "maintenance.windows.[].duration": Changes("2h", lambda f: _a(f).maintenance.windows[0].duration),
    "maintenance.windows.[].timezone": Changes("Europe/Berlin", lambda f: _a(f).maintenance.windows[0].timezone),
    "profiles.*.command": Changes(["./my-hermes"], lambda f: _a(f).command),
    "profiles.*.cwd": Changes("work", lambda f: _a(f).cwd),
    "profiles.*.env": Changes({"FOO": "bar"}, _env("FOO")),
    "profiles.*.match": Changes("gateway .*", lambda f: _a(f).match),
    "profiles.*.desired": Changes("stopped", lambda f: _a(f).desired),
    "profiles.*.suspend": Changes(True, lambda f: _a(f).suspend),
    "profiles.*.prune": Changes(False, lambda f: _a(f).prune),
}


# -- the walk ---------------------------------------------------------------------------------

def _resolve(node: Any) -> Any:
    """A schema node with its $ref followed; keys beside the $ref add to (and win over) the target's."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = SCHEMA
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        if "properties" in target and "properties" in node:
            merged["properties"] = {**target["properties"], **node["properties"]}
        node = merged
    return node


def _children(node: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    node = _resolve(node)
    if not isinstance(node, dict):
        return []
    if "properties" in node:
        return [(path + (key,), sub) for key, sub in node["properties"].items()]
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        return _children(node["items"], path + ("[]",))
    if isinstance(node.get("additionalProperties"), dict) and "properties" in _resolve(node["additionalProperties"]):
        return _children(node["additionalProperties"], path + ("*",))
    return []


def walk(node: Any = SCHEMA, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every settable leaf: a property with nothing inside it to set (a mapping of its own, such as env, is a leaf)."""
    out = []
    for child, sub in _children(node, path):
        inner = walk(sub, child)
        out.extend(inner if inner else [child])
    return out


PATHS = walk()


def _row(path: tuple[str, ...]) -> Changes | Refused | None:
    dotted = ".".join(path)
    if dotted in EXPECT:
        return EXPECT[dotted]
    if path[:2] == ("profiles", "*"):
        return EXPECT.get(".".join(path[2:]))
    return None


# -- manifests --------------------------------------------------------------------------------

def _merge(into: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _documents(path: tuple[str, ...], value: Any, extra: dict | None) -> tuple[dict, dict]:
    """The base manifest and the one with `path` set to `value`; lists on the way hold one base window."""
    base: dict = {"version": 1, "profiles": {"a": {}}}
    _merge(base, extra or {})
    changed = copy.deepcopy(base)
    for doc in (base, changed):
        node = doc
        for step, nxt in itertools.pairwise(path):
            key = "a" if step == "*" else step
            if key == "[]":
                continue
            node = node.setdefault(key, [dict(WINDOW)])[0] if nxt == "[]" else node.setdefault(key, {})
    node = changed
    for step, nxt in itertools.pairwise(path):
        key = "a" if step == "*" else step
        if key == "[]":
            continue
        node = node[key][0] if nxt == "[]" else node[key]
    node[path[-1]] = value
    return base, changed


def _parse(doc: dict, tmp_path) -> FleetSpec:
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    return parse_manifest(text, "fleet.yaml", base_dir=str(tmp_path)).spec


def test_the_walk_reaches_both_levels_and_the_windows():
    dotted = {".".join(p) for p in PATHS}
    assert {"restart.cap", "profiles.*.restart.cap", "maintenance.windows.[].timezone",
            "profiles.*.maintenance.windows.[].schedule", "profiles.*.env", "version"} <= dotted
    assert len(PATHS) > 50


def test_every_property_has_a_row():
    missing = [".".join(p) for p in PATHS if _row(p) is None]
    assert not missing, ("schema properties with no row in EXPECT (say what each one changes, or refuse it): "
                         + ", ".join(missing))


def test_every_row_names_a_property_of_the_schema():
    dotted = {".".join(p) for p in PATHS} | {".".join(p[2:]) for p in PATHS if p[:2] == ("profiles", "*")}
    assert not set(EXPECT) - dotted


@pytest.mark.parametrize("path", PATHS, ids=[".".join(p) for p in PATHS])
def test_setting_the_property_changes_what_its_row_says(path, tmp_path):
    row = _row(path)
    if row is None:
        pytest.skip("no row: test_every_property_has_a_row fails for it")
    if isinstance(row, Refused):
        _, changed = _documents(path, row.value, None)
        with pytest.raises(ManifestError) as info:
            _parse(changed, tmp_path)
        assert row.message in str(info.value)
        return
    base_doc, changed_doc = _documents(path, row.value, row.base)
    base, changed = _parse(base_doc, tmp_path), _parse(changed_doc, tmp_path)
    assert row.part(base) != row.part(changed), f"{'.'.join(path)}: {row.value!r} left the effective spec as it was"


def test_a_profiles_max_concurrent_is_refused_where_it_is_written(tmp_path):
    """It used to be accepted and ignored: only the fleet-wide value ever counted."""
    text = ("version: 1\nmaintenance: {max_concurrent: 2}\nprofiles:\n"
            "  a: {maintenance: {idle: 5m, max_concurrent: 3}}\n")
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "fleet.yaml", base_dir=str(tmp_path))
    assert [p.render() for p in info.value.problems] == [
        "fleet.yaml:4:31: profiles.a.maintenance.max_concurrent: 'max_concurrent' cannot be set in a profile "
        "(Fleet-wide only: the budget counts profiles across the whole fleet, so set maintenance.max_concurrent "
        "at the top level of fleet.yaml.)"]


@pytest.mark.parametrize("duration, message", [
    ("0s", "fleet.yaml:3:47: maintenance.windows[0].duration: expected a duration above 0; found '0s' "
           "(a window of no length is never open)"),
    (0, "fleet.yaml:3:47: maintenance.windows[0].duration: expected a duration above 0; found 0 "
        "(a window of no length is never open)"),
])
def test_a_window_of_no_length_is_refused(duration, message, tmp_path):
    text = f"version: 1\nmaintenance:\n  windows: [{{schedule: '0 3 * * *', duration: {duration}}}]\nprofiles: {{a: {{}}}}\n"
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "fleet.yaml", base_dir=str(tmp_path))
    assert [p.render() for p in info.value.problems] == [message]


@pytest.mark.parametrize("schedule", ["0 3 30 2 *", "0 3 31 4,6,9,11 */1"])
def test_a_window_that_never_opens_is_refused(schedule, tmp_path):
    text = f"version: 1\nmaintenance:\n  windows: [{{schedule: '{schedule}', duration: 1h}}]\nprofiles: {{a: {{}}}}\n"
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "fleet.yaml", base_dir=str(tmp_path))
    assert [p.render() for p in info.value.problems] == [
        "fleet.yaml:3:24: maintenance.windows[0].schedule: this schedule never fires: no month in it has that day "
        "(day-of-month and day-of-week combine with AND when either starts with '*')"]


def test_a_hermes_block_in_a_process_profile_is_refused(tmp_path):
    """The process driver runs `command` as written: a profile's hermes.home and hermes.command were ignored."""
    text = "version: 1\nprofiles:\n  w: {driver: process, command: [./gw.sh], hermes: {home: ./h}}\n"
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "fleet.yaml", base_dir=str(tmp_path))
    assert [p.render() for p in info.value.problems] == [
        "fleet.yaml:3:52: profiles.w.hermes: the process driver does not use 'hermes' (home, command) "
        "(remove it, or set driver: hermes)"]
