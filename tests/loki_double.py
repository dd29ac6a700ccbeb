"""A stateful Grafana Loki API double served over real HTTP on 127.0.0.1.

Grafana Loki cannot run where the tests run (not packaged in Debian, no image can be pulled),
so this stands in for one: a single-binary Loki 3 with in-memory, per-tenant streams. It copies
what a client can see: the JSON shapes of `streams`, `matrix` and `vector` results (with
`stats`), Loki's parameter handling (timestamps of <= 10 digits are seconds, longer ones
nanoseconds, a `.` makes float seconds, else RFC 3339; default window the last hour, limit 100,
direction backward, step max(1, range/250) s) and its validation and error texts, word for
word, answered as `text/plain; charset=utf-8` with no JSON envelope (from Loki's
pkg/loghttp, pkg/logql/syntax, pkg/logqlmodel and pkg/util/validation, and dskit's tenant
middleware).

Served:
- `POST /loki/api/v1/push`: JSON (`Content-Type: application/json`, optionally gzip or
  deflate), 204 with an empty body; 400 for a body that is not a push request. `push()` does
  the same from Python. Streams without `service_name` get one, as Loki 3 discovers it.
- `GET|POST /loki/api/v1/query_range` and `/loki/api/v1/query` (instant: log queries get
  Loki's 400, metric queries a vector), `/loki/api/v1/labels`,
  `/loki/api/v1/label/<name>/values`, `/loki/api/v1/series`, `/ready`,
  `/loki/api/v1/status/buildinfo`. Anything else: 404 `404 page not found`.
- Tenancy: with `auth_enabled`, every API request needs `X-Scope-OrgID` (401 `no org id`);
  `t1|t2` queries several tenants and adds `__tenant_id__` to each stream, as Loki does.
  Without it everything belongs to tenant `fake`. Optionally a bearer token (`require_token`)
  or basic auth (`require_basic`) is checked first, as a proxy in front of Loki would.
- Every request is recorded (`requests`: method, path, params, headers, body, status), and
  `fail()` scripts errors (503, 504 with Loki's timeout text, 429, ...), optionally slow.

LogQL, deliberately small and strict: stream selectors with `=`, `!=`, `=~`, `!~` (regexes
fully anchored, as Prometheus matchers are; Python's `re` stands in for RE2), Loki's rule that
a selector needs one matcher that does not match the empty string, line filters `|=`, `!=`,
`|~`, `!~` (chained, and `or` between strings), Go double-quoted strings with escapes and
backtick strings, `# comments`, and the metric queries `count_over_time`, `rate`,
`bytes_over_time` and `bytes_rate` over `[<range>]`, optionally inside `sum`, `count`, `min`,
`max` or `avg`, with `by (...)` or `without (...)`. The lexer follows Loki's
(pkg/logql/syntax/lex.go): keywords such as `by`, `on` or `json` are keywords in any case, so
`{on="x"}` is a syntax error there and here. Anything else, including valid LogQL the double
does not implement (`| json`, `topk`, `offset`, ...), answers 400 `parse error at line 1,
col N: syntax error: unexpected ...`, the shape of Loki's error (positions point at the
offending token, but need not match Loki's exactly).

Windows: a log query reads start <= ts < end and `limit` applies across streams (backward: the
entries nearest the end); a metric point at t covers (t - range, t], points at start + k*step
up to end, and a step without entries has no point. HTTP pushes older than a week are refused
(reject_old_samples, on by default); `push()` from Python takes any timestamp.
"""

from __future__ import annotations

import base64
import bisect
import gzip
import json
import math
import re
import threading
import time
import traceback
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.loopback_server import LoopbackServer, Reply, TrackedHandler

Obj = dict[str, Any]

DEFAULT_TENANT = "fake"  # -auth.no-auth-tenant, used when auth_enabled is off
MAX_ENTRIES_LIMIT_PER_QUERY = 5000
MAX_QUERY_LENGTH_NS = 721 * 3600 * 10**9  # max_query_length: 30d1h
MAX_POINTS = 11000
DEFAULT_LIMIT = 100
DEFAULT_SINCE_NS = 3600 * 10**9
REJECT_OLD_SAMPLES_MAX_AGE_NS = 7 * 86400 * 10**9
BUILD_INFO = {
    "version": "3.5.1",
    "revision": "0000000",
    "branch": "HEAD",
    "buildUser": "root@loki-double",
    "buildDate": "2026-06-01T00:00:00Z",
    "goVersion": "go1.24.4",
}
# discover_service_name: the labels Loki 3 copies into service_name, first found wins.
SERVICE_NAME_LABELS = (
    "service",
    "app",
    "application",
    "app_name",
    "name",
    "app_kubernetes_io_name",
    "container",
    "container_name",
    "k8s_container_name",
    "component",
    "workload",
    "job",
    "k8s_job_name",
)

# Loki's texts, word for word.
NO_ORG_ID = "no org id\n"  # dskit's http.Error adds the newline
PAGE_NOT_FOUND = "404 page not found\n"
ERR_MATCHERS = (
    "queries require at least one regexp or equality matcher that does not have an"
    ' empty-compatible value. For instance, app=~".*" does not meet this requirement,'
    ' but app=~".+" will'
)
ERR_INSTANT_LOG_QUERY = (
    "log queries are not supported as an instant query type, please change your query to a"
    " range query type"
)
ERR_END_BEFORE_START = "end timestamp must not be before or equal to start time"
ERR_NEGATIVE_STEP = (
    "zero or negative query resolution step widths are not accepted. Try a positive integer"
)
ERR_TOO_MANY_POINTS = (
    "exceeded maximum resolution of 11,000 points per time series. Try increasing the value"
    " of the step parameter"
)
ERR_LIMIT = "limit must be a positive value"
ERR_ONLY_MATCHERS = "only label matchers are supported"
TIMEOUT_TEXT = (
    "request timed out, decrease the duration of the request or add more label matchers"
    " (prefer exact match over regex match) to reduce the amount of data processed"
)
ERR_NO_LABELS = "error at least one label pair is required per stream"
DEFAULT_FAILURE_TEXT = {
    400: "bad request",
    401: NO_ORG_ID,
    429: "too many outstanding requests",
    500: "internal server error",
    502: "502 Bad Gateway",
    503: "Service Unavailable",
    504: TIMEOUT_TEXT,
}


