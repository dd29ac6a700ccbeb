"""PrometheusClient against Debian's real Prometheus 2.42, and the pure summaries of series.py.

One Prometheus runs for the module (tests/prometheus_data.py): two hours of backfilled history
whose every value is a function of time (so expectations are computed, not copied), alert
rules, a self-scrape for live values, and basic authentication through its real web config.
Answers Prometheus cannot give (a proxy's 401, an HTML page, a 503) come from a small local
HTTP server that also records the headers it received.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from infrastructure.configuration.models import PrometheusSource
from infrastructure.executors.base import ErrorKind, ExecutorError
from infrastructure.observability import series
from infrastructure.observability.prometheus import PrometheusClient
from tests import prometheus_data
from tests.loopback_server import LoopbackServer, TrackedHandler
from tests.prometheus_data import PODS, History, LocalPrometheus
from tests.promstack import free_port

USER, PASSWORD = "uici", "test-password"
ERRORS_IRATE = "irate(uici_test_errors_total[5m])"
RULES: list[dict[str, Any]] = [
    {
        "alert": "UiciTestErrorsHigh",
        "expr": f"{ERRORS_IRATE} > 0.5",
        "for": "0s",
        "labels": {"severity": "page"},
        "annotations": {"summary": "errors are high"},
    },
    {
        "alert": "UiciTestErrorsHigh",
        "expr": f"{ERRORS_IRATE} > 0.9",
        "for": "0s",
        "labels": {"severity": "ticket"},
    },
]
MEMORY = 'uici_test_memory_bytes{service="web"}'
MEMORY_LIMIT = 'uici_test_memory_limit_bytes{service="web"}'
DISK = 'uici_test_disk_bytes{service="web"}'
DISK_CAPACITY = 'uici_test_disk_capacity_bytes{service="web"}'


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _source(url: str, **extra: Any) -> PrometheusSource:
    return PrometheusSource(name="test", url=url, timeout_seconds=10, **extra)


def _error(call: Any, *args: Any, **kwargs: Any) -> ExecutorError:
    with pytest.raises(ExecutorError) as caught:
        call(*args, **kwargs)
    return caught.value


# --- fixtures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    url: str
    history: History
    basic: tuple[str, str] | None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = prometheus_data.available()
    if reason:
        pytest.skip(reason)
    history = History.ending_now()
    basic = (USER, PASSWORD) if prometheus_data.bcrypt_hash("probe") else None
    with LocalPrometheus(tmp_path_factory.mktemp("prometheus"), history, RULES, basic) as prom:
        yield Stack(prom.url, history, basic)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[PrometheusClient]:
    credentials: dict[str, Any] = {}
    if stack.basic:
        credentials = {"username": stack.basic[0], "password": SecretStr(stack.basic[1])}
    prometheus = PrometheusClient(_source(stack.url, **credentials), timeout_seconds=10)
    yield prometheus
    prometheus.close()


class Recorder(LoopbackServer):
    """Answers by path prefix: /deny 401 (plain text, as a proxy would), /html 200 with a web
    page, /warn a success with `warnings` (as Prometheus sends when a remote read fails),
    /slow after 2 s, anything else 503 with Prometheus's timeout envelope. Records every
    request's headers."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, dict[str, str]]] = []

    def handler_class(self) -> type[TrackedHandler]:
        owner = self

        class Handler(TrackedHandler):
            def _answer(self) -> None:
                headers, _body = self.read_request()
                owner.requests.append((self.path, headers))
                if self.path.startswith("/deny"):
                    self.send_reply(401, b"Unauthorized\n", {"Content-Type": "text/plain"})
                elif self.path.startswith("/html"):
                    page = b"<html><body>Sign in</body></html>"
                    self.send_reply(200, page, {"Content-Type": "text/html"})
                elif self.path.startswith(("/warn", "/slow")):
                    if self.path.startswith("/slow"):
                        time.sleep(2)
                    envelope = (
                        b'{"status":"success","data":{"resultType":"vector","result":[]},'
                        b'"warnings":["remote read from store-1 failed"]}'
                    )
                    self.send_reply(200, envelope, {"Content-Type": "application/json"})
                else:
                    envelope = (
                        b'{"status":"error","errorType":"timeout",'
                        b'"error":"query timed out in expression evaluation"}'
                    )
                    self.send_reply(503, envelope, {"Content-Type": "application/json"})

            do_GET = _answer
            do_POST = _answer

        return Handler


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    with Recorder() as server:
        yield server


