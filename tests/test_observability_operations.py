"""The metric and log operations as every operation is used: validated by the registry against
the environment's observability sources, translated into the promtool / logcli command a dry
run shows and the executor call that runs the same query, run through the executor against a
real Prometheus (Debian's, with known history) and the Loki double, and planned by the
planner where the environment has the source.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.incidents.context import LabelConventions, context_from_alert, expression_of
from agent.incidents.models import AlertInfo, IncidentContext, Observation
from agent.planning.observability import ObservabilitySteps
from agent.planning.runbook import RunbookPlanner
from infrastructure.configuration.loader import UICIConfig, load_config
from infrastructure.executors.base import ErrorKind
from infrastructure.executors.factory import create_executor
from infrastructure.observability.context import always_set
from infrastructure.registry import CallValidationError, OperationRegistry
from infrastructure.translator import CommandTranslator
from tests.conftest import SHIPPED_CONFIG
from tests.executor_support import run_operation
from tests.loki_double import LokiDouble
from tests.prometheus_data import History, LocalPrometheus, available

PROM = "http://127.0.0.1:19999"
LOKI = "http://127.0.0.1:13100"
URLS = {"UICI_PROMETHEUS_URL": PROM, "UICI_LOKI_URL": LOKI}
OBSERVABILITY_OPERATIONS = {
    "query_metrics",
    "query_metrics_range",
    "list_metrics",
    "list_metric_label_values",
    "check_alert_expression",
    "get_resource_trend",
    "query_logs",
    "count_logs",
    "list_log_labels",
    "list_log_label_values",
}


@pytest.fixture(scope="module")
def shipped() -> UICIConfig:
    return load_config(SHIPPED_CONFIG, environ=dict(URLS))


@pytest.fixture(scope="module")
def without_sources() -> UICIConfig:
    return load_config(SHIPPED_CONFIG, environ={})


def _edited(tmp: Path, edit: Any, environ: dict[str, str]) -> UICIConfig:
    shutil.copytree(SHIPPED_CONFIG, tmp, dirs_exist_ok=True)
    path = tmp / "environments.yml"
    document = yaml.safe_load(path.read_text())
    edit(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_config(tmp, environ=environ)


def command(
    config: UICIConfig,
    operation: str,
    environment: str = "local-docker",
    target: str | None = None,
    **params: Any,
) -> list[str]:
    registry = OperationRegistry.from_config(config)
    call = registry.validate(operation, environment, params, target, allow_disabled=True)
    return CommandTranslator.from_config(config).translate(call).command


def refusal(
    config: UICIConfig,
    operation: str,
    target: str | None = None,
    environment: str = "local-docker",
    **params: Any,
) -> str:
    with pytest.raises(CallValidationError) as raised:
        OperationRegistry.from_config(config).validate(
            operation, environment, params, target, allow_disabled=True
        )
    return str(raised.value)


# --- the dry run shows the query that runs ---------------------------------------------------


def test_a_promql_query_names_the_service_by_its_labels(shipped: UICIConfig) -> None:
    query = 'sum(rate(http_requests_total{$service, code=~"5.."}[5m]))'
    argv = command(shipped, "query_metrics_range", target="web", query=query, since="2h")
    assert argv[:3] == ["promtool", "query", "range"]
    assert argv[-2:] == [PROM, 'sum(rate(http_requests_total{name="web", code=~"5.."}[5m]))']
    start, end, step = argv[3], argv[4], argv[5]
    assert start.startswith("--start=") and end.startswith("--end=")
    # The step the client will use (2 h in at most 300 points), shown as it is sent.
    assert step == "--step=25s"
    # The window is resolved once, to absolute times: two hours.
    from infrastructure.observability.common import parse_time

    seconds = (parse_time(end[6:], "end") - parse_time(start[8:], "start")).total_seconds()
    assert seconds == 7200
    # On Kubernetes the same service is named by namespace and container.
    argv = command(shipped, "query_metrics", "staging-k8s", "default/cart", query="up{$service}")
    assert argv == [
        "promtool",
        "query",
        "instant",
        PROM,
        'up{namespace="default", container="cart"}',
    ]
    # The namespaces the environment may read bound these reads too, as every other read.
    text = refusal(shipped, "query_logs", "kube-system/coredns", "staging-k8s")
    assert "namespace 'kube-system' is not in" in text and "allowed_namespaces" in text
    assert "namespace 'kube-system'" in refusal(
        shipped, "query_metrics", "kube-system/coredns", "staging-k8s", query="up{$service}"
    )


def test_a_log_query_is_built_from_typed_filters_and_quoted(shipped: UICIConfig) -> None:
    argv = command(
        shipped,
        "query_logs",
        target="web",
        contains=['said "no"', "db"],
        excludes=["healthcheck"],
        regex="(?i)timeout|refused",
        direction="forward",
        limit=500,
    )
    assert argv[:3] == ["logcli", "query", f"--addr={LOKI}"]
    assert "--limit=500" in argv and "--forward" in argv
    assert not any(a.startswith("--org-id") for a in argv)  # no tenant configured
    assert argv[-1] == (
        '{container="web"} |= "said \\"no\\"" |= "db" != "healthcheck" |~ "(?i)timeout|refused"'
    )
    # A Kubernetes service's stream is its namespace and app; a tenant is passed on.
    tenant = load_config(SHIPPED_CONFIG, environ={**URLS, "UICI_LOKI_TENANT": "team-a"})
    argv = command(tenant, "query_logs", "staging-k8s", "cart")
    assert "--org-id=team-a" in argv
    assert argv[-1] == '{namespace="default", app="cart"}'
    # Counting lines per interval: the step is widened to stay within max_points.
    argv = command(shipped, "count_logs", target="web", regex="(?i)error", since="1h")
    assert argv[-2:] == [
        "--step=13s",
        'sum(count_over_time({container="web"} |~ "(?i)error" [13s]))',
    ]


def test_every_observability_operation_translates_in_every_environment_type(
    shipped: UICIConfig,
) -> None:
    registry = OperationRegistry.from_config(shipped)
    required = {"query": "up", "label": "job", "resource": "memory"}
    for environment in ("local-docker", "staging-k8s", "oci-prod"):
        for name in OBSERVABILITY_OPERATIONS:
            spec = registry.describe(name)
            params = {p: required[p] for p, s in spec.parameters.items() if s.required}
            target = None if spec.target == "none" else "svc"
            call = registry.validate(name, environment, params, target, allow_disabled=True)
            translated = CommandTranslator.from_config(shipped).translate(call)
            assert translated.command[0] in ("promtool", "logcli"), translated.command
            assert all(isinstance(part, str) and part for part in translated.command)
            # The values the translation derives are set wherever an argument takes them.
            derived = [
                a for a, source in _sources(shipped, translated) if source in always_set(spec)
            ]
            assert all(translated.arguments[a] is not None for a in derived), translated.arguments


def _sources(config: UICIConfig, translated: Any) -> list[tuple[str, str]]:
    """(executor argument, the value it is taken from) of a translated call."""
    translation = config.translations.translations[translated.environment_type][
        translated.operation
    ]
    return list(translation.args.items())


# --- the registry refuses what the environment cannot answer -----------------------------------


def test_without_a_source_the_operation_is_refused_with_the_fix(
    without_sources: UICIConfig, tmp_path: Path
) -> None:
    text = refusal(without_sources, "query_metrics", query="up")
    assert "has no url (it is off)" in text and "observability_sources.prometheus.main.url" in text
    text = refusal(without_sources, "query_logs", "web")
    assert "needs Loki" in text
    # Not offered where they cannot run: the LLM's catalogue and `uici ops list --env` use this.
    offered = {
        n for n, _ in OperationRegistry.from_config(without_sources).operations_for("local-docker")
    }
    assert not offered & OBSERVABILITY_OPERATIONS
    offered = {
        n
        for n, _ in OperationRegistry.from_config(
            load_config(SHIPPED_CONFIG, environ=dict(URLS))
        ).operations_for("local-docker")
    }
    assert offered >= OBSERVABILITY_OPERATIONS

    def name_none(document: dict[str, Any]) -> None:
        document["environments"]["local-docker"]["observability"] = {"prometheus": ""}

    config = _edited(tmp_path / "none", name_none, dict(URLS))
    text = refusal(config, "query_metrics", query="up")
    assert "environment 'local-docker' names none" in text

    def unknown(document: dict[str, Any]) -> None:
        document["environments"]["local-docker"]["observability"] = {"loki": "elsewhere"}

    with pytest.raises(
        Exception, match=r"names 'elsewhere', which observability_sources\.loki does not define"
    ):
        _edited(tmp_path / "unknown", unknown, dict(URLS))


def test_calls_that_cannot_say_whose_data_they_read_are_refused(shipped: UICIConfig) -> None:
    assert "needs a target" in refusal(shipped, "query_metrics", query="up{$service}")
    assert "needs a target or a selector" in refusal(shipped, "query_logs")
    assert "needs a target or a selector" in refusal(shipped, "count_logs")
    # Kubernetes has no disk query configured: said, not guessed.
    text = refusal(shipped, "get_resource_trend", "cart", "staging-k8s", resource="disk")
    assert "no query for disk usage" in text
    # Typed parameters: a selector must be one, times must be times, limits are bounded.
    assert "must match" in refusal(shipped, "query_logs", selector="app=web")
    assert "must match" in refusal(shipped, "query_metrics_range", query="up", start="yesterday")
    assert "out of bounds" in refusal(shipped, "query_logs", "web", limit=50000)
    assert "out of bounds" in refusal(shipped, "query_metrics_range", query="up", max_points=5)
    assert "control characters" in refusal(shipped, "query_metrics", query="up\nor vector(1)")


# --- run for real -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrometheus]:
    reason = available()
    if reason:
        pytest.skip(reason)
    history = History.ending_now()
    with LocalPrometheus(tmp_path_factory.mktemp("prom"), history, [], None) as server:
        yield server


@pytest.fixture(scope="module")
def loki() -> Iterator[LokiDouble]:
    with LokiDouble() as double:
        yield double


@pytest.fixture(scope="module")
def live(
    prometheus: LocalPrometheus, loki: LokiDouble, tmp_path_factory: pytest.TempPathFactory
) -> UICIConfig:
    """The shipped configuration pointed at both, its services' metrics named by `service`."""

    def edit(document: dict[str, Any]) -> None:
        document["default_observability"]["metric_labels"] = {"service": "{target}"}
        document["default_observability"]["resources"] = {
            "memory_usage": "uici_test_memory_bytes{$service}",
            "memory_limit": "uici_test_memory_limit_bytes{$service}",
        }

    return _edited(
        tmp_path_factory.mktemp("config"),
        edit,
        {"UICI_PROMETHEUS_URL": prometheus.url, "UICI_LOKI_URL": loki.url},
    )