class LokiHttpError(Exception):
    """An answer that is an error: Loki writes the bare message as text/plain."""

    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = dict(headers or {})


def bad_request(text: str) -> LokiHttpError:
    return LokiHttpError(400, text)


# --- time ---------------------------------------------------------------------------------------

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)
_PROM_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64_MAX = 2**63 - 1


def now_ns() -> int:
    return time.time_ns()


def to_ns(moment: int | datetime) -> int:
    """Nanoseconds since the epoch from an int (already ns) or a datetime (naive means UTC)."""
    if isinstance(moment, datetime):
        aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return (aware - _EPOCH) // timedelta(microseconds=1) * 1000
    return int(moment)


def rfc3339(ns: int) -> str:
    seconds, rest = divmod(ns, 10**9)
    text = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{rest:09d}".rstrip("0").rstrip(".") + "Z"


def go_quote(text: str) -> str:
    """Close enough to Go's %q for the messages here."""
    return json.dumps(text, ensure_ascii=False)


def parse_timestamp(value: str, default_ns: int) -> int:
    """Loki's parseTimestamp (pkg/loghttp/params.go); ValueError with Go's message."""
    if value == "":
        return default_ns
    if "." in value and _FLOAT.match(value):
        seconds = float(value)
        whole = math.trunc(seconds)
        fraction = round((seconds - whole) * 1000) / 1000  # Loki keeps milliseconds
        return int(whole) * 10**9 + int(fraction * 10**9)
    if not _INT.match(value):
        matched = _RFC3339.match(value)
        if matched:
            return _rfc3339_ns(matched)
        raise ValueError(f"strconv.ParseInt: parsing {go_quote(value)}: invalid syntax")
    number = int(value)
    if abs(number) > _INT64_MAX:
        raise ValueError(f"strconv.ParseInt: parsing {go_quote(value)}: value out of range")
    return number * 10**9 if len(value) <= 10 else number


def _rfc3339_ns(matched: re.Match[str]) -> int:
    year, month, day, hour, minute, second = (int(matched.group(i)) for i in range(1, 7))
    zone = matched.group(8)
    offset = timedelta(0)
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC) - offset
    fraction = int((matched.group(7) or "0").ljust(9, "0"))
    return to_ns(moment) + fraction


def parse_prom_duration(text: str) -> int:
    """Prometheus model.ParseDuration, in ns; ValueError with its message."""
    if text == "":
        raise ValueError("empty duration string")
    if text == "0":
        return 0
    matched = _PROM_DURATION.match(text)
    if not matched or not any(matched.groups()):
        raise ValueError(f"not a valid duration string: {go_quote(text)}")
    units = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1)
    total = sum(int(g or 0) * u * 10**9 for g, u in zip(matched.groups()[:6], units, strict=True))
    return total + int(matched.group(7) or 0) * 10**6


def go_duration(ns: int) -> str:
    """Go's time.Duration.String() for the durations in messages (>= 1 s: 744h0m0s)."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 10**9:
        for unit, size in (("ms", 10**6), ("µs", 10**3), ("ns", 1)):
            if ns >= size:
                return sign + _trim(Decimal(ns) / size) + unit
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    seconds = _trim(Decimal(rest) / 10**9)
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{sign}{minutes}m{seconds}s"
    return f"{sign}{seconds}s"


def _trim(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_value(value: float) -> str:
    """A sample value as Loki writes it (Go's FormatFloat 'f', -1): 3, 0.5, 0.00001."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return _trim(Decimal(repr(value)))


def _seconds_number(ns: int) -> int | float:
    """A sample timestamp as Prometheus's model.Time marshals it: seconds, ms precision."""
    ms = ns // 10**6
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def label_string(labels: Mapping[str, str]) -> str:
    """Prometheus's labels.String(): {a="x", b="y"}, sorted by name."""
    return "{" + ", ".join(f"{k}={go_quote(labels[k])}" for k in sorted(labels)) + "}"


# --- LogQL: tokens ------------------------------------------------------------------------------

# pkg/logql/syntax/lex.go `tokens` (keywords, matched case-insensitively) ...
KEYWORDS = frozenset(
    {
        "by", "without", "bool", "offset", "on", "ignoring", "group_left", "group_right",
        "or", "and", "unless", "json", "xml", "regexp", "logfmt", "unpack", "pattern",
        "label_format", "line_format", "decolorize", "drop", "keep", "variants", "of",
        "unwrap",
    }
)  # fmt: skip
# ... and `functionTokens`: keywords only when a `(` (or `by (`/`without (`) follows.
FUNCTIONS = frozenset(
    {
        "rate", "rate_counter", "count_over_time", "bytes_rate", "bytes_over_time",
        "avg_over_time", "sum_over_time", "min_over_time", "max_over_time",
        "stdvar_over_time", "stddev_over_time", "quantile_over_time", "first_over_time",
        "last_over_time", "absent_over_time", "vector", "sum", "avg", "max", "min", "count",
        "stddev", "stdvar", "bottomk", "topk", "approx_topk", "sort", "sort_desc",
        "label_replace", "bytes", "duration", "duration_seconds", "ip",
    }
)  # fmt: skip
RANGE_OPS = frozenset({"count_over_time", "rate", "bytes_over_time", "bytes_rate"})
UNWRAP_OPS = frozenset(
    {
        "avg_over_time", "sum_over_time", "min_over_time", "max_over_time",
        "stdvar_over_time", "stddev_over_time", "quantile_over_time", "first_over_time",
        "last_over_time", "rate_counter",
    }
)  # fmt: skip
VECTOR_OPS = frozenset({"sum", "count", "min", "max", "avg"})
LINE_FILTERS = ("|=", "!=", "|~", "!~")
MATCH_OPS = ("=", "!=", "=~", "!~")
_TWO_CHAR = ("!=", "=~", "!~", "|=", "|~", "|>", "!>", "==", ">=", "<=")
_ONE_CHAR = "{}(),=|.+-*/%^><"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+")
_SIMPLE_ESCAPES = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
    '"': b'"',
}


