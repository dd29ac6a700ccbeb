"""The values metric and log operations are translated with, derived once per call.

The translator renders the command a person would type (promtool, logcli) and the executor's
arguments from the same values, so the query a dry run shows is the query that runs: the
PromQL with `$service` replaced by the service's label matchers, the LogQL built from the
typed filters, and the window resolved to absolute times.

`problems` is what the registry refuses a call for: no source configured, a `$service` with no
target, a log query with neither a target nor a selector, a resource with no query.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from infrastructure.configuration.models import (
    SERVICE_MATCHERS_PLACEHOLDER,
    EnvironmentType,
    OperationSpec,
)
from infrastructure.observability import logql
from infrastructure.templates import render

# Values every translation may use besides parameters and the connection's context.
OBSERVABILITY_CONTEXT_KEYS: tuple[str, ...] = (
    "prometheus_url",
    "loki_url",
    "loki_tenant",
    "range_start",
    "range_end",
    "range_step",
    "forward",
    "stream_selector",
    "logql",
    "count_logql",
    "count_step",
    "alert_query",
    "usage_query",
    "capacity_query",
)
# The subset that is always set (never None) for an operation needing that source.
ALWAYS_SET: dict[str, tuple[str, ...]] = {
    "prometheus": ("prometheus_url",),
    "loki": ("loki_url",),
}
_SOURCE_NAMES = {"prometheus": "Prometheus", "loki": "Loki"}
# The matchers of a service, rendered where no environment overrides them.
_DEFAULT_COUNT_POINTS = 300

Problem = tuple[tuple[str, ...], str, str]


def always_set(spec: OperationSpec) -> set[str]:
    """The derived values `values` always gives a call of this operation (the registry has
    refused the calls that would lack them)."""
    if spec.requires is None:
        return set()
    present = {*ALWAYS_SET[spec.requires], "loki_tenant", "forward"}
    if "since" in spec.parameters:
        present.update(("range_start", "range_end"))
        if spec.requires == "prometheus" and "step" in spec.parameters:
            present.add("range_step")
    if "contains" in spec.parameters:
        present.add("logql")
        if "max_points" in spec.parameters:
            present.update(("count_logql", "count_step"))
    if "expression" in spec.parameters:
        present.add("alert_query")
    if "resource" in spec.parameters and spec.target == "required":
        present.update(("usage_query", "capacity_query"))
    return present


def service_names(environment: Any, target: str | None) -> dict[str, str]:
    """{target}: the service's name, {namespace}: its namespace (Kubernetes `ns/name`)."""
    if target is None:
        return {}
    namespace = ""
    name = target
    if environment.type is EnvironmentType.KUBERNETES:
        namespace = environment.connection.namespace
        if "/" in target:
            namespace, _, name = target.partition("/")
    return {"target": name, "namespace": namespace}


def _fill(template: str, names: dict[str, str]) -> str:
    return render(template, lambda key: names.get(key, ""))


def log_selector(environment: Any, target: str) -> str:
    """The LogQL stream selector of a service in this environment."""
    observability = environment.observability
    labels = dict(observability.log_selector)
    if not labels:
        service_label = observability.loki.service_label if observability.loki else "container"
        labels = {service_label: "{target}"}
    names = service_names(environment, target)
    return logql.stream_selector({label: _fill(value, names) for label, value in labels.items()})


def service_matchers(environment: Any, target: str) -> str:
    """`a="x", b="y"`: the PromQL label matchers of a service's series."""
    names = service_names(environment, target)
    return ", ".join(
        f"{label}={logql.quote(_fill(value, names))}"
        for label, value in environment.observability.metric_labels.items()
    )


def with_service(query: str, environment: Any, target: str) -> str:
    return query.replace(SERVICE_MATCHERS_PLACEHOLDER, service_matchers(environment, target))


