"""The one-pass event path for plain documents builds exactly what the node path builds (the data,
every value's and key's line and column), and hands every other document to the node path, whose
errors are then the only ones a user sees."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.spec.errors import ManifestError
from fleet.spec.yamlsource import MAX_DEPTH, _located_by_nodes, _located_plain, load_located

pytestmark = pytest.mark.skipif(not getattr(yaml, "__with_libyaml__", False), reason="the event path needs libyaml")


def by_nodes(text: str):
    try:
        return _located_by_nodes(text, "fleet.yaml")
    except ManifestError as exc:
        return exc.problems


def through_the_loader(text: str):
    try:
        return load_located(text, "fleet.yaml")
    except ManifestError as exc:
        return exc.problems


def same(a, b) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return a == b
    return (repr(a.data), a.value_marks, a.key_marks) == (repr(b.data), b.value_marks, b.key_marks)


PLAIN = {
    "block": "version: 1\nprofiles:\n  a: {command: [x, './y'], env: {K: '1', L: \"2\"}}\n  b:\n    desired: stopped\n",
    "flow": "{version: 1, profiles: {a: {command: [x]}}}",
    "every scalar type": "a: 1\nb: 1.5\nc: true\nd: ~\ne: 2001-12-14\nf: 0x1F\ng: .inf\nh: -.nan\ni: ''\nj: 'NO'\n",
    "keys kept as written": "NO: 1\n007: 2\n1.5: 3\n2001-12-14: 4\ntrue: 5\n",
    "null key": "~: 1\nnull: 2\n",
    "block scalars": "a: |\n  one\n  two\nb: >-\n  folded\n  text\n",
    "comments and document markers": "%YAML 1.1\n---\n# c\na: [1, 2] # d\n...\n",
    "nested lists": "a:\n- - 1\n  - [2, {b: c}]\n- {}\n- []\n",
    "unicode": "ä: \"\\u00e9\"\nb: 'é'\n",
    "top-level list": "- a\n- b\n",
    "windows newlines": "a: 1\r\nb:\r\n  c: 2\r\n",
    "deep but within the limit": "a: " + "[" * (MAX_DEPTH - 2) + "1" + "]" * (MAX_DEPTH - 2) + "\n",
}

NOT_PLAIN = {
    "anchor and alias": "a: &x {b: 1}\nc: *x\n",
    "merge key": "a: {<<: {b: 1}, c: 2}\n",
    "explicit tag": "a: !!str 007\n",
    "non-specific tag": "a: ! 007\n",
    "local tag": "a: !custom x\n",
    "duplicate key": "a: 1\na: 2\n",
    "duplicate key in a profile": "profiles:\n  a: {desired: running, desired: stopped}\n",
    "mapping key": "? {a: 1}\n: 2\n",
    "sequence key": "? [a]\n: 2\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "empty": "",
    "only a comment": "# nothing\n",
    "bare scalar": "just text\n",
    "too deep": "a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n",
    "bad timestamp": "a: 2001-13-45\n",
    "bad key timestamp": "2001-13-45: 1\n",
    "value tag": "a: =\n",
    "syntax error": "a: [1, 2\n",
    "bad indentation": "a:\n  b: 1\n c: 2\n",
    "tab": "a:\n\tb: 1\n",
    "nul byte": "a: \x00\n",
}


@pytest.mark.parametrize("text", PLAIN.values(), ids=PLAIN.keys())
def test_a_plain_document_takes_the_event_path_and_builds_what_the_node_path_builds(text):
    plain = _located_plain(text)
    assert plain is not None
    assert same(plain, by_nodes(text))


@pytest.mark.parametrize("text", NOT_PLAIN.values(), ids=NOT_PLAIN.keys())
def test_anything_else_is_left_to_the_node_path_and_its_messages(text):
    assert _located_plain(text) is None
    assert same(through_the_loader(text), by_nodes(text))


keys = st.one_of(st.text(min_size=0, max_size=8),
                 st.sampled_from(["NO", "yes", "007", "1.5", "~", "null", "2001-12-14", "<<", "=", "on", "-", "a b"]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12),
                    st.sampled_from(["NO", "007", "0x1F", "1_000", "2001-12-14", ".inf", "~", "=", "<<", "|", "#"]))
documents = st.dictionaries(keys, st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=20), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=documents, flow=st.sampled_from([False, True, None]), width=st.sampled_from([20, 80]))
def test_any_dumped_document_builds_the_same_on_both_paths(data, flow, width):
    text = yaml.safe_dump(data, default_flow_style=flow, width=width, allow_unicode=True, sort_keys=False)
    plain = _located_plain(text)
    assert plain is not None
    assert plain.data == yaml.load(text, Loader=yaml.CSafeLoader)
    assert same(plain, by_nodes(text))


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab:- \n[]{},&*!<'\"#?|>~01")), max_size=60))
def test_any_text_either_takes_the_event_path_exactly_or_is_left_to_the_node_path(text):
    plain = _located_plain(text)
    if plain is not None:
        assert same(plain, by_nodes(text))
    assert same(through_the_loader(text), by_nodes(text))
