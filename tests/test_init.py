"""`hermes-fleet init` on hosts built in temporary directories: what it finds (profiles, live gateways and who
runs them, native units mapped by what they set, proxies, the sticky profile), the fleet.yaml it writes (valid,
commented, never overwritten without --force, no secret value anywhere), and `diff` right after it.

No test touches the real ~/.hermes, the host's systemd or its units: HOME and HERMES_HOME point into tmp_path,
systemd's answers come from a fake runner (in process) or a `systemctl` on PATH that answers nothing (in a
subprocess), and every process a test starts is ended by its PID in the reaper's finalizer."""

from __future__ import annotations

import json
import os
import plistlib
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fleet.cli import init_cmd
from fleet.cli.init_render import apply_text, discovery_json, manifest_text, origin
from fleet.cli.main import app
from fleet.observe.discovery import (
    ADOPT, BY_HAND, BY_SYSTEMD, SPAWN, STOPPED, TAKEOVER, Discovery, Host, PlatformProbe, discover,
)
from fleet.platform import current_platform
from fleet.platform.base import ProcessInfo
from fleet.service.base import CommandResult
from fleet.service.native_units import UnitPlaces, read_windows_script
from fleet.spec.load import parse_manifest
from helpers import reaper, wait_until  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo" / "hermes"
TOKEN = "123456789:FAKE-init-test-token-value-do-not-print"
PROXY_URL = "http://proxyuser:proxy-password-value@proxy.internal:3128"
posix_only = pytest.mark.skipif(os.name != "posix", reason="the demo gateway's flock, a shell systemctl")
NOW = 1_800_000_000.0


# -- the host ----------------------------------------------------------------------------------------

@dataclass
class FakeRunner:
    """systemctl's answers by unit name: (show output, is-enabled output); anything else fails."""
    answers: dict[str, tuple[str, str]] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def run(self, argv, *, timeout: float = 60.0) -> CommandResult:
        argv = tuple(argv)
        self.calls.append(argv)
        unit = argv[-1] if argv[-2] == "is-enabled" else argv[-2]
        if unit not in self.answers:
            return CommandResult(argv, 1, "", "Failed to connect to bus")
        show, enabled = self.answers[unit]
        out = enabled if argv[-2] == "is-enabled" else show
        return CommandResult(argv, 0 if out != "disabled\n" else 1, out, "")


@dataclass
class FakeProbe:
    """Locks, processes and environments as a test sets them."""
    held: set[str] = field(default_factory=set)
    processes: dict[int, ProcessInfo] = field(default_factory=dict)
    environs: dict[int, dict[str, str]] = field(default_factory=dict)
    cgroups: dict[int, str] = field(default_factory=dict)

    def lock_is_held(self, path: str) -> bool:
        return path in self.held

    def process_info(self, pid: int) -> ProcessInfo | None:
        return self.processes.get(pid)

    def process_environ(self, pid: int) -> dict[str, str] | None:
        return self.environs.get(pid)

    def cgroup(self, pid: int) -> str | None:
        return self.cgroups.get(pid)


