"""fleet.yaml -> FleetSpec: effective values and defaults, and every class of invalid manifest
reported with file:line:column, the dotted path, what was expected and what was found.

Also the two small parsers the loader relies on: durations (fleet/spec/durations.py) and
the five-field cron of maintenance windows (fleet/spec/cron.py).
"""

from __future__ import annotations

import os
import textwrap
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.spec import load as load_mod
from fleet.spec import schema
from fleet.spec.cron import last_fire_within, next_fire, parse_cron
from fleet.spec.durations import format_duration, parse_duration
from fleet.spec.errors import ManifestError, Problem
from fleet.spec.load import LOOPBACK_NO_PROXY, Manifest, load_manifest, parse_manifest
from fleet.spec.model import DRIVER_HERMES, DRIVER_PROCESS, MaintenanceWindow

BASE = os.path.join(os.sep, "srv", "fleet")  # the manifest's folder, for parse_manifest
HOME = os.path.join(os.sep, "srv", "hermes")  # an absolute hermes.home
HERMES_MARKERS = {
    "HERMES_GATEWAY_EXTERNAL_SUPERVISOR": "1",
    "HERMES_SUPERVISED_CHILD": "1",
    "HERMES_S6_SUPERVISED_CHILD": "1",
    "HERMES_GATEWAY_MAX_STARTS": "0",
}
LOOPBACK = "127.0.0.1,localhost,::1"
DURATION_EXPECTED = "expected a duration such as 2.5s, 90s, 20m, 1h or a number of seconds"
NAME_EXPECTED = ("expected lower-case letters, digits, '_' or '-', starting with a letter or digit, "
                 "at most 64 characters")


def manifest(body: str, *, home: str | None = HOME) -> str:
    """A manifest text: `version: 1`, an absolute hermes.home (so HOME never matters), then `body`."""
    head = "version: 1\n" + (f"hermes: {{home: {home}}}\n" if home else "")
    return head + textwrap.dedent(body)


def parse(text: str, base_dir: str = BASE) -> Manifest:
    return parse_manifest(text, "fleet.yaml", base_dir=base_dir)


def errors(text: str, base_dir: str = BASE) -> list[str]:
    """Rendered problems of an invalid manifest (it must be refused with ManifestError, nothing else)."""
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "fleet.yaml", base_dir=base_dir)
    problems = info.value.problems
    assert problems, "a ManifestError without problems"
    assert str(info.value) == "\n".join(p.render() for p in problems)
    return [p.render() for p in problems]


def the_error(text: str) -> str:
    found = errors(text)
    assert len(found) == 1, found
    return found[0]


def prof(text: str, name: str = "advisor"):
    spec = parse(text).spec.profile(name)
    assert spec is not None
    return spec


# ============================================================================================
# valid manifests: effective values and schema defaults
# ============================================================================================

class TestDefaults:
    def test_minimal_profile_gets_every_default_from_the_schema(self):
        m = parse(manifest("profiles:\n  advisor: {}\n"))
        fleet = m.spec
        assert fleet.name == "default"
        assert fleet.stagger == 2.5
        assert fleet.max_concurrent_maintenance == 1
        assert fleet.hermes_root == HOME
        assert fleet.default_state_dir == os.path.join(HOME, "gateway")
        assert fleet.names == ("advisor",)
        p = fleet.profile("advisor")
        assert p.driver == DRIVER_HERMES
        assert p.desired == "running" and p.suspend is False and p.prune is True
        assert p.stagger == 2.5
        assert p.restart.policy == "always"
        assert p.restart.backoff == (1.0, 2.0, 4.0, 9.0, 16.0, 25.0, 36.0, 49.0, 64.0)
        assert p.restart.cap == 64.0
        assert p.restart.reset_after == 60.0
        assert p.drain.timeout == 60.0
        assert p.health.heartbeat_stale == 90.0
        assert p.health.startup_grace == 60.0
        assert p.maintenance.idle == 20 * 60.0
        assert p.maintenance.max_concurrent == 1
        assert p.maintenance.windows == ()
        assert p.maintenance.update_command == ("hermes", "update")
        assert p.match is None

    def test_defaults_are_read_from_the_schema_file(self):
        assert schema.defaults("restart") == {"policy": "always", "backoff": [1, 2, 4, 9, 16, 25, 36, 49, 64],
                                              "cap": "64s", "reset_after": "60s", "floor": "0.25s",
                                              "start_limit_burst": 5, "start_limit_interval": "10s"}
        assert schema.defaults("drain") == {"timeout": "60s"}
        assert schema.defaults("health") == {"heartbeat_stale": "90s", "startup_grace": "60s"}
        assert schema.defaults("maintenance") == {"idle": "20m", "max_concurrent": 1, "windows": []}
        assert schema.defaults("hermes") == {"home": "~/.hermes", "command": ["hermes"]}
        assert schema.top_default("stagger") == "2.5s"
        assert schema.top_default("name") == "default"
        assert schema.def_default("driver") == "hermes"

    def test_empty_profiles_map_is_a_valid_empty_fleet(self):
        assert parse(manifest("profiles: {}\n")).spec.profiles == ()

    def test_profiles_are_sorted_by_name(self):
        m = parse(manifest("profiles:\n  zeta: {}\n  alpha: {}\n  mid: {}\n"))
        assert m.spec.names == ("alpha", "mid", "zeta")

    def test_default_hermes_home_is_tilde_dot_hermes(self, monkeypatch):
        monkeypatch.setenv("HOME", os.path.join(os.sep, "home", "someone"))
        m = parse(manifest("profiles:\n  advisor: {}\n", home=None))
        assert m.spec.hermes_root == os.path.join(os.sep, "home", "someone", ".hermes")

    def test_digest_is_stable_and_prefixed(self):
        text = manifest("profiles:\n  advisor: {}\n")
        a, b = parse(text), parse(text)
        assert a.digest == b.digest and a.digest.startswith("sha256:") and len(a.digest) == len("sha256:") + 64
        assert parse(manifest("profiles:\n  advisor: {drain: {timeout: 5s}}\n")).digest != a.digest

    def test_manifest_keeps_its_text_and_path(self):
        text = manifest("profiles:\n  advisor: {}\n")
        m = parse(text)
        assert m.text == text and m.path == "fleet.yaml"


class TestHermesDriver:
    def test_named_profile_command_env_and_home(self):
        p = prof(manifest("profiles:\n  advisor: {}\n"))
        assert p.command == ("hermes", "-p", "advisor", "gateway", "run", "--external-supervisor")
        assert p.hermes_home == os.path.join(HOME, "profiles", "advisor")
        assert p.cwd == HOME
        env = p.env_map
        assert env["HERMES_HOME"] == HOME  # the root, not the profile's own home: -p selects the profile
        for key, value in HERMES_MARKERS.items():
            assert env[key] == value
        assert env["NO_PROXY"] == env["no_proxy"] == LOOPBACK
        assert set(env) == {"HERMES_HOME", "NO_PROXY", "no_proxy", *HERMES_MARKERS}
        assert list(p.env) == sorted(p.env)

    def test_default_profile_is_launched_bare_never_with_p_default(self):
        p = prof(manifest("profiles:\n  default: {}\n"), "default")
        assert p.command == ("hermes", "gateway", "run", "--external-supervisor")
        assert "-p" not in p.command
        assert p.hermes_home == HOME
        assert p.env_map["HERMES_HOME"] == HOME

    def test_hermes_command_prefix_from_top_level_and_profile(self):
        m = parse(manifest(f"""\
            hermes: {{home: {HOME}, command: [uv, run, hermes]}}
            profiles:
              advisor: {{}}
              analyst: {{command: [/opt/hermes/bin/hermes, --verbose]}}
            """, home=None))
        advisor, analyst = m.spec.profile("advisor"), m.spec.profile("analyst")
        assert advisor.command == ("uv", "run", "hermes", "-p", "advisor", "gateway", "run", "--external-supervisor")
        assert advisor.maintenance.update_command == ("uv", "run", "hermes", "update")
        assert analyst.command == ("/opt/hermes/bin/hermes", "--verbose", "-p", "analyst", "gateway", "run",
                                   "--external-supervisor")
        assert analyst.maintenance.update_command == ("/opt/hermes/bin/hermes", "--verbose", "update")

    def test_per_profile_hermes_home(self):
        p = prof(manifest("profiles:\n  advisor: {hermes: {home: /other/root}}\n"))
        assert p.env_map["HERMES_HOME"] == os.path.normpath("/other/root")
        assert p.hermes_home == os.path.join(os.path.normpath("/other/root"), "profiles", "advisor")
        assert p.cwd == os.path.normpath("/other/root")

    def test_explicit_cwd(self):
        assert prof(manifest("profiles:\n  advisor: {cwd: /var/lib/advisor}\n")).cwd == os.path.normpath(
            "/var/lib/advisor")