def problems(
    operation: str,
    spec: OperationSpec,
    environment_name: str,
    environment: Any,
    target: str | None,
    parameters: dict[str, Any],
) -> list[Problem]:
    """Why this environment cannot run this metric or log call as given (empty: it can)."""
    kind = spec.requires
    if kind is None:
        return []
    observability = environment.observability
    configured = getattr(observability, kind)
    where = ("environment",)
    if configured is None:
        return [
            (
                where,
                f"{operation} needs a {_SOURCE_NAMES[kind]} source, and environment"
                f" {environment_name!r} names none",
                f"set environments.{environment_name}.observability.{kind} (or"
                f" default_observability.{kind}) to a source of observability_sources.{kind}",
            )
        ]
    if not configured.enabled:
        return [
            (
                where,
                f"{operation} needs {_SOURCE_NAMES[kind]}, and source {configured.name!r} of"
                f" environment {environment_name!r} has no url (it is off)",
                f"set observability_sources.{kind}.{configured.name}.url in environments.yml"
                " (or the environment variable it references)",
            )
        ]
    found: list[Problem] = []
    query = parameters.get("query")
    if isinstance(query, str) and SERVICE_MATCHERS_PLACEHOLDER in query:
        if not target:
            found.append(
                (
                    ("query",),
                    f"uses {SERVICE_MATCHERS_PLACEHOLDER}, which needs a target",
                    "give the service as target, or write the label matchers out",
                )
            )
        elif not observability.metric_labels:
            found.append(
                (
                    ("query",),
                    f"uses {SERVICE_MATCHERS_PLACEHOLDER}, and environment {environment_name!r}"
                    " maps no metric labels",
                    f"set environments.{environment_name}.observability.metric_labels",
                )
            )
    names = service_names(environment, target)
    if (
        environment.type is EnvironmentType.KUBERNETES
        and names
        and names["namespace"] not in environment.connection.allowed_namespaces
    ):
        # The same boundary as every Kubernetes read: a namespace the environment allows.
        found.append(
            (
                ("target",),
                f"namespace {names['namespace']!r} is not in environments.{environment_name}"
                f".connection.allowed_namespaces {environment.connection.allowed_namespaces}",
                "name a service in an allowed namespace",
            )
        )
    selector = parameters.get("selector")
    if environment.type is EnvironmentType.KUBERNETES and isinstance(selector, str):
        named = set(re.findall(r'\bnamespace\s*=\s*"([^"]*)"', selector))
        allowed = set(environment.connection.allowed_namespaces)
        if not named or not named <= allowed or re.search(r"\bnamespace\s*(!=|=~|!~)", selector):
            found.append(
                (
                    ("selector",),
                    f"a selector on {environment_name!r} must name its namespace exactly, one of"
                    f" allowed_namespaces {sorted(allowed)}",
                    'e.g. {namespace="default", app="api"}',
                )
            )
    if kind == "loki" and target:
        try:
            log_selector(environment, target)
        except ValueError as exc:  # a reserved label name, every value empty
            found.append(
                (
                    ("target",),
                    f"no Loki stream selector can be made for {target!r}: {exc}",
                    f"check environments.{environment_name}.observability.log_selector",
                )
            )
    # A log query (it takes line filters) reads one service's or one selector's streams.
    if "contains" in spec.parameters and not target and not parameters.get("selector"):
        found.append(
            (
                ("selector",),
                "a log query needs a target or a selector",
                'give the service as target, or a selector such as {app="api"}',
            )
        )
    if "resource" in spec.parameters and parameters.get("resource"):
        resource = str(parameters["resource"])
        usage = getattr(observability.resources, f"{resource}_usage", "")
        if not usage:
            found.append(
                (
                    ("resource",),
                    f"environment {environment_name!r} has no query for {resource} usage",
                    f"set environments.{environment_name}.observability.resources."
                    f"{resource}_usage (PromQL with {SERVICE_MATCHERS_PLACEHOLDER})",
                )
            )
        elif not observability.metric_labels:
            found.append(
                (
                    ("resource",),
                    f"environment {environment_name!r} maps no metric labels for its services",
                    f"set environments.{environment_name}.observability.metric_labels",
                )
            )
    return found