class Box:
    """A host in tmp_path: HOME, a Hermes root, unit directories."""

    def __init__(self, tmp_path: Path, root_name: str = "root") -> None:
        self.tmp = tmp_path
        self.home = tmp_path / "home"
        self.root = tmp_path / root_name
        self.user_units = self.home / ".config" / "systemd" / "user"
        self.system_units = tmp_path / "etc" / "systemd" / "system"
        self.agents = self.home / "Library" / "LaunchAgents"
        self.home.mkdir(parents=True, exist_ok=True)
        self.runner = FakeRunner()
        self.probe: FakeProbe | PlatformProbe = FakeProbe()

    def profile(self, name: str, **files: str) -> Path:
        home = self.root if name == "default" else self.root / "profiles" / name
        home.mkdir(parents=True, exist_ok=True)
        for fname, text in files.items():
            (home / {"env": ".env", "config": "config.yaml"}.get(fname, fname)).write_text(text)
        return home

    def unit(self, name: str, *, home: Path | str | None, profile: str | None = None, system: bool = False,
             extra: str = "") -> Path:
        folder = self.system_units if system else self.user_units
        folder.mkdir(parents=True, exist_ok=True)
        flag = f" --profile {profile}" if profile else ""
        env = f'Environment="PATH=/venv/bin:/usr/bin" "HERMES_HOME={home}"\n' if home else ""
        path = folder / name
        path.write_text("[Unit]\nDescription=Hermes Agent Gateway - Messaging Platform Integration\n\n[Service]\n"
                        f"Type=simple\nExecStart=/venv/bin/python -m hermes_cli.main{flag} gateway run\n"
                        f"WorkingDirectory={home}\n{env}Restart=always\n{extra}\n[Install]\nWantedBy=default.target\n")
        return path

    def host(self, **environ: str) -> Host:
        env = {"HOME": str(self.home), "HERMES_HOME": str(self.root), "PATH": ""}
        env.update(environ)
        return Host(environ=env, user_home=str(self.home), probe=self.probe, runner=self.runner,
                    places=UnitPlaces((str(self.user_units),), (str(self.system_units),), str(self.agents),
                                      str(self.home)))

    def discover(self, **environ: str) -> Discovery:
        return discover(self.host(**environ))


@pytest.fixture
def box(tmp_path) -> Box:
    return Box(tmp_path)


def manifest_of(d: Discovery, tmp_path: Path) -> tuple[str, object]:
    """The text init writes for `d`, and the spec the project's own loader makes of it."""
    text = manifest_text(d, NOW)
    return text, parse_manifest(text, str(tmp_path / "fleet.yaml"), base_dir=str(tmp_path)).spec


def flat(text: str) -> str:
    """The manifest's comments as one line each paragraph would be, whatever the wrapping."""
    return " ".join(line.strip().lstrip("#").strip() for line in text.splitlines())


def verbs(d: Discovery) -> dict[str, str]:
    return {p.name: p.verb for p in d.listed}


def live(pid: int, argv: tuple[str, ...], start: int = 777) -> ProcessInfo:
    return ProcessInfo(pid=pid, start_ticks=start, create_time=NOW - 60, uid=1000, username=None, cmdline=argv,
                       status="sleeping")


def write_pidfile(home: Path, pid: int, start: int = 777) -> None:
    record = {"pid": pid, "kind": "hermes-gateway", "argv": ["hermes", "gateway", "run"], "start_time": start}
    (home / "gateway.pid").write_text(json.dumps(record))
    (home / "gateway.lock").write_text(json.dumps(record))


# -- hosts, one kind each ------------------------------------------------------------------------------

def test_an_empty_root_gives_a_valid_fleet_without_profiles(box, tmp_path):
    for made in (False, True):  # the root missing, then an empty directory
        if made:
            box.root.mkdir()
        d = box.discover()
        assert d.root == str(box.root) and d.root_exists is made and d.root_source == "$HERMES_HOME"
        assert d.listed == () and d.profile("default") is not None and not d.profile("default").listed
        text, spec = manifest_of(d, tmp_path)
        assert spec.profiles == () and spec.hermes_root == str(box.root)
        assert "profiles: {}" in text
        assert ("does not exist yet" in flat(text)) is (not made)
        assert "default (the root itself) has no .env, config.yaml or gateway: left out" in flat(text)
    assert box.runner.calls == []  # no unit file, so systemd is not asked anything


def test_the_default_profile_alone(box, tmp_path):
    box.profile("default", env="# Per-profile secrets\nLOG_LEVEL=debug\n", config="model: x\n")
    d = box.discover()
    assert verbs(d) == {"default": SPAWN}
    text, spec = manifest_of(d, tmp_path)
    assert spec.names == ("default",) and spec.profiles[0].hermes_home == str(box.root)
    assert "# default: not running." in text and "apply starts it (hermes gateway run --external-supervisor)" in text
    assert "  default: {}" in text


