"""A client of Prometheus's HTTP API that answers in summaries sized for people and planners.

Every method returns a MethodOutput whose text starts with a one-line header naming the query
and its window, and whose data says what was cut (`cut`, empty when nothing was). Errors are
ExecutorErrors classified as the executors' are (see common.py): unreachable or busy servers
are retryable, PromQL errors permanent (quoting Prometheus's own message), 401/403 denied.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from infrastructure.configuration.models import PrometheusSource
from infrastructure.executors.base import ErrorKind, ExecutorError, MethodOutput
from infrastructure.observability import series
from infrastructure.observability.common import (
    Window,
    bounded_request,
    http_client,
    json_body,
    parse_time,
    status_error,
    window,
)

DEFAULT_SINCE_SECONDS = 3600.0
# The point budget of a matrix an instant query returns (`up[1h]`), which has no step.
INSTANT_MATRIX_POINTS = 300


def _at(moment: datetime) -> str:
    """A time as Prometheus takes it: Unix seconds (milliseconds are its resolution)."""
    return f"{moment.timestamp():.3f}"


def _seconds(value: float) -> str:
    """Seconds as Prometheus parses them, to its millisecond resolution (not `:g`'s 6 digits)."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _iso(moment: datetime) -> str:
    return series.iso(round(moment.timestamp(), 3))


def _span(win: Window) -> str:
    return f"from {_iso(win.start)} to {_iso(win.end)} ({series.format_duration(win.seconds)})"


class PrometheusClient:
    """Queries one configured Prometheus source. Close it (or use `with`) when done."""

    def __init__(self, source: PrometheusSource, timeout_seconds: float) -> None:
        self._source = source
        self._timeout = min(source.timeout_seconds, timeout_seconds)
        self._client = http_client(source, timeout_seconds)

    # --- plumbing ------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        form: dict[str, str] | None = None,
    ) -> tuple[Any, list[str]]:
        """The `data` of Prometheus's success envelope and its warnings, or an ExecutorError."""
        response = self._send(method, path, params=params, form=form)
        if not response.is_success:
            raise status_error(self._source, response, _error_text(response))
        body = json_body(self._source, response)
        if body.get("status") != "success" or "data" not in body:
            message = str(body.get("error") or f"an answer without data: {str(body)[:200]}")
            raise status_error(self._source, response, message)
        # Prometheus 3 adds `infos` (e.g. "metric might not be a counter") beside warnings.
        infos = [f"info: {info}" for info in body.get("infos") or []]
        notes = [*(body.get("warnings") or []), *infos]
        return body["data"], [str(note) for note in notes]

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        form: dict[str, str] | None = None,
    ) -> httpx.Response:
        """The raw answer; a source without url or a server not reached is an ExecutorError."""
        if not self._source.enabled:
            raise ExecutorError(
                ErrorKind.PERMANENT,
                f"Prometheus source {self._source.name!r} has no url",
                "set its url in environments.yml observability_sources",
            )
        return bounded_request(self._client, self._source, method, path, params=params, data=form)

    def _query(self, query: str, moment: datetime) -> tuple[dict[str, Any], list[str]]:
        # POST: a long expression fits in a form body where a URL might be cut by a proxy.
        data, warnings = self._request(
            "POST",
            "/api/v1/query",
            form={"query": query, "time": _at(moment), "timeout": _seconds(self._timeout)},
        )
        return _shaped(self._source, data), warnings

    def _query_range(self, query: str, win: Window, step: float) -> tuple[list[Any], list[str]]:
        data, warnings = self._request(
            "POST",
            "/api/v1/query_range",
            form={
                "query": query,
                "start": _at(win.start),
                "end": _at(win.end),
                "step": _seconds(step),
                "timeout": _seconds(self._timeout),
            },
        )
        shaped = _shaped(self._source, data)
        if shaped["resultType"] != "matrix":
            raise _unexpected(self._source, f"a {shaped['resultType']} for a range query")
        return list(shaped["result"]), warnings

    # --- queries -------------------------------------------------------------------------------

    def instant(self, query: str, time: str | None = None, max_series: int = 20) -> MethodOutput:
        """The query's value at `time` (RFC 3339 or Unix seconds; default now)."""
        moment = parse_time(time, "time") if time else datetime.now(UTC)
        shaped, warnings = self._query(query, moment)
        kind = shaped["resultType"]
        result = shaped["result"]
        if kind == "matrix":  # a range selector such as up[5m]
            text, summary = series.summarise_matrix(
                result, max_series=max_series, max_points=INSTANT_MATRIX_POINTS
            )
        else:
            if kind in ("scalar", "string"):  # one value without labels
                result = [{"metric": {}, "value": result}]
            text, summary = series.summarise_vector(result, max_series=max_series)
        cut = series.fill_query(summary["cut"], query)
        header = f"instant query {query} at {_iso(moment)}: {_count(summary)}"
        return MethodOutput(
            output=_join(header, _fill(text, query), warnings),
            data={
                "query": query,
                "time": _iso(moment),
                "result_type": kind,
                **summary,
                "cut": cut,
                "warnings": warnings,
            },
        )

    def range(
        self,
        query: str,
        *,
        start: str | None,
        end: str | None,
        since: float | None,
        step: float | None,
        max_points: int = 300,
        max_series: int = 20,
    ) -> MethodOutput:
        """The query over a window (default the last hour), at most max_points per series."""
        win = window(start, end, since, DEFAULT_SINCE_SECONDS)
        step_seconds, step_note = series.choose_step(win.seconds, max_points, step)
        result, warnings = self._query_range(query, win, step_seconds)
        text, summary = series.summarise_matrix(
            result, max_series=max_series, max_points=max_points
        )
        cut = ([step_note] if step_note else []) + series.fill_query(summary["cut"], query)
        header = (
            f"range query {query} {_span(win)}, step {series.format_duration(step_seconds)}:"
            f" {_count(summary)}"
        )
        body = _fill(text, query) + (f"\ncut: {step_note}" if step_note else "")
        return MethodOutput(
            output=_join(header, body, warnings),
            data={
                "query": query,
                "start": _iso(win.start),
                "end": _iso(win.end),
                "step_seconds": step_seconds,
                **summary,
                "cut": cut,
                "warnings": warnings,
            },
        )

    def label_values(
        self,
        label: str,
        *,
        match: str | None = None,
        since: float | None = None,
        limit: int = 200,
    ) -> MethodOutput:
        """The values of a label (`__name__`: metric names) over the window, at most `limit`."""
        win = window(None, None, since, DEFAULT_SINCE_SECONDS)
        limit = max(1, limit)
        params: dict[str, Any] = {"start": _at(win.start), "end": _at(win.end)}
        if match:
            params["match[]"] = match
        # Quoted, so a name with a slash cannot reach another endpoint; Prometheus judges it.
        data, warnings = self._request(
            "GET", f"/api/v1/label/{quote(label, safe='')}/values", params=params
        )
        if not isinstance(data, list):
            raise _unexpected(self._source, "label values that are not a list")
        values = [str(value) for value in data]
        cut: list[str] = []
        if len(values) > limit:
            # Prometheus 2.42 ignores `limit`, so the list is cut here.
            cut.append(
                f"{len(values)} values; showing the first {limit}, {len(values) - limit} left"
                " out; narrow with match (a series selector) or a shorter window"
            )
        shown = values[:limit]
        matching = f" matching {match}" if match else ""
        header = f"values of label {label}{matching} {_span(win)}: {len(values)} values"
        body = "\n".join([", ".join(shown) or "no values", *(f"cut: {note}" for note in cut)])
        return MethodOutput(
            output=_join(header, body, warnings),
            data={
                "label": label,
                "match": match,
                "start": _iso(win.start),
                "end": _iso(win.end),
                "values": shown,
                "total": len(values),
                "cut": cut,
                "warnings": warnings,
            },
        )

    # --- alerts --------------------------------------------------------------------------------

    def rule_expression(
        self, alertname: str, labels: dict[str, str] | None = None
    ) -> dict[str, Any] | None:
        """The alerting rule named `alertname` from the rules API: {"name", "query", "duration",
        "labels", "annotations", "group"}; None when there is none. When several rules share
        the name, the one whose labels are all among `labels` (the alert's), the most specific
        first; None if none fits, since a rule attaches its labels to every alert it fires."""
        data, _warnings = self._request("GET", "/api/v1/rules", params={"type": "alert"})
        candidates: list[dict[str, Any]] = []
        groups = data.get("groups") if isinstance(data, dict) else None
        for group in groups or []:
            for rule in group.get("rules", []):
                if rule.get("type", "alerting") == "alerting" and rule.get("name") == alertname:
                    candidates.append(
                        {
                            "name": rule["name"],
                            "query": rule.get("query", ""),
                            "duration": rule.get("duration", 0),
                            "labels": dict(rule.get("labels") or {}),
                            "annotations": dict(rule.get("annotations") or {}),
                            "group": group.get("name", ""),
                        }
                    )
        if labels is None or len(candidates) <= 1:
            return candidates[0] if candidates else None
        fitting = [c for c in candidates if c["labels"].items() <= labels.items()]
        return max(fitting, key=lambda c: len(c["labels"])) if fitting else None

    def alert_expression(
        self,
        *,
        expression: str | None,
        alertname: str | None,
        labels: dict[str, str] | None,
        since: float = 3600,
        max_points: int = 300,
        max_series: int = 20,
    ) -> MethodOutput:
        """When the alert's condition held over the last `since` seconds, and by how much.

        The expression is `expression` (from the alert's generatorURL), else the rule's from the
        rules API. A top-level `lhs <op> <number>` is split so that the left side's values (not
        just the breaching series) show how far over the threshold it went."""
        rule: dict[str, Any] | None = None
        if expression and expression.strip():
            source, expr = "generator_url", expression.strip()
        else:
            rule = self.rule_expression(alertname, labels) if alertname else None
            if rule is None or not rule["query"]:
                raise ExecutorError(
                    ErrorKind.PERMANENT,
                    f"neither the alert's generatorURL nor the rules API named an expression"
                    f" for alert {alertname!r}",
                    "give the expression, or check that the alert comes from this Prometheus",
                )
            source, expr = "rules_api", str(rule["query"])
        comparison = series.split_comparison(expr)
        evaluated = comparison.lhs if comparison else expr
        win = window(None, None, since, DEFAULT_SINCE_SECONDS)
        step, _note = series.choose_step(win.seconds, max_points, None)
        result, warnings = self._query_range(evaluated, win, step)
        start = win.start.timestamp()
        last_step_at = start + math.floor(win.seconds / step + 1e-9) * step
        text, breach = series.summarise_breach(
            result,
            comparison=comparison,
            step=step,
            last_step_at=last_step_at,
            window_start=start,
            max_series=max_series,
            max_points=max_points,
        )
        breach["cut"] = series.fill_query(breach["cut"], evaluated)
        data: dict[str, Any] = {
            "expression": expr,
            "source": source,
            "query": evaluated,
            "start": _iso(win.start),
            "end": _iso(win.end),
            "step_seconds": step,
            **breach,
            "warnings": warnings,
        }
        if rule is not None:
            data["rule"] = rule
        return MethodOutput(
            output=_join(f"alert expression {expr}: {_fill(text, evaluated)}", "", warnings),
            data=data,
        )

    # --- resources -----------------------------------------------------------------------------

    def resource_trends(
        self,
        queries: dict[str, tuple[str, str]],
        *,
        since: float,
        horizon_seconds: float,
        max_points: int = 300,
    ) -> MethodOutput:
        """For each resource (name -> (usage PromQL, capacity PromQL or "")): its usage over
        `since`, a least-squares line through it (as predict_linear fits) and when that line
        reaches the capacity. A failing resource is reported in its entry, not raised, unless
        every resource fails."""
        if not queries:
            raise ExecutorError(ErrorKind.PERMANENT, "no resource queries given")
        now = datetime.now(UTC)
        win = window(None, None, since, DEFAULT_SINCE_SECONDS, now=now)
        data: dict[str, Any] = {
            "since_seconds": win.seconds,
            "horizon_seconds": horizon_seconds,
            "start": _iso(win.start),
            "end": _iso(win.end),
        }
        lines = [
            f"resource trends {_span(win)}, predicted {series.format_duration(horizon_seconds)}"
            " ahead:"
        ]
        errors: list[ExecutorError] = []
        cut: list[str] = []
        warnings: list[str] = []
        for name, (usage, capacity) in queries.items():
            try:
                entry, entry_warnings = self._trend(
                    usage, capacity, win, horizon_seconds, max_points
                )
            except _NoData as exc:
                # An answer, not a failure: nothing matches (no such series yet, or not here).
                data[name] = {"error": exc.message, "kind": "no_data"}
                lines.append(f"{name}: no data: {exc.message}")
                continue
            except ExecutorError as exc:
                errors.append(exc)
                data[name] = {"error": exc.message, "kind": exc.kind.value}
                lines.append(f"{name}: error: {exc.message}")
                continue
            data[name] = entry
            lines.append(f"{name}: {_trend_line(entry, horizon_seconds)}")
            cut.extend(f"{name}: {note}" for note in entry["cut"])
            warnings.extend(f"{name}: {warning}" for warning in entry_warnings)
        if errors and len(errors) == len(queries):
            first = errors[0]
            # Which resources failed, so a condition on another resource is not misled.
            raise ExecutorError(first.kind, first.message, first.hint, data=data)
        data["cut"] = cut
        data["warnings"] = warnings
        lines.extend(f"cut: {note}" for note in cut)
        return MethodOutput(output=_join("\n".join(lines), "", warnings), data=data)

    def _trend(
        self, usage: str, capacity: str, win: Window, horizon: float, max_points: int
    ) -> tuple[dict[str, Any], list[str]]:
        step, _note = series.choose_step(win.seconds, max_points, None)
        result, warnings = self._query_range(usage, win, step)
        parsed = [
            (item.get("metric", {}), series.parse_points(item.get("values", []))[0])
            for item in result
        ]
        parsed = [(metric, points) for metric, points in parsed if points]
        if not parsed:
            raise _NoData(
                ErrorKind.PERMANENT,
                f"usage query {usage} returned no series {_span(win)}",
                "check the query and the service's metric labels",
            )
        cut: list[str] = []
        # The series with the largest last value is the one closest to running out.
        metric, points = max(parsed, key=lambda pair: pair[1][-1][1])
        if len(parsed) > 1:
            cut.append(
                f"usage has {len(parsed)} series; the one with the largest last value is used"
            )
        stats = series.series_stats(points)
        fit = series.linear_fit(points)
        now = win.end.timestamp()
        predicted = fit[0] * (now + horizon) + fit[1] if fit else None
        limit, limit_labels, limit_warnings = self._capacity(capacity, win.end, cut)
        seconds_to_capacity: float | None = None
        if limit is not None and fit is not None and stats["trend"] == "rising" and fit[0] > 0:
            if stats["last"] >= limit:
                seconds_to_capacity = 0.0
            else:
                seconds_to_capacity = max(0.0, (limit - fit[1]) / fit[0] - now)
        entry = {
            "usage_query": usage,
            "capacity_query": capacity,
            "labels": dict(metric),
            "series_total": len(result),
            "points": len(points),
            "step_seconds": step,
            "first": stats["first"],
            "last": stats["last"],
            "min": stats["min"],
            "max": stats["max"],
            "trend": stats["trend"],
            "slope_per_second": stats["slope_per_second"],
            "predicted": predicted,
            "predicted_at": series.iso(now + horizon),
            "capacity": limit,
            "capacity_labels": limit_labels,
            "ratio": stats["last"] / limit if limit else None,
            # How the usage got to its peak: a leak climbs for a long time, a spike jumps.
            "peak_ratio": stats["max"] / limit if limit else None,
            **_rise(points),
            "seconds_to_capacity": seconds_to_capacity,
            "reaches_capacity_within_horizon": (
                seconds_to_capacity is not None and seconds_to_capacity <= horizon
            ),
            "cut": cut,
        }
        return entry, [*warnings, *limit_warnings]

    def _capacity(
        self, capacity: str, moment: datetime, cut: list[str]
    ) -> tuple[float | None, dict[str, str] | None, list[str]]:
        """The largest finite value of the capacity query now (None without one)."""
        if not capacity:
            return None, None, []
        shaped, warnings = self._query(capacity, moment)
        result = shaped["result"]
        if shaped["resultType"] in ("scalar", "string"):
            result = [{"metric": {}, "value": result}]
        elif shaped["resultType"] == "matrix":
            result = [
                {"metric": item.get("metric", {}), "value": item["values"][-1]}
                for item in result
                if item.get("values")
            ]
        values: list[tuple[float, dict[str, str]]] = []
        for item in result:
            try:
                value = float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if math.isfinite(value):
                values.append((value, dict(item.get("metric", {}))))
        if not values:
            cut.append(f"capacity query {capacity} returned no finite value; no prediction")
            return None, None, warnings
        if len(values) > 1:
            cut.append(f"capacity has {len(values)} series; the largest is used")
        value, labels = max(values, key=lambda pair: pair[0])
        return value, labels, warnings

    # --- connection ----------------------------------------------------------------------------

    def check_connection(self) -> MethodOutput:
        """Whether the server answers: its build information, else its readiness."""
        response = self._send("GET", "/api/v1/status/buildinfo")
        if response.status_code == httpx.codes.NOT_FOUND:
            # Some Prometheus-compatible servers lack buildinfo; /-/ready answers plain text.
            response = self._send("GET", "/-/ready")
            if not response.is_success:
                raise status_error(self._source, response, response.text)
            version = "unknown"
        else:
            if not response.is_success:
                raise status_error(self._source, response, _error_text(response))
            data = json_body(self._source, response).get("data")
            version = str(data.get("version", "unknown")) if isinstance(data, dict) else "unknown"
        where = f"Prometheus {self._source.name!r} at {self._source.url}"
        return MethodOutput(
            output=f"{where} answers (version {version})",
            data={"name": self._source.name, "url": self._source.url, "version": version},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# --- helpers -------------------------------------------------------------------------------


class _NoData(ExecutorError):
    """A resource's usage query matched no series."""


def _rise(points: list[tuple[float, float]]) -> dict[str, Any]:
    """When the usage peaked, and how long it took to climb there from half the peak: the
    time since the last point at or below half the peak value (from the window's start when
    it never was that low)."""
    peak_at, peak = max(points, key=lambda point: (point[1], point[0]))
    start = points[0][0]
    for at, value in points:
        if at > peak_at:
            break
        if value <= peak / 2:
            start = at
    return {"peak_at": series.iso(peak_at), "rise_seconds": max(0.0, peak_at - start)}


def _error_text(response: httpx.Response) -> str:
    """Prometheus's `error` from its envelope, else the body's text (a proxy's page)."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    return response.text


def _shaped(source: PrometheusSource, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or "resultType" not in data or "result" not in data:
        raise _unexpected(source, "a query answer without resultType and result")
    if data["resultType"] in ("matrix", "vector") and not isinstance(data["result"], list):
        raise _unexpected(source, f"a {data['resultType']} that is not a list")
    return data


def _unexpected(source: PrometheusSource, what: str) -> ExecutorError:
    return ExecutorError(
        ErrorKind.PERMANENT,
        f"Prometheus {source.name!r} answered {what}",
        "check that the url points at Prometheus's API",
    )


def _count(summary: dict[str, Any]) -> str:
    total, shown = summary["series_total"], summary["series_shown"]
    return f"{total} series" if total == shown else f"{total} series, {shown} shown"


def _fill(text: str, query: str) -> str:
    return text.replace(series.QUERY_PLACEHOLDER, query)


def _join(header: str, body: str, warnings: list[str]) -> str:
    parts = [header, *([body] if body else []), *(f"warning: {w}" for w in warnings)]
    return "\n".join(parts)


def _trend_line(entry: dict[str, Any], horizon: float) -> str:
    """`last 830M, rising +300M/h; capacity 1.07G (77% used); reaches capacity in 48m ...`."""
    slope = entry["slope_per_second"]
    per_hour = f" {series.signed(slope * 3600)}/h" if slope is not None else ""
    line = f"last {series.compact(entry['last'])}, {entry['trend']}{per_hour}"
    if entry["capacity"] is not None:
        ratio = entry["ratio"]
        used = f" ({ratio * 100:.0f}% used)" if ratio is not None else ""
        line += f"; capacity {series.compact(entry['capacity'])}{used}"
    ahead = series.format_duration(horizon)
    if entry["predicted"] is not None:
        line += f"; predicted {series.compact(entry['predicted'])} in {ahead}"
    seconds = entry["seconds_to_capacity"]
    if seconds is None:
        if entry["capacity"] is not None:
            line += f"; not reaching capacity within {ahead}"
    elif entry["reaches_capacity_within_horizon"]:
        line += f"; reaches capacity in {series.format_duration(seconds)} (within {ahead})"
    else:
        line += f"; reaches capacity in {series.format_duration(seconds)} (beyond {ahead})"
    return line
