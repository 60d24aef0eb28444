"""fleet.yaml -> validated, defaulted FleetSpec, with every problem located in the file."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fleet.spec import schema
from fleet.spec.codec import fleet_digest
from fleet.spec.cron import parse_cron
from fleet.spec.durations import parse_duration
from fleet.spec.errors import ManifestError, Problem
from fleet.spec.listen import format_listen, is_loopback, parse_listen
from fleet.spec.markers import FLEET_ENV_PREFIX
from fleet.spec.model import (
    DRIVER_HERMES, DrainPolicy, FleetSpec, HealthPolicy, MaintenancePolicy,
    MaintenanceWindow, MetricsSpec, ProfileSpec, RestartPolicy, RetentionPolicy,
)
from fleet.spec.yamlsource import Located, dotted, load_located

LOOPBACK_NO_PROXY = ("127.0.0.1", "localhost", "::1")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # ~20,000 profiles; bounds the YAML node graph's memory
# Keys the fleet sets itself; a profile's env may not override them.
RESERVED_ENV_PREFIXES = (FLEET_ENV_PREFIX,)
RESERVED_ENV_KEYS = frozenset({
    "HERMES_HOME", "HERMES_GATEWAY_EXTERNAL_SUPERVISOR", "HERMES_SUPERVISED_CHILD",
    "HERMES_S6_SUPERVISED_CHILD", "HERMES_GATEWAY_MAX_STARTS",
})
HERMES_MARKER_ENV = (
    ("HERMES_GATEWAY_EXTERNAL_SUPERVISOR", "1"),
    ("HERMES_SUPERVISED_CHILD", "1"),
    ("HERMES_S6_SUPERVISED_CHILD", "1"),
    ("HERMES_GATEWAY_MAX_STARTS", "0"),
)


@dataclass(frozen=True)
class Manifest:
    """A loaded fleet.yaml: its path and text, the effective spec it means, and that spec's digest."""
    path: str
    text: str
    spec: FleetSpec
    digest: str  # sha256 of the canonical effective spec


