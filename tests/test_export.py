"""`hermes-fleet export`: goldens, determinism, secrets, notes and the CLI.

Goldens live in tests/golden/export/<scenario>/, rendered from tests/golden/export/fleet.yaml
and compared byte for byte. Regenerate them after an intended change with
    UPDATE_GOLDEN=1 python -m pytest tests/test_export.py
and review the diff like code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fleet.cli.export_cmd import export_command
from fleet.export.base import GENERATED_MARKER, ExportError, Note, merge_notes, whole_seconds
from fleet.export.emit import comment_block, systemd_timespan, yaml_document
from fleet.export.kubernetes import KubernetesTarget
from fleet.export.systemd import SystemdTarget, backoff_settings
from fleet.spec.load import load_manifest, parse_manifest
from fleet.spec.model import RestartPolicy
from fleet.spec.secrets import is_secret, secret_name, secret_value

GOLDEN = Path(__file__).resolve().parent / "golden" / "export"
MANIFEST = GOLDEN / "fleet.yaml"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
# Secret values in the golden manifest: none may appear in any output.
GOLDEN_SECRETS = ("123456:fake-telegram-token-for-golden", "fake-telegram-token", "sk-fake-openai-key-for-golden",
                  "fake-proxy-pass-for-golden", "fake-db-passwd-for-golden", "fake-credential-for-golden",
                  "fakesentrykeyforgolden", "fakeSlackPathForGolden", "fake.bearer-for-golden",
                  "fake-cli-token-for-golden")

SCENARIOS = {
    "kubernetes": lambda: KubernetesTarget(),
    "kubernetes-options": lambda: KubernetesTarget(image="registry.example.com/team/hermes-agent:0.19.0",
                                                   image_given=True, namespace="bots", storage_size="5Gi",
                                                   storage_class="fast-ssd"),
    "systemd-user": lambda: SystemdTarget(),
    "systemd-system-252": lambda: SystemdTarget(scope="system", user_name="hermes", systemd_version=252),
}


def render(scenario: str, manifest: Path = MANIFEST):
    return SCENARIOS[scenario]().render(load_manifest(manifest).spec)


def expected_files(export) -> dict[str, str]:
    files = {f.path: f.text for f in export.files}
    files["stream.txt"] = export.stream
    files["notes.txt"] = "".join(f"note: {n.one_line()}\n" for n in export.notes)
    return files


# ---------------------------------------------------------------- goldens


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_output_matches_the_golden_files(scenario):
    folder = GOLDEN / scenario
    files = expected_files(render(scenario))
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.iterdir():
            if stale.name not in files:
                stale.unlink()
        for name, text in files.items():
            (folder / name).write_bytes(text.encode("utf-8"))
    on_disk = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    assert on_disk == sorted(files), f"golden files differ in {folder}; UPDATE_GOLDEN=1 regenerates them"
    for name, text in files.items():
        golden = (folder / name).read_bytes().decode("utf-8")
        assert text == golden, f"{scenario}/{name} differs from its golden; UPDATE_GOLDEN=1 regenerates it"


# ---------------------------------------------------------------- determinism


REORDERED = """
version: 1
profiles:
  zulu:
    env: {B_VAR: "2", A_VAR: "1", C_TOKEN: secret-zulu-token}
  alpha:
    driver: process
    command: [/usr/bin/env, "true"]
    cwd: /srv/alpha
    env: {Z: z, Y: "y"}
name: order
hermes: {home: /srv/h}
"""

REORDERED_SWAPPED = """
name: order
hermes: {home: /srv/h}
profiles:
  alpha:
    env: {Y: "y", Z: z}
    cwd: /srv/alpha
    command: [/usr/bin/env, "true"]
    driver: process
  zulu:
    env: {C_TOKEN: secret-zulu-token, A_VAR: "1", B_VAR: "2"}
