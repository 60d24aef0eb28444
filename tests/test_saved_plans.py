"""Saved plans (`diff --out PLAN`, `apply PLAN`) and the git guards of `apply` (`--require-clean`,
`--check-revision SHA`), through the real CLI. Every refusal happens before a controller would start, so
these tests start none, but the last one, which carries a saved plan out to convergence."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fleet.cli.common import open_store, state_for
from fleet.cli.gitinfo import guard_problem, revision_of
from fleet.cli.main import app
from fleet.controller.record import record_manifest
from fleet.spec.load import load_manifest
from fleet.store.db import Store
from fleet.store.layout import StateDir
from fleet_harness import fleet  # noqa: F401
from helpers import reaper  # noqa: F401

runner = CliRunner()
BOT_TOKEN, NEW_BOT_TOKEN = "123456:AAH-old-secret-value-that-never-shows", "123456:AAH-new-secret-value-never-shown"
API_KEY, NEW_API_KEY = "hunter2-argv-secret", "hunter3-argv-secret"
DSN = "postgres://fleet:pw-in-a-url@db.example/fleet"


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False, env={"HERMES_FLEET_STATE_DIR": None})


def _manifest(tmp_path: Path, profiles: dict, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"version": 1, "stagger": 0,
                                    "hermes": {"home": str(tmp_path / "hermes"), "command": ["true"]},
                                    "profiles": profiles}))
    return path


def _gamma(token: str = BOT_TOKEN, key: str = API_KEY, **extra) -> dict:
    """A process-driver profile with secrets in its env (by name and by value) and in its command line."""
    return {"gamma": {"driver": "process", "command": [sys.executable, "-c", "pass", "--api-key", key],
                      "env": {"TELEGRAM_BOT_TOKEN": token, "DATABASE": DSN, "LOG_LEVEL": "info"}, **extra}}


def _record(path: Path, state: Path) -> int:
    """Record `path` as `apply` does, without starting a controller."""
    manifest = load_manifest(path)
    store = open_store(state_for(str(state), path, manifest), write=True)
    try:
        return record_manifest(store, manifest, revision_of(str(path), manifest.digest), prune=True,
                               source="apply", lift_down=True).generation
    finally:
        store.close()


def _generation(state: Path) -> int:
    store = Store(StateDir(state).db, readonly=True)
    try:
        current = store.current_generation()
        return current.generation if current else 0
    finally:
        store.close()


def _save(path: Path, state: Path, plan: Path, *extra: str) -> dict:
    result = run("diff", "-f", str(path), "--state-dir", str(state), "--out", str(plan), *extra)
    assert result.exit_code in (0, 1), result.output
    return json.loads(plan.read_text())


def _refused(plan: Path, *extra: str) -> str:
    """`apply PLAN` refuses with exit 3: its one `Refused:` line."""
    result = run("apply", str(plan), *extra)
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Refused: ")]
    assert len(lines) == 1, result.output
    return lines[0].removeprefix("Refused: ")


# -- diff --out ---------------------------------------------------------------------------------------

def test_a_saved_plan_holds_its_basis_and_the_diff_json_and_no_secret(tmp_path):
    state, plan = tmp_path / "state", tmp_path / "plan.json"
    _record(_manifest(tmp_path, _gamma()), state)
    path = _manifest(tmp_path, _gamma(token=NEW_BOT_TOKEN, key=NEW_API_KEY))  # both secrets rotated
    doc = _save(path, state, plan)

    assert stat.S_IMODE(plan.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".tmp-*")), "written through a temp file that is gone"
    text = plan.read_text()
    for secret in (BOT_TOKEN, NEW_BOT_TOKEN, API_KEY, NEW_API_KEY, "pw-in-a-url", "AAH-"):
        assert secret not in text, secret
    basis = doc["basis"]
    manifest = load_manifest(path)
    assert doc["kind"] == "saved_plan" and doc["format_version"] == "1.0"
    assert basis["generation"] == 1 and basis["state_dir"] == str(state) and basis["store_id"]
    assert basis["manifest"] == {"path": str(path), "digest": manifest.digest}
    assert basis["options"] == {"prune": True, "allow_empty": False}
    assert basis["spec_hashes"] == [{"profile": "gamma", "spec_hash": manifest.spec.profile("gamma").spec_hash}]
    assert [(a["profile"], a["action"]) for a in basis["actions"]] == [("gamma", "spawn")]
    # The plan is `diff -o json`'s document: a rotated secret shows as changed, never with a value.
    shown = json.loads(run("diff", "-f", str(path), "--state-dir", str(state), "-o", "json").stdout)
    assert doc["plan"]["changes"] == shown["changes"]
    diffs = {d["path"]: d for d in doc["plan"]["changes"][0]["diff"]}
    assert diffs["env.TELEGRAM_BOT_TOKEN"]["sensitive"] and "after" not in diffs["env.TELEGRAM_BOT_TOKEN"]


def test_diff_out_saves_the_whole_plan_whichever_profile_is_shown(tmp_path):
    path = _manifest(tmp_path, {"alpha": {"driver": "process", "command": ["true"]}, **_gamma()})
    doc = _save(path, tmp_path / "state", tmp_path / "plan.json", "--profile", "alpha", "-o", "json")
    assert [a["profile"] for a in doc["basis"]["actions"]] == ["alpha", "gamma"]
    assert not (tmp_path / "state").exists(), "diff --out writes the plan and nothing else"
    result = run("diff", "-f", str(path), "--state-dir", str(tmp_path / "state"), "--out", str(path))
    assert result.exit_code == 2 and "is the manifest" in result.output
    assert load_manifest(path).spec.names == ("alpha", "gamma")


# -- apply PLAN refuses a stale plan ------------------------------------------------------------------

def test_a_plan_is_stale_once_the_store_moved_to_another_generation(tmp_path):
    state, plan = tmp_path / "state", tmp_path / "plan.json"
    path = _manifest(tmp_path, _gamma())
    _save(path, state, plan)
    _record(_manifest(tmp_path, _gamma(key="other"), name="other.yaml"), state)
    message = _refused(plan)
    assert message.startswith("saved plan is stale: generation 0 -> 1 (applied by "), message
    assert message.endswith("other.yaml)")
    assert _generation(state) == 1, "a refused plan records nothing"
    assert not (state / ".supervisor.json").exists(), "and starts no controller"


def test_a_plan_is_stale_once_its_manifest_changed_on_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state, plan = tmp_path / "state", tmp_path / "plan.json"
    path = _manifest(tmp_path, _gamma())
    before = load_manifest(path).digest
    _save(path, state, plan)
    path.write_text(path.read_text().replace("LOG_LEVEL: info", "LOG_LEVEL: debug"))
    after = load_manifest(path).digest
    assert _refused(plan) == (f"manifest fleet.yaml changed since the plan: digest {before[7:19]} -> "
                              f"{after[7:19]}")
    path.write_text("version: 1\nprofiles: {Bad: {}}\n")
    assert _refused(plan).startswith("manifest fleet.yaml changed since the plan: it no longer loads (")
    assert not state.exists()


def test_a_plan_is_stale_once_the_plan_computed_now_differs(tmp_path):
    state, plan = tmp_path / "state", tmp_path / "plan.json"
    path = _manifest(tmp_path, {"alpha": {"driver": "process", "command": ["true"]}, **_gamma()})
    _record(path, state)
    _save(path, state, plan)
    # Same generation, same manifest: an operator's `stop` changed what the plan does.
    assert run("stop", "gamma", "--state-dir", str(state), "-f", str(path)).exit_code in (0, 1)
    message = _refused(plan)
    assert message.startswith("saved plan is stale: the plan computed now differs (gamma: spawn "), message
    assert message.endswith(" -> nothing)")


def test_a_plan_is_stale_once_a_process_it_acts_on_is_another(tmp_path, reaper):
    """The plan adopts a process started by hand; its identity is re-observed the way `diff` observes."""
    state, plan = tmp_path / "state", tmp_path / "plan.json"
    probe = f"savedplan-probe-{os.getpid()}-{tmp_path.name}"
    proc = reaper.spawn([sys.executable, "-c", "import time; time.sleep(60)", probe])
    path = _manifest(tmp_path, {"gamma": {"driver": "process", "command": ["true"], "match": probe}})
    doc = _save(path, state, plan)
    (ident,) = doc["basis"]["processes"]
    assert (ident["profile"], ident["action"], ident["pid"]) == ("gamma", "adopt", proc.pid)
    assert ident["start_ticks"] is not None or ident["create_time"]

    forged = json.loads(plan.read_text())  # the same pid, started at another time: a reused pid
    for entry in forged["basis"]["processes"]:
        entry["start_ticks"] = None if entry["start_ticks"] is None else entry["start_ticks"] - 100
        entry["create_time"] -= 100
    reused = tmp_path / "reused.json"
    reused.write_text(json.dumps(forged))
    expected = f"executor: pid {proc.pid} is no longer the recorded process (profile gamma, planned adopt)"
    assert _refused(reused) == expected

    proc.kill()
    proc.wait(timeout=10)
    assert _refused(plan) == expected


def test_a_saved_plan_decides_its_manifest_options_and_state_directory(tmp_path):
    state, plan = tmp_path / "state", tmp_path / "plan.json"
    path = _manifest(tmp_path, _gamma())
    _save(path, state, plan)
    for extra in (["-f", str(path)], ["--no-prune"], ["--allow-empty"]):
        result = run("apply", str(plan), *extra)
        assert result.exit_code == 2 and "cannot be given with a saved plan" in result.output, (extra, result.output)
    result = run("apply", str(path))
    assert result.exit_code == 2 and f"{path} is not a saved plan" in result.output
    assert f"apply -f {path}" in result.output
    other = tmp_path / "other-state"
    assert _refused(plan, "--state-dir", str(other)) == (f"saved plan was made for state directory {state}, "
                                                          f"not {other}")
    result = run("apply", str(plan), "-o", "json", "--state-dir", str(other))
    assert result.exit_code == 3
    assert json.loads(result.stdout)["check"] == "saved_plan"


def test_the_generation_is_checked_again_where_it_is_recorded(tmp_path):
    """`apply PLAN` records only while the store is at the plan's generation, checked in the transaction
    that records: an apply that lands between the checks and the record is not overwritten."""
    from fleet.cli.apply_cmd import _record as record_for_apply
    from fleet.cli.console import Exit
    from fleet.cli.saved_plan import read_plan
    from fleet.controller.plan_report import plan_report
    from fleet.controller.preview import preview
    from fleet.platform import current_platform

    state, plan = tmp_path / "state", tmp_path / "plan.json"
    path = _manifest(tmp_path, _gamma())
    _save(path, state, plan)
    saved = read_plan(plan)
    manifest, state_dir = load_manifest(path), StateDir(state)
    store = Store(state_dir.db, readonly=True)
    try:
        report = plan_report(preview(manifest, state_dir, store, current_platform(), 0.0))
    finally:
        store.close()
    _record(_manifest(tmp_path, _gamma(key="other"), name="other.yaml"), state)  # lands in between
    with pytest.raises(Exit) as refused:
        record_for_apply(manifest, state_dir, report, prune=True, saved=saved, source=None, output="text")
    assert refused.value.exit_code == 3
    assert _generation(state) == 1


# -- --require-clean, --check-revision ------------------------------------------------------------------

def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "HOME": str(repo)}
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo), *args],
                          check=True, capture_output=True, text=True, env=env).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> tuple[Path, Path, str]:
    """A git repository holding fleet.yaml and a README, both committed: (repo, manifest, HEAD)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    path = _manifest(repo, _gamma())
    (repo / "README").write_text("fleet\n")
    _git(repo, "add", "fleet.yaml", "README")
    _git(repo, "commit", "-q", "-m", "fleet")
    return repo, path, _git(repo, "rev-parse", "HEAD")