class TestProcessDriver:
    def test_process_driver_runs_command_with_only_proxy_env(self):
        p = prof(manifest("profiles:\n  advisor: {driver: process, command: [/usr/bin/gw, --port, '8080']}\n"))
        assert p.driver == DRIVER_PROCESS
        assert p.command == ("/usr/bin/gw", "--port", "8080")
        assert p.hermes_home == ""
        assert p.cwd == BASE  # default: the manifest's folder
        assert p.env_map == {"NO_PROXY": LOOPBACK, "no_proxy": LOOPBACK}
        assert p.maintenance.update_command == ()

    def test_fleet_wide_driver_and_profile_override(self):
        m = parse(manifest("""\
            driver: process
            profiles:
              worker: {command: [/bin/worker]}
              advisor: {driver: hermes}
            """))
        assert m.spec.profile("worker").driver == DRIVER_PROCESS
        assert m.spec.profile("advisor").driver == DRIVER_HERMES
        assert m.spec.profile("advisor").command[-3:] == ("gateway", "run", "--external-supervisor")

    def test_process_driver_requires_command(self):
        assert the_error(manifest("profiles:\n  worker: {driver: process}\n")) == (
            "fleet.yaml:4:11: profiles.worker: the process driver needs 'command': the full command line to run, "
            "as a list")

    def test_fleet_wide_process_driver_requires_command_in_each_profile(self):
        found = errors(manifest("driver: process\nprofiles:\n  a: {}\n  b: {command: [x]}\n  c: {}\n"))
        assert found == [
            "fleet.yaml:5:6: profiles.a: the process driver needs 'command': the full command line to run, as a list",
            "fleet.yaml:7:6: profiles.c: the process driver needs 'command': the full command line to run, as a list",
        ]

    def test_missing_command_does_not_hide_the_profiles_other_problems(self):
        found = errors(manifest("""\
            profiles:
              worker:
                driver: process
                env: {HERMES_HOME: x}
                match: '['
            """))
        assert [f.split(": ", 2)[1] for f in found] == ["profiles.worker", "profiles.worker.env.HERMES_HOME",
                                                        "profiles.worker.match"]


class TestPolicyMerging:
    """YAML merge keys have the project's meaning (YAML 1.1): explicit keys win over merged ones,
    and in `<<: [*a, *b]` the mapping listed first wins. The loader resolves merges itself, so
    no PyYAML release can change a profile's effective spec or its spec_hash."""

    MERGE_CASES = (
        # (profile body, expected LOG_LEVEL, expected drain timeout)
        ("{<<: *a}", "a", 10.0),
        ("{<<: [*a, *b]}", "a", 10.0),
        ("{<<: [*b, *a]}", "b", 20.0),
        ("{<<: [*a, *b], env: {LOG_LEVEL: own}}", "own", 10.0),
        ("{env: {LOG_LEVEL: own}, <<: [*b, *a]}", "own", 20.0),
        ("{<<: *c}", "c", 10.0),            # c merges a itself, and its own env wins over a's
        ("{<<: [*c, *b]}", "c", 10.0),
        ("{<<: [*b, *c]}", "b", 20.0),
        ("{<<: [*a], drain: {timeout: 1s}}", "a", 1.0),
    )

    @pytest.mark.parametrize("body,level,timeout", MERGE_CASES)
    def test_merge_rule_is_the_projects_own(self, body, level, timeout):
        m = parse(manifest(f"""\
            profiles:
              a: &a {{env: {{LOG_LEVEL: a}}, drain: {{timeout: 10s}}}}
              b: &b {{env: {{LOG_LEVEL: b}}, drain: {{timeout: 20s}}}}
              c: &c {{<<: *a, env: {{LOG_LEVEL: c}}}}
              p: {body}
            """))
        p = m.spec.profile("p")
        assert (p.env_map["LOG_LEVEL"], p.drain.timeout) == (level, timeout)

    def test_merge_leaves_the_anchored_mapping_untouched(self):
        m = parse(manifest("""\
            profiles:
              a: &a {env: {LOG_LEVEL: a}}
              b: {<<: *a, env: {LOG_LEVEL: b}}
              c: {<<: *a}
            """))
        assert [m.spec.profile(n).env_map["LOG_LEVEL"] for n in "abc"] == ["a", "b", "a"]

    def test_duplicate_own_keys_beside_a_merge_are_still_reported(self):
        found = the_error("version: 1\nprofiles:\n  a: &a {desired: stopped}\n"
                          "  b: {<<: *a, desired: running, desired: stopped}\n")
        assert found.startswith("fleet.yaml:4:33: profiles.b.desired: duplicate key 'desired'")

    def test_a_merge_that_includes_itself_is_refused(self):
        assert "recursive alias" in the_error("version: 1\nprofiles:\n  a: &a {<<: *a}\n")

    def test_fleet_wide_blocks_are_defaults_that_profiles_override_key_by_key(self):
        m = parse(manifest("""\
            stagger: 1s
            restart: {policy: on-failure, backoff: [1s, 3s], cap: 30s}
            drain: {timeout: 15s}
            health: {heartbeat_stale: 20s}
            maintenance: {idle: 5m, max_concurrent: 3}
            profiles:
              advisor:
                stagger: 500ms
                restart: {cap: 10s}
                health: {startup_grace: 2m}
                maintenance: {idle: 1h}
              analyst: {}
            """))
        advisor, analyst = m.spec.profile("advisor"), m.spec.profile("analyst")
        assert m.spec.stagger == 1.0 and m.spec.max_concurrent_maintenance == 3
        assert advisor.stagger == 0.5 and analyst.stagger == 1.0
        assert advisor.restart.policy == "on-failure" and advisor.restart.backoff == (1.0, 3.0)
        assert advisor.restart.cap == 10.0 and analyst.restart.cap == 30.0
        assert advisor.restart.reset_after == 60.0
        assert advisor.drain.timeout == analyst.drain.timeout == 15.0
        assert advisor.health.heartbeat_stale == 20.0 and advisor.health.startup_grace == 120.0
        assert analyst.health.startup_grace == 60.0
        assert advisor.maintenance.idle == 3600.0 and analyst.maintenance.idle == 300.0
        assert advisor.maintenance.max_concurrent == 3

    def test_profile_flags(self):
        p = prof(manifest("profiles:\n  advisor: {desired: stopped, suspend: true, prune: false, match: 'gw .*'}\n"))
        assert (p.desired, p.suspend, p.prune, p.match) == ("stopped", True, False, "gw .*")

    def test_fleet_name(self):
        assert parse(manifest("name: prod-eu_1\nprofiles: {}\n")).spec.name == "prod-eu_1"

    def test_maintenance_windows(self):
        p = prof(manifest("""\
            profiles:
              advisor:
                maintenance:
                  windows:
                    - {schedule: '0 3 * * *', duration: 1h, timezone: Europe/Berlin}
                    - {kind: deny, schedule: '*/5 9-17 * * mon-fri', duration: 90}
            """))
        assert p.maintenance.windows == (
            MaintenanceWindow(kind="allow", schedule="0 3 * * *", duration=3600.0, timezone="Europe/Berlin"),
            MaintenanceWindow(kind="deny", schedule="*/5 9-17 * * mon-fri", duration=90.0, timezone="UTC"),
        )

    def test_yaml_merge_keys_override_without_duplicate_errors(self):
        m = parse(manifest("""\
            profiles:
              advisor: &base
                drain: &drain {timeout: 10s}
                env: {A: '1'}
              analyst:
                <<: *base
                drain:
                  <<: *drain
                  timeout: 20s
              auditor: {<<: [*base, {desired: stopped, env: {B: '2'}}], suspend: true}
            """))
        advisor, analyst, auditor = (m.spec.profile(n) for n in ("advisor", "analyst", "auditor"))
        assert advisor.drain.timeout == 10.0
        assert analyst.drain.timeout == 20.0 and analyst.env_map["A"] == "1"
        # merge sources listed first win over later ones; explicit keys win over all
        assert auditor.env_map.get("A") == "1" and "B" not in auditor.env_map
        assert auditor.desired == "stopped" and auditor.suspend is True

    def test_explicit_duplicate_next_to_a_merge_is_still_an_error(self):
        found = errors(manifest("""\
            profiles:
              advisor: &base {suspend: false}
              analyst:
                <<: *base
                suspend: true
                suspend: false
            """))
        assert found == ["fleet.yaml:8:5: profiles.analyst.suspend: duplicate key 'suspend' (first defined at line 7)"]


class TestDurations:
    @pytest.mark.parametrize("written, seconds", [
        ("2.5s", 2.5), ("90s", 90.0), ("20m", 1200.0), ("1h", 3600.0), ("1h30m", 5400.0), ("500ms", 0.5),
        ("1d", 86400.0), ("90", 90.0), ("2.5", 2.5), ("0", 0.0), ("0s", 0.0),
    ])
    def test_every_duration_form_in_a_manifest(self, written, seconds):
        p = prof(manifest(f"profiles:\n  advisor: {{drain: {{timeout: {written}}}}}\n"))
        assert p.drain.timeout == seconds

    def test_backoff_list_mixes_forms(self):
        p = prof(manifest("profiles:\n  advisor: {restart: {backoff: [500ms, 1, 2.5s, 1m]}}\n"))
        assert p.restart.backoff == (0.5, 1.0, 2.5, 60.0)


