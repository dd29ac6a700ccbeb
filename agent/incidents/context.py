"""An incident's context from an alert, and observations from operation results.

An observation is redacted when it is made (its output, data and error, each whole): every
report, artifact, rule fact, telling line and prompt built from it, and every cut made of it
later, starts from redacted text, whatever executor produced the result (a live one redacts
already; a replayed recording may not).
"""

from __future__ import annotations

import json
import re
import urllib.parse
import uuid
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from agent.incidents.models import AlertInfo, IncidentContext, Observation, PlanStep
from infrastructure.configuration.loader import UICIConfig
from infrastructure.configuration.models import AlertMapping, EnvironmentType
from infrastructure.executors.base import OperationResult
from infrastructure.redaction import Redactor, configured_redactor


class AlertTarget(BaseModel):
    """Where an alert points: its environment, its target and the target's dependencies."""

    environment: str
    target: str
    dependencies: list[str] = Field(default_factory=list)


class UnmappedAlert(ValueError):
    """The label conventions map an alert to no environment or no target; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LabelConventions:
    """platform.yml `alerts:`: which labels name an alert's environment, target, namespace and
    dependencies. Built once from the configuration, and the one mapping the webhook intake,
    the incident flow and the health sweep use."""

    def __init__(
        self,
        settings: AlertMapping,
        default_environment: str,
        kubernetes_environments: Collection[str] = (),
    ) -> None:
        self.settings = settings
        self.default_environment = default_environment
        self.kubernetes_environments = frozenset(kubernetes_environments)
        self._rules = [
            ({label: re.compile(rx) for label, rx in rule.match.items()}, rule.environment)
            for rule in settings.rules
        ]

    @classmethod
    def from_config(cls, config: UICIConfig) -> LabelConventions:
        kubernetes = [
            name
            for name, spec in config.environments.environments.items()
            if spec.type is EnvironmentType.KUBERNETES
        ]
        return cls(config.platform.alerts, config.platform.platform.default_environment, kubernetes)

    def map(
        self,
        labels: Mapping[str, str],
        environment: str | None = None,
        target: str | None = None,
    ) -> AlertTarget:
        """The environment, target and dependencies an alert's labels name. An `environment`
        or `target` the caller already knows wins over the labels. Raises UnmappedAlert."""
        environment = environment or self.environment(labels)
        if environment is None:
            raise UnmappedAlert(
                "no environment: none of the labels "
                f"{self.settings.environment_labels} is set and no alerts.rules entry matches"
            )
        if not target:
            name = next((labels[n] for n in self.settings.target_labels if labels.get(n)), None)
            if name is None:
                raise UnmappedAlert(
                    f"no target: none of the labels {self.settings.target_labels} is set, "
                    "so the alert names no service (platform.yml alerts.target_labels)"
                )
            namespace = labels.get(self.settings.namespace_label or "", "")
            namespaced = environment in self.kubernetes_environments and "/" not in name
            target = f"{namespace}/{name}" if namespace and namespaced else name
        return AlertTarget(
            environment=environment, target=target, dependencies=self.dependencies(labels)
        )

    def environment(self, labels: Mapping[str, str]) -> str | None:
        """The first environment label set; else the first matching rule; else the default."""
        for label in self.settings.environment_labels:
            if labels.get(label):
                return labels[label]
        for patterns, environment in self._rules:
            if all(
                label in labels and rx.fullmatch(labels[label]) for label, rx in patterns.items()
            ):
                return environment
        return self.default_environment if self.settings.use_default_environment else None

    def declared_dependencies(self, labels: Mapping[str, str]) -> str:
        return labels.get(self.settings.dependencies_label or "", "")

    def dependencies(self, labels: Mapping[str, str]) -> list[str]:
        declared = self.declared_dependencies(labels)
        return [d.strip() for d in declared.split(",") if d.strip()]

    def labels_for(self, environment: str, target: str) -> dict[str, str]:
        """Labels that name this environment and target, for alerts UICI makes itself."""
        labels = {self.settings.target_labels[0]: target}
        if self.settings.environment_labels:
            labels[self.settings.environment_labels[0]] = environment
        return labels


def context_from_alert(
    alert: dict[str, Any],
    conventions: LabelConventions,
    incident_id: str | None = None,
    dependencies: Sequence[str] = (),
    environment: str | None = None,
    service: str | None = None,
) -> IncidentContext:
    """An incident context from one Alertmanager alert (or a webhook body's first alert),
    mapped by the configured label conventions. `environment`, `service` and `dependencies`
    from a caller that already mapped the alert (the service's dispatcher, the health sweep)
    or names them (a manual run, `uici plan --env`) win over the labels."""
    if "alerts" in alert and isinstance(alert["alerts"], list):
        if not alert["alerts"]:
            raise ValueError("the webhook body has no alerts")
        alert = alert["alerts"][0]
    labels = {str(k): str(v) for k, v in (alert.get("labels") or {}).items()}
    annotations = {str(k): str(v) for k, v in (alert.get("annotations") or {}).items()}
    mapped = conventions.map(labels, environment=environment, target=service)
    return IncidentContext(
        incident_id=incident_id or f"inc-{uuid.uuid4().hex[:10]}",
        alert=AlertInfo(
            labels=labels,
            annotations=annotations,
            status=str(alert.get("status", "firing")),
            fingerprint=alert.get("fingerprint"),
            starts_at=alert.get("startsAt"),
            expression=alert.get("expression") or expression_of(alert.get("generatorURL")),
        ),
        environment=mapped.environment,
        service=mapped.target,
        dependencies=list(dependencies) or mapped.dependencies,
    )


# Longer expressions are not taken from a URL (the alerting rule is looked up instead).
MAX_EXPRESSION_CHARS = 4000


def expression_of(generator_url: object) -> str | None:
    """The PromQL expression in Prometheus's generatorURL (`/graph?g0.expr=...`), or None."""
    if not isinstance(generator_url, str) or "g0.expr=" not in generator_url:
        return None
    query = urllib.parse.urlsplit(generator_url).query
    values = urllib.parse.parse_qs(query).get("g0.expr") or []
    expression = values[0].strip() if values else ""
    if not expression or len(expression) > MAX_EXPRESSION_CHARS:
        return None
    if any(ord(character) < 32 and character not in "\n\t" for character in expression):
        return None
    # Multi-line rule expressions arrive with newlines: one line for the query parameter.
    return " ".join(expression.split())


def load_observations(path: Path) -> list[Observation]:
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of observations")
    observations = []
    for index, item in enumerate(data):
        try:
            observations.append(Observation.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'item'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"{path}: observation [{index}]: {problems}") from exc
    return observations


def observation_from_result(
    observation_id: str,
    step: PlanStep,
    result: OperationResult,
    redactor: Redactor | None = None,
) -> Observation:
    redact = redactor or configured_redactor()
    return Observation(
        id=observation_id,
        phase=step.phase,
        operation=step.operation,
        environment=step.environment,
        target=step.target,
        success=result.success,
        output=redact(result.output),
        data=redact.data(result.data),
        error=None
        if result.error is None
        else redact(f"{result.error.kind.value}: {result.error.message}"),
    )
