"""fleet.yaml -> systemd: one `hermes-gateway-<profile>.service` per profile, user or system
scope, for hosts whose units come from configuration management.

Mapping (docs/scaling-out.md has the long form):
- restart.policy -> Restart= (always / on-failure / no); exit 75 always restarts
  (RestartForceExitStatus=75, as hermes-fleet respawns a requested restart under any
  policy), exit 78 never does (RestartPreventExitStatus=78); StartLimitIntervalSec=0 so
  systemd never gives up, as hermes-fleet does not;
- restart.backoff and cap -> RestartSec= (first step) growing to RestartMaxDelaySec= (the
  largest step) over RestartSteps= (the steps it took), systemd >= 254; older systemd gets
  the first step only, and Hermes' own respawn-storm breaker is left on to slow a crash loop;
- drain -> ExecStop= runs the Hermes drain (drain request, wait for idle up to
  drain.timeout, planned-stop marker for $MAINPID) before systemd signals (an interrupt to a
  Hermes gateway, which it takes as planned even when its own watcher took the marker first); KillMode=mixed;
  TimeoutStopSec = drain.timeout + TEARDOWN_MARGIN_S; ExecStartPre= deletes a leftover
  drain request (on one host its epoch stays valid across restarts);
- env -> Environment= lines; secrets (fleet/spec/secrets.py decides which) only through
  EnvironmentFile=, a file the user creates; a secret word of the command (`--token X`)
  becomes ${HERMES_FLEET_SECRET_ARG_<n>} on ExecStart=, its value in that same file.

The unit name is the one Hermes gives a profile's service (`hermes-gateway-<profile>`).
Hermes rewrites a unit of that name in ~/.config/systemd/user/ (or /etc/systemd/system/)
whenever a gateway starts, so the header tells where to install it instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.export.base import (
    GENERATED_LINE, TEARDOWN_MARGIN_S, Advice, Export, ExportError, Note, RenderedFile, Target, common_notes,
    SecretSplit, human, merge_notes, notes_for, secrets_detail, split_secrets, whole_seconds,
)
from fleet.export.emit import (
    UnitSection, Verbatim, comment_block, notes_paragraphs, render_unit, systemd_command_line,
    systemd_escape_specifiers, systemd_path, systemd_script_word, systemd_timespan, systemd_word,
)
from fleet.export.scripts import HERMES_STOP_SCRIPT_LINES, PROCESS_STOP_SCRIPT_LINES
from fleet.platform.linux_text import HERMES_UNIT_STOP_SIGNAL, SYSTEMCTL, UNIT_STOP_SIGNAL, systemctl_command
from fleet.spec.markers import PROFILE_ENV, STATE_FILE_ENV, STOP_FILE_ENV
from fleet.spec.model import DRIVER_HERMES, FleetSpec, ProfileSpec, RestartPolicy

SCOPES = ("user", "system")
DEFAULT_SYSTEMD_VERSION = 254  # RestartSteps= and RestartMaxDelaySec= appeared in 254
MIN_SYSTEMD_VERSION = 230  # StartLimitIntervalSec= in [Unit]
EXEC_TYPE_VERSION = 240  # Type=exec
PRINCIPAL = "hermes-fleet:systemd-stop"
SH = "/bin/sh"
RM = "/bin/rm"
# Floor for a geometric backoff: systemd cannot grow a curve from 0 (and 100 ms is its default).
MIN_RESTART_SEC = 0.1
_RESTART = {"always": "always", "on-failure": "on-failure", "never": "no"}
_USER_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")

ADVICE = Advice(
    engine="systemd",
    stagger="order the units with After= in drop-ins, or have configuration management start them one by one.",
    maintenance="run updates from configuration management at a quiet time: the update command, then "
    f"`{SYSTEMCTL} restart` of the unit; its stop drains in-flight turns first (up to drain.timeout).",
    windows="schedule those configuration-management runs (or a systemd timer) inside the window.",
    adoption="stop hermes-fleet's gateways (it drains them) before enabling the units; two gateways on one "
    "home fight over its lock and bot tokens.",
    suspend="do not install or enable this unit; leave the running gateway as it is.",
)


@dataclass(frozen=True)
class BackoffSettings:
    """A profile's restart delays as systemd can give them: the first, the steps to the largest, the largest."""
    restart_sec: float
    steps: int  # 0: no growth
    max_delay: float