class TestProxyEnvironment:
    def test_no_proxy_always_covers_loopback(self):
        assert LOOPBACK_NO_PROXY == ("127.0.0.1", "localhost", "::1")
        p = prof(manifest("profiles:\n  advisor: {}\n"))
        assert p.env_map["NO_PROXY"] == p.env_map["no_proxy"] == LOOPBACK

    def test_one_url_sets_every_scheme_in_both_cases(self):
        p = prof(manifest("proxy: {url: 'http://proxy:3128', no_proxy: [internal.example, localhost]}\n"
                          "profiles:\n  advisor: {}\n"))
        env = p.env_map
        for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            assert env[key] == env[key.lower()] == "http://proxy:3128"
        assert env["NO_PROXY"] == env["no_proxy"] == LOOPBACK + ",internal.example"

    def test_per_scheme_and_per_profile_proxy(self):
        m = parse(manifest("""\
            proxy: {url: 'http://a:1', https: 'http://b:2'}
            profiles:
              advisor: {proxy: {all: 'socks5://c:3', no_proxy: [x.example]}}
              analyst: {}
            """))
        advisor, analyst = m.spec.profile("advisor").env_map, m.spec.profile("analyst").env_map
        assert advisor["http_proxy"] == "http://a:1" and advisor["HTTPS_PROXY"] == "http://b:2"
        assert advisor["ALL_PROXY"] == advisor["all_proxy"] == "socks5://c:3"
        assert advisor["NO_PROXY"] == LOOPBACK + ",x.example"
        assert analyst["ALL_PROXY"] == "http://a:1" and analyst["NO_PROXY"] == LOOPBACK

    def test_proxy_variables_from_env_are_set_in_both_cases_and_no_proxy_merged(self):
        p = prof(manifest("""\
            profiles:
              advisor:
                env: {HTTPS_PROXY: 'http://up:1', http_proxy: 'http://low:2', NO_PROXY: a.example,
                      no_proxy: 'b.example, localhost'}
            """))
        env = p.env_map
        assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://up:1"
        assert env["HTTP_PROXY"] == env["http_proxy"] == "http://low:2"
        assert env["NO_PROXY"] == env["no_proxy"] == LOOPBACK + ",a.example,b.example"


class TestEnvValues:
    def test_keys_are_kept_as_written(self):
        # YAML 1.1 would read NO/ON/OFF as booleans and 007 as 7; keys stay the text the user wrote
        m = parse(manifest("profiles:\n  007:\n    env: {NO: a, ON: b, OFF: c, Y: d}\n"))
        assert m.spec.names == ("007",)
        env = m.spec.profile("007").env_map
        assert (env["NO"], env["ON"], env["OFF"], env["Y"]) == ("a", "b", "c", "d")
        assert "false" not in env and "true" not in env

    def test_scalar_values_are_coerced_to_strings(self):
        p = prof(manifest("""\
            profiles:
              advisor:
                env: {INT: 1, TRUE: true, FLOAT: 1.5, NO: no, OCTAL_TEXT: '007', HEX: 0x10, OFF: False, TEXT: hi}
            """))
        env = p.env_map
        assert (env["INT"], env["TRUE"], env["FLOAT"], env["NO"], env["OCTAL_TEXT"], env["HEX"], env["OFF"],
                env["TEXT"]) == ("1", "true", "1.5", "false", "007", "16", "false", "hi")

    @pytest.mark.parametrize("key", ["HERMES_HOME", "HERMES_GATEWAY_EXTERNAL_SUPERVISOR", "HERMES_SUPERVISED_CHILD",
                                     "HERMES_S6_SUPERVISED_CHILD", "HERMES_GATEWAY_MAX_STARTS",
                                     "HERMES_FLEET_PROFILE", "HERMES_FLEET_SPEC_HASH", "HERMES_FLEET_ANYTHING"])
    def test_reserved_keys_are_refused(self, key):
        text = manifest(f"profiles:\n  advisor:\n    env: {{{key}: x}}\n")
        col = len(f"    env: {{{key}: ") + 1
        assert the_error(text) == (f"fleet.yaml:5:{col}: profiles.advisor.env.{key}: '{key}' is set by "
                                   f"hermes-fleet and cannot be overridden")

    def test_several_reserved_keys_at_once(self):
        found = errors(manifest("profiles:\n  advisor:\n    env: {HERMES_HOME: a, OK: b, HERMES_FLEET_X: c}\n"))
        assert len(found) == 2
        assert {f.split(": ")[1] for f in found} == {"profiles.advisor.env.HERMES_HOME",
                                                      "profiles.advisor.env.HERMES_FLEET_X"}


class TestRelativePaths:
    def test_dot_paths_resolve_against_the_manifest_folder(self):
        m = parse(manifest("""\
            hermes: {home: ./hermes-root, command: [./bin/hermes, --flag, sub/dir]}
            maintenance: {update_command: [../tools/update, ./x]}
            profiles:
              advisor: {cwd: ../work}
              worker: {driver: process, command: [./run.sh, ./arg, ../up, plain/rel, /abs]}
            """, home=None))
        advisor, worker = m.spec.profile("advisor"), m.spec.profile("worker")
        root = os.path.join(BASE, "hermes-root")
        assert m.spec.hermes_root == root
        assert advisor.env_map["HERMES_HOME"] == root
        assert advisor.hermes_home == os.path.join(root, "profiles", "advisor")
        assert advisor.cwd == os.path.normpath(os.path.join(BASE, "..", "work"))
        assert advisor.command[:3] == (os.path.join(BASE, "bin", "hermes"), "--flag", "sub/dir")
        assert advisor.maintenance.update_command == (os.path.normpath(os.path.join(BASE, "..", "tools", "update")),
                                                      os.path.join(BASE, "x"))
        assert worker.command == (os.path.join(BASE, "run.sh"), os.path.join(BASE, "arg"),
                                  os.path.normpath(os.path.join(BASE, "..", "up")), "plain/rel", "/abs")
        assert worker.cwd == BASE

    def test_load_manifest_resolves_against_the_files_folder_not_the_cwd(self, tmp_path, monkeypatch):
        folder = tmp_path / "fleet"
        folder.mkdir()
        (folder / "fleet.yaml").write_text("version: 1\nhermes: {home: ./root}\n"
                                           "profiles:\n  advisor: {cwd: ./w}\n", encoding="utf-8")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        m = load_manifest(os.path.join("..", "fleet", "fleet.yaml"))
        assert m.spec.hermes_root == str(folder.resolve() / "root")
        assert m.spec.profile("advisor").cwd == str(folder.resolve() / "w")
        assert m.spec.profile("advisor").env_map["HERMES_HOME"] == str(folder.resolve() / "root")

    def test_tilde_in_hermes_home_expands(self, monkeypatch):
        monkeypatch.setenv("HOME", os.path.join(os.sep, "home", "u"))
        m = parse(manifest("profiles: {}\n", home="~/hermes"))
        assert m.spec.hermes_root == os.path.join(os.sep, "home", "u", "hermes")


class TestNames:
    @pytest.mark.parametrize("name", ["default", "a", "0", "9to5", "advisor_2", "a-b-c", "x" * 64])
    def test_valid_profile_names(self, name):
        assert parse(manifest(f"profiles:\n  {name}: {{}}\n")).spec.names == (name,)

    @pytest.mark.parametrize("name", ["Advisor", "-x", "_x", "x" * 65, "a.b", "a b", "é", "a/b", "'1 '"])
    def test_invalid_profile_names(self, name):
        shown = name.strip("'")
        assert the_error(manifest(f"profiles:\n  {name}: {{}}\n")) == (
            f"fleet.yaml:4:3: profiles.{shown}: invalid name '{shown}': {NAME_EXPECTED}")

    @pytest.mark.parametrize("name", ["hermes", "test", "tmp", "root", "sudo"])
    def test_reserved_profile_names(self, name):
        assert the_error(manifest(f"profiles:\n  {name}: {{}}\n")) == (
            f"fleet.yaml:4:3: profiles.{name}: profile name '{name}' is reserved by Hermes")

    def test_invalid_fleet_name(self):
        assert the_error(manifest("name: My Fleet\nprofiles: {}\n")) == (
            "fleet.yaml:3:7: name: expected a string matching ^[a-z0-9][a-z0-9_-]{0,63}$; found 'My Fleet'")


# ============================================================================================
# invalid manifests: exact located messages
# ============================================================================================