def test_named_profiles_and_what_is_no_profile(box, tmp_path):
    for name in ("alpha", "beta_two", "123", "no"):
        box.profile(name)
    (box.root / "profiles" / "Bad").mkdir()
    (box.root / "profiles" / "default").mkdir()
    (box.root / "profiles" / "test").mkdir()
    (box.root / "profiles" / "notes.txt").write_text("x")
    d = box.discover()
    assert verbs(d) == {"123": SPAWN, "alpha": SPAWN, "beta_two": SPAWN, "no": SPAWN}  # no default: root unused
    assert {name for name, _ in d.skipped} == {"Bad", "default", "test"}
    text, spec = manifest_of(d, tmp_path)
    assert spec.names == ("123", "alpha", "beta_two", "no")  # YAML's 123 and no stay names, quoted
    assert '  "no": {}' in text and '  "123": {}' in text
    assert spec.profile("alpha").hermes_home == str(box.root / "profiles" / "alpha")
    assert "apply starts it (hermes -p alpha gateway run --external-supervisor)" in text
    assert "profiles/Bad is left out: not a valid profile name" in flat(text)


def test_active_profile_is_warned_about_and_followed_by_an_unpinned_default_unit(box, tmp_path):
    box.profile("default", env="X=1\n")
    box.profile("beta")
    (box.root / "active_profile").write_text("beta\n")
    box.unit("hermes-gateway.service", home=box.root)
    d = box.discover()
    assert d.active_profile == "beta"
    (unit,) = d.units
    assert unit.via_active_profile == "beta" and unit.profile == "beta"
    assert verbs(d) == {"default": SPAWN, "beta": TAKEOVER}  # the default unit runs beta, not the root
    text, _ = manifest_of(d, tmp_path)
    header = flat(text.split("version: 1")[0])
    assert "active_profile: " in header and "names 'beta'" in header
    assert "it runs the sticky profile 'beta', not the default" in flat(text)
    # A unit that pins its profile (Hermes skips active_profile under HERMES_S6_SUPERVISED_CHILD) runs the root.
    box.unit("hermes-gateway.service", home=box.root, extra="Environment=HERMES_S6_SUPERVISED_CHILD=1\n")
    d = box.discover()
    assert d.units[0].via_active_profile is None and verbs(d) == {"default": TAKEOVER, "beta": SPAWN}


def test_a_unit_is_mapped_by_what_it_sets_never_by_its_name(box, tmp_path):
    box.profile("x")
    box.profile("y", env=f"TELEGRAM_BOT_TOKEN={TOKEN}\n")
    box.unit("hermes-gateway-x.service", home=box.root / "profiles" / "y", profile="y")
    box.runner.answers["hermes-gateway-x.service"] = (
        "LoadState=loaded\nActiveState=inactive\nSubState=dead\nMainPID=0\n", "enabled\n")
    d = box.discover()
    assert verbs(d) == {"x": SPAWN, "y": TAKEOVER}
    y = d.profile("y")
    assert [f.unit.name for f in y.units] == ["hermes-gateway-x.service"]
    assert origin(y) == "native user systemd unit hermes-gateway-x.service (enabled, inactive (dead)); not running"
    assert "hermes-fleet takeover y" in apply_text(y) and "hermes-fleet release y" in apply_text(y)
    assert ("systemctl", "--user", "is-enabled", "hermes-gateway-x.service") in box.runner.calls
    text, spec = manifest_of(d, tmp_path)
    assert spec.names == ("x", "y")
    assert d.command == ("/venv/bin/python", "-m", "hermes_cli.main")  # as the unit runs Hermes
    assert TOKEN not in text and "tokens stay in" in text and "TELEGRAM_BOT_TOKEN" in text


