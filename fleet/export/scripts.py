"""The POSIX sh scripts the exported units and pods run: the graceful stop (Hermes drain
or process-driver stop file) and the heartbeat liveness check.

They need only sh, sed, cut, date, stat, grep and mv (coreutils or busybox), so the same
text serves systemd hosts and container images without assuming a particular Python.
Each line ends with a terminator (`;`, `then`, `do`), so a script can be joined onto one
line for a unit file or kept multi-line for YAML. No comments inside the scripts: a `#`
would swallow the rest of the joined line. Arguments are positional so the text is
constant and testable on its own (tests run these exact strings against a fake gateway).
"""

from __future__ import annotations

from collections.abc import Sequence

from fleet.platform.linux_text import SH_BOOT_EPOCH_ASSIGNMENT, SH_START_TICKS_FUNCTION

# $1 HERMES_HOME of the profile, $2 seconds to wait for idle, $3 principal, $4 the gateway's
# PID: `auto` reads gateway.pid (else 1, a container's main process); empty or missing (a
# unit whose main process is already gone) means there is nothing to stop. The recommended
# Hermes drain: write .drain_request.json, wait until gateway_state.json says draining with
# active_agents 0 (or the budget is spent, or the gateway is gone), then write the
# planned-stop marker for (pid, start time) so the signal that follows is a planned stop.
# $5 (a pod's preStop, whose kubelet then sends its usual stop signal): interrupt the gateway, which Hermes takes
# as a planned stop in every case, and wait up to $5 s for it to exit. Hermes' own watcher may take the marker,
# and begin the stop, before the kubelet's signal arrives; that signal then counts as unexpected (exit 1). A unit
# passes no $5: its stop signal is the interrupt (linux_text.HERMES_UNIT_STOP_SIGNAL).
HERMES_STOP_SCRIPT_LINES: tuple[str, ...] = (
    'home=$1; budget=$2; principal=$3; pid=$4; teardown=$5;',
    'if [ "$pid" = auto ]; then',
    '  pid=$(sed -n -e \'s/.*"pid"[[:space:]]*:[[:space:]]*\\([0-9][0-9]*\\).*/\\1/p\''
    ' -e \'s/^[[:space:]]*\\([0-9][0-9]*\\)[[:space:]]*$/\\1/p\' "$home/gateway.pid" 2>/dev/null | head -n 1);',
    '  [ -n "$pid" ] || pid=1;',
    'fi;',
    '[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || exit 0;',
    'now() { date -u +%Y-%m-%dT%H:%M:%S+00:00; };',
    SH_START_TICKS_FUNCTION,
    SH_BOOT_EPOCH_ASSIGNMENT,
    '[ "$epoch" = ":" ] && epoch="";',
    'printf \'{"action": "drain", "requested_at": "%s", "principal": "%s", "epoch": "%s", '
    '"suppress_notification": false}\\n\' "$(now)" "$principal" "$epoch" > "$home/.drain_request.json.tmp$$"'
    ' && mv -f "$home/.drain_request.json.tmp$$" "$home/.drain_request.json";',
    'end=$(( $(date +%s) + budget ));',
    'while [ "$(date +%s)" -lt "$end" ] && kill -0 "$pid" 2>/dev/null; do',
    '  if grep -Eq \'"gateway_state"[[:space:]]*:[[:space:]]*"draining"\' "$home/gateway_state.json" 2>/dev/null'
    ' && grep -Eq \'"active_agents"[[:space:]]*:[[:space:]]*0([^0-9.]|$)\' "$home/gateway_state.json" 2>/dev/null;'
    ' then break; fi;',
    '  sleep 1;',
    'done;',
    'start=$(ticks "$pid");',
    'if [ -n "$start" ]; then',
    '  printf \'{"target_pid": %s, "target_start_time": %s, "stopper_pid": %s, "written_at": "%s"}\\n\''
    ' "$pid" "$start" "$$" "$(now)" > "$home/.gateway-planned-stop.json.tmp$$"'
    ' && mv -f "$home/.gateway-planned-stop.json.tmp$$" "$home/.gateway-planned-stop.json";',
    '  if [ -n "$teardown" ]; then',
    '    kill -INT "$pid" 2>/dev/null;',
    '    end=$(( $(date +%s) + teardown ));',
    '    while [ "$(date +%s)" -lt "$end" ] && kill -0 "$pid" 2>/dev/null; do sleep 1; done;',
    '  fi;',
    'fi;',
    'exit 0',
)

# $1 HERMES_FLEET_STOP_FILE, $2 seconds the child has to drain, $3 reason, $4 the child's PID
# (`auto`: the container's main process, not checked; empty or missing: the child is gone,
# nothing to stop). The process driver's contract: a child that sees its stop file drains
# and exits 0; the signal follows, as hermes-fleet does on POSIX.
PROCESS_STOP_SCRIPT_LINES: tuple[str, ...] = (
    'stop=$1; budget=$2; reason=$3; pid=$4;',
    'if [ "$pid" != auto ]; then [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || exit 0; fi;',
    'now=$(date -u +%Y-%m-%dT%H:%M:%S+00:00);',
    'deadline=$(date -u -d "@$(( $(date +%s) + budget ))" +%Y-%m-%dT%H:%M:%S+00:00 2>/dev/null) || deadline="";',
    'printf \'{"requested_at": "%s", "reason": "%s", "deadline": "%s"}\\n\' "$now" "$reason" "$deadline"'
    ' > "$stop.tmp$$" && mv -f "$stop.tmp$$" "$stop";',
    'exit 0',
)

# $1 heartbeat file, $2 stale threshold in whole seconds. Fails only for a heartbeat that
# exists and is older than the threshold: the heartbeat is a wedge hint, and a child that
# never writes one (an old Hermes, a process-driver child without the state file) is not
# declared dead for it.
HEARTBEAT_CHECK_SCRIPT_LINES: tuple[str, ...] = (
    'f=$1; stale=$2;',
    '[ -e "$f" ] || exit 0;',
    'm=$(stat -c %Y "$f" 2>/dev/null) || exit 0;',
    'age=$(( $(date +%s) - m ));',
    'if [ "$age" -gt "$stale" ]; then echo "heartbeat $f is ${age}s old (limit ${stale}s)"; exit 1; fi;',
    'exit 0',
)

# $1 file to remove before the child starts; then exec the rest of the arguments. Clears a
# leftover stop file so a restarted child does not stop again at once.
CLEAR_THEN_EXEC_SCRIPT = 'rm -f -- "$1"; shift; exec "$@"'


def script_multiline(lines: Sequence[str]) -> str:
    return "\n".join(lines) + "\n"
