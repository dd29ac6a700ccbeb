"""Executor factory: environment type -> executor class, imported only when needed.

Cloud SDKs are heavy (kubernetes and oci each take a second to import), so the factory
names executor classes by import path and imports one only when an environment of that
type is used. Other executors plug in with `register_executor` without touching callers.
"""

from __future__ import annotations

import importlib
from typing import Any

from infrastructure.configuration.models import EnvironmentType
from infrastructure.executors.base import EnvironmentExecutor

# type -> "module:Class"
_EXECUTOR_PATHS: dict[str, str] = {
    EnvironmentType.DOCKER.value: "infrastructure.executors.docker:DockerExecutor",
    EnvironmentType.KUBERNETES.value: "infrastructure.executors.kubernetes:KubernetesExecutor",
    EnvironmentType.OCI.value: "infrastructure.executors.oci:OCIExecutor",
}
_EXECUTOR_CLASSES: dict[str, type[EnvironmentExecutor]] = {}


class ExecutorUnavailable(Exception):
    """No executor can be created for this environment type in this installation."""


def register_executor(env_type: str, executor: type[EnvironmentExecutor] | str) -> None:
    """Plug in an executor class (or a "module:Class" path) for an environment type."""
    if isinstance(executor, str):
        _EXECUTOR_PATHS[env_type] = executor
        _EXECUTOR_CLASSES.pop(env_type, None)
    else:
        _EXECUTOR_CLASSES[env_type] = executor


def executor_class(env_type: str) -> type[EnvironmentExecutor]:
    if env_type in _EXECUTOR_CLASSES:
        return _EXECUTOR_CLASSES[env_type]
    path = _EXECUTOR_PATHS.get(env_type)
    if path is None:
        raise ExecutorUnavailable(f"no executor is registered for environment type {env_type!r}")
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ExecutorUnavailable(
                f"the {env_type} executor ({module_name}) is not part of this UICI version"
            ) from exc
        raise ExecutorUnavailable(
            f"the {env_type} executor needs the Python package {exc.name!r}: pip install {exc.name}"
        ) from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, EnvironmentExecutor)):
        raise ExecutorUnavailable(f"{path} is not an EnvironmentExecutor")
    _EXECUTOR_CLASSES[env_type] = cls
    return cls


def create_executor(name: str, environment: Any) -> EnvironmentExecutor:
    """An executor for the named environment (its model from environments.yml)."""
    env_type = getattr(environment.type, "value", environment.type)
    return executor_class(env_type)(name, environment)
