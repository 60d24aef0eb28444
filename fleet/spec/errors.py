"""Manifest problems with their location, reported all at once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem in a manifest: where it is (file, line, column, dotted path), what is wrong, and a hint."""
    file: str
    line: int  # 1-based; 0 when unknown
    column: int  # 1-based; 0 when unknown
    path: str  # dotted path such as profiles.advisor.restart.policy ("" for the document)
    message: str
    hint: str = ""

    def render(self) -> str:
        where = self.file
        if self.line:
            where += f":{self.line}:{self.column}"
        at = f" {self.path}:" if self.path else ""
        text = f"{where}:{at} {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def as_json(self) -> dict:
        return {
            "file": self.file, "line": self.line, "column": self.column,
            "path": self.path, "message": self.message, "hint": self.hint,
        }


class ManifestError(Exception):
    def __init__(self, problems: list[Problem]):
        # In file order, as a compiler lists them: the schema and the rules find them in no useful order.
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column, p.path, p.message))
        super().__init__("\n".join(p.render() for p in self.problems))