class LogQLError(Exception):
    """A LogQL parse error; `text` is Loki's message for it."""

    def __init__(self, message: str, line: int = 0, col: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col

    @property
    def text(self) -> str:
        if self.line == 0 and self.col == 0:
            return f"parse error : {self.message}"
        return f"parse error at line {self.line}, col {self.col}: {self.message}"


@dataclass(frozen=True)
class Token:
    kind: str  # punctuation itself, a keyword, FUNC, STRING, IDENTIFIER, NUMBER, RANGE, $end
    text: str
    pos: int
    value: Any = None

    @property
    def display(self) -> str:
        """The token as goyacc names it in Loki's messages (tokens-map entries by their text)."""
        if self.kind == "FUNC":
            name = str(self.value)
            return name if name in ("label_replace", "ip") else name.upper()
        return self.kind


def _position(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


def _error_at(text: str, pos: int, message: str) -> LogQLError:
    return LogQLError(message, *_position(text, pos))


def _is_function(text: str, pos: int) -> bool:
    """Loki's isFunction: a `(` follows, or `by`/`without` and then `(`."""
    j = _skip_space(text, pos)
    if text.startswith("(", j):
        return True
    for word in ("by", "without"):
        if text[j : j + len(word)].lower() == word:
            return text.startswith("(", _skip_space(text, j + len(word)))
    return False


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while True:
        i = _skip_space(text, i)
        if i >= n:
            tokens.append(Token("$end", "", n))
            return tokens
        char = text[i]
        if char == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if char == "\x00":
            raise _error_at(text, i, "invalid character NUL")
        if char == '"':
            value, end = _scan_string(text, i)
            tokens.append(Token("STRING", text[i:end], i, value))
            i = end
        elif char == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise _error_at(text, i, "literal not terminated")
            tokens.append(Token("STRING", text[i : end + 1], i, text[i + 1 : end]))
            i = end + 1
        elif char == "[":
            end = text.find("]", i + 1)
            if end < 0:
                raise _error_at(text, i, "missing closing ']' in duration")
            try:
                duration = parse_prom_duration(text[i + 1 : end])
            except ValueError as exc:
                raise _error_at(text, i, str(exc)) from None
            tokens.append(Token("RANGE", text[i : end + 1], i, duration))
            i = end + 1
        elif char.isdigit() or (char == "." and i + 1 < n and text[i + 1].isdigit()):
            matched = _NUMBER.match(text, i)
            assert matched is not None
            end = matched.end()
            suffix = re.compile(r"[0-9nuµmshdwyBikKMGTP.]*").match(text, end)
            assert suffix is not None
            word = text[i : suffix.end()]
            kind = "NUMBER"
            if suffix.end() > end:
                try:
                    parse_prom_duration(word)
                    kind, end = "DURATION", suffix.end()
                except ValueError:
                    if re.fullmatch(r"[\d.]+(B|[kKMGTP]i?B)", word):
                        kind, end = "BYTES", suffix.end()
            tokens.append(Token(kind, text[i:end], i, text[i:end]))
            i = end
        elif _IDENT.match(text, i):
            matched = _IDENT.match(text, i)
            assert matched is not None
            word = matched.group()
            lower = word.lower()
            end = matched.end()
            if lower in FUNCTIONS and _is_function(text, end):
                tokens.append(Token("FUNC", word, i, lower))
            elif lower in KEYWORDS:
                tokens.append(Token(lower, word, i))
            else:
                tokens.append(Token("IDENTIFIER", word, i, word))
            i = end
        elif text[i : i + 2] in _TWO_CHAR:
            tokens.append(Token(text[i : i + 2], text[i : i + 2], i))
            i += 2
        elif char in _ONE_CHAR:
            tokens.append(Token(char, char, i))
            i += 1
        else:
            tokens.append(Token("$unk", char, i))
            i += 1


def _scan_string(text: str, start: int) -> tuple[str, int]:
    """A Go double-quoted string at `start`: its value and the index after it."""
    out = bytearray()
    i = start + 1
    n = len(text)
    while True:
        if i >= n or text[i] == "\n":
            raise _error_at(text, start, "literal not terminated")
        char = text[i]
        if char == '"':
            return out.decode("utf-8", "replace"), i + 1
        if char != "\\":
            out += char.encode("utf-8", "surrogatepass")
            i += 1
            continue
        escape = text[i + 1] if i + 1 < n else ""
        if escape in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[escape]
            i += 2
        elif escape in "01234567" and escape:
            digits = text[i + 1 : i + 4]
            if not re.fullmatch(r"[0-7]{3}", digits) or int(digits, 8) > 255:
                raise _error_at(text, start, "invalid char escape")
            out.append(int(digits, 8))
            i += 4
        elif escape in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[escape]
            digits = text[i + 2 : i + 2 + width]
            if not re.fullmatch(rf"[0-9A-Fa-f]{{{width}}}", digits):
                raise _error_at(text, start, "invalid char escape")
            code = int(digits, 16)
            if escape == "x":
                out.append(code)
            elif 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
                raise _error_at(text, start, "invalid syntax")
            else:
                out += chr(code).encode()
            i += 2 + width
        else:
            raise _error_at(text, start, "invalid char escape")


# --- LogQL: syntax tree -------------------------------------------------------------------------


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        assert self.regex is not None
        found = self.regex.fullmatch(value) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True)
class LineFilter:
    op: str
    texts: tuple[str, ...]
    regexes: tuple[re.Pattern[str], ...] = ()

    def keeps(self, line: str) -> bool:
        if self.op in ("|=", "!="):
            found = any(text in line for text in self.texts)
        else:
            found = any(regex.search(line) for regex in self.regexes)
        return found if self.op in ("|=", "|~") else not found


@dataclass(frozen=True)
class LogQuery:
    matchers: tuple[Matcher, ...]
    filters: tuple[LineFilter, ...] = ()

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels.get(m.name, "")) for m in self.matchers)

    def keeps(self, line: str) -> bool:
        return all(f.keeps(line) for f in self.filters)


