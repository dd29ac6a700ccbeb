"""The Docker executor against a real engine and real failing containers."""

from __future__ import annotations

import functools
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.evaluation.failures import FailureLab
from infrastructure.configuration.loader import UICIConfig, load_config
from infrastructure.executors.base import ErrorKind
from infrastructure.executors.docker import DockerExecutor
from infrastructure.executors.factory import create_executor
from infrastructure.registry import OperationRegistry
from infrastructure.translator import CommandTranslator
from tests.conftest import SHIPPED_CONFIG
from tests.executor_support import run_operation

pytestmark = pytest.mark.usefixtures("docker_client")


@pytest.fixture(scope="module")
def config() -> UICIConfig:
    return load_config(SHIPPED_CONFIG, environ={})


@pytest.fixture(scope="module")
def executor(config: UICIConfig):  # type: ignore[no-untyped-def]
    executor = create_executor("local-docker", config.environments.environments["local-docker"])
    assert isinstance(executor, DockerExecutor)
    yield executor
    executor.close()


run = functools.partial(run_operation, "local-docker")


# --- the failure library, as each operation sees it ------------------------------------------


def test_oom_killed_worker(config: UICIConfig, executor: DockerExecutor, lab: FailureLab) -> None:
    scenario = lab.get("oom")
    result = run(config, executor, "get_status", scenario.target)
    assert result.success, result.error
    [status] = result.data
    assert status["oom_killed"] is True
    assert status["exit_code"] == 137
    assert status["state"] == "exited"
    assert "OOM-killed" in result.output
    assert result.command == ["docker", "inspect", scenario.target]

    events = run(config, executor, "get_events", scenario.target, since="10m")
    assert events.success
    actions = [e["action"] for e in events.data]
    assert "oom" in actions and "die" in actions
    die = next(e for e in events.data if e["action"] == "die")
    assert die["exit_code"] == 137

    described = run(config, executor, "describe", scenario.target)
    assert described.data[0]["limits"]["memory_bytes"] == 16 * 1024 * 1024


def test_crash_loop_on_missing_configuration(
    config: UICIConfig, executor: DockerExecutor, lab: FailureLab
) -> None:
    scenario = lab.get("missing_env")
    status = run(config, executor, "get_status", scenario.target).data[0]
    assert status["restart_count"] >= 3
    assert status["restart_policy"]["name"] == "always"
    assert status["exit_code"] == 1 or status["state"] in ("restarting", "running")

    logs = run(config, executor, "get_logs", scenario.target, lines=50)
    assert "FATAL: required environment variable DATABASE_URL is not set" in logs.output
    assert "INFO starting orders-api" in logs.output

    errors = run(config, executor, "get_logs", scenario.target, lines=50, level="error")
    assert errors.success
    assert errors.data[0]["lines"], "the FATAL lines are error lines"
    assert all("FATAL" in line for line in errors.data[0]["lines"])
    assert errors.data[0]["filtered_out"] >= 1  # the INFO lines


def test_failing_health_check_reports_its_output(
    config: UICIConfig, executor: DockerExecutor, lab: FailureLab
) -> None:
    scenario = lab.get("unhealthy")
    result = run(config, executor, "get_status", scenario.target)
    health = result.data[0]["health"]
    assert health["status"] == "unhealthy"
    assert health["failing_streak"] >= 2
    assert "404 Not Found" in health["last_checks"][-1]["output"]
    assert "last check: GET /health: HTTP/1.1 404 Not Found" in result.output

    described = run(config, executor, "describe", scenario.target).data[0]
    assert described["healthcheck"]["retries"] == 2


def test_lost_dependency_floods_the_log_with_errors(
    config: UICIConfig, executor: DockerExecutor, lab: FailureLab
) -> None:
    scenario = lab.get("lost_dependency")
    errors = run(config, executor, "get_logs", scenario.target, lines=100, level="error")
    lines = errors.data[0]["lines"]
    assert len(lines) >= 3
    assert all("ERROR connection to db:5432 refused" in line for line in lines)
    assert not any("INFO" in line for line in lines)

    [dependency] = run(config, executor, "get_status", scenario.dependencies[0]).data
    assert dependency["state"] == "exited" and dependency["running"] is False

    matched = run(config, executor, "get_logs", scenario.target, lines=100, pattern="synced$")
    assert matched.data[0]["lines"] and all(
        line.endswith("synced") for line in matched.data[0]["lines"]
    )


