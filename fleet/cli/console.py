"""What a command prints and how it ends, without the CLI framework: the declared commands
(fleet/cli/declared.py) run before typer is imported, so their code cannot depend on it."""

from __future__ import annotations

import sys


class Exit(SystemExit):
    """End the command with `code`. A SystemExit, so it ends the process the same way whether typer
    dispatched the command (click lets it through; its test runner reads `.code`) or the fast path did."""

    @property
    def exit_code(self) -> int:
        return self.code if isinstance(self.code, int) else 0


def echo(message: object = None, err: bool = False, nl: bool = True) -> None:
    """One message to stdout (stderr with `err`), flushed at once, as click.echo does: a line reaches a pipe
    (`apply` followed by `tail`) when it is printed, not when the buffer fills."""
    stream = sys.stderr if err else sys.stdout
    if stream is None:  # pythonw without logged_main: nowhere to print
        return
    text = "" if message is None else str(message)
    stream.write(f"{text}\n" if nl else text)
    stream.flush()
