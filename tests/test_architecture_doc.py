"""docs/architecture.md's table of actions and reasons lists exactly what the planner can emit.

The planner's reasons are read from its source: the string constants of every `Action(kind, profile,
reason, ...)` call, following a reason held in a local variable or passed in as a parameter to the
constants assigned to it or given at the call sites. A reason that is carried over from an earlier
action (a drain's stop phase keeps the reason its begin phase had) adds nothing new."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from fleet.plan.model import Kind, Reason

REPO = Path(__file__).resolve().parents[1]
PLANNER = REPO / "fleet" / "plan" / "planner.py"
VOCABULARY = {"Kind": Kind, "Reason": Reason}


def _constants(node: ast.AST) -> set[str]:
    """The strings an expression may evaluate to, as far as constants tell (names are resolved apart)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in VOCABULARY:
        return {VOCABULARY[node.value.id][node.attr].value}  # Kind.SPAWN, Reason.CRASHED
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "carried":
        return {Reason.carried(None).value}  # a drain's later steps keep its reason: only the fallback is new
    if isinstance(node, ast.IfExp):
        return _constants(node.body) | _constants(node.orelse)
    if isinstance(node, ast.BoolOp):
        return set().union(*(_constants(v) for v in node.values))
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict):  # {"a": "x", ...}[key]
        return set().union(*(_constants(v) for v in node.value.values))
    return set()


class _Planner:
    def __init__(self, tree: ast.Module):
        self.functions = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
        self.tables = {t.id: a.value for a in tree.body if isinstance(a, ast.Assign)
                       for t in a.targets if isinstance(t, ast.Name)}
        self.calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)]
        self.parent_function: dict[ast.AST, ast.FunctionDef] = {}
        for function in self.functions.values():
            for node in ast.walk(function):
                self.parent_function.setdefault(node, function)

    def values(self, node: ast.AST, depth: int = 0) -> set[str]:
        out = _constants(node)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and isinstance(self.tables.get(node.value.id), ast.Dict):  # a module-level table: TABLE[key]
            out |= set().union(*(_constants(v) for v in self.tables[node.value.id].values))
        names = [node] if isinstance(node, ast.Name) else \
            [n for n in ast.walk(node) if isinstance(n, ast.Name)] if isinstance(node, (ast.IfExp, ast.BoolOp)) else []
        function = self.parent_function.get(node)
        for name in names:
            if function is None or depth > 4:
                continue
            out |= self._assigned(function, name.id, depth)
        return out

    def _assigned(self, function: ast.FunctionDef, name: str, depth: int) -> set[str]:
        out: set[str] = set()
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                out |= self.values(node.value, depth + 1)
        params = [a.arg for a in function.args.args]
        if name in params:
            index = params.index(name)
            for call in self.calls:
                if call.func.id != function.name:  # type: ignore[attr-defined]
                    continue
                given = [k.value for k in call.keywords if k.arg == name] or \
                    (call.args[index:index + 1] if index < len(call.args) else [])
                for arg in given:
                    out |= self.values(arg, depth + 1)
        return out

    def actions(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for call in self.calls:
            if call.func.id != "Action" or len(call.args) < 3:  # type: ignore[attr-defined]
                continue
            kinds = self.values(call.args[0])
            reasons = self.values(call.args[2])
            for kind in kinds:
                out.setdefault(kind, set()).update(reasons)
        return out


def planner_actions() -> dict[str, set[str]]:
    return _Planner(ast.parse(PLANNER.read_text(encoding="utf-8"))).actions()


def documented_actions() -> dict[str, set[str]]:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Actions and reasons", 1)[1]
    out: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"[a-z]+", cells[0]) or cells[0] == "action":
            if out and not line.startswith("|"):
                break
            continue
        out[cells[0]] = set(re.findall(r"`([a-z_]+)`", cells[3]))
    return out


def test_the_resolver_finds_reasons_behind_variables_and_parameters():
    found = planner_actions()
    assert {"pid_dead", "record_corrupt"} <= found["reclaim"]  # a dict lookup
    assert {"first_apply", "crashed", "spawn_failed"} <= found["spawn"]  # a local assigned in branches
    assert "desired_stopped" in found["drain"]  # a parameter, given at the call site


def test_architecture_table_lists_exactly_the_planners_actions_and_reasons():
    code, docs = planner_actions(), documented_actions()
    assert sorted(docs) == sorted(code), "actions differ"
    for kind in code:
        assert docs[kind] == code[kind], (kind, "not documented:", sorted(code[kind] - docs[kind]),
                                          "documented, never planned:", sorted(docs[kind] - code[kind]))


def test_plan_schema_enumerates_the_actions_and_reasons():
    schema = json.loads((REPO / "schemas" / "plan.schema.json").read_text(encoding="utf-8"))
    found = {}

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("action", "reason") and isinstance(value, dict) and "enum" in value:
                    found[key] = set(value["enum"])
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    listed = {kind: reasons for kind, reasons in planner_actions().items() if kind != "keep"}  # diff omits keep
    assert found.get("action") == set(listed)
    assert found.get("reason") == set().union(*listed.values())


def test_the_vocabulary_is_exactly_what_the_planner_gives():
    code = planner_actions()
    assert set(code) == {k.value for k in Kind}
    assert set().union(*code.values()) == {r.value for r in Reason}, "a reason the planner never gives, or one not in Reason"
