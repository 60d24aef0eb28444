"""The declared commands (`status`, `diff`, `apply`) run without typer on a plain command line, and read it
exactly as typer does: every line the fast path reads gives the command the same arguments click gives it,
and every other line is left to typer."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.cli.declared import GIVEN, Arg, Group, Opt, declaration, parameter_types, parse
from fleet.cli.main import COMMANDS, command
from fleet.spec.markers import STATE_DIR_ENV


def _declared() -> list[tuple[str, object]]:
    """Every declared command by its command line's words (`status`, `controller run`)."""
    found = []
    for name, module, attribute in COMMANDS:
        target = getattr(importlib.import_module(module), attribute)
        commands = target.commands if isinstance(target, Group) else (("", target),)
        found += [(f"{name} {sub}".strip(), function) for sub, function in commands if declaration(function)]
    return found


DECLARED = _declared()
ROOT = command(None)


def test_the_commands_a_person_runs_most_are_declared():
    assert {name for name, _ in DECLARED} >= {"status", "diff", "apply", "restart", "stop", "start", "down",
                                              "controller run", "controller stop"}


def _words(function) -> st.SearchStrategy[list[str]]:
    """Command lines built from the command's own spellings, values that look like options or not, stray
    words, and a few spellings click reads differently (`--opt=value`, `-ojson`, `--`)."""
    spellings = [s for p in declaration(function) if isinstance(p, Opt) for s in (*p.spellings, *p.negative)]
    values = st.sampled_from(["json", "text", "p1", "fleet.yaml", "-", "5m", "-x", "--deep", ""])
    word = st.one_of(st.sampled_from(spellings), values,
                     st.sampled_from(["--help", "--", "--output=json", "-ojson", "-wv", "--nope", "--version"]))
    return st.lists(word, max_size=7)


def _click_reads(name: str, argv: list[str]) -> dict | None:
    """The parameters click's context gets for `argv`, and which of them the line or environment set; None
    when click refuses the line (or answers it itself, as --help)."""
    cmd = ROOT
    for word in name.split():
        cmd = cmd.commands[word]
    try:
        ctx = cmd.make_context(name, list(argv), parent=None, resilient_parsing=False)
    except BaseException:  # noqa: BLE001 - click's usage errors and --help's Exit alike
        return None
    values = {name: _plain(value) for name, value in ctx.params.items()}
    sources = {name: ctx.get_parameter_source(name) for name in values}
    values[GIVEN] = frozenset(n for n, s in sources.items() if s is not None and s.name in ("COMMANDLINE", "ENVIRONMENT"))
    return values


def _plain(value: object) -> object:
    """A value as the function sees it once typer converted it: a path as text, no arguments as None."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value] or None
    return str(value) if isinstance(value, Path) else value


def _defaults(function) -> dict:
    return {n: p.default for n, p in inspect.signature(function).parameters.items()
            if n != GIVEN and p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("name,function", DECLARED, ids=[d[0] for d in DECLARED])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_line_the_fast_path_reads_means_what_it_means_to_click(name, function, data, monkeypatch):
    monkeypatch.setenv(STATE_DIR_ENV, data.draw(st.sampled_from(["", "/tmp/from-env"]), label="env"))
    argv = data.draw(_words(function), label="argv")
    fast = parse(declaration(function), function, argv)
    if fast is None:
        return  # typer reads it, with its own messages
    clicked = _click_reads(name, argv)
    assert clicked is not None, f"the fast path read {argv!r}, which click refuses"
    wants_given = GIVEN in fast
    got = {name: value if name == GIVEN else _plain(value) for name, value in {**_defaults(function), **fast}.items()}
    if not wants_given:
        clicked.pop(GIVEN)
    for param, kind in parameter_types(function).items():  # typer turns click's text into a Path after parsing
        if kind is Path and clicked.get(param) is not None:
            clicked[param] = str(Path(clicked[param]))
    assert got == clicked


def test_the_declarations_match_the_functions_they_declare():
    for name, function in DECLARED:
        params = declaration(function)
        assert [p.name for p in params] == [n for n in inspect.signature(function).parameters if n != GIVEN], name
        assert sum(isinstance(p, Arg) for p in params) <= 1, f"{name}: one positional argument at most"
        for p in params:
            required = inspect.signature(function).parameters[p.name].default is inspect.Parameter.empty
            assert required == (isinstance(p, Arg) and p.required), f"{name} {p.name}: required in one place only"


def _run_cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('LOADED', 'typer' in sys.modules, file=sys.stderr))\n"
             "from fleet.cli.main import main\n"
             f"main({args!r})\n")
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)


def test_status_diff_and_apply_run_without_typer_and_everything_else_falls_back(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path / "home"), STATE_DIR_ENV: str(tmp_path / "state")}
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\nprofiles: {}\n")
    plain = {
        ("status", "-f", str(manifest)): 2,  # no fleet applied in this state directory yet
        ("diff", "-f", str(manifest), "-o", "json"): 0,
        ("apply", "--file", str(manifest), "--no-wait", "--output", "json"): 0,
    }
    try:
        for args, code in plain.items():
            done = _run_cli(list(args), env)
            assert done.returncode == code, done.stderr
            assert "LOADED False" in done.stderr, f"{args[0]} imported typer"
        for args in (["status", "--help"], ["status", "-ojson", "-f", str(manifest)], ["diff", "--nope"]):
            done = _run_cli(args, env)
            assert "LOADED True" in done.stderr, f"{args} did not go to typer"
        nope = _run_cli(["diff", "--nope"], env)
        assert nope.returncode == 2 and "error: No such option: --nope" in nope.stderr
    finally:
        _stop_controller(tmp_path / "state", env)


def _stop_controller(state: Path, env: dict) -> None:
    if (state / "fleet.db").exists():
        subprocess.run([sys.executable, "-m", "fleet.cli.main", "controller", "stop", "--state-dir", str(state)],
                       env=env, capture_output=True, timeout=60)
