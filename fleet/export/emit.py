"""Deterministic text: '#' comment blocks, YAML documents, systemd unit syntax.

Same input, same bytes: mappings are emitted in the order the caller built them (callers
sort where order carries no meaning), never with anchors, never wrapped.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from collections.abc import Sequence

from fleet.spec.pyyaml import yaml

from fleet.export.base import ExportError, Note

COMMENT_WIDTH = 96


def comment_block(paragraphs: Sequence[str], width: int = COMMENT_WIDTH) -> str:
    """'# '-prefixed lines; each paragraph wrapped, an empty paragraph is a bare '#'."""
    out: list[str] = []
    for paragraph in paragraphs:
        if not paragraph:
            out.append("#")
            continue
        indent = len(paragraph) - len(paragraph.lstrip(" "))
        bullet = paragraph.lstrip(" ")
        hang = " " * (indent + (2 if bullet.startswith("- ") else 0))
        for line in textwrap.wrap(paragraph, width=width - 2, initial_indent="", subsequent_indent=hang,
                                  break_long_words=False, break_on_hyphens=False,
                                  drop_whitespace=True) or [""]:
            out.append(("# " + line).rstrip())
    return "\n".join(out) + "\n"


def notes_paragraphs(notes: Sequence[Note], engine: str, empty: str | None = None) -> list[str]:
    if not notes:
        return [empty or f"Everything in fleet.yaml maps onto {engine}."]
    out = [f"Not expressible in {engine}, and what to use instead:"]
    for note in notes:
        out.append(f"- {note.topic} [{note.scope()}]: {note.detail}")
        out.append(f"  Instead: {note.instead}")
    return out


# ---------------------------------------------------------------- YAML


class _Dumper(yaml.SafeDumper):
    """Block style with lists level with their key (as kubectl prints them), never anchors."""

    def ignore_aliases(self, data) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str):
    style = "|" if "\n" in data and not any(line != line.rstrip() for line in data.split("\n")) else None
    if "\x85" in data:
        # PyYAML writes NEL raw inside single quotes, where a reader folds it into a space.
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def yaml_document(data: dict) -> str:
    """One YAML document; keys in the order the dict was built (callers sort where order is free)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=1 << 16)


def yaml_documents(docs: Sequence[dict]) -> str:
    return "".join("---\n" + yaml_document(doc) for doc in docs)


# ---------------------------------------------------------------- systemd unit syntax


def systemd_escape_specifiers(text: str) -> str:
    return text.replace("%", "%%")


class Verbatim(str):
    """Text meant for systemd to expand (%t, $MAINPID): quoted if needed, '%' and '$' kept."""


def _needs_quotes(word: str) -> bool:
    return word == "" or any(c.isspace() or c in "\"'\\;" for c in word) or not word.isprintable()


def _escape_quoted(text: str) -> str:
    """The inside of a double-quoted word: C escapes for backslash, quote and control characters."""
    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif not c.isprintable() and ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)


def _expansions(text: str, exec_line: bool) -> str:
    """'%' doubled (specifiers) and, on exec lines, '$' doubled (variable expansion)."""
    text = systemd_escape_specifiers(text)
    return text.replace("$", "$$") if exec_line else text


def systemd_word(word: str, exec_line: bool) -> str:
    """One argument of an Exec*= line (exec_line) or one Environment= assignment.

    Quoted when needed, with C escapes for quotes, backslashes and control characters;
    '%' doubled (specifiers) and, on exec lines, '$' doubled (variable expansion), unless
    the word is Verbatim.
    """
    text = f'"{_escape_quoted(word)}"' if _needs_quotes(word) else str(word)
    return text if isinstance(word, Verbatim) else _expansions(text, exec_line)


def systemd_command_line(argv: Sequence[str]) -> str:
    return " ".join(systemd_word(a, exec_line=True) for a in argv)


def systemd_script_word(lines: Sequence[str], indent: str = "    ") -> str:
    """A shell script as one double-quoted exec word spread over continuation lines.

    systemd joins a line ending in a backslash with the next, replacing the backslash by a
    space, so the shell sees the lines joined by whitespace (each script line ends with a
    terminator for that reason). Readable in the unit, identical to the one-line form for sh.
    """
    parts = [_expansions(_escape_quoted(line.strip()), exec_line=True) for line in lines]
    return '"' + (" \\\n" + indent).join(parts) + '"'


def systemd_path(path: str) -> str:
    """A path setting (WorkingDirectory=, ...): no quoting exists there, so refuse what cannot be written."""
    if any(not c.isprintable() for c in path) or path != path.strip():
        raise ExportError(f"the path {path!r} has control characters or surrounding blanks, which a unit file "
                          "cannot express")
    return systemd_escape_specifiers(path)


def systemd_timespan(seconds: float) -> str:
    """systemd time span: whole seconds as '90s', otherwise milliseconds as '2500ms'."""
    if seconds <= 0:
        return "0"
    if abs(seconds - round(seconds)) < 1e-9:
        return f"{round(seconds)}s"
    return f"{math.ceil(seconds * 1000 - 1e-6)}ms"


@dataclass(frozen=True)
class UnitSection:
    """One [section] of a systemd unit file and its lines, in order."""
    name: str
    entries: tuple[tuple[str, str], ...]  # (key, value); key "#" is a comment line


def render_unit(header: str, sections: Sequence[UnitSection]) -> str:
    parts = [header]
    for i, section in enumerate(sections):
        if i or header:
            parts.append("\n")
        parts.append(f"[{section.name}]\n")
        for key, value in section.entries:
            parts.append(f"# {value}\n" if key == "#" else f"{key}={value}\n")
    return "".join(parts)
