"""macOS: the controller as a per-user LaunchAgent in ~/Library/LaunchAgents.

Loaded with `launchctl bootstrap gui/<uid>` (falling back to `user/<uid>` where there is
no GUI session, launchctl's exit 125), restarted with `kickstart -k`, removed with
`bootout`. launchd restarts the controller after any exit but a clean one (exit 0 is what
the controller does on SIGTERM, i.e. when launchd itself stops it), throttled by
ThrottleInterval; gateways run in their own sessions and AbandonProcessGroup keeps
launchd's group kill away from them.
"""

from __future__ import annotations

import glob
import os
import plistlib
import re

from fleet.service.base import (
    NOT_INSTALLED, Artifact, Command, CommandRunner, RegistrationStatus, ServiceManager, ServiceTarget, Step,
    tail_lines, validate_path_text,
)
from fleet.spec.markers import SERVICE_ENV

LABEL = "ai.hermes.fleet"
RC_DOMAIN_UNSUPPORTED = 125  # "Domain does not support specified action" (no GUI session)
THROTTLE_INTERVAL = 10
EXIT_TIMEOUT = 45
STANDARD_PATH = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")


def label_for(target: ServiceTarget) -> str:
    return LABEL if not target.suffix else f"{LABEL}.{target.fleet_name}"


def agent_job(target: ServiceTarget, home: str) -> dict:
    """The plist as a dict; every value is a type plistlib writes (no None)."""
    for label, path in (("fleet file", target.fleet_file), ("state directory", target.state_dir),
                        ("Python", target.python)):
        validate_path_text(label, path)
    path_dirs: list[str] = []
    for d in (os.path.dirname(target.python), os.path.join(home, ".local", "bin"), *STANDARD_PATH):
        if d not in path_dirs:
            path_dirs.append(d)
    return {
        "Label": label_for(target),
        "ProgramArguments": list(target.controller_argv()),
        "RunAtLoad": True,
        # Restart after a crash or any non-zero exit; exit 0 means "stay down" (the
        # controller's answer to launchd's own SIGTERM, or a fatal error it reported).
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_INTERVAL,
        "ExitTimeOut": EXIT_TIMEOUT,
        "ProcessType": "Standard",
        "AbandonProcessGroup": True,
        "LimitLoadToSessionType": ["Aqua", "Background"],
        "WorkingDirectory": target.state_dir,
        "EnvironmentVariables": {
            "PATH": ":".join(path_dirs),
            "PYTHONUNBUFFERED": "1",
            SERVICE_ENV: "launchd",
        },
        "StandardOutPath": target.controller_log,
        "StandardErrorPath": target.controller_log,
        "Umask": 0o077,  # plists have no octal: this is the integer 63
    }


def render_plist(target: ServiceTarget, home: str) -> str:
    return plistlib.dumps(agent_job(target, home), fmt=plistlib.FMT_XML, sort_keys=True).decode("utf-8")


