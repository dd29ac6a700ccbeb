"""Executors for the evaluation: one that records what a live executor answered, one that
answers from such a recording without any engine.

Both stand behind the execution gate like every executor, so a replayed diagnosis is
validated, translated, authorised and recorded exactly as a live one.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from infrastructure.configuration.models import EnvironmentType
from infrastructure.executors.base import (
    EnvironmentExecutor,
    ErrorKind,
    MethodOutput,
    OperationError,
    OperationResult,
    ResolvedTarget,
)
from infrastructure.translator import CommandSpec


class RecordingExecutor(EnvironmentExecutor):
    """Passes every call to the live executor and keeps each result, in order."""

    environment_type = EnvironmentType.DOCKER  # overridden per instance by the live one's

    def __init__(self, live: EnvironmentExecutor) -> None:
        super().__init__(live.name, live.environment)
        self.live = live
        self.environment_type = live.environment_type  # type: ignore[misc]
        self.results: list[OperationResult] = []

    def execute(self, spec: CommandSpec) -> OperationResult:
        result = self.live.execute(spec)
        self.results.append(result)
        return result

    def effect_observed(
        self, operation: str, target: str, since: float, intent: str | None = None
    ) -> bool | None:
        return self.live.effect_observed(operation, target, since, intent)

    def write_targets(self, target: str) -> list[ResolvedTarget]:
        return self.live.write_targets(target)

    def check_connection(self) -> MethodOutput:
        return self.live.check_connection()

    def close(self) -> None:
        self.live.close()


class ReplayExecutor(EnvironmentExecutor):
    """Answers each (operation, target) with the recorded results in their order, the last one
    again once they run out. A call the live run never made fails, naming it: the scenario
    must be recorded again (the runbooks changed what a diagnosis runs)."""

    environment_type = EnvironmentType.DOCKER  # overridden per instance

    def __init__(self, name: str, environment: Any, results: list[dict[str, Any]]) -> None:
        super().__init__(name, environment)
        self.environment_type = EnvironmentType(  # type: ignore[misc]
            getattr(environment.type, "value", environment.type)
        )
        self._recorded: dict[tuple[str, str | None], list[OperationResult]] = defaultdict(list)
        for raw in results:
            result = OperationResult.model_validate(raw)
            self._recorded[(result.operation, result.target)].append(result)
        self._served: dict[tuple[str, str | None], int] = defaultdict(int)
        self.missing: list[str] = []

    def execute(self, spec: CommandSpec) -> OperationResult:
        key = (spec.operation, spec.target)
        recorded = self._recorded.get(key)
        now = datetime.now(UTC)
        if not recorded:
            self.missing.append(f"{spec.operation} {spec.target or '-'}")
            return OperationResult(
                operation=spec.operation,
                environment=spec.environment,
                environment_type=spec.environment_type,
                target=spec.target,
                success=False,
                error=OperationError(
                    kind=ErrorKind.PERMANENT,
                    message=f"not in the recording: {spec.operation} on {spec.target or '-'}",
                    hint="record the scenario again: uici eval --record --only NAME",
                ),
                duration_seconds=0.0,
                started_at=now,
                command=spec.command,
            )
        index = min(self._served[key], len(recorded) - 1)
        self._served[key] += 1
        return recorded[index].model_copy(
            update={"environment": spec.environment, "started_at": now, "command": spec.command}
        )

    def write_targets(self, target: str) -> list[ResolvedTarget]:
        return [ResolvedTarget(identity=f"replay:{self.name}:{target}", name=target)]

    def check_connection(self) -> MethodOutput:
        return MethodOutput(output="replay: no backend")
