"""The Loki double through plain httpx, the way any Loki client sees it: push, then read back
through query_range, query, labels and series, with Loki's parameter defaults, validation
messages, parse errors and tenancy. If these hold, a client test against the double is talking
to something with Loki's shapes and texts, not to a mock that agrees with the client."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.loki_double import (
    ERR_INSTANT_LOG_QUERY,
    ERR_MATCHERS,
    NO_ORG_ID,
    TIMEOUT_TEXT,
    LokiDouble,
    now_ns,
    parse_timestamp,
    to_ns,
)

S = 10**9
# A fixed moment well inside the double's clock range; windows are given explicitly.
T0 = to_ns(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))


@pytest.fixture(scope="module")
def server() -> Iterator[LokiDouble]:
    with LokiDouble() as started:
        yield started


@pytest.fixture
def double(server: LokiDouble) -> LokiDouble:
    """The module's double, emptied: every test starts from no streams and no scripts."""
    server.clear()
    server.clear_failures()
    server.clear_requests()
    server.ready = True
    return server


@pytest.fixture(scope="module")
def http(server: LokiDouble) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5) as client:
        yield client


def query_range(http: httpx.Client, query: str, **params: Any) -> httpx.Response:
    return http.get(
        "/loki/api/v1/query_range",
        params={"query": query, **{k: str(v) for k, v in params.items()}},
    )


def success(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["status"] == "success"
    return body


def streams(response: httpx.Response) -> list[dict[str, Any]]:
    data = success(response)["data"]
    assert data["resultType"] == "streams"
    assert "summary" in data["stats"]
    result: list[dict[str, Any]] = data["result"]
    return result


def lines_of(response: httpx.Response) -> list[str]:
    return [line for stream in streams(response) for _, line in stream["values"]]


def error_text(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    return response.text


def seed(double: LokiDouble) -> None:
    """Two services, three streams, entries one second apart from T0."""
    double.push(
        {"app": "web", "level": "error"},
        [(T0 + 1 * S, "web error 1"), (T0 + 3 * S, "web error 2"), (T0 + 5 * S, "web error 3")],
    )
    double.push({"app": "web", "level": "info"}, [(T0 + 2 * S, "web info 1"), (T0 + 4 * S, "ok")])
    double.push({"app": "db", "level": "info"}, [(T0 + 6 * S, "db ready")])


WINDOW = {"start": T0, "end": T0 + 60 * S}


# --- push ----------------------------------------------------------------------------------------


def test_http_push_then_query_range_round_trip(double: LokiDouble, http: httpx.Client) -> None:
    now = now_ns()
    pushed = http.post(
        "/loki/api/v1/push",
        json={
            "streams": [
                {
                    "stream": {"app": "web", "env": "prod"},
                    "values": [
                        [str(now - 2 * S), "first"],
                        [str(now - S), "second", {"trace": "x"}],
                    ],
                }
            ]
        },
    )
    assert pushed.status_code == 204 and pushed.content == b""
    result = streams(query_range(http, '{app="web"}'))  # default window: the last hour
    assert result == [
        {
            # Loki 3 discovers service_name from the first of its candidate labels
            "stream": {"app": "web", "env": "prod", "service_name": "web"},
            "values": [[str(now - S), "second"], [str(now - 2 * S), "first"]],  # backward
        }
    ]


def test_gzip_push_and_service_name_fallback(double: LokiDouble, http: httpx.Client) -> None:
    body = json.dumps({"streams": [{"stream": {"host": "h1"}, "values": [[str(now_ns()), "x"]]}]})
    pushed = http.post(
        "/loki/api/v1/push",
        content=gzip.compress(body.encode()),
        headers={"Content-Type": "application/json; charset=utf-8", "Content-Encoding": "gzip"},
    )
    assert pushed.status_code == 204
    assert double.streams() == [{"host": "h1", "service_name": "unknown_service"}]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "cannot decode the push request"),
        (
            b'{"streams": [{"stream": {}, "values": [["1", "x"]]}]}',
            "error at least one label pair is required per stream",
        ),
        (
            b'{"streams": [{"stream": {"a": "b"}, "values": [[1570818238000000000, "x"]]}]}',
            "must be a string",
        ),
        (
            b'{"streams": [{"stream": {"a": "b"}, "values": [["soon", "x"]]}]}',
            'strconv.ParseInt: parsing "soon": invalid syntax',
        ),
        (b'{"streams": [{"stream": {"1a": "b"}, "values": []}]}', "invalid label name"),
    ],
)
def test_bad_push_bodies_answer_400_text(
    double: LokiDouble, http: httpx.Client, body: bytes, expected: str
) -> None:
    response = http.post(
        "/loki/api/v1/push", content=body, headers={"Content-Type": "application/json"}
    )
    assert expected in error_text(response)