@dataclass(frozen=True)
class RangeAggregation:
    op: str
    log: LogQuery
    range_ns: int


@dataclass(frozen=True)
class Grouping:
    without: bool
    labels: tuple[str, ...]

    def key(self, labels: Mapping[str, str]) -> dict[str, str]:
        if self.without:
            return {k: v for k, v in labels.items() if k not in self.labels}
        return {k: labels[k] for k in self.labels if k in labels}


@dataclass(frozen=True)
class VectorAggregation:
    op: str
    grouping: Grouping | None
    inner: MetricQuery


MetricQuery = RangeAggregation | VectorAggregation
Query = LogQuery | MetricQuery


def _compile(pattern: str, anchored: bool) -> re.Pattern[str]:
    try:
        return re.compile(f"(?s:{pattern})" if anchored else pattern)
    except re.error as exc:
        raise LogQLError(f"error parsing regexp: {exc}") from None


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.at = 0

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.at + ahead, len(self.tokens) - 1)]

    def take(self) -> Token:
        token = self.peek()
        self.at = min(self.at + 1, len(self.tokens) - 1)
        return token

    def unexpected(self, token: Token, expecting: Sequence[str] = ()) -> LogQLError:
        message = f"syntax error: unexpected {token.display}"
        if expecting:
            message += ", expecting " + " or ".join(expecting)
        return _error_at(self.text, token.pos, message)

    def expect(self, kind: str, expecting: Sequence[str] = ()) -> Token:
        if self.peek().kind != kind:
            raise self.unexpected(self.peek(), expecting)
        return self.take()

    def parse(self) -> Query:
        query = self.expr()
        if self.peek().kind != "$end":
            raise self.unexpected(self.peek())
        for log in _log_queries(query):
            if all(m.matches("") for m in log.matchers):
                raise LogQLError(ERR_MATCHERS)
        return query

    def expr(self) -> Query:
        token = self.peek()
        if token.kind == "{":
            return self.log_query()
        if token.kind == "(":
            self.take()
            inner = self.expr()
            self.expect(")")
            return inner
        return self.metric()

    def metric(self) -> MetricQuery:
        token = self.peek()
        if token.kind == "(":
            self.take()
            inner = self.metric()
            self.expect(")")
            return inner
        if token.kind == "FUNC" and token.value in RANGE_OPS | UNWRAP_OPS:
            return self.range_aggregation()
        if token.kind == "FUNC" and token.value in VECTOR_OPS:
            return self.vector_aggregation()
        raise self.unexpected(token)

    def log_query(self) -> LogQuery:
        matchers = self.selector()
        return LogQuery(matchers, self.pipeline())

    def selector(self) -> tuple[Matcher, ...]:
        self.expect("{")
        if self.peek().kind == "}":
            self.take()
            return ()
        matchers: list[Matcher] = []
        while True:
            name = self.expect("IDENTIFIER", ("IDENTIFIER",) if matchers else ("IDENTIFIER", "}"))
            op = self.peek()
            if op.kind not in MATCH_OPS:
                raise self.unexpected(op, ("=", "!=", "=~", "!~"))
            self.take()
            value = self.expect("STRING", ("STRING",)).value
            regex = _compile(value, anchored=True) if op.kind in ("=~", "!~") else None
            matchers.append(Matcher(name.text, op.kind, value, regex))
            after = self.take()
            if after.kind == "}":
                return tuple(matchers)
            if after.kind != ",":
                raise self.unexpected(after, ("}", ","))

    def pipeline(self) -> tuple[LineFilter, ...]:
        filters: list[LineFilter] = []
        while self.peek().kind in LINE_FILTERS:
            op = self.take().kind
            texts = [self.expect("STRING", ("STRING",)).value]
            while self.peek().kind == "or" and self.peek(1).kind == "STRING":
                self.take()
                texts.append(self.take().value)
            regexes = tuple(_compile(t, anchored=False) for t in texts) if "~" in op else ()
            filters.append(LineFilter(op, tuple(texts), regexes))
        if self.peek().kind in ("|", "|>", "!>"):
            # Parsers, label filters, formatting and patterns are valid LogQL this double
            # does not implement: refused with the token that starts them.
            token = self.peek(1) if self.peek().kind == "|" else self.peek()
            raise self.unexpected(token)
        return tuple(filters)

    def range_aggregation(self) -> RangeAggregation:
        function = self.take()
        op = str(function.value)
        self.expect("(")
        if self.peek().kind == "(":
            self.take()
            log = self.log_query()
            self.expect(")")
            range_ns = self.expect("RANGE").value
        else:
            matchers = self.selector()
            if self.peek().kind == "RANGE":
                range_ns = self.take().value
                log = LogQuery(matchers, self.pipeline())
            else:
                log = LogQuery(matchers, self.pipeline())
                range_ns = self.expect("RANGE").value
        self.expect(")")
        if op in UNWRAP_OPS:
            raise LogQLError(f"invalid aggregation {op} without unwrap")
        if self.peek().kind in ("by", "without"):
            raise LogQLError(f"grouping not allowed for {op} aggregation")
        return RangeAggregation(op, log, int(range_ns))

    def vector_aggregation(self) -> VectorAggregation:
        op = str(self.take().value)
        grouping = self.grouping() if self.peek().kind in ("by", "without") else None
        self.expect("(")
        inner = self.metric()
        self.expect(")")
        if grouping is None and self.peek().kind in ("by", "without"):
            grouping = self.grouping()
        return VectorAggregation(op, grouping, inner)

    def grouping(self) -> Grouping:
        without = self.take().kind == "without"
        self.expect("(")
        labels: list[str] = []
        if self.peek().kind != ")":
            labels.append(self.expect("IDENTIFIER").text)
            while self.peek().kind == ",":
                self.take()
                labels.append(self.expect("IDENTIFIER").text)
        self.expect(")", (")", ","))
        return Grouping(without, tuple(labels))


