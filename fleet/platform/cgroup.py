"""Which control group a process runs in, as the kernel tells it: the cgroup v2 path of a Linux process
(`/user.slice/.../app.slice/hermes-gateway-alpha.service`), whose last part names the systemd unit that runs it.

Only Linux has it (`/proc/<pid>/cgroup`, the `0::` line); elsewhere, and for a process that is gone or
unreadable, the answer is None. `hermes-fleet init` reads it to tell a gateway a service manager runs from
one started by hand."""

from __future__ import annotations


def cgroup_of(pid: int) -> str | None:
    """The unified (v2) cgroup path of `pid`, or None."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("0::"):
                    return line[3:].strip() or None
    except OSError:
        pass
    return None


def service_unit_of(cgroup: str | None) -> str | None:
    """The unit a cgroup path ends in when it is a service (`hermes-gateway-alpha.service`), else None (a login
    session's scope, a terminal, the fleet's own transient scopes)."""
    if not cgroup:
        return None
    leaf = cgroup.rstrip("/").rsplit("/", 1)[-1]
    return leaf if leaf.endswith(".service") else None
