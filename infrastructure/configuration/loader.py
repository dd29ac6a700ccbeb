"""UniversalConfigLoader: the one way UICI reads its configuration.

Reads the five files, interpolates `${VAR}` references, validates each file against
its model and then the references between files, and reports every problem at once
as `file:line: key.path: what is wrong (what is expected)`.
"""

from __future__ import annotations

import hashlib
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from infrastructure.configuration.models import (
    CONNECTION_MODELS,
    GLOBAL_CONTEXT_KEYS,
    PHASES,
    WRITE_CONTEXT_KEYS,
    AgentsConfig,
    ArgvGroup,
    EnvironmentsConfig,
    EnvironmentType,
    OperationsConfig,
    OperationSpec,
    PlatformConfig,
    RiskLevel,
    TranslationsConfig,
)
from infrastructure.configuration.problems import ConfigError, ConfigProblem
from infrastructure.configuration.yaml_source import (
    KeyPath,
    YamlDocument,
    format_key_path,
    interpolate_environment,
    load_yaml_document,
)
from infrastructure.redaction import REDACTED, is_secret_key
from infrastructure.templates import placeholders

CONFIG_DIR_VARIABLE = "UICI_CONFIG_DIR"
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"

# file stem -> (file name, model)
CONFIG_FILES: dict[str, tuple[str, type[BaseModel]]] = {
    "platform": ("platform.yml", PlatformConfig),
    "agents": ("agents.yml", AgentsConfig),
    "environments": ("environments.yml", EnvironmentsConfig),
    "operations": ("operations.yml", OperationsConfig),
    "translations": ("command_translations.yml", TranslationsConfig),
}


@dataclass(frozen=True)
class UICIConfig:
    """The validated configuration of one UICI process."""

    platform: PlatformConfig
    agents: AgentsConfig
    environments: EnvironmentsConfig
    operations: OperationsConfig
    translations: TranslationsConfig
    directory: Path
    fingerprint: str
    documents: Mapping[str, YamlDocument] = field(repr=False, compare=False)

    def masked(self) -> dict[str, Any]:
        """Every file's settings with secrets replaced by `**********`."""
        return {
            CONFIG_FILES[stem][0]: _mask(getattr(self, stem).model_dump(mode="json"))
            for stem in CONFIG_FILES
        }


def _mask(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, key) for v in value]
    if key and is_secret_key(key) and value not in (None, ""):
        return REDACTED
    if isinstance(value, str):
        # A URL's password (storage.url: postgresql://user:password@host/db) whatever the key.
        return _URL_PASSWORD.sub(rf"\1{REDACTED}\2", value)
    return value


_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^@/\s]+(@)")


def resolve_config_dir(
    directory: str | Path | None, environ: Mapping[str, str] | None = None
) -> Path:
    """Explicit argument, else UICI_CONFIG_DIR, else the configuration shipped with UICI."""
    env = os.environ if environ is None else environ
    if directory:
        return Path(directory)
    if env.get(CONFIG_DIR_VARIABLE):
        return Path(env[CONFIG_DIR_VARIABLE])
    return PACKAGED_CONFIG_DIR


