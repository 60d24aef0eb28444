"""`hermes-fleet schema`: the manifest's JSON Schema, for editors, from any install."""

from __future__ import annotations

from fleet.cli.console import echo


def schema() -> None:
    """Print the JSON Schema of fleet.yaml (for editor completion and validation).

    Save it and point the editor at it, e.g. `hermes-fleet schema > fleet.schema.json` and
    `# yaml-language-server: $schema=fleet.schema.json` at the top of fleet.yaml."""
    from fleet.spec.schema import schema_path

    echo(schema_path().read_text(encoding="utf-8"), nl=False)