def test_push_rejects_entries_older_than_a_week_and_keeps_the_rest(
    double: LokiDouble, http: httpx.Client
) -> None:
    now = now_ns()
    response = http.post(
        "/loki/api/v1/push",
        json={
            "streams": [
                {
                    "stream": {"app": "a"},
                    "values": [[str(now - 8 * 86400 * S), "old"], [str(now), "new"]],
                }
            ]
        },
    )
    text = error_text(response)
    assert "entry for stream '{app=\"a\"}' has timestamp too old:" in text
    assert text.endswith("total ignored: 1 out of 2")
    assert lines_of(query_range(http, '{app="a"}')) == ["new"]


def test_protobuf_pushes_are_refused_honestly(double: LokiDouble, http: httpx.Client) -> None:
    response = http.post(
        "/loki/api/v1/push", content=b"\x00", headers={"Content-Type": "application/x-protobuf"}
    )
    assert "decodes only Content-Type application/json" in error_text(response)


# --- log queries ---------------------------------------------------------------------------------


def test_directions_order_entries_and_limit_applies_across_streams(
    double: LokiDouble, http: httpx.Client
) -> None:
    seed(double)
    backward = query_range(http, '{app="web"}', **WINDOW, limit=3)
    assert sorted(lines_of(backward)) == ["ok", "web error 2", "web error 3"]  # the 3 newest
    for stream in streams(backward):
        stamps = [int(ts) for ts, _ in stream["values"]]
        assert stamps == sorted(stamps, reverse=True)
    forward = query_range(http, '{app="web"}', **WINDOW, limit=3, direction="FORWARD")
    assert sorted(lines_of(forward)) == ["web error 1", "web error 2", "web info 1"]  # 3 oldest
    for stream in streams(forward):
        stamps = [int(ts) for ts, _ in stream["values"]]
        assert stamps == sorted(stamps)


def test_defaults_limit_100_direction_backward_window_last_hour(
    double: LokiDouble, http: httpx.Client
) -> None:
    now = now_ns()
    double.push({"app": "many"}, [(now - i * S, f"line {i}") for i in range(1, 151)])
    double.push({"app": "many"}, [(now - 2 * 3600 * S, "two hours ago")])
    result = streams(http.get("/loki/api/v1/query_range", params={"query": '{app="many"}'}))
    values = result[0]["values"]
    assert len(values) == 100
    assert values[0][1] == "line 1" and values[-1][1] == "line 100"