def test_a_drop_in_overrides_the_units_environment(box):
    box.profile("alpha")
    box.unit("hermes-gateway-alpha.service", home=box.tmp / "elsewhere", profile="alpha")
    dropins = box.user_units / "hermes-gateway-alpha.service.d"
    dropins.mkdir()
    (dropins / "10-home.conf").write_text(f"[Service]\nEnvironment=HERMES_HOME={box.root}/profiles/alpha\n")
    (dropins / "20-proxy.conf").write_text(f'[Service]\nEnvironment="HTTPS_PROXY={PROXY_URL}"\n')
    d = box.discover()
    (unit,) = d.units
    assert unit.this_root and unit.profile == "alpha" and len(unit.unit.dropins) == 2
    assert verbs(d) == {"alpha": TAKEOVER}
    (proxy,) = d.profile("alpha").proxies
    assert proxy.key == "HTTPS_PROXY" and proxy.inherited and "hermes-gateway-alpha.service" in proxy.where
    assert PROXY_URL not in json.dumps(discovery_json(d, path="f", written=False, text=manifest_text(d, NOW)))


def test_a_unit_of_another_root_is_reported_and_its_rewrite_warned_about(box, tmp_path):
    box.profile("alpha")
    other = box.tmp / "other-root" / "profiles" / "alpha"
    other.mkdir(parents=True)
    box.unit("hermes-gateway-alpha.service", home=other, profile="alpha")
    box.unit("hermes-gateway-zeta.service", home=box.tmp / "other-root" / "profiles" / "zeta", profile="zeta",
             system=True)
    d = box.discover()
    assert verbs(d) == {"alpha": SPAWN}  # not this root's: nothing here to take over
    by_name = {f.unit.name: f for f in d.units}
    assert not by_name["hermes-gateway-alpha.service"].this_root
    assert by_name["hermes-gateway-zeta.service"].unit.scope == "system"
    rewrite = [w for w in d.warnings if w.code == "unit_of_another_root" and w.profile == "alpha"]
    assert len(rewrite) == 1 and "rewrites that unit to point here" in rewrite[0].message
    text, _ = manifest_of(d, tmp_path)
    alpha_comment = text.split("  # alpha:")[1]
    assert "warning: hermes-gateway-alpha.service" in alpha_comment
    assert f"runs {box.tmp / 'other-root' / 'profiles' / 'zeta'}, in another Hermes root" in flat(text.split("version")[0])


def test_a_gateway_a_unit_runs_is_taken_over_and_a_multiplexed_profile_stays_stopped(box, tmp_path):
    default = box.profile("default", config="gateway: {multiplex_profiles: true}\n")
    box.profile("alpha")
    box.profile("beta")
    write_pidfile(default, 4242)
    (default / "gateway_state.json").write_text(json.dumps({"gateway_state": "running",
                                                            "served_profiles": ["default", "alpha"]}))
    beta_home = box.root / "profiles" / "beta"
    write_pidfile(beta_home, 4343, start=9)
    probe = FakeProbe(held={str(default / "gateway.lock"), str(beta_home / "gateway.lock")})
    probe.processes[4242] = live(4242, ("/v/bin/python3", "/v/bin/hermes", "gateway", "run"))
    probe.environs[4242] = {"PATH": "/usr/bin", "HTTPS_PROXY": PROXY_URL}
    probe.processes[4343] = live(4343, ("/v/bin/python", "-m", "hermes_cli.main", "--profile", "beta", "gateway",
                                        "run"), start=9)
    probe.environs[4343] = {"INVOCATION_ID": "abc", "HERMES_HOME": str(beta_home)}
    probe.cgroups[4343] = "/user.slice/user-1000.slice/user@1000.service/app.slice/hermes-gateway-beta.service"
    box.probe = probe
    d = box.discover()
    assert d.multiplexer == (4242, ("default", "alpha")) and d.multiplex_configured
    assert verbs(d) == {"default": ADOPT, "alpha": STOPPED, "beta": TAKEOVER}
    assert d.profile("default").gateway.runner == BY_HAND
    assert d.profile("beta").gateway.runner == BY_SYSTEMD and d.profile("beta").gateway.by.endswith("beta.service")
    assert d.command == ("/v/bin/python3", "/v/bin/hermes")
    text, spec = manifest_of(d, tmp_path)
    assert spec.profile("alpha").desired == "stopped" and "  alpha: {desired: stopped}" in text
    assert "served by the default gateway (pid 4242) as a profile multiplexer" in flat(text)
    assert "HTTPS_PROXY is set in the environment of pid 4242, which a gateway the fleet starts does not" in flat(text)
    assert PROXY_URL not in text
    assert any(w.code == "multiplexer_configured" for w in d.warnings)


