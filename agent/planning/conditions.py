"""Declarative conditions of agents.yml, evaluated on observations.

A condition is data (field, operator, value, regular expression), never code: nothing here
evaluates, formats or templates text from configuration, logs or alerts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from agent.incidents.models import IncidentContext, Observation
from infrastructure.configuration.models import Condition, ConditionOperator, WhenClause

_MISSING = object()


def latest(
    observations: Sequence[Observation], operation: str, targets: Sequence[str | None]
) -> list[Observation]:
    """The newest observation of `operation` for each target that has one."""
    found: dict[str | None, Observation] = {}
    for observation in observations:
        if observation.operation == operation and observation.target in targets:
            found[observation.target] = observation
    return [found[t] for t in targets if t in found]


def evaluate(
    when: WhenClause, observations: Sequence[Observation], context: IncidentContext
) -> tuple[bool, list[str]]:
    """Whether the clause holds, and the ids of the observations that made it hold."""
    evidence: list[str] = []
    for condition in when.all:
        holds, ids = check(condition, observations, context)
        if not holds:
            return False, []
        evidence.extend(ids)
    if when.any:
        any_ids: list[str] = []
        for condition in when.any:
            holds, ids = check(condition, observations, context)
            if holds:
                any_ids.extend(ids)
        if not any_ids:
            return False, []
        evidence.extend(any_ids)
    return True, list(dict.fromkeys(evidence))


def check(
    condition: Condition, observations: Sequence[Observation], context: IncidentContext
) -> tuple[bool, list[str]]:
    targets: list[str | None]
    if condition.scope == "service":
        targets = [context.service]
    elif condition.scope == "dependencies":
        targets = list(context.dependencies)
    else:
        targets = [*context.scope, None]
    matched = [
        observation.id
        for observation in latest(observations, condition.observation, targets)
        if observation.success and _holds(condition, observation)
    ]
    return bool(matched), matched


def _holds(condition: Condition, observation: Observation) -> bool:
    if condition.log_pattern is not None:
        pattern = re.compile(condition.log_pattern)
        return (
            sum(1 for line in log_lines(observation) if pattern.search(line))
            >= condition.min_matches
        )
    assert condition.field is not None and condition.operator is not None  # by the model
    return any(
        _compare(condition.operator, _lookup(item, condition.field), condition.value)
        for item in items(observation)
    )


def items(observation: Observation) -> list[Any]:
    """Executors return one data item per container/pod/instance (a list), or one mapping."""
    data = observation.data
    if isinstance(data, list):
        return data
    return [data] if data is not None else []


def log_lines(observation: Observation) -> list[str]:
    lines: list[str] = []
    for item in items(observation):
        if isinstance(item, dict) and isinstance(item.get("lines"), list):
            lines.extend(str(line) for line in item["lines"])
    return lines or observation.output.splitlines()


def _lookup(item: Any, dotted: str) -> Any:
    current = item
    for part in dotted.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        else:
            return _MISSING
    return current


def _compare(operator: ConditionOperator, actual: Any, expected: Any) -> bool:
    if operator is ConditionOperator.EXISTS:
        return actual is not _MISSING and actual is not None
    if operator is ConditionOperator.ABSENT:
        return actual is _MISSING or actual is None
    if actual is _MISSING:
        return False
    try:
        if operator is ConditionOperator.EQ:
            return bool(actual == expected)
        if operator is ConditionOperator.NE:
            return bool(actual != expected)
        if operator is ConditionOperator.GT:
            return bool(actual > expected)
        if operator is ConditionOperator.GE:
            return bool(actual >= expected)
        if operator is ConditionOperator.LT:
            return bool(actual < expected)
        if operator is ConditionOperator.LE:
            return bool(actual <= expected)
        if operator is ConditionOperator.IN:
            return actual in expected
        if operator is ConditionOperator.NOT_IN:
            return actual not in expected
        if operator is ConditionOperator.CONTAINS:
            return expected in actual
        if operator is ConditionOperator.MATCHES:
            return isinstance(actual, str) and re.search(expected, actual) is not None
    except TypeError:
        return False  # comparing None with a number, a list with a string: the condition fails
    return False
