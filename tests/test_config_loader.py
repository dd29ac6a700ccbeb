"""UniversalConfigLoader: the shipped configuration, the broken corpus, interpolation, masking."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from infrastructure.configuration.loader import (
    PACKAGED_CONFIG_DIR,
    UniversalConfigLoader,
    load_config,
    resolve_config_dir,
)
from infrastructure.configuration.models import EnvironmentType, LLMProvider
from infrastructure.configuration.problems import ConfigError
from tests.conftest import DATA, SHIPPED_CONFIG

BROKEN = DATA / "broken_config"
BROKEN_CASES = sorted(p.name for p in BROKEN.iterdir() if p.is_dir())

REQUIRED_OPERATIONS = {
    "list_services",
    "get_status",
    "get_logs",
    "get_metrics",
    "get_events",
    "describe",
    "check_endpoint",
    "exec_diagnostic",
    "restart_service",
    "start_service",
    "stop_service",
    "scale_service",
    "rollback_service",
}


def test_shipped_configuration_is_valid_without_any_environment_variable() -> None:
    config = load_config(SHIPPED_CONFIG, environ={})
    assert set(config.operations.operations) >= REQUIRED_OPERATIONS
    assert config.platform.platform.default_environment == "local-docker"
    assert config.platform.llm.provider is LLMProvider.NONE
    local = config.environments.environments["local-docker"]
    assert local.type is EnvironmentType.DOCKER and local.enabled
    # the samples exist and are off until someone configures them
    types = {e.type for e in config.environments.environments.values() if not e.enabled}
    assert {EnvironmentType.KUBERNETES, EnvironmentType.OCI} <= types


def test_shipped_policy_defaults_read_runs_write_needs_approval_destructive_refused() -> None:
    config = load_config(SHIPPED_CONFIG, environ={})
    policy = config.environments.default_policy
    assert [r.value for r in policy.allowed_risks] == ["read", "write"]
    assert [r.value for r in policy.approval_required] == ["write"]


def test_every_operation_declares_or_explains_every_environment_type() -> None:
    config = load_config(SHIPPED_CONFIG, environ={})
    for name, spec in config.operations.operations.items():
        covered = set(spec.environments) | set(spec.unsupported)
        assert covered == set(EnvironmentType), (
            f"{name} says nothing about {set(EnvironmentType) - covered}"
        )


def test_plain_docker_cannot_scale_or_roll_back_and_says_why() -> None:
    config = load_config(SHIPPED_CONFIG, environ={})
    for name in ("scale_service", "rollback_service"):
        reason = config.operations.operations[name].unsupported[EnvironmentType.DOCKER]
        assert "Docker" in reason


def overlay(case: str, target: Path) -> None:
    for file in (BROKEN / case).iterdir():
        if file.name != "expected.txt":
            shutil.copy(file, target / file.name)


@pytest.mark.parametrize("case", BROKEN_CASES)
def test_broken_configuration_reports_exactly_the_expected_problems(
    case: str, test_config_dir: Path
) -> None:
    overlay(case, test_config_dir)
    with pytest.raises(ConfigError) as raised:
        load_config(test_config_dir, environ={})
    expected_text = (BROKEN / case / "expected.txt").read_text()
    expected = expected_text.replace("{dir}", str(test_config_dir)).splitlines()
    assert [str(p) for p in raised.value.problems] == expected


def test_the_corpus_covers_the_kinds_of_problem_the_issue_names() -> None:
    wanted = {
        "malformed-yaml",
        "unknown-key",
        "wrong-type",
        "missing-key",
        "unset-env-var",
        "translation-unknown-operation",
        "environment-type-without-translations",
        "runbook-unknown-operation",
        "runbook-invalid-params",
        "unknown-default-environment",
    }
    assert wanted <= set(BROKEN_CASES)
    for case in BROKEN_CASES:
        assert (BROKEN / case / "expected.txt").read_text().strip(), f"{case} has no expected error"


def test_the_test_configuration_itself_is_valid() -> None:
    load_config(DATA / "config", environ={})


def test_problems_in_several_files_are_all_reported_at_once(test_config_dir: Path) -> None:
    overlay("several-files", test_config_dir)
    with pytest.raises(ConfigError) as raised:
        load_config(test_config_dir, environ={})
    files = {p.file.name for p in raised.value.problems}
    assert files == {"agents.yml", "environments.yml", "platform.yml"}
    assert str(raised.value).startswith("invalid configuration: 4 problems")


def test_a_missing_file_is_named(test_config_dir: Path) -> None:
    (test_config_dir / "agents.yml").unlink()
    with pytest.raises(ConfigError) as raised:
        load_config(test_config_dir, environ={})
    assert [str(p) for p in raised.value.problems] == [
        f"{test_config_dir}/agents.yml: file is missing (a YAML file at "
        f"{test_config_dir}/agents.yml; copy it from the shipped infrastructure/config/)"
    ]


def test_a_missing_directory_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "nowhere", environ={})
    message = str(raised.value)
    assert "configuration directory does not exist" in message
    assert "UICI_CONFIG_DIR" in message and "--config-dir" in message


def test_python_objects_in_yaml_are_refused(test_config_dir: Path) -> None:
    path = test_config_dir / "platform.yml"
    path.write_text(
        path.read_text().replace("name: uici-test", "name: !!python/object/apply:os.getcwd []")
    )
    with pytest.raises(ConfigError) as raised:
        load_config(test_config_dir, environ={})
    assert "malformed YAML" in str(raised.value)
    assert "python/object" in str(raised.value)


# --- environment variables ----------------------------------------------------------------


def test_environment_variables_fill_values_and_defaults(test_config_dir: Path) -> None:
    path = test_config_dir / "platform.yml"
    text = path.read_text()
    text = text.replace("port: 8080", "port: ${UICI_TEST_PORT}")
    text = text.replace("host: 127.0.0.1", "host: ${UICI_TEST_HOST:-0.0.0.0}")
    text = text.replace("name: uici-test", "name: cost-$${literal}")
    path.write_text(text)
    config = load_config(test_config_dir, environ={"UICI_TEST_PORT": "9123"})
    assert config.platform.service.port == 9123
    assert config.platform.service.host == "0.0.0.0"
    assert config.platform.platform.name == "cost-${literal}"


def test_an_empty_default_is_allowed_and_a_set_variable_wins(test_config_dir: Path) -> None:
    config = load_config(test_config_dir, environ={"UICI_TEST_LLM_KEY": "sk-from-env"})
    assert config.platform.llm.api_key is not None
    assert config.platform.llm.api_key.get_secret_value() == "sk-from-env"
    assert load_config(test_config_dir, environ={}).platform.llm.api_key is None


def test_keys_are_never_interpolated(test_config_dir: Path) -> None:
    path = test_config_dir / "platform.yml"
    path.write_text(path.read_text().replace("service:", "${UICI_TEST_KEY:-service}:"))
    with pytest.raises(ConfigError) as raised:
        load_config(test_config_dir, environ={"UICI_TEST_KEY": "service"})
    assert "${UICI_TEST_KEY:-service}: unknown key" in str(raised.value)


def test_secrets_are_masked_in_the_shown_configuration(test_config_dir: Path) -> None:
    sentinel = "sk-SENTINEL-4f1c2d"
    config = load_config(test_config_dir, environ={"UICI_TEST_LLM_KEY": sentinel})
    masked = config.masked()
    assert sentinel not in repr(masked)
    assert masked["platform.yml"]["llm"]["api_key"] == "**********"
    assert masked["platform.yml"]["llm"]["max_tokens"] == 1024  # not a secret
    assert sentinel not in repr(config)


def test_a_secret_value_is_not_echoed_in_an_error(test_config_dir: Path) -> None:
    path = test_config_dir / "platform.yml"
    path.write_text(path.read_text().replace("api_key: ${UICI_TEST_LLM_KEY:-}", "api_key: [x]"))
    sentinel = "sk-SENTINEL-in-error"
    with pytest.raises(ConfigError) as raised:
        load_config(test_config_dir, environ={"UICI_TEST_LLM_KEY": sentinel})
    assert "llm.api_key: invalid value '**********'" in str(raised.value)


def test_discovery_may_only_name_read_operations_and_fact_conditions_are_checked(
    shipped_config_dir: Path,
) -> None:
    """A name read from a log may only be read: a write or an unknown operation in
    dependency_discovery.read_operations, or a rule's fact condition on an unknown
    observation, is a located error."""
    path = shipped_config_dir / "agents.yml"
    text = path.read_text()
    text = text.replace(
        "  read_operations: [get_status]",
        "  read_operations: [get_status, restart_service, get_state]",
    )
    text = text.replace(
        "      - observation: describe\n        field: limits.memory_bytes",
        "      - observation: describe_it\n        field: limits.memory_bytes",
        1,
    )
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(shipped_config_dir)
    problems = [str(p) for p in raised.value.problems]
    assert any(
        "dependency_discovery.read_operations[1]: operation 'restart_service' has risk 'write'" in p
        for p in problems
    ), problems
    assert any(
        "dependency_discovery.read_operations[2]: unknown operation 'get_state'" in p
        for p in problems
    ), problems
    assert any("facts[0].observation: unknown operation 'describe_it'" in p for p in problems), (
        problems
    )
    assert all(":" in p.split("agents.yml", 1)[1][:8] for p in problems), "each names its line"


# --- where the directory comes from ---------------------------------------------------------


def test_directory_resolution_order(tmp_path: Path) -> None:
    assert resolve_config_dir(None, environ={}) == PACKAGED_CONFIG_DIR
    assert resolve_config_dir(None, environ={"UICI_CONFIG_DIR": str(tmp_path)}) == tmp_path
    explicit = tmp_path / "x"
    assert resolve_config_dir(explicit, environ={"UICI_CONFIG_DIR": str(tmp_path)}) == explicit
    assert UniversalConfigLoader(environ={}).directory == SHIPPED_CONFIG


def test_fingerprint_changes_with_file_contents(test_config_dir: Path) -> None:
    loader = UniversalConfigLoader(test_config_dir, environ={})
    before = loader.fingerprint()
    assert loader.fingerprint() == before
    path = test_config_dir / "agents.yml"
    path.write_text(path.read_text() + "\n# a comment\n")
    assert loader.fingerprint() != before
