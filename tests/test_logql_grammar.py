"""Every LogQL query UICI can generate is valid LogQL: Grafana's own grammar
(@grafana/lezer-logql, run by node) parses it without error nodes, and the Loki double, which
also applies Loki's lexer keywords and semantic rules, accepts it. Both are shown to reject
broken queries too, so neither check can pass by accepting everything."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from infrastructure.observability import logql
from tests import logql_grammar
from tests.loki_double import LokiDouble, to_ns

# Values a label or a filter may hold: quotes, backslashes, control characters, unicode and
# the characters that end LogQL syntax (`}`, `|`, `,`, backticks, `#`, `[`).
TEXTS = [
    "web",
    'say "hi"',
    "back\\slash",
    "C:\\Program Files\\app\\",
    "ends with a backslash \\",
    '\\"',
    "two\nlines",
    "tab\there",
    "carriage\r\nreturn",
    "unicode é 漢字 😀",
    "brace } and | pipe",
    '{app="x"} |= "y"',
    "`backtick`",
    "# not a comment",
    "[5m]",
    "a, b = c",
    "'single'",
    "$__interval",
    "nul\x00byte",
    "\x1b[31mred\x1b[0m",
    "bell\a form\f vtab\v del\x7f",
    "bom\ufeff line sep\u2028",
    " leading and trailing ",
]
REGEXES = [
    r"5\d\d",
    r"\bERROR\b",
    r"(?i)timeout|connection refused",
    r"path\\to\\file",
    r"a\.b\.c",
    r"[\"'`]quoted[\"'`]",
    r"^\s+at [a-z.]+\(",
    r"\}|\|",
    "line\nbreak",
]
LABEL_NAMES = ["app", "_private", "k8s_app", "service_name", "Level", "rate", "ip", "sum", "BY_x"]


def generated_queries() -> list[str]:
    """A broad table of what logql.stream_selector/log_query/count_query produce."""
    selectors = [logql.stream_selector({"app": text}) for text in TEXTS]
    selectors += [logql.stream_selector({name: "x"}) for name in LABEL_NAMES]
    selectors += [
        logql.stream_selector({"namespace": "prod", "app": text, "container": "api"})
        for text in TEXTS[:6]
    ]
    selectors.append(logql.stream_selector({"app": "web", "env": ""}))  # env absent
    queries = list(selectors)
    queries += [logql.log_query(selectors[0], contains=[text]) for text in TEXTS]
    queries += [logql.log_query(selectors[1], excludes=[text]) for text in TEXTS]
    queries += [logql.log_query(selectors[2], regex=regex) for regex in REGEXES]
    queries += [
        logql.log_query(selector, contains=[a, b], excludes=[c], regex=regex)
        for selector, (a, b, c), regex in zip(
            selectors, itertools.combinations(TEXTS[:8], 3), itertools.cycle(REGEXES), strict=False
        )
    ]
    queries.append(logql.log_query(selectors[0], contains=["", "x"], excludes=[""], regex=""))
    log_queries = list(queries)
    queries += [
        logql.count_query(query, step)
        for query, step in zip(
            log_queries[::7], itertools.cycle([1, 15, 60, 3600, 0]), strict=False
        )
    ]
    return queries


QUERIES = generated_queries()
# Broken on purpose: the grammar check and the double must both refuse these.
INVALID = {
    '{app="web" |= "error"': "unclosed brace",
    'app="web" |= "error"': "no braces",
    '{app="web"} |= "unterminated': "unterminated string",
    'sum(count_over_time({app="web"} [60s])': "unclosed parenthesis",
    '{app="web"} |= error': "unquoted filter",
    "": "empty",
}


@pytest.fixture(scope="module")
def double() -> Iterator[LokiDouble]:
    with LokiDouble() as server:
        yield server


@pytest.fixture(scope="module")
def http(double: LokiDouble) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=double.url, timeout=5) as client:
        yield client


def query_range(http: httpx.Client, query: str) -> httpx.Response:
    end = to_ns(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    return http.get(
        "/loki/api/v1/query_range",
        params={"query": query, "start": str(end - 3600 * 10**9), "end": str(end)},
    )


def test_the_table_is_broad() -> None:
    assert len(set(QUERIES)) == len(QUERIES) > 150
    assert sum("count_over_time" in q for q in QUERIES) >= 20
    assert sum("|~" in q for q in QUERIES) >= 20
    # escaped, never raw: one query is one line
    assert any("\\n" in q for q in QUERIES) and not any("\n" in q for q in QUERIES)
    assert any("\\u0000" in q for q in QUERIES)


def test_lezer_logql_parses_every_generated_query() -> None:
    results = logql_grammar.check(QUERIES)
    failed = [(r["query"], r["errors"]) for r in results if not r["ok"]]
    assert failed == []
    assert logql_grammar.installed_version() == "0.3.0"


def test_lezer_logql_flags_invalid_queries() -> None:
    results = logql_grammar.check(list(INVALID))
    accepted = [INVALID[r["query"]] for r in results if r["ok"]]
    assert accepted == []


def test_the_double_accepts_every_generated_query(http: httpx.Client) -> None:
    refused = []
    for query in QUERIES:
        response = query_range(http, query)
        if response.status_code != 200 or response.json()["status"] != "success":
            refused.append((query, response.status_code, response.text))
    assert refused == []


@pytest.mark.parametrize("query", list(INVALID))
def test_the_double_answers_lokis_error_for_invalid_queries(http: httpx.Client, query: str) -> None:
    response = query_range(http, query)
    assert response.status_code == 400
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text.startswith("parse error at line 1, col ")
    assert (
        ": syntax error: unexpected " in response.text or "literal not terminated" in response.text
    )


@pytest.mark.parametrize("text", TEXTS)
def test_quoting_is_exact_so_filters_and_selectors_match_the_very_text(
    double: LokiDouble, http: httpx.Client, text: str
) -> None:
    """The double decodes Go string escapes as Loki does: the generated selector picks the
    stream whose label holds exactly `text`, and the filter finds exactly the line with it."""
    double.clear()
    end = to_ns(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    double.push({"app": text}, [(end - 20 * 10**9, f"<{text}>"), (end - 10**10, "other")])
    double.push({"app": text + "x"}, [(end - 10**10, f"<{text}> in the wrong stream")])
    query = logql.log_query(logql.stream_selector({"app": text}), contains=[f"<{text}>"])
    response = query_range(http, query)
    assert response.status_code == 200, response.text
    lines = [v[1] for s in response.json()["data"]["result"] for v in s["values"]]
    assert lines == [f"<{text}>"]


def test_regex_filters_reach_loki_unchanged(double: LokiDouble, http: httpx.Client) -> None:
    double.clear()
    end = to_ns(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    lines = ["GET / 503", "GET / 200", "at path\\to\\file", "a.b.c", "axbxc"]
    double.push({"app": "r"}, [(end - (10 - i) * 10**9, line) for i, line in enumerate(lines)])
    found = {}
    for regex in (r"5\d\d", r"path\\to\\file", r"a\.b\.c"):
        query = logql.log_query(logql.stream_selector({"app": "r"}), regex=regex)
        result = query_range(http, query).json()["data"]["result"]
        found[regex] = [v[1] for s in result for v in s["values"]]
    assert found == {
        r"5\d\d": ["GET / 503"],
        r"path\\to\\file": ["at path\\to\\file"],
        r"a\.b\.c": ["a.b.c"],
    }


def test_reserved_label_names_are_refused_and_each_reservation_is_needed(
    http: httpx.Client,
) -> None:
    """stream_selector refuses every reserved name (in any case); and for each one, Loki's
    lexer (the double) or Grafana's grammar really does reject it as a label name."""
    for name in logql.RESERVED_LABEL_NAMES:
        for spelling in (name, name.upper()):
            with pytest.raises(ValueError, match="keyword"):
                logql.stream_selector({spelling: "x"})
    raw = [f'{{app="web", {name}="x"}}' for name in sorted(logql.RESERVED_LABEL_NAMES)]
    grammar = {r["query"]: r["ok"] for r in logql_grammar.check(raw)}
    double = {q: query_range(http, q).status_code == 200 for q in raw}
    unneeded = [q for q in raw if grammar[q] and double[q]]
    assert unneeded == []


def test_builders_refuse_what_loki_would_refuse() -> None:
    with pytest.raises(ValueError, match="at least one label"):
        logql.stream_selector({})
    with pytest.raises(ValueError, match="non-empty value"):
        logql.stream_selector({"app": "", "env": ""})
    with pytest.raises(ValueError, match="not a label name"):
        logql.stream_selector({"1app": "x"})
    with pytest.raises(ValueError, match="not a label name"):
        logql.stream_selector({"app-name": "x"})
    with pytest.raises(ValueError, match="surrogate"):
        logql.quote("half \ud800 a pair")
