"""The executor interface and factory, exercised through a small executor of the tests' own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from infrastructure.configuration.loader import UICIConfig, load_config
from infrastructure.configuration.models import EnvironmentType
from infrastructure.executors import factory
from infrastructure.executors.base import (
    EnvironmentExecutor,
    ErrorKind,
    ExecutorError,
    MethodOutput,
    ResolvedTarget,
    executor_method,
)
from infrastructure.executors.factory import (
    ExecutorUnavailable,
    create_executor,
    executor_class,
    register_executor,
)
from infrastructure.registry import OperationRegistry
from infrastructure.translator import CommandSpec, CommandTranslator
from tests.conftest import DATA


class RecordingExecutor(EnvironmentExecutor):
    """Implements the interface against an in-memory list of services."""

    environment_type: ClassVar[EnvironmentType] = EnvironmentType.DOCKER
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    @executor_method
    def get_logs(
        self, target: str, lines: int, since: str | None, level: str | None
    ) -> MethodOutput:
        self.calls.append(("get_logs", {"target": target, "lines": lines}))
        if target == "missing":
            raise ExecutorError(ErrorKind.PERMANENT, "no such container: missing", "try: web")
        if target == "flaky":
            raise ExecutorError(ErrorKind.RETRYABLE, "engine timed out")
        return MethodOutput(output="line 1\nline 2", data={"lines": 2})

    @executor_method
    def list_services(self) -> MethodOutput:
        return MethodOutput(data=[{"name": "web"}])

    def restart_service(self, target: str) -> MethodOutput:  # deliberately not an executor method
        raise AssertionError("must never be reachable from a translation")

    def check_connection(self) -> MethodOutput:
        return MethodOutput(output="reachable")

    def write_targets(self, target: str) -> list[ResolvedTarget]:
        return [ResolvedTarget(identity=f"id-{target}", name=target)]


@pytest.fixture
def config() -> UICIConfig:
    return load_config(DATA / "config", environ={})


@pytest.fixture
def recording_executor() -> Iterator[type[RecordingExecutor]]:
    saved_paths = dict(factory._EXECUTOR_PATHS)
    saved_classes = dict(factory._EXECUTOR_CLASSES)
    register_executor("docker", RecordingExecutor)
    RecordingExecutor.calls.clear()
    yield RecordingExecutor
    factory._EXECUTOR_PATHS.clear()
    factory._EXECUTOR_PATHS.update(saved_paths)
    factory._EXECUTOR_CLASSES.clear()
    factory._EXECUTOR_CLASSES.update(saved_classes)


def spec_for(config: UICIConfig, operation: str, target: str | None, **params: Any) -> CommandSpec:
    call = OperationRegistry.from_config(config).validate(operation, "test-docker", params, target)
    return CommandTranslator.from_config(config).translate(call)


def test_a_successful_call(config: UICIConfig, recording_executor: type[RecordingExecutor]) -> None:
    executor = create_executor("test-docker", config.environments.environments["test-docker"])
    assert isinstance(executor, RecordingExecutor)
    result = executor.execute(spec_for(config, "get_logs", "web", lines=3))
    assert result.success and result.error is None
    assert result.output == "line 1\nline 2" and result.data == {"lines": 2}
    assert result.command == ["docker", "logs", "--tail", "3", "web"]
    assert result.operation == "get_logs" and result.target == "web"
    assert result.duration_seconds >= 0
    assert recording_executor.calls == [("get_logs", {"target": "web", "lines": 3})]


@pytest.mark.parametrize(
    ("target", "kind", "retryable"),
    [("missing", ErrorKind.PERMANENT, False), ("flaky", ErrorKind.RETRYABLE, True)],
)
def test_errors_become_classified_results(
    config: UICIConfig,
    recording_executor: type[RecordingExecutor],
    target: str,
    kind: ErrorKind,
    retryable: bool,
) -> None:
    executor = create_executor("test-docker", config.environments.environments["test-docker"])
    result = executor.execute(spec_for(config, "get_logs", target))
    assert not result.success
    assert result.error is not None and result.error.kind is kind
    assert result.retryable is retryable


def test_only_marked_methods_are_reachable(
    config: UICIConfig, recording_executor: type[RecordingExecutor]
) -> None:
    # Its own methods, besides the metric and log methods every executor shares.
    shared = {m for m in RecordingExecutor.methods() if m.startswith(("prometheus_", "loki_"))}
    assert RecordingExecutor.methods() - shared == {"get_logs", "list_services"}
    executor = create_executor("test-docker", config.environments.environments["test-docker"])
    result = executor.execute(spec_for(config, "restart_service", "web"))
    assert not result.success
    assert result.error is not None and result.error.kind is ErrorKind.UNSUPPORTED
    assert "no method 'restart_service'" in result.error.message


def test_a_spec_for_another_environment_is_refused(
    config: UICIConfig, recording_executor: type[RecordingExecutor]
) -> None:
    executor = create_executor("other", config.environments.environments["test-docker"])
    result = executor.execute(spec_for(config, "get_logs", "web"))
    assert not result.success and result.error is not None
    assert result.error.kind is ErrorKind.PERMANENT


def test_result_model_round_trips_as_json(
    config: UICIConfig, recording_executor: type[RecordingExecutor]
) -> None:
    executor = create_executor("test-docker", config.environments.environments["test-docker"])
    result = executor.execute(spec_for(config, "list_services", None))
    again = type(result).model_validate_json(result.model_dump_json())
    assert again == result


def test_factory_explains_an_unknown_type() -> None:
    with pytest.raises(
        ExecutorUnavailable, match="no executor is registered for environment type 'azure'"
    ):
        executor_class("azure")


def test_factory_explains_a_module_that_is_not_there(
    recording_executor: type[RecordingExecutor],
) -> None:
    register_executor("docker", "infrastructure.executors.not_here:Nothing")
    with pytest.raises(ExecutorUnavailable, match="is not part of this UICI version"):
        executor_class("docker")


def test_factory_refuses_a_class_that_is_not_an_executor(
    recording_executor: type[RecordingExecutor],
) -> None:
    register_executor("docker", "infrastructure.registry:OperationRegistry")
    with pytest.raises(ExecutorUnavailable, match="is not an EnvironmentExecutor"):
        executor_class("docker")