def test_require_clean_passes_a_clean_tree_and_names_what_is_not_committed(repo):
    root, path, _ = repo
    assert guard_problem(str(path), require_clean=True, check_revision=None) is None
    (root / "plan.json").write_text("{}")  # untracked files beside the manifest leave the tree clean
    assert guard_problem(str(path), require_clean=True, check_revision=None) is None
    (root / "README").write_text("changed\n")
    problem = guard_problem(str(path), require_clean=True, check_revision=None)
    assert problem == f"--require-clean: the git work tree {root.resolve()} has uncommitted changes: README"
    _git(root, "add", "README")  # staged is not committed either
    assert guard_problem(str(path), require_clean=True, check_revision=None) == problem
    _git(root, "commit", "-q", "-m", "readme")
    other = _manifest(root, _gamma(), name="new.yaml")  # a manifest git does not track
    assert guard_problem(str(other), require_clean=True, check_revision=None) == \
        f"--require-clean: the git work tree {root.resolve()} has uncommitted changes: new.yaml (not committed)"


def test_check_revision_takes_head_or_a_prefix_of_seven_and_names_both(repo):
    _, path, head = repo
    for sha in (head, head[:7], head[:12].upper()):
        assert guard_problem(str(path), require_clean=False, check_revision=sha) is None, sha
    wrong = "0" * 7 if not head.startswith("0" * 7) else "1" * 7
    assert guard_problem(str(path), require_clean=False, check_revision=wrong) == \
        f"--check-revision: HEAD of {path.parent.resolve()} is {head}, not {wrong}"


