"""The imports of `fleet/` follow the layer table of docs/architecture.md: a module imports its own package
and the packages of lower layers, never a higher layer or another package of its own layer. So there is no
package cycle and no upward import, and the table stays true."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO / "docs" / "architecture.md"
ROW = re.compile(r"^\|\s*(\d+)\s*\|(.*?)\|")


def layer_table() -> dict[str, int]:
    """Package -> layer number (1 is the top), from the table under `## Layers`."""
    text = ARCHITECTURE.read_text(encoding="utf-8").split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers: dict[str, int] = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            for package in re.findall(r"`([\w.]+)`", match.group(2)):
                layers[package] = int(match.group(1))
    return layers


def package_of(module: str, layers: dict[str, int]) -> str:
    """The longest entry of the table that `module` is or lies in (`fleet` alone: the root's `__init__`)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in layers:
            return candidate
    raise AssertionError(f"{module} lies in no layer of {ARCHITECTURE.name}'s table")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `fleet` import in the file, function-level and `TYPE_CHECKING` ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base == "fleet":  # `from fleet import x`: x may be a package
                found += [(node.lineno, f"fleet.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return [(line, name) for line, name in found if name == "fleet" or name.startswith("fleet.")]


def test_every_package_is_in_the_layer_table():
    layers = layer_table()
    packages = {f"fleet.{p.name}" for p in (REPO / "fleet").iterdir() if (p / "__init__.py").exists()}
    assert packages <= set(layers), f"missing from the table: {sorted(packages - set(layers))}"
    modules = {entry for entry in layers if (REPO / f"{entry.replace('.', '/')}.py").is_file()}
    assert set(layers) <= packages | modules | {"fleet"}, \
        f"neither a package nor a module: {sorted(set(layers) - packages - modules - {'fleet'})}"


def test_imports_go_only_down_the_layer_table():
    layers = layer_table()
    wrong = []
    for path in sorted((REPO / "fleet").rglob("*.py")):
        source = package_of(module_name(path), layers)
        for line, imported in imports_of(path):
            target = package_of(imported, layers) if imported != "fleet" else "fleet"
            if target != source and layers[target] <= layers[source]:
                where = "the same layer" if layers[target] == layers[source] else "a higher layer"
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {imported} ({where}: "
                             f"{source} is {layers[source]}, {target} is {layers[target]})")
    assert not wrong, "\n".join(wrong)
