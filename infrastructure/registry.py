"""OperationRegistry: what UICI can do, and whether a proposed call is valid.

Every call, whoever proposed it (a person on the CLI, the runbook planner, an LLM), is
validated here against `operations.yml` before anything is translated or executed.
Validation returns every problem at once.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from infrastructure.configuration.models import (
    EnvironmentsConfig,
    EnvironmentType,
    OperationsConfig,
    OperationSpec,
    ParameterSpec,
    ParameterType,
    RetrySettings,
    RiskLevel,
)
from infrastructure.observability.context import problems as observability_problems

if TYPE_CHECKING:
    from infrastructure.configuration.loader import UICIConfig

ProblemKind = Literal["unknown_operation", "unknown_environment", "unsupported", "invalid"]

_DURATION = re.compile(r"^(\d{1,9})([smhd])$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class CallProblem:
    """One reason a call is invalid. `key_path` is the parameter (or `target`, `environment`)."""

    key_path: tuple[str, ...]
    message: str
    expected: str = ""
    kind: ProblemKind = "invalid"

    def __str__(self) -> str:
        key = ".".join(self.key_path)
        prefix = f"{key}: " if key else ""
        expected = f" ({self.expected})" if self.expected else ""
        return f"{prefix}{self.message}{expected}"


class CallValidationError(Exception):
    def __init__(self, operation: str, problems: list[CallProblem]) -> None:
        self.operation = operation
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid call of {operation!r}:\n{lines}")

    @property
    def unsupported(self) -> bool:
        return any(p.kind == "unsupported" for p in self.problems)


class ValidatedCall(BaseModel):
    """A call that passed the registry: coerced parameters with defaults filled in."""

    model_config = ConfigDict(frozen=True)

    operation: str
    environment: str
    environment_type: EnvironmentType
    target: str | None
    parameters: dict[str, Any]
    risk: RiskLevel
    timeout_seconds: float
    retry: RetrySettings


def duration_seconds(value: str) -> int:
    """`"5m"` -> 300. Only for values the registry has validated as durations."""
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"not a duration: {value!r}")
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


class OperationRegistry:
    def __init__(
        self, operations: OperationsConfig, environments: EnvironmentsConfig | None = None
    ) -> None:
        self._operations = operations
        self._environments = environments
        self._target_pattern = re.compile(operations.targets.pattern)

    @classmethod
    def from_config(cls, config: UICIConfig) -> OperationRegistry:
        return cls(config.operations, config.environments)

    # --- discovery ------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._operations.operations)

    def describe(self, name: str) -> OperationSpec:
        spec = self._operations.operations.get(name)
        if spec is None:
            raise CallValidationError(name, [self._unknown_operation(name)])
        return spec

    def operations_for(self, environment: str | None = None) -> list[tuple[str, OperationSpec]]:
        """All operations, or those the named environment can run: its type supports them,
        and it names the metric or log source they need."""
        if environment is None:
            return [(name, self._operations.operations[name]) for name in self.names()]
        env_type = self._environment_type(environment)
        assert self._environments is not None  # _environment_type checked it
        observability = self._environments.environments[environment].observability
        return [
            (name, spec)
            for name, spec in sorted(self._operations.operations.items())
            if env_type in spec.environments
            and (spec.requires is None or observability.source(spec.requires) is not None)
        ]

    def support(self, name: str, env_type: EnvironmentType) -> tuple[bool, str]:
        """Whether an environment type supports the operation, and if not, why."""
        spec = self.describe(name)
        if env_type in spec.environments:
            return True, ""
        reason = spec.unsupported.get(env_type)
        if reason:
            return False, reason
        return False, f"{name} is not implemented for {env_type.value} environments"

    def _environment_type(self, environment: str) -> EnvironmentType:
        if self._environments is None or environment not in self._environments.environments:
            raise CallValidationError("", [self._unknown_environment(environment)])
        return self._environments.environments[environment].type

    # --- validation -----------------------------------------------------------------

    def validate(
        self,
        operation: str,
        environment: str,
        parameters: dict[str, Any] | None = None,
        target: str | None = None,
        *,
        allow_disabled: bool = False,
    ) -> ValidatedCall:
        """Validate a whole call; raise CallValidationError listing every problem.

        `allow_disabled=True` is for dry runs only (they touch nothing, so a disabled
        environment can still be validated and translated against); never pass it on a path
        that executes. The gate validates again without it before anything is sent.
        """
        parameters = dict(parameters or {})
        spec = self._operations.operations.get(operation)
        if spec is None:
            raise CallValidationError(operation, [self._unknown_operation(operation)])
        problems: list[CallProblem] = []

        env_type: EnvironmentType | None = None
        environments = self._environments.environments if self._environments else {}
        env_config = environments.get(environment)
        if env_config is None:
            problems.append(self._unknown_environment(environment))
        else:
            env_type = env_config.type
            if not env_config.enabled and not allow_disabled:
                problems.append(
                    CallProblem(
                        ("environment",),
                        f"environment {environment!r} is disabled",
                        f"set environments.{environment}.enabled: true in environments.yml",
                    )
                )
            supported, reason = self.support(operation, env_type)
            if not supported:
                problems.append(
                    CallProblem(
                        ("environment",),
                        f"{operation} is unsupported on {env_type.value} environments: {reason}",
                        kind="unsupported",
                    )
                )

        problems.extend(self._check_target(operation, spec, target))
        coerced, parameter_problems = self._coerce_parameters(spec, parameters)
        problems.extend(parameter_problems)
        if env_config is not None and not problems:
            # Metric and log operations: the environment must name the source, and the call
            # must say whose series or streams it reads.
            problems.extend(
                CallProblem(key_path, message, expected, kind="unsupported")
                if key_path == ("environment",)
                else CallProblem(key_path, message, expected)
                for key_path, message, expected in observability_problems(
                    operation, spec, environment, env_config, target, coerced
                )
            )
        if problems or env_type is None:
            raise CallValidationError(operation, problems)
        return ValidatedCall(
            operation=operation,
            environment=environment,
            environment_type=env_type,
            target=target,
            parameters=coerced,
            risk=spec.risk,
            timeout_seconds=spec.timeout_seconds,
            retry=spec.retry,
        )

    def check_parameters(self, operation: str, parameters: dict[str, Any]) -> list[CallProblem]:
        """Parameter problems only (used for runbook steps, which have no target yet)."""
        spec = self._operations.operations.get(operation)
        if spec is None:
            return [self._unknown_operation(operation)]
        _, problems = self._coerce_parameters(spec, parameters, fill_required=False)
        return problems

    def target_problem(self, target: str) -> str | None:
        """Why `target` is not acceptable as a target name, or None (checks alert labels)."""
        rules = self._operations.targets
        if (
            not target
            or len(target) > rules.max_length
            or not self._target_pattern.fullmatch(target)
        ):
            return f"invalid target {target[:80]!r} ({rules.description})"
        return None

    def _check_target(
        self, operation: str, spec: OperationSpec, target: str | None
    ) -> list[CallProblem]:
        rules = self._operations.targets
        if target is None or target == "":
            if spec.target == "required":
                return [CallProblem(("target",), f"{operation} needs a target", rules.description)]
            return []
        if spec.target == "none":
            return [CallProblem(("target",), f"{operation} takes no target", "omit the target")]
        if not isinstance(target, str):
            return [CallProblem(("target",), f"must be a string, got {type(target).__name__}")]
        if len(target) > rules.max_length:
            return [
                CallProblem(
                    ("target",),
                    f"is {len(target)} characters long",
                    f"at most {rules.max_length}",
                )
            ]
        if not self._target_pattern.fullmatch(target):
            return [CallProblem(("target",), f"invalid target {target!r}", rules.description)]
        return []

    def _coerce_parameters(
        self, spec: OperationSpec, parameters: dict[str, Any], fill_required: bool = True
    ) -> tuple[dict[str, Any], list[CallProblem]]:
        problems: list[CallProblem] = []
        result: dict[str, Any] = {}
        for name, value in parameters.items():
            parameter = spec.parameters.get(name)
            if parameter is None:
                close = difflib.get_close_matches(str(name), list(spec.parameters), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                known = ", ".join(sorted(spec.parameters)) or "none"
                problems.append(
                    CallProblem((str(name),), "unknown parameter", f"{hint}parameters: {known}")
                )
                continue
            if value is None:
                continue
            coerced, problem = coerce_value(parameter, value)
            if problem is not None:
                problems.append(CallProblem((name,), *problem))
            else:
                result[name] = coerced
        for name, parameter in spec.parameters.items():
            if name in result:
                continue
            if parameter.required:
                if fill_required:
                    problems.append(
                        CallProblem((name,), "missing required parameter", parameter.description)
                    )
            else:
                result[name] = parameter.default
        return result, problems

    def _unknown_operation(self, name: str) -> CallProblem:
        close = difflib.get_close_matches(str(name), self.names(), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return CallProblem(
            ("operation",),
            f"unknown operation {name!r}",
            f"{hint}`uici ops list` shows all",
            kind="unknown_operation",
        )

    def _unknown_environment(self, name: str) -> CallProblem:
        known = sorted(self._environments.environments) if self._environments else []
        return CallProblem(
            ("environment",),
            f"unknown environment {name!r}",
            f"one of: {', '.join(known)}" if known else "define it in environments.yml",
            kind="unknown_environment",
        )


def coerce_value(parameter: ParameterSpec, value: Any) -> tuple[Any, tuple[str, str] | None]:
    """Coerce one value to its declared type (CLI strings included) and check its bounds.

    Returns the value and None, or None and (message, expected).
    """
    kind = parameter.type
    if kind is ParameterType.STRING_LIST:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            return None, (f"invalid value {value!r}", "a list of strings")
        coerced_items = []
        for item in items:
            item_value, problem = _coerce_scalar(parameter, item, ParameterType.STRING)
            if problem is not None:
                return None, problem
            coerced_items.append(item_value)
        return coerced_items, None
    return _coerce_scalar(parameter, value, kind)


def _coerce_scalar(
    parameter: ParameterSpec, value: Any, kind: ParameterType
) -> tuple[Any, tuple[str, str] | None]:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    coerced: Any
    if kind is ParameterType.INTEGER:
        if isinstance(value, bool):
            return None, (f"invalid value {shown}", "an integer")
        if isinstance(value, int):
            coerced = value
        elif isinstance(value, float) and value.is_integer():
            coerced = int(value)
        elif isinstance(value, str) and re.fullmatch(r"[+-]?\d{1,18}", value.strip()):
            coerced = int(value.strip())
        else:
            return None, (f"invalid value {shown}", "an integer")
    elif kind is ParameterType.NUMBER:
        if isinstance(value, bool):
            return None, (f"invalid value {shown}", "a number")
        try:
            coerced = float(value) if isinstance(value, int | float | str) else None
        except ValueError:
            coerced = None
        if coerced is None or not math.isfinite(coerced):
            return None, (f"invalid value {shown}", "a finite number")
    elif kind is ParameterType.BOOLEAN:
        if isinstance(value, bool):
            coerced = value
        elif isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            coerced = value.strip().lower() in _TRUE
        else:
            return None, (f"invalid value {shown}", "true or false")
    elif kind is ParameterType.DURATION:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            coerced = f"{value}s"
        elif isinstance(value, str) and _DURATION.match(value.strip()):
            coerced = value.strip()
        else:
            return None, (f"invalid value {shown}", "a duration such as 30s, 5m, 2h or 1d")
    else:
        if not isinstance(value, str):
            return None, (f"invalid value {shown}", "a string")
        if _CONTROL_CHARACTERS.search(value):
            return None, (f"invalid value {shown}", "text without control characters or newlines")
        coerced = value

    if parameter.minimum is not None and coerced < parameter.minimum:
        return None, (f"{coerced} is out of bounds", _bounds(parameter))
    if parameter.maximum is not None and coerced > parameter.maximum:
        return None, (f"{coerced} is out of bounds", _bounds(parameter))
    if parameter.enum is not None and coerced not in parameter.enum:
        return None, (
            f"invalid value {shown}",
            f"one of: {', '.join(str(e) for e in parameter.enum)}",
        )
    if isinstance(coerced, str):
        if parameter.max_length is not None and len(coerced) > parameter.max_length:
            return None, (f"is {len(coerced)} characters long", f"at most {parameter.max_length}")
        if parameter.pattern is not None and not re.fullmatch(parameter.pattern, coerced):
            return None, (f"invalid value {shown}", f"must match {parameter.pattern}")
    return coerced, None


def _bounds(parameter: ParameterSpec) -> str:
    def show(number: float | None) -> str:
        return (
            str(int(number)) if number is not None and float(number).is_integer() else str(number)
        )

    if parameter.minimum is not None and parameter.maximum is not None:
        return f"between {show(parameter.minimum)} and {show(parameter.maximum)}"
    if parameter.minimum is not None:
        return f"at least {show(parameter.minimum)}"
    return f"at most {show(parameter.maximum)}"
