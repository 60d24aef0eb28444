"""`rollback` and `history` through the real CLI, from a state directory with recorded generations and no
controller: starting or waking one is replaced by a stand-in, so nothing here spawns a process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleet.cli import apply_cmd, rollback_cmd
from fleet.cli.main import app
from fleet.controller.record import record_manifest
from fleet.spec.load import load_manifest
from fleet.store.db import GENERATIONS_KEPT, Store
from fleet.store.layout import StateDir, ensure_state_dir

runner = CliRunner()
PY = json.dumps(sys.executable)


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False, env={"HERMES_FLEET_STATE_DIR": None})


def body(**profiles: str) -> str:
    lines = ["version: 1", f"hermes: {{home: ./home, command: [{PY}]}}"]
    if not profiles:
        return "\n".join(lines + ["profiles: {}"]) + "\n"
    lines.append("profiles:")
    lines += [f"  {name}: {{driver: process, command: [{PY}, -c, pass], env: {{V: '{v}'}}}}"
              for name, v in profiles.items()]
    return "\n".join(lines) + "\n"


class Fleet:
    """A state directory and a fleet.yaml, generations recorded the way `apply` records them."""

    def __init__(self, tmp_path: Path):
        self.manifest = tmp_path / "fleet.yaml"
        self.state = StateDir(tmp_path / "state")
        ensure_state_dir(self.state)

    def apply(self, text: str, origin: str | None = None) -> int:
        self.manifest.write_text(text)
        store = Store(self.state.db)
        try:
            return record_manifest(store, load_manifest(self.manifest), {"revision": f"r{text.count('V')}"},
                                   prune=True, source="apply", origin=origin, lift_down=True).generation
        finally:
            store.close()

    def cli(self, *args: str):
        return run(*args, "-f", str(self.manifest), "--state-dir", str(self.state.root))

    def generations(self) -> list[int]:
        store = Store(self.state.db, readonly=True)
        try:
            return store.generation_numbers()
        finally:
            store.close()

    def generation(self, n: int):
        store = Store(self.state.db, readonly=True)
        try:
            return store.generation(n)
        finally:
            store.close()


@pytest.fixture
def fleet(tmp_path, monkeypatch) -> Fleet:
    woken: list[Path] = []
    monkeypatch.setattr(apply_cmd, "ensure_controller", lambda state: (woken.append(state.root), (4242, False))[1])
    f = Fleet(tmp_path)
    f.woken = woken  # type: ignore[attr-defined]
    return f


def test_dry_run_shows_the_plan_apply_would_show_and_records_nothing(fleet):
    fleet.apply(body(alpha="1"))
    fleet.apply(body(alpha="2"))
    result = fleet.cli("rollback", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Rolling back from generation 2 to the spec of generation 1 (recorded ")
    assert "by apply; revision r1)." in lines[0]
    assert lines[1].startswith("generation 1's spec   generation 2 -> 3   controller: not running")
    assert '~ env.V = "2" -> "1"   # forces replace' in result.output
    assert "Plan: 1 to spawn" in result.output
    assert lines[-1] == "Dry run: nothing recorded. `hermes-fleet rollback 1` would record generation 3."
    doc = json.loads(fleet.cli("rollback", "--dry-run", "-o", "json").output)
    assert (doc["kind"], doc["result"], doc["rollback_of"], doc["generation"]) == ("rollback", "dry_run", 1, 3)
    assert doc["plan"]["kind"] == "plan" and doc["plan"]["summary"]["spawn"] == 1
    assert fleet.generations() == [1, 2] and fleet.woken == []


@pytest.mark.parametrize("output", ["text", "json"])
def test_rollback_records_a_new_generation_with_its_origin_and_wakes_the_controller(fleet, output):
    fleet.apply(body(alpha="1"))
    fleet.apply(body(alpha="2"))
    result = fleet.cli("rollback", "1", "--no-wait", "-o", output)
    assert result.exit_code == 0, result.output
    if output == "json":
        assert json.loads(result.output) == {"format_version": "1.0", "kind": "rollback", "result": "accepted",
                                             "generation": 3, "changed": True, "rollback_of": 1,
                                             "controller_pid": 4242}
    else:
        assert "Plan: 1 to spawn" in result.output
        assert result.output.splitlines()[-1] == "generation 3 recorded (rollback of 1); controller pid 4242 notified"
    assert fleet.woken == [fleet.state.root]
    assert fleet.generations() == [1, 2, 3]
    assert fleet.generation(3).digest == fleet.generation(1).digest
    assert (fleet.generation(3).origin, fleet.generation(3).rollback_of) == ("rollback of 1", 1)
    # The default target is the generation before the current one: back to 2's spec.
    assert fleet.cli("rollback", "--no-wait").exit_code == 0
    assert fleet.generations() == [1, 2, 3, 4] and fleet.generation(4).origin == "rollback of 2"
    assert fleet.generation(4).digest == fleet.generation(2).digest


def test_history_shows_which_writer_made_each_generation(fleet):
    fleet.apply(body(alpha="1"))
    fleet.apply(body(alpha="2"), origin="controller run -f")
    assert fleet.cli("rollback", "1", "--no-wait").exit_code == 0
    text = fleet.cli("history").output.splitlines()
    assert text[0].split() == ["ID", "GEN", "APPLIED", "RESULT", "ORIGIN", "REVISION", "BY"]
    origin_at = text[0].index("ORIGIN")
    assert [line[origin_at:].split("  ")[0] for line in text[1:]] == ["rollback of 1", "controller run -f", "apply"]
    doc = json.loads(fleet.cli("history", "-o", "json").output)
    assert [(r["generation"], r["origin"]) for r in doc] == [(3, "rollback of 1"), (2, "controller run -f"),
                                                            (1, "apply")]
    assert doc[0]["revision"] == "r1" and doc[0]["message"] == "rollback of 1"  # the spec of r1 runs again


def test_nothing_to_roll_back_records_nothing(fleet):
    fleet.apply(body(alpha="1"))
    fleet.apply(body(alpha="2"))
    result = fleet.cli("rollback", "2")
    assert result.exit_code == 0 and result.output == "Nothing to roll back: generation 2 is the current generation.\n"
    doc = json.loads(fleet.cli("rollback", "2", "-o", "json").output)
    assert doc["result"] == "unchanged" and doc["generation"] == 2
    assert fleet.generations() == [1, 2] and fleet.woken == []


def test_an_unknown_or_dropped_generation_is_an_error_that_says_which(fleet):
    for i in range(GENERATIONS_KEPT + 2):
        fleet.apply(body(alpha=str(i)))
    newest = GENERATIONS_KEPT + 2
    result = fleet.cli("rollback", str(newest + 1))
    assert result.exit_code == 2
    assert result.output == (f"error: no generation {newest + 1}: generations run from 1 to {newest}\n"
                             "hint: `hermes-fleet history` lists the generations\n")
    result = fleet.cli("rollback", "1", "-o", "json")
    assert result.exit_code == 2
    assert result.output.startswith(f"error: generation 1 is no longer kept: the store keeps the newest "
                                    f"{GENERATIONS_KEPT} generations (the oldest kept is 3)\n")
    assert fleet.generations()[-1] == newest and fleet.woken == []


def test_only_one_generation_is_nothing_to_go_back_to(fleet):
    fleet.apply(body(alpha="1"))
    result = fleet.cli("rollback")
    assert result.exit_code == 2
    assert result.output == "error: generation 1 is the only generation; nothing to roll back to\n"


def test_no_state_is_an_error(tmp_path):
    result = run("rollback", "--state-dir", str(tmp_path / "none"))
    assert result.exit_code == 2 and "no fleet state in" in result.output


@pytest.mark.parametrize("output", ["text", "json"])
def test_rollback_to_an_empty_generation_meets_the_empty_fleet_guard(fleet, output):
    fleet.apply(body())
    fleet.apply(body(alpha="1", beta="1", gamma="1"))
    result = fleet.cli("rollback", "-o", output)
    assert result.exit_code == 3, result.output
    reason = "the manifest has no profiles but the fleet runs 3; refusing to drain everything"
    if output == "json":
        doc = json.loads(result.stdout)
        assert doc["kind"] == "rollback" and doc["result"] == "refused" and doc["message"].startswith(reason)
    else:
        assert result.output.startswith(f"Refused: {reason}")
    assert fleet.generations() == [1, 2] and fleet.woken == []
    assert fleet.cli("rollback", "--dry-run").exit_code == 3  # a dry run says what the rollback would meet
    assert fleet.cli("rollback", "--allow-empty", "--no-wait").exit_code == 0
    assert fleet.generations() == [1, 2, 3]


def test_a_followed_source_that_is_not_suspended_refuses_the_rollback(fleet, monkeypatch):
    fleet.apply(body(alpha="1"))
    fleet.apply(body(alpha="2"))
    from fleet.controller.writers import followed_source_refusal
    store = Store(fleet.state.db, readonly=True)
    try:
        assert followed_source_refusal(store) is None  # no source can be followed yet: always allowed
    finally:
        store.close()
    monkeypatch.setattr(rollback_cmd, "followed_source_refusal",
                        lambda store: "fleet follows file:///repo@main; suspend it first")
    result = fleet.cli("rollback", "-o", "json")
    assert result.exit_code == 3
    assert json.loads(result.stdout) == {"format_version": "1.0", "kind": "rollback", "result": "refused",
                                         "message": "fleet follows file:///repo@main; suspend it first"}
    assert fleet.generations() == [1, 2] and fleet.woken == []


def test_the_help_and_the_docs_name_how_far_back_rollback_reaches(capsys):
    from fleet.cli.main import main
    with pytest.raises(SystemExit):
        main(["rollback", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"The store keeps the newest {GENERATIONS_KEPT} generations" in text
    root = Path(__file__).resolve().parents[1]
    gitops = (root / "docs" / "gitops.md").read_text(encoding="utf-8")
    headings = [line for line in gitops.splitlines() if line.startswith("## ")]
    assert headings == ["## The review workflow", "## Saved plans and guards", "## Rollback", "## Following a branch"]
    assert f"The store keeps the newest {GENERATIONS_KEPT} generations" in " ".join(gitops.split())
    assert f"newest {GENERATIONS_KEPT} generations" in (root / "docs" / "architecture.md").read_text(encoding="utf-8")
