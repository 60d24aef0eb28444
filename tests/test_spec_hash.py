"""spec_hash: the restart trigger. Versioned, canonical, restart-relevant fields only, pinned
by golden values, blind to the controller's own environment; and the FleetSpec JSON codec."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import profile_spec, with_changes
from fleet.plan.fielddiff import diff_specs, flatten
from fleet.spec.codec import fleet_digest, fleet_from_dict, fleet_to_dict, profile_from_dict, profile_to_dict
from fleet.spec.hashing import SPEC_HASH_VERSION, canonical_json, hash_version, same_secret, sha256_hex, spec_hash_of
from fleet.spec.load import parse_manifest
from fleet.spec.model import (
    DrainPolicy, HealthPolicy, MaintenancePolicy, MaintenanceWindow, ProfileSpec, RestartPolicy,
)

POSIX_PATHS = os.sep == "/"

GOLDEN_CANONICAL = (
    '{"command":["hermes","-p","advisor","gateway","run","--external-supervisor"],"cwd":"/srv/hermes",'
    '"driver":"hermes","env":{"HERMES_GATEWAY_EXTERNAL_SUPERVISOR":"1","HERMES_GATEWAY_MAX_STARTS":"0",'
    '"HERMES_HOME":"/srv/hermes","HERMES_S6_SUPERVISED_CHILD":"1","HERMES_SUPERVISED_CHILD":"1",'
    '"NO_PROXY":"127.0.0.1,localhost,::1","no_proxy":"127.0.0.1,localhost,::1"},'
    '"hermes_home":"/srv/hermes/profiles/advisor"}'
)
GOLDEN_HASH = "v1:638ba56de0cec0c05e7e7734ff82ed3f14e9063bd3a06d0b462161e2d090f777"

GOLDEN_MANIFEST = """\
version: 1
name: golden
hermes:
  home: /srv/hermes
  command: [/usr/local/bin/hermes]
proxy:
  url: http://proxy.internal:3128
  no_proxy: [internal.example]
profiles:
  default: {}
  advisor:
    env: {TELEGRAM_BOT_TOKEN: 'abc:123', LOG_LEVEL: debug, WORKERS: 4}
  worker:
    driver: process
    command: [./bin/worker, --queue, jobs]
    cwd: ./work