def _log_queries(query: Query) -> Iterator[LogQuery]:
    if isinstance(query, LogQuery):
        yield query
    elif isinstance(query, RangeAggregation):
        yield query.log
    else:
        yield from _log_queries(query.inner)


def parse_logql(text: str) -> Query:
    """The query, or LogQLError with Loki's message."""
    return _Parser(text).parse()


def parse_matchers(text: str, validate: bool) -> tuple[Matcher, ...]:
    """A bare stream selector (labels, series); Loki's syntax.ParseMatchers."""
    parser = _Parser(text)
    query = parser.expr()
    if parser.peek().kind != "$end":
        raise parser.unexpected(parser.peek())
    if not isinstance(query, LogQuery) or query.filters:
        raise LogQLError(ERR_ONLY_MATCHERS)
    if validate and all(m.matches("") for m in query.matchers):
        raise LogQLError(ERR_MATCHERS)
    return query.matchers


# --- the store ----------------------------------------------------------------------------------


@dataclass
class _Stream:
    labels: dict[str, str]
    entries: list[tuple[int, int, str]] = field(default_factory=list)  # (ts ns, seq, line)

    def window(self, after: int, until: int, *, closed_left: bool) -> list[tuple[int, int, str]]:
        """Entries with after <= ts < until (closed_left) or after < ts <= until."""
        if closed_left:
            low = bisect.bisect_left(self.entries, (after,))
            high = bisect.bisect_left(self.entries, (until,))
        else:
            low = bisect.bisect_left(self.entries, (after + 1,))
            high = bisect.bisect_left(self.entries, (until + 1,))
        return self.entries[low:high]


@dataclass
class Recorded:
    """One request as the double received it, and the status it answered."""

    method: str
    path: str
    params: dict[str, str]  # the first value of each parameter (as Go's Form.Get)
    all_params: list[tuple[str, str]]  # every parameter, body form first, then the URL's
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""
    status: int = 0


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    text: str
    remaining: int
    headers: dict[str, str]
    delay: float


class _Reply(Reply):
    """Loki writes its JSON with an explicit charset."""

    JSON_TYPE: ClassVar[str] = "application/json; charset=UTF-8"


