"""Installing each peer into its own environment under the bench's work directory.

A peer that cannot be installed is not an error: it is skipped, and the reason ends up
in the results. Re-running with the same --workdir reuses what is already installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import procs

INSTALL_TIMEOUT = 600


@dataclass(frozen=True)
class ToolInstall:
    name: str
    available: bool
    version: str = ""
    bin_dir: Path | None = None
    reason: str = ""  # why it is unavailable
    source: str = ""  # hermes-fleet: the `fleet` package its commands import (PYTHONPATH counts)

    def executable(self, program: str) -> str:
        assert self.bin_dir is not None
        return str(self.bin_dir / program)

    def as_dict(self) -> dict:
        out = {"available": self.available, "version": self.version, "reason": self.reason}
        if self.source:
            out["source"] = self.source
        return out


def _run(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return procs.run(argv, INSTALL_TIMEOUT, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def _python_for_venvs() -> str:
    # The base interpreter, so a peer's venv never sees the project's packages.
    return getattr(sys, "_base_executable", None) or sys.executable


def install_pip_tool(root: Path, name: str, package: str, program: str) -> ToolInstall:
    venv = root / f"venv-{name}"
    bin_dir = venv / "bin"
    if not (bin_dir / program).exists():
        created = _run([_python_for_venvs(), "-m", "venv", str(venv)])
        if created.returncode != 0:
            return ToolInstall(name, False, reason=f"python -m venv failed: {_tail(created.stderr)}")
        installed = _run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", package])
        if installed.returncode != 0:
            return ToolInstall(name, False, reason=f"pip install {package} failed: {_tail(installed.stderr)}")
    shown = _run([str(bin_dir / "python"), "-m", "pip", "show", package])
    version = next((line.split(":", 1)[1].strip() for line in shown.stdout.splitlines() if line.startswith("Version:")), "")
    if not (bin_dir / program).exists():
        return ToolInstall(name, False, reason=f"{program} missing after installing {package}")
    return ToolInstall(name, True, version=version, bin_dir=bin_dir)


def install_supervisord(root: Path) -> ToolInstall:
    return install_pip_tool(root, "supervisord", "supervisor", "supervisord")


def install_circus(root: Path) -> ToolInstall:
    return install_pip_tool(root, "circus", "circus", "circusd")


def install_pm2(root: Path) -> ToolInstall:
    npm = shutil.which("npm")
    if npm is None:
        return ToolInstall("pm2", False, reason="npm not found on PATH")
    prefix = root / "npm-pm2"
    bin_dir = prefix / "node_modules" / ".bin"
    if not (bin_dir / "pm2").exists():
        prefix.mkdir(parents=True, exist_ok=True)
        installed = _run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "pm2"])
        if installed.returncode != 0 or not (bin_dir / "pm2").exists():
            return ToolInstall("pm2", False, reason=f"npm install pm2 failed: {_tail(installed.stderr)}")
    # Read the version from package.json: running `pm2 --version` would start a daemon.
    package = json.loads((prefix / "node_modules" / "pm2" / "package.json").read_text())
    return ToolInstall("pm2", True, version=package.get("version", ""), bin_dir=bin_dir)


def locate_hermes_fleet(explicit: str | None) -> ToolInstall:
    """Our CLI: next to the running interpreter (the project's venv), or on PATH."""
    candidates = [explicit] if explicit else [str(Path(sys.executable).parent / "hermes-fleet"), shutil.which("hermes-fleet")]
    cli = next((c for c in candidates if c and Path(c).exists()), None)
    if cli is None:
        return ToolInstall("hermes-fleet", False, reason="hermes-fleet CLI not found (install the project into this interpreter's environment)")
    missing = [cmd for cmd in ("apply", "down", "status") if _run([cli, cmd, "--help"]).returncode != 0]
    if missing:
        return ToolInstall("hermes-fleet", False, reason=f"CLI lacks command(s): {', '.join(missing)}")
    version = _run([sys.executable, "-c", "import importlib.metadata as m; print(m.version('hermes-fleet'))"]).stdout.strip()
    return ToolInstall("hermes-fleet", True, version=version, bin_dir=Path(cli).parent, source=fleet_source(cli))


def fleet_source(cli: str) -> str:
    """Where the CLI's interpreter (its shebang) imports `fleet` from with the environment the bench
    gives our commands: the checkout on PYTHONPATH if one is set, else the installed project."""
    first = Path(cli).read_text(errors="replace").splitlines()[0] if Path(cli).is_file() else ""
    python = first[2:].split() if first.startswith("#!") else [sys.executable]
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH")}
    found = _run([*python, "-c", "import fleet; print(fleet.__path__[0])"], env=env)
    if found.returncode != 0:
        return ""
    # Named by its commit, not its path: results are committed, and a path says nothing on another host.
    commit = _run(["git", "-C", found.stdout.strip(), "rev-parse", "--short", "HEAD"], env=env)
    return f"a checkout at {commit.stdout.strip()}" if commit.returncode == 0 else "an installed copy"
