"""CommandTranslator: a validated universal call -> an environment-specific call spec.

The spec names the executor method and its keyword arguments, and carries the equivalent
command a person would type as an argv list (for dry runs, reports and the audit trail).
No shell is used anywhere: every parameter value lands inside exactly one argv element,
whatever characters it contains, and the argv is never executed by UICI.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from infrastructure.configuration.models import (
    ArgvGroup,
    EnvironmentsConfig,
    EnvironmentType,
    OperationsConfig,
    RetrySettings,
    RiskLevel,
    TranslationsConfig,
)
from infrastructure.observability.context import values as observability_values
from infrastructure.registry import ValidatedCall
from infrastructure.templates import render

if TYPE_CHECKING:
    from infrastructure.configuration.loader import UICIConfig


class TranslationError(Exception):
    """The configuration cannot translate this call (a gap the loader's checks did not catch)."""


class CommandSpec(BaseModel):
    """What an executor runs, and what a person would type to do the same."""

    model_config = ConfigDict(frozen=True)

    operation: str
    environment: str
    environment_type: EnvironmentType
    target: str | None
    method: str
    arguments: dict[str, Any]
    command: list[str]
    risk: RiskLevel
    timeout_seconds: float
    retry: RetrySettings

    def command_line(self) -> str:
        """The argv as one line a person can paste (each element shell-quoted for display)."""
        return shlex.join(self.command)

    def executor_call(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.arguments.items())
        return f"{self.environment_type.value}.{self.method}({arguments})"


class CommandTranslator:
    def __init__(
        self,
        translations: TranslationsConfig,
        environments: EnvironmentsConfig,
        operations: OperationsConfig,
    ) -> None:
        self._translations = translations
        self._environments = environments
        self._operations = operations
        self._global_context = {"log_level_patterns": dict(operations.log_levels)}

    @classmethod
    def from_config(cls, config: UICIConfig) -> CommandTranslator:
        return cls(config.translations, config.environments, config.operations)

    def translate(self, call: ValidatedCall, runtime: dict[str, Any] | None = None) -> CommandSpec:
        """`runtime`: values known only when the call is made (WRITE_CONTEXT_KEYS, e.g. the
        remediation intent), never taken from a plan."""
        translation = self._translations.translations.get(call.environment_type, {}).get(
            call.operation
        )
        if translation is None:
            raise TranslationError(
                f"no translation for {call.operation!r} on"
                f" {call.environment_type.value} environments"
                f" (add translations.{call.environment_type.value}.{call.operation}"
                " to command_translations.yml)"
            )
        environment = self._environments.environments[call.environment]
        spec = self._operations.operations[call.operation]
        values: dict[str, Any] = {
            **self._global_context,
            **environment.connection.command_context(),
            **call.parameters,
            # Metric and log calls: the resolved query and window, shown and run alike.
            **observability_values(spec, environment, call.target, call.parameters),
            **(runtime or {}),
            "environment": call.environment,
            "target": call.target,
        }
        arguments = {arg: values.get(source) for arg, source in translation.args.items()}
        arguments.update(translation.constants)

        command: list[str] = []
        for item in translation.command:
            if isinstance(item, ArgvGroup):
                if _is_set(values.get(item.when)):
                    command.extend(_render(text, values, call.operation) for text in item.argv)
            else:
                command.append(_render(item, values, call.operation))
        return CommandSpec(
            operation=call.operation,
            environment=call.environment,
            environment_type=call.environment_type,
            target=call.target,
            method=translation.method,
            arguments=arguments,
            command=command,
            risk=call.risk,
            timeout_seconds=call.timeout_seconds,
            retry=call.retry,
        )


def _is_set(value: Any) -> bool:
    return value is not None and value is not False and value != "" and value != []


def _render(template: str, values: dict[str, Any], operation: str) -> str:
    """Fill `{name}` placeholders; the result is always exactly one argv element."""

    def value_of(name: str) -> str:
        value = values.get(name)
        if value is None:
            raise TranslationError(f"{operation}: placeholder {{{name}}} has no value")
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        return str(value)

    return render(template, value_of)
