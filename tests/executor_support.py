"""What the executor tests share: a configuration with one environment switched on against a
test double, and an operation run the way `uici run` runs it (registry, translator, executor)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from infrastructure.configuration.loader import UICIConfig
from infrastructure.executors.base import EnvironmentExecutor, OperationResult
from infrastructure.registry import OperationRegistry
from infrastructure.translator import CommandTranslator
from tests.conftest import SHIPPED_CONFIG


def shipped_config_with(target: Path, environment: str, **connection: Any) -> Path:
    """The shipped configuration copied to `target`, with `environment` enabled and these
    connection settings changed."""
    shutil.copytree(SHIPPED_CONFIG, target)
    path = target / "environments.yml"
    document = yaml.safe_load(path.read_text())
    settings = document["environments"][environment]
    settings["enabled"] = True
    settings["connection"].update(connection)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return target


def run_operation(
    environment: str,
    config: UICIConfig,
    executor: EnvironmentExecutor,
    operation: str,
    target: str | None = None,
    runtime: dict[str, Any] | None = None,
    **params: Any,
) -> OperationResult:
    """Validate, translate (with `runtime` values such as a remediation intent) and execute."""
    call = OperationRegistry.from_config(config).validate(operation, environment, params, target)
    return executor.execute(CommandTranslator.from_config(config).translate(call, runtime))
