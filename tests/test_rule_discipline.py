"""The shipped diagnosis rules on a healthy service: ordinary lines with alarming words, one
transient error, a handled exception in a fresh instance, an old OOM kill, must not produce a
cause; the same error repeated, or on a service that is failing, must. And no log pattern is
slow on a long line: lines are cut before matching."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from agent.incidents.models import AlertInfo, IncidentContext, Observation
from agent.planning.runbook import RunbookPlanner
from infrastructure.configuration.loader import load_config
from infrastructure.executors.status import normalised

CONTEXT = IncidentContext(
    incident_id="inc-rules",
    alert=AlertInfo(labels={"alertname": "Manual", "service": "api"}),
    environment="local-docker",
    service="api",
)


def _status(**overrides: Any) -> Observation:
    fields: dict[str, Any] = {
        "state": "running",
        "exit_code": 0,
        "oom_killed": False,
        "restart_count": 0,
        "up_seconds": 86400,
    }
    fields.update(overrides)
    item = {"container": "api", **normalised(**fields)}
    return Observation(id="obs-1", operation="get_status", target="api", success=True, data=[item])


def _logs(lines: list[str]) -> Observation:
    return Observation(
        id="obs-2",
        operation="get_logs",
        target="api",
        success=True,
        data=[{"container": "api", "lines": lines}],
    )


def _diagnose(status: Observation, lines: list[str]) -> str:
    planner = RunbookPlanner(load_config().agents)
    return planner.diagnose(CONTEXT, [status, _logs(lines)]).category


HARMLESS = [
    "INFO login: authentication failed for user alice@example.com (bad password)",
    "INFO POST /login 401 invalid credentials",
    "WARN metrics: lookup statsd on 10.96.0.10:53: no such host",
    "DEBUG tls: loaded x509: 12 root certificates",
    "WARN upstream read timed out, retrying (attempt 1/3)",
    "WARN redis: connection reset by peer, reconnecting",
    "INFO http client timeout=30s configured",
    "INFO loaded required config from /etc/app",
    "INFO setting LOG_LEVEL not set, using default info",
    "ERROR handled: ValueError: invalid literal for int() with base 10: 'x' (request 42 rejected)",
    "WARN disk usage 81% on /data",
]


@pytest.mark.parametrize("line", HARMLESS)
def test_one_alarming_line_on_a_healthy_service_names_no_cause(line: str) -> None:
    assert _diagnose(_status(), ["INFO started", line, "INFO request served"]) == "unknown"


def test_a_fresh_healthy_instance_is_no_crash() -> None:
    """Started a minute ago and never restarted: a handled exception is not a crash."""
    fresh = _status(up_seconds=60)
    lines = ["Traceback (most recent call last):", "ValueError: bad input", "INFO recovered"]
    assert _diagnose(fresh, lines) == "unknown"


def test_an_oom_kill_long_ago_is_not_now() -> None:
    """The engine remembers the last OOM kill of a container restarted weeks ago."""
    old = _status(oom_killed=True, restart_count=1, up_seconds=2_000_000)
    assert _diagnose(old, ["INFO serving"]) == "unknown"


@pytest.mark.parametrize(
    ("line", "failure_class"),
    [
        ("ERROR lookup orders-db on 10.96.0.10:53: no such host", "dns_failure"),
        ("ERROR x509: certificate signed by unknown authority", "tls_error"),
        ('FATAL: password authentication failed for user "orders"', "auth_failure"),
    ],
)
def test_the_same_error_repeated_or_on_a_failing_service_names_its_cause(
    line: str, failure_class: str
) -> None:
    assert _diagnose(_status(), [line, line, line]) == failure_class
    crashed = _status(state="restarting", exit_code=1, restart_count=4, up_seconds=None)
    assert _diagnose(crashed, [line]) == failure_class


def test_no_log_pattern_stalls_on_a_long_line() -> None:
    """Each pattern of agents.yml on adversarial lines of the configured cap: the planner cuts
    longer lines, so this bounds a diagnosis whatever a log holds. (A bound, not a benchmark:
    a catastrophically backtracking pattern takes seconds to minutes here.)"""
    config = load_config()
    cap = config.agents.log_matching.max_line_chars
    patterns: list[str] = list(config.agents.dependency_discovery.host_patterns)

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key == "log_pattern" and isinstance(inner, str):
                    patterns.append(inner)
                else:
                    walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(config.agents.model_dump())
    # Redaction runs over whole bodies, uncut, at every exit: 20 KB lines here.
    patterns += [p.pattern for p in config.agents.redaction.patterns]
    assert len(patterns) > 30
    units = ("a", "a-", "aA0_-.", "x" * 50 + " ", "a.", ":", "a:1 ", "/a", "'", '"a', "x://a:")
    lines = [unit * (max(cap, 20_000) // len(unit)) for unit in units]
    slowest = []
    for pattern in patterns:
        compiled = re.compile(pattern)
        start = time.perf_counter()
        for line in lines:
            compiled.search(line)
        slowest.append((time.perf_counter() - start, pattern))
    worst, pattern = max(slowest)
    assert worst < 2.0, f"{worst:.1f} s on lines of {cap} chars: {pattern}"