"""
GOLDEN_MANIFEST_HASHES = {
    "advisor": "v1:6995e6052c92b41facb775ace49ef249dc9e9e13d297a4da5fc31c854907e807",
    "default": "v1:1c6cfa922b0f5f2d59ba8ab659112fec9aed2a38c69da8d9ada645a02a2c30ab",
    "worker": "v1:c495dfb1fb87625510e089c6becd3f276019fd9eabc29db905b8512e6c331d0d",
}
GOLDEN_MANIFEST_DIGEST = "sha256:8626c8e300d78cef8bab3bf966dc86ed10e8574a2a872f0cc5b3eafe3e9fb69f"


EXAMPLE_HASHES = {  # the examples as if checked out at /srv/fleet, with HOME=/home/op
    "examples/demo/fleet.yaml": {
        "advisor": "v1:8683aeba58eba6a19262406b5e48405749fee864b809e17a7cbe345d0cbd7482",
        "analyst": "v1:eec9df47130078d9e204fd0b1841bb1598b07a35008727af60d127737bbc5125",
        "executor": "v1:8cd0c124acae4f96e4ee3970374c77739d16b21a34f5f29aec64e08395c21b0a",
    },
    "examples/anchors/fleet.yaml": {  # YAML merge keys: these move if the merge rule does
        "advisor": "v1:4bd70ba07c6bd8a714ddb02d52b418ead061918109e377506c1eaccea10e766b",
        "analyst": "v1:f851d21886a74be62684fcc118ddd6532d2986e7fd7a634b04d95351ab5fed6c",
        "archivist": "v1:7d7c309f7a8ef00f44f3b7d14ab572c0cfb261149006ac509527c3f8cdab8226",
        "auditor": "v1:b5f515bf55577aa070ec786b7b6dafbc99ba93f964d4c4be56dc10e21ef52809",
        "executor": "v1:3c4e955150369325ba5c4a66efadb48be575a00cdf2f9e45914ee87329789b0f",
    },
}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def golden_spec(**changes) -> ProfileSpec:
    """A fixed spec written out in full, so the golden hash depends on nothing else in the project."""
    spec = ProfileSpec(
        name="advisor", driver="hermes",
        command=("hermes", "-p", "advisor", "gateway", "run", "--external-supervisor"),
        cwd="/srv/hermes",
        env=(("HERMES_GATEWAY_EXTERNAL_SUPERVISOR", "1"), ("HERMES_GATEWAY_MAX_STARTS", "0"),
             ("HERMES_HOME", "/srv/hermes"), ("HERMES_S6_SUPERVISED_CHILD", "1"), ("HERMES_SUPERVISED_CHILD", "1"),
             ("NO_PROXY", "127.0.0.1,localhost,::1"), ("no_proxy", "127.0.0.1,localhost,::1")),
        hermes_home="/srv/hermes/profiles/advisor",
        desired="running", suspend=False, prune=True, stagger=2.5,
        restart=RestartPolicy(policy="always", backoff=(1.0,), cap=64.0, reset_after=60.0),
        drain=DrainPolicy(timeout=60.0),
        health=HealthPolicy(heartbeat_stale=90.0, startup_grace=60.0),
        maintenance=MaintenancePolicy(idle=1200.0, max_concurrent=1, update_command=("hermes", "update")),
    )
    return dataclasses.replace(spec, **changes) if changes else spec


def golden_manifest_spec(text: str = GOLDEN_MANIFEST):
    return parse_manifest(text, "fleet.yaml", base_dir="/srv/fleet")


# -- golden --------------------------------------------------------------------------------

def test_golden_spec_hash():
    spec = golden_spec()
    assert canonical_json(spec.restart_relevant()) == GOLDEN_CANONICAL
    assert spec.spec_hash == GOLDEN_HASH
    # computed here without the project's helpers, so a change in hashing.py cannot hide itself
    assert "v1:" + hashlib.sha256(GOLDEN_CANONICAL.encode("utf-8")).hexdigest() == GOLDEN_HASH


@pytest.mark.skipif(not POSIX_PATHS, reason="the golden manifest resolves POSIX paths")
def test_golden_manifest_hashes_and_digest():
    m = golden_manifest_spec()
    assert {p.name: p.spec_hash for p in m.spec.profiles} == GOLDEN_MANIFEST_HASHES
    assert m.digest == GOLDEN_MANIFEST_DIGEST


@pytest.mark.skipif(not POSIX_PATHS, reason="the examples resolve POSIX paths")
@pytest.mark.parametrize("example", sorted(EXAMPLE_HASHES))
def test_example_hashes_are_golden(example, monkeypatch):
    """The shipped examples' hashes are pinned: a dependency release or a loader change that
    moves them would restart every gateway of a user who changed nothing."""
    monkeypatch.setenv("HOME", "/home/op")
    with open(os.path.join(REPO, example), encoding="utf-8") as f:
        m = parse_manifest(f.read(), example, base_dir=os.path.join("/srv/fleet", os.path.dirname(example)))
    assert {p.name: p.spec_hash for p in m.spec.profiles} == EXAMPLE_HASHES[example]


@pytest.mark.skipif(not POSIX_PATHS, reason="the golden manifest resolves POSIX paths")
def test_golden_manifest_effective_values():
    """What the golden hashes stand for, spelled out."""
    m = golden_manifest_spec()
    advisor, default, worker = (m.spec.profile(n) for n in ("advisor", "default", "worker"))
    assert advisor.command == ("/usr/local/bin/hermes", "-p", "advisor", "gateway", "run", "--external-supervisor")
    assert default.command == ("/usr/local/bin/hermes", "gateway", "run", "--external-supervisor")
    assert worker.command == ("/srv/fleet/bin/worker", "--queue", "jobs")
    assert worker.cwd == "/srv/fleet/work"
    assert advisor.env_map["WORKERS"] == "4" and advisor.env_map["https_proxy"] == "http://proxy.internal:3128"
    assert worker.env_map["NO_PROXY"] == "127.0.0.1,localhost,::1,internal.example"


# -- the hash's shape ---------------------------------------------------------------------------

def test_hash_is_versioned_sha256():
    h = golden_spec().spec_hash
    prefix, _, digest = h.partition(":")
    assert prefix == SPEC_HASH_VERSION == "v1"
    assert len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    assert hash_version(h) == "v1"


@pytest.mark.parametrize("value, version", [("v1:abc", "v1"), ("v2:abc", "v2"), ("abc", ""), ("", ""),
                                            ("v1:a:b", "v1")])
def test_hash_version(value, version):
    assert hash_version(value) == version


def test_canonical_json_is_sorted_compact_utf8_and_keeps_list_order():
    assert canonical_json({"b": [3, 1, 2], "a": {"z": 1, "y": "é"}}) == '{"a":{"y":"é","z":1},"b":[3,1,2]}'
    assert sha256_hex("é") == hashlib.sha256("é".encode()).hexdigest()
    assert spec_hash_of({"x": 1}) == "v1:" + hashlib.sha256(b'{"x":1}').hexdigest()


def test_env_order_does_not_matter():
    spec = golden_spec()
    shuffled = golden_spec(env=tuple(reversed(spec.env)))
    assert shuffled.spec_hash == spec.spec_hash


def test_command_order_matters():
    spec = golden_spec()
    assert golden_spec(command=tuple(reversed(spec.command))).spec_hash != spec.spec_hash


def test_hash_is_recomputed_on_replace_and_ignored_by_equality():
    spec = golden_spec()
    changed = dataclasses.replace(spec, cwd="/elsewhere")
    assert changed.spec_hash != spec.spec_hash
    assert changed.spec_hash == spec_hash_of(changed.restart_relevant())
    forged = dataclasses.replace(spec, spec_hash="v1:forged")
    assert forged.spec_hash == spec.spec_hash  # always derived, never taken from the caller


# -- what is in, what is out ----------------------------------------------------------------------

RESTART_RELEVANT = {
    "command": dict(command=("hermes", "-p", "advisor", "gateway", "run", "--external-supervisor", "--x")),
    "cwd": dict(cwd="/srv/other"),
    "env value": dict(env=(("HERMES_HOME", "/srv/hermes"), ("NO_PROXY", "127.0.0.1,localhost,::1,a"))),
    "env key added": dict(env=golden_spec().env + (("ZZZ", "1"),)),
    "driver": dict(driver="process"),
    "hermes_home": dict(hermes_home="/srv/hermes/profiles/other"),
}

POLICY = {
    "name": dict(name="renamed"),
    "desired": dict(desired="stopped"),
    "suspend": dict(suspend=True),
    "prune": dict(prune=False),
    "stagger": dict(stagger=30.0),
    "restart.policy": dict(restart=RestartPolicy("never", (1.0,), 64.0, 60.0)),
    "restart.backoff": dict(restart=RestartPolicy("always", (5.0, 10.0), 64.0, 60.0)),
    "restart.cap": dict(restart=RestartPolicy("always", (1.0,), 5.0, 60.0)),
    "restart.reset_after": dict(restart=RestartPolicy("always", (1.0,), 64.0, 1.0)),
    "drain": dict(drain=DrainPolicy(timeout=5.0)),
    "health.heartbeat_stale": dict(health=HealthPolicy(heartbeat_stale=1.0, startup_grace=60.0)),
    "health.startup_grace": dict(health=HealthPolicy(heartbeat_stale=90.0, startup_grace=1.0)),
    "maintenance.idle": dict(maintenance=MaintenancePolicy(1.0, 1, ("hermes", "update"))),
    "maintenance.max_concurrent": dict(maintenance=MaintenancePolicy(1200.0, 5, ("hermes", "update"))),
    "maintenance.update_command": dict(maintenance=MaintenancePolicy(1200.0, 1, ("other",))),
    "maintenance.windows": dict(maintenance=MaintenancePolicy(1200.0, 1, ("hermes", "update"), (
        MaintenanceWindow("allow", "0 3 * * *", 3600.0, "UTC"),))),
    "match": dict(match="gateway"),
}


@pytest.mark.parametrize("field", sorted(RESTART_RELEVANT))
def test_restart_relevant_fields_change_the_hash(field):
    assert golden_spec(**RESTART_RELEVANT[field]).spec_hash != GOLDEN_HASH


@pytest.mark.parametrize("field", sorted(POLICY))
def test_policy_fields_do_not_change_the_hash(field):
    changed = golden_spec(**POLICY[field])
    assert changed != golden_spec()
    assert changed.spec_hash == GOLDEN_HASH


def test_restart_relevant_covers_exactly_these_fields():
    assert set(golden_spec().restart_relevant()) == {"command", "cwd", "env", "driver", "hermes_home"}




@pytest.mark.skipif(not POSIX_PATHS, reason="the golden manifest resolves POSIX paths")
@pytest.mark.parametrize("block", [
    "restart: {policy: never, backoff: [5s], cap: 5s, reset_after: 1s}",
    "drain: {timeout: 5s}",
    "health: {heartbeat_stale: 5s, startup_grace: 5s}",
    "maintenance: {idle: 1m, update_command: [x], windows: [{schedule: '0 3 * * *', duration: 1h}]}",
    "stagger: 9s",
    "desired: stopped",
    "suspend: true",
    "prune: false",
    "match: 'gw.*'",
])
def test_policy_edits_in_a_manifest_keep_every_hash(block):
    text = GOLDEN_MANIFEST.replace("  advisor:\n", f"  advisor:\n    {block}\n")
    m = golden_manifest_spec(text)
    assert {p.name: p.spec_hash for p in m.spec.profiles} == GOLDEN_MANIFEST_HASHES
    assert m.digest != GOLDEN_MANIFEST_DIGEST  # the desired state did change


@pytest.mark.skipif(not POSIX_PATHS, reason="the golden manifest resolves POSIX paths")
@pytest.mark.parametrize("old, new, changed", [
    ("LOG_LEVEL: debug", "LOG_LEVEL: info", {"advisor"}),
    ("url: http://proxy.internal:3128", "url: http://proxy-b.internal:3128", {"advisor", "default", "worker"}),
    ("no_proxy: [internal.example]", "no_proxy: [internal.example, b.example]", {"advisor", "default", "worker"}),
    ("home: /srv/hermes", "home: /srv/hermes2", {"advisor", "default"}),
    ("command: [/usr/local/bin/hermes]", "command: [hermes]", {"advisor", "default"}),
    ("--queue, jobs]", "--queue, other]", {"worker"}),
    ("cwd: ./work", "cwd: ./work2", {"worker"}),
])
def test_restart_relevant_edits_in_a_manifest_change_exactly_the_affected_hashes(old, new, changed):
    assert old in GOLDEN_MANIFEST
    m = golden_manifest_spec(GOLDEN_MANIFEST.replace(old, new))
    differs = {p.name for p in m.spec.profiles if p.spec_hash != GOLDEN_MANIFEST_HASHES[p.name]}
    assert differs == changed


@pytest.mark.skipif(not POSIX_PATHS, reason="the golden manifest resolves POSIX paths")
def test_the_controllers_own_environment_is_never_hashed(monkeypatch):
    before = golden_manifest_spec()
    for key, value in {
        "PATH": "/nowhere", "HOME": "/home/elsewhere", "LANG": "C", "TZ": "Asia/Tokyo", "USER": "other",
        "HTTP_PROXY": "http://inherited:1", "http_proxy": "http://inherited:2", "HTTPS_PROXY": "http://inherited:3",
        "NO_PROXY": "inherited.example", "no_proxy": "inherited.example", "ALL_PROXY": "socks5://inherited:4",
        "HERMES_HOME": "/inherited/hermes", "HERMES_FLEET_PROFILE": "advisor", "HERMES_FLEET_SPEC_HASH": "v1:x",
        "INVOCATION_ID": "abc", "NOTIFY_SOCKET": "/run/x", "PYTHONPATH": "/x",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TERM", raising=False)
    after = golden_manifest_spec()
    assert {p.name: p.spec_hash for p in after.spec.profiles} == GOLDEN_MANIFEST_HASHES
    assert after.digest == before.digest == GOLDEN_MANIFEST_DIGEST
    for p in after.spec.profiles:
        assert not {"PATH", "HOME", "LANG", "TZ", "USER", "INVOCATION_ID", "PYTHONPATH"} & set(p.env_map)
        assert "inherited" not in json.dumps(p.env_map)


def test_env_holds_only_what_the_fleet_sets():
    spec = golden_manifest_spec().spec.profile("worker")
    assert set(spec.env_map) == {"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                                 "NO_PROXY", "no_proxy"}


def test_fielddiff_forces_replace_exactly_when_the_hash_changes():
    """The diff's `# forces replace` annotation and spec_hash must agree, field by field."""
    base = golden_spec()
    for changes in list(RESTART_RELEVANT.values()) + list(POLICY.values()):
        changed = golden_spec(**changes)
        diffs = diff_specs(base, changed)
        if "name" in changes:
            continue  # the name is the profile's identity, not a field of its diff
        assert diffs, changes
        assert any(d.forces_replace for d in diffs) == (changed.spec_hash != base.spec_hash), (changes, diffs)