class UniversalConfigLoader:
    """Loads and validates the configuration directory; raises ConfigError with every problem."""

    def __init__(
        self, directory: str | Path | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.directory = resolve_config_dir(directory, self.environ)

    def fingerprint(self) -> str:
        """A digest of the files' bytes (missing files count), to notice changes cheaply."""
        digest = hashlib.sha256()
        for file_name, _ in CONFIG_FILES.values():
            path = self.directory / file_name
            digest.update(file_name.encode())
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"\0missing")
        return digest.hexdigest()

    def load(self) -> UICIConfig:
        if not self.directory.is_dir():
            names = [file_name for file_name, _ in CONFIG_FILES.values()]
            raise ConfigError(
                [
                    ConfigProblem(
                        file=self.directory,
                        line=None,
                        key="",
                        message="configuration directory does not exist",
                        expected=f"a directory holding {', '.join(names)};"
                        f" set {CONFIG_DIR_VARIABLE} or --config-dir",
                    )
                ]
            )
        fingerprint = self.fingerprint()
        problems: list[ConfigProblem] = []
        documents: dict[str, YamlDocument] = {}
        models: dict[str, BaseModel] = {}
        for stem, (file_name, model) in CONFIG_FILES.items():
            document, file_problems = load_yaml_document(self.directory / file_name)
            problems.extend(file_problems)
            if document is None:
                continue
            documents[stem] = document
            env_problems = interpolate_environment(document, self.environ)
            problems.extend(env_problems)
            if document.data is None:
                problems.append(
                    ConfigProblem(
                        file=document.path,
                        line=1,
                        key="",
                        message="file is empty",
                        expected=f"the settings of {file_name}; copy the shipped file",
                    )
                )
                continue
            if env_problems:
                continue  # values are incomplete; validating them would only add noise
            try:
                models[stem] = model.model_validate(document.data)
            except ValidationError as exc:
                problems.extend(_validation_problems(exc, document, model))

        if len(models) == len(CONFIG_FILES):
            problems.extend(
                cross_check(
                    platform=typing.cast(PlatformConfig, models["platform"]),
                    agents=typing.cast(AgentsConfig, models["agents"]),
                    environments=typing.cast(EnvironmentsConfig, models["environments"]),
                    operations=typing.cast(OperationsConfig, models["operations"]),
                    translations=typing.cast(TranslationsConfig, models["translations"]),
                    documents=documents,
                )
            )
        if problems:
            raise ConfigError(problems)
        return UICIConfig(
            platform=typing.cast(PlatformConfig, models["platform"]),
            agents=typing.cast(AgentsConfig, models["agents"]),
            environments=typing.cast(EnvironmentsConfig, models["environments"]),
            operations=typing.cast(OperationsConfig, models["operations"]),
            translations=typing.cast(TranslationsConfig, models["translations"]),
            directory=self.directory,
            fingerprint=fingerprint,
            documents=documents,
        )