def _run(config: UICIConfig, operation: str, target: str | None = None, **params: Any) -> Any:
    executor = create_executor("local-docker", config.environments.environments["local-docker"])
    try:
        return run_operation("local-docker", config, executor, operation, target, **params)
    finally:
        executor.close()


def test_metric_operations_answer_from_the_real_prometheus(live: UICIConfig) -> None:
    result = _run(
        live, "query_metrics_range", "web", query="uici_test_memory_bytes{$service}", since="1h"
    )
    assert result.success, result.error
    [series] = result.data["series"]
    assert series["labels"]["service"] == "web" and series["trend"] == "rising"
    assert series["points"] <= 300 and result.data["cut"] == []
    assert "promtool" in result.command[0]
    names = _run(live, "list_metrics", limit=3)
    assert names.success and len(names.data["values"]) == 3
    assert names.data["total"] > 3 and names.data["cut"], names.data
    trend = _run(live, "get_resource_trend", "web", resource="memory", since="1h")
    assert trend.success, trend.error
    memory = trend.data["memory"]
    assert memory["trend"] == "rising" and memory["capacity"] == 1e9
    assert memory["peak_ratio"] == pytest.approx(memory["max"] / 1e9)
    # A climb over the whole window: the rise is most of an hour, not a jump.
    assert memory["rise_seconds"] > 1800
    wrong = _run(live, "query_metrics", query="sum(rate(up[5m])")
    assert not wrong.success and wrong.error is not None
    assert wrong.error.kind is ErrorKind.PERMANENT
    assert "unclosed left parenthesis" in wrong.error.message