def test_fielddiff_marks_every_hashed_field_as_forcing():
    flat = flatten(golden_spec())
    forcing = {path.split(".")[0] for path, (_, forces, _) in flat.items() if forces}
    assert forcing == {"driver", "command", "cwd", "hermes_home", "env"}


# -- codec -------------------------------------------------------------------------------------

@pytest.mark.skipif(not POSIX_PATHS, reason="the golden manifest resolves POSIX paths")
def test_codec_round_trip_preserves_spec_hashes_and_digest():
    text = GOLDEN_MANIFEST.replace("  advisor:\n", "  advisor:\n    match: 'gw'\n    maintenance: {windows: [{kind: deny, "
                                                   "schedule: '0 3 * * mon', duration: 2h, timezone: Europe/Berlin}]}\n")
    spec = golden_manifest_spec(text).spec
    stored = json.dumps(fleet_to_dict(spec), sort_keys=True)
    back = fleet_from_dict(json.loads(stored))
    assert back == spec
    assert [p.spec_hash for p in back.profiles] == [p.spec_hash for p in spec.profiles]
    assert fleet_digest(back) == fleet_digest(spec)
    assert back.profile("advisor").maintenance.windows == spec.profile("advisor").maintenance.windows
    assert isinstance(back.profiles, tuple) and isinstance(back.profile("advisor").env, tuple)


