"""`hermes-fleet export TARGET`: render fleet.yaml for Kubernetes or systemd.

The targets (fleet/export) return files and notes; this module only chooses the target,
writes the files (atomically) or the stream, and prints the notes on stderr. Register it
with `app.command("export")(export_command)`.
"""

from pathlib import Path

import typer

from fleet.cli.console import Exit, echo
from fleet.export.base import GENERATED_MARKER, Export, ExportError, Target
from fleet.export.kubernetes import DEFAULT_IMAGE, DEFAULT_STORAGE_SIZE, KubernetesTarget
from fleet.export.systemd import DEFAULT_SYSTEMD_VERSION, SystemdTarget
from fleet.platform.linux_text import SYSTEMCTL
from fleet.spec.errors import ManifestError
from fleet.store.files import write_atomic
from fleet.spec.load import load_manifest

TARGETS = ("kubernetes", "systemd")
EXIT_USAGE = 2
_K8S = "Kubernetes options"
_SYSTEMD = "systemd options"


def export_command(
    target: str = typer.Argument(..., metavar="TARGET", show_default=False,
                                 help="What to render for: kubernetes or systemd."),
    file: Path = typer.Option(Path("fleet.yaml"), "-f", "--file", help="The manifest to render."),
    output: str = typer.Option("-", "-o", "--output",
                               help="Directory to write the files into (created if missing), or - for stdout."),
    image: str | None = typer.Option(None, "--image", rich_help_panel=_K8S, show_default=False,
                                        help=f"Container image for the gateways (default: {DEFAULT_IMAGE}, a "
                                        "placeholder)."),
    namespace: str | None = typer.Option(None, "--namespace", rich_help_panel=_K8S, show_default=False,
                                            help="Namespace for every object (default: kubectl's current one)."),
    storage_size: str | None = typer.Option(None, "--storage-size", rich_help_panel=_K8S, show_default=False,
                                               help=f"Size of each Hermes home volume (default: "
                                               f"{DEFAULT_STORAGE_SIZE})."),
    storage_class: str | None = typer.Option(None, "--storage-class", rich_help_panel=_K8S, show_default=False,
                                                help="StorageClass of the volumes (default: the cluster's)."),
    secret_name: str | None = typer.Option(None, "--secret-name", rich_help_panel=_K8S, show_default=False,
                                              help="The existing Secret the gateways read their secrets from; "
                                              "{profile} stands for the profile (default: one Secret per profile, "
                                              "FLEET-PROFILE-secrets, which you create)."),
    scope: str | None = typer.Option(None, "--scope", rich_help_panel=_SYSTEMD, show_default=False,
                                        help="user (a user's own systemd instance) or system (default: user)."),
    user_name: str | None = typer.Option(None, "--user-name", rich_help_panel=_SYSTEMD, show_default=False,
                                            help="User= of system units: the account owning the Hermes homes."),
    systemd_version: int | None = typer.Option(None, "--systemd-version", rich_help_panel=_SYSTEMD,
                                                  show_default=False,
                                                  help=f"Oldest systemd the units must run on (default: "
                                                  f"{DEFAULT_SYSTEMD_VERSION}, the first with a growing restart "
                                                  f"delay); `{SYSTEMCTL} --version` shows it."),
) -> None:
    """Render fleet.yaml for the engine a fleet moves to: Kubernetes or systemd.

    Same manifest, same bytes: commit fleet.yaml, export in CI, apply with the engine's own
    tooling. What the engine cannot express (stagger, the idle maintenance queue, adoption,
    ...) is listed at the top of the output and on stderr, with what to use instead. Secret
    values never appear in the output (the rule `config` and `diff` mask by: names with TOKEN,
    KEY, SECRET, PASS, CREDENTIAL...; values such as URLs with credentials, webhook URLs, JWTs,
    private keys, known token formats): they become references to a Kubernetes Secret or a
    systemd EnvironmentFile that you create, never a rendered Secret or file with the values.

    Examples:

      hermes-fleet export kubernetes -o deploy/k8s --image registry.example.com/team/hermes-agent:0.19.0

      hermes-fleet export kubernetes --namespace bots | kubectl apply -f -

      hermes-fleet export systemd -o units --scope system --user-name hermes

      hermes-fleet export systemd -f fleet.yaml -o ~/.local/share/systemd/user
    """
    chosen = target.strip().lower()
    if chosen not in TARGETS:
        _fail(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    k8s_options = {"--image": image, "--namespace": namespace, "--storage-size": storage_size,
                   "--storage-class": storage_class, "--secret-name": secret_name}
    systemd_options = {"--scope": scope, "--user-name": user_name, "--systemd-version": systemd_version}
    foreign = k8s_options if chosen == "systemd" else systemd_options
    given = [flag for flag, value in foreign.items() if value is not None]
    if given:
        _fail(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to the {chosen} target")

    try:
        renderer: Target
        if chosen == "kubernetes":
            renderer = KubernetesTarget(image=image or DEFAULT_IMAGE, image_given=image is not None,
                                        namespace=namespace, storage_size=storage_size or DEFAULT_STORAGE_SIZE,
                                        storage_class=storage_class, secret_name=secret_name)
        else:
            renderer = SystemdTarget(scope=scope or "user", user_name=user_name,
                                     systemd_version=DEFAULT_SYSTEMD_VERSION if systemd_version is None
                                     else systemd_version)
        manifest = load_manifest(file)
        result = renderer.render(manifest.spec)
    except ManifestError as exc:
        for problem in exc.problems:
            echo(problem.render(), err=True)
        raise Exit(EXIT_USAGE) from None
    except ExportError as exc:
        _fail(str(exc))

    if output == "-":
        echo(result.stream, nl=False)
    else:
        _write_directory(result, Path(output).expanduser())
    for note in result.notes:
        echo(f"note: {note.one_line()}", err=True)


def _fail(message: str) -> None:
    echo(f"hermes-fleet export: {message}", err=True)
    raise Exit(EXIT_USAGE)


def _write_directory(result: Export, folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        _fail(f"{folder} exists and is not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for rendered in result.files:
            path = folder / rendered.path
            changed = _write_atomically(path, rendered.text)
            echo(f"{'wrote' if changed else 'unchanged'} {path}")
    except OSError as exc:
        _fail(f"cannot write into {folder}: {exc.strerror or exc}")
    for stale in _stale_files(result, folder):
        echo(f"hermes-fleet export: {stale} was generated earlier but is no longer part of the export "
                   "(a profile left fleet.yaml?); remove it if so", err=True)


def _write_atomically(path: Path, text: str) -> bool:
    """Write via a temporary file and rename; leaves an identical file alone (keeps its mtime)."""
    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    write_atomic(path, data, 0o644)
    return True


def _stale_files(result: Export, folder: Path) -> list[Path]:
    """Files in `folder` that an earlier export wrote and this one did not."""
    current = {f.path for f in result.files}
    stale = []
    for path in sorted(folder.iterdir()):
        if path.name in current or not path.is_file() or path.suffix not in (".yaml", ".service"):
            continue
        try:
            with path.open("r", encoding="utf-8") as f:
                head = f.read(len(GENERATED_MARKER))
        except (OSError, UnicodeDecodeError):
            continue
        if head == GENERATED_MARKER:
            stale.append(path)
    return stale
