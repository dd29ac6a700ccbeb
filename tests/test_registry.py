"""OperationRegistry: discovery and validation of calls, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from infrastructure.configuration.loader import load_config
from infrastructure.configuration.models import EnvironmentType
from infrastructure.registry import CallValidationError, OperationRegistry, duration_seconds
from tests.conftest import DATA, SHIPPED_CONFIG


@pytest.fixture(scope="module")
def registry() -> OperationRegistry:
    return OperationRegistry.from_config(load_config(SHIPPED_CONFIG, environ={}))


@pytest.fixture(scope="module")
def small() -> OperationRegistry:
    return OperationRegistry.from_config(load_config(DATA / "config", environ={}))


def problems(error: pytest.ExceptionInfo[CallValidationError]) -> list[str]:
    return [str(p) for p in error.value.problems]


def test_list_and_filter_by_environment(registry: OperationRegistry) -> None:
    assert len(registry.names()) == 23
    docker_ops = {name for name, _ in registry.operations_for("local-docker")}
    assert "get_logs" in docker_ops
    assert "scale_service" not in docker_ops and "rollback_service" not in docker_ops
    k8s_ops = {name for name, _ in registry.operations_for("staging-k8s")}
    assert "scale_service" in k8s_ops and "exec_diagnostic" not in k8s_ops


def test_filtering_by_an_unknown_environment_is_an_error(registry: OperationRegistry) -> None:
    with pytest.raises(CallValidationError) as raised:
        registry.operations_for("prod")
    assert problems(raised) == [
        "environment: unknown environment 'prod' (one of: local-docker, oci-prod, staging-k8s)"
    ]


def test_describe_unknown_operation_suggests_the_closest(registry: OperationRegistry) -> None:
    with pytest.raises(CallValidationError) as raised:
        registry.describe("get_log")
    assert problems(raised) == [
        "operation: unknown operation 'get_log' (did you mean get_logs? `uici ops list` shows all)"
    ]
    assert raised.value.problems[0].kind == "unknown_operation"


def test_support_reports_the_reason(registry: OperationRegistry) -> None:
    assert registry.support("get_logs", EnvironmentType.DOCKER) == (True, "")
    supported, reason = registry.support("scale_service", EnvironmentType.DOCKER)
    assert not supported and "no replica count" in reason


def test_a_valid_call_is_coerced_from_cli_strings_and_defaults_are_filled(
    registry: OperationRegistry,
) -> None:
    call = registry.validate(
        "get_logs",
        "local-docker",
        {"lines": "5", "timestamps": "yes", "since": "10m", "level": "error"},
        target="web",
    )
    assert call.parameters["lines"] == 5
    assert call.parameters["timestamps"] is True
    assert call.parameters["since"] == "10m"
    assert call.parameters["max_bytes"] == 1_000_000  # default
    assert call.parameters["until"] is None
    assert call.risk.value == "read" and call.timeout_seconds == 30
    assert call.environment_type is EnvironmentType.DOCKER


def test_every_problem_is_reported_not_just_the_first(registry: OperationRegistry) -> None:
    with pytest.raises(CallValidationError) as raised:
        registry.validate(
            "get_logs",
            "local-docker",
            {
                "lines": "0",
                "level": "fatal",
                "colour": "red",
                "since": "yesterday",
                "pattern": "a\nb",
            },
            target="web;reboot",
        )
    assert problems(raised) == [
        "target: invalid target 'web;reboot' "
        "(a name of letters, digits and _ . : / = - starting with a letter or digit)",
        "lines: 0 is out of bounds (between 1 and 10000)",
        "level: invalid value 'fatal' (one of: error, warning, info, debug)",
        "colour: unknown parameter (parameters: level, lines, max_bytes, pattern, previous, since, "
        "timestamps, until)",
        "since: invalid value 'yesterday' (a duration such as 30s, 5m, 2h or 1d)",
        "pattern: invalid value 'a\\nb' (text without control characters or newlines)",
    ]


def test_unknown_parameter_close_to_a_known_one_gets_a_suggestion(
    registry: OperationRegistry,
) -> None:
    with pytest.raises(CallValidationError) as raised:
        registry.validate("get_logs", "local-docker", {"lnes": "3"}, target="web")
    assert "did you mean 'lines'?" in problems(raised)[0]


@pytest.mark.parametrize(
    ("operation", "parameters", "target", "expected"),
    [
        ("get_logs", {}, None, "target: get_logs needs a target"),
        ("list_services", {}, "web", "target: list_services takes no target (omit the target)"),
        ("scale_service", {"replicas": "2"}, "web", "unsupported on docker environments"),
        ("exec_diagnostic", {}, "web", "command: missing required parameter"),
        (
            "exec_diagnostic",
            {"command": "rm"},
            "web",
            "command: invalid value 'rm' (one of: ps, df",
        ),
        (
            "check_endpoint",
            {"port": "80", "path": "/x y"},
            "web",
            "path: invalid value '/x y' (must match",
        ),
        (
            "check_endpoint",
            {"port": "99999"},
            "web",
            "port: 99999 is out of bounds (between 1 and 65535)",
        ),
        (
            "get_logs",
            {"lines": "3; rm -rf /"},
            "web",
            "lines: invalid value '3; rm -rf /' (an integer)",
        ),
        ("get_logs", {"lines": True}, "web", "lines: invalid value True (an integer)"),
        ("get_logs", {"lines": 2.5}, "web", "lines: invalid value 2.5 (an integer)"),
        (
            "get_logs",
            {"timestamps": "maybe"},
            "web",
            "timestamps: invalid value 'maybe' (true or false)",
        ),
        (
            "get_logs",
            {"pattern": "x" * 201},
            "web",
            "pattern: is 201 characters long (at most 200)",
        ),
        ("get_logs", {}, "-n", "target: invalid target '-n'"),
        ("get_logs", {}, "$(id)", "target: invalid target '$(id)'"),
        ("get_logs", {}, "a" * 254, "target: is 254 characters long (at most 253)"),
        ("restart_service", {"stop_timeout": "-1"}, "web", "stop_timeout: -1 is out of bounds"),
    ],
)
def test_bad_calls_are_rejected_with_a_precise_reason(
    registry: OperationRegistry,
    operation: str,
    parameters: dict[str, object],
    target: str | None,
    expected: str,
) -> None:
    with pytest.raises(CallValidationError) as raised:
        registry.validate(operation, "local-docker", parameters, target)
    assert any(expected in p for p in problems(raised)), problems(raised)


def test_unsupported_is_distinguished_from_invalid(registry: OperationRegistry) -> None:
    with pytest.raises(CallValidationError) as raised:
        registry.validate("scale_service", "local-docker", {"replicas": 2}, "web")
    assert raised.value.unsupported
    with pytest.raises(CallValidationError) as raised:
        registry.validate("get_logs", "local-docker", {"lines": "x"}, "web")
    assert not raised.value.unsupported


def test_unknown_and_disabled_environments(small: OperationRegistry) -> None:
    with pytest.raises(CallValidationError) as raised:
        small.validate("get_logs", "nowhere", {}, "web")
    assert problems(raised) == [
        "environment: unknown environment 'nowhere' (one of: off-docker, test-docker)"
    ]
    with pytest.raises(CallValidationError) as raised:
        small.validate("get_logs", "off-docker", {}, "web")
    assert problems(raised) == [
        "environment: environment 'off-docker' is disabled "
        "(set environments.off-docker.enabled: true in environments.yml)"
    ]


def test_list_and_number_types(tmp_path: Path, test_config_dir: Path) -> None:
    path = test_config_dir / "operations.yml"
    path.write_text(
        path.read_text().replace(
            "      level:\n",
            "      ratio:\n        type: number\n        description: r\n        maximum: 1\n"
            "      names:\n        type: string_list\n        description: n\n"
            "        pattern: '[a-z]+'\n"
            "      level:\n",
        )
    )
    registry = OperationRegistry.from_config(load_config(test_config_dir, environ={}))
    call = registry.validate("get_logs", "test-docker", {"ratio": "0.5", "names": "a,b"}, "web")
    assert call.parameters["ratio"] == 0.5 and call.parameters["names"] == ["a", "b"]
    for bad, message in [
        ({"ratio": "nan"}, "a finite number"),
        ({"ratio": "2"}, "out of bounds"),
        ({"names": "a,B"}, "must match"),
        ({"names": 7}, "a list of strings"),
    ]:
        with pytest.raises(CallValidationError) as raised:
            registry.validate("get_logs", "test-docker", bad, "web")
        assert message in problems(raised)[0]


def test_durations() -> None:
    assert duration_seconds("30s") == 30
    assert duration_seconds("5m") == 300
    assert duration_seconds("2h") == 7200
    assert duration_seconds("1d") == 86400
    with pytest.raises(ValueError):
        duration_seconds("5 minutes")
