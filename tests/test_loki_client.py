"""LokiClient against the Loki double over real HTTP: what it sends (window in nanoseconds,
direction, limit, tenant and auth headers), how it shapes answers (deduplicated lines with
counts, error lines first, oldest-first data, bounded text with cut notes, per-step counts)
and how Loki's errors come back (the plain-text message quoted, classified by status)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infrastructure.configuration.models import LokiSource
from infrastructure.executors.base import ErrorKind, ExecutorError
from infrastructure.observability.loki import MAX_LIMIT, LokiClient
from tests.loki_double import TIMEOUT_TEXT, LokiDouble, Recorded, now_ns, to_ns

S = 10**9
END = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
END_NS = to_ns(END)
LEVELS = {"error": r"(?i)\b(error|fatal)\b", "warning": r"(?i)\bwarn(ing)?\b"}


@pytest.fixture(scope="module")
def double() -> Iterator[LokiDouble]:
    with LokiDouble(auth_enabled=True) as server:
        yield server


@pytest.fixture
def tenant(double: LokiDouble) -> str:
    """A tenant of this test alone: the module's double keeps every test's streams apart."""
    double.clear_failures()
    double.ready = True
    return f"t-{uuid.uuid4().hex[:12]}"


def source(url: str, tenant: str = "", **extra: Any) -> LokiSource:
    # The double is plain http: no TLS to verify, and skipping it saves the ~170 ms httpx
    # spends loading the CA bundle for every client.
    return LokiSource(
        name="logs", url=url, timeout_seconds=5, tenant=tenant, verify_tls=False, **extra
    )


@pytest.fixture
def client(double: LokiDouble, tenant: str) -> Iterator[LokiClient]:
    with LokiClient(source(double.url, tenant), timeout_seconds=5) as loki:
        yield loki


def at(seconds_before_end: float) -> int:
    return END_NS - int(seconds_before_end * S)


def window(minutes: int = 10) -> dict[str, Any]:
    """An explicit window ending at END (RFC 3339, as the operations pass it)."""
    start = END - timedelta(minutes=minutes)
    return {
        "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end": "2026-11-30T12:00:00Z",
        "since": None,
    }


def last_request(double: LokiDouble, tenant: str, path: str) -> Recorded:
    return [
        r for r in double.requests if r.path == path and r.headers.get("x-scope-orgid") == tenant
    ][-1]


def seed_incident(double: LokiDouble, tenant: str) -> None:
    """A service that starts, then fails repeatedly, on two streams."""
    double.push(
        {"app": "orders", "stream": "stdout"},
        [
            (at(300), "starting orders v2"),
            (at(240), "listening on :8080"),
            (at(200), "WARN slow query took 2.3s"),
            (at(120), "GET /health 200"),
            (at(60), "GET /health 200  "),  # same line, trailing spaces
        ],
        tenant=tenant,
    )
    double.push(
        {"app": "orders", "stream": "stderr"},
        [(at(180 - i * 10), "ERROR connection refused to db:5432") for i in range(12)]
        + [(at(30), "FATAL giving up after 12 retries")],
        tenant=tenant,
    )


# --- what is sent ----------------------------------------------------------------------------------


def test_sends_explicit_window_in_ns_direction_limit_and_tenant(
    double: LokiDouble, client: LokiClient, tenant: str
) -> None:
    client.query('{app="orders"}', **window(10), limit=250)
    sent = last_request(double, tenant, "/loki/api/v1/query_range")
    assert sent.params == {
        "query": '{app="orders"}',
        "start": str(END_NS - 600 * S),
        "end": str(END_NS),
        "direction": "backward",
        "limit": "250",
    }
    assert sent.headers["x-scope-orgid"] == tenant


def test_default_window_is_the_last_hour(
    double: LokiDouble, client: LokiClient, tenant: str
) -> None:
    before = now_ns()
    client.query('{app="orders"}', start=None, end=None, since=None)
    sent = last_request(double, tenant, "/loki/api/v1/query_range")
    start, end = int(sent.params["start"]), int(sent.params["end"])
    assert end - start == 3600 * S
    assert before - 1000 <= end <= now_ns()  # the client's clock has microseconds


def test_limit_is_capped_at_lokis_max_entries(
    double: LokiDouble, client: LokiClient, tenant: str
) -> None:
    out = client.query('{app="orders"}', **window(), limit=20000)
    assert last_request(double, tenant, "/loki/api/v1/query_range").params["limit"] == str(
        MAX_LIMIT
    )
    assert any("lowered to 5000" in note for note in out.data["cut"])


# --- how lines come back --------------------------------------------------------------------------


def test_dedupes_lines_with_counts_and_puts_error_lines_first(
    double: LokiDouble, client: LokiClient, tenant: str
) -> None:
    seed_incident(double, tenant)
    out = client.query('{app="orders"}', **window(), level_patterns=LEVELS)
    data = out.data
    assert data["entries_received"] == 18
    assert data["unique_lines"] == 6
    assert data["streams"] == 2
    assert data["limit_reached"] is False
    # oldest first, newest last, by each line's last occurrence
    assert data["lines"] == [
        "starting orders v2",
        "listening on :8080",
        "WARN slow query took 2.3s",
        "ERROR connection refused to db:5432",
        "GET /health 200",
        "FATAL giving up after 12 retries",
    ]
    refused = next(e for e in data["entries"] if e["line"].startswith("ERROR connection"))
    assert refused["count"] == 12
    assert refused["level"] == "error"
    assert refused["first_at"] == "2026-11-30T11:57:00Z"
    assert refused["last_at"] == "2026-11-30T11:58:50Z"
    assert refused["labels"] == {"app": "orders", "stream": "stderr", "service_name": "orders"}
    health = next(e for e in data["entries"] if e["line"] == "GET /health 200")
    assert health["count"] == 2 and health["level"] is None
    lines = out.output.splitlines()
    assert lines[0].startswith("Loki 'logs': {app=\"orders\"} from 2026-11-30T11:50:00Z to")
    assert "18 entries, 6 unique lines in 2 streams" in lines[0]
    body = [line for line in lines[1:] if not line.startswith(("error:", "warning:", "other"))]
    assert body == [
        "[\u00d712] ERROR connection refused to db:5432",
        "FATAL giving up after 12 retries",
        "WARN slow query took 2.3s",
        "starting orders v2",
        "listening on :8080",
        "[\u00d72] GET /health 200",
    ]
    assert lines[1] == "error: 2 unique lines, 13 entries"


def test_data_lines_are_oldest_first_whatever_the_direction(
    double: LokiDouble, client: LokiClient, tenant: str
) -> None:
    double.push({"app": "seq"}, [(at(100 - i), f"step {i}") for i in range(10)], tenant=tenant)
    newest = client.query('{app="seq"}', **window(), direction="backward", limit=4)
    oldest = client.query('{app="seq"}', **window(), direction="forward", limit=4)
    assert newest.data["lines"] == ["step 6", "step 7", "step 8", "step 9"]
    assert oldest.data["lines"] == ["step 0", "step 1", "step 2", "step 3"]
    assert last_request(double, tenant, "/loki/api/v1/query_range").params["direction"] == "forward"
    for out, which in ((newest, "newest"), (oldest, "oldest")):
        assert out.data["limit_reached"] is True
        assert any(
            f"more lines than limit 4: only the {which} 4 were read" in note
            and "narrow the window" in note
            for note in out.data["cut"]
        )
        assert "cut: the window holds more lines than limit 4" in out.output


def test_text_is_bounded_on_line_boundaries_and_says_what_was_cut(
    double: LokiDouble, client: LokiClient, tenant: str
) -> None:
    rendered = [f"request {i:03d} failed: é€漢 " + "x" * 60 for i in range(200)]
    double.push(
        {"app": "big"}, [(at(500 - i), line) for i, line in enumerate(rendered)], tenant=tenant
    )
    out = client.query('{app="big"}', **window(), max_bytes=4000)
    assert len(out.output.encode()) <= 4000
    # One selection for text and data: the newest lines within max_bytes, oldest first.
    kept = out.data["lines"]
    assert 0 < len(kept) < 200 and kept[-1] == rendered[-1]
    assert kept == rendered[-len(kept) :] and len(out.data["entries"]) == len(kept)
    assert sum(len(line.encode()) + 1 for line in kept) <= 4000
    note = next(n for n in out.data["cut"] if "unique lines left out to stay within" in n)
    assert note.startswith(f"{200 - len(kept)} of 200 unique lines left out")
    shown = [line for line in out.output.splitlines()[1:] if not line.startswith("cut: ")]
    assert shown == kept[: len(shown)]  # whole lines, oldest first, none broken
    assert set(shown) <= set(kept)  # the text never shows a line the data lacks
    assert out.output.splitlines()[-1].startswith("cut: ")
    whole = client.query('{app="big"}', **window(), max_bytes=1_000_000)
    assert not whole.data["cut"] and len(whole.output.splitlines()) == 201


def test_no_lines_says_so(client: LokiClient) -> None:
    out = client.query('{app="nothing"}', **window())
    assert out.data["lines"] == [] and out.data["entries_received"] == 0
    assert out.output.splitlines()[-1] == "no lines matched in the window"


def test_metric_query_given_to_query_is_summarised(
    double: LokiDouble, client: LokiClient, tenant: str
) -> None:
    seed_incident(double, tenant)
    out = client.query('sum(count_over_time({app="orders"}[1m]))', **window())
    assert out.data["result_type"] == "matrix"
    assert out.data["series_total"] == 1
    assert "is a metric query (matrix result)" in out.output.splitlines()[0]


# --- errors ---------------------------------------------------------------------------------------


def expect_error(kind: ErrorKind, call: Any) -> ExecutorError:
    with pytest.raises(ExecutorError) as caught:
        call()
    assert caught.value.kind is kind, caught.value.message
    return caught.value


def test_parse_error_is_permanent_and_quotes_loki(client: LokiClient) -> None:
    error = expect_error(ErrorKind.PERMANENT, lambda: client.query('{app="orders"', **window()))
    assert error.message == (
        "Loki 'logs' answered 400: parse error at line 1, col 14: syntax error:"
        " unexpected $end, expecting } or ,"
    )
    semantic = expect_error(ErrorKind.PERMANENT, lambda: client.query('{app=~".*"}', **window()))
    assert "queries require at least one regexp or equality matcher" in semantic.message


def test_missing_tenant_is_denied(double: LokiDouble) -> None:
    with LokiClient(source(double.url), 5) as loki:
        error = expect_error(ErrorKind.DENIED, lambda: loki.query('{app="x"}', **window()))
    assert error.message == "Loki 'logs' answered 401: no org id"
    assert "tenant" in error.hint


@pytest.mark.parametrize(
    ("status", "text"),
    [(504, TIMEOUT_TEXT), (503, "Service Unavailable"), (429, "too many outstanding requests")],
)
def test_busy_or_failing_server_is_retryable(
    double: LokiDouble, client: LokiClient, status: int, text: str
) -> None:
    double.fail(status, path="query_range")
    error = expect_error(ErrorKind.RETRYABLE, lambda: client.query('{app="x"}', **window()))
    assert error.message == f"Loki 'logs' answered {status}: {text}"


def test_unreachable_server_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with LokiClient(source(f"http://127.0.0.1:{port}", "t"), 2) as loki:
        error = expect_error(ErrorKind.RETRYABLE, lambda: loki.query('{app="x"}', **window()))
    assert "unreachable" in error.message


def test_slow_server_times_out_retryable(double: LokiDouble, tenant: str) -> None:
    double.fail(200, "", path="labels", delay=1.5)
    with LokiClient(source(double.url, tenant), timeout_seconds=0.3) as loki:
        error = expect_error(ErrorKind.RETRYABLE, lambda: loki.labels(selector=None, since=60))
    assert "timed out" in error.message


def test_bad_arguments_are_refused_before_sending(client: LokiClient) -> None:
    expect_error(ErrorKind.PERMANENT, lambda: client.query('{a="b"}', **window(), direction="up"))
    expect_error(ErrorKind.PERMANENT, lambda: client.query('{a="b"}', **window(), limit=0))
    expect_error(ErrorKind.PERMANENT, lambda: client.query("  ", **window()))
    expect_error(
        ErrorKind.PERMANENT,
        lambda: client.query('{a="b"}', **window(), level_patterns={"error": "("}),
    )
    expect_error(
        ErrorKind.PERMANENT, lambda: client.label_values("1bad", selector=None, since=None)
    )


# --- auth -----------------------------------------------------------------------------------------


def test_bearer_token_is_sent_and_a_wrong_one_denied() -> None:
    with LokiDouble(require_token="s3cret") as double:
        double.push({"app": "web"}, [(now_ns() - S, "hello")])
        with LokiClient(source(double.url, bearer_token="s3cret"), 5) as loki:
            out = loki.query('{app="web"}', start=None, end=None, since=60)
        assert out.data["lines"] == ["hello"]
        assert double.requests[-1].headers["authorization"] == "Bearer s3cret"
        with LokiClient(source(double.url, bearer_token="wrong"), 5) as loki:
            expect_error(ErrorKind.DENIED, lambda: loki.query('{app="web"}', **window()))


# --- labels ---------------------------------------------------------------------------------------


def test_labels_and_values_with_selector_and_cap(
    double: LokiDouble, client: LokiClient, tenant: str
) -> None:
    now = now_ns()
    for i in range(7):
        double.push(
            {"app": f"svc-{i}", "env": "prod" if i % 2 else "dev"}, [(now - S, "x")], tenant=tenant
        )
    labels = client.labels(selector=None, since=300)
    assert labels.data == {"values": ["app", "env", "service_name"], "total": 3, "cut": []}
    sent = last_request(double, tenant, "/loki/api/v1/labels")
    assert int(sent.params["end"]) - int(sent.params["start"]) == 300 * S
    values = client.label_values("app", selector='{env="prod"}', since=300, limit=2)
    assert values.data["label"] == "app"
    assert values.data["values"] == ["svc-1", "svc-3"]
    assert values.data["total"] == 3
    assert values.data["cut"] == [
        "3 values; showing the first 2 (alphabetical); narrow with a selector or a shorter"
        " window, or raise limit"
    ]
    assert (
        last_request(double, tenant, "/loki/api/v1/label/app/values").params["query"]
        == '{env="prod"}'
    )
    assert values.output.splitlines()[1:3] == ["svc-1", "svc-3"]
    none = client.label_values("missing", selector=None, since=300)
    assert none.data == {"label": "missing", "values": [], "total": 0, "cut": []}


# --- counts ---------------------------------------------------------------------------------------


def test_count_gives_lines_per_step_with_zeros(
    double: LokiDouble, client: LokiClient, tenant: str
) -> None:
    # 10-minute window, 1-minute steps: points at END-9m ... END, each counting (t-1m, t]
    double.push(
        {"app": "orders"},
        [(at(590), "a"), (at(570), "b"), (at(30), "c"), (at(20), "d"), (at(10), "e"), (at(0), "f")],
        tenant=tenant,
    )
    double.push({"app": "orders", "extra": "y"}, [(at(290), "ERROR g")], tenant=tenant)
    out = client.count('{app="orders"}', **window(10), step=60)
    sent = last_request(double, tenant, "/loki/api/v1/query_range")
    assert sent.params["query"] == 'sum(count_over_time({app="orders"} [60s]))'
    assert sent.params["step"] == "60"
    assert sent.params["start"] == str(END_NS - 540 * S) and sent.params["end"] == str(END_NS)
    series = out.data["series"]
    assert len(series) == 1 and series[0]["labels"] == {}
    counts = [value for _, value in series[0]["values"]]
    assert counts == [2, 0, 0, 0, 0, 1, 0, 0, 0, 4]
    assert out.data["total"] == 7 and out.data["step_seconds"] == 60 and out.data["points"] == 10
    assert out.data["start"] == "2026-11-30T11:50:00Z"
    assert "7 lines in 10 steps" in out.output.splitlines()[0]


def test_count_widens_a_too_fine_step_and_says_so(
    double: LokiDouble, client: LokiClient, tenant: str
) -> None:
    out = client.count('{app="orders"}', **window(60), step=1, max_points=61)
    assert out.data["step_seconds"] == 60
    assert any("step widened from 1s to 1m" in note for note in out.data["cut"])
    assert last_request(double, tenant, "/loki/api/v1/query_range").params["step"] == "60"
    # nothing matched: still a series of zeros, one per step
    assert [v for _, v in out.data["series"][0]["values"]] == [0] * 60


# --- connection ------------------------------------------------------------------------------------


def test_check_connection(double: LokiDouble, client: LokiClient, tenant: str) -> None:
    ok = client.check_connection()
    assert ok.data == {"ready": True, "status": "ready", "labels": 0, "tenant": tenant}
    assert [r.path for r in double.requests[-2:]] == ["/ready", "/loki/api/v1/labels"]
    double.ready = False
    expect_error(ErrorKind.RETRYABLE, client.check_connection)
    double.ready = True
    with LokiClient(source(double.url), 5) as no_tenant:
        expect_error(ErrorKind.DENIED, no_tenant.check_connection)
