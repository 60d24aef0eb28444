"""Linux as text: the words and shell lines hermes-fleet writes into what runs without it, the units and pod
scripts `hermes-fleet export` renders and the advice it prints. They name OS specifics (the service
manager's command, a signal, /proc), so they live here and the exports import them.

The shell lines are the twins of `proc_start_ticks` and `boot_epoch` (fleet/platform/linux.py): the same
reads, for a script on a host or in a container where no Python of ours runs. Each ends with `;`, so a
script can be joined onto one line (see fleet/export/scripts.py)."""

from __future__ import annotations

SYSTEMCTL = "systemctl"

# The signal a unit's stop sends once its ExecStop= has drained the gateway: the one the platform's
# request_stop sends on POSIX. A process-driver child takes SIGTERM as its stop. Hermes takes SIGTERM as planned
# only while the planned-stop marker is there, and its own watcher may take the marker first; SIGINT it takes as
# planned in every case.
UNIT_STOP_SIGNAL = "SIGTERM"
HERMES_UNIT_STOP_SIGNAL = "SIGINT"

# ticks PID: field 22 of /proc/PID/stat (the start time in clock ticks since boot, as Hermes records it); the
# command name, field 2, may hold spaces, so everything up to its closing parenthesis goes first.
SH_START_TICKS_FUNCTION = 'ticks() { sed \'s/.*) //\' "/proc/$1/stat" 2>/dev/null | cut -d \' \' -f 20; };'

# epoch=<boot_id>:<start ticks of pid 1>, Hermes' drain-request epoch; ":" when /proc cannot be read. Needs
# SH_START_TICKS_FUNCTION before it.
SH_BOOT_EPOCH_ASSIGNMENT = 'epoch="$(cat /proc/sys/kernel/random/boot_id 2>/dev/null):$(ticks 1)";'


def systemctl_command(scope: str) -> str:
    """`systemctl` as a person types it for units of `scope`: `systemctl --user` for "user", else plain."""
    return f"{SYSTEMCTL} --user" if scope == "user" else SYSTEMCTL