class TestSchemaErrors:
    def test_wrong_enum_value_names_file_line_column_path_expected_and_found(self):
        text = manifest("""\
            profiles:
              advisor:
                restart:
                  policy: sometimes
            """)
        assert the_error(text) == ("fleet.yaml:6:15: profiles.advisor.restart.policy: expected one of 'always', "
                                   "'on-failure', 'never'; found 'sometimes'")
        with pytest.raises(ManifestError) as raised:
            parse(text)
        problem = raised.value.problems[0]
        assert problem == Problem("fleet.yaml", 6, 15, "profiles.advisor.restart.policy",
                                  "expected one of 'always', 'on-failure', 'never'; found 'sometimes'")
        assert problem.as_json() == {"file": "fleet.yaml", "line": 6, "column": 15,
                                     "path": "profiles.advisor.restart.policy",
                                     "message": "expected one of 'always', 'on-failure', 'never'; found 'sometimes'",
                                     "hint": ""}

    @pytest.mark.parametrize("value, found", [
        ("forever", "'forever'"), ("'5'", "'5'"), ("-1", "-1"), ("true", "True"), ("1 h", "'1 h'"),
        ("1.5.2s", "'1.5.2s'"), ("''", "''"), (".inf", "inf"), ("[1s]", "a list"), ("{a: 1}", "a mapping"),
        ("~", "nothing (null)"), ("31536001", "31536001"),
    ])
    def test_bad_durations(self, value, found):
        assert the_error(manifest(f"profiles:\n  advisor:\n    drain:\n      timeout: {value}\n")) == (
            f"fleet.yaml:6:16: profiles.advisor.drain.timeout: {DURATION_EXPECTED}; found {found}")

    def test_nan_duration_is_refused(self):
        assert the_error(manifest("profiles:\n  advisor:\n    drain:\n      timeout: .nan\n")) == (
            "fleet.yaml:6:16: profiles.advisor.drain.timeout: expected a finite duration, found nan")

    def test_bad_duration_inside_a_list(self):
        assert the_error(manifest("restart: {backoff: [1s, 2x]}\nprofiles: {}\n")) == (
            f"fleet.yaml:3:25: restart.backoff[1]: {DURATION_EXPECTED}; found '2x'")

    @pytest.mark.parametrize("body, expected", [
        ("profiles:\n  a: {command: []}\n", "fleet.yaml:4:16: profiles.a.command: expected at least 1 item(s); found a list"),
        ("profiles:\n  a: {command: ['']}\n", "fleet.yaml:4:17: profiles.a.command[0]: expected a non-empty string; found ''"),
        ("profiles:\n  a: {command: x}\n", "fleet.yaml:4:16: profiles.a.command: expected a list; found 'x'"),
        ("profiles:\n  a: {driver: process, command: [1]}\n", "fleet.yaml:4:34: profiles.a.command[0]: expected a string; found 1"),
        ("profiles:\n  a: {suspend: 'yes please'}\n", "fleet.yaml:4:16: profiles.a.suspend: expected a boolean; found 'yes please'"),
        ("profiles:\n  a: {prune: 1}\n", "fleet.yaml:4:14: profiles.a.prune: expected a boolean; found 1"),
        ("profiles:\n  a: {desired: stop}\n", "fleet.yaml:4:16: profiles.a.desired: expected one of 'running', 'stopped'; found 'stop'"),
        ("profiles:\n  a: {env: [A]}\n", "fleet.yaml:4:12: profiles.a.env: expected a mapping; found a list"),
        ("profiles:\n  a: {env: {A: null}}\n", "fleet.yaml:4:16: profiles.a.env.A: expected string or number or boolean; found nothing (null)"),
        ("profiles:\n  a: {env: {A: [1]}}\n", "fleet.yaml:4:16: profiles.a.env.A: expected string or number or boolean; found a list"),
        ("profiles:\n  a: {env: {1BAD: x}}\n", "fleet.yaml:4:13: profiles.a.env.1BAD: invalid environment variable name '1BAD': expected letters, digits and '_', not starting with a digit"),
        ("profiles:\n  a: {env: {A-B: x}}\n", "fleet.yaml:4:13: profiles.a.env.A-B: invalid environment variable name 'A-B': expected letters, digits and '_', not starting with a digit"),
        ("profiles:\n  a: {match: ''}\n", "fleet.yaml:4:14: profiles.a.match: expected a non-empty string; found ''"),
        ("driver: docker\nprofiles: {}\n", "fleet.yaml:3:9: driver: expected one of 'hermes', 'process'; found 'docker'"),
        ("maintenance: {max_concurrent: 0}\nprofiles: {}\n", "fleet.yaml:3:31: maintenance.max_concurrent: expected a number >= 1; found 0"),
        ("maintenance: {max_concurrent: 1.5}\nprofiles: {}\n", "fleet.yaml:3:31: maintenance.max_concurrent: expected an integer; found 1.5"),
        ("maintenance: {max_concurrent: 1001}\nprofiles: {}\n", "fleet.yaml:3:31: maintenance.max_concurrent: expected a number <= 1000; found 1001"),
        ("proxy: {no_proxy: x}\nprofiles: {}\n", "fleet.yaml:3:19: proxy.no_proxy: expected a list; found 'x'"),
        ("proxy: {url: ''}\nprofiles: {}\n", "fleet.yaml:3:14: proxy.url: expected a non-empty string; found ''"),
        ("profiles:\n  a:\n", "fleet.yaml:4:5: profiles.a: expected a mapping; found nothing (null)"),
        ("profiles:\n  a: 5\n", "fleet.yaml:4:6: profiles.a: expected a mapping; found 5"),
        ("profiles: [a, b]\n", "fleet.yaml:3:11: profiles: expected a mapping; found a list"),
        ("profiles:\n", "fleet.yaml:3:10: profiles: expected a mapping; found nothing (null)"),
    ])
    def test_type_and_value_errors(self, body, expected):
        assert the_error(manifest(body)) == expected

    @pytest.mark.parametrize("text, expected", [
        ("profiles: {}\n", "fleet.yaml:1:1: 'version' is required"),
        ("version: 1\n", "fleet.yaml:1:1: 'profiles' is required"),
        ("version: 2\nprofiles: {}\n", "fleet.yaml:1:10: version: expected 1; found 2"),
        ("version: '1'\nprofiles: {}\n", "fleet.yaml:1:10: version: expected 1; found '1'"),
        ("version: true\nprofiles: {}\n", "fleet.yaml:1:10: version: expected 1; found True"),
    ])
    def test_version_and_required_keys(self, text, expected):
        assert the_error(text) == expected

    def test_empty_hermes_home(self):
        assert the_error("version: 1\nhermes: {home: ''}\nprofiles: {}\n") == (
            "fleet.yaml:2:16: hermes.home: expected a non-empty string; found ''")

    def test_missing_version_and_profiles_both_reported(self):
        assert sorted(errors("name: x\n")) == ["fleet.yaml:1:1: 'profiles' is required",
                                               "fleet.yaml:1:1: 'version' is required"]

    def test_window_errors(self):
        found = errors(manifest("""\
            profiles:
              a:
                maintenance:
                  windows:
                    - {duration: 1h}
                    - {schedule: '* * *', duration: 1h}
                    - {schedule: '0 3 * * *'}
                    - {schedule: '0 3 * * *', duration: 1h, kind: maybe}
            """))
        assert found == [
            "fleet.yaml:7:11: profiles.a.maintenance.windows[0]: 'schedule' is required",
            "fleet.yaml:8:22: profiles.a.maintenance.windows[1].schedule: expected at least 9 characters; found '* * *'",
            "fleet.yaml:9:11: profiles.a.maintenance.windows[2]: 'duration' is required",
            "fleet.yaml:10:55: profiles.a.maintenance.windows[3].kind: expected one of 'allow', 'deny'; found 'maybe'",
        ]


class TestNeverSpawnable:
    """What can never reach a process (a NUL byte in an argument, an environment value or a path)
    is refused by `validate` with file:line:col, not found out by the controller at spawn time."""

    NUL = "text without NUL bytes (no command argument, environment value or path can hold one)"

    @pytest.mark.parametrize("body, where", [
        ('profiles:\n  a: {driver: process, command: ["/bin/echo", "x\\0y"]}\n', "4:47: profiles.a.command[1]"),
        ('hermes: {command: ["her\\0mes"]}\nprofiles:\n  a: {}\n', "2:20: hermes.command[0]"),
        ('profiles:\n  a: {env: {TOKEN: "s\\0"}}\n', "4:20: profiles.a.env.TOKEN"),
        ('profiles:\n  a: {cwd: "/tmp/\\0x"}\n', "4:12: profiles.a.cwd"),
        ('profiles:\n  a: {hermes: {home: "/h\\0"}}\n', "4:22: profiles.a.hermes.home"),
        ('proxy: {url: "http://p\\0:1"}\nprofiles:\n  a: {}\n', "3:14: proxy.url"),
        ('profiles:\n  a: {maintenance: {update_command: ["up\\0"]}}\n', "4:38: profiles.a.maintenance.update_command[0]"),
    ])
    def test_a_nul_byte_is_refused_with_its_location(self, body, where):
        found = errors(manifest(body, home=None) if body.startswith("hermes:") else manifest(body))
        assert len(found) == 1, found
        assert found[0].startswith(f"fleet.yaml:{where}: expected {self.NUL}; found "), found[0]

    @pytest.mark.parametrize("body, where", [
        ("profiles:\n  a: {env: {STAMP: 2001-13-45}}\n", "4:20: profiles.a.env.STAMP"),
        ("profiles:\n  a: {env: {2001-02-30: x}}\n", "4:13: profiles.a.env.2001-02-30"),
        ("profiles:\n  a: {env: {STAMP: 2001-12-14 25:00:00}}\n", "4:20: profiles.a.env.STAMP"),
        ("profiles:\n  a: {env: {STAMP: '2001-12-14', WHEN: 2001-12-14 21:59:43 +25:00}}\n",
         "4:40: profiles.a.env.WHEN"),
    ])
    def test_a_scalar_with_a_types_form_but_no_valid_value_is_located_not_a_crash(self, body, where):
        found = the_error(manifest(body))
        assert found.startswith(f"fleet.yaml:{where}: has the form of a YAML date but is not a valid one ("), found
        assert found.endswith("(quote it to keep it as text)"), found

    def test_the_value_of_a_secret_is_not_shown(self):
        found = the_error(manifest('profiles:\n  a: {env: {API_TOKEN: "hunter\\0two"}}\n'))
        assert "hunter" not in found and self.NUL in found


