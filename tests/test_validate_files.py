"""`validate` checks several manifests at once, the way the pre-commit hook of .pre-commit-hooks.yaml calls it:
its `entry` followed by the staged file names."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml
from typer.testing import CliRunner

from fleet.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
GOOD = "version: 1\nprofiles: {a: {}, b: {}}\n"
BAD = "version: 1\nprofilez: {}\n"


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def files(tmp_path: Path, **bodies: str) -> list[str]:
    out = []
    for name, body in bodies.items():
        path = tmp_path / name / "fleet.yaml"
        path.parent.mkdir()
        path.write_text(body)
        out.append(str(path))
    return out


def test_several_files_are_each_checked_and_reported(tmp_path):
    good, bad, other = files(tmp_path, good=GOOD, bad=BAD, other=GOOD)
    result = run("validate", good, bad, other)
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [f"{good}: valid (2 profiles: a, b)", f"{other}: valid (2 profiles: a, b)"]
    assert f"{bad}:1:1: 'profiles' is required" in result.stderr
    assert result.stderr.splitlines()[-1] == f"2 problem(s) in {bad}"
    assert run("validate", good, other).exit_code == 0
    assert run("validate", "-f", good, other).stdout.count(": valid") == 2


def test_several_files_in_json(tmp_path):
    good, bad = files(tmp_path, good=GOOD, bad=BAD)
    result = run("validate", "-o", "json", good, bad)
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert (doc["kind"], doc["valid"]) == ("validations", False)
    assert [(f["file"], f["valid"]) for f in doc["files"]] == [(good, True), (bad, False)]
    assert doc["files"][0]["profiles"] == ["a", "b"]
    assert {e["message"] for e in doc["files"][1]["errors"]} >= {"'profiles' is required"}


def test_one_file_keeps_the_single_document(tmp_path):
    (good,) = files(tmp_path, good=GOOD)
    for args in (["-f", good], [good]):
        doc = json.loads(run("validate", "-o", "json", *args).stdout)
        assert doc["kind"] == "validation" and doc["file"] == good and doc["valid"]


def test_the_pre_commit_hook_runs_validate_on_the_file_names_pre_commit_passes(tmp_path):
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "hermes-fleet-validate" and hook["language"] == "python"
    assert hook.get("pass_filenames", True) and not hook.get("always_run", False)
    pyproject = (ROOT / "pyproject.toml").read_text()
    program, *args = shlex.split(hook["entry"])
    assert f'\n{program} = "fleet.cli.main:console"' in pyproject  # the console script pip installs for the hook
    pattern = re.compile(hook["files"])
    assert all(pattern.search(p) for p in ("fleet.yaml", "hosts/a/fleet.yml", "deploy/fleet.yaml"))
    assert not any(pattern.search(p) for p in ("myfleet.yaml", "fleet.yaml.bak", "docs/fleet.md"))
    good, bad = files(tmp_path, good=GOOD, bad=BAD)
    assert run(*args, good).exit_code == 0
    result = run(*args, good, bad)
    assert result.exit_code == 2 and f"{bad}:1:1:" in result.stderr