def load_config(
    directory: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> UICIConfig:
    """Shortcut used by every entry point (CLI, service, flows)."""
    return UniversalConfigLoader(directory, environ).load()


# --- pydantic errors -> located problems --------------------------------------------------


def _validation_problems(
    exc: ValidationError, document: YamlDocument, model: type[BaseModel]
) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors():
        key_path, is_key_error = _normalise_loc(error["loc"], document.data)
        key = format_key_path(key_path)
        line = document.line_of(key_path)
        kind = error["type"]
        message_text = str(error["msg"])
        if message_text == "Keys should be strings":
            if isinstance(error.get("input"), bool):
                continue  # reported while reading the file, with the fix (quote it)
            message = f"key {error.get('input')!r} is not a string"
            expected = "quote it"
        elif kind == "union_tag_invalid":
            context = error.get("ctx") or {}
            key = format_key_path((*key_path, "type"))
            line = document.line_of((*key_path, "type"))
            message = f"invalid value {context.get('tag')!r}"
            tags = re.findall(r"'([^']+)'", str(context.get("expected_tags", "")))
            expected = f"one of: {', '.join(tags)}"
        elif kind == "missing":
            message, expected = "missing required key", "add it; the shipped file shows an example"
        elif kind == "extra_forbidden":
            allowed = _allowed_keys(model, key_path[:-1], document.data)
            message = "unknown key"
            expected = (
                f"one of: {', '.join(allowed)}" if allowed else "remove it or fix its spelling"
            )
        elif is_key_error:
            message = f"invalid name {str(key_path[-1])!r}"
            expected = _expected_from(message_text)
        elif kind in ("value_error", "assertion_error"):
            message = message_text.removeprefix("Value error, ").removeprefix("Assertion failed, ")
            expected = ""
        else:
            shown = repr(REDACTED) if is_secret_key(key) else _short_repr(error.get("input"))
            message = f"invalid value {shown}"
            expected = _expected_from(message_text)
        problems.append(
            ConfigProblem(
                file=document.path, line=line, key=key, message=message, expected=expected
            )
        )
    # A broken default_policy also breaks every environment it is merged into: say it once.
    default_messages = {p.message for p in problems if p.key.startswith("default_policy")}
    return [
        p
        for p in problems
        if not (
            p.key.startswith("environments.")
            and p.key.endswith(".policy")
            and p.message in default_messages
        )
    ]


def _expected_from(pydantic_message: str) -> str:
    for prefix in ("Input should be ", "String should "):
        if pydantic_message.startswith(prefix):
            rest = pydantic_message.removeprefix(prefix)
            return rest if prefix == "Input should be " else f"a string that should {rest}"
    return pydantic_message


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _normalise_loc(loc: tuple[int | str, ...], data: Any) -> tuple[KeyPath, bool]:
    """Map a pydantic error location onto keys that exist in the YAML data.

    Drops union discriminator tags (`environments.x.docker.connection` becomes
    `environments.x.connection`) and marks errors about a mapping key itself (`[key]`).
    """
    path: list[str | int] = []
    current = data
    is_key_error = False
    for index, segment in enumerate(loc):
        last = index == len(loc) - 1
        if segment == "[key]":
            is_key_error = True
            continue
        if _has_child(current, segment):
            path.append(segment)
            current = current[segment]
        elif isinstance(current, dict) and not last and current.get("type") == segment:
            continue  # discriminated-union tag, not a key in the file
        elif last:
            path.append(segment)
        else:
            continue
    return tuple(path), is_key_error


def _has_child(container: Any, segment: str | int) -> bool:
    if isinstance(container, dict):
        return segment in container
    return (
        isinstance(container, list) and isinstance(segment, int) and 0 <= segment < len(container)
    )


def _allowed_keys(model: type[BaseModel], parent: KeyPath, data: Any) -> list[str]:
    """The field names of the model found at `parent`, for 'unknown key' messages."""
    annotation: Any = model
    current = data
    for segment in parent:
        annotation = _pick_model(annotation, current)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field_info = annotation.model_fields.get(str(segment))
            if field_info is None:
                return []
            annotation = field_info.annotation
        else:
            origin = get_origin(annotation)
            args = get_args(annotation)
            if origin is dict and len(args) == 2:
                annotation = args[1]
            elif origin is list and args:
                annotation = args[0]
            else:
                return []
        current = (
            current.get(segment)
            if isinstance(current, dict)
            else (
                current[segment] if isinstance(current, list) and isinstance(segment, int) else None
            )
        )
    annotation = _pick_model(annotation, current)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _pick_model(annotation: Any, data: Any) -> Any:
    """Unwrap Annotated/Optional/unions to the model that applies to `data`."""
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        candidates = [
            a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        for candidate in candidates:
            type_field = candidate.model_fields.get("type")
            if type_field is not None and isinstance(data, dict):
                allowed = [getattr(v, "value", v) for v in get_args(type_field.annotation)]
                if data.get("type") in allowed:
                    return candidate
        if candidates:
            return candidates[0]
    return annotation


# --- references between files ------------------------------------------------------------


def cross_check(
    *,
    platform: PlatformConfig,
    agents: AgentsConfig,
    environments: EnvironmentsConfig,
    operations: OperationsConfig,
    translations: TranslationsConfig,
    documents: Mapping[str, YamlDocument],
) -> list[ConfigProblem]:
    # Imported here: the registry builds on the models, and the loader must not import it at
    # module level (the registry imports the loader's config type).
    from infrastructure.registry import OperationRegistry, coerce_value

    problems: list[ConfigProblem] = []

    def problem(stem: str, key_path: KeyPath, message: str, expected: str) -> None:
        document = documents[stem]
        problems.append(
            ConfigProblem(
                file=document.path,
                line=document.line_of(key_path),
                key=format_key_path(key_path),
                message=message,
                expected=expected,
            )
        )

    environment_names = sorted(environments.environments)
    if platform.platform.default_environment not in environments.environments:
        problem(
            "platform",
            ("platform", "default_environment"),
            f"environment {platform.platform.default_environment!r} is not defined"
            " in environments.yml",
            f"one of: {', '.join(environment_names)}",
        )

    for index, alert_rule in enumerate(platform.alerts.rules):
        if alert_rule.environment not in environments.environments:
            problem(
                "platform",
                ("alerts", "rules", index, "environment"),
                f"environment {alert_rule.environment!r} is not defined in environments.yml",
                f"one of: {', '.join(environment_names)}",
            )

    operation_names = sorted(operations.operations)

    # translations -> operations
    for env_type, by_operation in translations.translations.items():
        for op_name, translation in by_operation.items():
            where: KeyPath = ("translations", env_type.value, op_name)
            spec = operations.operations.get(op_name)
            if spec is None:
                problem(
                    "translations",
                    where,
                    f"translation for unknown operation {op_name!r}",
                    f"an operation defined in operations.yml: {', '.join(operation_names)}",
                )
                continue
            if env_type not in spec.environments:
                problem(
                    "translations",
                    where,
                    f"operation {op_name!r} does not list environment type"
                    f" {env_type.value!r} as supported",
                    f"add {env_type.value} to operations.{op_name}.environments in operations.yml,"
                    " or remove this translation",
                )
            context_keys = set(_context_keys(env_type, spec))
            known = {*spec.parameters, "environment", *context_keys}
            if spec.risk is not RiskLevel.READ:
                known.update(WRITE_CONTEXT_KEYS)
            if spec.target != "none":
                known.add("target")
            for arg, source in translation.args.items():
                if source not in known:
                    problem(
                        "translations",
                        (*where, "args", arg),
                        f"maps to unknown parameter {source!r}",
                        f"one of: {', '.join(sorted(known))}",
                    )
            for index, item in enumerate(translation.command):
                item_path: KeyPath = (*where, "command", index)
                if isinstance(item, ArgvGroup):
                    if item.when not in known:
                        problem(
                            "translations",
                            (*item_path, "when"),
                            f"refers to unknown parameter {item.when!r}",
                            f"one of: {', '.join(sorted(known))}",
                        )
                    texts = item.argv
                    always_present: set[str] = known  # a group renders only when `when` is set
                else:
                    texts = [item]
                    always_present = _always_present(spec, context_keys)
                for text in texts:
                    for name in placeholders(text):
                        if name not in known:
                            problem(
                                "translations",
                                item_path,
                                f"placeholder {{{name}}} names no parameter of {op_name!r}",
                                f"one of: {', '.join(sorted(known))}",
                            )
                        elif name not in always_present:
                            problem(
                                "translations",
                                item_path,
                                f"placeholder {{{name}}} may have no value (optional, no default)",
                                f"put it in a group: {{when: {name}, argv: [..., '{{{name}}}']}}",
                            )

    # operations: defaults and enums must satisfy their own parameter declarations
    for op_name, spec in operations.operations.items():
        for parameter_name, parameter in spec.parameters.items():
            where = ("operations", op_name, "parameters", parameter_name)
            if parameter.default is not None:
                _, default_problem = coerce_value(parameter, parameter.default)
                if default_problem is not None:
                    problem(
                        "operations",
                        (*where, "default"),
                        f"default {default_problem[0]}",
                        default_problem[1],
                    )
            if parameter_name == "level":
                for e_index, level in enumerate(parameter.enum or []):
                    if level not in operations.log_levels:
                        problem(
                            "operations",
                            (*where, "enum", e_index),
                            f"level {level!r} has no pattern in log_levels",
                            f"one of: {', '.join(operations.log_levels)}",
                        )
            for e_index, choice in enumerate(parameter.enum or []):
                _, choice_problem = coerce_value(
                    parameter.model_copy(update={"enum": None}), choice
                )
                if choice_problem is not None:
                    problem(
                        "operations",
                        (*where, "enum", e_index),
                        f"enum value {choice_problem[0]}",
                        choice_problem[1],
                    )

    # operations -> translations
    for op_name, spec in operations.operations.items():
        for index, env_type in enumerate(spec.environments):
            if op_name not in translations.translations.get(env_type, {}):
                problem(
                    "operations",
                    ("operations", op_name, "environments", index),
                    f"supported on {env_type.value!r} but command_translations.yml has no"
                    f" translations.{env_type.value}.{op_name}",
                    "add the translation, or move the type to `unsupported` with a reason",
                )

    # environments -> translations
    for name, environment in environments.environments.items():
        if not translations.translations.get(environment.type):
            problem(
                "environments",
                ("environments", name, "type"),
                f"environment type {environment.type.value!r} has no translations",
                f"add a translations.{environment.type.value} section to command_translations.yml",
            )

    for index, log_operation in enumerate(agents.log_matching.log_operations):
        if log_operation not in operations.operations:
            problem(
                "agents",
                ("log_matching", "log_operations", index),
                f"unknown operation {log_operation!r}",
                f"one of: {', '.join(operation_names)}",
            )

    # agents -> operations (validated with the registry, exactly as a planned step would be)
    registry = OperationRegistry(operations)

    def check_call(where: KeyPath, operation: str, params: dict[str, Any]) -> OperationSpec | None:
        """An operation named in agents.yml, and its parameters, as the registry would see them."""
        spec = operations.operations.get(operation)
        if spec is None:
            problem(
                "agents",
                (*where, "operation"),
                f"unknown operation {operation!r}",
                f"one of: {', '.join(operation_names)}",
            )
            return None
        for parameter_problem in registry.check_parameters(operation, params):
            problem(
                "agents",
                (*where, "params", *parameter_problem.key_path),
                parameter_problem.message,
                parameter_problem.expected,
            )
        return spec

    for r_index, runbook in enumerate(agents.runbooks):
        for phase in PHASES:
            for s_index, step in enumerate(runbook.phases.get(phase, [])):  # type: ignore[call-overload]
                where = ("runbooks", r_index, "phases", phase, s_index)
                spec = check_call(where, step.operation, step.params)
                if spec is not None and spec.target == "required" and step.target == "none":
                    problem(
                        "agents",
                        (*where, "target"),
                        f"operation {step.operation!r} needs a target",
                        "target: service or target: dependencies",
                    )
                if step.when is not None:
                    _check_conditions(step.when, (*where, "when"), operations, problem)
        for a_index, op_name in enumerate(runbook.auto_approve):
            spec = operations.operations.get(op_name)
            where = ("runbooks", r_index, "auto_approve", a_index)
            if spec is None:
                problem(
                    "agents",
                    where,
                    f"unknown operation {op_name!r}",
                    f"one of: {', '.join(operation_names)}",
                )
            elif spec.risk is not RiskLevel.WRITE:
                problem(
                    "agents",
                    where,
                    f"operation {op_name!r} has risk {spec.risk.value!r};"
                    " only write operations can be auto-approved",
                    "remove it: read steps need no approval and destructive ones are never"
                    " auto-approved",
                )
    for d_index, rule in enumerate(agents.diagnosis_rules):
        where = ("diagnosis_rules", d_index)
        _check_conditions(rule.when, (*where, "when"), operations, problem)
        for f_index, condition in enumerate(rule.facts):
            if condition.observation not in operations.operations:
                problem(
                    "agents",
                    (*where, "facts", f_index, "observation"),
                    f"unknown operation {condition.observation!r}",
                    f"one of: {', '.join(sorted(operations.operations))}",
                )
        for a_index, action in enumerate(rule.recommended_actions):
            check_call((*where, "recommended_actions", a_index), action.operation, action.params)
    # What a dependency named only by a log may have run on it: reads, nothing else.
    for o_index, op_name in enumerate(agents.dependency_discovery.read_operations):
        spec = operations.operations.get(op_name)
        where = ("dependency_discovery", "read_operations", o_index)
        if spec is None:
            problem(
                "agents",
                where,
                f"unknown operation {op_name!r}",
                f"one of: {', '.join(operation_names)}",
            )
        elif spec.risk is not RiskLevel.READ:
            problem(
                "agents",
                where,
                f"operation {op_name!r} has risk {spec.risk.value!r}; a dependency discovered"
                " in a log may only be read",
                "list read operations only, e.g. get_status",
            )
    return problems


def _check_conditions(
    when: Any, where: KeyPath, operations: OperationsConfig, problem: Any
) -> None:
    for group in ("all", "any"):
        for index, condition in enumerate(getattr(when, group)):
            if condition.observation not in operations.operations:
                problem(
                    "agents",
                    (*where, group, index, "observation"),
                    f"unknown operation {condition.observation!r}",
                    f"one of: {', '.join(sorted(operations.operations))}",
                )


def _context_keys(env_type: EnvironmentType, spec: Any) -> tuple[str, ...]:
    from infrastructure.observability.context import OBSERVABILITY_CONTEXT_KEYS

    # Metric and log operations also get the values derived for them (query, window, LogQL).
    derived = OBSERVABILITY_CONTEXT_KEYS if spec.requires else ()
    return (*CONNECTION_MODELS[env_type].CONTEXT_KEYS, *GLOBAL_CONTEXT_KEYS, *derived)


def _always_present(spec: Any, context_keys: set[str]) -> set[str]:
    from infrastructure.observability.context import OBSERVABILITY_CONTEXT_KEYS, always_set

    # A derived value is present only where the call makes it (context.always_set).
    present = {"environment", *(context_keys - set(OBSERVABILITY_CONTEXT_KEYS)), *always_set(spec)}
    if spec.target == "required":
        present.add("target")
    for name, parameter in spec.parameters.items():
        if parameter.required or parameter.default is not None:
            present.add(name)
    return present
