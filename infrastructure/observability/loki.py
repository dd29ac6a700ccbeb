"""Reading logs from Grafana Loki: log lines, line counts per step, labels and their values.

Every call sends an explicit window (start and end in nanoseconds; default the last hour, as
Loki's own default), and log queries also send `direction` and `limit` (capped at Loki's
default max_entries_limit_per_query, 5000), so nothing depends on server defaults. Results
are shaped for two readers: `output` is bounded text for people and LLM planners (error-level
lines first, repeated lines once with their count), `data` is structured for diagnosis rules
(`lines`, oldest first and newest last, as agent/planning/conditions.py `log_lines` reads
them). Whatever is left out is said in `cut`.

Loki answers errors as plain text (`parse error at line 1, col 11: ...`, `no org id`, the
504 timeout text): that text is quoted in the error, classified by status (400 permanent,
401/403 denied, 429/5xx retryable); an unreachable server is retryable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote as url_quote

import httpx

from infrastructure.configuration.models import LokiSource
from infrastructure.executors.base import ErrorKind, ExecutorError, MethodOutput
from infrastructure.observability import series
from infrastructure.observability.common import (
    Window,
    bounded_request,
    http_client,
    json_body,
    request_error,
    status_error,
    window,
)
from infrastructure.observability.logql import count_query

# Loki's default max_entries_limit_per_query: a larger limit is refused with 400.
MAX_LIMIT = 5000
DEFAULT_SINCE_SECONDS = 3600.0
# A metric query passed to `query` is summarised with these budgets.
METRIC_MAX_SERIES = 20
METRIC_MAX_POINTS = 300
# The query as the text header shows it (the whole query is in data).
_HEADER_QUERY_CHARS = 300
# The window check_connection lists labels over: enough to prove auth and tenant work.
_CHECK_SINCE_SECONDS = 300.0
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIMES = "\u00d7"  # MULTIPLICATION SIGN: a repeated line is shown once as `[\u00d712] line`


def to_ns(moment: datetime) -> int:
    """Unix nanoseconds of a datetime (exact: no float rounding)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def iso_ns(ns: int) -> str:
    """RFC 3339 UTC with the nanoseconds Loki keeps (trailing zeros dropped)."""
    seconds, rest = divmod(ns, 10**9)
    text = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f".{rest:09d}".rstrip("0") if rest else ""
    return f"{text}{fraction}Z"


@dataclass
class _Line:
    """One unique line (trailing whitespace stripped) and where it occurred."""

    line: str
    count: int
    first_ns: int
    last_ns: int
    labels: dict[str, str]
    level: str | None

    def entry(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "count": self.count,
            "first_at": iso_ns(self.first_ns),
            "last_at": iso_ns(self.last_ns),
            "level": self.level,
            "labels": self.labels,
        }

    def text(self) -> str:
        return f"[{_TIMES}{self.count}] {self.line}" if self.count > 1 else self.line