class TestStartLimitAndRetentionSettings:
    def test_defaults(self):
        spec = parse(manifest("profiles:\n  a: {}\n")).spec
        r = spec.profile("a").restart
        assert (r.floor, r.start_limit_burst, r.start_limit_interval) == (0.25, 5, 10.0)
        assert (spec.retention.max_age, spec.retention.journal_rows, spec.retention.request_rows,
                spec.retention.adopt_log_bytes) == (30 * 86400.0, 100000, 10000, 1048576)

    def test_fleet_wide_and_per_profile_values(self):
        spec = parse(manifest("""\
            restart: {floor: 1s, start_limit_burst: 3, start_limit_interval: 1m}
            retention: {max_age: 2d, journal_rows: 500, request_rows: 50, adopt_log_bytes: 8192}
            profiles:
              a: {}
              b: {restart: {start_limit_burst: 0}}
            """)).spec
        assert (spec.profile("a").restart.floor, spec.profile("a").restart.start_limit_burst,
                spec.profile("a").restart.start_limit_interval) == (1.0, 3, 60.0)
        assert spec.profile("b").restart.start_limit_burst == 0
        assert (spec.retention.max_age, spec.retention.journal_rows, spec.retention.request_rows,
                spec.retention.adopt_log_bytes) == (2 * 86400.0, 500, 50, 8192)

    def test_bad_values_are_located(self):
        assert the_error(manifest("retention: {journal_rows: 5}\nprofiles: {}\n")) == (
            "fleet.yaml:3:27: retention.journal_rows: expected a number >= 100; found 5")
        assert the_error(manifest("restart: {start_limit_interval: soon}\nprofiles: {}\n")).startswith(
            "fleet.yaml:3:33: restart.start_limit_interval: expected a duration")

    def test_settings_left_at_their_defaults_keep_the_digest(self):
        plain = parse(manifest("profiles:\n  a: {}\n"))
        spelled = parse(manifest("restart: {floor: 0.25s, start_limit_burst: 5}\nretention: {max_age: 30d}\n"
                                 "profiles:\n  a: {}\n"))
        assert plain.digest == spelled.digest
        assert parse(manifest("restart: {start_limit_burst: 6}\nprofiles:\n  a: {}\n")).digest != plain.digest


class TestUnknownKeys:
    def test_did_you_mean_in_a_policy_block(self):
        assert the_error(manifest("profiles:\n  advisor:\n    restart:\n      backof: [1]\n")) == (
            "fleet.yaml:6:7: profiles.advisor.restart.backof: unknown key 'backof' (did you mean 'backoff'?)")

    def test_did_you_mean_in_a_profile_and_at_the_top(self):
        found = errors(manifest("profile: {}\nprofiles:\n  advisor: {restrat: {}}\n"))
        assert found == [
            "fleet.yaml:3:1: profile: unknown key 'profile' (did you mean 'profiles'?)",
            "fleet.yaml:5:13: profiles.advisor.restrat: unknown key 'restrat' (did you mean 'restart'?)",
        ]

    def test_unknown_key_without_a_close_match_lists_the_allowed_keys(self):
        assert the_error(manifest("proxy: {nope: 1}\nprofiles: {}\n")) == (
            "fleet.yaml:3:9: proxy.nope: unknown key 'nope' (allowed: url, http, https, all, no_proxy)")
        with pytest.raises(ManifestError) as raised:
            parse(manifest("zzz: 1\nprofiles: {}\n"))
        problem = raised.value.problems[0]
        assert (problem.line, problem.column, problem.path, problem.message) == (3, 1, "zzz", "unknown key 'zzz'")
        assert problem.hint == ("allowed: version, name, hermes, driver, stagger, proxy, restart, drain, health, "
                                "maintenance, retention, metrics, profiles")


class TestBuilderErrors:
    def test_invalid_match_regex(self):
        assert the_error(manifest("profiles:\n  a: {match: '(unclosed'}\n")) == (
            "fleet.yaml:4:14: profiles.a.match: not a valid regular expression: missing ), unterminated subpattern "
            "at position 0")

    @pytest.mark.parametrize("schedule, message", [
        ("61 3 * * *", "minute field: '61' is outside 0-59"),
        ("0 24 * * *", "hour field: '24' is outside 0-23"),
        ("0 3 0 * *", "day-of-month field: '0' is outside 1-31"),
        ("0 3 * 13 *", "month field: '13' is outside 1-12"),
        ("0 3 * * 8", "day-of-week field: '8' is outside 0-7"),
        ("0 3 * * * *", "expected 5 fields (minute hour day month weekday), found 6"),
        ("0 3 * *  ", "expected 5 fields (minute hour day month weekday), found 4"),
        ("*/0 3 * * *", "minute field: bad step '0'"),
        ("0 3 * * fun", "day-of-week field: 'fun' is not a number or a name (sun-sat)"),
    ])
    def test_invalid_cron_schedule(self, schedule, message):
        text = manifest(f"profiles:\n  a:\n    maintenance:\n      windows:\n        - {{schedule: '{schedule}', "
                        f"duration: 1h}}\n")
        assert the_error(text) == (f"fleet.yaml:7:22: profiles.a.maintenance.windows[0].schedule: not a valid cron "
                                   f"schedule: {message}")

    @pytest.mark.parametrize("tz", ["Mars/Olympus", "../etc", "", "utc+1"])
    def test_unknown_time_zone(self, tz):
        text = manifest(f"profiles:\n  a:\n    maintenance:\n      windows:\n        - {{schedule: '0 3 * * *', "
                        f"duration: 1h, timezone: '{tz}'}}\n")
        col = len("        - {schedule: '0 3 * * *', duration: 1h, timezone: ") + 1
        assert the_error(text) == (f"fleet.yaml:7:{col}: profiles.a.maintenance.windows[0].timezone: unknown time "
                                   f"zone '{tz}' (use an IANA name such as Europe/Berlin or UTC)")

    def test_fleet_wide_window_error_points_at_the_fleet_wide_block_once(self):
        text = manifest("maintenance:\n  windows: [{schedule: '0 99 * * *', duration: 1h}]\n"
                        "profiles:\n  a: {}\n  b: {}\n  c: {}\n")
        assert the_error(text) == ("fleet.yaml:4:24: maintenance.windows[0].schedule: not a valid cron schedule: "
                                   "hour field: '99' is outside 0-23")


class TestSeveralErrorsAtOnce:
    def test_all_schema_errors_are_reported_together(self):
        found = errors(manifest("""\
            profiles:
              advisor:
                restart:
                  policy: sometimes
                  backof: [1]
                drain: {timeout: forever}
              Bad: {}
              hermes: {}
              default: {}
            """))
        assert sorted(found) == sorted([
            "fleet.yaml:6:15: profiles.advisor.restart.policy: expected one of 'always', 'on-failure', 'never'; "
            "found 'sometimes'",
            "fleet.yaml:7:7: profiles.advisor.restart.backof: unknown key 'backof' (did you mean 'backoff'?)",
            f"fleet.yaml:8:22: profiles.advisor.drain.timeout: {DURATION_EXPECTED}; found 'forever'",
            f"fleet.yaml:9:3: profiles.Bad: invalid name 'Bad': {NAME_EXPECTED}",
            "fleet.yaml:10:3: profiles.hermes: profile name 'hermes' is reserved by Hermes",
        ])

    def test_all_builder_errors_are_reported_together(self):
        found = errors(manifest("""\
            profiles:
              a:
                env: {HERMES_HOME: x}
                match: '['
                maintenance:
                  windows: [{schedule: '0 25 * * *', duration: 1h, timezone: Nowhere/Land}]
              b: {driver: process}
            """))
        assert [f.split(": ", 2)[1] for f in found] == [
            "profiles.a.env.HERMES_HOME", "profiles.a.match", "profiles.a.maintenance.windows[0].schedule",
            "profiles.a.maintenance.windows[0].timezone", "profiles.b"]

    def test_every_problem_is_located(self):
        text = manifest("profiles:\n  advisor: {restart: {policy: x}, drain: {timeout: y}, zz: 1}\n  B: 1\n")
        with pytest.raises(ManifestError) as info:
            parse(text)
        assert len(info.value.problems) == 5  # B: a bad name, and not a mapping
        for p in info.value.problems:
            assert p.file == "fleet.yaml" and p.line >= 1 and p.column >= 1 and p.path.startswith("profiles.")


# ============================================================================================
# YAML-level problems
# ============================================================================================

