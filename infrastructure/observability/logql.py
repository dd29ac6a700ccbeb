"""LogQL that UICI writes: a stream selector and line filters, built from typed parameters.

Values are quoted as LogQL (Go) double-quoted strings, so nothing a parameter contains can
end a string early or add a pipeline stage. Every query this module can produce is parsed by
Grafana's own LogQL grammar in the tests (tests/test_logql_grammar.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Label names no generated selector may use, whatever their case. Loki's lexer
# (pkg/logql/syntax/lex.go `tokens`) turns these words into keywords, and a matcher needs an
# IDENTIFIER, so `{on="x"}` or `{JSON="x"}` is a syntax error there. Function names such as
# `rate` or `ip` are identifiers to Loki unless a `(` follows; of those, Grafana's grammar
# (@grafana/lezer-logql) still refuses `label_replace` and `vector`, so they are out as well.
RESERVED_LABEL_NAMES = frozenset(
    {
        "by", "without", "bool", "offset", "on", "ignoring", "group_left", "group_right",
        "or", "and", "unless", "json", "xml", "regexp", "logfmt", "unpack", "pattern",
        "label_format", "line_format", "decolorize", "drop", "keep", "variants", "of",
        "unwrap", "label_replace", "vector",
    }
)  # fmt: skip


def quote(value: str) -> str:
    """A LogQL double-quoted string literal holding exactly `value`.

    Besides the quote and the backslash, newlines (which end a Go string literal), every other
    control character (Loki's scanner refuses a raw NUL) and U+FEFF are escaped, so the literal
    is one printable line. A lone surrogate cannot be sent as UTF-8: ValueError."""
    out: list[str] = []
    for char in value:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif code < 0x20 or code == 0x7F or code == 0xFEFF:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"{value!r} holds a lone surrogate, which is not valid UTF-8")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def stream_selector(labels: Mapping[str, str]) -> str:
    """`{a="x", b="y"}` with exact matchers, labels in the order given.

    ValueError for what Loki would refuse: no labels, a name that is not a label name or is a
    LogQL keyword, or only empty values (`{app=""}` matches every stream that lacks `app`;
    Loki requires one matcher that does not match the empty value)."""
    if not labels:
        raise ValueError("a stream selector needs at least one label")
    if not any(labels.values()):
        raise ValueError("a stream selector needs at least one label with a non-empty value")
    for name in labels:
        if not _LABEL.match(name):
            raise ValueError(f"{name!r} is not a label name")
        if name.lower() in RESERVED_LABEL_NAMES:
            raise ValueError(f"{name!r} is a LogQL keyword, which Loki cannot parse as a label")
    return "{" + ", ".join(f"{name}={quote(value)}" for name, value in labels.items()) + "}"


def log_query(
    selector: str,
    contains: Sequence[str] = (),
    excludes: Sequence[str] = (),
    regex: str | None = None,
) -> str:
    """The selector, then `|= "..."` for each text that must appear, `!= "..."` for each that
    must not, and `|~ "..."` for a regular expression (RE2, as Loki runs it)."""
    parts = [selector]
    parts.extend(f"|= {quote(text)}" for text in contains if text)
    parts.extend(f"!= {quote(text)}" for text in excludes if text)
    if regex:
        parts.append(f"|~ {quote(regex)}")
    return " ".join(parts)


def count_query(query: str, step_seconds: int) -> str:
    """Lines per step of a log query: `sum(count_over_time(<query> [<step>s]))`."""
    return f"sum(count_over_time({query} [{max(1, step_seconds)}s]))"
