"""Real git repositories for the tests of a followed source: a bare `origin.git` (`git init --bare -b main`) and a
`work` clone in tmp_path, with git isolated from the host (HOME is tmp_path, no system or global config) and a
fixed author and committer. Use the fixture by importing it: `from gitsource import origin  # noqa: F401`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GIT = shutil.which("git")


def git_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "HERMES_FLEET_"))}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_AUTHOR_NAME="Test Author",
               GIT_AUTHOR_EMAIL="author@example.com", GIT_COMMITTER_NAME="Test Author",
               GIT_COMMITTER_EMAIL="author@example.com", GIT_AUTHOR_DATE="2026-01-01T00:00:00Z",
               GIT_COMMITTER_DATE="2026-01-01T00:00:00Z")
    return env


def manifest(home: Path, names: tuple[str, ...] = ("alpha",), rev: str = "1") -> str:
    profiles = "".join(f"\n  {n}:\n    command: [{sys.executable!r}, -c, 'import time; time.sleep(60)']\n"
                       f"    env: {{REV: '{rev}'}}" for n in names)
    return (f"version: 1\nname: test\ndriver: process\nhermes: {{home: {str(home)!r}}}\nstagger: 0s\n"
            f"profiles:{profiles if names else ' {}'}\n")


class Origin:
    """origin.git and its work clone; `commit` writes files, commits and pushes to main."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.env = git_env(tmp)
        self.bare = tmp / "origin.git"
        self.work = tmp / "work"
        self.home = tmp / "hermes"
        self.git("init", "--quiet", "--bare", "-b", "main", str(self.bare), cwd=tmp)
        self.git("clone", "--quiet", str(self.bare), str(self.work), cwd=tmp)
        self.git("checkout", "--quiet", "-b", "main")
        self.count = 0

    def git(self, *args: str, cwd: Path | None = None, check: bool = True) -> str:
        result = subprocess.run(["git", "-c", "protocol.file.allow=always", *args], cwd=cwd or self.work,
                                env=self.env, capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise AssertionError(f"git {' '.join(args)}: {result.stderr}")
        return result.stdout.strip()

    def commit(self, text: str | bytes, *, path: str = "fleet.yaml", sign_with: Path | None = None) -> str:
        """Write `text` at `path`, commit (signed with an ssh key when given) and push; the new commit."""
        self.count += 1
        target = self.work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            target.write_bytes(text)
        else:
            target.write_text(text)
        self.git("add", path)
        sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={sign_with}"] if sign_with else []
        self.git(*sign, "commit", "--quiet", "--allow-empty", "-m", f"change {self.count}",
                 *(["-S"] if sign_with else []))
        self.git("push", "--quiet", "origin", "main")
        return self.head()

    def fleet(self, names: tuple[str, ...] = ("alpha",), rev: str = "1", **kw) -> str:
        return self.commit(manifest(self.home, names, rev), **kw)

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def rewind(self, commit: str) -> None:
        """Force-push main back to `commit`."""
        self.git("reset", "--quiet", "--hard", commit)
        self.git("push", "--quiet", "--force", "origin", "main")


@pytest.fixture
def origin(tmp_path) -> Origin:
    if GIT is None:
        pytest.skip("git is not installed")
    return Origin(tmp_path)