# --- series.py: step ------------------------------------------------------------------------


def test_choose_step_keeps_a_step_that_fits() -> None:
    assert series.choose_step(3600, 300, 60) == (60, None)


def test_choose_step_widens_a_step_that_gives_too_many_points() -> None:
    step, note = series.choose_step(3600, 300, 5)
    assert 3600 / step + 1 <= 300
    assert 3600 / (step - 1) + 1 > 300  # the smallest whole-second step that fits
    assert note == f"step widened from 5s to {step:g}s to stay within 300 points per series"


@pytest.mark.parametrize(
    ("window", "max_points", "requested"),
    [
        (3600, 300, None),
        (7200, 300, 1),
        (86_400, 60, 15),
        (59, 300, None),
        (86_400 * 30, 100_000, 1),  # the budget allows more than Prometheus's 11 000 intervals
        (10, 2, None),
    ],
)
def test_choose_step_never_exceeds_the_budget(
    window: float, max_points: int, requested: float | None
) -> None:
    step, _note = series.choose_step(window, max_points, requested)
    assert window / step + 1 <= max_points
    assert window / step <= series.MAX_INTERVALS
    assert step >= 1


def test_choose_step_goes_below_a_second_only_for_a_tiny_window() -> None:
    step, note = series.choose_step(10, 300, 0.1)
    assert step == 1
    assert note is not None and "0.1s" in note and "1s" in note
    assert series.choose_step(0.5, 300, None) == (0.5, None)


def test_choose_step_rejects_nonsense() -> None:
    step, note = series.choose_step(600, 300, 0)
    assert 600 / step + 1 <= 300 and note is not None and "not a positive" in note
    with pytest.raises(ValueError):
        series.choose_step(0, 300, None)


# --- series.py: matrix, vector, fit ---------------------------------------------------------


def _matrix(
    metric: dict[str, str], values: list[float], start: float = 1_800_000_000
) -> dict[str, Any]:
    return {
        "metric": metric,
        "values": [[start + 10 * i, repr(v) if v == v else "NaN"] for i, v in enumerate(values)],
    }


def test_non_finite_values_are_counted_and_left_out() -> None:
    item = _matrix({"a": "x"}, [1.0, 5.0, 3.0])
    item["values"][1:1] = [[1_800_000_005, "NaN"], [1_800_000_006, "+Inf"]]
    item["values"].append([1_800_000_100, "-Inf"])
    text, data = series.summarise_matrix(
        [item, {"metric": {"a": "y"}, "values": [[1, "NaN"]]}], max_series=5, max_points=10
    )
    first, empty = data["series"]
    assert first["non_finite"] == 3
    assert (first["points"], first["min"], first["max"], first["last"]) == (3, 1.0, 5.0, 3.0)
    assert first["mean"] == pytest.approx(3.0)
    assert all(math.isfinite(v) for _, v in first["values"])
    assert empty["last"] is None and empty["non_finite"] == 1
    assert any("4 NaN/Inf values in 2 series" in note for note in data["cut"])
    assert "3 NaN/Inf skipped" in text and "no finite values" in text


def test_thinning_keeps_first_last_min_and_max() -> None:
    values = [math.sin(i / 20) for i in range(1000)]
    values[537], values[811] = 50.0, -50.0
    _text, data = series.summarise_matrix([_matrix({}, values)], max_series=1, max_points=40)
    entry = data["series"][0]
    kept = [v for _, v in entry["values"]]
    assert len(kept) <= 40
    assert kept[0] == values[0] and kept[-1] == values[-1]
    assert 50.0 in kept and -50.0 in kept
    assert [t for t, _ in entry["values"]] == sorted(t for t, _ in entry["values"])
    assert entry["points"] == 1000 and (entry["min"], entry["max"]) == (-50.0, 50.0)
    assert any("thinned to at most 40 points" in note for note in data["cut"])


