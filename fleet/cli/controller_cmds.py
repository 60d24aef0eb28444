"""`controller run` and `controller stop`: the controller itself."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fleet.cli.console import Exit, echo
from fleet.cli.common import EXIT_FAILED, FILE, STATE_DIR, fail, open_store, state_for
from fleet.cli.declared import Group, Opt, declare
from fleet.cli.controller_client import stop_controller
from fleet.controller.status import held_down_message


@declare(Opt("file", ("-f", "--file"), "Apply this manifest before starting."), STATE_DIR)
def controller_run(file: Path | None = None, state_dir: str | None = None) -> None:
    """Run the controller in the foreground (what a service manager runs).

    Exit 0 when asked to stop (by its service manager or `controller stop`; gateways keep running),
    2 on a bad manifest or state directory, 3 when another controller holds the lock."""
    from fleet.cli.common import load_or_exit

    manifest = load_or_exit(file) if file is not None else None
    state = state_for(state_dir, file, manifest)
    if manifest is not None:
        from fleet.cli.gitinfo import revision_of
        from fleet.cli.source_view import followed_source
        from fleet.controller.record import record_manifest
        store = open_store(state, write=True)
        try:
            source = followed_source(store)
            recorded = None if source is not None else record_manifest(
                store, manifest, revision_of(str(file), manifest.digest), prune=True, source="controller run",
                origin="controller run -f", lift_down=False)
        finally:
            store.close()
        if source is not None:
            # One writer: the branch. A service unit's `-f` must not overwrite the source's generation at
            # every restart, nor keep the controller from starting.
            echo(f"hermes-fleet: the fleet follows source {source.name} ({source.ref} of {source.url}); "
                       f"{file} is not recorded (`hermes-fleet source suspend` hands the fleet to local files)",
                       err=True)
        elif recorded is not None and recorded.held_down:
            # The service log is where an operator looks when a rebooted host runs no gateway.
            echo(f"hermes-fleet: {held_down_message(recorded.held_down, time.time())}", err=True)
    import sys
    # exec keeps the PID (systemd's MainPID) and sheds the CLI's imports from the resident process.
    os.execv(sys.executable, [sys.executable, "-m", "fleet.controller", "--state-dir", str(state.root)])


@declare(STATE_DIR, FILE)
def controller_stop(state_dir: str | None = None, file: Path = Path("fleet.yaml")) -> None:
    """Stop the controller. Gateways keep running; the next controller adopts them."""
    state = state_for(state_dir, file)
    try:
        pid = stop_controller(state)
    except RuntimeError as exc:
        fail(str(exc), EXIT_FAILED)
    if pid is None:
        echo(f"no controller is running for {state.root}")
        raise Exit(EXIT_FAILED)
    echo(f"controller pid {pid} stopped; gateways left running")


controller_app = Group("Run or stop the controller itself.", (("run", controller_run), ("stop", controller_stop)))
