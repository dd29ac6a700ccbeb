"""Steps a plan gets where the environment has Prometheus or Loki, whichever planner plans.

- Triage evaluates the alert's own expression: when it started to breach and by how much.
- A phase after a log read that failed (the container was replaced, the pod is gone) or held
  no lines reads the service's lines from Loki over the incident's window.
- In an environment whose logs live in Loki (observability.log_source: loki), a log step
  reads Loki instead of the platform.

These are reads, proposed like any other step: the registry and the policy still decide.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from agent.incidents.models import IncidentContext, Observation, Phase, PlanStep
from agent.incidents.sweep import SWEEP_SOURCE
from agent.planning.conditions import log_lines
from infrastructure.configuration.loader import UICIConfig
from infrastructure.observability.context import problems as observability_problems

# Loki's own cap on the entries of one query (max_entries_limit_per_query).
_LOKI_MAX_ENTRIES = 5000


class ObservabilitySteps:
    def __init__(self, config: UICIConfig) -> None:
        self.config = config
        self.settings = config.agents.diagnostic_agent.observability

    def _source(self, context: IncidentContext, kind: str) -> bool:
        environment = self.config.environments.environments.get(context.environment)
        return environment is not None and environment.observability.source(kind) is not None

    def steps(
        self, context: IncidentContext, phase: Phase, observations: Sequence[Observation]
    ) -> tuple[list[PlanStep], list[str]]:
        """Steps to run first in this phase, and notes saying why."""
        if self.settings is None:
            return [], []
        steps: list[PlanStep] = []
        notes: list[str] = []
        expression = self.settings.alert_expression
        sweep = self.config.agents.health_sweep
        from_sweep = context.alert.labels.get(sweep.source_label) == SWEEP_SOURCE
        if (
            phase == "triage"
            and expression.enabled
            and not from_sweep  # the sweep's incidents come from no alerting rule
            and self._source(context, "prometheus")
        ):
            parameters: dict[str, object] = {"since": expression.window}
            if context.alert.expression:
                parameters["expression"] = context.alert.expression
            elif expression.look_up_rules and context.alert.alertname:
                parameters["alertname"] = context.alert.alertname
            if len(parameters) > 1:
                steps.append(
                    self._step(
                        phase,
                        context,
                        "check_alert_expression",
                        None,
                        parameters,
                        "The alert's own expression over the last hour: when it started to"
                        " breach and by how much",
                    )
                )
        fallback = self.settings.loki_fallback
        if phase != "triage" and fallback.enabled and self._source(context, "loki"):
            gone = self._log_gone(context, observations)
            if gone and not any(
                o.operation == "query_logs" and o.target == context.service for o in observations
            ):
                steps.append(
                    self._step(
                        phase,
                        context,
                        "query_logs",
                        context.service,
                        {"start": self.window_start(context), "limit": fallback.limit},
                        f"The service's own log {gone}; Loki kept its lines over the"
                        " incident's window",
                    )
                )
                notes.append(f"the log of {context.service} {gone}: reading Loki")
        return steps, notes

    def _log_gone(self, context: IncidentContext, observations: Sequence[Observation]) -> str:
        """Why the newest read of the service's own log shows nothing ('' if it shows lines)."""
        reads = [
            o for o in observations if o.operation == "get_logs" and o.target == context.service
        ]
        if not reads:
            return ""
        newest = reads[-1]
        if not newest.success:
            reason = newest.error or "failed"
            if reason.startswith(("denied", "unsupported")):
                # Refused, not gone: reading it elsewhere would go around the refusal.
                return ""
            return f"could not be read ({reason[:160]})"
        if not any(line.strip() for line in log_lines(newest)):
            return "held no lines"
        return ""

    def window_start(self, context: IncidentContext, now: datetime | None = None) -> str:
        """RFC 3339 start of the incident's window (see agents.yml incident_window)."""
        assert self.settings is not None
        window = self.settings.incident_window
        moment = now or datetime.now(UTC)
        start = moment - timedelta(seconds=window.min_seconds)
        began = _parse(context.alert.starts_at)
        if began is not None:
            start = min(start, began - timedelta(seconds=window.before_alert_seconds))
        start = max(start, moment - timedelta(seconds=window.max_seconds))
        return start.strftime("%Y-%m-%dT%H:%M:%SZ")

    def runnable(
        self, steps: Sequence[PlanStep], context: IncidentContext
    ) -> tuple[list[PlanStep], list[str]]:
        """The steps whose metric or log source the environment has, and a note for each
        step left out (a runbook written for environments with Prometheus still runs where
        there is none)."""
        kept: list[PlanStep] = []
        notes: list[str] = []
        environment = self.config.environments.environments.get(context.environment)
        for step in steps:
            spec = self.config.operations.operations.get(step.operation)
            kind = spec.requires if spec is not None else None
            if spec is None or kind is None or environment is None:
                kept.append(step)
                continue
            if not self._source(context, kind):
                notes.append(
                    f"{step.operation} skipped: environment {context.environment!r} has no"
                    f" {kind} source"
                )
                continue
            # E.g. a resource the environment has no query for: said, not sent to be refused.
            parameters = {
                **{n: p.default for n, p in spec.parameters.items() if p.default is not None},
                **step.parameters,
            }
            problems = observability_problems(
                step.operation, spec, context.environment, environment, step.target, parameters
            )
            if problems:
                notes.append(f"{step.operation} skipped: {problems[0][1]}")
                continue
            kept.append(step)
        return kept, notes

    def substitute(self, steps: Sequence[PlanStep], context: IncidentContext) -> list[PlanStep]:
        """Log steps of an environment whose logs live in Loki read Loki instead."""
        environment = self.config.environments.environments.get(context.environment)
        if (
            environment is None
            or environment.observability.log_source != "loki"
            or not self._source(context, "loki")
        ):
            return list(steps)
        return [
            self._from_loki(step, context) if step.operation == "get_logs" else step
            for step in steps
        ]

    def _from_loki(self, step: PlanStep, context: IncidentContext) -> PlanStep:
        given = step.parameters
        parameters: dict[str, object] = {}
        if "since" in given:
            parameters["since"] = given["since"]
        else:
            parameters["start"] = self.window_start(context)
        lines = given.get("lines")
        if isinstance(lines, int) and not isinstance(lines, bool) and lines > 0:
            parameters["limit"] = min(lines, _LOKI_MAX_ENTRIES)
        regex = given.get("pattern") or self._level_regex(given.get("level"))
        if regex:
            parameters["regex"] = regex
        if "max_bytes" in given:
            parameters["max_bytes"] = given["max_bytes"]
        return step.model_copy(
            update={
                "operation": "query_logs",
                "parameters": parameters,
                "rationale": f"{step.rationale} (this environment's logs are in Loki)",
            }
        )

    def _level_regex(self, level: object) -> str | None:
        """The lines of `level` and every level above it, as one regular expression."""
        if not isinstance(level, str):
            return None
        levels = list(self.config.operations.log_levels.items())
        names = [name for name, _ in levels]
        if level not in names:
            return None
        chosen = [pattern for _, pattern in levels[: names.index(level) + 1]]
        insensitive = any(p.startswith("(?i)") for p in chosen)
        bodies = [re.sub(r"^\(\?i\)", "", p) for p in chosen]
        return ("(?i)" if insensitive else "") + "|".join(f"(?:{b})" for b in bodies)

    @staticmethod
    def _step(
        phase: Phase,
        context: IncidentContext,
        operation: str,
        target: str | None,
        parameters: dict[str, object],
        rationale: str,
    ) -> PlanStep:
        return PlanStep(
            phase=phase,
            operation=operation,
            environment=context.environment,
            target=target,
            parameters=parameters,
            rationale=rationale,
            proposed_by="runbook",
        )


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        # Alertmanager writes nine fractional digits; Python reads at most six.
        text = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00"))
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.year < 1970:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
