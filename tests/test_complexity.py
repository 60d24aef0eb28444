"""The core stays readable: no function in the planner, the executor, the controller or the store above
cyclomatic complexity 15 (radon's measure), unless its docstring says why under a line starting
`Complexity:`. The planner's flows set the standard the edges are held to."""

from __future__ import annotations

from pathlib import Path

import pytest
from radon.complexity import cc_visit
from radon.visitors import Class

REPO = Path(__file__).resolve().parents[1]
CORE = ("plan", "execute", "controller", "store")
LIMIT = 15


def _functions(blocks) -> dict:
    """Every function, method and closure once (radon lists a class's methods with the class and alone)."""
    found = {}
    for block in blocks:
        if isinstance(block, Class):
            found.update(_functions(block.methods))
        else:
            found[(block.lineno, block.fullname)] = block
            found.update(_functions(block.closures))
    return found


def _docstring_explains(source_lines: list[str], block) -> bool:
    body = "\n".join(source_lines[block.lineno - 1:block.endline])
    return "Complexity:" in body.split('"""', 2)[1] if body.count('"""') >= 2 else False


@pytest.mark.parametrize("package", CORE)
def test_no_function_in_the_core_is_above_the_limit(package):
    over = []
    for path in sorted((REPO / "fleet" / package).rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for block in _functions(cc_visit(source)).values():
            if block.complexity > LIMIT and not _docstring_explains(lines, block):
                over.append(f"{path.relative_to(REPO)}:{block.lineno} {block.fullname} ({block.complexity})")
    assert not over, f"above cyclomatic complexity {LIMIT}:\n" + "\n".join(over)


def test_the_measure_sees_a_complex_function():
    branches = "\n".join(f"    if x == {i}:\n        return {i}" for i in range(LIMIT + 1))
    (block,) = cc_visit(f"def f(x):\n{branches}\n    return -1\n")
    assert block.complexity > LIMIT