def test_log_operations_answer_from_loki(live: UICIConfig, loki: LokiDouble) -> None:
    now = time.time_ns()
    loki.push(
        {"container": "web", "host": "vm-1"},
        [
            (now - (30 - i) * 10**9, line)
            for i, line in enumerate(
                [
                    "INFO ready",
                    "ERROR db timeout",
                    "ERROR db timeout",
                    "INFO served",
                    "ERROR db timeout",
                ]
            )
        ],
    )
    result = _run(live, "query_logs", "web", since="5m")
    assert result.success, result.error
    assert result.data["query"] == '{container="web"}'
    # Deduplicated with counts, the error line first in the text, newest last in the data.
    assert result.data["lines"][-1] == "ERROR db timeout"
    [error] = [e for e in result.data["entries"] if e["line"] == "ERROR db timeout"]
    assert error["count"] == 3 and error["level"] == "error"
    body = result.output.splitlines()
    assert body.index(next(line for line in body if "ERROR db timeout" in line)) < body.index(
        next(line for line in body if "INFO served" in line)
    )
    counted = _run(live, "count_logs", "web", regex="ERROR", since="5m")
    assert counted.success, counted.error
    assert counted.data["total"] == 3
    values = _run(live, "list_log_label_values", label="host", since="5m")
    assert values.success and values.data["values"] == ["vm-1"]


