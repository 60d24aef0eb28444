"""YAML to plain data, keeping the line and column of every key and value.

Duplicate keys are errors, multi-document files are refused, and alias expansion is
bounded so that a "billion laughs" document fails fast instead of eating memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.spec.pyyaml import yaml

from fleet.spec.errors import ManifestError, Problem

MAX_NODES = 250_000  # with aliases expanded; a 1,000-profile manifest has ~15,000
MAX_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"

Path = tuple  # of str | int


@dataclass
class Located:
    """A YAML document as plain data, with the line and column of every key and value, by path."""
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


def _line_col(text: str, index: int) -> tuple[int, int]:
    before = text[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


class _Prepared:
    """One pass over the distinct nodes, before anything is expanded: merge keys resolved once
    per node by the project's own rule (see `_merged_pairs`), the size of every node with its
    aliases expanded, and how often each node is referenced. An alias bomb is thereby measured
    in time linear in the file, not in its expansion. Nodes are never mutated, so the result
    does not depend on how a PyYAML release flattens merges."""

    def __init__(self, loader, root, filename: str):
        self.loader = loader
        self.filename = filename
        self.pairs: dict[int, list] = {}
        self.size: dict[int, int] = {}
        self.refs: dict[int, int] = {}
        self._active: set[int] = set()
        self._visit(root, 0)

    def _visit(self, node, depth: int) -> int:
        key = id(node)
        if key in self.size:
            return self.size[key]
        if depth > MAX_DEPTH:
            raise ManifestError([Problem(self.filename, *_pos(node), "",
                                         f"the document nests deeper than {MAX_DEPTH} levels")])
        if key in self._active:
            raise ManifestError([Problem(self.filename, *_pos(node), "",
                                         "a recursive alias: an anchor is used inside its own value")])
        self._active.add(key)
        children: list = []
        if isinstance(node, yaml.MappingNode):
            for source in self._merge_sources(node):
                self._visit(source, depth + 1)
            self.pairs[key] = self._merged_pairs(node)
            children = [value_node for _, value_node in self.pairs[key]]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        total = 1
        for child in children:
            self.refs[id(child)] = self.refs.get(id(child), 0) + 1
            total += self._visit(child, depth + 1)
        self._active.discard(key)
        self.size[key] = min(total, MAX_NODES + 1)
        return self.size[key]

    def _merge_sources(self, node) -> list:
        sources: list = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                continue
            listed = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in listed:
                if not isinstance(source, yaml.MappingNode):
                    raise ManifestError([Problem(self.filename, *_pos(source), "",
                                                 "a merge key '<<' takes a mapping (*anchor) or a list of "
                                                 f"mappings; found {_node_kind(source)}")])
                sources.append(source)
        return sources

    def _merged_pairs(self, node) -> list:
        """The YAML 1.1 merge rule, owned here: the mapping's own keys win over merged ones, and
        among merge sources the one listed first wins. Own pairs are kept whole (a duplicate among
        them is still reported); merged pairs that lose are dropped, so they are never duplicates."""
        own = [(k, v) for k, v in node.value if k.tag != _MERGE_TAG]
        sources = self._merge_sources(node)
        if not sources:
            return own
        taken = {_key_of(self.loader, k, self.filename) for k, _ in own if isinstance(k, yaml.ScalarNode)}
        merged: list = []
        for source in sources:
            for key_node, value_node in self.pairs[id(source)]:
                if isinstance(key_node, yaml.ScalarNode):
                    name = _key_of(self.loader, key_node, self.filename)
                    if name in taken:
                        continue
                    taken.add(name)
                merged.append((key_node, value_node))
        return merged + own

    def check_size(self, root) -> None:
        """Refuse a document that expands beyond MAX_NODES, naming the outermost value that does."""
        if self.size[id(root)] <= MAX_NODES:
            return
        node, where = root, _pos(root)
        path: tuple[object, ...] = ()
        while True:
            if isinstance(node, yaml.MappingNode):
                pairs = [(k, v, k) for k, v in self.pairs[id(node)]]
            elif isinstance(node, yaml.SequenceNode):
                pairs = [(i, v, v) for i, v in enumerate(node.value)]
            else:
                break
            big = next(((k, v, at) for k, v, at in pairs
                        if self.size[id(v)] > MAX_NODES and self.refs.get(id(v), 0) == 1), None)
            if big is None:
                break
            k, node, at = big
            path += (k.value if isinstance(k, yaml.Node) else k,)
            where = _pos(at)
        raise ManifestError([Problem(self.filename, *where, _dotted(path),
                                     f"the document expands to more than {MAX_NODES} nodes once aliases are "
                                     f"expanded (alias bomb?)")])


class _Loader(yaml.SafeLoader):
    """SafeLoader that stops composing at MAX_DEPTH, before Python's recursion limit does."""

    def __init__(self, stream, filename: str):
        super().__init__(stream)
        self._filename = filename
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:
                mark = self.peek_event().start_mark
                raise ManifestError([Problem(self._filename, mark.line + 1, mark.column + 1, "",
                                             f"the document nests deeper than {MAX_DEPTH} levels")])
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _compose_fast(text: str, filename: str):
    """libyaml composes ~50x faster than the Python composer but recurses in C (and crashes on
    deep nesting), so its flat event stream is measured first. Any doubt or error: None, and the
    Python path composes and reports with its exact messages."""
    if not getattr(yaml, "__with_libyaml__", False):
        return None
    try:
        probe = yaml.CSafeLoader(text)
        try:
            depth = events = 0
            while True:
                event = probe.get_event()
                events += 1
                if event is None or isinstance(event, yaml.StreamEndEvent):
                    break
                if events > MAX_NODES:
                    mark = event.start_mark
                    raise ManifestError([Problem(filename, mark.line + 1 if mark else 0,
                                                 mark.column + 1 if mark else 0, "",
                                                 f"the document has more than {MAX_NODES} nodes; refusing it")])
                if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                    depth += 1
                    if depth > MAX_DEPTH + 1:
                        return None
                elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                    depth -= 1
        finally:
            probe.dispose()
        loader = yaml.CSafeLoader(text)
        return loader, loader.get_single_node()
    except (yaml.YAMLError, ValueError):
        return None