def test_window_start_inclusive_end_exclusive(double: LokiDouble, http: httpx.Client) -> None:
    double.push({"app": "edge"}, [(T0, "at start"), (T0 + 10 * S, "at end")])
    assert lines_of(query_range(http, '{app="edge"}', start=T0, end=T0 + 10 * S)) == ["at start"]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ('{app="web"}', {"web error 1", "web error 2", "web error 3", "web info 1", "ok"}),
        ('{app="web", level="error"}', {"web error 1", "web error 2", "web error 3"}),
        ('{app!="web", level="info"}', {"db ready"}),
        ('{app=~"w.b"}', {"web error 1", "web error 2", "web error 3", "web info 1", "ok"}),
        ('{app=~"we"}', set()),  # regex matchers are anchored at both ends
        ('{app=~"db|web", level!~"err.*"}', {"web info 1", "ok", "db ready"}),
        (
            '{app!=""}',
            {"web error 1", "web error 2", "web error 3", "web info 1", "ok", "db ready"},
        ),
        ('{app=`web`, level="\\x69nfo"}', {"web info 1", "ok"}),  # raw string, Go escape
    ],
)
def test_stream_selectors(
    double: LokiDouble, http: httpx.Client, selector: str, expected: set[str]
) -> None:
    seed(double)
    assert set(lines_of(query_range(http, selector, **WINDOW))) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('{app="web"} |= "error"', {"web error 1", "web error 2", "web error 3"}),
        ('{app="web"} != "error"', {"web info 1", "ok"}),
        ('{app="web"} |~ "error [13]"', {"web error 1", "web error 3"}),
        ('{app="web"} !~ "^web"', {"ok"}),
        ('{app="web"} |= "web" != "info" |~ "[23]$"', {"web error 2", "web error 3"}),
        ('{app="web"} |= "ok" or "info"', {"ok", "web info 1"}),
        ('{app=~".+"} |= "ready" # a comment', {"db ready"}),
    ],
)
def test_line_filters(
    double: LokiDouble, http: httpx.Client, query: str, expected: set[str]
) -> None:
    seed(double)
    assert set(lines_of(query_range(http, query, **WINDOW))) == expected


# --- metric queries --------------------------------------------------------------------------------


def matrix(response: httpx.Response) -> list[dict[str, Any]]:
    data = success(response)["data"]
    assert data["resultType"] == "matrix"
    result: list[dict[str, Any]] = data["result"]
    return result


def test_count_over_time_values_per_step(double: LokiDouble, http: httpx.Client) -> None:
    seed(double)
    result = matrix(
        query_range(
            http,
            'sum(count_over_time({app="web"}[2s]))',
            start=T0 + 2 * S,
            end=T0 + 8 * S,
            step=2,
        )
    )
    # windows (t-2s, t]: (0,2] has 1 and 2, (2,4] has 3 and 4, (4,6] has 5, (6,8] nothing
    secs = T0 // S
    assert result == [{"metric": {}, "values": [[secs + 2, "2"], [secs + 4, "2"], [secs + 6, "1"]]}]


def test_metric_queries_rate_bytes_and_grouping(double: LokiDouble, http: httpx.Client) -> None:
    seed(double)
    window = {"start": T0 + 10 * S, "end": T0 + 10 * S, "step": "1s"}
    by_level = matrix(
        query_range(http, 'sum by (level) (count_over_time({app=~".+"}[10s]))', **window)
    )
    assert [(r["metric"], r["values"][0][1]) for r in by_level] == [
        ({"level": "error"}, "3"),
        ({"level": "info"}, "3"),
    ]
    per_stream = matrix(query_range(http, 'count_over_time({app="web"}[10s])', **window))
    assert [r["metric"]["level"] for r in per_stream] == ["error", "info"]
    assert "service_name" in per_stream[0]["metric"]
    rate = matrix(query_range(http, 'sum(rate({app="web", level="error"}[10s]))', **window))
    assert rate[0]["values"][0][1] == "0.3"
    size = matrix(query_range(http, 'sum(bytes_over_time({app="db"}[10s]))', **window))
    assert size[0]["values"][0][1] == str(len("db ready"))
    without = matrix(
        query_range(
            http,
            'count without (level, service_name) (count_over_time({app=~".+"}[10s]))',
            **window,
        )
    )
    assert [(r["metric"], r["values"][0][1]) for r in without] == [
        ({"app": "db"}, "1"),
        ({"app": "web"}, "2"),
    ]