class LokiClient:
    """One configured Loki source. Methods return MethodOutput or raise ExecutorError."""

    def __init__(self, source: LokiSource, timeout_seconds: float) -> None:
        self.source = source
        self._client = http_client(source, timeout_seconds)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> LokiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- log lines ---------------------------------------------------------------------------

    def query(
        self,
        logql: str,
        *,
        start: str | None,
        end: str | None,
        since: float | None,
        direction: str = "backward",
        limit: int = 1000,
        max_bytes: int = 65536,
        level_patterns: Mapping[str, str] | None = None,
    ) -> MethodOutput:
        """The lines of a log query over the window (default the last hour).

        `direction` backward reads the newest `limit` entries, forward the oldest; either way
        data["lines"] and data["entries"] are oldest first, newest last. Identical lines
        (after stripping trailing whitespace) are kept once with their count. `level_patterns`
        (name -> regex, most severe first) classify each line; the text lists those lines
        first, most severe level first, then the rest oldest first, within `max_bytes`."""
        query_text = logql.strip()
        if not query_text:
            raise ExecutorError(ErrorKind.PERMANENT, "the LogQL query is empty")
        way = direction.strip().lower()
        if way not in ("backward", "forward"):
            raise ExecutorError(
                ErrorKind.PERMANENT,
                f"direction {direction!r} is neither 'backward' nor 'forward'",
                "backward reads the newest lines of the window, forward the oldest",
            )
        if limit < 1:
            raise ExecutorError(ErrorKind.PERMANENT, f"limit must be at least 1, not {limit}")
        levels = _compile_levels(level_patterns)
        cut: list[str] = []
        if limit > MAX_LIMIT:
            cut.append(
                f"limit {limit} lowered to {MAX_LIMIT}, Loki's default"
                " max_entries_limit_per_query (a larger one is refused)"
            )
            limit = MAX_LIMIT
        span = window(start, end, since, DEFAULT_SINCE_SECONDS)
        start_ns, end_ns = to_ns(span.start), to_ns(span.end)
        body = self._get(
            "/loki/api/v1/query_range",
            {
                "query": query_text,
                "start": str(start_ns),
                "end": str(end_ns),
                "direction": way,
                "limit": str(limit),
            },
        )
        data = _as_dict(body.get("data"))
        kind = data.get("resultType")
        result = data.get("result") or []
        if not isinstance(result, list):
            raise self._shape_error(f"a {kind} result that is not a list")
        if kind == "streams":
            return self._log_output(
                query_text, span, start_ns, end_ns, way, limit, max_bytes, levels, result, cut
            )
        if kind in ("matrix", "vector"):
            return self._metric_output(query_text, span, kind, result, cut)
        raise self._shape_error(f"resultType {kind!r}")

    def _log_output(
        self,
        query_text: str,
        span: Window,
        start_ns: int,
        end_ns: int,
        direction: str,
        limit: int,
        max_bytes: int,
        levels: list[tuple[str, re.Pattern[str]]],
        result: list[Any],
        cut: list[str],
    ) -> MethodOutput:
        received: list[tuple[int, int, str, dict[str, str]]] = []  # ns, order, line, labels
        streams = 0
        for item in result:
            if not isinstance(item, dict):
                continue
            labels = {str(k): str(v) for k, v in _as_dict(item.get("stream")).items()}
            values = _as_list(item.get("values"))
            streams += 1
            for value in values:
                parsed = _entry(value)
                if parsed is not None:
                    received.append((parsed[0], len(received), parsed[1], dict(labels)))
        received.sort()
        unique: dict[str, _Line] = {}
        for ns, _, line, labels in received:
            key = line.rstrip()
            found = unique.get(key)
            if found is None:
                level = next((name for name, rx in levels if rx.search(key)), None)
                unique[key] = _Line(key, 1, ns, ns, labels, level)
            else:
                found.count += 1
                found.last_ns = max(found.last_ns, ns)
        # Ordered by last occurrence: the last line is the newest line of the window.
        ordered = sorted(unique.values(), key=lambda u: (u.last_ns, u.first_ns))
        limit_reached = len(received) >= limit
        if limit_reached:
            which = "newest" if direction == "backward" else "oldest"
            advice = "narrow the window or the query" + (
                f", or raise limit (at most {MAX_LIMIT})" if limit < MAX_LIMIT else ""
            )
            cut.append(
                f"the window holds more lines than limit {limit}: only the {which} {limit}"
                f" were read ({direction}); {advice}"
            )
        shown_query = _shorten(query_text, _HEADER_QUERY_CHARS)
        header = (
            f"Loki {self.source.name!r}: {shown_query} from {_iso(span.start)} to"
            f" {_iso(span.end)} ({direction}, limit {limit}): {_plural(len(received), 'entry')},"
            f" {_plural(len(ordered), 'unique line')} in {_plural(streams, 'stream')}"
        )
        # One selection for the data and the text: the most severe and newest lines within
        # max_bytes; the text shows those (a subset when its own formatting needs more room).
        total = len(ordered)
        kept = _within(ordered, [name for name, _ in levels], max_bytes)
        if len(kept) < total:
            cut.append(
                f"{total - len(kept)} of {total} unique lines left out to stay within max_bytes"
                f" {max_bytes} (the most severe and the newest kept)"
            )
        ordered = kept
        text, note = _bounded(header, _body(ordered, levels), cut, max_bytes, len(ordered))
        if note is not None:
            cut.append(note)
        data = {
            "query": query_text,
            "start": iso_ns(start_ns),
            "end": iso_ns(end_ns),
            "direction": direction,
            "entries_received": len(received),
            "unique_lines": len(ordered),
            "streams": streams,
            "limit_reached": limit_reached,
            "lines": [u.line for u in ordered],
            "entries": [u.entry() for u in ordered],
            "cut": cut,
        }
        return MethodOutput(output=text, data=data)

    def _metric_output(
        self, query_text: str, span: Window, kind: str, result: list[Any], cut: list[str]
    ) -> MethodOutput:
        """A metric query given to `query`: summarised like `count`'s series."""
        items = [item for item in result if isinstance(item, dict)]
        if kind == "matrix":
            text, summary = series.summarise_matrix(
                items, max_series=METRIC_MAX_SERIES, max_points=METRIC_MAX_POINTS
            )
        else:
            text, summary = series.summarise_vector(items, max_series=METRIC_MAX_SERIES)
        text = text.replace(series.QUERY_PLACEHOLDER, query_text)
        text += "".join(f"\ncut: {note}" for note in cut)  # the summary's own are in text
        notes = [*cut, *series.fill_query(summary.get("cut", []), query_text)]
        header = (
            f"Loki {self.source.name!r}: {_shorten(query_text, _HEADER_QUERY_CHARS)} is a metric"
            f" query ({kind} result) from {_iso(span.start)} to {_iso(span.end)}"
        )
        data = {
            **summary,
            "query": query_text,
            "start": _iso(span.start),
            "end": _iso(span.end),
            "result_type": kind,
            "cut": notes,
        }
        return MethodOutput(output=f"{header}\n{text}", data=data)

    # -- line counts -------------------------------------------------------------------------

    def count(
        self,
        logql: str,
        *,
        start: str | None,
        end: str | None,
        since: float | None,
        step: float | None,
        max_points: int = 300,
        max_series: int = 20,
    ) -> MethodOutput:
        """Lines per step of a log query: `sum(count_over_time(<logql> [<step>s]))`.

        Each point counts the lines of the step that ends at it, and the last point is the
        window's end, so the points tile the window (the first step may start up to one step
        before it). Steps without lines are 0, not missing."""
        query_text = logql.strip()
        if not query_text:
            raise ExecutorError(ErrorKind.PERMANENT, "the LogQL query is empty")
        span = window(start, end, since, DEFAULT_SINCE_SECONDS)
        chosen, note = series.choose_step(span.seconds, max_points, step)
        step_seconds = max(1, math.ceil(chosen - 1e-9))  # a LogQL range is whole seconds here
        points = max(1, math.ceil(span.seconds / step_seconds - 1e-9))
        end_ns = to_ns(span.end)
        step_ns = step_seconds * 10**9
        first_ns = end_ns - (points - 1) * step_ns
        metric_query = count_query(query_text, step_seconds)
        body = self._get(
            "/loki/api/v1/query_range",
            {
                "query": metric_query,
                "start": str(first_ns),
                "end": str(end_ns),
                "step": str(step_seconds),
            },
        )
        data = _as_dict(body.get("data"))
        if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
            raise self._shape_error(f"resultType {data.get('resultType')!r} for a metric query")
        stamps = [first_ns + k * step_ns for k in range(points)]
        filled = _zero_filled([r for r in _as_list(data["result"]) if isinstance(r, dict)], stamps)
        text, summary = series.summarise_matrix(
            filled, max_series=max_series, max_points=max_points
        )
        cut = ([note] if note else []) + series.fill_query(summary.get("cut", []), metric_query)
        total: float | int = sum(
            _number(value[1])
            for item in filled
            for value in item["values"]
            if isinstance(value, list) and len(value) == 2
        )
        if float(total).is_integer():
            total = int(total)
        total_text = _plural(total, "line") if isinstance(total, int) else f"{total:g} lines"
        header = (
            f"Loki {self.source.name!r}: lines per {series.format_duration(step_seconds)} of"
            f" {_shorten(query_text, _HEADER_QUERY_CHARS)} from {iso_ns(first_ns - step_ns)}"
            f" to {iso_ns(end_ns)}: {total_text} in {_plural(points, 'step')}"
        )
        text = text.replace(series.QUERY_PLACEHOLDER, metric_query)
        notes_text = f"\ncut: {note}" if note else ""  # the summary's own are in text
        data_out = {
            **summary,
            "query": metric_query,
            "log_query": query_text,
            "start": iso_ns(first_ns - step_ns),
            "end": iso_ns(end_ns),
            "step_seconds": step_seconds,
            "points": points,
            "total": total,
            "cut": cut,
        }
        return MethodOutput(output=f"{header}\n{text}{notes_text}", data=data_out)

    # -- labels ------------------------------------------------------------------------------

    def labels(
        self, *, selector: str | None, since: float | None, limit: int = 200
    ) -> MethodOutput:
        """Label names of the streams with entries in the window (of those matching
        `selector`, a stream selector such as {namespace="prod"})."""
        values, span = self._label_list("/loki/api/v1/labels", selector, since)
        return self._label_output(None, values, selector, span, limit)

    def label_values(
        self, label: str, *, selector: str | None, since: float | None, limit: int = 200
    ) -> MethodOutput:
        """Values of `label` among the streams with entries in the window."""
        if not _LABEL_NAME.match(label):
            raise ExecutorError(
                ErrorKind.PERMANENT,
                f"{label!r} is not a label name",
                "label names are letters, digits and _, not starting with a digit",
            )
        path = f"/loki/api/v1/label/{url_quote(label, safe='')}/values"
        values, span = self._label_list(path, selector, since)
        return self._label_output(label, values, selector, span, limit)

    def _label_list(
        self, path: str, selector: str | None, since: float | None
    ) -> tuple[list[str], Window]:
        span = window(None, None, since, DEFAULT_SINCE_SECONDS)
        params = {"start": str(to_ns(span.start)), "end": str(to_ns(span.end))}
        if selector and selector.strip():
            params["query"] = selector.strip()
        body = self._get(path, params)
        values = body.get("data") or []  # Loki leaves `data` out when there is none
        if not isinstance(values, list):
            raise self._shape_error("label data that is not a list")
        return sorted({str(v) for v in values}), span

    def _label_output(
        self,
        label: str | None,
        values: list[str],
        selector: str | None,
        span: Window,
        limit: int,
    ) -> MethodOutput:
        limit = max(1, limit)
        total = len(values)
        shown = values[:limit]
        cut: list[str] = []
        if total > limit:
            cut.append(
                f"{total} {'values' if label else 'labels'}; showing the first {limit}"
                " (alphabetical); narrow with a selector or a shorter window, or raise limit"
            )
        what = f"values of label {label!r}" if label else "labels"
        scope = f" of streams matching {selector.strip()}" if selector and selector.strip() else ""
        header = (
            f"Loki {self.source.name!r}: {total} {what}{scope} from {_iso(span.start)} to"
            f" {_iso(span.end)}" + (":" if shown else "")
        )
        text = "\n".join([header, *shown, *(f"cut: {note}" for note in cut)])
        data: dict[str, Any] = {"values": shown, "total": total, "cut": cut}
        if label is not None:
            data = {"label": label, **data}
        return MethodOutput(output=text, data=data)

    # -- connection --------------------------------------------------------------------------

    def check_connection(self) -> MethodOutput:
        """GET /ready, then list labels over the last 5 minutes, which proves that the
        credentials and the tenant (X-Scope-OrgID) are accepted too."""
        try:
            response = self._client.get("/ready")
        except httpx.HTTPError as exc:
            raise request_error(self.source, exc) from exc
        if not response.is_success:
            raise status_error(self.source, response, _error_text(response))
        status = " ".join(response.text.split())[:200]
        values, _ = self._label_list("/loki/api/v1/labels", None, _CHECK_SINCE_SECONDS)
        tenant = self.source.tenant or None
        output = (
            f"Loki {self.source.name!r} at {self.source.url} is ready ({status or 'ok'});"
            f" {len(values)} labels in the last 5 minutes"
            + (f" for tenant {tenant!r}" if tenant else "")
        )
        data = {"ready": True, "status": status, "labels": len(values), "tenant": tenant}
        return MethodOutput(output=output, data=data)

    # -- HTTP --------------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        response = bounded_request(self._client, self.source, "GET", path, params=params)
        if not response.is_success:
            raise status_error(self.source, response, _error_text(response))
        body = json_body(self.source, response)
        if body.get("status") not in (None, "success"):
            raise ExecutorError(
                ErrorKind.PERMANENT,
                f"Loki {self.source.name!r} answered status {body.get('status')!r}:"
                f" {str(body.get('error') or body.get('message') or '')[:300]}",
            )
        return body

    def _shape_error(self, what: str) -> ExecutorError:
        return ExecutorError(
            ErrorKind.PERMANENT,
            f"Loki {self.source.name!r} answered {what}, which is not Loki's query API",
            "check that the url points at Loki (e.g. http://loki:3100), not a proxy's page",
        )