# --- planned where the source is there ----------------------------------------------------------


def _context(environment: str = "local-docker", **alert: Any) -> IncidentContext:
    return IncidentContext(
        incident_id="inc-obs",
        alert=AlertInfo(labels={"alertname": "ErrorsHigh", "service": "web"}, **alert),
        environment=environment,
        service="web",
    )


def test_triage_evaluates_the_alerts_own_expression(
    shipped: UICIConfig, without_sources: UICIConfig
) -> None:
    steps, _ = ObservabilitySteps(shipped).steps(
        _context(expression="rate(errors_total[5m]) > 0.5"), "triage", []
    )
    [step] = steps
    assert step.operation == "check_alert_expression" and step.target is None
    assert step.parameters == {"since": "1h", "expression": "rate(errors_total[5m]) > 0.5"}
    # No expression in the alert: the rule of its name is looked up.
    [step] = ObservabilitySteps(shipped).steps(_context(), "triage", [])[0]
    assert step.parameters == {"since": "1h", "alertname": "ErrorsHigh"}
    # No Prometheus: nothing is proposed that the registry would refuse.
    assert ObservabilitySteps(without_sources).steps(_context(), "triage", []) == ([], [])


def test_a_log_that_cannot_be_read_is_read_from_loki_over_the_incidents_window(
    shipped: UICIConfig, without_sources: UICIConfig
) -> None:
    gone = Observation(
        id="obs-1",
        phase="triage",
        operation="get_logs",
        target="web",
        success=False,
        error="permanent: not found: No such container: web",
    )
    context = _context(starts_at="2026-12-02T05:00:00.123456789Z")
    steps, notes = ObservabilitySteps(shipped).steps(context, "isolation", [gone])
    [step] = steps
    assert step.operation == "query_logs" and step.target == "web"
    # From 15 minutes before the alert started (it started over an hour ago here).
    started = ObservabilitySteps(shipped).window_start(context)
    assert step.parameters == {"start": started, "limit": 2000}
    assert notes and "could not be read" in notes[0]
    # Lines were read: no fallback. Loki already read: not twice. No Loki: nothing.
    read = gone.model_copy(update={"success": True, "error": None, "output": "INFO up"})
    assert ObservabilitySteps(shipped).steps(context, "isolation", [read])[0] == []
    empty = read.model_copy(update={"output": ""})
    assert ObservabilitySteps(shipped).steps(context, "isolation", [empty])[0]
    again = Observation(id="obs-2", operation="query_logs", target="web", success=True)
    assert ObservabilitySteps(shipped).steps(context, "root_cause", [gone, again])[0] == []
    assert ObservabilitySteps(without_sources).steps(context, "isolation", [gone]) == ([], [])