def test_stale_and_foreign_pidfiles_are_not_live(box):
    home = box.profile("alpha")
    write_pidfile(home, 5151)
    d = box.discover()  # the lock is free: stale
    assert d.profile("alpha").liveness == "stale" and verbs(d) == {"alpha": SPAWN}
    box.probe = FakeProbe(held={str(home / "gateway.lock")},
                          processes={5151: live(5151, ("/usr/bin/vim",))})
    d = box.discover()  # held, but gateway.pid names something else
    assert d.profile("alpha").liveness == "lock_only" and d.profile("alpha").desired == "stopped"
    box.probe = FakeProbe(held={str(home / "gateway.lock")},
                          processes={5151: live(5151, ("/v/bin/hermes", "-p", "alpha", "gateway", "run"), start=1)})
    assert box.discover().profile("alpha").liveness == "lock_only"  # another start time: a reused pid
    box.probe = FakeProbe(held={str(home / "gateway.lock")},
                          processes={5151: live(5151, ("/v/bin/hermes", "-p", "alpha", "gateway", "run"))})
    d = box.discover()  # live, but its environment cannot be read: nothing proves whose it is
    alpha = d.profile("alpha")
    assert alpha.liveness == "live" and alpha.gateway.runner == "unknown"
    assert alpha.verb == "check" and alpha.desired == "stopped"
    assert "hermes -p alpha gateway status" in apply_text(alpha)


def test_launchd_agents_and_windows_launchers_are_read(box):
    box.profile("alpha")
    box.agents.mkdir(parents=True)
    with open(box.agents / "ai.hermes.gateway-alpha.plist", "wb") as fh:
        plistlib.dump({"Label": "ai.hermes.gateway-alpha",
                       "ProgramArguments": ["/v/bin/python", "-m", "hermes_cli.main", "--profile", "alpha", "gateway",
                                            "run", "--replace"],
                       "EnvironmentVariables": {"HERMES_HOME": str(box.root / "profiles" / "alpha"),
                                                "TELEGRAM_BOT_TOKEN": TOKEN}}, fh)
    d = box.discover()
    (unit,) = d.units
    assert unit.unit.manager == "launchd" and unit.profile == "alpha" and verbs(d) == {"alpha": TAKEOVER}
    assert TOKEN not in json.dumps(discovery_json(d, path="f", written=False, text=""))
    script = box.tmp / "Hermes_Gateway_alpha.vbs"
    script.write_text("' Hermes Agent Gateway\r\nSet sh = CreateObject(\"WScript.Shell\")\r\n"
                      "Set env = sh.Environment(\"PROCESS\")\r\n"
                      "env.Item(\"HERMES_HOME\") = \"C:\\Users\\u\\AppData\\Local\\hermes\\profiles\\alpha\"\r\n"
                      "sh.Run \"\"\"C:\\Program Files\\hermes\\pythonw.exe\"\" -m hermes_cli.main --profile alpha "
                      "gateway run\", 0, False\r\n")
    vbs = read_windows_script(str(script))
    assert vbs.hermes_home.endswith("profiles\\alpha") and vbs.profile_arg == "alpha"
    assert vbs.argv[0] == "C:\\Program Files\\hermes\\pythonw.exe"


def test_the_root_comes_from_hermes_home_else_the_default(box):
    box.profile("alpha")
    d = box.discover(HERMES_HOME=str(box.root / "profiles" / "alpha"))  # a profile's home names its root
    assert d.root == str(box.root) and "lies in this root" in d.root_source
    environ = {"HOME": str(box.home), "PATH": ""}
    host = Host(environ=environ, user_home=str(box.home), probe=box.probe, runner=box.runner, places=box.host().places)
    assert discover(host).root == str(box.home / ".hermes")


