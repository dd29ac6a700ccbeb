"""Untrusted data on its way to an LLM: redacted, reduced to a budget, and fenced.

Logs, events, labels, annotations and command output are written by whoever controls a
service or an alert. Before any of it is sent: secrets are redacted (the one Redactor of
infrastructure/redaction.py, patterns from agents.yml `redaction`), whole texts first and
before any cut, so a reduction never keeps half a secret; long logs are reduced (repeats
collapsed with counts, error lines kept, head and tail kept), and each piece is wrapped in a
delimited block whose delimiter cannot appear inside it (`<`, `>` and `&` are escaped), so data
can never close its own block.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from infrastructure.redaction import Redactor

__all__ = [
    "BLOCK_TAG",
    "Redactor",
    "Reduction",
    "data_block",
    "escape",
    "estimate_tokens",
    "reduce_lines",
]

BLOCK_TAG = "untrusted_data"
_ERRORISH = re.compile(
    r"(?i)\b(error|err|fatal|panic|critical|exception|traceback|refused|timeout|timed out"
    r"|killed|oom)\b"
)


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def data_block(source: str, text: str) -> str:
    """A fenced block of untrusted text. `source` is ours (e.g. "logs of obs-3"), escaped too."""
    return f'<{BLOCK_TAG} source="{escape(source)}">\n{escape(text)}\n</{BLOCK_TAG}>'


@dataclass
class Reduction:
    lines: list[str]
    notes: list[str] = field(default_factory=list)


def reduce_lines(lines: list[str], max_lines: int) -> Reduction:
    """Collapse repeated lines with counts; if still too long, keep error lines, head and tail."""
    notes: list[str] = []
    counts = Counter(lines)
    collapsed: list[str] = []
    seen: set[str] = set()
    for line in lines:
        if counts[line] > 1:
            if line in seen:
                continue
            seen.add(line)
            collapsed.append(f"[{counts[line]}x] {line}")
        else:
            collapsed.append(line)
    if len(collapsed) < len(lines):
        notes.append(f"{len(lines) - len(collapsed)} repeated lines collapsed")
    if len(collapsed) <= max_lines:
        return Reduction(collapsed, notes)

    head_size = max(1, max_lines // 4)
    tail_size = max(1, max_lines // 4)
    head, middle, tail = (
        collapsed[:head_size],
        collapsed[head_size:-tail_size],
        collapsed[-tail_size:],
    )
    room = max_lines - head_size - tail_size
    errors = [line for line in middle if _ERRORISH.search(line)][-room:] if room > 0 else []
    cut = len(middle) - len(errors)
    kept = [*head, f"[... {cut} lines cut, {len(errors)} error lines kept ...]", *errors, *tail]
    notes.append(f"{cut} of {len(collapsed)} lines cut (head, tail and error lines kept)")
    return Reduction(kept, notes)


def estimate_tokens(text: str, chars_per_token: float) -> int:
    return int(len(text) / chars_per_token) + 1
