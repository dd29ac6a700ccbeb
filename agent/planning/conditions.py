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
    when: WhenClause,
    observations: Sequence[Observation],
    context: IncidentContext,
    max_line_chars: int | None = None,
    log_operations: Sequence[str] = (),
) -> tuple[bool, list[str]]:
    """Whether the clause holds, and the ids of the observations that made it hold."""
    holds, evidence, _ = evaluate_with_facts(
        when, observations, context, max_line_chars, log_operations
    )
    return holds, evidence


def evaluate_with_facts(
    when: WhenClause,
    observations: Sequence[Observation],
    context: IncidentContext,
    max_line_chars: int | None = None,
    log_operations: Sequence[str] = (),
) -> tuple[bool, list[str], list[str]]:
    """As `evaluate`, and the facts the conditions that held name (see `Condition.facts`).

    `log_operations` (agents.yml log_matching): a log pattern on one of them reads the lines
    of all of them, so a rule written for the platform's log also holds on Loki's."""
    evidence: list[str] = []
    facts: list[str] = []
    for condition in when.all:
        holds, ids, named = check(condition, observations, context, max_line_chars, log_operations)
        if not holds:
            return False, [], []
        evidence.extend(ids)
        facts.extend(named)
    if when.any:
        any_ids: list[str] = []
        for condition in when.any:
            holds, ids, named = check(
                condition, observations, context, max_line_chars, log_operations
            )
            if holds:
                any_ids.extend(ids)
                facts.extend(named)
        if not any_ids:
            return False, [], []
        evidence.extend(any_ids)
    return True, list(dict.fromkeys(evidence)), list(dict.fromkeys(facts))


def check(
    condition: Condition,
    observations: Sequence[Observation],
    context: IncidentContext,
    max_line_chars: int | None = None,
    log_operations: Sequence[str] = (),
) -> tuple[bool, list[str], list[str]]:
    """Whether the condition holds on the newest observation of its scope, the ids of those it
    holds on, and the facts they name."""
    targets: list[str | None]
    if condition.scope == "service":
        targets = [context.service]
    elif condition.scope == "dependencies":
        targets = list(context.all_dependencies)
    else:
        targets = [*context.read_scope, None]
    matched: list[str] = []
    facts: list[str] = []
    if condition.log_pattern is not None:
        # Every log read counts, each judged alone: a later read filtered to error lines
        # (or a shorter one) must not hide what an earlier, wider read showed. The newest
        # read that holds names the facts.
        names = log_reads(condition.observation, log_operations)
        for target in targets:
            reads = [
                o for o in observations if o.operation in names and o.target == target and o.success
            ]
            for observation in reversed(reads):
                holds, named = _holds(condition, observation, max_line_chars)
                if holds:
                    matched.append(observation.id)
                    facts.extend(named)
                    break
        return bool(matched), matched, facts
    for observation in _reporting(observations, condition, targets):
        holds, named = _holds(condition, observation)
        if holds:
            matched.append(observation.id)
            facts.extend(named)
    return bool(matched), matched, facts


def _reporting(
    observations: Sequence[Observation], condition: Condition, targets: Sequence[str | None]
) -> list[Observation]:
    """Per target, the newest result of the condition's operation, skipping successful ones
    that do not report the field's first key: one operation may be asked for different things
    (get_resource_trend for memory, then for disk), and a later answer about disk says nothing
    about memory. A newest read that failed still decides: the state is unknown now, so the
    condition does not hold (an older answer is stale)."""
    assert condition.field is not None  # a field condition
    head = condition.field.split(".", 1)[0]
    found: dict[str | None, Observation] = {}
    for observation in observations:
        if observation.operation != condition.observation or observation.target not in targets:
            continue
        reported = items(observation)
        if (
            condition.operator is ConditionOperator.ABSENT
            or not any(reported)  # a read that says nothing (failed, or empty) is the news
            or any(_lookup(item, head) is not _MISSING for item in reported)
        ):
            found[observation.target] = observation
    return [found[t] for t in targets if t in found and found[t].success]


def log_reads(operation: str, log_operations: Sequence[str]) -> set[str]:
    """The operations whose lines a log condition on `operation` reads."""
    return set(log_operations) if operation in log_operations else {operation}


def _holds(
    condition: Condition, observation: Observation, max_line_chars: int | None = None
) -> tuple[bool, list[str]]:
    if condition.log_pattern is not None:
        pattern = re.compile(condition.log_pattern)
        lines = log_lines(observation, max_line_chars)
        found = [m for m in (pattern.search(line) for line in lines) if m]
        if len(found) < condition.min_matches:
            return False, []
        # The newest line names the fact: in a crash loop it is the last attempt's reason.
        groups = found[-1].groupdict()
        return True, [
            _fact(name.replace("_", " "), value) for name, value in groups.items() if value
        ]
    assert condition.field is not None and condition.operator is not None  # by the model
    facts: list[str] = []
    holds = False
    for item in items(observation):
        if _compare(condition.operator, _lookup(item, condition.field), condition.value):
            holds = True
            for name in condition.facts:
                value = _lookup(item, name)
                if value is not _MISSING and value not in (None, ""):
                    facts.append(_fact(name.replace("_", " "), value))
    return holds, facts


# A fact quotes what a program or platform printed: bounded, on one line.
_FACT_CHARS = 240


def _fact(name: str, value: Any) -> str:
    # A measured number (seconds to a limit, a ratio) with the precision that means something.
    shown = value
    if isinstance(value, float):
        shown = round(value) if abs(value) >= 1e4 else round(value, 4)
    text = " ".join(str(shown).split())
    if len(text) > _FACT_CHARS:
        text = text[: _FACT_CHARS - 1] + "…"
    return f"{name} {text}"


def items(observation: Observation) -> list[Any]:
    """Executors return one data item per container/pod/instance (a list), or one mapping."""
    data = observation.data
    if isinstance(data, list):
        return data
    return [data] if data is not None else []


def log_lines(observation: Observation, max_chars: int | None = None) -> list[str]:
    """The observation's log lines; each cut to `max_chars` (agents.yml log_matching), so a
    pattern never scans a megabyte-long line."""
    lines: list[str] = []
    reported = False
    for item in items(observation):
        if isinstance(item, dict) and isinstance(item.get("lines"), list):
            reported = True
            lines.extend(str(line) for line in item["lines"])
    # Where the read reports its lines, its output holds only notes about them (e.g. that
    # the previous container's log is gone): never match those as log lines.
    if not reported:
        lines = observation.output.splitlines()
    if max_chars is not None:
        lines = [line[:max_chars] for line in lines]
    return lines


def _lookup(item: Any, dotted: str) -> Any:
    """A dotted field; through a list, the first element that has it (containers.limits)."""
    current = item
    parts = dotted.split(".")
    for index, part in enumerate(parts):
        if isinstance(current, list):
            rest = ".".join(parts[index:])
            for element in current:
                found = _lookup(element, rest)
                if found is not _MISSING:
                    return found
            return _MISSING
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
