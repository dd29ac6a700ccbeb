"""The executor interface every environment type implements, and its one result model.

An executor receives a CommandSpec (already validated and translated), calls the method
the translation names with the translated arguments, and returns an OperationResult.
Errors never escape as exceptions: they are classified into an ErrorKind so that callers
(retries, the planner, reports) can decide what to do without knowing the backend.

Every result leaves `execute` redacted (its output, data, error and command: the executor's
`redactor`, else the one of the configuration this process runs with; see
infrastructure/redaction.py), and a method that cuts text redacts the whole text first.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from infrastructure.configuration.models import EnvironmentType
from infrastructure.redaction import Redactor, RedactorHolder
from infrastructure.translator import CommandSpec


class ErrorKind(StrEnum):
    RETRYABLE = "retryable"  # transient: connection refused, timeout, 429, 5xx
    PERMANENT = "permanent"  # not found, bad parameters, refused command
    UNSUPPORTED = "unsupported"  # this environment type cannot do it
    DENIED = "denied"  # the policy or the backend's permissions said no


class OperationError(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: ErrorKind
    message: str
    hint: str = ""


class OperationResult(BaseModel):
    """The outcome of one operation on one environment, whatever the backend."""

    operation: str
    environment: str
    environment_type: EnvironmentType
    target: str | None
    success: bool
    output: str = ""
    data: Any = None
    error: OperationError | None = None
    duration_seconds: float
    started_at: datetime
    command: list[str] = Field(default_factory=list)

    @property
    def retryable(self) -> bool:
        return self.error is not None and self.error.kind is ErrorKind.RETRYABLE


class ResolvedTarget(BaseModel):
    """One thing a write touches, with a stable identity: a container id (Docker), the
    `namespace/Kind/name` of the workload that owns the pods (Kubernetes), an instance OCID
    (OCI). Cool-down, budgets and the per-target lock key on the identity, so every way of
    naming the same thing meets the same history."""

    model_config = ConfigDict(frozen=True)

    identity: str
    name: str


class MethodOutput(BaseModel):
    """What an executor method returns: text for people, data for rules and planners."""

    output: str = ""
    data: Any = None


class ExecutorError(Exception):
    """Raised inside executor methods; turned into a failed OperationResult.

    `output` and `data` carry what was learnt before the failure (e.g. the replicas that did
    answer), so a failed operation still loses nothing.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        hint: str = "",
        *,
        output: str = "",
        data: Any = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.hint = hint
        self.output = output
        self.data = data


Method = TypeVar("Method", bound=Callable[..., MethodOutput])


def executor_method(function: Method) -> Method:
    """Mark a method as callable by translations; nothing else on an executor is."""
    function.__uici_executor_method__ = True  # type: ignore[attr-defined]
    return function


