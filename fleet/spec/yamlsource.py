"""YAML to plain data, keeping the line and column of every key and value.

Duplicate keys are errors, multi-document files are refused, and alias expansion is
bounded so that a "billion laughs" document fails fast instead of eating memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from fleet.spec.errors import ManifestError, Problem

MAX_NODES = 2_000_000
MAX_DEPTH = 64

Path = tuple  # of str | int


@dataclass
class Located:
    data: object
    value_marks: dict[Path, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def mark(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """Closest known position for a path (its key, its value, or an ancestor's)."""
        path = tuple(path)
        while True:
            if key and path in self.key_marks:
                return self.key_marks[path]
            if path in self.value_marks:
                return self.value_marks[path]
            if path in self.key_marks:
                return self.key_marks[path]
            if not path:
                return (0, 0)
            path = path[:-1]


def _pos(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def load_located(text: str, filename: str) -> Located:
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.composer.ComposerError as exc:
            if "expected a single document" in str(exc):
                mark = exc.problem_mark
                raise ManifestError([Problem(filename, mark.line + 1 if mark else 0, mark.column + 1 if mark else 0, "",
                                             "the file holds more than one YAML document; fleet.yaml must be one document")])
            raise
        located = Located(data=None)
        budget = [MAX_NODES]
        problems: list[Problem] = []
        if root is None:
            raise ManifestError([Problem(filename, 1, 1, "", "the manifest is empty",
                                         "start with 'version: 1' and a 'profiles:' map")])
        located.data = _build(loader, root, (), located, budget, problems, filename, 0)
        if problems:
            raise ManifestError(problems)
        return located
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        what = exc.problem or str(exc)
        raise ManifestError([Problem(filename, line, col, "", f"not valid YAML: {what}")]) from None
    except yaml.YAMLError as exc:
        raise ManifestError([Problem(filename, 0, 0, "", f"not valid YAML: {exc}")]) from None
    except RecursionError:
        raise ManifestError([Problem(filename, 0, 0, "", "the document nests too deeply")]) from None
    finally:
        loader.dispose()


def _build(loader, node, path, located, budget, problems, filename, depth):
    budget[0] -= 1
    if budget[0] < 0:
        raise ManifestError([Problem(filename, *_pos(node), _dotted(path),
                                     f"the document expands to more than {MAX_NODES} nodes (alias bomb?)")])
    if depth > MAX_DEPTH:
        raise ManifestError([Problem(filename, *_pos(node), _dotted(path),
                                     f"the document nests deeper than {MAX_DEPTH} levels")])
    located.value_marks.setdefault(path, _pos(node))
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_object(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, child, path + (i,), located, budget, problems, filename, depth + 1)
                for i, child in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves << merge keys
        result: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(filename, *_pos(key_node), _dotted(path), "a mapping key must be a plain scalar"))
                continue
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                key = str(key) if not isinstance(key, bool) else str(key).lower()
            if key in result:
                first = located.key_marks.get(path + (key,), (0, 0))
                problems.append(Problem(filename, *_pos(key_node), _dotted(path + (key,)),
                                        f"duplicate key '{key}' (first defined at line {first[0]})"))
                continue
            located.key_marks[path + (key,)] = _pos(key_node)
            result[key] = _build(loader, value_node, path + (key,), located, budget, problems, filename, depth + 1)
        return result
    return None


def _dotted(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


dotted = _dotted
