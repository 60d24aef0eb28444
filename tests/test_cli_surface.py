"""The CLI as a person meets it: -f follows in logs/events, help reads like git's, a usage error
is one line with exit 2, completion offers profile names, `python -m fleet`, `schema`, the
README's command table, one version, a licence, and dependency bounds CI really tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fleet import __version__
from fleet.cli.main import command, main
from fleet.execute.logs import rotate_if_large
from fleet.spec.schema import schema_path
from fleet.store.db import Store
from fleet.store.layout import ensure_state_dir, resolve_state_dir
from helpers import reaper, wait_until  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
BOX = set("─│╭╮╰╯┌┐└┘├┤━┃")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERMES_FLEET_", "_HERMES_FLEET"))}
    env.update(HOME=str(tmp_path / "home"), COLUMNS="100", PYTHONUNBUFFERED="1")
    return env


def _fleet(tmp_path: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleet", *args], capture_output=True, text=True,
                          env=kw.pop("env", None) or _env(tmp_path), timeout=60, **kw)


class _Lines:
    """Collects a follower's stdout lines on a thread, so the test waits with deadlines."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def has(self, *wanted: str) -> bool:
        return all(w in self.lines for w in wanted)


def _follow(reaper, tmp_path: Path, *args: str) -> tuple[subprocess.Popen, _Lines]:
    proc = reaper.spawn([sys.executable, "-m", "fleet", *args], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    return proc, _Lines(proc.stdout)


def _end(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGINT)
    proc.wait(timeout=20)


# -- 1. -f follows in logs and events ---------------------------------------------------------

def test_logs_dash_f_follows_across_a_rotation(reaper, tmp_path):
    state = tmp_path / "state"
    log = state / "logs" / "alpha.log"
    log.parent.mkdir(parents=True)
    log.write_text("old 1\nold 2\n")
    proc, out = _follow(reaper, tmp_path, "logs", "alpha", "-f", "-n", "1", "--state-dir", str(state))
    wait_until(lambda: out.has("old 2"), 30, what="the tail")
    assert "old 1" not in out.lines
    with open(log, "a") as fh:
        fh.write("before rotation\n")
    wait_until(lambda: out.has("before rotation"), 30, what="an appended line")
    with open(log, "a") as fh:  # written just before the respawn rotates the file
        fh.write("last of the old file\n")
    assert rotate_if_large(str(log), max_bytes=1)
    log.write_text("first of the new file\n")
    with open(log, "a") as fh:
        fh.write("second of the new file\n")
    wait_until(lambda: out.has("last of the old file", "first of the new file", "second of the new file"), 30,
               what=f"lines around the rotation, got {out.lines}")
    assert proc.poll() is None, proc.stderr.read()
    _end(proc)
    assert proc.returncode == 0
    assert out.lines == ["old 2", "before rotation", "last of the old file", "first of the new file",
                         "second of the new file"]


def test_events_dash_f_follows_new_events(reaper, tmp_path):
    state = resolve_state_dir(str(tmp_path / "state"), None)
    ensure_state_dir(state)
    store = Store(state.db)
    try:
        store.journal("note", "first event", profile="alpha")
    finally:
        store.close()
    proc, out = _follow(reaper, tmp_path, "events", "-f", "--state-dir", str(state.root))
    wait_until(lambda: any("first event" in line for line in out.lines), 30, what="the first event")
    store = Store(state.db)
    try:
        store.journal("note", "second event", profile="alpha")
    finally:
        store.close()
    wait_until(lambda: any("second event" in line for line in out.lines), 30, what="a new event")
    assert proc.poll() is None, proc.stderr.read()
    _end(proc)


def _commands(cmd=None, path=()):
    cmd = cmd or command()
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, path + (name,))


def test_no_command_spells_two_options_the_same():
    for path, cmd in _commands():
        seen: dict[str, str] = {}
        for param in cmd.params:
            for spelling in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
                if not spelling.startswith("-"):
                    continue
                assert spelling not in seen, f"{' '.join(path)}: {spelling} is {seen[spelling]} and {param.name}"
                seen[spelling] = param.name


def test_the_manifest_option_is_file_everywhere_and_dash_f_unless_f_follows():
    for path, cmd in _commands():
        for param in cmd.params:
            if param.name == "file":
                assert "--file" in param.opts, path
                follows = any(p.name == "follow" for p in cmd.params)
                assert ("-f" in param.opts) != follows, path