class TestYamlProblems:
    def test_duplicate_profile(self):
        assert the_error(manifest("profiles:\n  a: {}\n  b: {}\n  a: {desired: stopped}\n")) == (
            "fleet.yaml:6:3: profiles.a: duplicate key 'a' (first defined at line 4)")

    def test_duplicate_nested_key(self):
        assert the_error(manifest("profiles:\n  a:\n    drain: {timeout: 1s}\n    drain: {timeout: 2s}\n")) == (
            "fleet.yaml:6:5: profiles.a.drain: duplicate key 'drain' (first defined at line 5)")

    def test_duplicate_top_level_and_flow_keys_all_reported(self):
        found = errors("version: 1\nversion: 1\nprofiles: {a: {suspend: true, suspend: false}}\n")
        assert found == [
            "fleet.yaml:2:1: version: duplicate key 'version' (first defined at line 1)",
            "fleet.yaml:3:31: profiles.a.suspend: duplicate key 'suspend' (first defined at line 3)",
        ]

    def test_duplicate_keys_of_different_spelling_but_same_meaning(self):
        # `1` and `"1"` are the same key once keys are strings
        assert the_error("version: 1\nprofiles: {}\nhermes: {home: /h}\nrestart: {1: a, '1': b}\n") == (
            "fleet.yaml:4:17: restart.1: duplicate key '1' (first defined at line 4)")

    def test_multi_document_file(self):
        assert the_error(manifest("profiles: {a: {}}\n---\nversion: 1\nprofiles: {}\n")) == (
            "fleet.yaml:4:1: the file holds more than one YAML document; fleet.yaml must be one document")

    @pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "   \n"])
    def test_empty_file(self, text):
        assert the_error(text) == (
            "fleet.yaml:1:1: the manifest is empty (start with 'version: 1' and a 'profiles:' map)")

    @pytest.mark.parametrize("text", ["- a\n- b\n", "hello\n", "42\n"])
    def test_top_level_must_be_a_mapping(self, text):
        assert the_error(text) == "fleet.yaml:1:1: expected a mapping with 'version' and 'profiles' at the top level"

    def test_unclosed_bracket(self):
        assert the_error("version: 1\nprofiles: {a: [\n") == (
            "fleet.yaml:3:1: not valid YAML: expected the node content, but found '<stream end>'")

    def test_tab_indentation(self):
        assert the_error("version: 1\nprofiles:\n\ta: {}\n") == (
            "fleet.yaml:3:1: not valid YAML: found character '\\t' that cannot start any token")

    def test_bad_indentation(self):
        found = the_error("version: 1\nprofiles:\n  a: {}\n b: {}\n")
        assert found.startswith("fleet.yaml:4:2: not valid YAML: ")

    def test_unprintable_character_is_located_not_a_traceback(self):
        assert the_error("version: 1\nprofiles: {}\n# bell \x07 here\n") == (
            "fleet.yaml:3:8: not valid YAML: unprintable character #x0007 (special characters are not allowed)")

    def test_non_scalar_key(self):
        assert the_error("version: 1\nprofiles: {}\n? [a, b]\n: 1\n") == (
            "fleet.yaml:3:3: a mapping key must be a plain scalar")

    def test_undefined_alias(self):
        assert the_error("version: 1\nprofiles: {a: *nope}\n") == (
            "fleet.yaml:2:15: not valid YAML: found undefined alias 'nope'")

    def test_merge_of_a_scalar(self):
        found = the_error("version: 1\nx: &x 5\nprofiles: {a: {<<: *x}}\n")
        assert found == ("fleet.yaml:2:4: a merge key '<<' takes a mapping (*anchor) or a list of mappings; "
                         "found the scalar '5'")

    def test_merge_of_a_list_holding_a_scalar(self):
        found = the_error("version: 1\nprofiles: {a: {<<: [{desired: stopped}, 3]}}\n")
        assert found == ("fleet.yaml:2:41: a merge key '<<' takes a mapping (*anchor) or a list of mappings; "
                         "found the scalar '3'")

    def test_byte_order_mark_is_accepted(self):
        assert parse("\ufeff" + manifest("profiles: {a: {}}\n")).spec.names == ("a",)

    def test_yaml_tags_for_arbitrary_objects_are_refused(self):
        assert the_error("version: 1\nprofiles: !!python/object:os.system {}\n") == (
            "fleet.yaml:2:11: profiles: unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system'")
        assert the_error("version: 1\nprofiles: {}\nx: !!python/name:os.system ''\n").startswith(
            "fleet.yaml:3:4: not valid YAML: could not determine a constructor for the tag")


class TestHostileDocuments:
    BOMB = "".join(
        [f"a: &a [{', '.join(['lol'] * 10)}]\n"]
        + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)])

    def test_alias_bomb_fails_fast_with_a_clear_located_error(self):
        tracemalloc.start()
        try:
            found = the_error("version: 1\nprofiles: {}\n" + self.BOMB)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert found == ("fleet.yaml:11:1: i: the document expands to more than 250000 nodes once aliases are "
                         "expanded (alias bomb?)")
        # 10**9 nodes if expanded: measured without expanding, so memory stays small
        assert peak < 32 * 1024 * 1024

    def test_alias_bomb_inside_a_profile_is_named_by_its_path(self):
        bomb = "x: &x [" + ", ".join(["lol"] * 100) + "]\n"
        bomb += "y: &y [" + ", ".join(["*x"] * 100) + "]\n"
        text = bomb + "version: 1\nprofiles:\n  a:\n    env:\n      A: [" + \
            ", ".join(["*y"] * 100) + "]\n"
        found = the_error(text)
        assert found.startswith("fleet.yaml:7:7: profiles.a.env.A: the document expands to more than 250000 nodes")

    def test_merge_key_bomb(self):
        lines = ["m0: &m0 {" + ", ".join(f"k{i}: v" for i in range(20)) + "}"]
        for level in range(1, 8):
            refs = ", ".join(f"x{i}: *m{level - 1}" for i in range(20))
            lines.append(f"m{level}: &m{level} {{{refs}}}")
        text = "\n".join(lines) + "\nversion: 1\nprofiles: {a: {<<: *m7}}\n"
        found = the_error(text)
        assert "the document expands to more than 250000 nodes once aliases are expanded (alias bomb?)" in found

    def test_moderate_alias_use_is_fine(self):
        text = "version: 1\nhermes: {home: /h}\nrestart: &r {policy: on-failure}\nprofiles:\n" + "".join(
            f"  p{i}: {{restart: *r}}\n" for i in range(200))
        m = parse(text)
        assert len(m.spec.profiles) == 200
        assert all(p.restart.policy == "on-failure" for p in m.spec.profiles)

    def test_recursive_alias(self):
        assert the_error("version: 1\nprofiles: {}\nx: &x [1, *x]\n") == (
            "fleet.yaml:3:4: a recursive alias: an anchor is used inside its own value")

    def test_recursive_mapping_alias(self):
        assert the_error("version: 1\nprofiles:\n  a: &a {env: {A: *a}}\n") == (
            "fleet.yaml:3:6: a recursive alias: an anchor is used inside its own value")

    @pytest.mark.parametrize("depth", [65, 200, 5000])
    def test_deeply_nested_flow_sequences(self, depth):
        text = "version: 1\nprofiles: {}\nx: " + "[" * depth + "]" * depth + "\n"
        assert the_error(text) == "fleet.yaml:3:68: the document nests deeper than 64 levels"

    def test_deeply_nested_block_mappings(self):
        text = "version: 1\nprofiles: {}\nx:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(100))
        found = the_error(text)
        assert found == "fleet.yaml:67:129: the document nests deeper than 64 levels"

    def test_nesting_built_from_aliases_is_bounded_too(self):
        inner = "[" * 40 + "1" + "]" * 40
        text = f"version: 1\nprofiles: {{}}\na: &a {inner}\nb: " + "[" * 40 + "*a" + "]" * 40 + "\n"
        found = the_error(text)
        assert found.startswith("fleet.yaml:3:31: b[0][0]") and found.endswith(": the document nests deeper than 64 levels")

    def test_just_under_the_depth_limit_is_fine_as_yaml(self):
        text = "version: 1\nprofiles: {}\nx: " + "[" * 60 + "]" * 60 + "\n"
        # valid YAML, refused by the schema only
        assert the_error(text).startswith("fleet.yaml:3:1: x: unknown key 'x'")