def test_cpu_saturation(config: UICIConfig, executor: DockerExecutor, lab: FailureLab) -> None:
    scenario = lab.get("cpu_burn")
    result = run(config, executor, "get_metrics", scenario.target)
    assert result.success, result.error
    metrics = result.data[0]
    assert metrics["running"] is True
    assert metrics["cpu_percent"] >= 80
    assert metrics["memory_usage_bytes"] > 0 and metrics["memory_limit_bytes"] > 0
    assert metrics["pids"] >= 1
    assert result.command == ["docker", "stats", "--no-stream", scenario.target]
    lab.container("cruncher").stop(timeout=1)  # give the core back to the rest of the suite


def test_metrics_of_a_stopped_container_say_so(
    config: UICIConfig, executor: DockerExecutor, lab: FailureLab
) -> None:
    result = run(config, executor, "get_metrics", lab.get("oom").target)
    assert result.success
    assert result.data[0]["running"] is False and result.data[0]["cpu_percent"] is None
    assert "not running" in result.output


# --- targets -------------------------------------------------------------------------------


def test_list_services(config: UICIConfig, executor: DockerExecutor, lab: FailureLab) -> None:
    lab.get("healthy_web")
    lab.get("oom")
    result = run(config, executor, "list_services")
    by_name = {item["container"]: item for item in result.data}
    assert by_name[lab.name("web")]["state"] == "running"
    assert by_name[lab.name("web")]["uptime_seconds"] is not None
    assert by_name[lab.name("worker")]["state"] == "exited"
    running_only = run(config, executor, "list_services", include_stopped=False)
    assert lab.name("worker") not in {item["container"] for item in running_only.data}
    assert running_only.command == ["docker", "ps"]


def test_target_by_id_compose_service_and_label(
    config: UICIConfig, executor: DockerExecutor, lab: FailureLab
) -> None:
    lab.get("healthy_web")
    container_id = lab.container("web").id[:12]
    assert run(config, executor, "get_status", container_id).data[0]["container"] == lab.name("web")
    by_service = run(config, executor, "get_status", f"{lab.prefix}/web")
    assert [i["container"] for i in by_service.data] == [lab.name("web")]
    by_label = run(config, executor, "get_status", f"uici.test.run={lab.run_id}")
    assert len(by_label.data) >= 2  # every container of this run: one result each


def test_replicas_are_each_reported(
    config: UICIConfig, executor: DockerExecutor, lab: FailureLab
) -> None:
    # The service name is per run: a bare service name matches that service in every
    # Compose project on the engine, including another test session's.
    service = f"replicated-{lab.run_id}"
    for index in (1, 2):
        lab.run(
            f"replica-{index}",
            ["sh", "-c", f"echo replica {index} up; sleep 600"],
            labels={
                "com.docker.compose.project": lab.prefix,
                "com.docker.compose.service": service,
            },
        )
    time.sleep(0.5)
    result = run(config, executor, "get_logs", service, lines=10)
    assert [item["container"] for item in result.data] == [
        lab.name("replica-1"),
        lab.name("replica-2"),
    ]
    assert f"{lab.name('replica-1')} | replica 1 up" in result.output
    assert f"{lab.name('replica-2')} | replica 2 up" in result.output


def test_unknown_target_lists_the_closest_names(
    config: UICIConfig, executor: DockerExecutor, lab: FailureLab
) -> None:
    lab.get("oom")
    result = run(config, executor, "get_status", lab.name("wroker"))
    assert not result.success and result.error is not None
    assert result.error.kind is ErrorKind.PERMANENT
    assert f"no container matches '{lab.name('wroker')}'" in result.error.message
    assert lab.name("worker") in result.error.hint


# --- logs in detail --------------------------------------------------------------------------


def test_log_limits_and_options(
    config: UICIConfig, executor: DockerExecutor, lab: FailureLab
) -> None:
    lab.run(
        "chatty",
        [
            "sh",
            "-c",
            'i=0; while [ $i -lt 3000 ]; do echo "line $i ERROR or INFO"; i=$((i+1)); done; '
            "sleep 600",
        ],
    )
    container = lab.container("chatty")
    from agent.evaluation.failures import wait_for

    wait_for(lambda: b"line 2999" in container.logs(tail=1), 20, "chatty to write its lines")
    tail = run(config, executor, "get_logs", lab.name("chatty"), lines=5)
    assert tail.data[0]["lines"] == [f"line {i} ERROR or INFO" for i in range(2995, 3000)]
    assert tail.command == ["docker", "logs", "--tail", "5", lab.name("chatty")]

    capped = run(config, executor, "get_logs", lab.name("chatty"), lines=3000, max_bytes=1024)
    item = capped.data[0]
    assert sum(len(line) + 1 for line in item["lines"]) <= 1024
    assert item["lines"][-1] == "line 2999 ERROR or INFO"
    assert item["truncated_lines"] == 3000 - len(item["lines"])
    assert "older lines cut at max_bytes=1024" in capped.output

    stamped = run(config, executor, "get_logs", lab.name("chatty"), lines=1, timestamps=True)
    assert stamped.data[0]["lines"][0][:4].isdigit() and "line 2999" in stamped.data[0]["lines"][0]
    assert "--timestamps" in stamped.command

    recent = run(config, executor, "get_logs", lab.name("chatty"), lines=10, since="1h")
    assert len(recent.data[0]["lines"]) == 10
    old = run(config, executor, "get_logs", lab.name("chatty"), lines=10, until="1h")
    assert old.data[0]["lines"] == []

    bad = run(config, executor, "get_logs", lab.name("chatty"), pattern="(unclosed")
    assert not bad.success and bad.error is not None and bad.error.kind is ErrorKind.PERMANENT
    assert "not a valid regular expression" in bad.error.message