class LokiDouble(LoopbackServer):
    """Loki's query and push API over real HTTP, state in memory per tenant."""

    def __init__(
        self,
        *,
        auth_enabled: bool = False,
        require_token: str | None = None,
        require_basic: tuple[str, str] | None = None,
        discover_service_name: bool = True,
        reject_old_samples: bool = True,
    ) -> None:
        super().__init__()
        self.auth_enabled = auth_enabled
        self.require_token = require_token
        self.require_basic = require_basic
        self.discover_service_name = discover_service_name
        self.reject_old_samples = reject_old_samples
        self.ready = True
        self.requests: list[Recorded] = []
        self._lock = threading.RLock()
        self._tenants: dict[str, dict[tuple[tuple[str, str], ...], _Stream]] = {}
        self._failures: list[_Failure] = []
        self._seq = 0

    def handler_class(self) -> type[TrackedHandler]:
        return _make_handler(self)

    # -- state -------------------------------------------------------------------------------

    def push(
        self,
        labels: Mapping[str, str],
        entries: Iterable[tuple[int | datetime, str]],
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """Add entries (timestamp in ns or a datetime, line) to the stream `labels`."""
        self._append(tenant, dict(labels), [(to_ns(ts), line) for ts, line in entries])

    def clear(self) -> None:
        with self._lock:
            self._tenants.clear()

    def streams(self, tenant: str = DEFAULT_TENANT) -> list[dict[str, str]]:
        with self._lock:
            return [dict(s.labels) for s in self._tenants.get(tenant, {}).values()]

    def fail(
        self,
        status: int,
        body: str | None = None,
        times: int = 1,
        *,
        path: str = "",
        method: str = "*",
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next `times` requests whose path re.search-es `path` with `status` and
        the plain-text `body` (default: Loki's text for the status, e.g. the 504 timeout),
        after `delay` seconds. Proxy auth and the tenant are checked first: a request refused
        for those does not use up a scripted failure."""
        with self._lock:
            self._failures.append(
                _Failure(
                    method.upper(),
                    re.compile(path),
                    status,
                    DEFAULT_FAILURE_TEXT.get(status, f"error {status}") if body is None else body,
                    times,
                    dict(headers or {}),
                    delay,
                )
            )

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def _append(self, tenant: str, labels: dict[str, str], entries: list[tuple[int, str]]) -> None:
        if self.discover_service_name and "service_name" not in labels:
            found = next((labels[n] for n in SERVICE_NAME_LABELS if labels.get(n)), None)
            labels["service_name"] = found or "unknown_service"
        key = tuple(sorted(labels.items()))
        with self._lock:
            streams = self._tenants.setdefault(tenant, {})
            stream = streams.get(key)
            if stream is None:
                stream = streams[key] = _Stream(labels)
            for ts, line in entries:
                self._seq += 1
                bisect.insort(stream.entries, (ts, self._seq, line))

    # -- HTTP ----------------------------------------------------------------------------------

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], raw: bytes) -> _Reply:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if method == "POST" and content_type == "application/x-www-form-urlencoded":
            pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True) + pairs
        params: dict[str, str] = {}
        for name, value in pairs:
            params.setdefault(name, value)
        record = Recorded(method, path, params, pairs, headers, raw)
        with self._lock:
            self.requests.append(record)
        try:
            self._check_proxy_auth(headers)
            tenants = self._tenants_of(path, headers)
            self._scripted_failure(method, path)
            reply = self._route(method, path, params, pairs, headers, raw, tenants)
        except LokiHttpError as exc:
            reply = _Reply(exc.status, exc.text, exc.headers)
        except Exception as exc:  # a bug in the double: say so, like a 500 from Loki would
            traceback.print_exc()
            reply = _Reply(500, f"loki double: {type(exc).__name__}: {exc}")
        record.status = reply.status
        return reply

    def _check_proxy_auth(self, headers: dict[str, str]) -> None:
        authorization = headers.get("authorization", "")
        if self.require_token is not None and authorization != f"Bearer {self.require_token}":
            raise LokiHttpError(401, "Unauthorized\n", {"WWW-Authenticate": "Bearer"})
        if self.require_basic is not None:
            user, password = self.require_basic
            expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if authorization != expected:
                raise LokiHttpError(401, "Unauthorized\n", {"WWW-Authenticate": "Basic"})

    def _tenants_of(self, path: str, headers: dict[str, str]) -> list[str]:
        if not path.startswith("/loki/api/") or path == "/loki/api/v1/status/buildinfo":
            return []
        if not self.auth_enabled:
            return [DEFAULT_TENANT]
        org = headers.get("x-scope-orgid", "")
        tenants = [t for t in org.split("|") if t]
        if not tenants:
            raise LokiHttpError(401, NO_ORG_ID)
        return sorted(set(tenants))

    def _scripted_failure(self, method: str, path: str) -> None:
        with self._lock:
            chosen = None
            for failure in self._failures:
                if (
                    failure.remaining > 0
                    and failure.method in ("*", method)
                    and failure.pattern.search(path)
                ):
                    failure.remaining -= 1
                    chosen = failure
                    break
            self._failures = [f for f in self._failures if f.remaining > 0]
        if chosen is not None:
            if chosen.delay:
                time.sleep(chosen.delay)
            raise LokiHttpError(chosen.status, chosen.text, chosen.headers)

    def _route(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        pairs: list[tuple[str, str]],
        headers: dict[str, str],
        raw: bytes,
        tenants: list[str],
    ) -> _Reply:
        reads = ("GET", "POST")
        if path == "/ready" and method == "GET":
            if not self.ready:
                return _Reply(503, "Ingester not ready: waiting for 15s after being ready\n")
            return _Reply(200, "ready\n")
        if path == "/loki/api/v1/status/buildinfo" and method == "GET":
            return _Reply(200, dict(BUILD_INFO))
        if path == "/loki/api/v1/push" and method == "POST":
            return self._push_http(headers, raw, tenants)
        if path == "/loki/api/v1/query_range" and method in reads:
            return _Reply(200, self._query_range(params, tenants))
        if path == "/loki/api/v1/query" and method in reads:
            return _Reply(200, self._query_instant(params, tenants))
        if path == "/loki/api/v1/labels" and method in reads:
            return _Reply(200, self._labels(params, tenants, None))
        matched = re.fullmatch(r"/loki/api/v1/label/([^/]+)/values", path)
        if matched and method in reads:
            return _Reply(200, self._labels(params, tenants, matched.group(1)))
        if path == "/loki/api/v1/series" and method in reads:
            return _Reply(200, self._series(params, pairs, tenants))
        known = (
            "/ready",
            "/loki/api/v1/status/buildinfo",
            "/loki/api/v1/push",
            "/loki/api/v1/query_range",
            "/loki/api/v1/query",
            "/loki/api/v1/labels",
            "/loki/api/v1/series",
        )
        if path in known or matched:
            return _Reply(405, "")
        return _Reply(404, PAGE_NOT_FOUND)

    # -- push ----------------------------------------------------------------------------------

    def _push_http(self, headers: dict[str, str], raw: bytes, tenants: list[str]) -> _Reply:
        if len(tenants) != 1:
            raise bad_request("multiple org IDs present")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "deflate"):
            try:
                raw = gzip.decompress(raw) if encoding == "gzip" else zlib.decompress(raw)
            except (OSError, zlib.error, EOFError) as exc:
                raise bad_request(f"{encoding} body could not be decompressed: {exc}") from None
        elif encoding not in ("", "identity"):
            # Loki also takes snappy; the double has no snappy decoder.
            raise LokiHttpError(415, f"Content-Encoding {go_quote(encoding)} not supported")
        if content_type != "application/json":
            raise bad_request(
                f"the loki double decodes only Content-Type application/json pushes, not"
                f" {go_quote(content_type or 'application/x-protobuf')}"
            )
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise bad_request(
                f"loghttp.PushRequest: cannot decode the push request: {exc}"
            ) from None
        streams = body.get("streams") if isinstance(body, dict) else None
        if not isinstance(streams, list):
            raise bad_request('loghttp.PushRequest: the body needs a "streams" list')
        parsed: list[tuple[dict[str, str], list[tuple[int, str]]]] = []
        for item in streams:
            labels = item.get("stream") if isinstance(item, dict) else None
            values = item.get("values") if isinstance(item, dict) else None
            if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
                raise bad_request('loghttp.PushRequest: "stream" must be an object of strings')
            if not labels:
                raise bad_request(ERR_NO_LABELS)
            for name in labels:
                if not _IDENT.fullmatch(name):
                    raise bad_request(f"error parsing labels: invalid label name {go_quote(name)}")
            if not isinstance(values, list):
                raise bad_request('loghttp.PushRequest: "values" must be a list')
            entries: list[tuple[int, str]] = []
            for value in values:
                entries.append(_push_entry(value))
            parsed.append((dict(labels), entries))
        oldest = now_ns() - REJECT_OLD_SAMPLES_MAX_AGE_NS
        rejected: list[str] = []
        total = 0
        for labels, entries in parsed:
            total += len(entries)
            kept = []
            for ts, line in entries:
                if self.reject_old_samples and ts < oldest:
                    rejected.append(
                        f"entry for stream '{label_string(labels)}' has timestamp too old:"
                        f" {rfc3339(ts)}, oldest acceptable timestamp is: {rfc3339(oldest)}"
                    )
                else:
                    kept.append((ts, line))
            if kept:
                self._append(tenants[0], labels, kept)
        if rejected:
            raise bad_request(
                "\n".join(rejected[:10]) + f"\ntotal ignored: {len(rejected)} out of {total}"
            )
        return _Reply(204)

    # -- queries -------------------------------------------------------------------------------

    def _bounds(self, params: dict[str, str]) -> tuple[int, int]:
        """Loki's determineBounds: end (default now), start (default end-or-now minus since)."""
        now = now_ns()
        since = DEFAULT_SINCE_NS
        if params.get("since", ""):
            try:
                since = parse_prom_duration(params["since"])
            except ValueError as exc:
                raise bad_request(f"could not parse 'since' parameter: {exc}") from None
        try:
            end = parse_timestamp(params.get("end", ""), now)
        except ValueError as exc:
            raise bad_request(f"could not parse 'end' parameter: {exc}") from None
        try:
            start = parse_timestamp(params.get("start", ""), min(end, now) - since)
        except ValueError as exc:
            raise bad_request(f"could not parse 'start' parameter: {exc}") from None
        return start, end

    @staticmethod
    def _limit(params: dict[str, str]) -> int:
        text = params.get("limit", "")
        if text == "":
            return DEFAULT_LIMIT
        if not _INT.match(text):
            raise bad_request(f"strconv.Atoi: parsing {go_quote(text)}: invalid syntax")
        limit = int(text)
        if limit <= 0:
            raise bad_request(ERR_LIMIT)
        return limit

    @staticmethod
    def _direction(params: dict[str, str]) -> str:
        text = params.get("direction", "")
        if text == "":
            return "backward"
        if text.upper() not in ("FORWARD", "BACKWARD"):
            raise bad_request(f"invalid direction '{text}'")
        return text.lower()

    @staticmethod
    def _step(params: dict[str, str], start: int, end: int) -> int:
        text = params.get("step", "")
        if text == "":
            return max(1, (end - start) // 10**9 // 250) * 10**9
        if _FLOAT.match(text):
            return int(float(text) * 10**9)
        try:
            return parse_prom_duration(text)
        except ValueError:
            raise bad_request(f"cannot parse {go_quote(text)} to a valid duration") from None

    @staticmethod
    def _parse(text: str) -> Query:
        try:
            return parse_logql(text)
        except LogQLError as exc:
            raise bad_request(exc.text) from None

    def _query_range(self, params: dict[str, str], tenants: list[str]) -> Obj:
        started = time.perf_counter()
        start, end = self._bounds(params)
        if end < start:
            raise bad_request(ERR_END_BEFORE_START)
        limit = self._limit(params)
        direction = self._direction(params)
        step = self._step(params, start, end)
        if step <= 0:
            raise bad_request(ERR_NEGATIVE_STEP)
        if (end - start) // step > MAX_POINTS:
            raise bad_request(ERR_TOO_MANY_POINTS)
        query = self._parse(params.get("query", ""))
        if end - start > MAX_QUERY_LENGTH_NS:
            raise bad_request(
                f"the query time range exceeds the limit (query length:"
                f" {go_duration(end - start)}, limit: 30d1h)"
            )
        stats = _Stats()
        if isinstance(query, LogQuery):
            if limit > MAX_ENTRIES_LIMIT_PER_QUERY:
                raise bad_request(
                    "max entries limit per query exceeded, limit > max_entries_limit_per_query"
                    f" ({limit} > {MAX_ENTRIES_LIMIT_PER_QUERY})"
                )
            result = self._streams(query, tenants, start, end, limit, direction, stats)
            return _success("streams", result, stats, started)
        times = list(range(start, end + 1, step))
        series = self._evaluate(query, tenants, times, stats)
        matrix = [
            {
                "metric": labels,
                "values": [
                    [_seconds_number(t), format_value(v)] for t, v in sorted(points.items())
                ],
            }
            for labels, points in _sorted_series(series)
            if points
        ]
        return _success("matrix", matrix, stats, started)

    def _query_instant(self, params: dict[str, str], tenants: list[str]) -> Obj:
        started = time.perf_counter()
        self._limit(params)
        try:
            at = parse_timestamp(params.get("time", ""), now_ns())
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        self._direction(params)
        query = self._parse(params.get("query", ""))
        if isinstance(query, LogQuery):
            raise bad_request(ERR_INSTANT_LOG_QUERY)
        stats = _Stats()
        series = self._evaluate(query, tenants, [at], stats)
        vector = [
            {"metric": labels, "value": [_seconds_number(at), format_value(points[at])]}
            for labels, points in _sorted_series(series)
            if at in points
        ]
        return _success("vector", vector, stats, started)

    def _selected(
        self, tenants: list[str], log: LogQuery
    ) -> Iterator[tuple[dict[str, str], _Stream]]:
        """(labels as the result shows them, stream) of every stream the selector picks."""
        with self._lock:
            for tenant in tenants:
                for stream in list(self._tenants.get(tenant, {}).values()):
                    labels = dict(stream.labels)
                    if len(tenants) > 1:
                        labels["__tenant_id__"] = tenant
                    if log.selects(labels):
                        yield labels, stream

    def _streams(
        self,
        query: LogQuery,
        tenants: list[str],
        start: int,
        end: int,
        limit: int,
        direction: str,
        stats: _Stats,
    ) -> list[Obj]:
        found: list[tuple[int, int, str, int]] = []  # ts, seq, line, stream index
        labelsets: list[dict[str, str]] = []
        for labels, stream in self._selected(tenants, query):
            index = len(labelsets)
            labelsets.append(labels)
            for ts, seq, line in stream.window(start, end, closed_left=True):
                stats.scanned(line)
                if query.keeps(line):
                    found.append((ts, seq, line, index))
        found.sort(reverse=direction == "backward")
        found = found[:limit]
        grouped: dict[int, list[list[str]]] = {}
        for ts, _, line, index in found:
            grouped.setdefault(index, []).append([str(ts), line])
        stats.returned = len(found)
        return [{"stream": labelsets[i], "values": values} for i, values in grouped.items()]

    def _evaluate(
        self, query: MetricQuery, tenants: list[str], times: list[int], stats: _Stats
    ) -> dict[tuple[tuple[str, str], ...], dict[int, float]]:
        """Per series (sorted label items): value at each evaluation time that has one."""
        if isinstance(query, VectorAggregation):
            inner = self._evaluate(query.inner, tenants, times, stats)
            groups: dict[tuple[tuple[str, str], ...], dict[int, list[float]]] = {}
            for key, values_at in inner.items():
                labels = dict(key)
                group = query.grouping.key(labels) if query.grouping else {}
                slot = groups.setdefault(tuple(sorted(group.items())), {})
                for t, value in values_at.items():
                    slot.setdefault(t, []).append(value)
            return {
                key: {t: _aggregate(query.op, values) for t, values in by_time.items()}
                for key, by_time in groups.items()
            }
        out: dict[tuple[tuple[str, str], ...], dict[int, float]] = {}
        seconds = query.range_ns / 10**9
        for labels, stream in self._selected(tenants, query.log):
            kept: list[tuple[int, int]] = []  # ts, bytes
            for ts, _, line in stream.window(
                times[0] - query.range_ns, times[-1], closed_left=False
            ):
                stats.scanned(line)
                if query.log.keeps(line):
                    kept.append((ts, len(line.encode())))
            if not kept:
                continue
            stamps = [ts for ts, _ in kept]
            points: dict[int, float] = {}
            for t in times:
                low = bisect.bisect_right(stamps, t - query.range_ns)
                high = bisect.bisect_right(stamps, t)
                if high <= low:
                    continue
                if query.op in ("count_over_time", "rate"):
                    value = float(high - low)
                else:
                    value = float(sum(size for _, size in kept[low:high]))
                points[t] = value / seconds if query.op in ("rate", "bytes_rate") else value
            if points:
                out[tuple(sorted(labels.items()))] = points
        return out

    # -- labels and series ---------------------------------------------------------------------

    def _matching_streams(
        self, tenants: list[str], matchers: Sequence[Matcher], start: int, end: int
    ) -> list[dict[str, str]]:
        log = LogQuery(tuple(matchers))
        return [
            labels
            for labels, stream in self._selected(tenants, log)
            if stream.window(start, end + 1, closed_left=True)
        ]

    def _labels(self, params: dict[str, str], tenants: list[str], name: str | None) -> Obj:
        start, end = self._bounds(params)
        matchers: tuple[Matcher, ...] = ()
        if params.get("query", ""):
            try:
                matchers = parse_matchers(params["query"], validate=True)
            except LogQLError as exc:
                raise bad_request(exc.text) from None
        streams = self._matching_streams(tenants, matchers, start, end)
        if name is None:
            values = sorted({k for labels in streams for k in labels if k != "__tenant_id__"})
        else:
            values = sorted({labels[name] for labels in streams if labels.get(name)})
        body: Obj = {"status": "success"}
        if values:  # LabelResponse's data is omitempty
            body["data"] = values
        return body

    def _series(
        self, params: dict[str, str], pairs: list[tuple[str, str]], tenants: list[str]
    ) -> Obj:
        start, end = self._bounds(params)
        groups = [v for k, v in pairs if k in ("match[]", "match")]
        selected: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        for text in groups or ["{}"]:
            try:
                matchers = parse_matchers(text, validate=False)
            except LogQLError as exc:
                raise bad_request(exc.text) from None
            for labels in self._matching_streams(tenants, matchers, start, end):
                selected.setdefault(tuple(sorted(labels.items())), labels)
        return {"status": "success", "data": [selected[k] for k in sorted(selected)]}


def _push_entry(value: Any) -> tuple[int, str]:
    if not isinstance(value, list) or len(value) not in (2, 3):
        raise bad_request(
            "loghttp.PushRequest: each value must be [<ns timestamp string>, <line>"
            f"(, <structured metadata>)], not {json.dumps(value)[:100]}"
        )
    stamp, line = value[0], value[1]
    if not isinstance(stamp, str):
        raise bad_request(
            f"loghttp.PushRequest: the timestamp must be a string of Unix nanoseconds, not {stamp!r}"
        )
    if not isinstance(line, str):
        raise bad_request(f"loghttp.PushRequest: the line must be a string, not {line!r}")
    if len(value) == 3 and not (
        isinstance(value[2], dict) and all(isinstance(v, str) for v in value[2].values())
    ):
        raise bad_request("loghttp.PushRequest: structured metadata must be an object of strings")
    if not _INT.match(stamp):
        raise bad_request(f"strconv.ParseInt: parsing {go_quote(stamp)}: invalid syntax")
    return int(stamp), line


def _aggregate(op: str, values: list[float]) -> float:
    if op == "sum":
        return math.fsum(values)
    if op == "count":
        return float(len(values))
    if op == "min":
        return min(values)
    if op == "max":
        return max(values)
    return math.fsum(values) / len(values)


def _sorted_series(
    series: dict[tuple[tuple[str, str], ...], dict[int, float]],
) -> list[tuple[dict[str, str], dict[int, float]]]:
    return [(dict(key), series[key]) for key in sorted(series)]


@dataclass
class _Stats:
    lines: int = 0
    bytes: int = 0
    returned: int = 0

    def scanned(self, line: str) -> None:
        self.lines += 1
        self.bytes += len(line.encode())


def _success(kind: str, result: list[Obj], stats: _Stats, started: float) -> Obj:
    elapsed = max(time.perf_counter() - started, 1e-6)
    summary = {
        "bytesProcessedPerSecond": int(stats.bytes / elapsed),
        "linesProcessedPerSecond": int(stats.lines / elapsed),
        "totalBytesProcessed": stats.bytes,
        "totalLinesProcessed": stats.lines,
        "execTime": elapsed,
        "queueTime": 0,
        "subqueries": 0,
        "totalEntriesReturned": stats.returned if kind == "streams" else len(result),
        "splits": 0,
        "shards": 0,
        "totalPostFilterLines": stats.returned,
        "totalStructuredMetadataBytesProcessed": 0,
    }
    return {
        "status": "success",
        "data": {"resultType": kind, "result": result, "stats": {"summary": summary}},
    }


# --- HTTP handler ---------------------------------------------------------------------------------


def _make_handler(double: LokiDouble) -> type[TrackedHandler]:
    class RequestHandler(TrackedHandler):
        def _serve(self) -> None:
            headers, raw = self.read_request()
            reply = double._handle(self.command, self.path, headers, raw)
            payload, content_type = reply.payload()
            sent = {"Content-Type": content_type} if content_type else {}
            self.send_reply(reply.status, payload, {**sent, **reply.headers})

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    return RequestHandler
