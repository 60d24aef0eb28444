"""Starting, finding and stopping the controller from the CLI."""

from __future__ import annotations

import os
import time

from fleet.cli import early_controller
from fleet.cli.early_controller import controller_command
from fleet.platform import controller_process, current_platform
from fleet.platform.base import ProcessInfo
from fleet.store.files import open_append
from fleet.store.layout import StateDir, ensure_state_dir
from fleet.store.lock import read_holder

CONTROLLER_UP_WITHIN = 15.0  # seconds from a controller's start until it holds the lock
NO_CONTROLLER_HINT = ("start one with `hermes-fleet apply -f fleet.yaml`, `hermes-fleet controller run` "
                      "(foreground) or `hermes-fleet service install`")


def running_controller(state: StateDir) -> ProcessInfo | None:
    """The controller that holds `state`, as the OS shows it now; None when none runs."""
    return controller_process.running_holder(state, current_platform(), read_holder(state))


def running_controller_pid(state: StateDir) -> int | None:
    controller = running_controller(state)
    return controller.pid if controller is not None else None


def _check_log(state: StateDir) -> int:
    """The controller log, open for appending (the caller closes it); RuntimeError saying why it cannot be."""
    ensure_state_dir(state)
    try:
        return open_append(state.controller_log)
    except OSError as exc:
        raise RuntimeError(f"cannot open {state.controller_log}: {exc.strerror or exc} "
                           f"(a symlink there is refused; remove it)") from None


def start_detached(state: StateDir, timeout: float = CONTROLLER_UP_WITHIN) -> int:
    """Start a controller in its own session and return its PID once it holds the lock."""
    log_fd = _check_log(state)
    try:
        daemon = current_platform().spawn_daemon(controller_command(state), log_fd)
    except OSError as exc:
        raise RuntimeError(f"cannot start the controller: {exc}") from None
    finally:
        os.close(log_fd)
    return _holder_once_up(state, daemon, timeout)


def _holder_once_up(state: StateDir, daemon: int, timeout: float) -> int:
    """The PID of the controller that holds the lock once the one just started (`daemon`) took it, or lost the
    race for it to another that serves just as well."""
    platform = current_platform()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = running_controller_pid(state)
        if pid is not None:
            return pid
        info = platform.process_info(daemon)
        if info is None or not info.alive:
            pid = running_controller_pid(state)  # lost a race to another controller: that one serves us
            if pid is not None:
                return pid
            raise RuntimeError(f"the controller exited before it took the lock; see {state.controller_log}")
        time.sleep(0.02)
    raise RuntimeError(f"the controller did not come up within {timeout:g}s; see {state.controller_log}")


def ensure_controller(state: StateDir) -> tuple[int, bool]:
    """(pid, started_now). A controller `apply` started held for this state directory while it planned
    (fleet/cli/early_controller.py) is the one released, unless another runs by now."""
    held = early_controller.take(state.root)
    pid = running_controller_pid(state)
    if pid is not None:
        if held is not None:
            held.dismiss()
        from fleet.platform.wake import send_wake  # `apply` wakes the controller; `status`, which imports this too, never does

        send_wake(state)
        return pid, False
    if held is not None:
        os.close(_check_log(state))
        if held.release():
            try:
                return _holder_once_up(state, held.pid, CONTROLLER_UP_WITHIN), True
            except RuntimeError:
                pass  # it ended before it took the lock: one started the usual way reports why
    return start_detached(state), True


def stop_controller(state: StateDir, timeout: float = 15.0) -> int | None:
    """Stop the lock holder (after checking it is the holder) and return its PID; the gateways keep running.
    None when no controller runs."""
    holder = read_holder(state)
    if holder is None or running_controller_pid(state) != holder.pid:
        return None
    if current_platform().never_signal(holder.pid):  # a forged holder file naming pid 1, our shell, another user's
        return None
    deadline = time.monotonic() + timeout
    if not controller_process.stop_controller(state, holder, timeout) or not _no_controller_by(state, deadline):
        raise RuntimeError(f"controller pid {holder.pid} did not stop within {timeout:g}s")
    return holder.pid


def _no_controller_by(state: StateDir, deadline: float) -> bool:
    """Stopped means no controller holds the fleet, not only that this one exited: a service manager may
    already have started the next one."""
    while running_controller_pid(state) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True