# --- describe redacts, exec is allow-listed, endpoints are the service's own -------------------


def test_describe_redacts_environment_values(
    config: UICIConfig, executor: DockerExecutor, lab: FailureLab
) -> None:
    lab.run(
        "secretive",
        ["sleep", "600"],
        environment={"DATABASE_URL": "postgres://u:SENTINEL-pw@db/x", "API_TOKEN": "SENTINEL-tok"},
        labels={"traefik.basic.password": "SENTINEL-label"},
    )
    result = run(config, executor, "describe", lab.name("secretive"))
    assert result.success
    item = result.data[0]
    assert {"DATABASE_URL", "API_TOKEN"} <= set(item["environment_variables"])
    assert "SENTINEL" not in result.model_dump_json()
    assert item["command"] == ["sleep", "600"]


def test_exec_diagnostic_runs_only_allow_listed_programs(
    config: UICIConfig, executor: DockerExecutor, lab: FailureLab
) -> None:
    web = lab.get("healthy_web").target
    result = run(config, executor, "exec_diagnostic", web, command="ps")
    assert result.success, result.error
    assert "httpd" in result.data[0]["output"]
    assert result.command == ["docker", "exec", web, "ps"]

    stopped = run(config, executor, "exec_diagnostic", lab.get("oom").target, command="uptime")
    assert not stopped.success and stopped.error is not None
    assert "not running" in stopped.error.message

    # A translation that bypassed the registry still cannot run what is not allow-listed.
    call = OperationRegistry.from_config(config).validate(
        "exec_diagnostic", "local-docker", {"command": "ps"}, web
    )
    spec = CommandTranslator.from_config(config).translate(call)
    forged = spec.model_copy(update={"arguments": {**spec.arguments, "command": "rm"}})
    denied = executor.execute(forged)
    assert not denied.success and denied.error is not None
    assert denied.error.kind is ErrorKind.DENIED


def test_check_endpoint(config: UICIConfig, executor: DockerExecutor, lab: FailureLab) -> None:
    web = lab.get("healthy_web").target
    ok = run(config, executor, "check_endpoint", web, port=8080, path="/")
    assert ok.success, ok.error
    assert ok.data[0]["status"] == 200 and ok.data[0]["url"].startswith("http://127.0.0.1:")

    missing = run(config, executor, "check_endpoint", web, port=8080, path="/health")
    assert not missing.success and missing.data[0]["status"] == 404
    assert "returned 404 (expected 200)" in missing.error.message  # type: ignore[union-attr]

    unpublished = run(config, executor, "check_endpoint", web, port=9999)
    assert not unpublished.success
    assert "does not publish port 9999/tcp (published: 8080/tcp)" in unpublished.error.message  # type: ignore[union-attr]


# --- writes ----------------------------------------------------------------------------------


def test_restart_stop_start(config: UICIConfig, executor: DockerExecutor, lab: FailureLab) -> None:
    lab.run("victim", ["sleep", "600"])
    name = lab.name("victim")
    before = run(config, executor, "get_status", name).data[0]["started_at"]
    restarted = run(config, executor, "restart_service", name, stop_timeout=0)
    assert restarted.success, restarted.error
    assert restarted.data[0]["state"] == "running"
    assert restarted.data[0]["started_at"] != before
    assert restarted.data[0]["previous_started_at"] == before
    assert restarted.command == ["docker", "restart", "--time", "0", name]

    stopped = run(config, executor, "stop_service", name, stop_timeout=0)
    assert stopped.success and stopped.data[0]["state"] == "exited"
    started = run(config, executor, "start_service", name)
    assert started.success and started.data[0]["state"] == "running"