# --- helpers -----------------------------------------------------------------------------------


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _compile_levels(patterns: Mapping[str, str] | None) -> list[tuple[str, re.Pattern[str]]]:
    compiled: list[tuple[str, re.Pattern[str]]] = []
    for name, pattern in (patterns or {}).items():
        try:
            compiled.append((name, re.compile(pattern)))
        except re.error as exc:
            raise ExecutorError(
                ErrorKind.PERMANENT,
                f"level pattern {name!r} ({pattern!r}) is not a regular expression: {exc}",
            ) from exc
    return compiled


def _entry(value: Any) -> tuple[int, str] | None:
    """[<ns string>, <line>(, <structured metadata>)] as Loki sends an entry."""
    if not isinstance(value, list) or len(value) < 2 or not isinstance(value[1], str):
        return None
    try:
        return int(str(value[0])), value[1]
    except ValueError:
        return None


def _body(ordered: list[_Line], levels: list[tuple[str, re.Pattern[str]]]) -> list[str | _Line]:
    """Section headings (str) and lines: levelled lines by severity, then the rest."""
    out: list[str | _Line] = []
    for name, _ in levels:
        matched = [u for u in ordered if u.level == name]
        if matched:
            entries = sum(u.count for u in matched)
            out.append(
                f"{name}: {_plural(len(matched), 'unique line')}, {_plural(entries, 'entry')}"
            )
            out.extend(matched)
    rest = [u for u in ordered if u.level is None]
    if rest and out:
        out.append(f"other lines, oldest first: {_plural(len(rest), 'unique line')}")
    out.extend(rest)
    return out


