"""Which revision of fleet.yaml is being applied: git commit, branch, dirty flag; never fatal."""

from __future__ import annotations

import os
import re
import subprocess
import time


GIT_TIMEOUT = 5.0


def _start_git(folder: str, *args: str) -> subprocess.Popen | None:
    try:
        return subprocess.Popen(["git", "-C", folder, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, text=True, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except OSError:
        return None


def _output(proc: subprocess.Popen | None, deadline: float) -> str | None:
    if proc is None:
        return None
    try:
        out, _ = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    return out.strip() if proc.returncode == 0 else None


def _git(folder: str, *args: str) -> str | None:
    return _output(_start_git(folder, *args), time.monotonic() + GIT_TIMEOUT)


def revision_of(manifest_path: str, digest: str) -> dict:
    """Where `manifest_path` stands in its git repository. Outside one, a single git run answers (the usual case
    for a manifest kept elsewhere); inside, one run names the work tree, commit and branch, then the three
    questions left run side by side: two git start-ups in a row instead of six."""
    path = os.path.abspath(manifest_path)
    folder = os.path.dirname(path)
    info: dict = {"path": path, "revision": digest}
    head = _git(folder, "rev-parse", "--show-toplevel", "HEAD", "--abbrev-ref", "HEAD")
    lines = head.splitlines() if head else []
    if len(lines) != 3 or not lines[1]:
        return info
    top, commit, branch = lines[0] or folder, lines[1], lines[2] or "HEAD"
    rel = os.path.relpath(path, top)
    deadline = time.monotonic() + GIT_TIMEOUT
    asked = [_start_git(folder, "rev-parse", f"HEAD:{rel}"), _start_git(folder, "hash-object", path),
             _start_git(folder, "config", "--get", "remote.origin.url")]
    blob, current, remote = (_output(proc, deadline) for proc in asked)
    dirty = blob is None or blob != current
    if remote:
        remote = re.sub(r"//[^@/]+@", "//", remote)  # never record credentials
    info.update(commit=commit, branch=branch, dirty=dirty, blob=blob, path_in_repo=rel, remote=remote,
                revision=f"{branch}@sha1:{commit}" + ("+dirty" if dirty else ""))
    return info


def head_of(manifest_path: str) -> tuple[str, str] | None:
    """(the work tree's top folder, its HEAD commit) for the repository `manifest_path` lies in; None outside
    one (or without git)."""
    folder = os.path.dirname(os.path.abspath(manifest_path))
    commit = _git(folder, "rev-parse", "--verify", "HEAD")
    if not commit:
        return None
    return _git(folder, "rev-parse", "--show-toplevel") or folder, commit


def uncommitted(manifest_path: str) -> list[str] | None:
    """What keeps the manifest's work tree from being clean: every tracked file that differs from HEAD (staged
    or not, deleted included), and the manifest itself when git does not track it. Untracked files elsewhere
    do not count (a saved plan or a build artefact beside the manifest leaves the tree clean). None outside a
    repository."""
    path = os.path.abspath(manifest_path)
    folder = os.path.dirname(path)
    head = head_of(path)
    if head is None:
        return None
    changed = _git(folder, "-c", "core.quotePath=false", "diff", "--name-only", "HEAD", "--")
    if changed is None:
        return None
    paths = changed.splitlines()
    if _git(folder, "ls-files", "--error-unmatch", "--", os.path.basename(path)) is None:
        paths.append(os.path.relpath(os.path.realpath(path), head[0]) + " (not committed)")
    return paths


def valid_revision(sha: str) -> bool:
    """A commit id `--check-revision` accepts: 7 to 64 hex digits (an abbreviation, SHA-1 or SHA-256)."""
    return re.fullmatch(r"[0-9a-fA-F]{7,64}", sha) is not None


def guard_problem(manifest_path: str, *, require_clean: bool, check_revision: str | None) -> str | None:
    """Why `apply --require-clean` / `--check-revision SHA` refuses the manifest at `manifest_path`; None when
    neither is asked for or both hold. Outside a git repository both refuse: there is nothing to check."""
    if not require_clean and not check_revision:
        return None
    option = "--require-clean" if require_clean else "--check-revision"
    head = head_of(manifest_path)
    if head is None:
        return (f"{option}: {manifest_path} is not in a git repository with a commit (or git is not "
                f"installed), so there is nothing to check it against")
    top, commit = head
    if check_revision and not commit.lower().startswith(check_revision.lower()):
        return f"--check-revision: HEAD of {top} is {commit}, not {check_revision}"
    if require_clean:
        changed = uncommitted(manifest_path)
        if changed is None:
            return f"--require-clean: git could not tell whether the work tree {top} is clean"
        if changed:
            more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            return (f"--require-clean: the git work tree {top} has uncommitted changes: "
                    f"{', '.join(changed[:5])}{more}")
    return None