def test_an_environment_whose_logs_live_in_loki_reads_them_there(tmp_path: Path) -> None:
    def loki_logs(document: dict[str, Any]) -> None:
        document["environments"]["local-docker"]["observability"] = {"log_source": "loki"}

    config = _edited(tmp_path, loki_logs, dict(URLS))
    planner = RunbookPlanner(config.agents)
    context = _context()
    _, planned, _ = planner.plan(context, "isolation", [])
    [reads] = [ObservabilitySteps(config).substitute(planned, context)]
    errors = [s for s in reads if s.operation == "query_logs" and "regex" in s.parameters]
    assert errors, [s.describe() for s in reads]
    assert not [s for s in reads if s.operation == "get_logs"]
    # `level: error` became the same lines as a regular expression Loki runs.
    assert errors[0].parameters["limit"] == 500
    registry = OperationRegistry.from_config(config)
    for step in reads:
        registry.validate(step.operation, "local-docker", step.parameters, step.target)


def test_a_rule_written_for_the_platforms_log_holds_on_lokis_lines(shipped: UICIConfig) -> None:
    status = Observation(
        id="obs-1",
        operation="get_status",
        target="web",
        success=True,
        data=[
            {"state": "restarting", "exit_code": 1, "restart_count": 5, "seconds_since_crash": 0}
        ],
    )
    from_loki = Observation(
        id="obs-2",
        operation="query_logs",
        target="web",
        success=True,
        data={
            "lines": ["INFO starting", "FATAL: required environment variable API_TOKEN is not set"]
        },
    )
    diagnosis = RunbookPlanner(shipped.agents).diagnose(_context(), [status, from_loki])
    assert diagnosis.rules_matched[0] == "missing-configuration"
    assert "obs-2" in diagnosis.evidence and "API_TOKEN" in diagnosis.root_cause


def test_the_expression_comes_from_the_generator_url() -> None:
    url = "http://prom:9090/graph?g0.expr=sum%28rate%28errors_total%5B5m%5D%29%29+%3E+0.5&g0.tab=1"
    assert expression_of(url) == "sum(rate(errors_total[5m])) > 0.5"
    multi = "http://p/graph?g0.expr=rate%28x%5B5m%5D%29%0A++%3E+1"
    assert expression_of(multi) == "rate(x[5m]) > 1"
    assert expression_of("") is None and expression_of("http://p/graph?g0.tab=1") is None
    assert expression_of("http://p/graph?g0.expr=" + "x" * 5000) is None  # too long: rules API
    config = load_config(SHIPPED_CONFIG, environ={})
    context = context_from_alert(
        {"labels": {"alertname": "A", "service": "web"}, "generatorURL": url},
        LabelConventions.from_config(config),
    )
    assert context.alert.expression == "sum(rate(errors_total[5m])) > 0.5"


