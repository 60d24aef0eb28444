"""`DesiredSource.names()`: the profiles `down` holds, read without decoding a spec; always the profiles
`current()` gives a spec for, removed ones still in the inventory included."""

from __future__ import annotations

import sys

from fakes import state, store  # noqa: F401

from fleet.controller.desired import DesiredSource
from fleet.controller.record import record_manifest
from fleet.spec.load import load_manifest


def _apply(store, tmp_path, names: tuple[str, ...], generation: str) -> None:
    path = tmp_path / f"fleet-{generation}.yaml"
    profiles = "".join(f"""
  {name}:
    driver: process
    command: ["{sys.executable}", "-c", "pass"]""" for name in names)
    path.write_text(f"version: 1\nname: test\nhermes: {{home: {tmp_path / 'home'}}}\nprofiles:{profiles}\n")
    record_manifest(store, load_manifest(str(path)), {"revision": generation}, prune=True, source="test",
                    lift_down=False)


def test_names_are_the_profiles_current_gives_a_spec_for(store, tmp_path):
    source = DesiredSource(store)
    assert source.names() == [] == list(source.current()[1])
    _apply(store, tmp_path, ("alpha", "beta", "gamma"), "1")
    assert source.names() == ["alpha", "beta", "gamma"] == list(source.current()[1])
    _apply(store, tmp_path, ("gamma", "delta"), "2")  # alpha and beta removed, still in the inventory
    names = source.names()
    assert sorted(names) == ["alpha", "beta", "delta", "gamma"]
    assert names == list(source.current()[1])
    store.forget("beta")  # drained and pruned: no longer in the inventory
    names = source.names()
    assert names == list(source.current()[1]) and sorted(names) == ["alpha", "delta", "gamma"]


def test_a_removed_profiles_last_spec_is_read_once_however_many_passes_ask(store, tmp_path, monkeypatch):
    source = DesiredSource(store)
    _apply(store, tmp_path, ("alpha", "beta"), "1")
    _apply(store, tmp_path, ("beta",), "2")  # alpha removed, still in the inventory
    reads = []
    specs_before = store.specs_before
    monkeypatch.setattr(store, "specs_before", lambda before: reads.append(before) or specs_before(before))
    for _ in range(5):  # five passes
        assert sorted(source.current()[1]) == ["alpha", "beta"]
    assert source.current()[1]["alpha"].name == "alpha"
    assert len(reads) == 1