def test_default_step_is_range_over_250(double: LokiDouble, http: httpx.Client) -> None:
    double.push({"app": "s"}, [(T0 + i * S, "x") for i in range(0, 1000, 10)])
    result = matrix(
        query_range(http, 'sum(count_over_time({app="s"}[1h]))', start=T0, end=T0 + 1000 * S)
    )
    stamps = [t for t, _ in result[0]["values"]]
    assert stamps[1] - stamps[0] == 4  # floor(1000 s / 250)


def test_instant_queries(double: LokiDouble, http: httpx.Client) -> None:
    seed(double)
    vector = success(
        http.get(
            "/loki/api/v1/query",
            params={"query": 'sum(count_over_time({app="web"}[1m]))', "time": str(T0 + 30 * S)},
        )
    )["data"]
    assert vector["resultType"] == "vector"
    assert vector["result"] == [{"metric": {}, "value": [T0 // S + 30, "5"]}]
    log = http.get("/loki/api/v1/query", params={"query": '{app="web"}'})
    assert error_text(log) == ERR_INSTANT_LOG_QUERY


# --- labels and series ----------------------------------------------------------------------------


def test_labels_values_and_series(double: LokiDouble, http: httpx.Client) -> None:
    seed(double)
    window = {"start": str(T0), "end": str(T0 + 60 * S)}
    labels = success(http.get("/loki/api/v1/labels", params=window))
    assert labels["data"] == ["app", "level", "service_name"]
    values = success(
        http.get("/loki/api/v1/label/level/values", params={**window, "query": '{app="web"}'})
    )
    assert values["data"] == ["error", "info"]
    assert success(http.get("/loki/api/v1/label/app/values", params=window))["data"] == [
        "db",
        "web",
    ]
    # Loki leaves `data` out of an empty label answer (omitempty)
    empty = success(http.get("/loki/api/v1/label/nope/values", params=window))
    assert empty == {"status": "success"}
    outside = success(
        http.get("/loki/api/v1/labels", params={"start": str(T0 - 60 * S), "end": str(T0)})
    )
    assert "data" not in outside
    series = success(
        http.get(
            "/loki/api/v1/series",
            params=[("match[]", '{app="db"}'), ("match[]", '{level="error"}'), *window.items()],
        )
    )
    assert series["data"] == [
        {"app": "db", "level": "info", "service_name": "db"},
        {"app": "web", "level": "error", "service_name": "web"},
    ]
    everything = success(http.get("/loki/api/v1/series", params={**window, "match[]": "{}"}))
    assert len(everything["data"]) == 3
    only = http.get("/loki/api/v1/series", params={**window, "match[]": '{app="db"} |= "x"'})
    assert error_text(only) == "parse error : only label matchers are supported"
    bad = http.get("/loki/api/v1/labels", params={**window, "query": '{app=~".*"}'})
    assert error_text(bad) == f"parse error : {ERR_MATCHERS}"


# --- tenancy and auth -----------------------------------------------------------------------------


def test_tenancy_needs_org_id_and_keeps_tenants_apart() -> None:
    with LokiDouble(auth_enabled=True) as double, httpx.Client(base_url=double.url) as http:
        double.push({"app": "web"}, [(T0 + S, "from t1")], tenant="t1")
        double.push({"app": "web"}, [(T0 + 2 * S, "from t2")], tenant="t2")
        missing = query_range(http, '{app="web"}', **WINDOW)
        assert error_text(missing, 401) == NO_ORG_ID == "no org id\n"
        push = http.post("/loki/api/v1/push", json={"streams": []})
        assert error_text(push, 401) == NO_ORG_ID
        one = http.get(
            "/loki/api/v1/query_range",
            params={"query": '{app="web"}', "start": str(T0), "end": str(T0 + 60 * S)},
            headers={"X-Scope-OrgID": "t1"},
        )
        assert lines_of(one) == ["from t1"]
        both = http.get(
            "/loki/api/v1/query_range",
            params={"query": '{app="web"}', "start": str(T0), "end": str(T0 + 60 * S)},
            headers={"X-Scope-OrgID": "t1|t2"},
        )
        assert {s["stream"]["__tenant_id__"]: s["values"][0][1] for s in streams(both)} == {
            "t1": "from t1",
            "t2": "from t2",
        }
        assert http.get("/ready").text == "ready\n"  # not behind the tenant check


def test_bearer_token_is_checked_first() -> None:
    with LokiDouble(require_token="s3cret") as double, httpx.Client(base_url=double.url) as http:
        assert http.get("/loki/api/v1/labels").status_code == 401
        wrong = http.get("/loki/api/v1/labels", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        right = http.get("/loki/api/v1/labels", headers={"Authorization": "Bearer s3cret"})
        assert success(right) == {"status": "success"}


# --- validation and parse errors ------------------------------------------------------------------

HOUR = 3600 * S


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"start": T0 + 10 * S, "end": T0},
            "end timestamp must not be before or equal to start time",
        ),
        (
            {"step": "0"},
            "zero or negative query resolution step widths are not accepted. Try a positive integer",
        ),
        (
            {"step": "-5"},
            "zero or negative query resolution step widths are not accepted. Try a positive integer",
        ),
        (
            {"start": T0, "end": T0 + 11001 * S, "step": "1"},
            "exceeded maximum resolution of 11,000 points per time series. Try increasing the value of the step parameter",
        ),
        ({"limit": "0"}, "limit must be a positive value"),
        ({"limit": "-3"}, "limit must be a positive value"),
        ({"limit": "ten"}, 'strconv.Atoi: parsing "ten": invalid syntax'),
        (
            {"limit": "5001"},
            "max entries limit per query exceeded, limit > max_entries_limit_per_query (5001 > 5000)",
        ),
        ({"direction": "sideways"}, "invalid direction 'sideways'"),
        ({"step": "soon"}, 'cannot parse "soon" to a valid duration'),
        (
            {"start": "yesterday"},
            "could not parse 'start' parameter: strconv.ParseInt: parsing \"yesterday\": invalid syntax",
        ),
        (
            {"end": "2026-13-01"},
            "could not parse 'end' parameter: strconv.ParseInt: parsing \"2026-13-01\": invalid syntax",
        ),
        (
            {"since": "HI!"},
            "could not parse 'since' parameter: not a valid duration string: \"HI!\"",
        ),
        (
            {"start": T0, "end": T0 + 722 * HOUR, "step": "1h"},
            "the query time range exceeds the limit (query length: 722h0m0s, limit: 30d1h)",
        ),
    ],
)
def test_validation_errors_use_lokis_texts(
    double: LokiDouble, http: httpx.Client, params: dict[str, Any], expected: str
) -> None:
    assert error_text(query_range(http, '{app="web"}', **params)) == expected