def test_bad_observability_configuration_is_refused_at_load(tmp_path: Path) -> None:
    from infrastructure.configuration.problems import ConfigError

    def placeholder(document: dict[str, Any]) -> None:
        document["default_observability"]["log_selector"] = {"app": "{service}"}

    with pytest.raises(ConfigError) as raised:
        _edited(tmp_path / "a", placeholder, dict(URLS))
    # Reported for each environment that inherits the default, with file and line.
    problems = raised.value.problems
    assert {p.key for p in problems} >= {"environments.local-docker.log_selector"}
    assert all(p.file.name == "environments.yml" and p.line for p in problems)
    assert all("only {target} and {namespace} exist" in str(p) for p in problems)

    def no_service(document: dict[str, Any]) -> None:
        document["default_observability"]["resources"]["memory_usage"] = "max(mem_bytes)"

    with pytest.raises(ConfigError, match=r"must contain \$service"):
        _edited(tmp_path / "b", no_service, dict(URLS))

    def both_auths(document: dict[str, Any]) -> None:
        document["observability_sources"]["prometheus"]["main"]["username"] = "u"

    with pytest.raises(ConfigError, match="basic auth needs both username and password"):
        _edited(tmp_path / "c", both_auths, dict(URLS))
    with pytest.raises(ConfigError, match="is not an http"):
        load_config(SHIPPED_CONFIG, environ={"UICI_PROMETHEUS_URL": "prometheus:9090"})


def test_without_sources_the_runbooks_skip_those_steps_and_say_so(
    without_sources: UICIConfig, shipped: UICIConfig, tmp_path: Path
) -> None:
    from agent.incidents.storage import IncidentStore
    from agent.planning.llm_planner import LLMPlanner
    from agent.planning.planner import DiagnosticPlanner

    context = _context().model_copy(
        update={"alert": AlertInfo(labels={"alertname": "MemoryHigh", "service": "web"})}
    )
    store = IncidentStore(tmp_path / "u.db")
    plan = DiagnosticPlanner(without_sources, store).plan_phase(context, "triage", [])
    assert plan.runbook == "resource-pressure"
    assert "get_resource_trend" not in [d.step.operation for d in plan.decisions]
    assert any("get_resource_trend skipped" in note for note in plan.notes), plan.notes
    planned = DiagnosticPlanner(shipped, store).plan_phase(context, "triage", [])
    trends = [d for d in planned.decisions if d.step.operation == "get_resource_trend"]
    assert len(trends) == 2 and all(d.decision == "accepted" for d in trends), planned.decisions
    # The LLM is offered the operations only where they can run.
    assert "query_logs" not in LLMPlanner(without_sources, None)._catalogue(context)  # type: ignore[arg-type]
    assert "query_logs" in LLMPlanner(shipped, None)._catalogue(context)  # type: ignore[arg-type]


def test_the_llm_gets_a_series_summary_not_its_points() -> None:
    from agent.planning.llm_planner import _compact

    data = {
        "query": "up",
        "series": [{"labels": {"pod": "a"}, "last": 1.0, "values": [[1, 1.0]] * 300}],
        "entries": [{"line": "x", "count": 3}],
        "cut": ["30 of 50 series left out"],
    }
    compact = _compact(data)
    assert '"values"' not in compact and '"entries"' not in compact
    assert '"last": 1.0' in compact and "30 of 50 series left out" in compact


def test_an_answer_over_max_response_bytes_is_refused_unread(loki: LokiDouble) -> None:
    from infrastructure.configuration.models import LokiSource
    from infrastructure.executors.base import ExecutorError
    from infrastructure.observability.loki import LokiClient

    now = time.time_ns()
    loki.push({"container": "chatty"}, [(now - i * 10**6, "x" * 1000) for i in range(200)])
    source = LokiSource(name="small", url=loki.url, timeout_seconds=5, max_response_bytes=65536)
    client = LokiClient(source, 5)
    try:
        with pytest.raises(ExecutorError) as raised:
            client.query('{container="chatty"}', start=None, end=None, since=300, limit=5000)
    finally:
        client.close()
    assert raised.value.kind is ErrorKind.PERMANENT
    assert "answered more than 65536 bytes" in raised.value.message
    assert "narrow the query" in raised.value.hint