_STR_TAG = "tag:yaml.org,2002:str"


def _located_plain(text: str) -> Located | None:
    """A plain document (no anchor, alias, merge key or explicit tag, no problem of any kind, at most
    MAX_DEPTH levels and MAX_NODES events) built in one pass over libyaml's events, with the very
    data and marks the node path below builds. Anything else: None, and the node path loads the
    document and reports what it finds. A fleet.yaml is almost always plain, and this pass costs
    less than composing, measuring and building nodes (a third of the time at 1,000 profiles)."""
    if not getattr(yaml, "__with_libyaml__", False):
        return None
    loader = yaml.CSafeLoader(text)
    try:
        return _plain_events(loader)
    except Exception:  # noqa: BLE001 - any error is the node path's to report, with its own message
        return None
    finally:
        loader.dispose()


def _plain_events(loader) -> Located | None:
    get = loader.get_event
    value_marks: dict[Path, tuple[int, int]] = {}
    key_marks: dict[Path, tuple[int, int]] = {}
    scalar_event, map_start, seq_start = yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent
    map_end, seq_end = yaml.MappingEndEvent, yaml.SequenceEndEvent
    if type(get()) is not yaml.StreamStartEvent or type(get()) is not yaml.DocumentStartEvent:
        return None
    # Open collections, innermost last: [container, its path, the path of the key awaiting its value (maps)].
    stack: list[list] = []
    root: object = None
    events = 2
    while True:
        event = get()
        events += 1
        if events > MAX_NODES:
            return None
        kind = type(event)
        if kind is map_end or kind is seq_end:
            done = stack.pop()
            if not stack:
                root = done[0]
                break
            continue
        if event.anchor is not None or event.tag is not None:
            return None
        if not stack:
            if kind is not map_start and kind is not seq_start:
                return None  # a bare scalar, an empty document, an alias
            path: Path = ()
            container = None
        else:
            top = stack[-1]
            container = top[0]
            if type(container) is dict and top[2] is None:
                if kind is not scalar_event:
                    return None
                key = event.value
                tag = loader.resolve(yaml.ScalarNode, key, event.implicit)
                if tag == _MERGE_TAG or key in container:
                    return None
                if tag != _STR_TAG:  # kept as written, but constructed as `_key_of` does, to refuse what it refuses
                    _construct_event(loader, event, tag)
                key_path = top[2] = top[1] + (key,)
                key_marks[key_path] = _pos(event)
                continue
            if type(container) is dict:
                path, top[2] = top[2], None
            else:
                path = top[1] + (len(container),)
        value_marks[path] = _pos(event)
        if kind is scalar_event:
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            value = event.value if tag == _STR_TAG else _construct_event(loader, event, tag)
        elif kind is map_start or kind is seq_start:
            if len(stack) >= MAX_DEPTH:
                return None
            value = {} if kind is map_start else []
            stack.append([value, path, None])
        else:
            return None  # an alias
        if type(container) is dict:
            container[path[-1]] = value
        elif container is not None:
            container.append(value)
    if type(get()) is not yaml.DocumentEndEvent or type(get()) is not yaml.StreamEndEvent:
        return None
    return Located(data=root, value_marks=value_marks, key_marks=key_marks)


def _construct_event(loader, event, tag: str):
    """A scalar event's value as the safe loader constructs the node it would compose."""
    return loader.construct_object(yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style),
                                   deep=True)


def load_located(text: str, filename: str) -> Located:
    return _located_plain(text) or _located_by_nodes(text, filename)


