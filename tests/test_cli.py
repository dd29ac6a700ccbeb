"""The `uici` command line: outputs, exit codes (0 ok, 1 failed, 2 bad input/config), masking."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from tests.conftest import DATA

UICI = Path(sys.executable).parent / "uici"
runner = CliRunner()


def uici(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script, in a fresh process, as a person would run it."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("UICI_")}
    environment.update(env or {})
    return subprocess.run(
        [str(UICI), *args], capture_output=True, text=True, env=environment, timeout=60, check=False
    )


def test_the_console_script_is_installed() -> None:
    assert UICI.exists(), "pip install -e . must create the uici script next to the interpreter"


def test_done_when_dry_run_prints_the_docker_command() -> None:
    done = uici(
        "run",
        "get_logs",
        "--env",
        "local-docker",
        "--target",
        "web",
        "--param",
        "lines=5",
        "--dry-run",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "command:  docker logs --tail 5 web"
    assert "executor: docker.get_logs(target='web', lines=5" in done.stdout


def test_config_validate_on_the_shipped_configuration() -> None:
    done = uici("config", "validate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: ")
    assert "13 operations" in done.stdout


def test_config_validate_on_a_broken_configuration(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    shutil.copytree(DATA / "config", config_dir)
    shutil.copy(DATA / "broken_config" / "wrong-type" / "platform.yml", config_dir / "platform.yml")
    done = uici("--config-dir", str(config_dir), "config", "validate")
    assert done.returncode == 2
    assert done.stdout == ""
    assert (
        f"{config_dir}/platform.yml:31: service.port: invalid value 'eighty' "
        "(a valid integer, unable to parse string as an integer)"
    ) in done.stderr


def test_config_dir_from_the_environment(tmp_path: Path) -> None:
    done = uici("config", "validate", env={"UICI_CONFIG_DIR": str(DATA / "config")})
    assert done.returncode == 0
    assert str(DATA / "config") in done.stdout
    done = uici("config", "validate", env={"UICI_CONFIG_DIR": str(tmp_path / "none")})
    assert done.returncode == 2 and "configuration directory does not exist" in done.stderr


def test_ops_list_loads_no_prefect_and_no_cloud_sdk() -> None:
    probe = (
        "import sys\n"
        "from agent.cli.main import app\n"
        "try:\n    app(['ops', 'list', '--json'])\nexcept SystemExit:\n    pass\n"
        "heavy = ['prefect', 'docker', 'kubernetes', 'oci', 'openai', 'anthropic',\n"
        "         'fastapi', 'uvicorn']\n"
        "print('LOADED', [m for m in heavy if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert "LOADED []" in done.stdout, done.stdout + done.stderr


# --- in-process commands ----------------------------------------------------------------------


def invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), env=env)


def test_ops_list_table_and_json() -> None:
    result = invoke("ops", "list")
    assert result.exit_code == 0
    assert "restart_service" in result.stdout and "destructive" in result.stdout
    data = json.loads(invoke("ops", "list", "--json").stdout)
    assert {op["name"] for op in data} >= {"get_logs", "scale_service"}
    get_logs = next(op for op in data if op["name"] == "get_logs")
    assert get_logs["parameters"]["lines"]["default"] == 200


def test_ops_list_for_one_environment() -> None:
    names = {
        op["name"]
        for op in json.loads(invoke("ops", "list", "--env", "local-docker", "--json").stdout)
    }
    assert "get_logs" in names and "scale_service" not in names
    result = invoke("ops", "list", "--env", "prod")
    assert result.exit_code == 2 and "unknown environment 'prod'" in result.stderr


def test_ops_describe() -> None:
    result = invoke("ops", "describe", "get_logs")
    assert result.exit_code == 0
    assert "docker: docker logs --tail {lines} [--since {since}]" in result.stdout
    data = json.loads(invoke("ops", "describe", "scale_service", "--json").stdout)
    assert "no replica count" in data["unsupported"]["docker"]
    assert data["commands"]["kubernetes"][0] == "kubectl"
    missing = invoke("ops", "describe", "get_log")
    assert missing.exit_code == 2 and "did you mean get_logs?" in missing.stderr


def test_envs_list() -> None:
    result = invoke("envs", "list")
    assert result.exit_code == 0 and "local-docker" in result.stdout
    data = json.loads(invoke("envs", "list", "--json").stdout)
    local = next(e for e in data if e["name"] == "local-docker")
    assert local["default"] is True and local["enabled"] is True
    assert "connection" not in local


def test_config_show_masks_secrets_and_applies_variables() -> None:
    sentinel = "sk-SENTINEL-cli-7d3a"
    env = {"UICI_LLM_API_KEY": sentinel, "UICI_LLM_PROVIDER": "openai", "UICI_LLM_MODEL": "m-1"}
    result = invoke("config", "show", env=env)
    assert result.exit_code == 0
    assert sentinel not in result.stdout + result.stderr
    assert "api_key: '**********'" in result.stdout
    data = json.loads(invoke("config", "show", "platform", "--json", env=env).stdout)
    assert data["platform.yml"]["llm"]["provider"] == "openai"
    assert data["platform.yml"]["llm"]["api_key"] == "**********"
    assert invoke("config", "show", "nope").exit_code == 2


def test_run_dry_run_json() -> None:
    result = invoke(
        "run", "get_logs", "-t", "web", "-p", "lines=5", "-p", "since=10m", "--dry-run", "--json"
    )
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["command"] == ["docker", "logs", "--tail", "5", "--since", "10m", "web"]
    assert data["environment"] == "local-docker"  # the default environment
    assert data["method"] == "get_logs"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "get_logz", "-t", "web", "--dry-run"], "unknown operation 'get_logz'"),
        (["run", "get_logs", "-t", "web", "-p", "lines", "--dry-run"], "expected key=value"),
        (
            ["run", "get_logs", "-t", "web", "-p", "lines=1", "-p", "lines=2", "--dry-run"],
            "given twice",
        ),
        (
            ["run", "get_logs", "-t", "web", "-p", "lines=lots", "--dry-run"],
            "lines: invalid value 'lots'",
        ),
        (["run", "get_logs", "-t", "web;reboot", "--dry-run"], "invalid target 'web;reboot'"),
        (["run", "get_logs", "--dry-run"], "get_logs needs a target"),
        (
            ["run", "scale_service", "-t", "web", "-p", "replicas=2", "--dry-run"],
            "unsupported on docker",
        ),
        (
            ["run", "get_logs", "-e", "staging-k8s", "-t", "web", "--dry-run"],
            "'staging-k8s' is disabled",
        ),
        (["run", "get_logs", "-e", "nowhere", "-t", "web"], "unknown environment 'nowhere'"),
    ],
)
def test_run_bad_input_exits_2_with_the_reason(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr


def test_run_refuses_what_the_policy_does_not_allow() -> None:
    result = invoke("run", "stop_service", "-t", "web")
    assert result.exit_code == 2
    assert (
        "refused: destructive operations are not allowed here (environments.local-docker.policy.allowed_risks)"
        in result.stderr
    )


def test_run_asks_for_approval_of_a_write_operation() -> None:
    result = invoke("run", "restart_service", "-t", "web")
    assert result.exit_code == 2
    assert "review `docker restart --time 10 web` and re-run with --yes" in result.stderr


def test_run_reports_a_missing_executor_as_a_failed_operation(tmp_path: Path) -> None:
    # An environment type whose executor cannot be loaded: the run fails (1) and says why.
    from infrastructure.executors import factory

    saved = dict(factory._EXECUTOR_PATHS), dict(factory._EXECUTOR_CLASSES)
    factory.register_executor("docker", "infrastructure.executors.not_here:Nothing")
    try:
        result = invoke("run", "get_status", "-t", "web")
    finally:
        factory._EXECUTOR_PATHS.clear()
        factory._EXECUTOR_PATHS.update(saved[0])
        factory._EXECUTOR_CLASSES.clear()
        factory._EXECUTOR_CLASSES.update(saved[1])
    assert result.exit_code == 1
    assert "local-docker: the docker executor" in result.stderr


def test_help_and_unknown_command() -> None:
    assert invoke("--help").exit_code == 0
    assert invoke("nonsense").exit_code == 2