def backoff_settings(restart: RestartPolicy, systemd_version: int) -> BackoffSettings:
    """fleet.yaml's list as systemd's geometric curve: first step, largest step, steps between."""
    capped = [min(b, restart.cap) for b in restart.backoff]
    first = max(capped[0], MIN_RESTART_SEC)
    top = max(capped)
    steps = next(i for i, b in enumerate(capped) if b == top)
    if systemd_version < DEFAULT_SYSTEMD_VERSION or top <= first or steps == 0:
        return BackoffSettings(first, 0, first)
    return BackoffSettings(first, steps, top)


def growth_lost(restart: RestartPolicy, systemd_version: int) -> bool:
    """fleet.yaml asks for a growing delay that this systemd cannot give."""
    return (systemd_version < DEFAULT_SYSTEMD_VERSION
            and len({min(b, restart.cap) for b in restart.backoff}) > 1)


def unit_name(profile: ProfileSpec) -> str:
    return f"hermes-gateway-{profile.name}.service"


@dataclass(frozen=True)
class SystemdTarget(Target):
    """The systemd engine: a fleet as one service unit per profile, for a user or for the system."""
    scope: str = "user"
    user_name: str | None = None
    systemd_version: int = DEFAULT_SYSTEMD_VERSION

    name = "systemd"
    title = "systemd"

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ExportError(f"--scope {self.scope!r}: expected one of {', '.join(SCOPES)}")
        if self.user_name is not None:
            if self.scope != "system":
                raise ExportError("--user-name only applies to --scope system (a user unit runs as its user)")
            if not self.user_name or not set(self.user_name) <= _USER_NAME_CHARS or self.user_name[0] == "-":
                raise ExportError(f"--user-name {self.user_name!r} is not a valid user name")
        if self.systemd_version < MIN_SYSTEMD_VERSION:
            raise ExportError(f"--systemd-version {self.systemd_version}: systemd older than "
                              f"{MIN_SYSTEMD_VERSION} is not supported")

    # ------------------------------------------------------------ paths

    @property
    def manager_command(self) -> str:
        """The service manager's command, as a person types it for this scope."""
        return systemctl_command(self.scope)

    @property
    def install_dir(self) -> str:
        # Not ~/.config/systemd/user/ nor /etc/systemd/system/: Hermes rewrites a
        # hermes-gateway-<profile> unit found there each time the gateway starts.
        return "~/.local/share/systemd/user/" if self.scope == "user" else "/usr/local/lib/systemd/system/"

    def env_file(self, spec: FleetSpec, profile: ProfileSpec) -> str:
        # %E: $XDG_CONFIG_HOME for a user manager, /etc for the system manager.
        return f"%E/hermes-fleet/{spec.name}/{profile.name}.env"

    def env_file_shown(self, spec: FleetSpec, profile: ProfileSpec) -> str:
        root = "~/.config" if self.scope == "user" else "/etc"
        return f"{root}/hermes-fleet/{spec.name}/{profile.name}.env"

    @staticmethod
    def runtime_dir(spec: FleetSpec, profile: ProfileSpec) -> str:
        return f"hermes-fleet-{spec.name}-{profile.name}"

    # ------------------------------------------------------------ render

    def render(self, spec: FleetSpec) -> Export:
        notes = merge_notes(self.fleet_notes(spec), spec.names)
        files = []
        for profile in spec.profiles:
            header = self.header(spec, profile, notes_for(notes, profile.name))
            files.append(RenderedFile(unit_name(profile), render_unit(header, self.sections(spec, profile))))
        stream = "".join(("\n" if i else "") + f"# ---- {f.path} ----\n" + f.text for i, f in enumerate(files))
        return Export(self.name, tuple(files), notes, stream)

    def header(self, spec: FleetSpec, profile: ProfileSpec, notes: tuple[Note, ...]) -> str:
        name = unit_name(profile)
        paragraphs = [
            f'{GENERATED_LINE} systemd from fleet "{spec.name}", profile "{profile.name}". '
            "Do not edit: change fleet.yaml and export again.",
            "",
            f"Install as {self.install_dir}{name}, not in "
            f"{'~/.config/systemd/user/' if self.scope == 'user' else '/etc/systemd/system/'}: Hermes rewrites "
            f"a unit of this name there whenever the gateway starts. Then `{self.manager_command} daemon-reload`.",
        ]
        if profile.desired == "stopped":
            paragraphs.append("desired: stopped in fleet.yaml: install this unit but do not enable or start it "
                              f"(`{self.manager_command} disable --now {name}`).")
        else:
            paragraphs.append(f"Start it with `{self.manager_command} enable --now {name}`"
                              + (" and keep it running without a login session with `loginctl enable-linger`."
                                 if self.scope == "user" else "."))
        if backoff_settings(profile.restart, self.systemd_version).steps:
            paragraphs.append(f"Needs systemd {DEFAULT_SYSTEMD_VERSION} or newer (RestartSteps=, "
                              "RestartMaxDelaySec=); for an older systemd export with --systemd-version N.")
        paragraphs += ["", *notes_paragraphs(notes, "a systemd unit")]
        return comment_block(paragraphs)

    def sections(self, spec: FleetSpec, profile: ProfileSpec) -> list[UnitSection]:
        unit: list[tuple[str, str]] = [("Description", f"Hermes gateway {profile.name} (hermes-fleet {spec.name})")]
        if self.scope == "system":
            unit += [("Wants", "network-online.target"), ("After", "network-online.target")]
        unit.append(("StartLimitIntervalSec", "0"))

        service: list[tuple[str, str]] = [("Type", "exec" if self.systemd_version >= EXEC_TYPE_VERSION else "simple")]
        if self.user_name:
            service.append(("User", self.user_name))
        service.append(("WorkingDirectory", systemd_path(profile.cwd)))
        split = self.split_env(spec, profile)
        service += [("Environment", systemd_word(Verbatim(f"{k}={v}") if isinstance(v, Verbatim) else f"{k}={v}",
                                                 exec_line=False)) for k, v in split.plain.items()]
        if split.secret_keys:
            service.append(("EnvironmentFile", self.env_file(spec, profile)))
        budget = str(whole_seconds(profile.drain.timeout))
        if profile.driver == DRIVER_HERMES:
            clear = f"{profile.hermes_home}/.drain_request.json"
            script = HERMES_STOP_SCRIPT_LINES
            stop_args = [profile.hermes_home, budget, PRINCIPAL]
        else:
            run_dir = self.runtime_dir(spec, profile)
            service += [("RuntimeDirectory", run_dir), ("RuntimeDirectoryMode", "0700")]
            clear = Verbatim(f"%t/{run_dir}/stop")
            script = PROCESS_STOP_SCRIPT_LINES
            stop_args = [clear, budget, "systemd stop"]
        # A leftover drain request or stop file would stop the new process at once.
        service.append(("ExecStartPre", "-" + systemd_command_line([RM, "-f", "--", clear])))
        service.append(("ExecStart", systemd_command_line(split.command)))
        # $MAINPID last: systemd drops an empty variable word, which would shift later arguments.
        service.append(("ExecStop", f"{SH} -c {systemd_script_word(script)} "
                        + systemd_command_line(["hermes-fleet-stop", *stop_args, Verbatim("$MAINPID")])))
        service += [
            ("KillMode", "mixed"),
            ("KillSignal", HERMES_UNIT_STOP_SIGNAL if profile.driver == DRIVER_HERMES else UNIT_STOP_SIGNAL),
            ("TimeoutStopSec", systemd_timespan(whole_seconds(profile.drain.timeout) + TEARDOWN_MARGIN_S)),
            ("Restart", _RESTART[profile.restart.policy]),
        ]
        backoff = backoff_settings(profile.restart, self.systemd_version)
        service.append(("RestartSec", systemd_timespan(backoff.restart_sec)))
        if backoff.steps:
            service += [("RestartSteps", str(backoff.steps)),
                        ("RestartMaxDelaySec", systemd_timespan(backoff.max_delay))]
        service += [
            ("RestartForceExitStatus", "75"),
            ("RestartPreventExitStatus", "78"),
            # A requested restart is not a failure (Hermes' own units say the same).
            ("SuccessExitStatus", "75"),
        ]
        install = [("WantedBy", "default.target" if self.scope == "user" else "multi-user.target")]
        return [UnitSection("Unit", tuple(unit)), UnitSection("Service", tuple(service)),
                UnitSection("Install", tuple(install))]

    def split_env(self, spec: FleetSpec, profile: ProfileSpec) -> SecretSplit:
        env = dict(profile.env)
        env[PROFILE_ENV] = profile.name
        if profile.driver != DRIVER_HERMES:
            run_dir = self.runtime_dir(spec, profile)
            # Written as specifiers on purpose: %t is the manager's runtime directory.
            env[STATE_FILE_ENV] = Verbatim(f"%t/{run_dir}/state.json")
            env[STOP_FILE_ENV] = Verbatim(f"%t/{run_dir}/stop")
        elif growth_lost(profile.restart, self.systemd_version):
            # Without a growing backoff systemd would respawn a crashing gateway at the first
            # step forever; Hermes' own respawn-storm breaker then slows it down instead.
            env.pop("HERMES_GATEWAY_MAX_STARTS", None)
        # ${KEY} (not $KEY): systemd puts the variable's exact value into the word, unsplit.
        return split_secrets(env, profile.command, lambda head, key: Verbatim(
            systemd_escape_specifiers(head).replace("$", "$$") + "${" + key + "}"))

    # ------------------------------------------------------------ notes

    def fleet_notes(self, spec: FleetSpec) -> list[Note]:
        notes = common_notes(spec, ADVICE)
        for p in spec.profiles:
            notes.append(Note("health (heartbeat liveness)",
                              f"hermes-fleet restarts a gateway whose heartbeat is older than "
                              f"{human(p.health.heartbeat_stale)}; systemd cannot watch a file's age.",
                              "Hermes can feed systemd's watchdog: set gateway.systemd_watchdog_seconds in the "
                              "profile's config.yaml and add Type=notify and WatchdogSec= in a drop-in."
                              if p.driver == DRIVER_HERMES else
                              "have the process call sd_notify(WATCHDOG=1) and add Type=notify and WatchdogSec= "
                              "in a drop-in.", (p.name,)))
            notes.append(Note("restart.reset_after",
                              f"hermes-fleet forgets the backoff after {human(p.restart.reset_after)} of healthy "
                              "running; systemd keeps counting restarts until the unit is started by hand.",
                              f"`{self.manager_command} restart` (or reset-failed) the unit to start the curve again.",
                              (p.name,)))
            if growth_lost(p.restart, self.systemd_version):
                first = human(backoff_settings(p.restart, self.systemd_version).restart_sec)
                notes.append(Note("restart.backoff", f"systemd {self.systemd_version} has no growing restart "
                                  f"delay; every restart waits {first}.",
                                  f"use systemd {DEFAULT_SYSTEMD_VERSION} or newer (RestartSteps=). Meanwhile "
                                  "HERMES_GATEWAY_MAX_STARTS is left unset, so Hermes' own respawn-storm breaker "
                                  "slows a crash loop." if p.driver == DRIVER_HERMES else
                                  f"use systemd {DEFAULT_SYSTEMD_VERSION} or newer (RestartSteps=), or a larger "
                                  "first backoff step.", (p.name,)))
            if p.driver == DRIVER_HERMES and p.restart.policy == "always":
                notes.append(Note("terminal exits (startup_failed)",
                                  "hermes-fleet leaves a gateway down that exits 0 with gateway_state startup_failed "
                                  "(its config refused to start); Restart=always restarts it, with the backoff. "
                                  "Exit 78 is covered (RestartPreventExitStatus=78).",
                                  "watch the journal or `hermes gateway status` for startup_failed and fix the "
                                  "profile's config.", (p.name,)))
            if p.desired == "stopped":
                notes.append(Note("desired: stopped", "a unit file cannot say 'installed but stopped'.",
                                  f"install the unit but do not enable it (`{self.manager_command} disable --now "
                                  f"{unit_name(p)}`).", (p.name,)))
            if not p.command[0].startswith("/"):
                notes.append(Note("command", f"'{p.command[0]}' is not an absolute path; hermes-fleet finds it on "
                                  "its own PATH, systemd only on its fixed search path (/usr/local/bin, /usr/bin, "
                                  "...).",
                                  "set hermes.command (or command) to the absolute path of the executable.",
                                  (p.name,)))
            split = self.split_env(spec, p)
            if split.secret_keys:
                notes.append(Note("secrets", f"{secrets_detail(split)}; the unit reads them from "
                                  f"{self.env_file_shown(spec, p)} (EnvironmentFile=).",
                                  "create that file (mode 0600, owned by the service's user) with KEY=value lines "
                                  "for those keys, from your secret store.", (p.name,)))
        notes.append(Note("prune", "removing a profile from fleet.yaml only removes its unit from this export; "
                          "nothing stops the running gateway.",
                          "have configuration management stop and disable units it no longer ships (for "
                          "prune: false profiles, leave them running)."))
        if self.scope == "system" and not self.user_name:
            notes.append(Note("user", "a system unit without User= runs the gateway as root.",
                              "export with --user-name NAME (the account that owns the Hermes home)."))
        return notes