def test_a_refused_or_reported_log_is_not_read_from_loki_instead(shipped: UICIConfig) -> None:
    context = _context()
    denied = Observation(
        id="obs-1", operation="get_logs", target="web", success=False, error="denied: forbidden"
    )
    assert ObservabilitySteps(shipped).steps(context, "isolation", [denied])[0] == []
    # A read whose items report no lines, with only a note in its output, held no lines: the
    # note is not a log line (and no rule matches on it).
    noted = Observation(
        id="obs-2",
        operation="get_logs",
        target="web",
        success=True,
        output="[previous] (the Kubernetes API answered 400: previous terminated container not found)",
        data=[{"pod": "web-1", "lines": []}],
    )
    [step] = ObservabilitySteps(shipped).steps(context, "isolation", [noted])[0]
    assert step.operation == "query_logs"
    from agent.planning.conditions import log_lines

    assert log_lines(noted) == []


def test_a_forecast_covers_only_forecasts(shipped: UICIConfig, tmp_path: Path) -> None:
    from agent.incidents.storage import IncidentStore
    from agent.incidents.sweep import (
        Forecast,
        UnhealthyService,
        covering_incident,
        open_sweep_incident,
    )

    settings = shipped.agents.health_sweep
    conventions = LabelConventions.from_config(shipped)
    store = IncidentStore(tmp_path / "u.db")
    predicted = UnhealthyService(
        environment="local-docker",
        service="cache",
        reason="forecast: memory reaches its capacity in about 20 min",
        observed_state="predicted",
        forecast=Forecast(resource="memory", horizon="4h", seconds_to_capacity=1200, ratio=0.8),
    )
    _, context = open_sweep_incident(store, predicted, conventions, settings)
    store.set_status(context.incident_id, "diagnosed")
    assert covering_incident(store, predicted, settings) is not None  # no second warning
    crashed = UnhealthyService(
        environment="local-docker",
        service="cache",
        reason="state exited (exit code 137)",
        observed_state="exited",
    )
    assert covering_incident(store, crashed, settings) is None  # the failure is news


def test_a_condition_reads_the_newest_answer_about_its_own_field(shipped: UICIConfig) -> None:
    from agent.planning.conditions import check
    from infrastructure.configuration.models import Condition

    rising = Condition.model_validate(
        {
            "observation": "get_resource_trend",
            "field": "memory.trend",
            "operator": "eq",
            "value": "rising",
        }
    )
    context = _context()
    memory = Observation(
        id="obs-1",
        operation="get_resource_trend",
        target="web",
        success=True,
        data={"memory": {"trend": "rising"}},
    )
    disk_no_data = memory.model_copy(
        update={"id": "obs-2", "data": {"disk": {"error": "no series", "kind": "no_data"}}}
    )
    disk_failed = memory.model_copy(
        update={"id": "obs-3", "success": False, "error": "permanent: 1:1: parse error",
                "data": {"disk": {"error": "parse error"}}}
    )  # fmt: skip
    unreachable = memory.model_copy(
        update={"id": "obs-4", "success": False, "error": "retryable: unreachable", "data": None}
    )
    # An answer about disk, or a failed read about disk, says nothing about memory.
    assert check(rising, [memory, disk_no_data, disk_failed], context)[1] == ["obs-1"]
    # A newest read that failed and says nothing: memory's state is unknown now.
    assert check(rising, [memory, unreachable], context)[0] is False
    stale_status = Observation(
        id="obs-5", operation="get_status", target="web", success=True, data=[{"oom_killed": True}]
    )
    gone = stale_status.model_copy(update={"id": "obs-6", "success": False, "data": None})
    oom = Condition.model_validate(
        {"observation": "get_status", "field": "oom_killed", "operator": "eq", "value": True}
    )
    assert check(oom, [stale_status], context)[0] is True
    assert check(oom, [stale_status, gone], context)[0] is False