def read_manifest_text(path: str | os.PathLike) -> str:
    name = str(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise ManifestError([Problem(name, 0, 0, "", f"is {kind}, expected a fleet.yaml file")])
        with open(path, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError([Problem(name, 0, 0, "", "file not found",
                                     "pass -f FILE or run in the folder that holds fleet.yaml")]) from None
    except PermissionError:
        raise ManifestError([Problem(name, 0, 0, "", "permission denied")]) from None
    return manifest_text(data, name)


def manifest_text(data: bytes, name: str) -> str:
    """The text of a manifest's bytes, whether read from a file (`apply -f`) or from a commit (a followed
    source): at most MAX_MANIFEST_BYTES, UTF-8; `name` is the file the problems name."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError([Problem(name, 0, 0, "", f"the file is larger than {MAX_MANIFEST_BYTES // (1024 * 1024)} MiB")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[:exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ManifestError([Problem(name, line, col, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}",
                                     "save the file as UTF-8")]) from None


def load_manifest(path: str | os.PathLike) -> Manifest:
    text = read_manifest_text(path)
    return parse_manifest(text, str(path), base_dir=str(Path(path).resolve().parent))


def load_manifest_bytes(data: bytes, filename: str, base_dir: str) -> Manifest:
    """A manifest that is no file on this host (the blob of a commit): validated exactly as `load_manifest`
    validates a file; problems name `filename`, and relative paths resolve against `base_dir`."""
    return parse_manifest(manifest_text(data, filename), filename, base_dir=base_dir)


def parse_manifest(text: str, filename: str, base_dir: str) -> Manifest:
    located = load_located(text, filename)
    if not isinstance(located.data, dict):
        raise ManifestError([Problem(filename, 1, 1, "", "expected a mapping with 'version' and 'profiles' at the top level")])
    problems = schema.validate_document(located, filename)
    if problems:
        raise ManifestError(problems)
    builder = _Builder(located, filename, base_dir)
    spec = builder.build()
    if builder.problems:
        raise ManifestError(builder.problems)
    return Manifest(path=filename, text=text, spec=spec, digest=fleet_digest(spec))


def _merge(*blocks: dict | None) -> dict:
    out: dict = {}
    for block in blocks:
        if block:
            out.update(block)
    return out


def _resolve_path(value: str, base_dir: str) -> str:
    expanded = os.path.expanduser(os.path.expandvars(value))
    if not os.path.isabs(expanded):
        expanded = os.path.join(base_dir, expanded)
    return os.path.normpath(expanded)


def _resolve_command(command: list[str], base_dir: str) -> list[str]:
    """Elements written ./x or ../x are relative to fleet.yaml, so a fleet folder is portable."""
    return [os.path.normpath(os.path.join(base_dir, c)) if c.startswith(("./", "../")) else c for c in command]


def _env_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


Policy = TypeVar("Policy")

class _Builder:
    def __init__(self, located: Located, filename: str, base_dir: str):
        self.located = located
        self.doc: dict = located.data  # type: ignore[assignment]
        self.filename = filename
        self.base_dir = base_dir
        self.problems: list[Problem] = []
        self.shared: dict[tuple, object] = {}

    def fleet_wide(self, block: str, body: dict, build: Callable[[], Policy], *inputs: object) -> Policy:
        """A policy block the profile does not override is the fleet's (its values, their places in the file,
        its problems): built once and shared by every such profile, not once per profile."""
        if block in body:
            return build()
        key = (block, *inputs)
        if key not in self.shared:
            self.shared[key] = build()
        return self.shared[key]  # type: ignore[return-value]

    def problem(self, path: tuple, message: str, hint: str = "") -> None:
        line, col = self.located.mark(path)
        problem = Problem(self.filename, line, col, dotted(path), message, hint)
        if problem not in self.problems:  # a fleet-wide value is checked once per profile, reported once
            self.problems.append(problem)

    def duration(self, value, path: tuple) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.problem(path, str(exc))
            return 0.0

    def block(self, name: str, profile: dict, pname: str) -> tuple[dict, dict[str, tuple]]:
        """Merged settings of one policy block and where each value came from."""
        merged = _merge(schema.defaults(name), self.doc.get(name), profile.get(name))
        origin: dict[str, tuple] = {}
        for key in merged:
            if key in (profile.get(name) or {}):
                origin[key] = ("profiles", pname, name, key)
            elif key in (self.doc.get(name) or {}):
                origin[key] = (name, key)
            else:
                origin[key] = (name,)
        return merged, origin

    def build(self) -> FleetSpec:
        hermes_top = _merge(schema.defaults("hermes"), self.doc.get("hermes"))
        root = _resolve_path(hermes_top["home"], self.base_dir)
        profiles = [self.profile(name, body or {}) for name, body in sorted((self.doc.get("profiles") or {}).items())]
        maint_top = _merge(schema.defaults("maintenance"), self.doc.get("maintenance"))
        return FleetSpec(
            name=self.doc.get("name", schema.top_default("name")),
            stagger=self.duration(self.doc.get("stagger", schema.top_default("stagger")), ("stagger",)),
            max_concurrent_maintenance=int(maint_top["max_concurrent"]),
            profiles=tuple(p for p in profiles if p is not None),
            hermes_root=root,
            default_state_dir=os.path.join(root, "gateway"),
            retention=self.retention(),
            metrics=self.metrics(),
        )

    def retention(self) -> RetentionPolicy:
        cfg = _merge(schema.defaults("retention"), self.doc.get("retention"))
        at = ("retention",) if "max_age" not in (self.doc.get("retention") or {}) else ("retention", "max_age")
        return RetentionPolicy(max_age=self.duration(cfg["max_age"], at), journal_rows=int(cfg["journal_rows"]),
                               request_rows=int(cfg["request_rows"]), adopt_log_bytes=int(cfg["adopt_log_bytes"]))

    def metrics(self) -> MetricsSpec:
        cfg = self.doc.get("metrics") or {}
        listen = ""
        if "listen" in cfg:
            try:
                host, port = parse_listen(str(cfg["listen"]))
            except ValueError as exc:
                self.problem(("metrics", "listen"), str(exc), "write it as 127.0.0.1:9464, [::1]:9464 or :9464")
            else:
                listen = format_listen(host, port)
                if not is_loopback(host) and "token_file" not in cfg:
                    self.problem(("metrics", "listen"),
                                 f"{listen} is reachable from other hosts, and metrics.token_file is not set",
                                 "set metrics.token_file (a bearer token Prometheus sends), or listen on 127.0.0.1")
        return MetricsSpec(
            listen=listen,
            token_file=_resolve_path(cfg["token_file"], self.base_dir) if "token_file" in cfg else "",
            textfile=_resolve_path(cfg["textfile"], self.base_dir) if "textfile" in cfg else "")

    def profile(self, name: str, body: dict) -> ProfileSpec | None:
        at = ("profiles", name)
        driver = body.get("driver", self.doc.get("driver", schema.def_default("driver")))
        hermes_cfg, _ = self.block("hermes", body, name)
        root = _resolve_path(hermes_cfg["home"], self.base_dir)
        env: dict[str, str] = {}

        if driver == DRIVER_HERMES:
            prefix = _resolve_command(list(body.get("command") or hermes_cfg["command"]), self.base_dir)
            # The default profile is launched bare: `-p default` would make Hermes treat it as another profile.
            command = prefix + ([] if name == "default" else ["-p", name]) + ["gateway", "run", "--external-supervisor"]
            home = root if name == "default" else os.path.join(root, "profiles", name)
            env["HERMES_HOME"] = root
            env.update(HERMES_MARKER_ENV)
            default_cwd = root
            default_update = tuple(prefix + ["update"])
        else:
            if not body.get("command"):
                # Reported, and the rest of the profile still checked, so all its problems show at once.
                self.problem(at, "the process driver needs 'command': the full command line to run, as a list")
            if "hermes" in body:
                self.problem(at + ("hermes",), "the process driver does not use 'hermes' (home, command)",
                             "remove it, or set driver: hermes")
            command = _resolve_command(list(body.get("command") or []), self.base_dir)
            home = ""
            default_cwd = self.base_dir
            default_update = ()
        cwd = _resolve_path(body["cwd"], self.base_dir) if "cwd" in body else default_cwd

        for key, value in sorted((body.get("env") or {}).items()):
            if key in RESERVED_ENV_KEYS or key.startswith(RESERVED_ENV_PREFIXES):
                self.problem(at + ("env", key), f"'{key}' is set by hermes-fleet and cannot be overridden")
                continue
            env[key] = _env_text(value)
        self.proxy_env(body, name, env)

        match = body.get("match")
        if match is not None:
            try:
                re.compile(match)
            except re.error as exc:
                self.problem(at + ("match",), f"not a valid regular expression: {exc}")

        restart = self.fleet_wide("restart", body, lambda: self.restart(body, name))
        drain = self.fleet_wide("drain", body, lambda: self.drain(body, name))
        health = self.fleet_wide("health", body, lambda: self.health(body, name))
        maintenance = self.fleet_wide("maintenance", body, lambda: self.maintenance(body, name, default_update),
                                      default_update)
        stagger_value = body.get("stagger", self.doc.get("stagger", schema.top_default("stagger")))
        return ProfileSpec(
            name=name, driver=driver, command=tuple(command), cwd=cwd,
            env=tuple(sorted(env.items())), hermes_home=home,
            desired=body.get("desired", "running"), suspend=bool(body.get("suspend", False)),
            prune=bool(body.get("prune", True)),
            stagger=self.duration(stagger_value, at + ("stagger",) if "stagger" in body else ("stagger",)),
            restart=restart, drain=drain, health=health, maintenance=maintenance,
            match=match,
        )

    def restart(self, body: dict, name: str) -> RestartPolicy:
        cfg, at = self.block("restart", body, name)
        return RestartPolicy(
            policy=cfg["policy"],
            backoff=tuple(self.duration(v, at["backoff"] + (i,)) for i, v in enumerate(cfg["backoff"])),
            cap=self.duration(cfg["cap"], at["cap"]),
            reset_after=self.duration(cfg["reset_after"], at["reset_after"]),
            floor=self.duration(cfg["floor"], at["floor"]),
            start_limit_burst=int(cfg["start_limit_burst"]),
            start_limit_interval=self.duration(cfg["start_limit_interval"], at["start_limit_interval"]),
        )

    def drain(self, body: dict, name: str) -> DrainPolicy:
        cfg, at = self.block("drain", body, name)
        return DrainPolicy(timeout=self.duration(cfg["timeout"], at["timeout"]))

    def health(self, body: dict, name: str) -> HealthPolicy:
        cfg, at = self.block("health", body, name)
        return HealthPolicy(heartbeat_stale=self.duration(cfg["heartbeat_stale"], at["heartbeat_stale"]),
                            startup_grace=self.duration(cfg["startup_grace"], at["startup_grace"]))

    def maintenance(self, body: dict, name: str, default_update: tuple[str, ...]) -> MaintenancePolicy:
        cfg, at = self.block("maintenance", body, name)
        windows = []
        for i, w in enumerate(cfg.get("windows") or []):
            wpath = at["windows"] + (i,)
            try:
                if not parse_cron(w["schedule"]).can_fire():
                    self.problem(wpath + ("schedule",), "this schedule never fires: no month in it has that day",
                                 "day-of-month and day-of-week combine with AND when either starts with '*'")
            except ValueError as exc:
                self.problem(wpath + ("schedule",), f"not a valid cron schedule: {exc}")
            tz = w.get("timezone", "UTC")
            import zoneinfo  # the time zone database, only for a fleet with maintenance windows

            try:
                zoneinfo.ZoneInfo(tz)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                self.problem(wpath + ("timezone",), f"unknown time zone '{tz}'", "use an IANA name such as Europe/Berlin or UTC")
            try:
                duration = parse_duration(w["duration"])
            except ValueError as exc:
                self.problem(wpath + ("duration",), str(exc))
                duration = 0.0
            else:
                if duration <= 0:
                    self.problem(wpath + ("duration",), f"expected a duration above 0; found {w['duration']!r}",
                                 "a window of no length is never open")
            windows.append(MaintenanceWindow(kind=w.get("kind", "allow"), schedule=w["schedule"],
                                             duration=duration, timezone=tz))
        update = tuple(_resolve_command(list(cfg.get("update_command") or default_update), self.base_dir))
        return MaintenancePolicy(idle=self.duration(cfg["idle"], at["idle"]), max_concurrent=int(cfg["max_concurrent"]),
                                 update_command=update, windows=tuple(windows))

    def proxy_env(self, body: dict, name: str, env: dict[str, str]) -> None:
        proxy, _ = self.block("proxy", body, name)
        schemes = {"HTTP_PROXY": proxy.get("http") or proxy.get("url"),
                   "HTTPS_PROXY": proxy.get("https") or proxy.get("url"),
                   "ALL_PROXY": proxy.get("all") or proxy.get("url")}
        for key, value in schemes.items():
            # Set in both cases: a child that inherited the other case from the controller would
            # otherwise see two proxies (and most clients prefer the lower-case one).
            value = value or env.get(key) or env.get(key.lower())
            if value:
                env[key] = value
                env[key.lower()] = value
        no_proxy = list(LOOPBACK_NO_PROXY)
        for entry in (list(proxy.get("no_proxy") or []) + env.get("NO_PROXY", "").split(",")
                      + env.get("no_proxy", "").split(",")):
            entry = entry.strip()
            if entry and entry not in no_proxy:
                no_proxy.append(entry)
        env["NO_PROXY"] = env["no_proxy"] = ",".join(no_proxy)
