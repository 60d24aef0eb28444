"""The compiled yes/no (fleet.spec.schema_check) and jsonschema accept and reject the same documents.

Documents are the example manifests mutated at random: a value replaced by one the schema itself names (an
enum member, a default, a const), by an edge of JSON typing (True beside 1, 1.0 beside 1, None, a NUL), a key
added (known or unknown) or removed; and random JSON trees. Either path may be the one a manifest takes, so
they must agree everywhere."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from fleet.spec.schema import fast_check, load_schema
from fleet.spec.schema_check import UnsupportedSchema, compile_schema, json_equal
import itertools

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_NAMES = sorted(p.name for p in (ROOT / "schemas").glob("*.schema.json"))


def _walk(node, found: dict[str, list]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("default", "const"):
                found["values"].append(value)
            elif key == "enum":
                found["values"].extend(value)
            elif key == "properties" and isinstance(value, dict):
                found["keys"].extend(value)
            _walk(value, found)
    elif isinstance(node, list):
        for value in node:
            _walk(value, found)


FOUND: dict[str, list] = {"values": [], "keys": []}
_walk(load_schema(), FOUND)
EDGES = [0, 1, -1, 1.0, 0.5, 2 ** 40, True, False, None, "", "x", "1s", "90s", "20m", "1h", "2.5s", "0",
         "a\x00b", "alpha", "Alpha", "-x", "0 3 * * *", "127.0.0.1:9464", ":9464", "[::1]:9464", "hermes",
         "A" * 70, [], [1], ["a"], ["1s", "2s"], {}, {"a": 1}, {"FOO": "bar"}, {"1A": "x"}]
VALUES = FOUND["values"] + EDGES
KEYS = sorted(set(FOUND["keys"])) + ["bogus", "x-extra", "Profiles", "1"]


def _manifests() -> list[dict]:
    docs = []
    for path in sorted((ROOT / "examples").rglob("fleet.yaml")):
        docs.append(yaml.safe_load(path.read_text()))
    return docs


BASES = _manifests()


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


def _mutate(doc, data) -> None:
    paths = list(_paths(doc))
    path = data.draw(st.sampled_from(paths))
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    kind = data.draw(st.sampled_from(["replace", "replace", "add", "remove"]))
    target = parent[path[-1]] if path else doc
    if kind == "replace" and path:
        parent[path[-1]] = copy.deepcopy(data.draw(st.sampled_from(VALUES)))
    elif kind == "add" and isinstance(target, dict):
        target[data.draw(st.sampled_from(KEYS))] = copy.deepcopy(data.draw(st.sampled_from(VALUES)))
    elif kind == "remove" and path and isinstance(parent, dict):
        del parent[path[-1]]


@functools.cache
def _jsonschema(schema_name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(schema_name))


def _agree(doc, schema_name: str = "fleet.schema.json") -> None:
    jsonschema_valid = _jsonschema(schema_name).is_valid(doc)
    assert fast_check(schema_name)(doc) == jsonschema_valid, doc


def test_every_schema_compiles():
    for name in SCHEMA_NAMES:
        assert fast_check(name) is not None, name


def test_the_example_manifests_are_valid_both_ways():
    assert BASES
    for doc in BASES:
        assert fast_check()(doc)
        _agree(doc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_manifests_agree(data):
    doc = copy.deepcopy(data.draw(st.sampled_from(BASES)))
    for _ in range(data.draw(st.integers(1, 4))):
        _mutate(doc, data)
    _agree(doc)


def _resolve(schema):
    while isinstance(schema, dict) and "$ref" in schema:
        target = load_schema()["$defs"][schema["$ref"].rsplit("/", 1)[1]]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _schema_paths(schema, path=(), depth=0):
    """(path, schema) of every place a value can go, a profile named "a" and list item 0 standing for all."""
    schema = _resolve(schema)
    if not isinstance(schema, dict) or depth > 6:
        return
    for branch in schema.get("oneOf", []):
        yield from _schema_paths(branch, path, depth + 1)
    for key, sub in schema.get("properties", {}).items():
        yield path + (key,), sub
        yield from _schema_paths(sub, path + (key,), depth + 1)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield path + ("a",), extra
        yield from _schema_paths(extra, path + ("a",), depth + 1)
    if isinstance(schema.get("items"), dict):
        yield path + (0,), schema["items"]
        yield from _schema_paths(schema["items"], path + (0,), depth + 1)


def _boundaries(schema) -> list:
    schema = _resolve(schema)
    out: list = []
    for key in ("minimum", "maximum"):
        if key in schema:
            n = schema[key]
            out += [n - 1, n, n + 1, n + 0.5, float(n)]
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if key in schema:
            n = schema[key]
            out += ["x" * n, "x" * (n + 1), ["x"] * n, ["x"] * (n + 1)] + (["x" * (n - 1), ["x"] * (n - 1)] if n else [])
    return out + list(schema.get("enum", []))


def _placed(base: dict, path: tuple, value) -> dict | None:
    doc = copy.deepcopy(base)
    node = doc
    for part, after in itertools.pairwise(path):
        if isinstance(node, dict):
            node = node.setdefault(part, [] if isinstance(after, int) else {})
        elif isinstance(node, list) and isinstance(part, int):
            if not node:
                node.append([] if isinstance(after, int) else {})
            node = node[part]
        else:
            return None
    if isinstance(node, dict):
        node[path[-1]] = value
    elif isinstance(node, list) and isinstance(path[-1], int):
        node[:] = [value] + node[1:]
    else:
        return None
    return doc


def test_every_place_and_boundary_agrees():
    """Each place the schema describes, given each edge value and each of its own boundaries, in a manifest
    valid everywhere else: the two paths give the same verdict (the cheap exhaustive half of the proof)."""
    base = {"version": 1, "profiles": {"a": {}}}
    checked = valid = 0
    for path, sub in _schema_paths(load_schema()):
        for value in VALUES + _boundaries(sub):
            doc = _placed(base, path, copy.deepcopy(value))
            if doc is not None:
                _agree(doc)
                checked += 1
                valid += fast_check()(doc)
    assert checked > 5000 and valid > 500, (checked, valid)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(EDGES[:20]) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), inner,
                                                                  max_size=3),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(JSON)
@example({"version": 1, "profiles": {}})
@example({"version": True, "profiles": {}})
@example({"version": 1.0, "profiles": {}})
def test_random_documents_agree(doc):
    _agree(doc)


@pytest.mark.parametrize("name", [n for n in SCHEMA_NAMES if n != "fleet.schema.json"])
@settings(max_examples=60, deadline=None)
@given(doc=JSON)
def test_the_other_schemas_agree(name, doc):
    _agree(doc, name)


def test_an_unknown_keyword_refuses_to_compile():
    with pytest.raises(UnsupportedSchema):
        compile_schema({"type": "object", "dependentRequired": {"a": ["b"]}})
    with pytest.raises(UnsupportedSchema):
        compile_schema({"$ref": "https://example.com/other.json"})


def test_json_equality_is_json_schemas():
    assert json_equal(1, 1.0) and not json_equal(True, 1) and not json_equal(0, False)
    assert json_equal({"a": [1, "x"]}, {"a": [1.0, "x"]}) and not json_equal([True], [1]) and not json_equal("1", 1)
