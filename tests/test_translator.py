"""CommandTranslator: call specs, human commands, and no way for a value to become a command."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infrastructure.configuration.loader import UICIConfig, load_config
from infrastructure.registry import CallValidationError, OperationRegistry
from infrastructure.translator import CommandTranslator
from tests.conftest import SHIPPED_CONFIG

NASTY = [
    "; rm -rf /",
    "$(id)",
    "`id`",
    "a|b",
    "a && reboot",
    "> /etc/passwd",
    "--privileged",
    "-n kube-system",
    "x' y \"z",
    "*",
    "~root",
    "$HOME",
    "web\\nother",
    "ünïcødé 🚀",
]


@pytest.fixture(scope="module")
def shipped() -> UICIConfig:
    return load_config(SHIPPED_CONFIG, environ={})


def translate(
    config: UICIConfig,
    operation: str,
    environment: str,
    params: dict[str, object],
    target: str | None,
):  # type: ignore[no-untyped-def]
    call = OperationRegistry.from_config(config).validate(operation, environment, params, target)
    return CommandTranslator.from_config(config).translate(call)


def test_the_done_when_dry_run_command(shipped: UICIConfig) -> None:
    spec = translate(shipped, "get_logs", "local-docker", {"lines": "5"}, "web")
    assert spec.command == ["docker", "logs", "--tail", "5", "web"]
    assert spec.command_line() == "docker logs --tail 5 web"
    assert spec.method == "get_logs"
    assert spec.arguments["target"] == "web" and spec.arguments["lines"] == 5


def test_optional_groups_appear_only_when_their_parameter_is_set(shipped: UICIConfig) -> None:
    spec = translate(
        shipped, "get_logs", "local-docker", {"lines": 10, "since": "5m", "timestamps": True}, "web"
    )
    assert spec.command == [
        "docker",
        "logs",
        "--tail",
        "10",
        "--since",
        "5m",
        "--timestamps",
        "web",
    ]
    spec = translate(shipped, "list_services", "local-docker", {"include_stopped": "false"}, None)
    assert spec.command == ["docker", "ps"]
    spec = translate(shipped, "list_services", "local-docker", {}, None)
    assert spec.command == ["docker", "ps", "--all"]


def test_literal_braces_survive(shipped: UICIConfig) -> None:
    spec = translate(
        shipped, "check_endpoint", "local-docker", {"port": 8080, "path": "/health"}, "web"
    )
    assert "%{http_code}" in spec.command
    assert spec.command[-1] == "http://web:8080/health"


def test_connection_context_fills_kubernetes_and_oci_commands(
    tmp_path: Path, shipped_config_dir: Path
) -> None:
    path = shipped_config_dir / "environments.yml"
    path.write_text(path.read_text().replace("enabled: false", "enabled: true"))
    config = load_config(
        shipped_config_dir, environ={"UICI_OCI_COMPARTMENT_ID": "ocid1.compartment.oc1..x"}
    )
    spec = translate(config, "restart_service", "staging-k8s", {}, "checkout")
    assert spec.command == [
        "kubectl",
        "rollout",
        "restart",
        "deployment/checkout",
        "--namespace",
        "default",
    ]
    # No remediation intent on a manual call; the remediation path supplies one at run time.
    assert spec.arguments == {"target": "checkout", "namespace": "default", "intent": None}
    call = OperationRegistry.from_config(config).validate(
        "restart_service", "staging-k8s", {}, "checkout"
    )
    intent = "abc@2026-11-25T13:00:00Z"
    with_intent = CommandTranslator.from_config(config).translate(call, {"intent": intent})
    assert with_intent.arguments["intent"] == intent and with_intent.command == spec.command
    # A plan cannot smuggle an intent in as a parameter: the registry refuses unknown ones.
    with pytest.raises(CallValidationError):
        translate(config, "restart_service", "staging-k8s", {"intent": "forged"}, "checkout")
    spec = translate(config, "scale_service", "staging-k8s", {"replicas": "3"}, "checkout")
    assert "--replicas=3" in spec.command
    spec = translate(config, "list_services", "oci-prod", {}, None)
    assert "ocid1.compartment.oc1..x" in spec.command


def test_every_shipped_translation_renders_with_its_defaults(shipped_config_dir: Path) -> None:
    path = shipped_config_dir / "environments.yml"
    path.write_text(path.read_text().replace("enabled: false", "enabled: true"))
    config = load_config(
        shipped_config_dir,
        environ={
            "UICI_OCI_COMPARTMENT_ID": "ocid1.c",
            "UICI_PROMETHEUS_URL": "http://127.0.0.1:9",
            "UICI_LOKI_URL": "http://127.0.0.1:9",
        },
    )
    registry = OperationRegistry.from_config(config)
    translator = CommandTranslator.from_config(config)
    required_values = {
        "replicas": 1,
        "port": 80,
        "command": "ps",
        "query": "up",
        "label": "job",
        "resource": "memory",
    }
    rendered = 0
    for environment in ("local-docker", "staging-k8s", "oci-prod"):
        for name, spec in registry.operations_for(environment):
            params = {p: required_values[p] for p, s in spec.parameters.items() if s.required}
            target = None if spec.target == "none" else "svc"
            command = translator.translate(
                registry.validate(name, environment, params, target)
            ).command
            assert command and all(isinstance(part, str) and part for part in command)
            rendered += 1
    # The ten metric and log operations run in every environment type.
    assert rendered == 11 + 9 + 8 + 3 * 10


# --- no shell, ever -------------------------------------------------------------------------


@pytest.mark.parametrize("value", NASTY)
def test_shell_metacharacters_in_a_target_are_rejected(shipped: UICIConfig, value: str) -> None:
    with pytest.raises(CallValidationError):
        translate(shipped, "get_logs", "local-docker", {}, value)


@pytest.fixture(scope="module")
def free_text_config(tmp_path_factory: pytest.TempPathFactory) -> UICIConfig:
    """The test configuration plus an operation with an unconstrained string in its argv."""
    import shutil

    from tests.conftest import TEST_CONFIG

    directory = tmp_path_factory.mktemp("free") / "config"
    shutil.copytree(TEST_CONFIG, directory)
    operations = directory / "operations.yml"
    operations.write_text(
        operations.read_text()
        + "  find_label:\n    description: f\n    risk: read\n    target: none\n"
        "    timeout_seconds: 5\n    retry: {attempts: 1, delay_seconds: 0, backoff_factor: 1}\n"
        "    environments: [docker]\n    parameters:\n      label:\n        type: string\n"
        "        description: any text\n        required: true\n"
    )
    translations = directory / "command_translations.yml"
    translations.write_text(
        translations.read_text()
        + "    find_label:\n      method: list_services\n      args: {label: label}\n"
        '      command: [docker, ps, --filter, "label={label}"]\n'
    )
    return load_config(directory, environ={})


@pytest.mark.parametrize("value", NASTY)
def test_a_value_that_passes_validation_stays_inside_one_argv_element(
    free_text_config: UICIConfig, value: str
) -> None:
    try:
        spec = translate(free_text_config, "find_label", "test-docker", {"label": value}, None)
    except CallValidationError:
        return  # rejected by validation: the other acceptable outcome
    assert spec.command == ["docker", "ps", "--filter", f"label={value}"]
    assert shlex.split(spec.command_line()) == spec.command


@settings(max_examples=300, deadline=None)
@given(value=st.text(min_size=1, max_size=80))
def test_any_text_either_fails_validation_or_is_one_verbatim_argv_element(
    free_text_config: UICIConfig, value: str
) -> None:
    try:
        spec = translate(free_text_config, "find_label", "test-docker", {"label": value}, None)
    except CallValidationError:
        assert any(ord(c) < 32 or ord(c) == 127 for c in value)
        return
    assert spec.command == ["docker", "ps", "--filter", f"label={value}"]
    assert shlex.split(spec.command_line()) == spec.command


def test_placeholder_syntax_in_a_value_is_not_expanded(free_text_config: UICIConfig) -> None:
    spec = translate(
        free_text_config, "find_label", "test-docker", {"label": "{target}{{x}}"}, None
    )
    assert spec.command[-1] == "label={target}{{x}}"
