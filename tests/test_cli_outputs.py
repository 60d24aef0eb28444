"""What status, history, validate, config and `status --deep` print, from a state directory with a
recorded generation and no process (no controller, no gateway)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fleet.cli.main import app
from fleet.cli.status_cmd import _proxy_keys_in_dotenv
from fleet.store.layout import StateDir
from factories import recorded_state

LONG = "a-profile-name-that-is-far-longer-than-fourteen-characters-00064"  # 64: the longest valid name
COMMIT = "0123456789abcdef0123456789abcdef01234567"
runner = CliRunner()


def run(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), catch_exceptions=False, env={"HERMES_FLEET_STATE_DIR": None, **(env or {})})


@pytest.fixture
def recorded(tmp_path) -> tuple[Path, StateDir]:
    assert len(LONG) == 64
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(yaml.safe_dump({"version": 1, "hermes": {"home": str(tmp_path / "hermes"), "command": ["true"]},
                                        "profiles": {"alpha": {}, LONG: {}}}))
    state = recorded_state(manifest, tmp_path / "state", {
        "revision": f"main@sha1:{COMMIT}+dirty", "commit": COMMIT, "branch": "main", "dirty": True,
        "path": str(manifest), "summary": {"spawn": 2}})
    return manifest, state


def test_status_columns_are_as_wide_as_their_content(recorded):
    manifest, state = recorded
    result = run("status", "-f", str(manifest), "--state-dir", str(state.root))
    assert result.exit_code == 1  # no controller runs
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("PROFILE"))
    rows = lines[header + 1:]
    assert [r.split()[0] for r in rows] == sorted(["alpha", LONG]), result.output
    phase_at = lines[header].index("PHASE")
    for row in rows:
        assert row[phase_at - 2:phase_at] == "  " and row[phase_at] != " ", result.output  # columns line up


def test_status_json_has_null_where_nothing_is_known(recorded):
    manifest, state = recorded
    result = run("status", "-f", str(manifest), "--state-dir", str(state.root), "-o", "json")
    doc = json.loads(result.output)

    def dashes(value, path="$"):
        if value == "-":
            yield path
        elif isinstance(value, dict):
            for k, v in value.items():
                yield from dashes(v, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from dashes(v, f"{path}[{i}]")
    assert list(dashes(doc)) == []
    assert all(p["last_exit"] is None and p["hold"] is None for p in doc["profiles"])


def test_history_json_summary_is_an_object_and_text_keeps_the_dirty_mark(recorded):
    manifest, state = recorded
    doc = json.loads(run("history", "-f", str(manifest), "--state-dir", str(state.root), "-o", "json").output)
    assert doc[0]["plan_summary"] == {"spawn": 2}
    assert doc[0]["origin"] is None  # recorded without one, as before origins were kept
    text = run("history", "-f", str(manifest), "--state-dir", str(state.root)).output
    assert f"main@sha1:{COMMIT[:12]}+dirty" in text, text
    assert text.splitlines()[0].split() == ["ID", "GEN", "APPLIED", "RESULT", "ORIGIN", "REVISION", "BY"]
    assert text.splitlines()[1].split()[5] == "-", text


def test_validate_lists_problems_in_file_order(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text("version: 1\nprofilez: {}\nprofiles:\n  Bad: {}\n  x:\n    restart: {policy: sometimes}\n"
                    "    drian: {}\n  z:\n    desired: maybe\n")
    result = run("validate", "-f", str(path))
    assert result.exit_code == 2
    places = [tuple(map(int, m.groups())) for m in re.finditer(rf"{re.escape(str(path))}:(\d+):(\d+):", result.output)]
    assert len(places) == 5 and places == sorted(places), result.output
    doc = json.loads(run("validate", "-f", str(path), "-o", "json").output)
    assert [(e["line"], e["column"]) for e in doc["errors"]] == places


def test_config_shows_the_state_directory_every_command_uses(recorded, tmp_path):
    manifest, _ = recorded
    default = json.loads(run("config", "-f", str(manifest), "-o", "json").output)["state_dir"]
    assert default == str(tmp_path / "hermes" / "gateway")
    from_env = run("config", "-f", str(manifest), "-o", "json", env={"HERMES_FLEET_STATE_DIR": str(tmp_path / "env")})
    assert json.loads(from_env.output)["state_dir"] == str(tmp_path / "env")
    flag = run("config", "-f", str(manifest), "-o", "json", "--state-dir", str(tmp_path / "flag"),
               env={"HERMES_FLEET_STATE_DIR": str(tmp_path / "env")})
    assert flag.exit_code == 0, flag.output
    assert json.loads(flag.output)["state_dir"] == str(tmp_path / "flag")


def test_dotenv_proxy_overrides_are_read_as_dotenv_reads_them(tmp_path):
    env = tmp_path / ".env"
    env.write_text('# HTTPS_PROXY=http://commented.example:3128\n'
                   '   #http_proxy=http://also-commented\n'
                   'export ALL_PROXY="socks5://proxy.example:1080"\n'
                   'CERT="-----BEGIN-----\nHTTP_PROXY=inside-a-quoted-value\n-----END-----"\n'
                   "no_proxy = 'localhost'\n"
                   'TELEGRAM_BOT_TOKEN=123\n'
                   'not an assignment\n')
    assert _proxy_keys_in_dotenv(str(env)) == ["ALL_PROXY", "no_proxy"]