def run_with_deadline(
    function: Callable[..., MethodOutput], arguments: dict[str, Any], timeout_seconds: float
) -> MethodOutput:
    """Run a blocking SDK call and stop waiting for it after the operation's timeout.

    SDK timeouts bound single socket reads, not a whole call (and `exec`, `stats` and event
    streams have none), so the operation's deadline is enforced here. A call that overruns
    keeps its daemon thread until the SDK gives up, but the caller is answered on time.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = function(**arguments)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="uici-operation", daemon=True)
    worker.start()
    worker.join(timeout_seconds)
    if worker.is_alive():
        raise ExecutorError(
            ErrorKind.RETRYABLE,
            f"timed out after {timeout_seconds:g} s",
            "the call may still complete; observe the target before repeating a write",
        )
    if "error" in outcome:
        raise outcome["error"]
    result: MethodOutput = outcome["result"]
    return result


class EnvironmentExecutor(RedactorHolder, ABC):
    """Runs translated operations against one configured environment."""

    environment_type: ClassVar[EnvironmentType]

    def __init__(self, name: str, environment: Any, redactor: Redactor | None = None) -> None:
        self.name = name
        self.environment = environment
        self._redactor = redactor

    @classmethod
    def methods(cls) -> set[str]:
        return {
            attribute
            for attribute in dir(cls)
            if getattr(getattr(cls, attribute, None), "__uici_executor_method__", False)
        }

    def execute(self, spec: CommandSpec) -> OperationResult:
        started_at = datetime.now(UTC)
        start = time.perf_counter()
        output = MethodOutput()
        error: OperationError | None = None
        if spec.environment != self.name:
            error = OperationError(
                kind=ErrorKind.PERMANENT,
                message=f"spec for environment {spec.environment!r} sent to executor {self.name!r}",
            )
        elif spec.method not in self.methods():
            error = OperationError(
                kind=ErrorKind.UNSUPPORTED,
                message=f"the {self.environment_type.value} executor has no method {spec.method!r}",
                hint="check the method named in command_translations.yml",
            )
        else:
            try:
                output = run_with_deadline(
                    getattr(self, spec.method), spec.arguments, spec.timeout_seconds
                )
            except ExecutorError as exc:
                error = OperationError(kind=exc.kind, message=exc.message, hint=exc.hint)
                output = MethodOutput(output=exc.output, data=exc.data)
            except Exception as exc:  # a bug or an unclassified SDK error: report, never raise
                error = OperationError(
                    kind=ErrorKind.PERMANENT,
                    message=f"unexpected {type(exc).__name__}: {exc}",
                    hint="this is a UICI defect if it repeats; please report it with the command",
                )
        result = OperationResult(
            operation=spec.operation,
            environment=spec.environment,
            environment_type=spec.environment_type,
            target=spec.target,
            success=error is None,
            output=output.output,
            data=output.data,
            error=error,
            duration_seconds=time.perf_counter() - start,
            started_at=started_at,
            command=spec.command,
        )
        return self.redactor.model(result)

    # --- metrics and logs: the same in every environment type ---------------------------
    # The registry refuses these calls unless the environment names an enabled source; the
    # translator resolves the query and the window (infrastructure/observability/context.py).

    def _prometheus(self) -> Any:
        from infrastructure.observability.prometheus import PrometheusClient

        source = self.environment.observability.source("prometheus")
        if source is None:
            raise ExecutorError(
                ErrorKind.UNSUPPORTED,
                f"environment {self.name!r} has no Prometheus source",
                "set observability.prometheus in environments.yml",
            )
        return PrometheusClient(source, source.timeout_seconds)

    def _loki(self) -> Any:
        from infrastructure.observability.loki import LokiClient

        source = self.environment.observability.source("loki")
        if source is None:
            raise ExecutorError(
                ErrorKind.UNSUPPORTED,
                f"environment {self.name!r} has no Loki source",
                "set observability.loki in environments.yml",
            )
        return LokiClient(source, source.timeout_seconds)

    @executor_method
    def prometheus_query(
        self, query: str, time: str | None = None, max_series: int = 20
    ) -> MethodOutput:
        client = self._prometheus()
        try:
            result: MethodOutput = client.instant(query, time=time, max_series=max_series)
        finally:
            client.close()
        return result

    @executor_method
    def prometheus_query_range(
        self,
        query: str,
        start: str,
        end: str,
        step: float | None = None,
        max_points: int = 300,
        max_series: int = 20,
    ) -> MethodOutput:
        client = self._prometheus()
        try:
            result: MethodOutput = client.range(
                query,
                start=start,
                end=end,
                since=None,
                step=step,
                max_points=max_points,
                max_series=max_series,
            )
        finally:
            client.close()
        return result

    @executor_method
    def prometheus_label_values(
        self, label: str, start: str, end: str, match: str | None = None, limit: int = 200
    ) -> MethodOutput:
        client = self._prometheus()
        try:
            result: MethodOutput = client.label_values(
                label, match=match, since=_window_seconds(start, end), limit=limit
            )
        finally:
            client.close()
        return result

    @executor_method
    def prometheus_alert_expression(
        self,
        start: str,
        end: str,
        expression: str | None = None,
        alertname: str | None = None,
        max_points: int = 300,
    ) -> MethodOutput:
        client = self._prometheus()
        try:
            result: MethodOutput = client.alert_expression(
                expression=expression,
                alertname=alertname,
                labels=None,
                since=_window_seconds(start, end),
                max_points=max_points,
            )
        finally:
            client.close()
        return result

    @executor_method
    def prometheus_resource_trend(
        self,
        resource: str,
        usage_query: str,
        start: str,
        end: str,
        capacity_query: str = "",
        horizon: str = "4h",
        max_points: int = 300,
    ) -> MethodOutput:
        client = self._prometheus()
        try:
            result: MethodOutput = client.resource_trends(
                {resource: (usage_query, capacity_query or "")},
                since=_window_seconds(start, end),
                horizon_seconds=_seconds(horizon) or 0.0,
                max_points=max_points,
            )
        finally:
            client.close()
        return result

    @executor_method
    def loki_query(
        self,
        logql: str,
        start: str,
        end: str,
        direction: str = "backward",
        limit: int = 1000,
        max_bytes: int = 65536,
        level_patterns: dict[str, str] | None = None,
    ) -> MethodOutput:
        client = self._loki()
        try:
            result: MethodOutput = client.query(
                logql,
                start=start,
                end=end,
                since=None,
                direction=direction,
                limit=limit,
                max_bytes=max_bytes,
                level_patterns=level_patterns,
            )
        finally:
            client.close()
        return result

    @executor_method
    def loki_count(
        self, logql: str, start: str, end: str, step: int | None = None, max_points: int = 300
    ) -> MethodOutput:
        client = self._loki()
        try:
            result: MethodOutput = client.count(
                logql, start=start, end=end, since=None, step=step, max_points=max_points
            )
        finally:
            client.close()
        return result

    @executor_method
    def loki_labels(
        self, start: str, end: str, selector: str | None = None, limit: int = 200
    ) -> MethodOutput:
        client = self._loki()
        try:
            result: MethodOutput = client.labels(
                selector=selector, since=_window_seconds(start, end), limit=limit
            )
        finally:
            client.close()
        return result

    @executor_method
    def loki_label_values(
        self, label: str, start: str, end: str, selector: str | None = None, limit: int = 200
    ) -> MethodOutput:
        client = self._loki()
        try:
            result: MethodOutput = client.label_values(
                label, selector=selector, since=_window_seconds(start, end), limit=limit
            )
        finally:
            client.close()
        return result

    def effect_observed(
        self, operation: str, target: str, since: float, intent: str | None = None
    ) -> bool | None:
        """Whether a write `operation` on `target` took effect after `since` (epoch seconds);
        `intent` is the value the write was made under (see `intent_value`), for executors
        that can recognise their own write by it.

        Used to resolve a remediation intent left pending by a crash: observe, never repeat.
        None means this executor cannot tell, and the caller must not call again blindly.
        """
        return None

    @abstractmethod
    def write_targets(self, target: str) -> list[ResolvedTarget]:
        """What a write on `target` would act on directly, resolved now; raise ExecutorError
        (PERMANENT for an unknown target) when it cannot be resolved."""

    @abstractmethod
    def check_connection(self) -> MethodOutput:
        """Reach the backend once; raise ExecutorError(RETRYABLE, ...) saying how to fix it."""

    def close(self) -> None:
        """Release clients and connections."""


def intent_value(key: str, recorded_at: float) -> str:
    """How a remediation intent is named to a write call: its key and when it was recorded."""
    return f"{key}@{datetime.fromtimestamp(recorded_at, tz=UTC):%Y-%m-%dT%H:%M:%SZ}"


def _seconds(duration: str | None) -> float | None:
    """A validated duration ("5m") in seconds; None stays None."""
    if not duration:
        return None
    from infrastructure.registry import duration_seconds

    return float(duration_seconds(duration))


def _window_seconds(start: str, end: str) -> float:
    """The length of a window the translator resolved (RFC 3339 or Unix seconds)."""
    from infrastructure.observability.common import parse_time

    return max(1.0, (parse_time(end, "end") - parse_time(start, "start")).total_seconds())
