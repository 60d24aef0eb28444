"""validate / diff / config through the real CLI."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from fleet.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_diff_on_demo_in_fresh_state_prints_three_spawns_and_exits_1(tmp_path):
    result = run("diff", "-f", str(ROOT / "examples/demo/fleet.yaml"), "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == 1, result.output
    assert len(re.findall(r"^  \+ {3}\w+", result.output, re.M)) == 3
    assert "Plan: 3 to spawn" in result.output
    assert not (tmp_path / "state").exists(), "diff must not create or write anything"


def test_diff_json_matches_plan_schema(tmp_path):
    result = run("diff", "-f", str(ROOT / "examples/demo/fleet.yaml"), "--state-dir", str(tmp_path / "s"), "-o", "json")
    assert result.exit_code == 1
    doc = json.loads(result.output)
    schema = json.loads((ROOT / "schemas/plan.schema.json").read_text())
    jsonschema.validate(doc, schema)
    assert doc["summary"]["spawn"] == 3
    assert {c["action"] for c in doc["changes"]} == {"spawn"}
    assert all(c["steps"] == ["spawn"] for c in doc["changes"])


def _manifest(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(body)
    return path


GOLDEN_MANIFEST = """\
version: 1
stagger: 0
hermes: {home: ./home, command: [%s]}
profiles:
  alpha: {env: {TELEGRAM_BOT_TOKEN: "123:secret-value", LOG_LEVEL: info}}
  beta: {desired: stopped}
  gamma: {driver: process, command: [%s, -c, "pass"]}
""" % (json.dumps(sys.executable), json.dumps(sys.executable))  # noqa: UP031 - the YAML's braces would need doubling


def _normalise(text: str, tmp_path: Path) -> str:
    return text.replace(str(tmp_path), "<tmp>").replace(sys.executable, "<python>")


def test_diff_text_golden(tmp_path):
    path = _manifest(tmp_path, GOLDEN_MANIFEST)
    result = run("diff", "-f", str(path), "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == 1
    text = _normalise(result.output, tmp_path)
    golden = GOLDEN / "diff_fresh.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()
    assert "secret-value" not in result.output


def test_validate_reports_every_problem_with_location(tmp_path):
    path = _manifest(tmp_path, "version: 1\nprofiles:\n  ok: {}\n  Bad: {}\n  x:\n    restart: {policy: sometimes}\n    drian: {}\n")
    result = run("validate", "-f", str(path))
    assert result.exit_code == 2
    err = result.output
    assert f"{path}:4:3: profiles.Bad: invalid name 'Bad'" in err
    assert f"{path}:6:23: profiles.x.restart.policy: expected one of 'always', 'on-failure', 'never'; found 'sometimes'" in err
    assert "unknown key 'drian' (did you mean 'drain'?)" in err
    assert "Traceback" not in err


def test_validate_json_errors(tmp_path):
    path = _manifest(tmp_path, "version: 2\nprofiles: {}\n")
    result = run("validate", "-f", str(path), "-o", "json")
    assert result.exit_code == 2
    doc = json.loads(result.output)
    assert doc["valid"] is False and doc["errors"][0]["path"] == "version"


def test_missing_file_is_a_clear_error(tmp_path):
    result = run("validate", "-f", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "file not found" in result.output


def test_config_masks_secrets_and_prints_hash(tmp_path):
    path = _manifest(tmp_path, GOLDEN_MANIFEST)
    result = run("config", "-f", str(path), "-o", "json")
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert doc["profiles"]["alpha"]["env"]["TELEGRAM_BOT_TOKEN"] == "(sensitive)"
    assert doc["profiles"]["alpha"]["command"][-3:] == ["gateway", "run", "--external-supervisor"]
    hashed = run("config", "-f", str(path), "--hash", "alpha")
    assert hashed.exit_code == 0
    assert hashed.output.strip() == f"alpha {doc['profiles']['alpha']['spec_hash']}"
    assert run("config", "-f", str(path), "--hash", "nobody").exit_code == 2


def test_diff_unknown_profile_filter(tmp_path):
    path = _manifest(tmp_path, GOLDEN_MANIFEST)
    result = run("diff", "-f", str(path), "--state-dir", str(tmp_path / "s"), "--profile", "zeta")
    assert result.exit_code == 2


@pytest.mark.parametrize("value", ["1", "5m"])
def test_apply_rejects_bad_output_before_touching_anything(tmp_path, value):
    path = _manifest(tmp_path, GOLDEN_MANIFEST)
    result = run("apply", "-f", str(path), "--state-dir", str(tmp_path / "s"), "-o", "xml", "--timeout", value)
    assert result.exit_code == 2
    assert not (tmp_path / "s").exists()


def _record_without_a_controller(path: Path, state_dir: Path) -> None:
    """What `apply` records, with no controller started: the inventory the empty-fleet guard reads."""
    from fleet.cli.common import open_store, state_for
    from fleet.cli.gitinfo import revision_of
    from fleet.controller.record import record_manifest
    from fleet.spec.load import load_manifest

    manifest = load_manifest(path)
    store = open_store(state_for(str(state_dir), path, manifest), write=True)
    try:
        record_manifest(store, manifest, revision_of(str(path), manifest.digest), prune=True, source="apply",
                        lift_down=True)
    finally:
        store.close()


@pytest.mark.parametrize("output", ["text", "json"])
def test_apply_of_an_empty_manifest_over_a_recorded_fleet_is_refused(tmp_path, output):
    state_dir = tmp_path / "state"
    _record_without_a_controller(_manifest(tmp_path, GOLDEN_MANIFEST), state_dir)
    empty = tmp_path / "empty.yaml"
    empty.write_text("version: 1\nprofiles: {}\n")
    result = run("apply", "-f", str(empty), "--state-dir", str(state_dir), "-o", output)
    assert result.exit_code == 3, result.output
    reason = "the manifest has no profiles but the fleet runs 3; refusing to drain everything"
    if output == "json":
        doc = json.loads(result.stdout)
        assert doc["result"] == "refused" and doc["message"].startswith(reason)
    else:
        assert f"Refused: {reason}" in result.output
    assert not (state_dir / ".supervisor.json").exists(), "a refused apply starts no controller"
