"""Log text shared by the executors: level and pattern filters, a byte cap that keeps the
newest lines, which instances of a container to read, and one rendering of several logs.
A log is redacted whole (its lines as one text) before it is filtered or capped."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from infrastructure.executors.base import ErrorKind, ExecutorError
from infrastructure.redaction import Redactor


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


def instances_to_read(previous: bool, crashed: bool) -> list[bool]:
    """`previous` reads only the previous instance. Otherwise the current one, and first the
    previous one too when the container crashed (restarted and not running): that is where a
    crash loop says why."""
    if previous:
        return [True]
    return [True, False] if crashed else [False]


def byte_share(max_bytes: int, reads: int) -> int:
    """max_bytes bounds the whole answer: each of `reads` log reads gets its share."""
    return max(1, max_bytes // max(1, reads))


def kept_lines(
    all_lines: list[str], keep: Callable[[str], bool], max_bytes: int, redactor: Redactor
) -> dict[str, Any]:
    """The lines `keep` accepts, the newest that fit in max_bytes, and the counts to report;
    the lines are redacted as one text first, so the cap never keeps half a secret (a key
    block becomes one line)."""
    all_lines = redactor.lines(all_lines)
    kept = [line for line in all_lines if keep(line)]
    kept, cut = cap_tail(kept, max_bytes)
    return {
        "lines": kept,
        "read_lines": len(all_lines),
        "filtered_out": len(all_lines) - len(kept) - cut,
        "truncated_lines": cut,
    }


def render_logs(items: list[dict[str, Any]], label: Callable[[dict[str, Any]], str]) -> str:
    """Several logs as one text: each line prefixed with its source `label(item)` (empty for
    none) and "[previous]" for a previous instance, an item's error in parentheses, and the
    number of older lines max_bytes cut."""
    output: list[str] = []
    for item in items:
        prefix = (label(item) + (" [previous]" if item["previous"] else "")).strip()
        prefix = f"{prefix} | " if prefix else ""
        if item["error"]:
            output.append(f"{prefix}({item['error']})")
        output.extend(prefix + line for line in item["lines"])
        if item["truncated_lines"]:
            output.append(f"{prefix}[{item['truncated_lines']} older lines cut at max_bytes]")
    return "\n".join(output)