# -- 2. plain help, one-line usage errors, completion ----------------------------------------

def _help(capsys, *path: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 0, err
    return out


def test_every_help_is_plain_text_without_type_noise(capsys):
    for path, cmd in _commands():
        text = _help(capsys, *path)
        assert text.startswith("Usage: hermes-fleet"), (path, text)
        assert not BOX & set(text), (path, text)
        assert not re.search(r"<(bool|int|str|path|float|text|list\[\w+\])>", text), (path, text)
        assert "--help" in text
        for param in cmd.params:
            if param.param_type_name == "option" and not getattr(param, "hidden", False):
                assert param.opts[-1] in text, (path, param.opts)


def test_help_aligns_short_and_long_options(capsys):
    text = _help(capsys, "logs")
    assert re.search(r"^  -f, --follow +Keep printing new lines\.$", text, re.M), text
    assert re.search(r"^      --file FILE +The manifest", text, re.M), text
    assert re.search(r"^  -n, --lines LINES +How many lines from the end\. \(default: 50\)$", text, re.M), text


@pytest.mark.parametrize("args", [["logs"], ["status", "--bogus"], ["nosuchcommand"], ["logs", "p", "-n", "many"]])
def test_a_usage_error_is_one_plain_line_and_exit_2(tmp_path, args):
    result = _fleet(tmp_path, *args)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not BOX & set(result.stderr)


def test_no_arguments_prints_the_help(tmp_path):
    result = _fleet(tmp_path)
    assert result.returncode == 0, result
    assert result.stdout.startswith("Usage: hermes-fleet [OPTIONS] COMMAND [ARGS]...")
    assert "Commands:" in result.stdout


def _complete(tmp_path, words: str) -> list[str]:
    env = _env(tmp_path)
    env.update(_HERMES_FLEET_COMPLETE="complete_bash", COMP_WORDS=words,
               COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)))
    result = _fleet(tmp_path, env=env)
    assert result.returncode == 0, result
    return result.stdout.split()


@pytest.fixture
def manifest(tmp_path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text("version: 1\ndriver: process\nprofiles:\n"
                    "  alpha: {command: [sleep, '1']}\n  alpine: {command: [sleep, '1']}\n"
                    "  beta: {command: [sleep, '1']}\n")
    return path


@pytest.mark.parametrize("words, expected", [
    ("hermes-fleet restart -f {m} ", ["alpha", "alpine", "beta"]),
    ("hermes-fleet stop -f {m} al", ["alpha", "alpine"]),
    ("hermes-fleet start -f {m} alpha ", ["alpine", "beta"]),
    ("hermes-fleet status -f {m} b", ["beta"]),
    ("hermes-fleet logs --file {m} ", ["alpha", "alpine", "beta", "controller"]),
    ("hermes-fleet events --file {m} --profile ", ["alpha", "alpine", "beta"]),
    ("hermes-fleet diff -f {m} --profile a", ["alpha", "alpine"]),
    ("hermes-fleet maintenance restart -f {m} ", ["alpha", "alpine", "beta"]),
])
def test_completion_offers_the_manifests_profile_names(tmp_path, manifest, words, expected):
    assert sorted(_complete(tmp_path, words.format(m=manifest))) == expected


def test_completion_uses_fleet_yaml_in_the_current_directory(tmp_path, manifest):
    env = _env(tmp_path)
    env.update(_HERMES_FLEET_COMPLETE="complete_bash", COMP_WORDS="hermes-fleet restart ", COMP_CWORD="2")
    result = _fleet(tmp_path, env=env, cwd=tmp_path)
    assert sorted(result.stdout.split()) == ["alpha", "alpine", "beta"]


def test_bash_completes_profile_names_through_the_installed_script(tmp_path, manifest):
    assert "--install-completion" in _fleet(tmp_path, "--help").stdout
    # typer names the shell from the parent process unless told not to; a test run's parent may be no shell at all.
    detection_off = {**_env(tmp_path), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    script = _fleet(tmp_path, "--show-completion", "bash", env=detection_off)
    assert script.returncode == 0 and "_HERMES_FLEET_COMPLETE=complete_bash" in script.stdout, script
    (tmp_path / "completion.bash").write_text(script.stdout)
    env = _env(tmp_path)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    shell = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c",
         'source completion.bash; COMP_WORDS=(hermes-fleet stop -f fleet.yaml al); COMP_CWORD=4; '
         '_hermes_fleet_completion hermes-fleet; printf "%s\\n" "${COMPREPLY[@]}"'],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert sorted(shell.stdout.split()) == ["alpha", "alpine"], shell


def test_help_and_version_import_no_rich(tmp_path):
    for args in (["--version"], ["logs", "--help"]):
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "fleet", *args], capture_output=True, text=True,
            env=_env(tmp_path), timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
        assert not re.search(r"\|\s+rich(\.|$)", result.stderr, re.M), args