def test_series_cap_ranks_by_last_or_max_and_suggests_topk() -> None:
    result = [
        _matrix({"pod": "steady"}, [5, 5, 5]),
        _matrix({"pod": "spiky"}, [1, 100, 1]),
        _matrix({"pod": "rising"}, [1, 2, 9]),
        _matrix({"pod": "low"}, [0, 0, 0]),
    ]
    _text, by_last = series.summarise_matrix(result, max_series=2, max_points=10)
    assert {s["labels"]["pod"] for s in by_last["series"]} == {"rising", "steady"}
    _text, by_max = series.summarise_matrix(result, max_series=2, max_points=10, rank="max")
    assert {s["labels"]["pod"] for s in by_max["series"]} == {"spiky", "rising"}
    assert (by_max["series_total"], by_max["series_shown"]) == (4, 2)
    [note] = by_max["cut"]
    assert "2 left out" in note and "topk(2, <query>)" in note
    assert series.fill_query([note], "x_total") == [note.replace("<query>", "x_total")]


@pytest.mark.parametrize(
    ("values", "trend"),
    [
        ([1, 2, 3, 4, 5], "rising"),
        ([9, 7, 5, 3, 1], "falling"),
        ([5, 5.01, 4.99, 5, 5.01, 4.99, 5], "flat"),
        ([1, 1, 1, 50, 1, 1, 1], "flat"),  # a spike is not a trend
        ([1, 1, 1, 1, 9, 9, 9, 9], "rising"),  # a step is
        ([7, 7, 7], "flat"),
    ],
)
def test_trend(values: list[float], trend: str) -> None:
    _text, data = series.summarise_matrix([_matrix({}, values)], max_series=1, max_points=50)
    assert data["series"][0]["trend"] == trend


def test_matrix_text_has_one_line_per_series() -> None:
    text, data = series.summarise_matrix(
        [_matrix({"__name__": "mem", "pod": "a"}, [1000, 1500, 2000, 13_300])],
        max_series=5,
        max_points=10,
    )
    entry = data["series"][0]
    assert entry["change"] == 12_300 and entry["first_at"] == "2027-01-15T08:00:00Z"
    assert text == 'mem{pod="a"} last=13.3k min=1k max=13.3k trend=rising (+12.3k over 30s)'


def test_linear_fit_is_exact_on_a_line_at_unix_times() -> None:
    start = 1_800_000_000.0
    points = [(start + 15 * i, 200e6 + 100e3 * 15 * i) for i in range(480)]
    fit = series.linear_fit(points)
    assert fit is not None
    slope, intercept = fit
    assert slope == pytest.approx(100e3, rel=1e-9)
    assert slope * (start + 3600) + intercept == pytest.approx(200e6 + 100e3 * 3600, rel=1e-9)
    assert series.linear_fit([(start, 1.0)]) is None
    assert series.linear_fit([(start, 1.0), (start, 2.0)]) is None


def test_vector_keeps_order_unless_cut_then_largest_first() -> None:
    result = [
        {"metric": {"pod": name}, "value": [1_800_000_000, value]}
        for name, value in [("a", "1"), ("b", "NaN"), ("c", "30"), ("d", "+Inf"), ("e", "2")]
    ]
    _text, whole = series.summarise_vector(result, max_series=10)
    assert [s["labels"]["pod"] for s in whole["series"]] == ["a", "b", "c", "d", "e"]
    text, cut = series.summarise_vector(result, max_series=3)
    assert [s["labels"]["pod"] for s in cut["series"]] == ["d", "c", "e"]
    assert cut["series"][0]["value"] is None and cut["series"][0]["text"] == "+Inf"
    assert cut["series"][1] == {"labels": {"pod": "c"}, "value": 30.0, "at": "2027-01-15T08:00:00Z"}
    assert "topk(3, <query>)" in cut["cut"][0] and '{pod="d"} = +Inf' in text


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (838_860_800, "839M"),
        (999_999, "1M"),
        (0.000123, "0.000123"),
        (-1234, "-1.23k"),
        (2.5e9, "2.5G"),
        (12.345, "12.3"),
    ],
)
def test_compact_numbers(number: float, text: str) -> None:
    assert series.compact(number) == text


