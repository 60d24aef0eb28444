"""install / uninstall / start / stop / restart / status, for any ServiceManager.

The rules that hold on every OS live here: install is idempotent and only reports success
it observed (a live controller, with its PID, that the service manager started); a
controller running outside the service manager is handed over, never left to fight the
new one for the lock; --dry-run shows every file and every command and changes nothing.
This module observes and acts; what install and uninstall decide from what it observed is
in fleet.service.lifecycle_plan.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fleet.store.files import write_atomic
from fleet.service.base import (
    ApiCall, Artifact, Command, CommandResult, CommandRunner, RegistrationStatus, ServiceError, ServiceManager,
    Step, file_matches,
)
from fleet.service.holder import ControllerHolder, read_holder, wait_for_new_holder
from fleet.service.lifecycle_plan import (
    FoundRegistration, InstallPlan, InstallSituation, UninstallPlan, UninstallSituation, plan_install, plan_uninstall,
    remover,
)

Say = Callable[[str], None]


@dataclass(frozen=True)
class StepFailure:
    """A step that failed, and why."""
    step: Step
    detail: str


class Lifecycle:
    def __init__(
        self, manager: ServiceManager, *, runner: CommandRunner, say: Say, dry_run: bool = False,
        preview_only: bool = False, ask: Callable[[str], bool] = lambda question: False,
        verify_timeout: float = 60.0,
    ):
        self.manager = manager
        self.runner = runner
        self.say = say
        self.dry_run = dry_run or preview_only
        self.preview_only = preview_only  # another platform: render, never ask the host anything
        self.ask = ask
        self.verify_timeout = verify_timeout

    @property
    def target(self):
        return self.manager.target

    @property
    def _user(self) -> str | None:
        """The account the controller runs as, when it is not ours (a system unit's User=)."""
        return self.target.run_as if self.target.system else None

    # ================================================================ install

    def install(self) -> bool:
        artifacts = self.manager.render()
        situation = self._observe_install(artifacts)
        plan = plan_install(situation)
        if plan.up_to_date:
            m = self.manager
            self.say(f"nothing changed: {m.mechanism} registration {m.location} is installed and current, "
                     f"and the controller runs (PID {plan.previous.pid if plan.previous else '-'})")
            return True
        if self.dry_run:
            self._preview_install(artifacts, plan, situation.before)
            return True
        return self._perform_install(plan)

    def _observe_install(self, artifacts: list[Artifact]) -> InstallSituation:
        m = self.manager
        if self.preview_only:
            before = RegistrationStatus(m.mechanism, m.name, m.location, installed=False)
            return self._install_situation(before, None, tuple(artifacts), None)
        self._check_before_install()
        before = m.status()
        holder = read_holder(self.target.state_dir, self._user)
        changed = tuple(a for a in artifacts if not file_matches(a))
        return self._install_situation(before, holder, changed, m.registration_current())

    def _install_situation(self, before: RegistrationStatus, holder: ControllerHolder | None,
                           changed: tuple[Artifact, ...], current: bool | None) -> InstallSituation:
        m = self.manager
        owned = m.owns_process(holder.pid) if holder is not None and holder.alive else None
        return InstallSituation(
            mechanism=m.mechanism, before=before, holder=holder, owned=owned, changed=changed, current=current,
            register_steps=tuple(m.install_steps(before, files_changed=bool(changed))),
        )

    def _check_before_install(self) -> None:
        problem = self.manager.preflight()
        if problem is not None:
            if not self.dry_run:
                raise ServiceError(problem)
            self.say(f"warning: {problem}")
        for conflict in self.manager.conflicts():
            self.say(f"warning: {conflict}")

    def _perform_install(self, plan: InstallPlan) -> bool:
        self._prepare_dirs()
        for artifact in plan.writes:
            write_artifact(artifact)
            self.say(f"wrote {artifact.path}")
        failure = self.run_steps(plan.steps)
        if failure is not None:
            if self.manager.fallback_manager is not None:
                return self._fall_back(failure, self.manager.fallback_manager)
            self._say_failed("install", failure, diagnose=True)
            return False
        return self._verify_up(previous=plan.previous, verb="installed") and self._after_install()

    def _preview_install(self, artifacts: list[Artifact], plan: InstallPlan, before: RegistrationStatus) -> None:
        m = self.manager
        self.say(f"dry run: {m.mechanism} registration {m.name} (nothing is changed)")
        if self.preview_only:
            self.say("  rendered for another platform: nothing on this host was read")
        for d in self._dirs():
            self.say(f"would create directory {d} (mode 0700) if missing")
        for artifact in artifacts:
            self._preview_artifact(artifact, plan.writes)
        for step in plan.steps:
            self._preview_step(step)
        if m.fallback_manager is not None:
            self._preview_fallback(m.fallback_manager, before)
        self.say(f"would wait up to {self.verify_timeout:g} s for the controller to come up "
                 f"({os.path.join(self.target.state_dir, '.supervisor.json')} names a live PID that "
                 f"{m.mechanism} started)")
        for line in m.after_install_preview():
            self.say(line)

    def _preview_artifact(self, artifact: Artifact, writes: tuple[Artifact, ...]) -> None:
        verb = "would write" if artifact in writes else "unchanged"
        mode = f"mode {artifact.mode:04o}, " if artifact.mode is not None else ""
        self.say(f"{verb} {artifact.path} ({mode}{artifact.encoding}):")
        for line in artifact.content.lstrip("\ufeff").splitlines():
            self.say(f"    {line}")

    def _preview_step(self, step: Step) -> None:
        if not isinstance(step, Command):
            self.say(f"would do: {step.display()}")
            return
        self.say(f"would run: {step.display()}" + (" (a failure here is expected and ignored)" if step.may_fail else ""))
        if step.fallback is not None:
            codes = ", ".join(str(c) for c in step.fallback_on)
            self.say(f"  if that exits with {codes}: {step.fallback.display()}")

    def _preview_fallback(self, fallback: ServiceManager, before: RegistrationStatus) -> None:
        self.say(f"if that fails (e.g. access denied), would fall back to {fallback.mechanism}:")
        for artifact in fallback.render():
            self.say(f"  would write {artifact.path}:")
            for line in artifact.content.lstrip("\ufeff").splitlines():
                self.say(f"      {line}")
        for step in fallback.install_steps(before, True):
            self.say(f"  would run: {step.display()}")

    def _fall_back(self, failure: StepFailure, fallback: ServiceManager) -> bool:
        m = self.manager
        self.say(f"could not register the {m.mechanism} ({failure.detail}); falling back to {fallback.mechanism}")
        for step in m.uninstall_steps():
            self._run_step(step, quiet=True)
        remove_artifacts(m.render())
        return Lifecycle(fallback, runner=self.runner, say=self.say, ask=self.ask,
                         verify_timeout=self.verify_timeout).install()

    def _after_install(self) -> bool:
        for line in self.manager.after_install(self.ask):
            self.say(line)
        if not self.manager.restart_on_crash:
            self.say(f"note: {self.manager.mechanism} mode starts the controller at logon but nothing restarts it "
                     "after a crash until the next logon")
        return True

    # ================================================================ uninstall

    def uninstall(self, others: Sequence[ServiceManager] = (), stop_fleet: bool = False) -> bool:
        managers = [self.manager, *others]
        found = [mgr for mgr in managers if self._present(mgr)]
        if not found:
            self.say("nothing to remove: no registration found "
                     f"({', '.join(f'{mgr.mechanism} {mgr.location}' for mgr in managers)})")
            return True
        plan = plan_uninstall(self._observe_uninstall(found, stop_fleet))
        if self.dry_run:
            self.say("dry run: nothing is changed")
            self._say_would(plan.steps)
            if not stop_fleet:
                self.say("gateways would keep running (--stop-fleet drains them first)")
            return True
        if not self._steps_ran("uninstall", plan.steps, diagnose=False):
            return False
        self._report_uninstalled(plan, found, stop_fleet)
        return True

    def _observe_uninstall(self, found: list[ServiceManager], stop_fleet: bool) -> UninstallSituation:
        holder = None if self.preview_only else read_holder(self.target.state_dir, self._user)
        registrations = tuple(self._found_registration(mgr, holder) for mgr in found)
        return UninstallSituation(python=self.target.python, state_dir=self.target.state_dir, holder=holder,
                                  found=registrations, stop_fleet=stop_fleet)

    def _found_registration(self, mgr: ServiceManager, holder: ControllerHolder | None) -> FoundRegistration:
        owns = mgr.owns_process(holder.pid) if holder is not None and holder.alive else None
        uninstall_steps = tuple(mgr.uninstall_steps())
        files = tuple(a.path for a in mgr.render() if self.preview_only or self._file_exists(a.path))
        return FoundRegistration(mechanism=mgr.mechanism, location=mgr.location, owns_controller=owns,
                                 uninstall_steps=uninstall_steps, files=files,
                                 after_steps=tuple(mgr.after_uninstall_steps()))

    def _report_uninstalled(self, plan: UninstallPlan, found: list[ServiceManager], stop_fleet: bool) -> None:
        if plan.wait_gone is not None and not self._wait_gone(plan.wait_gone, 60):
            self.say(f"warning: the controller PID {plan.wait_gone.pid} is still running after the registration was removed")
        for mgr in found:
            self.say(f"removed {mgr.mechanism} registration {mgr.location}")
        self.say("the fleet's gateways were drained and stopped" if stop_fleet else
                 "gateways keep running, unsupervised (`hermes-fleet apply` starts an on-demand controller; "
                 "`--stop-fleet` would have drained them)")

    def _present(self, mgr: ServiceManager) -> bool:
        if self.preview_only:
            return True
        if any(self._file_exists(a.path) for a in mgr.render()):
            return True
        return mgr.status().installed

    @staticmethod
    def _file_exists(path: str) -> bool:
        return os.path.lexists(path)

    # ================================================================ start / stop / restart

    def start(self) -> bool:
        m = self.manager
        before = m.status()
        self._require_installed(before)
        holder = read_holder(self.target.state_dir, self._user)
        live = holder if holder is not None and holder.alive else None
        if (live is not None and before.running is not False and m.owns_process(live.pid) is not False
                and before.enabled is not False):
            self.say(f"already running: the controller PID {live.pid} ({m.mechanism} {m.name})")
            return True
        steps = m.start_steps()
        if self.dry_run:
            for step in steps:
                self.say(f"would run: {step.display()}")
            return True
        if not self._steps_ran("start", steps, diagnose=True):
            return False
        return self._verify_up(previous=live, verb="started")

    def stop(self) -> bool:
        m = self.manager
        holder = read_holder(self.target.state_dir, self._user)
        steps = m.stop_steps()
        if self.dry_run:
            self._say_would(steps)
            self.say("gateways would keep running")
            return True
        owned = holder if holder is not None and holder.alive and m.owns_process(holder.pid) is not False else None
        if not self._steps_ran("stop", steps, diagnose=False):
            return False
        if owned is not None and not self._wait_gone(owned, 60):
            self.say(f"stop FAILED: the controller PID {owned.pid} is still running")
            return False
        after = read_holder(self.target.state_dir, self._user)
        if after is not None and after.alive and owned is None:
            self.say(f"note: a controller not started by {m.mechanism} still runs (PID {after.pid})")
        self.say(f"stopped the controller ({m.mechanism} {m.name}); gateways keep running")
        return True

    def restart(self) -> bool:
        m = self.manager
        self._require_installed(m.status())
        holder = read_holder(self.target.state_dir, self._user)
        steps = m.restart_steps()
        if self.dry_run:
            self._say_would(steps)
            return True
        if not self._steps_ran("restart", steps, diagnose=True):
            return False
        alive = holder is not None and holder.alive
        return self._verify_up(previous=holder if alive else None, verb="restarted")

    def _require_installed(self, registration: RegistrationStatus) -> None:
        if not registration.installed:
            m = self.manager
            raise ServiceError(f"not installed ({m.mechanism} {m.location}): run `hermes-fleet service install` first")

    def _say_would(self, steps: Sequence[Step]) -> None:
        for step in steps:
            self.say(f"would {'run' if isinstance(step, Command) else 'do'}: {step.display()}")

    def _steps_ran(self, verb: str, steps: Sequence[Step], *, diagnose: bool) -> bool:
        """True when every step ran; otherwise says which one failed and why."""
        failure = self.run_steps(steps)
        if failure is not None:
            self._say_failed(verb, failure, diagnose=diagnose)
        return failure is None

    def _say_failed(self, verb: str, failure: StepFailure, *, diagnose: bool) -> None:
        self.say(f"{verb} FAILED at `{failure.step.display()}`: {failure.detail}")
        if diagnose:
            self._diagnose()

    # ================================================================ status

    def status_report(self, others: Sequence[ServiceManager] = (), fleet_status: bool = True,
                      output: str = "text") -> StatusReport:
        registration = self.manager.status()
        if not registration.installed:
            for other in others:
                candidate = other.status()
                if candidate.installed:
                    registration = candidate
                    self.manager = other
                    break
        holder = read_holder(self.target.state_dir, self._user)
        owned = self.manager.owns_process(holder.pid) if holder is not None and holder.alive else None
        advice = list(registration.advice)
        if holder is None or not holder.alive:
            if registration.installed:
                advice.append("no controller is running for this fleet: run `hermes-fleet service start` "
                              "(and see why it stopped in the controller log)")
        elif owned is False:
            if registration.installed:
                advice.append(f"the controller PID {holder.pid} was not started by {registration.mechanism}: re-run "
                              "`hermes-fleet service install` to hand the fleet over to it")
            else:
                advice.append(f"the fleet runs under an on-demand controller (PID {holder.pid}); "
                              "`hermes-fleet service install` makes the OS keep a controller running")
        fleet = self._fleet_status(output) if fleet_status else None
        return StatusReport(registration=registration, holder=holder, holder_owned=owned, fleet=fleet,
                            advice=tuple(dict.fromkeys(advice)))

    def _fleet_status(self, output: str) -> FleetStatus:
        argv = [self.target.python, "-m", "fleet.cli.main", "status", "--state-dir", self.target.state_dir,
                "-o", "json" if output == "json" else "text"]
        result = self.runner.run(argv, timeout=60)
        # `status` exits 1 when the fleet is not converged: that is an answer, not a failure.
        if result.returncode not in (0, 1) or not result.stdout.strip():
            return FleetStatus(available=False, text="", data=None,
                               error=f"`hermes-fleet status` exited {result.returncode}: {result.first_error_line()}")
        if output == "json":
            try:
                return FleetStatus(available=True, text="", data=json.loads(result.stdout), error="")
            except ValueError:
                return FleetStatus(available=False, text="", data=None, error="`hermes-fleet status -o json` printed no JSON")
        return FleetStatus(available=True, text=result.stdout.rstrip(), data=None, error="")

    # ================================================================ shared

    def _dirs(self) -> list[str]:
        return [self.target.state_dir, self.target.logs_dir]

    def _prepare_dirs(self) -> None:
        for d in self._dirs():
            if os.path.isdir(d):
                continue
            os.makedirs(d, mode=0o700, exist_ok=True)
            if self._user and sys.platform != "win32":
                # A system unit runs the controller as User=; it refuses a state directory
                # that is not its own.
                import pwd

                entry = pwd.getpwnam(self._user)
                os.chown(d, entry.pw_uid, entry.pw_gid)

    def run_steps(self, steps: Sequence[Step]) -> StepFailure | None:
        for step in steps:
            failure = self._run_step(step)
            if failure is not None:
                return failure
        return None

    def _run_step(self, step: Step, quiet: bool = False) -> StepFailure | None:
        if isinstance(step, ApiCall):
            if not quiet:
                self.say(f"> {step.description}")
            try:
                step.invoke()
            except (OSError, ServiceError, RuntimeError, TimeoutError) as exc:
                return StepFailure(step, str(exc) or type(exc).__name__)
            except Exception as exc:  # pywin32 raises its own error type  # noqa: BLE001
                return StepFailure(step, f"{type(exc).__name__}: {exc}")
            return None
        if not quiet:
            self.say(f"$ {step.display()}")
        result = self.runner.run(step.argv, timeout=step.timeout)
        if result.returncode in step.ok_returncodes:
            return None
        if step.fallback is not None and result.returncode in step.fallback_on:
            if not quiet:
                self.say(f"  (exit {result.returncode}: {result.first_error_line()}; trying {step.fallback.display()})")
            return self._run_step(step.fallback, quiet)
        if step.may_fail:
            if not quiet:
                self.say(f"  (ignored: {_describe(result)})")
            return None
        return StepFailure(step, _describe(result))

    def _verify_up(self, previous: ControllerHolder | None, verb: str) -> bool:
        m = self.manager
        deadline = time.monotonic() + self.verify_timeout
        holder = wait_for_new_holder(self.target.state_dir, previous, deadline, owned=m.owns_process, user=self._user)
        if holder is None:
            self.say(f"{verb} the {m.mechanism} registration, but the controller did NOT come up within "
                     f"{self.verify_timeout:g} s (no live PID started by {m.mechanism} in "
                     f"{os.path.join(self.target.state_dir, '.supervisor.json')})")
            self._diagnose()
            return False
        self.say(f"{verb}: {m.mechanism} {m.location}; the controller is up (PID {holder.pid})")
        return True

    def _wait_gone(self, holder: ControllerHolder, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            current = read_holder(self.target.state_dir, self._user)
            if current is None or not current.alive or current.pid != holder.pid:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _diagnose(self) -> None:
        for line in self.manager.diagnosis():
            self.say(line)


@dataclass(frozen=True)
class FleetStatus:
    """What `hermes-fleet status` told about the fleet, or why it could not tell."""
    available: bool
    text: str
    data: object
    error: str


@dataclass(frozen=True)
class StatusReport:
    """What `service status` reports: the registration, the live controller, the fleet and advice."""
    registration: RegistrationStatus
    holder: ControllerHolder | None
    holder_owned: bool | None
    fleet: FleetStatus | None
    advice: tuple[str, ...]

    @property
    def healthy(self) -> bool:
        r = self.registration
        return (r.installed and r.enabled is not False and self.holder is not None and self.holder.alive
                and self.holder_owned is not False and r.current is not False)

    def as_json(self) -> dict:
        return {
            "healthy": self.healthy,
            "registration": self.registration.as_json(),
            "controller": None if self.holder is None else {**self.holder.as_json(), "started_by_service": self.holder_owned},
            "fleet": None if self.fleet is None else (self.fleet.data if self.fleet.available else {"error": self.fleet.error}),
            "advice": list(self.advice),
        }

    def render_text(self) -> str:
        lines = self._registration_lines() + [self._controller_line()] + self._fleet_lines()
        if self.advice:
            lines.append("what to do:")
            lines += [f"  - {a}" for a in self.advice]
        return "\n".join(lines)

    def _registration_lines(self) -> list[str]:
        r = self.registration
        lines = [
            f"registration: {r.mechanism} {r.name}",
            f"  location:   {r.location}",
            f"  installed:  {_YES_NO[r.installed]}    enabled: {_YES_NO[r.enabled]}    up to date: {_YES_NO[r.current]}",
        ]
        if r.installed:
            lines.append(f"  state:      {r.state or 'unknown'}")
            lines.append(f"  running:    {_YES_NO[r.running]}    PID: {r.pid or '-'}    restarts by the service manager: "
                         f"{'-' if r.restarts is None else r.restarts}")
        return lines + [f"  note: {note}" for note in r.notes]

    def _controller_line(self) -> str:
        h = self.holder
        if h is None:
            return "controller: none recorded"
        started = f", started {h.started_at}" if h.started_at else ""
        origin = {True: f", started by {self.registration.mechanism}", False: ", NOT started by the service manager",
                  None: ""}
        return (f"controller: PID {h.pid} {'alive' if h.alive else 'not running (stale record)'}"
                f"{', version ' + h.version if h.version else ''}{started}"
                f"{origin[self.holder_owned] if h.alive else ''}")

    def _fleet_lines(self) -> list[str]:
        if self.fleet is None:
            return []
        if not self.fleet.available:
            return [f"fleet: status unavailable ({self.fleet.error})"]
        return ["fleet:"] + ["  " + line for line in self.fleet.text.splitlines()]


_YES_NO = {True: "yes", False: "no", None: "unknown"}


def write_artifact(artifact: Artifact) -> None:
    """Atomic write (temp file + rename) with the artifact's mode."""
    os.makedirs(os.path.dirname(artifact.path), exist_ok=True)
    write_atomic(artifact.path, artifact.data, 0o600 if artifact.mode is None else artifact.mode)


def remove_artifacts(artifacts: Sequence[Artifact]) -> None:
    for artifact in artifacts:
        remover(artifact.path)()


def _describe(result: CommandResult) -> str:
    return f"exit {result.returncode}: {result.first_error_line()}"
