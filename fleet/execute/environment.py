"""The environment a gateway starts with: the controller's own, minus what belongs to the
service manager, plus the spec's variables and the fleet contract."""

from __future__ import annotations

import os

from fleet.spec.model import ProfileSpec
from fleet.store.layout import StateDir

# Variables that describe the controller's own service; a gateway that inherited them would
# answer to the controller's watchdog or claim to be its service.
SERVICE_ENV_TO_STRIP = ("INVOCATION_ID", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
                        "MANAGERPID", "SYSTEMD_EXEC_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def child_environment(spec: ProfileSpec, state: StateDir, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for key in SERVICE_ENV_TO_STRIP:
        env.pop(key, None)
    for key in [k for k in env if k.startswith("HERMES_FLEET_")]:
        del env[key]
    env.update(spec.env_map)
    env.update({
        "HERMES_FLEET_PROFILE": spec.name,
        "HERMES_FLEET_STATE_DIR": str(state.root),
        "HERMES_FLEET_STATE_FILE": str(state.state_file(spec.name)),
        "HERMES_FLEET_STOP_FILE": str(state.stop_marker(spec.name)),
        "HERMES_FLEET_SPEC_HASH": spec.spec_hash,
    })
    return env