# --- series.py: comparisons and breaches ----------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "lhs", "operator", "value"),
    [
        ('sum(rate(x{a=">"}[5m])) > 3', 'sum(rate(x{a=">"}[5m]))', ">", 3.0),
        ("rate(errors_total[5m]) > 0.5", "rate(errors_total[5m])", ">", 0.5),
        ("max by (pod) (x) >= 1e3", "max by (pod) (x)", ">=", 1000.0),
        ("x{a='<'} != -0x1F", "x{a='<'}", "!=", -31.0),
        ('up{job="a"} == 0', 'up{job="a"}', "==", 0.0),
        ("x > bool 2", "x", ">", 2.0),
        ("3 < foo", "foo", ">", 3.0),  # mirrored: seen from foo
        ("0.5 >= bool rate(x[1m])", "rate(x[1m])", "<=", 0.5),
        ("a > b > 3", "a > b", ">", 3.0),
        (
            "histogram_quantile(0.9, sum by (le) (rate(h[5m]))) > 0.25 # slow",
            "histogram_quantile(0.9, sum by (le) (rate(h[5m])))",
            ">",
            0.25,
        ),
        ('count(x{path=~"/a|/b"} < 1) <= 2', 'count(x{path=~"/a|/b"} < 1)', "<=", 2.0),
    ],
)
def test_split_comparison(expression: str, lhs: str, operator: str, value: float) -> None:
    comparison = series.split_comparison(expression)
    assert comparison is not None
    assert (comparison.lhs, comparison.operator, comparison.value) == (lhs, operator, value)


@pytest.mark.parametrize(
    "expression",
    [
        "a > b",
        "(x > 3)",
        'x > "3"',
        "up == 0 and rate(x[5m]) > 1",
        "x > 1 or y > 2",
        "absent(up)",
        "x > on(pod) y",
        'x{a="> 3"}',
    ],
)
def test_split_comparison_leaves_other_expressions_whole(expression: str) -> None:
    assert series.split_comparison(expression) is None


def test_split_comparison_ignores_comparisons_in_comments() -> None:
    comparison = series.split_comparison("x > 3 # alert when > 4")
    assert comparison is not None and (comparison.lhs, comparison.value) == ("x", 3.0)


def _breach(values: list[float | None], expression: str | None) -> dict[str, Any]:
    """A 10 s-step series over t = 0..; None is a step where the series is absent."""
    start = 1_800_000_000
    item = {
        "metric": {"pod": "a"},
        "values": [[start + 10 * i, repr(v)] for i, v in enumerate(values) if v is not None],
    }
    _text, data = series.summarise_breach(
        [item],
        comparison=series.split_comparison(expression) if expression else None,
        step=10,
        last_step_at=start + 10 * (len(values) - 1),
        window_start=start,
        max_series=5,
        max_points=100,
    )
    return data


def test_breach_is_the_last_contiguous_run_that_holds() -> None:
    data = _breach([1, 6, 7, 1, 2, 6, 8, 9], "x > 5")
    assert data["breaching"] is True
    assert data["breach_started_at"] == series.iso(1_800_000_050)
    assert data["breaching_for_seconds"] == 20
    assert data["peak"] == 9
    assert data["peak_over_threshold"] == {"absolute": 4, "ratio": 0.8}
    assert data["threshold"] == {"operator": ">", "value": 5.0}


def test_an_ended_breach_is_not_breaching() -> None:
    data = _breach([1, 6, 7, 8, 1, 1], "x > 5")
    [entry] = data["series"]
    assert data["breaching"] is False and data["breach_started_at"] is None
    assert entry["breach_started_at"] == series.iso(1_800_000_010)
    assert entry["breach_ended_at"] == series.iso(1_800_000_030)


def test_below_threshold_peak_is_the_lowest_value() -> None:
    data = _breach([10, 4, 2, 3], "x < 5")
    assert data["breaching"] is True and data["peak"] == 2
    assert data["peak_over_threshold"] == {"absolute": 3, "ratio": 0.6}


def test_without_threshold_presence_holds_and_gaps_break_the_run() -> None:
    data = _breach([7, 7, None, 8, 9], None)
    assert data["threshold"] is None and data["peak_over_threshold"] is None
    assert data["breach_started_at"] == series.iso(1_800_000_030)
    assert data["breaching"] is True and data["peak"] == 9


# --- PrometheusClient: queries --------------------------------------------------------------


def test_instant_query_reads_backfilled_values(client: PrometheusClient, stack: Stack) -> None:
    history = stack.history
    out = client.instant(MEMORY, time=str(history.end))
    [entry] = out.data["series"]
    assert entry["value"] == pytest.approx(history.memory(history.end))
    assert entry["labels"] == {"__name__": "uici_test_memory_bytes", "service": "web"}
    assert _timestamp(entry["at"]) == history.end
    assert out.data["query"] == MEMORY and out.data["cut"] == []
    assert out.output.startswith(f"instant query {MEMORY} at {series.iso(history.end)}: 1 series")


