"""`hermes-fleet service install|uninstall|start|stop|restart|status`.

Mounted by the main CLI with `app.add_typer(service_app, name="service")`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from fleet.cli.common import emit_json
from fleet.cli.console import Exit, echo
from fleet.service.base import CommandRunner, ServiceError, ServiceTarget, current_python
from fleet.service.lifecycle import Lifecycle
from fleet.service.select import PLATFORMS, default_runner, host_platform, managers_for
from fleet.service.systemd import DEFAULT_SYSTEM_UNIT_DIR, unit_user
from fleet.service.windows_service import ScmApi
from fleet.spec.markers import STATE_DIR_ENV

service_app = typer.Typer(
    help="Register the controller with the OS service manager (systemd, launchd, Windows) so the fleet "
         "comes back after a reboot, survives logout and gets its controller restarted if it dies.",
    no_args_is_help=True,
)


def _pywin32_scm() -> ScmApi | None:
    return None


# Seams the tests replace: every external command, and the Windows SCM (None = pywin32).
make_runner: Callable[[], CommandRunner] = default_runner
make_scm: Callable[[], ScmApi | None] = _pywin32_scm


class PlatformName(str, Enum):
    linux = "linux"
    macos = "macos"
    windows = "windows"


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


class LingerMode(str, Enum):
    ask = "ask"
    enable = "enable"
    report = "report"
    skip = "skip"


class WindowsMechanism(str, Enum):
    windows_service = "windows-service"
    scheduled_task = "scheduled-task"
    startup_folder = "startup-folder"


FileOpt = Annotated[Path, typer.Option("-f", "--file", help="The fleet file (stored as an absolute path).")]
StateDirOpt = Annotated[Path | None, typer.Option(
    "--state-dir", help=f"State directory (default: ${STATE_DIR_ENV}, else the manifest's default).")]
NameOpt = Annotated[str | None, typer.Option(
    "--name", help="Fleet name, used in the service name (default: the manifest's `name`).")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print every file and command; change nothing.")]
PlatformOpt = Annotated[PlatformName | None, typer.Option(
    "--platform", help="Render for another platform (with --dry-run) (default: this host).")]
SystemOpt = Annotated[bool, typer.Option(
    "--system", help="Linux: a system unit run as --run-as (needs root). Windows: a Windows service (admin).")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the controller to come up.")]


def _say(line: str) -> None:
    echo(line)


def _fail(message: str, code: int = 2) -> Exit:
    echo(f"error: {message}", err=True)
    return Exit(code)


def _interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _resolve_target(
    file: Path, state_dir: Path | None, name: str | None, *, system: bool, run_as: str | None,
    manifest_required: bool, dry_run: bool, platform: str,
) -> ServiceTarget:
    """`manifest_required` is install: the file must be valid and --system must name its user."""
    from fleet.spec.errors import ManifestError
    from fleet.spec.load import load_manifest

    fleet_file = os.path.abspath(os.path.expanduser(str(file)))
    spec = None
    try:
        spec = load_manifest(fleet_file).spec
    except ManifestError as exc:
        if manifest_required:
            for problem in exc.problems:
                echo(problem.render(), err=True)
            raise _fail(f"{fleet_file} is not a valid fleet file; the service would only crash-loop on it") from None
    chosen_state = (str(state_dir) if state_dir is not None else None) or os.environ.get(STATE_DIR_ENV) \
        or (spec.default_state_dir if spec is not None else None)
    if not chosen_state:
        raise _fail(f"cannot read {fleet_file}, so the state directory is unknown: pass --state-dir")
    target = ServiceTarget(
        fleet_name=name or (spec.name if spec is not None else "default"),
        fleet_file=fleet_file,
        state_dir=os.path.abspath(os.path.expanduser(chosen_state)),
        python=current_python(),
        system=system,
    )
    if system and platform == "linux":
        if manifest_required:
            run_as = run_as or os.environ.get("SUDO_USER")
            if not run_as:
                raise _fail("--system needs the account the controller runs as: pass --run-as USER")
            if not dry_run and hasattr(os, "geteuid") and os.geteuid() != 0:
                raise _fail("--system writes to /etc/systemd/system: run it as root (sudo)")
        else:
            run_as = run_as or unit_user(os.path.join(DEFAULT_SYSTEM_UNIT_DIR, f"hermes-fleet{target.suffix}.service"))
        target = dataclasses.replace(target, run_as=run_as)
    return target


def _lifecycle(
    file: Path, state_dir: Path | None, name: str | None, *, dry_run: bool, platform: PlatformName | None,
    system: bool, run_as: str | None = None, manifest_required: bool = False, mechanism: str | None = None,
    linger: LingerMode | None = None, password_stdin: bool = False, timeout: float = 60.0,
) -> tuple[Lifecycle, list]:
    host = host_platform()
    chosen = platform.value if platform is not None else host
    if chosen not in PLATFORMS:
        raise _fail(f"this host ({host}) has no supported service manager; --platform renders for {', '.join(PLATFORMS)}")
    foreign = chosen != host
    if foreign and not dry_run:
        raise _fail(f"--platform {chosen} on a {host} host only renders: add --dry-run")
    target = _resolve_target(file, state_dir, name, system=system, run_as=run_as, manifest_required=manifest_required,
                             dry_run=dry_run, platform=chosen)
    interactive = _interactive()
    linger_mode = (linger.value if linger is not None else ("ask" if interactive else "report"))
    runner = make_runner()
    try:
        managers = managers_for(
            target, platform=chosen, runner=runner, mechanism=mechanism, linger_mode=linger_mode,
            password=_password_provider(password_stdin, interactive), scm=make_scm(), interactive=interactive,
        )
    except ServiceError as exc:
        raise _fail(str(exc)) from None
    ask = (lambda question: typer.confirm(question, default=True)) if interactive else (lambda question: False)
    lifecycle = Lifecycle(managers[0], runner=runner, say=_say, dry_run=dry_run, preview_only=foreign, ask=ask,
                          verify_timeout=timeout)
    return lifecycle, managers


def _password_provider(from_stdin: bool, interactive: bool) -> Callable[[str], str | None] | None:
    if from_stdin:
        return lambda account: sys.stdin.readline().rstrip("\r\n")
    if interactive:
        return lambda account: typer.prompt(f"Windows password of {account} (the service runs as you)",
                                            hide_input=True)
    return None


def _run(action: Callable[[], bool]) -> None:
    try:
        ok = action()
    except ServiceError as exc:
        raise _fail(str(exc), 1) from None
    if not ok:
        raise Exit(1)


@service_app.command()
def install(
    file: FileOpt = Path("fleet.yaml"), state_dir: StateDirOpt = None, name: NameOpt = None,
    dry_run: DryRunOpt = False, platform: PlatformOpt = None, system: SystemOpt = False,
    run_as: Annotated[str | None, typer.Option("--run-as", help="--system on Linux: the User= account (default: $SUDO_USER).")] = None,
    mechanism: Annotated[WindowsMechanism | None, typer.Option(
        "--mechanism", help="Windows: force a mechanism (default: a service when elevated, else a Scheduled Task).")] = None,
    linger: Annotated[LingerMode | None, typer.Option(
        "--linger", help="Linux user units: what to do when linger is off (default: ask on a terminal, else report).")] = None,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Windows service: read the account's password from stdin.")] = False,
    timeout: TimeoutOpt = 60.0,
) -> None:
    """Register the controller and start it; idempotent. Succeeds only once the controller is seen running."""
    lifecycle, _ = _lifecycle(file, state_dir, name, dry_run=dry_run, platform=platform, system=system, run_as=run_as,
                              manifest_required=True, mechanism=mechanism.value if mechanism else None, linger=linger,
                              password_stdin=password_stdin, timeout=timeout)
    _run(lifecycle.install)


@service_app.command()
def uninstall(
    file: FileOpt = Path("fleet.yaml"), state_dir: StateDirOpt = None, name: NameOpt = None,
    dry_run: DryRunOpt = False, platform: PlatformOpt = None, system: SystemOpt = False,
    run_as: Annotated[str | None, typer.Option("--run-as", hidden=True)] = None,
    stop_fleet: Annotated[bool, typer.Option("--stop-fleet", help="Drain and stop the gateways first.")] = False,
) -> None:
    """Remove everything install created. Gateways keep running unless --stop-fleet."""
    lifecycle, managers = _lifecycle(file, state_dir, name, dry_run=dry_run, platform=platform, system=system,
                                     run_as=run_as)
    _run(lambda: lifecycle.uninstall(others=managers[1:], stop_fleet=stop_fleet))


def _waiting_command(verb: Callable[[Lifecycle], bool], doc: str):
    """`start` and `restart`: act on the installed registration, then wait until the controller is up."""
    def command(
        file: FileOpt = Path("fleet.yaml"), state_dir: StateDirOpt = None, name: NameOpt = None,
        dry_run: DryRunOpt = False, platform: PlatformOpt = None, system: SystemOpt = False,
        timeout: TimeoutOpt = 60.0,
    ) -> None:
        _control_installed(verb, file, state_dir, name, dry_run=dry_run, platform=platform, system=system,
                           timeout=timeout)

    command.__doc__ = doc
    return command


service_app.command("start")(_waiting_command(Lifecycle.start, "Start the registered controller and wait until it is up."))


@service_app.command()
def stop(
    file: FileOpt = Path("fleet.yaml"), state_dir: StateDirOpt = None, name: NameOpt = None,
    dry_run: DryRunOpt = False, platform: PlatformOpt = None, system: SystemOpt = False,
) -> None:
    """Stop the controller (gateways keep running; `hermes-fleet down` stops those)."""
    _control_installed(Lifecycle.stop, file, state_dir, name, dry_run=dry_run, platform=platform, system=system)


service_app.command("restart")(_waiting_command(
    Lifecycle.restart, "Restart the controller (gateways keep running and are adopted by the new one)."))


def _control_installed(verb: Callable[[Lifecycle], bool], file: Path, state_dir: Path | None, name: str | None, *,
                       dry_run: bool, platform: PlatformName | None, system: bool, timeout: float = 60.0) -> None:
    """start, stop and restart act on the registration install made, whichever mechanism it used."""
    lifecycle, managers = _lifecycle(file, state_dir, name, dry_run=dry_run, platform=platform, system=system,
                                     timeout=timeout)
    _run(lambda: verb(_installed(lifecycle, managers)))


@service_app.command()
def status(
    file: FileOpt = Path("fleet.yaml"), state_dir: StateDirOpt = None, name: NameOpt = None,
    system: SystemOpt = False,
    output: Annotated[OutputFormat, typer.Option("-o", "--output", help="text or json.")] = OutputFormat.text,
    fleet: Annotated[bool, typer.Option("--fleet/--no-fleet", help="Include `hermes-fleet status`.")] = True,
) -> None:
    """Show the registration (mechanism, where, enabled, running, PID, restarts) and the fleet.

    Exit status 0 when the controller is registered and running as it should, 1 otherwise."""
    lifecycle, managers = _lifecycle(file, state_dir, name, dry_run=False, platform=None, system=system,
                                     linger=LingerMode.report)
    try:
        report = lifecycle.status_report(others=managers[1:], fleet_status=fleet, output=output.value)
    except ServiceError as exc:
        raise _fail(str(exc), 1) from None
    if output is OutputFormat.json:
        emit_json(report.as_json())
    else:
        echo(report.render_text())
    if not report.healthy:
        raise Exit(1)


def _installed(lifecycle: Lifecycle, managers: list) -> Lifecycle:
    """On Windows an earlier install may have used another mechanism than the preferred one."""
    if lifecycle.preview_only or len(managers) == 1:
        return lifecycle
    for manager in managers:
        if manager.status().installed:
            lifecycle.manager = manager
            return lifecycle
    return lifecycle