def parse_print(text: str) -> dict[str, str]:
    """The few top-level fields of `launchctl print` we use; its format is not official."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\t?(state|pid|runs|last exit code|last exit status)\s*=\s*(.+?)\s*$", line)
        if match and match.group(1) not in out:
            out[match.group(1)] = match.group(2)
    return out


class LaunchdManager(ServiceManager):
    mechanism = "launchd"
    restart_on_crash = True

    def __init__(self, target: ServiceTarget, runner: CommandRunner, *, agents_dir: str, home: str, uid: int):
        super().__init__(target, runner)
        self.agents_dir = agents_dir
        self.home = home
        self.uid = uid

    @property
    def name(self) -> str:
        return label_for(self.target)

    @property
    def location(self) -> str:
        return os.path.join(self.agents_dir, f"{self.name}.plist")

    def _service(self, domain: str) -> str:
        return f"{domain}/{self.uid}/{self.name}"

    def render(self) -> list[Artifact]:
        return [Artifact(self.location, render_plist(self.target, self.home), 0o644)]

    def loaded_domain(self) -> str | None:
        """'gui' or 'user' when the job is loaded there, else None."""
        for domain in ("gui", "user"):
            if self.runner.run(["launchctl", "print", self._service(domain)], timeout=15).ok:
                return domain
        return None

    def _bootstrap(self) -> Command:
        fallback = Command(("launchctl", "bootstrap", f"user/{self.uid}", self.location))
        return Command(("launchctl", "bootstrap", f"gui/{self.uid}", self.location),
                       fallback=fallback, fallback_on=(RC_DOMAIN_UNSUPPORTED,))

    def install_steps(self, before: RegistrationStatus, files_changed: bool) -> list[Step]:
        # launchd reads the plist only at bootstrap, so an installed job is booted out first
        # (its controller exits 0 on SIGTERM; gateways live on). "Not loaded" is the normal
        # answer to bootout here, hence may_fail.
        steps: list[Step] = [
            Command(("launchctl", "bootout", self._service(d)), may_fail=True) for d in ("gui", "user")
        ]
        steps.append(Command(("launchctl", "enable", self._service("gui")), may_fail=True))
        steps.append(self._bootstrap())
        return steps

    def uninstall_steps(self) -> list[Step]:
        return [Command(("launchctl", "bootout", self._service(d)), may_fail=True) for d in ("gui", "user")]

    def start_steps(self) -> list[Step]:
        domain = self.loaded_domain()
        if domain is None:
            return [self._bootstrap()]
        return [Command(("launchctl", "kickstart", self._service(domain)))]

    def stop_steps(self) -> list[Step]:
        # Killing the process would be undone by KeepAlive; bootout unloads the job until the
        # next login or `service start`. The plist stays.
        domain = self.loaded_domain() or "gui"
        return [Command(("launchctl", "bootout", self._service(domain)))]

    def restart_steps(self) -> list[Step]:
        domain = self.loaded_domain()
        if domain is None:
            return [self._bootstrap()]
        return [Command(("launchctl", "kickstart", "-k", self._service(domain)))]

    def status(self) -> RegistrationStatus:
        file_present = os.path.exists(self.location)
        current = self.registration_current() if file_present else None
        fields: dict[str, str] = {}
        domain = None
        for d in ("gui", "user"):
            result = self.runner.run(["launchctl", "print", self._service(d)], timeout=15)
            if result.ok:
                domain, fields = d, parse_print(result.stdout)
                break
        pid = _int(fields.get("pid"))
        runs = _int(fields.get("runs"))
        running = fields.get("state") == "running" if domain else False
        advice: list[str] = []
        notes: list[str] = []
        if not file_present:
            advice.append(NOT_INSTALLED)
        elif domain is None:
            advice.append("the agent is not loaded: run `hermes-fleet service start` (it loads at your next login too)")
        else:
            if domain == "gui":
                notes.append("loaded in the GUI session: the controller stops at logout and returns at the next login")
            if current is False:
                advice.append("the plist differs from what install would write now: re-run `hermes-fleet service install`")
            if not running:
                advice.append(f"the controller is not running (last exit: {fields.get('last exit code', '?')}); "
                              f"see {self.target.controller_log}")
        state = f"{domain} {fields.get('state', '')}".strip() if domain else ""
        return RegistrationStatus(
            self.mechanism, self.name, self.location, installed=file_present, enabled=domain is not None if file_present else False,
            running=running, pid=pid, restarts=(runs - 1) if runs else None, state=state, current=current,
            notes=tuple(notes), advice=tuple(advice),
        )

    def conflicts(self) -> list[str]:
        found = sorted(glob.glob(os.path.join(glob.escape(self.agents_dir), "ai.hermes.gateway*.plist")))
        return [f"hermes-agent's own gateway agent {path} is installed; it conflicts with fleet supervision: "
                f"`launchctl bootout gui/{self.uid} {path}` and remove the file" for path in found]

    def owns_process(self, pid: int) -> bool | None:
        domain = self.loaded_domain()
        if domain is None:
            return False
        fields = parse_print(self.runner.run(["launchctl", "print", self._service(domain)], timeout=15).stdout)
        launchd_pid = _int(fields.get("pid"))
        return None if launchd_pid is None else launchd_pid == pid

    def diagnosis(self) -> list[str]:
        return tail_lines(self.target.controller_log)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None
