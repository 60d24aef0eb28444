"""Which revision of a manifest `apply` records (fleet/cli/gitinfo.py), against real git repositories."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from fleet.cli.gitinfo import revision_of

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(folder, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    top = tmp_path / "fleet-repo"
    (top / "hosts").mkdir(parents=True)
    git(top, "init", "-q", "-b", "main")
    git(top, "config", "user.email", "ops@example.org")
    git(top, "config", "user.name", "ops")
    (top / "hosts" / "fleet.yaml").write_text("version: 1\nprofiles: {}\n")
    git(top, "add", ".")
    git(top, "commit", "-q", "-m", "first")
    return top


def test_a_committed_manifest_names_its_commit_branch_blob_and_remote_without_credentials(repo):
    git(repo, "remote", "add", "origin", "https://deploy:hunter2@git.example.org/ops/fleet.git")
    manifest = repo / "hosts" / "fleet.yaml"
    info = revision_of(str(manifest), "sha256:abc")
    commit = git(repo, "rev-parse", "HEAD")
    assert info == {"path": str(manifest), "commit": commit, "branch": "main", "dirty": False,
                    "blob": git(repo, "rev-parse", "HEAD:hosts/fleet.yaml"), "path_in_repo": os.path.join("hosts", "fleet.yaml"),
                    "remote": "https://git.example.org/ops/fleet.git", "revision": f"main@sha1:{commit}"}


def test_a_changed_or_untracked_manifest_is_dirty(repo):
    manifest = repo / "hosts" / "fleet.yaml"
    manifest.write_text("version: 1\nprofiles: {}\n# changed\n")
    changed = revision_of(str(manifest), "sha256:abc")
    assert changed["dirty"] and changed["revision"].endswith("+dirty") and changed["remote"] is None
    untracked = repo / "hosts" / "other.yaml"
    untracked.write_text("version: 1\nprofiles: {}\n")
    info = revision_of(str(untracked), "sha256:abc")
    assert info["dirty"] and info["blob"] is None


def test_outside_a_repository_or_before_the_first_commit_only_the_digest(tmp_path):
    loose = tmp_path / "loose" / "fleet.yaml"
    loose.parent.mkdir()
    loose.write_text("version: 1\n")
    assert revision_of(str(loose), "sha256:abc") == {"path": str(loose), "revision": "sha256:abc"}
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    (empty / "fleet.yaml").write_text("version: 1\n")
    assert revision_of(str(empty / "fleet.yaml"), "sha256:abc") == {"path": str(empty / "fleet.yaml"),
                                                                   "revision": "sha256:abc"}
