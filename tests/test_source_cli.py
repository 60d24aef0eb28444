"""`source set|show|suspend|resume|remove`, `sync` and the one-writer rule of `apply`, in-process and without a
controller (`source set --no-start`): what is refused, what is stored, what is shown, and the exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gitsource import manifest, origin  # noqa: F401
from typer.testing import CliRunner

from fleet.cli.main import app
from fleet.store.db import Store
from fleet.store.layout import StateDir
from fleet.store.sources import INVALID, get_source, update_progress

runner = CliRunner()


def run(state: Path, *args: str):
    return runner.invoke(app, [*args, "--state-dir", str(state)], catch_exceptions=False,
                         env={"HERMES_FLEET_STATE_DIR": None})


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "state"


def source_row(state: Path):
    store = Store(StateDir(state).db, readonly=True)
    try:
        return get_source(store)
    finally:
        store.close()


@pytest.mark.parametrize("repo", [
    "https://alice:s3cretpass@git.example.com/fleet.git", "https://ghp_abcdefghijklmnop@github.com/acme/fleet.git",
    "ssh://git:hunter2hunter2@host/fleet.git",
])
def test_a_repository_url_with_credentials_is_refused_and_not_echoed(state, repo):
    result = run(state, "source", "set", "git", repo, "--no-start")
    assert result.exit_code == 2, result.output
    assert "carries credentials" in result.output and "credential helper" in result.output
    for secret in ("s3cretpass", "ghp_abcdefghijklmnop", "hunter2hunter2"):
        assert secret not in result.output
    assert source_row(state) is None


@pytest.mark.parametrize("args, words", [
    (["svn", "/x"], "unknown source kind"),
    (["git", "no/such/dir"], "neither an existing path nor a URL"),
    (["git", "git@host:acme/fleet.git", "--ref", "main:evil"], "--ref"),
    (["git", "git@host:acme/fleet.git", "--path", "../etc/passwd"], "relative path inside"),
    (["git", "git@host:acme/fleet.git", "--interval", "0s"], "at least 1s"),
    (["git", "git@host:acme/fleet.git", "--verify", "ssh"], "--allowed-signers"),
    (["git", "git@host:acme/fleet.git", "--allowed-signers", "x"], "need --verify"),
])
def test_source_set_says_what_is_wrong(state, args, words):
    result = run(state, "source", "set", *args, "--no-start")
    assert result.exit_code == 2 and words in result.output, result.output


def test_a_repository_that_looks_like_an_option_is_refused(state):
    result = runner.invoke(app, ["source", "set", "--no-start", "--state-dir", str(state), "git", "--",
                                 "--upload-pack=touch /tmp/x"], env={"HERMES_FLEET_STATE_DIR": None})
    assert result.exit_code == 2 and "starts with '-'" in result.output, result.output


def test_set_show_suspend_resume_remove(state, origin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run(state, "source", "set", "git", "origin.git", "--ref", "main", "--path", "./fleet.yaml",
                 "--interval", "30s", "--no-start")
    assert result.exit_code == 0, result.output
    assert f"follows main of {origin.bare} (fleet.yaml) every 30s" in result.output
    assert "no controller runs" in result.output
    src = source_row(state)
    assert (src.url, src.ref, src.path, src.interval_s, src.timeout_s) == (str(origin.bare), "main", "fleet.yaml",
                                                                           30.0, 60.0)
    assert "unchanged" in run(state, "source", "set", "git", str(origin.bare), "--interval", "30s",
                              "--no-start").output

    shown = run(state, "source", "show", "-o", "json")
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.output)["source"]
    assert (body["sync"], body["failing"], body["suspended"]) == ("Unknown", False, None)

    result = run(state, "source", "suspend", "--reason", "incident 42")
    assert result.exit_code == 0 and "suspended" in result.output, result.output
    src = source_row(state)
    assert src.suspended and src.suspend_reason == "incident 42" and src.suspended_by
    text = run(state, "source", "show")
    assert text.exit_code == 0 and "SUSPENDED" in text.output and "incident 42" in text.output, text.output
    assert run(state, "sync").exit_code == 3  # refused: resume first

    assert run(state, "source", "resume").exit_code == 0
    assert not source_row(state).suspended
    result = run(state, "source", "remove")
    assert result.exit_code == 0 and source_row(state) is None, result.output
    assert run(state, "source", "show").exit_code == 2
    assert run(state, "sync").exit_code == 2


def test_show_exits_1_and_shows_where_a_commit_failed(state, origin):
    assert run(state, "source", "set", "git", str(origin.bare), "--no-start").exit_code == 0
    store = Store(StateDir(state).db)
    try:
        update_progress(store, "default", fetched_commit="c" * 40, attempted_commit="c" * 40,
                        attempted_config=get_source(store).config_digest, attempted_result=INVALID,
                        attempted_error="fleet.yaml:11:23: profiles.beta.restart.policy: expected one of 'always'")
    finally:
        store.close()
    text = run(state, "source", "show")
    assert text.exit_code == 1, text.output
    assert f"main@sha1:{'c' * 40} was NOT applied (invalid)" in text.output
    assert "fleet.yaml:11:23: profiles.beta.restart.policy" in text.output
    body = json.loads(run(state, "source", "show", "-o", "json").output)["source"]
    assert body["failing"] and body["last_attempt"]["result"] == "invalid" and body["sync"] == "OutOfSync"


def test_apply_is_refused_while_a_source_is_followed(state, origin, tmp_path):
    local = tmp_path / "local.yaml"
    local.write_text(manifest(tmp_path / "hermes"))
    assert run(state, "source", "set", "git", str(origin.bare), "--no-start").exit_code == 0
    result = run(state, "apply", "-f", str(local), "--no-wait")
    assert result.exit_code == 3, result.output
    assert "follows source default" in result.output
    assert "hermes-fleet source suspend" in result.output and "apply --force" in result.output
    store = Store(StateDir(state).db, readonly=True)
    try:
        assert store.current_generation() is None
    finally:
        store.close()
    result = run(state, "apply", "-f", str(local), "--no-wait", "-o", "json")
    assert result.exit_code == 3 and json.loads(result.output)["source"] == "default"


def test_an_older_fleet_db_gains_the_sources_table(state):
    import sqlite3

    from fleet.store.layout import ensure_state_dir

    layout = StateDir(state)
    ensure_state_dir(layout)
    Store(layout.db).close()
    conn = sqlite3.connect(layout.db)  # a fleet.db written before sources existed
    conn.execute("DROP TABLE sources")
    conn.commit()
    conn.close()
    assert run(state, "source", "show").exit_code == 2  # read-only: no table reads as no source
    assert run(state, "source", "set", "git", "git@host:acme/fleet.git", "--no-start").exit_code == 0
    assert source_row(state).url == "git@host:acme/fleet.git"


def test_commands_without_a_state_directory_create_none(state):
    for args in (["source", "suspend"], ["source", "resume"], ["source", "remove"], ["sync"], ["source", "show"]):
        result = run(state, *args)
        assert result.exit_code == 2 and "no source is set" in result.output, (args, result.output)
    assert not state.exists()