def test_equal_start_and_end_pass_despite_the_wording(
    double: LokiDouble, http: httpx.Client
) -> None:
    assert streams(query_range(http, '{app="web"}', start=T0, end=T0)) == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            '{foo="bar"',
            "parse error at line 1, col 11: syntax error: unexpected $end, expecting } or ,",
        ),
        ('{foo="bar}', "parse error at line 1, col 6: literal not terminated"),
        (
            'unk({foo="bar"}[5m])',
            "parse error at line 1, col 1: syntax error: unexpected IDENTIFIER",
        ),
        ("", "parse error at line 1, col 1: syntax error: unexpected $end"),
        ('{app=~".*"}', f"parse error : {ERR_MATCHERS}"),
        ('{foo!="bar"}', f"parse error : {ERR_MATCHERS}"),
        ('{app=""}', f"parse error : {ERR_MATCHERS}"),
        ("{}", f"parse error : {ERR_MATCHERS}"),
        (
            'sum_over_time({a="b"}[5m])',
            "parse error : invalid aggregation sum_over_time without unwrap",
        ),
        ('rate({a="b"}[5x])', 'parse error at line 1, col 13: not a valid duration string: "5x"'),
        (
            '{on="x"}',
            "parse error at line 1, col 2: syntax error: unexpected on, expecting IDENTIFIER or }",
        ),
        (
            '{JSON="x"}',
            "parse error at line 1, col 2: syntax error: unexpected json, expecting IDENTIFIER or }",
        ),
        (
            '{a="b"} |= c',
            "parse error at line 1, col 12: syntax error: unexpected IDENTIFIER, expecting STRING",
        ),
        ('{a="\\q"}', "parse error at line 1, col 4: invalid char escape"),
        ('{a="b"}\n|= "x" |', "parse error at line 2, col 9: syntax error: unexpected $end"),
    ],
)
def test_parse_errors_have_lokis_shape(
    double: LokiDouble, http: httpx.Client, query: str, expected: str
) -> None:
    assert error_text(query_range(http, query, **WINDOW)) == expected