def _located_by_nodes(text: str, filename: str) -> Located:
    loader = None
    try:
        fast = _compose_fast(text, filename)
        if fast is not None:
            loader, root = fast
        else:
            loader = _Loader(text, filename)  # checks for unprintable characters already
        try:
            root = root if fast is not None else loader.get_single_node()
        except yaml.composer.ComposerError as exc:
            if "expected a single document" in str(exc):
                mark = exc.problem_mark
                raise ManifestError([Problem(filename, mark.line + 1 if mark else 0, mark.column + 1 if mark else 0, "",
                                             "the file holds more than one YAML document; fleet.yaml must be one "
                                             "document")]) from None
            raise
        located = Located(data=None)
        budget = [MAX_NODES]
        problems: list[Problem] = []
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == "tag:yaml.org,2002:null"):
            raise ManifestError([Problem(filename, 1, 1, "", "the manifest is empty",
                                         "start with 'version: 1' and a 'profiles:' map")])
        prepared = _Prepared(loader, root, filename)
        prepared.check_size(root)
        located.data = _build(loader, root, (), located, budget, problems, filename, 0, prepared.pairs)
        if problems:
            raise ManifestError(problems)
        return located
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        what = exc.problem or str(exc)
        raise ManifestError([Problem(filename, line, col, "", f"not valid YAML: {what}")]) from None
    except yaml.reader.ReaderError as exc:
        line, col = _line_col(text, exc.position)
        what = f"unprintable character #x{exc.character:04x}" if isinstance(exc.character, int) else str(exc.reason)
        raise ManifestError([Problem(filename, line, col, "", f"not valid YAML: {what} ({exc.reason})")]) from None
    except yaml.YAMLError as exc:
        raise ManifestError([Problem(filename, 0, 0, "", f"not valid YAML: {exc}")]) from None
    except RecursionError:
        mark = loader.get_mark() if loader is not None else None
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise ManifestError([Problem(filename, line, col, "",
                                     f"the document nests too deeply (more than {MAX_DEPTH} levels are refused)")]) from None
    finally:
        if loader is not None:
            loader.dispose()


def _build(loader, node, path, located, budget, problems, filename, depth, pairs_of):
    budget[0] -= 1
    if budget[0] < 0:
        raise ManifestError([Problem(filename, *_pos(node), _dotted(path),
                                     f"the document expands to more than {MAX_NODES} nodes (alias bomb?)")])
    if depth > MAX_DEPTH:
        raise ManifestError([Problem(filename, *_pos(node), _dotted(path),
                                     f"the document nests deeper than {MAX_DEPTH} levels")])
    located.value_marks.setdefault(path, _pos(node))
    if isinstance(node, yaml.ScalarNode):
        return _construct_scalar(loader, node, filename, path)
    if node.tag not in (_SEQ_TAG, _MAP_TAG) and not isinstance(node, yaml.ScalarNode):
        problems.append(Problem(filename, *_pos(node), _dotted(path), f"unsupported YAML tag '{node.tag}'"))
        return None
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, child, path + (i,), located, budget, problems, filename, depth + 1, pairs_of)
                for i, child in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        result: dict = {}
        for key_node, value_node in pairs_of[id(node)]:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(filename, *_pos(key_node), _dotted(path), "a mapping key must be a plain scalar"))
                continue
            key = _key_of(loader, key_node, filename, path + (key_node.value,))
            if key in result:
                first = located.key_marks.get(path + (key,), (0, 0))
                problems.append(Problem(filename, *_pos(key_node), _dotted(path + (key,)),
                                        f"duplicate key '{key}' (first defined at line {first[0]})"))
                continue
            located.key_marks[path + (key,)] = _pos(key_node)
            result[key] = _build(loader, value_node, path + (key,), located, budget, problems, filename, depth + 1,
                                 pairs_of)
        return result
    return None


def _key_of(loader, key_node, filename: str, path: Path = ()) -> str:
    """A key as written: `NO:` stays "NO" (not YAML 1.1's false), `007:` stays "007" (not 7)."""
    _construct_scalar(loader, key_node, filename, path)  # refuses what the safe loader refuses
    return key_node.value


def _construct_scalar(loader, node, filename: str, path: Path):
    """A scalar as the safe loader builds it. One that has a type's form but is no valid value of it
    (`2001-13-45` looks like a date) is an error in the file, located, not a crash."""
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, OverflowError) as exc:
        kind = node.tag.rsplit(":", 1)[-1].replace("timestamp", "date")
        raise ManifestError([Problem(filename, *_pos(node), _dotted(path),
                                     f"has the form of a YAML {kind} but is not a valid one ({exc})",
                                     "quote it to keep it as text")]) from None


def _node_kind(node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return f"the scalar {node.value!r}" if node.value else "nothing"


def _dotted(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


dotted = _dotted