# -- 3. packaging -------------------------------------------------------------------------------

def test_python_dash_m_fleet_runs_the_cli(tmp_path):
    result = _fleet(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"hermes-fleet {__version__}"


def test_the_version_is_written_once():
    from importlib.metadata import version

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r"^version\s*=", pyproject, re.M), "pyproject.toml must take the version from fleet/__init__.py"
    assert re.search(r'^dynamic\s*=\s*\[[^\]]*"version"', pyproject, re.M)
    assert version("hermes-fleet") == __version__


def test_the_licence_pyproject_names_is_there():
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "The hermes-fleet authors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in text


def test_schema_command_prints_the_packaged_schema(tmp_path):
    result = _fleet(tmp_path, "schema")
    assert result.returncode == 0, result.stderr
    assert result.stdout == schema_path().read_text(encoding="utf-8")
    assert json.loads(result.stdout)["title"].startswith("hermes-fleet manifest")


def _properties(node, where="#"):
    if isinstance(node, dict):
        for key, sub in node.get("properties", {}).items():
            yield f"{where}/properties/{key}", sub
        for key, sub in node.items():
            yield from _properties(sub, f"{where}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _properties(sub, f"{where}/{i}")


def test_every_schema_property_has_a_description():
    schema = json.loads((ROOT / "schemas" / "fleet.schema.json").read_text(encoding="utf-8"))
    props = list(_properties(schema))
    assert len(props) > 40
    missing = [where for where, sub in props if not str(sub.get("description", "")).strip()]
    assert not missing, missing


# -- 4. README command table --------------------------------------------------------------------

def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## Commands", 1)[1].split("\n\n", 2)[1]
    spans = []
    for row in table.splitlines()[2:]:
        first_cell = re.split(r"(?<!\\)\|", row)[1]
        spans += [s.replace("\\|", "|") for s in re.findall(r"`([^`]+)`", first_cell)]
    return spans


def test_readme_command_table_names_real_commands_and_options(capsys):
    spans = _readme_commands()
    assert len(spans) >= 15
    root = command()
    checked = set()
    for span in spans:
        words, path, cmd, paths = span.split(), [], root, None
        while words and getattr(cmd, "commands", None) and not words[0].startswith("-"):
            names = words.pop(0).split("|")
            assert all(n in cmd.commands for n in names), f"{span!r}: {names} are not all commands of {cmd.name}"
            if len(names) > 1:  # `maintenance restart|update|...` names several leaves at once
                paths = [path + [n] for n in names]
                break
            path.append(names[0])
            cmd = cmd.commands[names[0]]
        options = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", span))
        for leaf in paths or [path]:
            text = _help(capsys, *leaf)
            for option in options:
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), \
                    f"README shows `{span}` but `hermes-fleet {' '.join(leaf)} --help` has no {option}"
            checked.add(tuple(leaf))
    leaves = {path for path, cmd in _commands() if path and not getattr(cmd, "commands", None)}
    assert not leaves - checked, f"commands missing from the README table: {sorted(leaves - checked)}"


# -- 5. dependency bounds ------------------------------------------------------------------------

def _declared() -> dict[str, str]:
    pyproject = (ROOT / "pyproject.toml").read_text()
    deps = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r'"([A-Za-z0-9_.-]+)([^"]*)"', deps)}


@pytest.mark.parametrize("name", ["pyyaml", "jsonschema", "typer"])
def test_spec_and_cli_dependencies_have_an_upper_bound(name):
    assert re.search(r"<\s*\d", _declared()[name]), f"{name} needs an upper bound: {_declared()[name]}"


def test_lowest_constraints_pin_exactly_the_declared_lower_bounds():
    pins = {}
    for line in (ROOT / ".ci" / "lowest-constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    lower = {name: re.search(r">=\s*([\d.]+)", spec).group(1) for name, spec in _declared().items()
             if ">=" in spec}
    assert set(pins) == set(lower)
    for name, version in pins.items():
        assert version.split(".")[:len(lower[name].split("."))] == lower[name].split("."), (name, version, lower[name])