@pytest.mark.parametrize(
    "query",
    ['{a="b"} | json', 'topk(5, sum(rate({a="b"}[1m])))', 'count_over_time({a="b"})'],
)
def test_unimplemented_logql_is_refused_as_a_syntax_error(
    double: LokiDouble, http: httpx.Client, query: str
) -> None:
    assert error_text(query_range(http, query, **WINDOW)).startswith("parse error at line 1, col ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (str(T0 // S), T0),  # <= 10 digits: seconds
        (str(T0), T0),  # nanoseconds
        (f"{T0 // S}.25", T0 + S // 4),  # a '.': float seconds (milliseconds kept)
        (f"{T0 // S}.0004", T0),
        ("2026-11-30T12:00:00Z", T0),
        ("2026-11-30T13:00:00.123456789+01:00", T0 + 123456789),
    ],
)
def test_timestamps_parse_like_loki(text: str, expected: int) -> None:
    assert parse_timestamp(text, 0) == expected


def test_timestamp_formats_select_the_same_window(double: LokiDouble, http: httpx.Client) -> None:
    seed(double)
    by_ns = lines_of(query_range(http, '{app="web"}', start=T0 + 2 * S, end=T0 + 4 * S))
    by_seconds = lines_of(
        query_range(http, '{app="web"}', start=str(T0 // S + 2), end="2026-11-30T12:00:04Z")
    )
    assert by_ns == by_seconds == ["web error 2", "web info 1"]


# --- scripted failures, records, other endpoints --------------------------------------------------


def test_scripted_failures_then_success_and_records(double: LokiDouble, http: httpx.Client) -> None:
    double.fail(504, times=2, path="query_range")
    first = query_range(http, '{app="web"}')
    assert error_text(first, 504) == TIMEOUT_TEXT
    assert error_text(query_range(http, '{app="web"}'), 504) == TIMEOUT_TEXT
    assert streams(query_range(http, '{app="web"}', limit=7)) == []
    double.fail(503, "upstream connect error", path="labels")
    assert error_text(http.get("/loki/api/v1/labels"), 503) == "upstream connect error"
    recorded = [r for r in double.requests if r.path == "/loki/api/v1/query_range"]
    assert [r.status for r in recorded] == [504, 504, 200]
    assert recorded[-1].params == {"query": '{app="web"}', "limit": "7"}
    assert recorded[-1].headers["user-agent"].startswith("python-httpx")


def test_post_form_queries_and_other_endpoints(double: LokiDouble, http: httpx.Client) -> None:
    seed(double)
    posted = http.post(
        "/loki/api/v1/query_range",
        data={"query": '{app="db"}', "start": str(T0), "end": str(T0 + 60 * S)},
    )
    assert lines_of(posted) == ["db ready"]
    build = success_json(http.get("/loki/api/v1/status/buildinfo"))
    assert set(build) == {"version", "revision", "branch", "buildUser", "buildDate", "goVersion"}
    assert http.get("/loki/api/v1/tail").text == "404 page not found\n"
    double.ready = False
    assert http.get("/ready").status_code == 503


def success_json(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body