def test_apply_guards_refuse_with_exit_3_before_anything_is_recorded(repo, tmp_path):
    root, path, head = repo
    state = tmp_path / "state"
    (root / "README").write_text("changed\n")
    result = run("apply", "-f", str(path), "--state-dir", str(state), "--require-clean")
    assert result.exit_code == 3 and "Refused: --require-clean: the git work tree" in result.output
    result = run("apply", "-f", str(path), "--state-dir", str(state), "--check-revision", "abcdef0", "-o", "json")
    assert result.exit_code == 3
    doc = json.loads(result.stdout)
    assert doc["check"] == "check_revision" and doc["message"].endswith(f"is {head}, not abcdef0")
    result = run("apply", "-f", str(path), "--state-dir", str(state), "--check-revision", head[:6])
    assert result.exit_code == 2 and "at least 7 hex digits" in result.output
    # A saved plan is checked against its manifest's repository.
    plan = tmp_path / "plan.json"
    _save(path, state, plan)
    assert _refused(plan, "--require-clean").startswith("--require-clean: the git work tree ")
    assert not state.exists()


@pytest.mark.parametrize("option", [["--require-clean"], ["--check-revision", "abcdef0"]])
def test_apply_guards_refuse_outside_a_git_repository(tmp_path, option):
    outside = tmp_path / "outside"  # tmp_path lies in no repository
    outside.mkdir()
    path = _manifest(outside, _gamma())
    result = run("apply", "-f", str(path), "--state-dir", str(tmp_path / "state"), *option)
    assert result.exit_code == 3, result.output
    assert f"Refused: {option[0]}: {path} is not in a git repository with a commit" in result.output


# -- carried out ----------------------------------------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the demo gateway's process model")
@pytest.mark.timeout(60)
def test_apply_plan_carries_out_the_saved_plan_and_the_plan_is_then_spent(fleet):
    fleet.write_manifest({"alpha": None})
    plan = fleet.tmp / "plan.json"
    saved = fleet.cli("diff", "--out", str(plan))
    assert saved.returncode == 1, fleet.explain(saved)
    result = fleet.cli("apply", str(plan), "--timeout", "30s", with_file=False)
    assert result.returncode == 0, fleet.explain(result)
    assert "Converged: 1 running." in result.stdout
    assert fleet.record("alpha") is not None
    assert any(e.kind == "applied" and e.message.endswith("(saved plan)") for e in fleet.journal())
    again = fleet.cli("apply", str(plan), with_file=False)
    assert again.returncode == 3, fleet.explain(again)
    assert "Refused: saved plan is stale: generation 0 -> 1 (applied by " in again.stderr