def _bounded(
    header: str, body: list[str | _Line], cut: list[str], max_bytes: int, total: int
) -> tuple[str, str | None]:
    """The text within max_bytes (UTF-8), cut after a whole line, and the cut note saying how
    many unique lines were left out (None when all fit). The header and cut notes are always
    kept; a heading is shown only with at least one of its lines."""
    notes = [f"cut: {note}" for note in cut]
    if not body:
        notes.insert(0, "no lines matched in the window")
    full = "\n".join([header, *(_render(item) for item in body), *notes])
    if len(full.encode()) <= max_bytes:
        return full, None

    def cut_note(left_out: int) -> str:
        return (
            f"text cut to {max_bytes} bytes: {left_out} of the {total} unique lines kept left"
            " out of it (they are in data.entries)"
        )

    used = len("\n".join([header, *notes, f"cut: {cut_note(total)}"]).encode())
    kept: list[str] = []
    heading: str | None = None
    left_out = 0
    for index, item in enumerate(body):
        if isinstance(item, str):
            heading = item
            continue
        rendered = item.text()
        extra = len(rendered.encode()) + 1 + (len(heading.encode()) + 1 if heading else 0)
        if used + extra > max_bytes:
            left_out = sum(1 for rest in body[index:] if not isinstance(rest, str))
            break
        if heading is not None:
            kept.append(heading)
            heading = None
        kept.append(rendered)
        used += extra
    note = cut_note(left_out)
    return _fit("\n".join([header, *kept, *notes, f"cut: {note}"]), max_bytes), note


