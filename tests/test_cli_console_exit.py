"""The console script ends without the interpreter's teardown (`fleet.cli.main.console`): what the teardown did
that a user can see must still happen: the exit code, every line written, the exit handlers, and a thread a
command left running is waited for."""

from __future__ import annotations

import os
import subprocess
import sys

from fleet.spec.markers import STATE_DIR_ENV


def _console(tmp_path, prelude: str, *args: str) -> subprocess.CompletedProcess:
    probe = (f"import sys\n{prelude}\n"
             "from fleet.cli.main import console\n"
             f"sys.argv = ['hermes-fleet', *{list(args)!r}]\n"
             "console()\n"
             "print('NOT REACHED')\n")
    env = {**os.environ, "HOME": str(tmp_path / "home"), STATE_DIR_ENV: str(tmp_path / "state")}
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)


def test_the_output_and_the_exit_code_of_a_command_survive_the_quick_exit(tmp_path):
    schema = _console(tmp_path, "", "schema")
    assert schema.returncode == 0, schema.stderr
    assert schema.stdout.rstrip().endswith("}") and len(schema.stdout) > 4000  # all of it, flushed
    assert "NOT REACHED" not in schema.stdout
    refused = _console(tmp_path, "", "status", "-f", str(tmp_path / "missing.yaml"))
    assert refused.returncode == 2 and refused.stderr.startswith("error:"), refused.stderr


def test_exit_handlers_run_before_the_quick_exit(tmp_path):
    done = _console(tmp_path, "import atexit\natexit.register(lambda: print('HANDLER RAN'))", "--version")
    assert done.returncode == 0
    assert done.stdout.splitlines() == ["hermes-fleet " + done.stdout.split()[1], "HANDLER RAN"]


def test_a_thread_left_running_is_waited_for(tmp_path):
    marker = tmp_path / "thread-finished"
    prelude = ("import threading, pathlib\n"
               "def work():\n"
               "    threading.Event().wait(0.3)\n"
               f"    pathlib.Path({str(marker)!r}).write_text('done')\n"
               "threading.Thread(target=work).start()")
    done = _console(tmp_path, prelude, "--version")
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "done"  # the quick exit would have cut the thread off
