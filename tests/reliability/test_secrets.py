"""Secrets: the values of env keys that look like secrets (TOKEN, KEY, SECRET, PASSWORD, PASSWD,
CREDENTIAL) never appear in `diff`, `apply`, `status`, `events`, `config`, `history`, `maintenance`
output (text or JSON), in the controller's log, in the state directory's files, or in fleet.db
outside the stored specs (the controller needs those to start the gateways)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
import yaml

from fleet_harness import fleet  # noqa: F401
from reliability_support import explain, no_traceback

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process model (/proc)"),
    pytest.mark.timeout(180),
]

SECRETS = {
    "TELEGRAM_BOT_TOKEN": "7731:tg-Qz8vK2mXsecretA1",
    "OPENAI_API_KEY": "sk-proj-oPeNaIsecretB2",
    "DB_PASSWORD": "pg-pw-Hunter2secretC3",
    "MY_SECRET": "my-secret-value-D4xyz",
    "api_token": "lower-case-token-E5abc",
    "SMTP_PASSWD": "smtp-pw-F6zz",
    "AWS_CREDENTIALS": "aws-cred-G7yy",
}
ROTATED = {"OPENAI_API_KEY": "sk-proj-rotatedsecretH8", "DB_PASSWORD": "pg-pw-rotatedsecretI9"}
WORKER_SECRETS = {"GITHUB_TOKEN": "ghp_workerSecretJ10"}


STATUS_VIEWS = (("status",), ("status", "-o", "json"), ("status", "--deep"), ("status", "--deep", "-o", "json"))


def all_values() -> list[str]:
    return list(SECRETS.values()) + list(ROTATED.values()) + list(WORKER_SECRETS.values())


def manifest(fleet, secrets: dict) -> None:
    fleet.write_manifest({
        "alpha": {"env": {**secrets, "PLAIN_SETTING": "visible-value"}},
        "worker": {"driver": "process", "command": [sys.executable, str(fleet.command[1]), "gateway", "run"],
                   "env": {**WORKER_SECRETS, "HOME": str(fleet.tmp / "worker-home")}},
    })


def leaks(text: str) -> list[str]:
    return [v for v in all_values() if v in text]


def run_recorded(fleet, outputs: dict[str, str], label: str, *args: str, ok=(0, 1), manifest_only: bool) -> str:
    """Runs one CLI command and keeps what it printed under `label`; manifest-only commands (validate,
    config) take no state directory."""
    if manifest_only:
        result = subprocess.run([sys.executable, "-m", "fleet.cli.main", *args, "-f", str(fleet.manifest)],
                                cwd=str(fleet.tmp), env=fleet.env(), capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
    else:
        result = fleet.cli(*args)
    assert result.returncode in ok and no_traceback(result.stderr), f"{label}: {explain(result)}"
    outputs[label] = result.stdout + result.stderr
    return result.stdout


def test_secret_values_never_leave_the_spec(fleet):
    outputs: dict[str, str] = {}

    def run(label: str, *args: str, ok=(0, 1)) -> str:
        return run_recorded(fleet, outputs, label, *args, ok=ok, manifest_only=args[0] in ("validate", "config"))

    manifest(fleet, SECRETS)
    run("validate -o json", "validate", "-o", "json", ok=(0,))
    run("diff (first)", "diff")
    run("diff -o json (first)", "diff", "-o", "json")
    outputs["apply"] = fleet.apply().stdout
    fleet.wait_running("alpha")
    fleet.wait_pid("worker")
    for view in STATUS_VIEWS:
        run(" ".join(view), *view)
    run("config", "config", ok=(0,))
    run("config -o json", "config", "-o", "json", ok=(0,))
    run("maintenance restart", "maintenance", "restart", "alpha", "--reason", "rotate", "--idle-seconds", "3600",
        "-o", "json", ok=(0,))
    run("maintenance status --all", "maintenance", "status", "--all")
    run("maintenance status --all -o json", "maintenance", "status", "--all", "-o", "json")

    # Rotate two secrets: the diff says that they changed, never what they are.
    manifest(fleet, {**SECRETS, **ROTATED})
    text = run("diff (rotated)", "diff", "--verbose")
    for key in ROTATED:
        assert f"env.{key} = (sensitive value changed)" in text, text
    changes = json.loads(run("diff -o json (rotated)", "diff", "-o", "json"))["changes"]
    sensitive = {d["path"] for c in changes for d in c["diff"] if d.get("sensitive")}
    assert {f"env.{k}" for k in ROTATED} <= sensitive, changes
    result = fleet.cli("apply", "-o", "json", "--timeout", "30s")
    assert result.returncode in (0, 4) and no_traceback(result.stderr), explain(result)
    outputs["apply -o json (rotated)"] = result.stdout + result.stderr
    fleet.wait_running("alpha")
    run("events", "events", "-n", "1000")
    run("events -o json", "events", "-o", "json", "-n", "1000")
    run("history -o json", "history", "-o", "json")
    run("logs controller", "logs", "controller", "-n", "1000")

    found = {label: leaks(text) for label, text in outputs.items() if leaks(text)}
    for path in fleet.state.rglob("*"):  # records, markers, holder, adopt logs, controller and gateway logs
        if path.is_file() and not path.name.startswith("fleet.db"):
            content = path.read_bytes().decode("utf-8", "replace")
            if leaks(content):
                found[str(path.relative_to(fleet.state))] = leaks(content)
    conn = sqlite3.connect(f"file:{fleet.state / 'fleet.db'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            if table in ("generations", "sqlite_sequence"):
                continue  # the stored specs: the controller needs the values to start the gateways
            for row in conn.execute(f"SELECT * FROM {table}"):
                hit = leaks(json.dumps(list(row), default=str))
                if hit:
                    found[f"fleet.db:{table}"] = hit
    finally:
        conn.close()
    assert not found, f"secret values leaked: {found}"
    assert "visible-value" in outputs["config"], "config shows ordinary values (the check above is not vacuous)"
    assert "(sensitive)" in outputs["config"]


def test_proxy_credentials_are_masked(fleet):
    def doc(password):
        return {"version": 1, "name": "test", "hermes": {"home": str(fleet.home), "command": fleet.command},
                "proxy": {"url": f"http://fleet:{password}@proxy.example:3128"},
                "profiles": {"alpha": {"driver": "process", "command": ["sleep", "100"]}}}

    state = fleet.state
    fleet.manifest.write_text(yaml.safe_dump(doc("proxy-pw-K11secret")))
    fleet.apply("--no-wait")
    fleet.manifest.write_text(yaml.safe_dump(doc("proxy-pw-L12rotated")))
    config = subprocess.run([sys.executable, "-m", "fleet.cli.main", "config", "-f", str(fleet.manifest)],
                            cwd=str(fleet.tmp), env=fleet.env(), capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    texts = [fleet.cli("diff").stdout, fleet.cli("diff", "-o", "json").stdout, config.stdout]
    assert state.exists()
    found = [t for t in texts if "proxy-pw-" in t]
    assert not found, found


def test_validation_errors_do_not_quote_env_values(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text("version: 1\nprofiles:\n  alpha:\n    env: \"OPENAI_API_KEY=sk-proj-dotenvsecretM13\"\n  beta:\n"
                    "    env: {DB_PASSWORD: [pg-pw-listsecretN14]}\n")
    result = subprocess.run([sys.executable, "-m", "fleet.cli.main", "validate", "-f", str(path)], cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, explain(result)
    assert "dotenvsecret" not in result.stderr and "listsecret" not in result.stderr, result.stderr


# The forms of issue 11, each under a name the name rule alone would not catch (the value gives
# it away) or a name only the one shared rule knows (PASSWD, PGPASS, CREDENTIAL, AUTH).
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpemBodySecretR17xyz\n-----END RSA PRIVATE KEY-----"
FORMS = {
    "DB_PASSWD": "hunter2-passwdS18",
    "PGPASS": "pgpass-secretT19",
    "SERVICE_ACCOUNT_CREDENTIAL": "svc-credential-U20",
    "AUTH": "Bearer bearerSecretV21.abc",
    "ALERTS": "https://hooks.slack.com/services/T0000/B0000/slackPathSecretW22",
    "REPORTING": "https://sentryKeyX23secret@o1.ingest.example/1",
    "DATABASE_URL": "postgres://app:dbUrlSecretY24@db.internal:5432/app",
    "UPSTREAM_CLAIMS": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJqd3RTZWNyZXRaMjUifQ.jwtSigSecretZ25",
    "TLS_MATERIAL": PEM,
    "GH": "ghp_githubSecretA26xyz",
    "CHAT": "xoxb-1234-slackBotSecretB27",
    "LLM": "sk-openaiSecretC28",
    "CLOUD_ID": "AKIAIOSFODNN7SECRD29",
}
ROTATED_FORMS = {"DB_PASSWD": "hunter3-passwdE30", "ALERTS": "https://hooks.slack.com/services/T0000/B0000/rotatedF31",
                 "GH": "ghp_githubRotatedG32xyz"}
# A secret word of a command: python accepts and ignores an unknown -X option.
COMMAND_SECRET = "cliSecretH33value"


def form_fragments() -> list[str]:
    """The part of each value that must never be printed (a PEM's body, not its armour)."""
    values = [v for v in {**FORMS, **ROTATED_FORMS}.values() if v != PEM] + ["MIIEpemBodySecretR17xyz", COMMAND_SECRET]
    return values + ["hunter2", "hunter3"]


def test_one_rule_hides_every_secret_form_in_every_output(fleet, tmp_path):
    def write(forms: dict) -> None:
        fleet.write_manifest({
            "alpha": {"env": {**forms, "PLAIN_SETTING": "visible-value"}},
            "worker": {"driver": "process",
                       "command": [sys.executable, "-X", f"api_token={COMMAND_SECRET}", str(fleet.command[1]),
                                   "gateway", "run"],
                       "env": {**forms, "HOME": str(fleet.tmp / "worker-home")}},
        })

    outputs: dict[str, str] = {}

    def run(label: str, *args: str, ok=(0, 1), manifest_only: bool = False) -> str:
        return run_recorded(fleet, outputs, label, *args, ok=ok, manifest_only=manifest_only)

    write(FORMS)
    run("config", "config", ok=(0,), manifest_only=True)
    run("config -o json", "config", "-o", "json", ok=(0,), manifest_only=True)
    run("diff", "diff")
    run("diff -o json", "diff", "-o", "json")
    for target in ("kubernetes", "systemd"):
        run(f"export {target}", "export", target, ok=(0,), manifest_only=True)
        folder = tmp_path / f"export-{target}"
        run(f"export {target} -o DIR", "export", target, "-o", str(folder), ok=(0,), manifest_only=True)
        for path in folder.iterdir():
            outputs[f"export {target} {path.name}"] = path.read_text(encoding="utf-8")
    outputs["apply"] = fleet.apply().stdout
    fleet.wait_running("alpha")
    fleet.wait_pid("worker")
    for view in STATUS_VIEWS:
        run(" ".join(view), *view)

    write({**FORMS, **ROTATED_FORMS})
    text = run("diff (rotated)", "diff")
    for key in ROTATED_FORMS:
        for profile_diff in ("alpha", "worker"):
            assert f"env.{key} = (sensitive value changed)" in text, (profile_diff, text)
    changes = json.loads(run("diff -o json (rotated)", "diff", "-o", "json"))["changes"]
    rotated = [d for c in changes for d in c["diff"] if d["path"].removeprefix("env.") in ROTATED_FORMS]
    assert len(rotated) == 2 * len(ROTATED_FORMS), changes
    assert all(d["sensitive"] and d["change"] == "changed" and "before" not in d and "after" not in d
               for d in rotated), rotated
    result = fleet.cli("apply", "-o", "json", "--timeout", "30s")
    assert result.returncode in (0, 4) and no_traceback(result.stderr), explain(result)
    outputs["apply -o json (rotated)"] = result.stdout + result.stderr
    fleet.wait_running("alpha")
    run("events", "events", "-n", "1000")
    run("events -o json", "events", "-o", "json", "-n", "1000")
    run("history", "history")
    run("history -o json", "history", "-o", "json")
    run("logs controller", "logs", "controller", "-n", "1000")

    found = {label: [v for v in form_fragments() if v in text] for label, text in outputs.items()}
    found = {label: hits for label, hits in found.items() if hits}
    assert not found, f"secret values printed: {found}"
    # Not vacuous: ordinary values and the keys themselves are still shown.
    assert "visible-value" in outputs["config"] and "(sensitive)" in outputs["config"]
    assert "-X api_token=(sensitive)" in outputs["status --deep"], outputs["status --deep"]
    for key in FORMS:
        assert key in outputs["config"] and key in outputs["export kubernetes"], key
