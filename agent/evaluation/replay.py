"""Executors for the evaluation: one that records what a live executor answered, one that
answers from such a recording without any engine.

Both stand behind the execution gate like every executor, so a replayed diagnosis is
validated, translated, authorised and recorded exactly as a live one.
"""

from __future__ import annotations

import json
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

_Key = tuple[str, str | None, tuple[tuple[str, str], ...]]
# Arguments that are moments the translator resolved from the clock (a metric or log query's
# window: `since: 1h`, or the incident's window, becomes start and end): a replay runs at
# another time, so they are no part of what identifies a call.
CLOCK_ARGUMENTS = frozenset({"start", "end", "time"})
# Arguments the translator derives that say what a metric or log call reads (the LogQL with
# its filters, a resource's queries): part of a call's identity though no parameter is named so.
DERIVED_ARGUMENTS = frozenset({"logql", "usage_query", "capacity_query"})


class RecordingExecutor(EnvironmentExecutor):
    """Passes every call to the live executor and keeps each result, in order."""

    environment_type = EnvironmentType.DOCKER  # overridden per instance by the live one's

    def __init__(self, live: EnvironmentExecutor) -> None:
        super().__init__(live.name, live.environment)
        self.live = live
        self.environment_type = live.environment_type  # type: ignore[misc]
        self.results: list[dict[str, Any]] = []

    def execute(self, spec: CommandSpec) -> OperationResult:
        result = self.live.execute(spec)
        # With the executor call's arguments: a replay answers only the same call.
        self.results.append(
            {
                **result.model_dump(mode="json"),
                "arguments": json.loads(json.dumps(spec.arguments, default=str)),
            }
        )
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

    def __init__(
        self,
        name: str,
        environment: Any,
        results: list[dict[str, Any]],
        parameters: dict[str, set[str]] | None = None,
    ) -> None:
        super().__init__(name, environment)
        self.environment_type = EnvironmentType(  # type: ignore[misc]
            getattr(environment.type, "value", environment.type)
        )
        # Keyed by the operation's own parameters too (lines, level, since: operations.yml),
        # not by what the environment adds: a changed parameter is a call the live run never
        # made.
        self._parameters = parameters or {}
        self._recorded: dict[_Key, list[OperationResult]] = defaultdict(list)
        for raw in results:
            result = OperationResult.model_validate(raw)
            key = self._key(result.operation, result.target, raw.get("arguments") or {})
            self._recorded[key].append(result)
        self._served: dict[_Key, int] = defaultdict(int)
        self.missing: list[str] = []

    def _key(self, operation: str, target: str | None, arguments: dict[str, Any]) -> _Key:
        names = self._parameters.get(operation, set()) | DERIVED_ARGUMENTS
        shown = [
            (name, json.dumps(value, sort_keys=True, default=str))
            for name, value in arguments.items()
            if name in names and name not in CLOCK_ARGUMENTS
        ]
        # The window's length identifies a call (since: 2h is not 10m); its moments do not.
        window = _window_minutes(arguments.get("start"), arguments.get("end"))
        if window is not None:
            shown.append(("window_minutes", str(window)))
        return operation, target, tuple(sorted(shown))

    def unused(self) -> list[str]:
        """Recorded calls this replay never made: the diagnosis no longer asks for them."""
        return [
            f"recorded {operation} {target or '-'} {dict(shown)} not asked for"
            for operation, target, shown in self._recorded
            if (operation, target, shown) not in self._served
        ]

    def execute(self, spec: CommandSpec) -> OperationResult:
        key = self._key(
            spec.operation, spec.target, json.loads(json.dumps(spec.arguments, default=str))
        )
        recorded = self._recorded.get(key)
        now = datetime.now(UTC)
        if not recorded:
            shown = {k: v for k, v in key[2] if v != "null"}
            self.missing.append(f"{spec.operation} {spec.target or '-'} {shown}")
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


def _window_minutes(start: Any, end: Any) -> int | None:
    """The length of a resolved window in whole minutes, or None without one."""
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    try:
        began = datetime.fromisoformat(start.replace("Z", "+00:00"))
        ended = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((ended - began).total_seconds() / 60)