version: 1
"""


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendering_twice_and_from_a_reordered_manifest_gives_the_same_bytes(scenario):
    first = SCENARIOS[scenario]().render(parse_manifest(REORDERED, "a.yaml", "/srv").spec)
    second = SCENARIOS[scenario]().render(parse_manifest(REORDERED, "a.yaml", "/srv").spec)
    swapped = SCENARIOS[scenario]().render(parse_manifest(REORDERED_SWAPPED, "b.yaml", "/srv").spec)
    assert first == second
    assert first.files == swapped.files and first.stream == swapped.stream


def test_output_does_not_depend_on_the_hash_seed():
    code = textwrap.dedent(f"""
        import sys
        from fleet.spec.load import load_manifest
        from fleet.export.kubernetes import KubernetesTarget
        from fleet.export.systemd import SystemdTarget
        spec = load_manifest({str(MANIFEST)!r}).spec
        sys.stdout.write(KubernetesTarget().render(spec).stream + SystemdTarget().render(spec).stream)
    """)
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout)
    assert len(outputs) == 1


# ---------------------------------------------------------------- secrets


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_secret_value_appears_anywhere_in_the_output(scenario):
    files = expected_files(render(scenario))
    for name, text in files.items():
        for secret in GOLDEN_SECRETS:
            assert secret not in text, f"{secret!r} leaked into {scenario}/{name}"
    # ...but the keys are still wired up, so the secrets do reach the gateway.
    everything = "".join(files.values())
    for key in ("TELEGRAM_BOT_TOKEN", "OPENAI_API_KEY", "HTTPS_PROXY", "DB_PASSWD", "SERVICE_ACCOUNT_CREDENTIAL",
                "ERROR_REPORTING_URL", "NOTIFY_URL", "UPSTREAM_HEADER", "HERMES_FLEET_SECRET_ARG_5"):
        assert key in everything


_key_part = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=0, max_size=6)
_secret_key = st.builds(lambda a, w, b: f"X{a}{w}{b}", _key_part,
                        st.sampled_from(["TOKEN", "KEY", "SECRET", "PASSWORD", "token", "Api_Key"]), _key_part)
# No NUL: validation refuses it (no environment can carry one), so it never reaches an export.
_secret_value = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
                        min_size=1, max_size=30) \
    .map(lambda s: "Zq9SecretValue" + s)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=_secret_key, value=_secret_value, proxy_password=st.text(alphabet="abcdefghijkXYZ0123456789", min_size=6,
                                                                     max_size=20))
def test_generated_secrets_never_appear_in_any_target(key, value, proxy_password):
    manifest = {
        "version": 1,
        "profiles": {
            "p1": {"env": {key: value}},
            "p2": {"driver": "process", "command": ["/bin/true"], "cwd": "/srv",
                   "proxy": {"url": f"http://user:Pw{proxy_password}@proxy:3128"}},
        },
    }
    spec = parse_manifest(yaml.safe_dump(manifest), "h.yaml", "/srv").spec
    for target in (KubernetesTarget(), SystemdTarget(), SystemdTarget(scope="system", systemd_version=240)):
        export = target.render(spec)
        texts = [f.text for f in export.files] + [export.stream] + [n.one_line() for n in export.notes]
        for text in texts:
            assert value not in text
            assert f"Pw{proxy_password}" not in text
        assert any(key in text for text in texts)


def test_secret_detection():
    for key in ("TELEGRAM_BOT_TOKEN", "openai_api_key", "DB_PASSWORD", "CLIENT_SECRET", "Keyring", "DB_PASSWD",
                "PGPASS", "SERVICE_ACCOUNT_CREDENTIAL", "SENTRY_DSN", "SLACK_WEBHOOK", "AUTH", "BASIC_AUTH"):
        assert secret_name(key), key
    for key in ("HERMES_HOME", "NO_PROXY", "HTTP_PROXY", "LOG_LEVEL", "PATH", "AUTHOR", "PWD"):
        assert not secret_name(key), key
    assert secret_value("http://bot:pw@proxy:3128")
    assert secret_value("socks5://u:p@h:1080")
    assert secret_value("https://abc123@o1.ingest.sentry.io/1")  # a Sentry DSN: the key is the user part
    assert not secret_value("http://proxy:3128")
    assert not secret_value("http://user@proxy:3128")  # a login name without a password hides nothing
    assert not secret_value("not a url")
    assert not secret_value("http://[bad")
    assert is_secret("HTTP_PROXY", "http://u:p@h:1")
    assert not is_secret("HTTP_PROXY", "http://h:1")


# ---------------------------------------------------------------- notes


def test_unsupported_features_are_listed_in_the_header_and_the_notes():
    k8s = render("kubernetes")
    kustomization = next(f.text for f in k8s.files if f.path == "kustomization.yaml")
    topics = {n.topic for n in k8s.notes}
    assert {"stagger", "maintenance (idle queue)", "maintenance.windows", "adoption", "restart.policy: never",
            "restart.policy: on-failure", "secrets", "container image"} <= topics
    for note in k8s.notes:
        assert note.instead, note
        assert note.topic in kustomization
    unit = next(f.text for f in render("systemd-user").files if f.path == "hermes-gateway-alpha.service")
    header = unit.split("\n[Unit]")[0]
    for topic in ("stagger", "maintenance (idle queue)", "maintenance.windows", "adoption",
                  "health (heartbeat liveness)", "secrets"):
        assert f"- {topic} [" in header


def test_notes_merge_per_topic_and_keep_the_profiles():
    notes = merge_notes([Note("a", "d", "i", ("y",)), Note("b", "d", "i", ("x",)), Note("a", "d", "i", ("x",)),
                         Note("c", "d", "i")])
    assert notes == (Note("a", "d", "i", ("x", "y")), Note("b", "d", "i", ("x",)), Note("c", "d", "i", ()))
    assert notes[2].scope() == "all profiles"
    everyone = merge_notes([Note("a", "d", "i", ("x",)), Note("a", "d", "i", ("y",))], all_profiles=("x", "y"))
    assert everyone == (Note("a", "d", "i", ()),)


def test_a_single_profile_has_no_stagger_note():
    spec = parse_manifest("version: 1\nprofiles: {solo: {}}\n", "s.yaml", "/srv").spec
    for target in (KubernetesTarget(), SystemdTarget()):
        assert "stagger" not in {n.topic for n in target.render(spec).notes}


def test_systemd_notes_for_an_old_systemd_and_a_rootful_system_unit():
    export = render("systemd-system-252")
    topics = {n.topic for n in export.notes}
    assert "restart.backoff" in topics
    assert "user" not in topics  # --user-name was given
    rootful = SystemdTarget(scope="system").render(load_manifest(MANIFEST).spec)
    assert "user" in {n.topic for n in rootful.notes}


# ---------------------------------------------------------------- mapping details


def test_backoff_becomes_a_geometric_curve_from_the_first_to_the_largest_step():
    default = RestartPolicy("always", (1, 2, 4, 9, 16, 25, 36, 49, 64), 64, 60)
    assert backoff_settings(default, 254) == backoff_settings(default, 257)
    settings_254 = backoff_settings(default, 254)
    assert (settings_254.restart_sec, settings_254.steps, settings_254.max_delay) == (1, 8, 64)
    capped = backoff_settings(RestartPolicy("always", (5, 10, 20), 15, 60), 254)
    assert (capped.restart_sec, capped.steps, capped.max_delay) == (5, 2, 15)
    flat = backoff_settings(RestartPolicy("always", (3,), 64, 60), 254)
    assert (flat.restart_sec, flat.steps) == (3, 0)
    old = backoff_settings(default, 252)
    assert (old.restart_sec, old.steps) == (1, 0)
    zero_first = backoff_settings(RestartPolicy("always", (0, 2, 4), 64, 60), 254)
    assert zero_first.restart_sec == 0.1 and zero_first.steps == 2


def test_small_conversions():
    assert whole_seconds(60) == 60 and whole_seconds(60.2) == 61 and whole_seconds(0) == 0
    assert systemd_timespan(90) == "90s" and systemd_timespan(2.5) == "2500ms" and systemd_timespan(0.1) == "100ms"
    assert comment_block(["- a bullet that is long enough to wrap " * 3], width=40).splitlines()[1].startswith("#   ")


def test_yaml_text_round_trips_awkward_values():
    awkward = {"yes": "yes", "num": "0o17", "multi": "a\nb\n", "trailing": "x \ny", "quote": "it's \"q\"",
               "colon": "a: b", "hash": "# not a comment", "empty": "", "null": "null", "unicode": "grüße ✓"}
    assert yaml.safe_load(yaml_document(awkward)) == awkward


def test_kubernetes_names_that_collide_after_sanitising_are_refused():
    spec = parse_manifest("version: 1\nprofiles: {a_b: {}, a-b: {}}\n", "c.yaml", "/srv").spec
    with pytest.raises(ExportError, match="same Kubernetes name"):
        KubernetesTarget().render(spec)


def test_invalid_target_options_are_refused():
    with pytest.raises(ExportError):
        KubernetesTarget(namespace="Not_Valid")
    with pytest.raises(ExportError):
        KubernetesTarget(storage_size="lots")
    with pytest.raises(ExportError):
        KubernetesTarget(image="has space")
    with pytest.raises(ExportError):
        SystemdTarget(scope="session")
    with pytest.raises(ExportError):
        SystemdTarget(user_name="hermes")  # user scope
    with pytest.raises(ExportError):
        SystemdTarget(systemd_version=200)


# ---------------------------------------------------------------- CLI


@pytest.fixture
def cli():
    app = typer.Typer()
    app.command("export")(export_command)

    @app.command("version")
    def _version() -> None:  # a second command keeps `export` a subcommand, as in the real CLI
        pass

    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["export", *args])


def test_cli_writes_the_golden_files_into_a_directory(cli, tmp_path):
    out = tmp_path / "deploy" / "k8s"
    result = cli("kubernetes", "-f", str(MANIFEST), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    golden = GOLDEN / "kubernetes"
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.name for p in golden.iterdir() if p.name not in ("stream.txt", "notes.txt"))
    for name in written:
        assert (out / name).read_bytes() == (golden / name).read_bytes()
        assert f"wrote {out / name}" in result.stdout
    assert result.stderr == (golden / "notes.txt").read_text(encoding="utf-8")

    again = cli("kubernetes", "-f", str(MANIFEST), "-o", str(out))
    assert again.exit_code == 0 and "unchanged" in again.stdout and "wrote" not in again.stdout


def test_cli_streams_to_stdout_by_default(cli):
    result = cli("systemd", "-f", str(MANIFEST))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (GOLDEN / "systemd-user" / "stream.txt").read_text(encoding="utf-8")
    assert result.stderr.startswith("note: ")


def test_cli_passes_target_options(cli):
    result = cli("systemd", "-f", str(MANIFEST), "-o", "-", "--scope", "system", "--user-name", "hermes",
                 "--systemd-version", "252")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (GOLDEN / "systemd-system-252" / "stream.txt").read_text(encoding="utf-8")
    result = cli("kubernetes", "-f", str(MANIFEST), "--image", "registry.example.com/team/hermes-agent:0.19.0",
                 "--namespace", "bots", "--storage-size", "5Gi", "--storage-class", "fast-ssd")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (GOLDEN / "kubernetes-options" / "stream.txt").read_text(encoding="utf-8")


def test_cli_warns_about_files_an_earlier_export_left_behind(cli, tmp_path):
    out = tmp_path / "units"
    out.mkdir()
    (out / "hermes-gateway-gone.service").write_text(f"{GENERATED_MARKER} systemd ...\n")
    (out / "handwritten.service").write_text("[Unit]\n")
    result = cli("systemd", "-f", str(MANIFEST), "-o", str(out))
    assert result.exit_code == 0
    assert "hermes-gateway-gone.service was generated earlier" in result.stderr
    assert "handwritten" not in result.stderr
    assert (out / "hermes-gateway-gone.service").exists()  # reported, never deleted


def test_cli_rejects_an_unknown_target(cli):
    result = cli("nomad", "-f", str(MANIFEST))
    assert result.exit_code == 2
    assert "kubernetes, systemd" in result.stderr


def test_cli_rejects_options_of_the_other_target(cli):
    result = cli("systemd", "-f", str(MANIFEST), "--image", "x", "--namespace", "y")
    assert result.exit_code == 2
    assert "--image, --namespace do not apply to the systemd target" in result.stderr
    result = cli("kubernetes", "-f", str(MANIFEST), "--scope", "system")
    assert result.exit_code == 2 and "--scope" in result.stderr
    result = cli("systemd", "-f", str(MANIFEST), "--secret-name", "bots")
    assert result.exit_code == 2 and "--secret-name does not apply to the systemd target" in result.stderr


def test_cli_rejects_bad_option_values(cli):
    result = cli("kubernetes", "-f", str(MANIFEST), "--namespace", "Bad_NS")
    assert result.exit_code == 2 and "namespace" in result.stderr
    result = cli("kubernetes", "-f", str(MANIFEST), "--secret-name", "Bad_Secret")
    assert result.exit_code == 2 and "--secret-name 'Bad_Secret' is not a valid Secret name" in result.stderr


def test_cli_secret_name_points_the_deployments_at_the_users_secret(cli):
    result = cli("kubernetes", "-f", str(MANIFEST), "--secret-name", "hermes-{profile}-vault")
    assert result.exit_code == 0, result.stderr
    assert "name: hermes-demo-alpha-vault" in result.stdout and "demo-alpha-secrets" not in result.stdout
    assert "create secret generic hermes-demo-worker-vault" in result.stderr
    assert not [s for s in GOLDEN_SECRETS if s in result.stdout + result.stderr]


def test_cli_reports_manifest_problems_with_their_location(cli, tmp_path):
    bad = tmp_path / "fleet.yaml"
    bad.write_text("version: 1\nprofiles:\n  alpha:\n    restart: {policy: sometimes}\n")
    result = cli("kubernetes", "-f", str(bad))
    assert result.exit_code == 2
    assert f"{bad}:4:" in result.stderr and "policy" in result.stderr
    missing = cli("systemd", "-f", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "file not found" in missing.stderr


def test_cli_refuses_an_output_that_is_a_file(cli, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = cli("systemd", "-f", str(MANIFEST), "-o", str(target))
    assert result.exit_code == 2 and "not a directory" in result.stderr


def test_cli_help_teaches_with_examples(cli):
    result = cli("--help")
    assert result.exit_code == 0
    assert "hermes-fleet export kubernetes" in result.stdout and "--systemd-version" in result.stdout


def test_a_secret_word_of_the_command_becomes_a_variable_reference():
    manifest = {"version": 1, "name": "cmd", "profiles": {"bot": {
        "driver": "process", "cwd": "/srv",
        "command": ["/usr/bin/bot", "--api-key=keyValue1secret", "--token", "tokenValue2secret", "50%$(off)",
                    "https://u:urlPw3secret@host/x"]}}}
    spec = parse_manifest(yaml.safe_dump(manifest), "c.yaml", "/srv").spec
    unit = SystemdTarget().render(spec).files[0].text
    assert ("ExecStart=/usr/bin/bot --api-key=${HERMES_FLEET_SECRET_ARG_1} --token ${HERMES_FLEET_SECRET_ARG_3} "
            "50%%$$(off) ${HERMES_FLEET_SECRET_ARG_5}\n") in unit
    k8s = yaml.safe_load_all(KubernetesTarget().render(spec).stream)
    [deployment] = [d for d in k8s if d and d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"][-5:] == ["--api-key=$(HERMES_FLEET_SECRET_ARG_1)", "--token",
                                         "$(HERMES_FLEET_SECRET_ARG_3)", "50%$(off)", "$(HERMES_FLEET_SECRET_ARG_5)"]
    assert {e["name"] for e in container["env"]} == {f"HERMES_FLEET_SECRET_ARG_{i}" for i in (1, 3, 5)}
    for export in (SystemdTarget().render(spec), KubernetesTarget().render(spec)):
        text = export.stream + "".join(n.one_line() for n in export.notes)
        assert not [s for s in ("keyValue1secret", "tokenValue2secret", "urlPw3secret") if s in text]