def test_profile_codec_round_trip_of_the_golden_spec():
    spec = golden_spec(match="x", maintenance=MaintenancePolicy(
        1.0, 2, ("u",), (MaintenanceWindow("allow", "*/5 * * * *", 60.0, "UTC"),)))
    back = profile_from_dict(json.loads(json.dumps(profile_to_dict(spec))))
    assert back == spec and back.spec_hash == spec.spec_hash


_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=("Cs",)),
                max_size=8)
_seconds = st.sampled_from([0.0, 0.5, 1.0, 2.5, 60.0, 86400.0, 1e6])
_names = st.sampled_from(["advisor", "default", "a", "x_1", "long-name-0123456789"])
_env_keys = st.sampled_from(["A", "LOG_LEVEL", "TELEGRAM_BOT_TOKEN", "HTTP_PROXY", "x"])
_windows = st.lists(st.builds(MaintenanceWindow, kind=st.sampled_from(["allow", "deny"]),
                              schedule=st.sampled_from(["0 3 * * *", "*/5 * * * mon"]),
                              duration=_seconds, timezone=st.sampled_from(["UTC", "Europe/Berlin"])), max_size=2)


@st.composite
def profile_specs(draw) -> ProfileSpec:
    return profile_spec(
        draw(_names), driver=draw(st.sampled_from(["hermes", "process"])),
        env=draw(st.dictionaries(_env_keys, _text, max_size=3)),
        command=tuple(draw(st.lists(_text.filter(bool), min_size=1, max_size=3))),
        desired=draw(st.sampled_from(["running", "stopped"])), suspend=draw(st.booleans()),
        prune=draw(st.booleans()), stagger=draw(_seconds),
        policy=draw(st.sampled_from(["always", "on-failure", "never"])),
        backoff=tuple(draw(st.lists(_seconds, min_size=1, max_size=3))), drain_timeout=draw(_seconds),
        windows=tuple(draw(_windows)), match=draw(st.none() | _text.filter(bool)),
    )