def _render(item: str | _Line) -> str:
    return item if isinstance(item, str) else item.text()


def _fit(text: str, max_bytes: int) -> str:
    """The last resort when even the header and notes exceed max_bytes: cut at a line end
    (else a character boundary)."""
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    head = raw[: max(0, max_bytes)].decode("utf-8", "ignore")
    newline = head.rfind("\n")
    return head[:newline] if newline > 0 else head


def _zero_filled(result: list[dict[str, Any]], stamps: list[int]) -> list[dict[str, Any]]:
    """The matrix with a 0 at every step Loki left out (no lines there); one all-zero series
    when nothing matched at all."""
    if not result:
        result = [{"metric": {}, "values": []}]
    filled: list[dict[str, Any]] = []
    for item in result:
        by_ms: dict[int, Any] = {}
        for value in item.get("values") or []:
            if isinstance(value, list) and len(value) == 2:
                by_ms[round(float(value[0]) * 1000)] = value[1]
        values = []
        for ns in stamps:
            ms = ns // 10**6
            values.append([_seconds(ns), by_ms.pop(ms, "0")])
        values.extend([ms / 1000, v] for ms, v in by_ms.items())  # off-grid points, kept
        values.sort(key=lambda pair: float(pair[0]))
        filled.append({"metric": dict(item.get("metric") or {}), "values": values})
    return filled


