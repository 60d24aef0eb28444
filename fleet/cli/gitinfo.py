"""Which revision of fleet.yaml is being applied: git commit, branch, dirty flag; never fatal."""

from __future__ import annotations

import os
import re
import subprocess


def _git(folder: str, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=5,
                             env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def revision_of(manifest_path: str, digest: str) -> dict:
    path = os.path.abspath(manifest_path)
    folder = os.path.dirname(path)
    commit = _git(folder, "rev-parse", "HEAD")
    info: dict = {"path": path, "revision": digest}
    if not commit:
        return info
    top = _git(folder, "rev-parse", "--show-toplevel") or folder
    rel = os.path.relpath(path, top)
    branch = _git(folder, "rev-parse", "--abbrev-ref", "HEAD") or "HEAD"
    blob = _git(folder, "rev-parse", f"HEAD:{rel}")
    current = _git(folder, "hash-object", path)
    dirty = blob is None or blob != current
    remote = _git(folder, "config", "--get", "remote.origin.url")
    if remote:
        remote = re.sub(r"//[^@/]+@", "//", remote)  # never record credentials
    info.update(commit=commit, branch=branch, dirty=dirty, blob=blob, path_in_repo=rel, remote=remote,
                revision=f"{branch}@sha1:{commit}" + ("+dirty" if dirty else ""))
    return info
