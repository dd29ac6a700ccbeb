"""Log line filtering shared by the executors: level and pattern filters, and a byte cap that
keeps the newest lines."""

from __future__ import annotations

import re
from collections.abc import Callable

from infrastructure.executors.base import ErrorKind, ExecutorError


def line_filter(
    level: str | None, level_patterns: dict[str, str], pattern: str | None
) -> Callable[[str], bool]:
    """Keep lines at `level` or more severe (levels are ordered most severe first) and/or
    matching `pattern`."""
    checks: list[Callable[[str], bool]] = []
    if level is not None:
        if level not in level_patterns:
            raise ExecutorError(
                ErrorKind.PERMANENT,
                f"no pattern for log level {level!r}",
                "add it to operations.yml: log_levels",
            )
        names = list(level_patterns)
        # Each pattern on its own: they may carry their own inline flags such as (?i).
        levels = [re.compile(level_patterns[n]) for n in names[: names.index(level) + 1]]
        checks.append(lambda line: any(p.search(line) for p in levels))
    if pattern is not None:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ExecutorError(
                ErrorKind.PERMANENT, f"pattern {pattern!r} is not a valid regular expression: {exc}"
            ) from exc
        checks.append(lambda line: compiled.search(line) is not None)
    return lambda line: all(check(line) for check in checks)


def cap_tail(lines: list[str], max_bytes: int) -> tuple[list[str], int]:
    """The newest lines that fit in max_bytes, and how many older ones were cut."""
    total = 0
    kept: list[str] = []
    for line in reversed(lines):
        size = len(line.encode("utf-8")) + 1
        if total + size > max_bytes:
            break
        total += size
        kept.append(line)
    kept.reverse()
    return kept, len(lines) - len(kept)