def values(
    spec: OperationSpec,
    environment: Any,
    target: str | None,
    parameters: dict[str, Any],
    now: datetime | None = None,
) -> dict[str, Any]:
    """The derived values of one call (see the module docstring). Call after `problems`
    found none; parameters are the registry's coerced ones (defaults filled in)."""
    from infrastructure.registry import duration_seconds

    observability = environment.observability
    prometheus = observability.source("prometheus")
    loki = observability.source("loki")
    derived: dict[str, Any] = {
        "prometheus_url": prometheus.url if prometheus else None,
        "loki_url": loki.url if loki else None,
        "loki_tenant": getattr(loki, "tenant", "") if loki else "",
    }
    if spec.requires is None:
        return derived
    moment = now or datetime.now(UTC)
    if "since" in spec.parameters:
        end = parameters.get("end")
        end_at = end or _iso(moment)
        start = parameters.get("start")
        if start:
            derived["range_start"] = start
        else:
            since = duration_seconds(str(parameters.get("since") or "1h"))
            base = moment if not end else _parse(end, moment)
            derived["range_start"] = _iso(base - timedelta(seconds=since))
        derived["range_end"] = end_at
    derived["forward"] = parameters.get("direction") == "forward"
    if spec.requires == "prometheus" and "step" in spec.parameters and "range_start" in derived:
        derived["range_step"] = _step(derived, parameters)
    query = parameters.get("query")
    if isinstance(query, str) and target and SERVICE_MATCHERS_PLACEHOLDER in query:
        derived["query"] = with_service(query, environment, target)
    if spec.requires == "loki":
        selector = parameters.get("selector") or (
            log_selector(environment, target) if target else None
        )
        derived["stream_selector"] = selector
        if selector:
            derived["logql"] = logql.log_query(
                selector,
                parameters.get("contains") or (),
                parameters.get("excludes") or (),
                parameters.get("regex"),
            )
        if "max_points" in spec.parameters and derived.get("logql"):
            step = _count_step(derived, parameters)
            derived["count_step"] = step
            derived["count_logql"] = logql.count_query(derived["logql"], step)
    expression = parameters.get("expression")
    alertname = parameters.get("alertname")
    if "expression" in spec.parameters:
        derived["alert_query"] = expression or (
            f"<the expression of alerting rule {alertname} (GET /api/v1/rules)>"
            if alertname
            else "<no expression>"
        )
    if "resource" in spec.parameters and target:
        resource = str(parameters.get("resource"))
        usage = getattr(observability.resources, f"{resource}_usage", "")
        capacity = getattr(observability.resources, f"{resource}_capacity", "") or getattr(
            observability.resources, f"{resource}_limit", ""
        )
        derived["usage_query"] = with_service(usage, environment, target) if usage else None
        derived["capacity_query"] = with_service(capacity, environment, target) if capacity else ""
    return derived


def _step(derived: dict[str, Any], parameters: dict[str, Any]) -> float:
    """Seconds per point: the requested step, widened so the window fits max_points, exactly
    as the clients choose it (series.choose_step), so the dry run shows the step that runs."""
    from infrastructure.observability import series
    from infrastructure.registry import duration_seconds

    start = _parse(derived["range_start"], datetime.now(UTC))
    end = _parse(derived["range_end"], datetime.now(UTC))
    window = max(1.0, (end - start).total_seconds())
    points = int(parameters.get("max_points") or _DEFAULT_COUNT_POINTS)
    requested = parameters.get("step")
    chosen, _ = series.choose_step(
        window, points, float(duration_seconds(str(requested))) if requested else None
    )
    return int(chosen) if chosen.is_integer() else chosen


def _count_step(derived: dict[str, Any], parameters: dict[str, Any]) -> int:
    """Whole seconds per count (a LogQL range), as the Loki client rounds it."""
    return max(1, math.ceil(_step(derived, parameters) - 1e-9))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str, fallback: datetime) -> datetime:
    try:
        if text.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(text), tz=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return fallback
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