# -- a live gateway started by hand -----------------------------------------------------------------------

def _hand_started(reaper, box: Box, profile: str, *flags: str) -> subprocess.Popen:
    """The demo gateway, as a person starts it in a terminal: `hermes -p P gateway run`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HERMES_", "FAKE_HERMES_")) and k not in ("INVOCATION_ID", "XPC_SERVICE_NAME")}
    env.update(HERMES_HOME=str(box.root), HOME=str(box.home), FAKE_HERMES_POLL_S="0.05",
               HTTPS_PROXY=PROXY_URL, HERMES_GATEWAY_LOCK_DIR=str(box.tmp / "locks"))
    argv = [sys.executable, str(DEMO), *(["-p", profile] if profile != "default" else []), "gateway", "run", *flags]
    proc = reaper.spawn(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    home = box.root if profile == "default" else box.root / "profiles" / profile

    def running():
        try:
            state = json.loads((home / "gateway_state.json").read_text())
            pid = json.loads((home / "gateway.pid").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return False
        return state.get("gateway_state") == "running" and state.get("pid") == proc.pid == pid
    wait_until(running, timeout=20, what=f"the hand-started gateway of {profile} running")
    return proc


@posix_only
def test_a_live_hand_started_gateway_is_adopted(reaper, box, tmp_path):
    box.profile("alpha")
    box.profile("beta")
    box.probe = PlatformProbe(current_platform())
    proc = _hand_started(reaper, box, "alpha")
    d = box.discover()
    alpha = d.profile("alpha")
    assert alpha.liveness == "live" and alpha.gateway.pid == proc.pid
    assert alpha.gateway.runner == BY_HAND and not alpha.gateway.external_supervisor
    assert verbs(d) == {"alpha": ADOPT, "beta": SPAWN}
    assert d.command == (sys.executable, str(DEMO))
    text, spec = manifest_of(d, tmp_path)
    assert f"# alpha: live, started by hand (pid {proc.pid})." in text
    comment = flat(text.split("# alpha:")[1].split("alpha: {}")[0])
    assert "apply adopts it as it runs, without a restart" in comment
    assert "runs without --external-supervisor" in comment
    assert f"HTTPS_PROXY is set in the environment of pid {proc.pid}" in comment
    assert PROXY_URL not in text
    assert spec.profile("alpha").command[:2] == (sys.executable, str(DEMO))


# -- the command ------------------------------------------------------------------------------------------------

cli = CliRunner()


@pytest.fixture
def in_process(box, monkeypatch):
    monkeypatch.setattr(init_cmd, "make_host", lambda root: box.host())
    return box


def _init(*args: str):
    return cli.invoke(app, ["init", *args], catch_exceptions=False)


def test_init_writes_a_valid_file_and_never_overwrites_one_without_force(in_process, tmp_path):
    in_process.profile("alpha", env=f"TELEGRAM_BOT_TOKEN={TOKEN}\n")
    target = tmp_path / "out" / "fleet.yaml"
    target.parent.mkdir()
    first = _init("-f", str(target))
    assert first.exit_code == 0, first.output
    assert f"Wrote {target}" in first.output and "alpha  spawn" in first.output
    written = target.read_text()
    assert parse_manifest(written, str(target), str(target.parent)).spec.names == ("alpha",)
    if os.name == "posix":
        assert oct(target.stat().st_mode & 0o777) == oct(0o644)  # a manifest, not a secret
    target.write_text("# mine\n")
    refused = _init("-f", str(target))
    assert refused.exit_code == 3 and "exists; pass --force" in refused.output
    assert target.read_text() == "# mine\n"
    refused_json = _init("-f", str(target), "-o", "json")
    assert refused_json.exit_code == 3 and json.loads(refused_json.stdout)["result"] == "refused"
    forced = _init("-f", str(target), "--force")
    assert forced.exit_code == 0 and target.read_text().endswith("  alpha: {}\n")
    assert not [p for p in target.parent.iterdir() if p.name != "fleet.yaml"]  # no temporary file left
    dry = _init("-f", str(target), "--dry-run")
    assert dry.exit_code == 0 and "version: 1" in dry.stdout and "Would write" in dry.stderr
    assert TOKEN not in first.output + forced.output + dry.output + written + target.read_text()


def test_init_json_keys_are_stable_and_carry_no_secret(in_process, tmp_path):
    in_process.profile("default", env=f"TELEGRAM_BOT_TOKEN={TOKEN}\nHTTPS_PROXY={PROXY_URL}\n")
    in_process.profile("alpha", env=f"DISCORD_BOT_TOKEN={TOKEN}\n", config=f"TELEGRAM_PROXY: {PROXY_URL}\n")
    in_process.unit("hermes-gateway-alpha.service", home=in_process.root / "profiles" / "alpha", profile="alpha",
                    extra=f'Environment="OPENAI_API_KEY={TOKEN}"\nEnvironment="ALL_PROXY={PROXY_URL}"\n')
    result = _init("-f", str(tmp_path / "fleet.yaml"), "-o", "json")
    assert result.exit_code == 0, result.output
    everything = result.output + (tmp_path / "fleet.yaml").read_text()
    for secret in (TOKEN, PROXY_URL, "proxy-password-value"):
        assert secret not in everything
    doc = json.loads(result.stdout)
    assert list(doc) == ["format_version", "kind", "tool_version", "root", "active_profile", "multiplexer",
                         "multiplex_configured", "command", "profiles", "units", "skipped", "warnings", "manifest"]
    assert doc["kind"] == "discovery" and doc["manifest"]["written"] is True
    alpha = next(p for p in doc["profiles"] if p["name"] == "alpha")
    assert list(alpha) == ["name", "home", "listed", "desired", "plan", "origin", "apply", "files", "tokens",
                           "proxies", "gateway", "units", "multiplexed_by"]
    assert list(alpha["gateway"]) == ["state", "note", "pid", "runner", "by", "external_supervisor"]
    assert alpha["plan"] == "takeover" and alpha["tokens"] == ["DISCORD_BOT_TOKEN"]
    assert {(p["key"], p["inherited"]) for p in alpha["proxies"]} == {("TELEGRAM_PROXY", False), ("ALL_PROXY", True)}
    (unit,) = doc["units"]
    assert list(unit) == ["manager", "scope", "name", "path", "dropins", "hermes_home", "profile_arg", "argv",
                          "env_keys", "serves", "profile", "this_root", "via_active_profile", "enabled", "active",
                          "main_pid", "masked", "problem"]
    assert "OPENAI_API_KEY" in unit["env_keys"]
    assert any(w["code"] == "shared_token" for w in doc["warnings"]) is False  # different keys: no clash


def test_two_profiles_with_one_token_are_warned_about_without_the_value(in_process, tmp_path):
    in_process.profile("alpha", env=f"TELEGRAM_BOT_TOKEN={TOKEN}\n")
    in_process.profile("beta", env=f"TELEGRAM_BOT_TOKEN='{TOKEN}'\n")
    in_process.profile("gamma", env="TELEGRAM_BOT_TOKEN=another\n")
    d = in_process.discover()
    (shared,) = [w for w in d.warnings if w.code == "shared_token"]
    assert "alpha, beta set the same TELEGRAM_BOT_TOKEN" in shared.message and TOKEN not in shared.message


# -- diff right after init, through the CLI -----------------------------------------------------------------------

def _cli_env(box: Box) -> dict[str, str]:
    """The CLI's environment: HOME and HERMES_HOME in tmp_path, and a `systemctl` that answers nothing first on
    PATH, so the host's systemd is never asked."""
    bin_dir = box.tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "systemctl"
    fake.write_text("#!/bin/sh\necho 'systemctl: not in this test' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERMES_", "XDG_CONFIG_HOME"))}
    env.update(HOME=str(box.home), HERMES_HOME=str(box.root), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
               COLUMNS="200")
    return env


