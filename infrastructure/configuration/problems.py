"""Configuration problems: located, actionable, reported all at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration, where it is and what would be right."""

    file: Path
    line: int | None
    key: str
    message: str
    expected: str = ""

    def __str__(self) -> str:
        location = f"{self.file}:{self.line}" if self.line is not None else f"{self.file}"
        key = f" {self.key}:" if self.key else ""
        expected = f" ({self.expected})" if self.expected else ""
        return f"{location}:{key} {self.message}{expected}"


class ConfigError(Exception):
    """Raised when configuration is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = sorted(
            problems, key=lambda p: (str(p.file), p.line if p.line is not None else 0, p.key)
        )
        count = len(self.problems)
        header = f"invalid configuration: {count} problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([header, *(f"  {p}" for p in self.problems)]))