# --- errors ----------------------------------------------------------------------------------


def executor_for(config: UICIConfig, base_url: str) -> DockerExecutor:
    environment = config.environments.environments["local-docker"]
    connection = environment.connection.model_copy(update={"base_url": base_url})
    executor = create_executor(
        "local-docker", environment.model_copy(update={"connection": connection})
    )
    assert isinstance(executor, DockerExecutor)
    return executor


def test_daemon_down_socket_is_retryable_and_says_how_to_fix_it(
    config: UICIConfig, tmp_path: Path
) -> None:
    socket = tmp_path / "nothing.sock"
    result = run(config, executor_for(config, f"unix://{socket}"), "get_status", "web")
    assert not result.success and result.error is not None
    assert result.error.kind is ErrorKind.RETRYABLE
    assert f"Docker engine at unix://{socket} is unreachable" in result.error.message
    assert f"the socket {socket} does not exist: is dockerd running?" in result.error.hint
    assert "DOCKER_HOST" in result.error.hint


def test_daemon_down_tcp_is_retryable(config: UICIConfig) -> None:
    start = time.monotonic()
    result = run(config, executor_for(config, "tcp://127.0.0.1:1"), "list_services")
    assert result.error is not None and result.error.kind is ErrorKind.RETRYABLE
    assert "tcp://127.0.0.1:1 is unreachable" in result.error.message
    assert time.monotonic() - start < 10


def test_the_operation_timeout_really_bounds_a_call(
    shipped_config_dir: Path, lab: FailureLab
) -> None:
    path = shipped_config_dir / "operations.yml"
    text = path.read_text()
    # get_metrics waits about a second for a second stats sample: give it 0.2 s.
    head, _, rest = text.partition("  get_metrics:")
    path.write_text(
        head + "  get_metrics:" + rest.replace("timeout_seconds: 30", "timeout_seconds: 0.2", 1)
    )
    config = load_config(shipped_config_dir, environ={})
    assert config.operations.operations["get_metrics"].timeout_seconds == 0.2
    executor = create_executor("local-docker", config.environments.environments["local-docker"])
    web = lab.get("healthy_web").target
    start = time.monotonic()
    result = run(config, executor, "get_metrics", web)  # type: ignore[arg-type]
    elapsed = time.monotonic() - start
    assert result.error is not None and result.error.kind is ErrorKind.RETRYABLE
    assert result.error.message == "timed out after 0.2 s"
    assert elapsed < 0.6


# --- the CLI for real ------------------------------------------------------------------------


def test_uici_run_get_status_prints_a_table_and_json(lab: FailureLab) -> None:
    target = lab.get("oom").target
    runner = CliRunner()
    result = runner.invoke(app, ["run", "get_status", "--env", "local-docker", "--target", target])
    assert result.exit_code == 0, result.stderr
    assert "ok  get_status on local-docker" in result.stdout
    assert "oom_killed" in result.stdout and "137" in result.stdout
    as_json = runner.invoke(app, ["run", "get_status", "-t", target, "--json"])
    import json

    data = json.loads(as_json.stdout)
    assert data["success"] is True and data["data"][0]["oom_killed"] is True


def test_uici_run_failure_exits_1() -> None:
    result = CliRunner().invoke(app, ["run", "get_status", "-t", "uici-no-such-container-x"])
    assert result.exit_code == 1
    assert "permanent: no container matches 'uici-no-such-container-x'" in result.stderr


def test_the_shown_command_is_true(
    config: UICIConfig, executor: DockerExecutor, lab: FailureLab
) -> None:
    """The argv UICI shows, run with the real docker CLI, reads the same container."""
    docker_cli = shutil.which("docker")
    assert docker_cli is not None
    target = lab.get("missing_env").target
    result = run(config, executor, "get_logs", target, lines=5)
    shown = subprocess.run(result.command, capture_output=True, text=True, timeout=30, check=True)
    assert "DATABASE_URL is not set" in shown.stdout + shown.stderr


def test_containers_left_by_a_killed_run_are_swept(lab: FailureLab) -> None:
    from agent.evaluation.failures import RUN_LABEL

    leftover = lab.client.containers.create(
        "uici-test/busybox:1",
        ["sleep", "1"],
        name=f"{lab.prefix}-leftover",
        labels={RUN_LABEL: "deadbeef"},
    )
    assert leftover.name not in lab.remove_stale(older_than_seconds=3600)  # young: maybe alive
    assert leftover.name in lab.remove_stale(older_than_seconds=0)
    own = lab.client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={lab.run_id}"})
    assert own, "this run's own containers are never swept"