def _fleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleet", *args], capture_output=True, text=True, env=env,
                          timeout=60, cwd=ROOT)


@posix_only
def test_diff_right_after_init_shows_adopt_take_over_and_spawn(reaper, box, tmp_path):
    box.profile("default", env=f"TELEGRAM_BOT_TOKEN={TOKEN}\n")
    box.profile("native")
    box.profile("idle")
    box.unit("hermes-gateway-native.service", home=box.root / "profiles" / "native", profile="native")
    hand = _hand_started(reaper, box, "default")
    env = _cli_env(box)
    manifest = tmp_path / "fleet.yaml"
    init = _fleet(env, "init", "-f", str(manifest))
    assert init.returncode == 0, init.stderr
    assert f"default  adopt      live, started by hand (pid {hand.pid})" in init.stdout
    assert "native   take over  native user systemd unit hermes-gateway-native.service" in init.stdout
    assert "idle     spawn      not running" in init.stdout
    diff = _fleet(env, "diff", "-f", str(manifest), "--state-dir", str(tmp_path / "state"))
    assert diff.returncode == 1, diff.stdout + diff.stderr
    out = diff.stdout
    assert "# default will be adopted" in out
    assert "# default will be replaced (adopted argv mismatch)" in out  # as init's comment said: no flag
    assert "# native is left to its native service until taken over (owned by native service)" in out
    assert "take over: hermes-fleet takeover native (or apply --take-over; plain apply refuses until then)" in out
    assert "# idle will be spawned (first apply)" in out
    assert "remove it (hermes gateway uninstall)" not in out
    assert hand.poll() is None  # neither init nor diff touched it
    for text in (init.stdout, init.stderr, diff.stdout, diff.stderr, manifest.read_text()):
        assert TOKEN not in text
    assert not (tmp_path / "state").exists()