def test_instant_query_of_the_self_scrape(client: PrometheusClient) -> None:
    deadline = time.monotonic() + 15
    while True:
        out = client.instant('up{job="prometheus"}')
        if out.data["series"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    [entry] = out.data["series"]
    assert entry["value"] == 1.0 and entry["labels"]["job"] == "prometheus"


def test_instant_scalar_and_string_results(client: PrometheusClient) -> None:
    scalar = client.instant("1 + 1")
    assert scalar.data["result_type"] == "scalar"
    assert [(s["labels"], s["value"]) for s in scalar.data["series"]] == [({}, 2.0)]
    text = client.instant('"hello"')
    assert text.data["series"][0]["text"] == "hello" and text.data["series"][0]["value"] is None


def test_instant_vector_cut_keeps_the_largest(client: PrometheusClient, stack: Stack) -> None:
    query = "uici_test_requests_total"
    out = client.instant(query, time=series.iso(stack.history.end), max_series=5)
    pods = [s["labels"]["pod"] for s in out.data["series"]]
    assert pods == [f"pod-{i:02d}" for i in range(PODS - 1, PODS - 6, -1)]
    assert (out.data["series_total"], out.data["series_shown"]) == (PODS, 5)
    assert f"topk(5, {query})" in out.data["cut"][0] and f"topk(5, {query})" in out.output


def test_range_summary_against_the_history(client: PrometheusClient, stack: Stack) -> None:
    history = stack.history
    window: dict[str, Any] = {
        "start": str(history.start),
        "end": str(history.end),
        "since": None,
        "step": 60,
    }
    memory = client.range(MEMORY, **window)
    [entry] = memory.data["series"]
    assert entry["trend"] == "rising"
    assert entry["first"] == pytest.approx(history.memory(history.start))
    assert entry["last"] == pytest.approx(history.memory(history.end))
    assert (entry["min"], entry["max"]) == (entry["first"], entry["last"])
    assert entry["slope_per_second"] == pytest.approx(history.memory_slope)
    assert entry["points"] == history.duration // 60 + 1 == len(entry["values"])
    assert memory.data["step_seconds"] == 60 and memory.data["cut"] == []
    assert _timestamp(memory.data["start"]) == history.start
    assert _timestamp(memory.data["end"]) == history.end
    assert memory.output.startswith(f"range query {MEMORY} from {series.iso(history.start)}")
    assert "trend=rising" in memory.output

    [disk] = client.range(DISK, **window).data["series"]
    assert disk["trend"] == "flat"
    assert disk["min"] == history.disk_level - history.disk_ripple
    assert disk["max"] == history.disk_level + history.disk_ripple


def test_range_nan_samples_from_prometheus(client: PrometheusClient, stack: Stack) -> None:
    history = stack.history
    out = client.range(
        'uici_test_quality{service="web"}',
        start=str(history.start),
        end=str(history.end),
        since=None,
        step=60,
    )
    [entry] = out.data["series"]
    # Steps fall on every fourth sample and every eighth sample is NaN: half the points.
    assert entry["non_finite"] == entry["points"] + 1 == history.duration // 120 + 1
    assert (entry["min"], entry["max"], entry["trend"]) == (1.0, 1.0, "flat")
    assert any("NaN" in note for note in out.data["cut"]) and "NaN/Inf skipped" in out.output


def test_range_step_widened_to_the_point_budget(client: PrometheusClient, stack: Stack) -> None:
    history = stack.history
    out = client.range(
        MEMORY, start=str(history.start), end=str(history.end), since=None, step=1, max_points=300
    )
    step = out.data["step_seconds"]
    [entry] = out.data["series"]
    assert step > 1 and entry["points"] <= 300
    assert entry["points"] == int(history.duration // step) + 1
    assert (
        out.data["cut"][0]
        == f"step widened from 1s to {step:g}s to stay within 300 points per series"
    )
    assert f"cut: step widened from 1s to {step:g}s" in out.output


def test_range_series_cap_suggests_topk(client: PrometheusClient, stack: Stack) -> None:
    history = stack.history
    query = "rate(uici_test_requests_total[5m])"
    out = client.range(
        query,
        start=str(history.start + 600),
        end=str(history.end),
        since=None,
        step=60,
        max_series=10,
    )
    assert (out.data["series_total"], out.data["series_shown"]) == (PODS, 10)
    shown = {s["labels"]["pod"]: s["last"] for s in out.data["series"]}
    assert set(shown) == {f"pod-{i:02d}" for i in range(PODS - 10, PODS)}
    for pod, last in shown.items():
        assert last == pytest.approx(int(pod[4:]) + 1)
    [note] = out.data["cut"]
    assert "40 left out" in note and f"topk(10, {query})" in note
    assert len(out.output.splitlines()) == 1 + 10 + 1  # header, series, cut note


def test_label_values_capped_client_side(client: PrometheusClient, stack: Stack) -> None:
    out = client.label_values("pod", since=3 * 3600, limit=10)
    assert out.data["total"] == PODS
    assert out.data["values"] == [f"pod-{i:02d}" for i in range(10)]
    assert "50 values; showing the first 10" in out.data["cut"][0]
    assert out.data["label"] == "pod" and "cut: 50 values" in out.output


def test_label_values_of_metric_names(client: PrometheusClient, stack: Stack) -> None:
    ours = client.label_values("__name__", match='{__name__=~"uici_test_.*"}', since=3 * 3600)
    assert ours.data["values"] == stack.history.metric_names() and ours.data["cut"] == []
    everything = client.label_values("__name__", since=3 * 3600, limit=5)
    assert len(everything.data["values"]) == 5
    assert everything.data["total"] > len(stack.history.metric_names())  # the self-scrape's too
    assert everything.data["cut"]


# --- PrometheusClient: errors ---------------------------------------------------------------


def test_syntax_error_is_permanent_and_quotes_prometheus(client: PrometheusClient) -> None:
    for call in (
        lambda: client.instant("sum(rate(up[5m])"),
        lambda: client.range("sum(rate(up[5m])", start=None, end=None, since=600, step=None),
    ):
        error = _error(call)
        assert error.kind is ErrorKind.PERMANENT
        assert "1:17: parse error: unclosed left parenthesis" in error.message
        assert "400" in error.message


def test_type_error_is_permanent(client: PrometheusClient) -> None:
    error = _error(client.instant, "rate(up)")
    assert error.kind is ErrorKind.PERMANENT
    assert "expected type range vector in call to function" in error.message


def test_unreachable_server_is_retryable() -> None:
    with PrometheusClient(_source(f"http://127.0.0.1:{free_port()}"), 5) as closed:
        error = _error(closed.instant, "up")
    assert error.kind is ErrorKind.RETRYABLE and "unreachable" in error.message


def test_wrong_basic_auth_is_denied_by_prometheus(stack: Stack) -> None:
    if stack.basic is None:
        pytest.skip("no bcrypt hash could be made, so this Prometheus runs without auth")
    source = _source(stack.url, username=USER, password=SecretStr("wrong"))
    with PrometheusClient(source, 5) as wrong:
        error = _error(wrong.instant, "up")
    assert error.kind is ErrorKind.DENIED and "401" in error.message


def test_bearer_token_is_sent_and_401_is_denied(recorder: Recorder) -> None:
    source = _source(f"{recorder.url}/deny", bearer_token=SecretStr("s3cret"))
    with PrometheusClient(source, 5) as denied:
        error = _error(denied.instant, "up")
    assert error.kind is ErrorKind.DENIED and "Unauthorized" in error.message
    path, headers = recorder.requests[-1]
    assert path == "/deny/api/v1/query"
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["content-type"] == "application/x-www-form-urlencoded"


def test_non_json_answer_is_permanent(recorder: Recorder) -> None:
    with PrometheusClient(_source(f"{recorder.url}/html"), 5) as page:
        error = _error(page.label_values, "job")
    assert error.kind is ErrorKind.PERMANENT and "not JSON" in error.message


def test_server_timeout_is_retryable(recorder: Recorder) -> None:
    with PrometheusClient(_source(f"{recorder.url}/busy"), 5) as busy:
        error = _error(busy.instant, "up")
    assert error.kind is ErrorKind.RETRYABLE
    assert "query timed out in expression evaluation" in error.message


def test_client_timeout_is_retryable(recorder: Recorder) -> None:
    with PrometheusClient(_source(f"{recorder.url}/slow"), 0.5) as slow:
        error = _error(slow.instant, "up")
    assert error.kind is ErrorKind.RETRYABLE and "timed out" in error.message


def test_warnings_reach_data_and_text(recorder: Recorder) -> None:
    with PrometheusClient(_source(f"{recorder.url}/warn"), 5) as warned:
        out = warned.instant("up")
    assert out.data["warnings"] == ["remote read from store-1 failed"]
    assert "warning: remote read from store-1 failed" in out.output
    assert out.data["series"] == [] and "no series" in out.output


def test_source_without_url_is_refused() -> None:
    with PrometheusClient(_source(""), 5) as off:
        error = _error(off.check_connection)
    assert error.kind is ErrorKind.PERMANENT and "has no url" in error.message


def test_check_connection(client: PrometheusClient) -> None:
    out = client.check_connection()
    assert out.data["version"].startswith("2.") and out.data["version"] in out.output


# --- PrometheusClient: alert expressions ----------------------------------------------------


def test_alert_expression_split_at_its_threshold(client: PrometheusClient, stack: Stack) -> None:
    history = stack.history
    expression = f"{ERRORS_IRATE} > 0.5"
    out = client.alert_expression(expression=expression, alertname=None, labels=None, since=3600)
    data = out.data
    step = data["step_seconds"]
    assert (data["source"], data["query"]) == ("generator_url", ERRORS_IRATE)
    assert data["threshold"] == {"operator": ">", "value": 0.5}
    assert data["breaching"] is True
    # irate sees the new rate once a sample after the jump exists; the next step shows it.
    started = _timestamp(data["breach_started_at"])
    assert history.jump_at <= started <= history.jump_at + history.interval + step
    end = _timestamp(data["end"])
    assert data["breaching_for_seconds"] == pytest.approx(end - started, abs=step)
    assert data["peak"] == pytest.approx(history.error_rate_after)
    over = data["peak_over_threshold"]
    assert over["absolute"] == pytest.approx(history.error_rate_after - 0.5)
    assert over["ratio"] == pytest.approx((history.error_rate_after - 0.5) / 0.5)
    [entry] = data["series"]
    assert entry["min"] == pytest.approx(history.error_rate_before)
    assert out.output.startswith(f"alert expression {expression}: breaching since ")
    assert "peak 0.93 against > 0.5 (+0.43, 86% over)" in out.output.splitlines()[0]


def test_alert_expression_without_threshold(client: PrometheusClient, stack: Stack) -> None:
    split = client.alert_expression(
        expression=f"{ERRORS_IRATE} > 0.5", alertname=None, labels=None, since=3600
    )
    whole = client.alert_expression(
        expression=f"({ERRORS_IRATE} > 0.5)", alertname=None, labels=None, since=3600
    )
    assert whole.data["threshold"] is None and whole.data["query"] == f"({ERRORS_IRATE} > 0.5)"
    assert whole.data["breaching"] is True
    started = _timestamp(whole.data["breach_started_at"])
    assert abs(started - _timestamp(split.data["breach_started_at"])) <= whole.data["step_seconds"]
    # Only the breaching points exist, so the lowest value is already over the threshold.
    [entry] = whole.data["series"]
    assert entry["min"] > 0.5 and whole.data["peak"] == pytest.approx(
        stack.history.error_rate_after
    )


def test_alert_expression_that_never_held(client: PrometheusClient) -> None:
    out = client.alert_expression(
        expression=f"{ERRORS_IRATE} > 5", alertname=None, labels=None, since=3600
    )
    assert out.data["breaching"] is False and out.data["breach_started_at"] is None
    assert out.data["peak_over_threshold"]["absolute"] < 0
    assert "did not hold in the window" in out.output


def test_rule_expression_chosen_by_labels(client: PrometheusClient) -> None:
    ticket = client.rule_expression("UiciTestErrorsHigh", {"severity": "ticket", "service": "web"})
    assert ticket is not None and ticket["query"] == f"{ERRORS_IRATE} > 0.9"
    page = client.rule_expression("UiciTestErrorsHigh", {"severity": "page"})
    assert page is not None and page["annotations"] == {"summary": "errors are high"}
    assert page["labels"] == {"severity": "page"} and page["query"] == f"{ERRORS_IRATE} > 0.5"
    assert client.rule_expression("UiciTestErrorsHigh", {"severity": "other"}) is None
    assert client.rule_expression("NoSuchAlert") is None


def test_alert_expression_from_the_rules_api(client: PrometheusClient) -> None:
    out = client.alert_expression(
        expression=None, alertname="UiciTestErrorsHigh", labels={"severity": "ticket"}
    )
    assert out.data["source"] == "rules_api"
    assert out.data["rule"]["labels"] == {"severity": "ticket"}
    assert out.data["threshold"] == {"operator": ">", "value": 0.9}
    assert out.data["breaching"] is True


def test_alert_expression_named_nowhere_is_permanent(client: PrometheusClient) -> None:
    error = _error(
        client.alert_expression, expression="", alertname="NoSuchAlert", labels={"a": "b"}
    )
    assert error.kind is ErrorKind.PERMANENT
    assert "neither the alert's generatorURL nor the rules API" in error.message


# --- PrometheusClient: resource trends ------------------------------------------------------


def test_resource_trends_predict_the_memory_limit(client: PrometheusClient, stack: Stack) -> None:
    history = stack.history
    out = client.resource_trends(
        {"memory": (MEMORY, MEMORY_LIMIT), "disk": (DISK, DISK_CAPACITY)},
        since=7200,
        horizon_seconds=3600,
    )
    now = _timestamp(out.data["end"])
    memory = out.data["memory"]
    assert memory["trend"] == "rising" and memory["capacity"] == history.memory_limit
    assert memory["last"] == pytest.approx(history.memory(history.end))
    assert memory["ratio"] == pytest.approx(history.memory(history.end) / history.memory_limit)
    # The written line reaches the limit at this time; after the last sample Prometheus
    # repeats it for a step or two, which bends the fit a little.
    crossing = history.start + (history.memory_limit - history.memory_base) / history.memory_slope
    assert memory["seconds_to_capacity"] == pytest.approx(crossing - now, abs=120)
    assert memory["reaches_capacity_within_horizon"] is True
    assert memory["predicted"] > history.memory_limit

    disk = out.data["disk"]
    assert disk["trend"] == "flat" and disk["seconds_to_capacity"] is None
    assert disk["reaches_capacity_within_horizon"] is False
    assert disk["ratio"] == pytest.approx(history.disk_level / history.disk_capacity, rel=0.01)
    lines = out.output.splitlines()
    assert lines[1].startswith("memory: ") and "reaches capacity in" in lines[1]
    assert lines[2].startswith("disk: ") and "not reaching capacity" in lines[2]

    soon = client.resource_trends(
        {"memory": (MEMORY, MEMORY_LIMIT)}, since=7200, horizon_seconds=60
    ).data["memory"]
    assert soon["seconds_to_capacity"] > 60 and soon["reaches_capacity_within_horizon"] is False


def test_resource_trends_one_failure_does_not_fail_the_rest(client: PrometheusClient) -> None:
    out = client.resource_trends(
        {
            "memory": (MEMORY, MEMORY_LIMIT),
            "cpu": ("rate(up)", ""),
            "gpu": ("uici_test_no_such_metric", ""),
        },
        since=3600,
        horizon_seconds=3600,
    )
    assert out.data["memory"]["trend"] == "rising"
    assert "parse error" in out.data["cpu"]["error"] and out.data["cpu"]["kind"] == "permanent"
    assert "returned no series" in out.data["gpu"]["error"]
    assert "cpu: error:" in out.output


def test_resource_trends_all_failing_raise_the_first(client: PrometheusClient) -> None:
    error = _error(
        client.resource_trends,
        {"cpu": ("rate(up)", ""), "gpu": ("rate(up[1m]", "")},
        since=3600,
        horizon_seconds=3600,
    )
    assert error.kind is ErrorKind.PERMANENT and "expected type range vector" in error.message


def test_a_resource_without_series_is_an_answer_not_a_failure(client: PrometheusClient) -> None:
    """No series (nothing exports that metric for the service) is what Prometheus knows, so
    the read succeeds and says so; conditions on another resource are not blocked by it."""
    result = client.resource_trends(
        {"disk": ("uici_test_no_such_metric", "")}, since=3600, horizon_seconds=3600
    )
    assert result.data["disk"]["kind"] == "no_data"
    assert "returned no series" in result.data["disk"]["error"]
    assert "disk: no data:" in result.output


def test_history_is_well_formed_openmetrics(tmp_path: Path) -> None:
    """The OpenMetrics text the backfill reads is well formed (families once, # EOF last)."""
    history = History(end=1_800_000_000, duration=60)
    path = tmp_path / "h.om"
    history.write_openmetrics(path)
    lines = path.read_text().splitlines()
    assert lines[-1] == "# EOF"
    families = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(families) == len(set(families)) == 7
    assert 'uici_test_quality{service="web"} NaN 1799999940' in lines
