"""`indented_json` writes exactly what `json.dumps(value, indent=2, default=str)` writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.cli.json_text import indented_json


class Phase(StrEnum):
    RUNNING = "Running"


class Code(IntEnum):
    FAILED = 1


LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(),
    st.sampled_from([Phase.RUNNING, Code.FAILED, Path("/tmp/x"), datetime(2026, 1, 2, tzinfo=UTC), b"bytes"]),
)
KEYS = st.one_of(st.text(), st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False), st.just(Phase.RUNNING))
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.lists(inner, max_size=3).map(tuple),
                                                      st.dictionaries(KEYS, inner, max_size=4)), max_leaves=30)


@settings(max_examples=500, deadline=None)
@given(VALUES)
def test_the_text_is_the_standard_librarys(value):
    assert indented_json(value) == json.dumps(value, indent=2, default=str)


def test_a_key_json_cannot_write_is_refused_as_json_refuses_it():
    with pytest.raises(TypeError):
        json.dumps({(1, 2): 1}, indent=2, default=str)
    with pytest.raises(TypeError):
        indented_json({(1, 2): 1})