class TestFiles:
    def test_load_manifest_from_a_file(self, tmp_path):
        path = tmp_path / "fleet.yaml"
        path.write_text(manifest("profiles:\n  advisor: {}\n"), encoding="utf-8")
        m = load_manifest(path)
        assert m.path == str(path) and m.spec.names == ("advisor",)

    def test_errors_name_the_file_as_given(self, tmp_path):
        path = tmp_path / "my-fleet.yaml"
        path.write_text("version: 1\nprofiles:\n  Bad: {}\n", encoding="utf-8")
        with pytest.raises(ManifestError) as info:
            load_manifest(path)
        assert info.value.problems[0].render() == f"{path}:3:3: profiles.Bad: invalid name 'Bad': {NAME_EXPECTED}"

    def test_non_utf8_file_is_located(self, tmp_path):
        path = tmp_path / "fleet.yaml"
        path.write_bytes(b"version: 1\nprofiles:\n  advisor: {env: {A: \"caf\xe9\"}}\n")
        with pytest.raises(ManifestError) as info:
            load_manifest(path)
        (problem,) = info.value.problems
        assert problem.render() == (f"{path}:3:26: not UTF-8 text: invalid continuation byte at byte 46 "
                                    f"(save the file as UTF-8)")

    def test_utf16_file_is_refused(self, tmp_path):
        path = tmp_path / "fleet.yaml"
        path.write_bytes(manifest("profiles: {}\n").encode("utf-16"))
        with pytest.raises(ManifestError) as info:
            load_manifest(path)
        assert info.value.problems[0].render().startswith(f"{path}:1:1: not UTF-8 text: invalid start byte")

    def test_utf8_text_beyond_ascii_is_fine(self, tmp_path):
        path = tmp_path / "fleet.yaml"
        path.write_text(manifest("profiles:\n  advisor: {env: {GREETING: 'grüß dich ✓'}}\n"), encoding="utf-8")
        assert load_manifest(path).spec.profile("advisor").env_map["GREETING"] == "grüß dich ✓"

    def test_missing_file(self, tmp_path):
        path = tmp_path / "nope.yaml"
        with pytest.raises(ManifestError) as info:
            load_manifest(path)
        assert info.value.problems[0].render() == (
            f"{path}: file not found (pass -f FILE or run in the folder that holds fleet.yaml)")

    def test_directory(self, tmp_path):
        with pytest.raises(ManifestError) as info:
            load_manifest(tmp_path)
        assert info.value.problems[0].render() == f"{tmp_path}: is a directory, expected a fleet.yaml file"

    def test_oversized_file(self, tmp_path, monkeypatch):
        monkeypatch.setattr(load_mod, "MAX_MANIFEST_BYTES", 2 * 1024 * 1024)
        path = tmp_path / "fleet.yaml"
        path.write_text("# " + "x" * (2 * 1024 * 1024) + "\n", encoding="utf-8")
        with pytest.raises(ManifestError) as info:
            load_manifest(path)
        assert info.value.problems[0].render() == f"{path}: the file is larger than 2 MiB"


# ============================================================================================
# never a traceback: anything in, ManifestError or a spec out
# ============================================================================================

_SNIPPETS = [
    "version: 1\n", "profiles:\n", "  advisor: {}\n", "  advisor:\n", "    restart: {policy: never}\n",
    "    drain: {timeout: 5x}\n", "    env: {A: 1}\n", "    env: {HERMES_HOME: x}\n", "  Bad: {}\n", "---\n",
    "x: &a [1, 2]\n", "y: *a\n", "z: *missing\n", "  - item\n", "\t\n", "{", "]\n", "'unclosed\n", "? complex\n",
    "    driver: process\n", "    maintenance: {windows: [{schedule: '0 0 * * *', duration: 1h}]}\n",
    "hermes: {home: /h}\n", "<<: {a: 1}\n", "\x00", "!!binary abc\n", "\ufeff", "é: 1\n", "    <<: *a\n",
]


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_SNIPPETS), max_size=12))
def test_never_a_traceback_on_manifest_like_text(parts):
    try:
        parse_manifest("".join(parts), "fleet.yaml", base_dir=BASE)
    except ManifestError as exc:
        assert exc.problems and all(isinstance(p, Problem) and p.file == "fleet.yaml" for p in exc.problems)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(max_size=200))
def test_never_a_traceback_on_arbitrary_text(text):
    try:
        parse_manifest(text, "fleet.yaml", base_dir=BASE)
    except ManifestError as exc:
        assert exc.problems


# ============================================================================================
# durations.py
# ============================================================================================

class TestParseDuration:
    @pytest.mark.parametrize("value, seconds", [
        (0, 0.0), (90, 90.0), (2.5, 2.5), ("2.5s", 2.5), ("90s", 90.0), ("20m", 1200.0), ("1h", 3600.0),
        ("1d", 86400.0), ("500ms", 0.5), ("1h30m", 5400.0), ("1m30s", 90.0), ("1h1m1s", 3661.0),
        ("  5s ", 5.0), ("5s 5s", 10.0), ("0s", 0.0), ("0.5m", 30.0), ("10ms", 0.01),
    ])
    def test_valid(self, value, seconds):
        assert parse_duration(value) == pytest.approx(seconds)

    @pytest.mark.parametrize("value", ["", "5", "s", "5 s", "-5s", "1.s", ".5s", "5sec", "1e3s", "5S", "1h 30",
                                       "1.5.2s", None, [], {}, "∞"])
    def test_invalid_forms(self, value):
        with pytest.raises(ValueError, match=r"expected a duration such as 2.5s, 90s, 20m, 1h or a number of seconds"):
            parse_duration(value)

    @pytest.mark.parametrize("value, message", [
        (True, "expected a duration, found boolean True"),
        (False, "expected a duration, found boolean False"),
        (-1, "expected a non-negative duration, found -1"),
        (-0.5, "expected a non-negative duration, found -0.5"),
        (float("nan"), "expected a finite duration, found nan"),
        (float("inf"), "expected a finite duration, found inf"),
    ])
    def test_invalid_numbers(self, value, message):
        with pytest.raises(ValueError) as info:
            parse_duration(value)
        assert str(info.value) == message


class TestFormatDuration:
    @pytest.mark.parametrize("seconds, text", [
        (0, "0s"), (2.5, "2.5s"), (1, "1s"), (59, "59s"), (60, "1m"), (90, "1m30s"), (3600, "1h"),
        (5400, "1h30m"), (86400, "1d"), (90061, "1d1h1m1s"), (0.25, "0.2s"), (-90, "-1m30s"), (-2.5, "-2.5s"),
    ])
    def test_table(self, seconds, text):
        assert format_duration(seconds) == text

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(st.integers(min_value=0, max_value=365 * 86400))
    def test_whole_seconds_round_trip(self, seconds):
        assert parse_duration(format_duration(seconds)) == seconds

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(st.floats(min_value=0, max_value=59.94, allow_nan=False))
    def test_sub_minute_values_round_trip_to_a_tenth(self, seconds):
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=0.05 + 1e-9)


# ============================================================================================
# cron.py
# ============================================================================================

def _utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


class TestParseCron:
    def test_fields(self):
        c = parse_cron("*/15 9-17 1,15 jan-mar mon-fri")
        assert c.minutes == frozenset({0, 15, 30, 45})
        assert c.hours == frozenset(range(9, 18))
        assert c.days == frozenset({1, 15})
        assert c.months == frozenset({1, 2, 3})
        assert c.weekdays == frozenset({1, 2, 3, 4, 5})
        assert not c.day_any and not c.weekday_any

    def test_stars(self):
        c = parse_cron("* * * * *")
        assert c.minutes == frozenset(range(60)) and c.hours == frozenset(range(24))
        assert c.days == frozenset(range(1, 32)) and c.months == frozenset(range(1, 13))
        assert c.weekdays == frozenset(range(7)) and c.day_any and c.weekday_any

    @pytest.mark.parametrize("dow, days", [("7", {0}), ("0", {0}), ("sun", {0}), ("SAT", {6}), ("5-7", {5, 6, 0}),
                                           ("0-6/2", {0, 2, 4, 6}), ("mon,wed", {1, 3})])
    def test_weekdays(self, dow, days):
        assert parse_cron(f"0 0 * * {dow}").weekdays == frozenset(days)

    def test_ranges_with_steps_and_lists(self):
        assert parse_cron("1-10/3,59 * * * *").minutes == frozenset({1, 4, 7, 10, 59})
        assert parse_cron("0 0 * DEC *").months == frozenset({12})

    @pytest.mark.parametrize("expr, message", [
        ("", "expected 5 fields (minute hour day month weekday), found 0"),
        ("* * * *", "expected 5 fields (minute hour day month weekday), found 4"),
        ("@reboot", "'@reboot' names no time of day; a window needs one"),
        ("60 * * * *", "minute field: '60' is outside 0-59"),
        ("5-3 * * * *", "minute field: '5-3': the range runs backwards (5 > 3)"),
        ("*/x * * * *", "minute field: bad step 'x'"),
        ("a * * * *", "minute field: 'a' is not a number"),
        ("* -1 * * *", "hour field: '' is not a number"),
        ("* * 32 * *", "day-of-month field: '32' is outside 1-31"),
        ("* * * foo *", "month field: 'foo' is not a number or a name (jan-dec)"),
        ("* * * * mon-", "day-of-week field: '' is not a number"),
    ])
    def test_errors(self, expr, message):
        with pytest.raises(ValueError) as info:
            parse_cron(expr)
        assert str(info.value) == message

    def test_day_of_month_and_weekday_both_restricted_means_either(self):
        c = parse_cron("0 12 13 * fri")  # the 13th, or any Friday
        assert c.matches(_utc(2024, 9, 13, 12, 0))  # Friday the 13th
        assert c.matches(_utc(2024, 9, 6, 12, 0))  # a Friday
        assert c.matches(_utc(2024, 10, 13, 12, 0))  # a Sunday the 13th
        assert not c.matches(_utc(2024, 9, 7, 12, 0))

    def test_only_one_restricted_means_that_one(self):
        assert parse_cron("0 0 * * mon").matches(_utc(2024, 9, 2, 0, 0))
        assert not parse_cron("0 0 * * mon").matches(_utc(2024, 9, 3, 0, 0))
        assert parse_cron("0 0 1 * *").matches(_utc(2024, 9, 1, 0, 0))
        assert not parse_cron("0 0 1 * *").matches(_utc(2024, 9, 2, 0, 0))