def _seconds(ns: int) -> float:
    return (ns // 10**6) / 1000


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _error_text(response: httpx.Response) -> str:
    """Loki's plain-text error body; a proxy's JSON error by its message."""
    text = response.text
    try:
        body = response.json()
    except ValueError:
        return text.strip()
    if isinstance(body, dict):
        for key in ("error", "message"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return text.strip()


def _shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _plural(count: int, noun: str) -> str:
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun[:-1]}ies" if noun.endswith("y") else f"{count} {noun}s"


def _iso(moment: datetime) -> str:
    return iso_ns(to_ns(moment))


def _within(ordered: list[_Line], levels: list[str], max_bytes: int) -> list[_Line]:
    """The unique lines whose text fits max_bytes (UTF-8): the most severe first, the newest
    first within a level; returned in their time order (the newest line last)."""
    rank = {name: index for index, name in enumerate(levels)}
    by_priority = sorted(
        range(len(ordered)),
        key=lambda i: (rank.get(ordered[i].level or "", len(rank)), -ordered[i].last_ns),
    )
    chosen: set[int] = set()
    used = 0
    for index in by_priority:
        size = len(ordered[index].line.encode()) + 1
        if used + size > max_bytes and chosen:
            continue
        chosen.add(index)
        used += size
    return [line for i, line in enumerate(ordered) if i in chosen]