def test_a_kubernetes_selector_must_name_an_allowed_namespace(shipped: UICIConfig) -> None:
    ok = command(shipped, "query_logs", "staging-k8s", selector='{namespace="default", app="api"}')
    assert ok[-1] == '{namespace="default", app="api"}'
    for selector in ('{namespace="kube-system"}', '{app="api"}', '{namespace=~".+", app="x"}'):
        text = refusal(shipped, "query_logs", None, "staging-k8s", selector=selector)
        assert "must name its namespace exactly" in text, selector
    # A target and a selector: the selector is still checked.
    text = refusal(
        shipped, "query_logs", "default/web", "staging-k8s", selector='{namespace="kube-system"}'
    )
    assert "must name its namespace exactly" in text


def test_a_missing_ca_file_is_refused_at_load_and_a_given_one_is_used(tmp_path: Path) -> None:
    import ssl

    from infrastructure.configuration.models import PrometheusSource
    from infrastructure.configuration.problems import ConfigError
    from infrastructure.observability.common import http_client

    with pytest.raises(ConfigError, match="is not a file"):
        load_config(
            SHIPPED_CONFIG,
            environ={**URLS, "UICI_PROMETHEUS_CA_FILE": str(tmp_path / "missing.pem")},
        )
    bundle = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    source = PrometheusSource(
        name="tls", url="https://prometheus.example:9090", ca_file=str(bundle), timeout_seconds=5
    )
    client = http_client(source, 5)
    client.close()
    plain = PrometheusSource(name="plain", url="http://127.0.0.1:9", timeout_seconds=5)
    http_client(plain, 5).close()  # no TLS context built for plain http


def test_a_generator_url_too_long_to_keep_carries_no_cut_expression() -> None:
    from agent.service.intake import MAX_GENERATOR_URL_CHARS, parse_notification

    expression = "sum(rate(x[5m])) > " + "1" * (MAX_GENERATOR_URL_CHARS + 10)
    import json
    import urllib.parse

    url = "http://p/graph?" + urllib.parse.urlencode({"g0.expr": expression})
    body = {
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "A", "service": "web"},
                "startsAt": "2026-12-02T05:00:00Z",
                "generatorURL": url,
            }
        ]
    }
    parsed = parse_notification(json.dumps(body).encode(), 4096, None)
    [alert] = parsed.notification.alerts
    assert alert.generatorURL == "http://p/graph" and expression_of(alert.generatorURL) is None


def test_sweep_incidents_get_no_rules_lookup(shipped: UICIConfig) -> None:
    sweep = shipped.agents.health_sweep
    context = _context().model_copy(
        update={
            "alert": AlertInfo(
                labels={"alertname": "HealthSweep", "service": "web", sweep.source_label: "sweep"}
            )
        }
    )
    assert ObservabilitySteps(shipped).steps(context, "triage", []) == ([], [])


def test_the_dry_runs_promtool_command_runs_and_answers_as_uici_does(live: UICIConfig) -> None:
    """The command a dry run shows is a real one: Debian's promtool runs it against the same
    Prometheus and sees the series UICI summarised."""
    import subprocess

    registry = OperationRegistry.from_config(live)
    translator = CommandTranslator.from_config(live)
    cases = [
        (
            "query_metrics",
            "web",
            {"query": "uici_test_memory_limit_bytes{$service}"},
            "=> 1000000000",
        ),
        ("query_metrics_range", "web", {"query": "uici_test_memory_bytes{$service}"}, "web"),
        ("list_metric_label_values", None, {"label": "service"}, "web"),
    ]
    for operation, target, params, expected in cases:
        spec = translator.translate(registry.validate(operation, "local-docker", params, target))
        assert spec.command[0] == "promtool"
        done = subprocess.run(
            ["/usr/bin/promtool", *spec.command[1:]],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, (spec.command, done.stderr)
        assert expected in done.stdout, (spec.command, done.stdout[:500])