@settings(max_examples=200, deadline=None, derandomize=True)
@given(profile_specs())
def test_codec_round_trip_property(spec):
    back = profile_from_dict(json.loads(json.dumps(profile_to_dict(spec))))
    assert back == spec
    assert back.spec_hash == spec.spec_hash


# one field changed at a time: policy fields keep the hash, restart-relevant ones change it
_EDITS = st.sampled_from([
    ("policy", lambda s, v: dataclasses.replace(s, desired="stopped" if s.desired == "running" else "running")),
    ("policy", lambda s, v: dataclasses.replace(s, suspend=not s.suspend)),
    ("policy", lambda s, v: dataclasses.replace(s, prune=not s.prune)),
    ("policy", lambda s, v: dataclasses.replace(s, stagger=s.stagger + 1.0)),
    ("policy", lambda s, v: dataclasses.replace(s, restart=dataclasses.replace(s.restart, cap=s.restart.cap + 1))),
    ("policy", lambda s, v: dataclasses.replace(s, drain=DrainPolicy(s.drain.timeout + 1))),
    ("policy", lambda s, v: dataclasses.replace(s, health=HealthPolicy(1.5, 2.5))),
    ("policy", lambda s, v: dataclasses.replace(s, match=(s.match or "") + "x")),
    ("policy", lambda s, v: dataclasses.replace(s, maintenance=dataclasses.replace(s.maintenance, idle=7.0,
                                                                                    update_command=("u", v)))),
    ("restart", lambda s, v: dataclasses.replace(s, command=s.command + (v,))),
    ("restart", lambda s, v: dataclasses.replace(s, cwd=s.cwd + "/" + v)),
    ("restart", lambda s, v: dataclasses.replace(s, hermes_home=s.hermes_home + "/" + v)),
    ("restart", lambda s, v: dataclasses.replace(s, driver="process" if s.driver == "hermes" else "hermes")),
    ("restart", lambda s, v: dataclasses.replace(s, env=s.env + (("ZZ_NEW_" + str(len(s.env)), v),))),
])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(profile_specs(), _EDITS, _text.filter(bool))
def test_only_restart_relevant_edits_change_the_hash(spec, edit, value):
    kind, apply = edit
    changed = apply(spec, value)
    assert (changed.spec_hash != spec.spec_hash) == (kind == "restart")


def test_factory_specs_hash_like_loaded_ones():
    """tests/factories.py mirrors the loader; if they drift, planner tests stop meaning much."""
    if not POSIX_PATHS:
        pytest.skip("POSIX paths")
    loaded = parse_manifest("version: 1\nhermes: {home: /srv/hermes}\nprofiles:\n  advisor: {}\n  default: {}\n",
                            "fleet.yaml", base_dir="/srv/fleet").spec
    for name in ("advisor", "default"):
        built = profile_spec(name)
        assert built == loaded.profile(name)
        assert built.spec_hash == loaded.profile(name).spec_hash
    assert with_changes(profile_spec("advisor"), drain=DrainPolicy(1.0)).spec_hash == profile_spec("advisor").spec_hash


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.binary(max_size=5000)))
def test_the_builtin_digest_is_hashlibs(data):
    """Specs are hashed with CPython's own SHA-256 (no OpenSSL in the controller): the same digest as hashlib's,
    so a gateway started before this change keeps its spec hash."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    assert sha256_hex(data) == hashlib.sha256(raw).hexdigest()


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_a_token_is_the_same_secret_only_when_equal(given_token, expected):
    assert same_secret(given_token, expected) is (given_token == expected)
    assert same_secret(expected, expected)