# -- whatever the names and paths, the manifest is valid and means what was found ---------------------------------

_NAMES = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True).filter(
    lambda n: n not in ("default", "hermes", "test", "tmp", "root", "sudo"))
_ROOT_NAMES = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\0"),
                      min_size=1, max_size=30).filter(lambda s: s not in (".", ".."))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.sets(_NAMES, max_size=5), root_name=_ROOT_NAMES, with_default=st.booleans())
def test_the_manifest_is_valid_for_any_names_and_root(tmp_path, names, root_name, with_default):
    import tempfile

    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        box = Box(Path(folder), root_name=root_name)
        for name in names:
            box.profile(name)
        if with_default:
            box.profile("default", env="X=1\n")
        d = box.discover()
        _, spec = manifest_of(d, Path(folder))
        assert set(spec.names) == names | ({"default"} if with_default else set())
        assert spec.hermes_root == str(box.root)


def test_a_root_reached_through_a_symlink_still_maps_its_units(tmp_path):
    """Hermes writes a unit's HERMES_HOME resolved (symlinks followed); a root named through a symlink (a ~/.hermes
    moved to another disk) is the same place, and its units are its own (a CI run under a symlinked checkout
    found none)."""
    box = Box(tmp_path, root_name="disk")
    box.profile("alpha")
    box.unit("hermes-gateway-alpha.service", home=box.root / "profiles" / "alpha", profile="alpha")
    box.runner.answers["hermes-gateway-alpha.service"] = (
        "LoadState=loaded\nActiveState=inactive\nSubState=dead\nMainPID=0\n", "enabled\n")
    linked = tmp_path / "linked-root"
    linked.symlink_to(box.root)
    d = box.discover(HERMES_HOME=str(linked))
    assert verbs(d) == {"alpha": TAKEOVER}
    assert [f.unit.name for f in d.profile("alpha").units] == ["hermes-gateway-alpha.service"]
    assert d.units[0].this_root