class TestCronTimes:
    def test_next_fire_examples(self):
        c = parse_cron("30 3 * * *")
        assert next_fire(c, _utc(2024, 5, 1, 3, 29, 59)) == _utc(2024, 5, 1, 3, 30)
        assert next_fire(c, _utc(2024, 5, 1, 3, 30)) == _utc(2024, 5, 2, 3, 30)  # strictly after
        assert next_fire(parse_cron("0 0 1 1 *"), _utc(2024, 6, 1)) == _utc(2025, 1, 1)
        assert next_fire(parse_cron("0 0 30 2 *"), _utc(2024, 1, 1)) is None  # never fires

    def test_next_fire_leap_day(self):
        assert next_fire(parse_cron("0 0 29 2 *"), _utc(2023, 3, 1), timedelta(days=400)) == _utc(2024, 2, 29)

    def test_last_fire_within(self):
        c = parse_cron("0 3 * * *")
        assert last_fire_within(c, _utc(2024, 5, 1, 3, 59), timedelta(hours=1)) == _utc(2024, 5, 1, 3, 0)
        assert last_fire_within(c, _utc(2024, 5, 1, 4, 0), timedelta(hours=1)) is None  # window [3:00, 4:00)
        assert last_fire_within(c, _utc(2024, 5, 1, 3, 0), timedelta(hours=1)) == _utc(2024, 5, 1, 3, 0)
        assert last_fire_within(c, _utc(2024, 5, 1, 2, 59), timedelta(hours=1)) is None

    def test_time_zone_aware_wall_clock(self):
        from zoneinfo import ZoneInfo
        berlin = ZoneInfo("Europe/Berlin")
        c = parse_cron("0 3 * * *")
        fire = next_fire(c, datetime(2024, 7, 1, 12, 0, tzinfo=berlin))
        assert fire == datetime(2024, 7, 2, 3, 0, tzinfo=berlin)
        assert fire.astimezone(UTC) == _utc(2024, 7, 2, 1, 0)

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(minute=st.sampled_from(["*", "0", "*/7", "15,45", "59"]),
           hour=st.sampled_from(["*", "3", "22-23", "*/5"]),
           dom=st.sampled_from(["*", "1", "13", "28-31", "*/10"]),
           month=st.sampled_from(["*", "2", "jun-aug", "*/4"]),
           dow=st.sampled_from(["*", "0", "mon-fri", "sat"]),
           start=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)))
    def test_next_fire_is_the_first_matching_minute(self, minute, hour, dom, month, dow, start):
        cron = parse_cron(f"{minute} {hour} {dom} {month} {dow}")
        start = start.replace(tzinfo=UTC)
        horizon = timedelta(days=40)
        found = next_fire(cron, start, horizon)
        if found is not None:
            assert found > start and cron.matches(found) and found.second == 0
            assert found - start <= horizon + timedelta(minutes=1)
            # nothing matches in between: check the stretch from start up to `found`, hour by hour
            t = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
            while t < found:
                if t.hour in cron.hours and t.month in cron.months:
                    for m in sorted(cron.minutes):
                        candidate = t.replace(minute=m)
                        if t <= candidate < found:
                            assert not cron.matches(candidate), candidate
                t = t.replace(minute=0) + timedelta(hours=1)
        else:
            # then nothing fires within the horizon, checked day by day at the first allowed hour/minute
            day = start
            while day <= start + horizon - timedelta(days=1):
                probe = day.replace(hour=min(cron.hours), minute=min(cron.minutes), second=0, microsecond=0)
                assert not (probe > start and cron.matches(probe)), probe
                day += timedelta(days=1)


_ANY_VALUE = st.sampled_from([
    None, True, 0, 1, -1, 2.5, float("inf"), "", "x", "5s", "1h30m", "20m", "0ms", "always", "never", "process",
    "hermes", "stopped", "running", "allow", "deny", "UTC", "Europe/Berlin", "Mars/Base", "0 3 * * *", "61 * * * *",
    "./rel", "../up", "~/home", "/abs", "(", ".*", [], ["x"], ["./bin/x", "--flag"], [1, "2s"], {}, {"A": 1},
    {"HERMES_HOME": "x"}, {"url": "http://p:1"}, {"no_proxy": ["a"]}, {"timeout": "1s"}, {"policy": "never"},
    [{"schedule": "0 3 * * *", "duration": "1h"}], [{"schedule": "bad", "duration": 5, "timezone": "Nowhere"}],
])
_BLOCK_KEYS = ["driver", "command", "cwd", "env", "match", "desired", "suspend", "prune", "hermes", "stagger", "proxy",
               "restart", "drain", "health", "maintenance", "home", "policy", "backoff", "cap", "reset_after",
               "timeout", "heartbeat_stale", "startup_grace", "idle", "max_concurrent", "update_command", "windows",
               "url", "http", "no_proxy", "bogus"]
_blocks = st.dictionaries(st.sampled_from(_BLOCK_KEYS), _ANY_VALUE | st.dictionaries(
    st.sampled_from(_BLOCK_KEYS), _ANY_VALUE, max_size=3), max_size=5)


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(top=_blocks, profiles=st.dictionaries(st.sampled_from(["advisor", "default", "Bad", "root", "w-1"]),
                                              _blocks | st.none(), max_size=3))
def test_never_a_traceback_on_structured_manifests(top, profiles):
    """Manifests made of plausible keys and values in any combination: a spec or located problems."""
    import yaml
    doc = {"version": 1, **{k: v for k, v in top.items() if k in ("driver", "stagger", "proxy", "restart", "drain",
                                                                  "health", "maintenance", "hermes")},
           "profiles": profiles}
    text = yaml.safe_dump(doc, sort_keys=False)
    try:
        m = parse_manifest(text, "fleet.yaml", base_dir=BASE)
    except ManifestError as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.file == "fleet.yaml" and p.line >= 1 and p.column >= 1, p
    else:
        for p in m.spec.profiles:
            assert p.env_map["NO_PROXY"].startswith(LOOPBACK)
            assert p.command and all(isinstance(c, str) for c in p.command)


class TestMetrics:
    """`metrics:`: off unless set, loopback unless written out, and never beyond this host without a token."""

    def test_off_by_default_and_absent_from_the_digest(self):
        plain = parse(manifest("profiles: {}\n"))
        assert not plain.spec.metrics.enabled
        from fleet.spec.codec import fleet_to_dict
        assert "metrics" not in fleet_to_dict(plain.spec)  # digests of existing manifests stay what they were

    @pytest.mark.parametrize(("written", "means"), [
        ("9464", "127.0.0.1:9464"), ('":9464"', "127.0.0.1:9464"), ('"localhost:9464"', "127.0.0.1:9464"),
        ('"127.0.0.2:9464"', "127.0.0.2:9464"), ('"[::1]:0"', "[::1]:0"),
    ])
    def test_listen_forms_resolve_to_a_written_out_loopback_address(self, written, means):
        assert parse(manifest(f"metrics: {{listen: {written}}}\nprofiles: {{}}\n")).spec.metrics.listen == means

    def test_a_non_loopback_address_needs_a_token(self):
        assert the_error(manifest('metrics: {listen: "0.0.0.0:9464"}\nprofiles: {}\n')) == (
            "fleet.yaml:3:19: metrics.listen: 0.0.0.0:9464 is reachable from other hosts, and metrics.token_file "
            "is not set (set metrics.token_file (a bearer token Prometheus sends), or listen on 127.0.0.1)")
        spec = parse(manifest('metrics: {listen: "0.0.0.0:9464", token_file: t}\nprofiles: {}\n')).spec
        assert (spec.metrics.listen, spec.metrics.token_file) == ("0.0.0.0:9464", os.path.join(BASE, "t"))

    @pytest.mark.parametrize(("written", "message"), [
        ('"300.1.1.1:80"', "metrics.listen: '300.1.1.1' is not an IPv4 address"),
        ('"127.0.0.1:70000"', "metrics.listen: port '70000' is not a number from 0 to 65535"),
        ("70000", "metrics.listen: expected a number <= 65535; found 70000"),
        ('"[1::2::3]:80"', "metrics.listen: '1::2::3' is not an IPv6 address"),
        ('"host.example:80"', "metrics.listen: expected an address such as 127.0.0.1:9464, [::1]:9464 or :9464; "
                              "found 'host.example:80'"),
    ])
    def test_bad_addresses_say_what_is_wrong(self, written, message):
        assert message in the_error(manifest(f"metrics: {{listen: {written}}}\nprofiles: {{}}\n"))

    def test_paths_are_relative_to_the_manifest_and_survive_the_store(self):
        from fleet.spec.codec import fleet_from_dict, fleet_to_dict
        spec = parse(manifest("metrics: {textfile: out/fleet.prom, listen: 9464}\nprofiles: {}\n")).spec
        assert spec.metrics.textfile == os.path.join(BASE, "out", "fleet.prom")
        assert fleet_from_dict(fleet_to_dict(spec)).metrics == spec.metrics
