"""The OCI executor: the real `oci` SDK, signing every request with a freshly generated key,
over HTTP to the OCI double (which verifies the signature), through registry and translator
as `uici run` does."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.evaluation.cloud_setup import OciContainer, OciHealthCheck, OciSetup
from infrastructure.configuration.loader import UICIConfig, load_config
from infrastructure.executors.base import ErrorKind
from infrastructure.executors.factory import create_executor
from infrastructure.executors.oci import OCIExecutor
from infrastructure.redaction import REDACTED
from infrastructure.registry import CallValidationError, OperationRegistry
from tests import oci_scenarios as scenarios
from tests.executor_support import run_operation, shipped_config_with
from tests.oci_double import OciDouble

ENV = "oci-prod"
FATAL = "FATAL: required environment variable DATABASE_URL is not set"


def oci_config_dir(target: Path, double: OciDouble, credentials: Path, **connection: Any) -> Path:
    """The shipped configuration with its OCI environment enabled against the double."""
    return shipped_config_with(
        target,
        ENV,
        config_file=str(credentials),
        profile="DEFAULT",
        region=double.region,
        compartment_id=double.compartment_id,
        service_endpoints={
            "container_instances": double.url,
            "logging_search": double.url,
            "monitoring": double.url,
        },
        connect_timeout_seconds=2,
        timeout_seconds=5,
        read_retries=2,
        retry_backoff_seconds=0.05,
        retry_after_cap_seconds=2,
        work_request_poll_seconds=0.1,
        work_request_timeout_seconds=20,
        **connection,
    )


@pytest.fixture(scope="module")
def double() -> Iterator[OciDouble]:
    with OciDouble() as server:
        yield server


@pytest.fixture(scope="module")
def failing(double: OciDouble) -> scenarios.OciScenario:
    return scenarios.failing_instance(double, "payments")


@pytest.fixture(scope="module")
def config_dir(
    double: OciDouble, failing: scenarios.OciScenario, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    scenarios.healthy_instance(double, "gateway")
    scenarios.stopped_instance(double, "batch")
    base = tmp_path_factory.mktemp("oci")
    scope = f"{double.compartment_id}/{failing.log_group_id}/{failing.log_id}"
    return oci_config_dir(
        base / "config",
        double,
        double.write_credentials(base / "oci"),
        log_search_scopes={"payments": scope},
    )


@pytest.fixture(scope="module")
def config(config_dir: Path) -> UICIConfig:
    return load_config(config_dir, environ={})


@pytest.fixture
def executor(config: UICIConfig) -> Iterator[OCIExecutor]:
    executor = create_executor(ENV, config.environments.environments[ENV])
    assert isinstance(executor, OCIExecutor)
    yield executor
    executor.close()


run = functools.partial(run_operation, ENV)


# --- reads ---------------------------------------------------------------------------------


def test_every_request_is_signed_and_verified(
    config: UICIConfig, executor: OCIExecutor, double: OciDouble
) -> None:
    double.clear_requests()
    result = run(config, executor, "get_status", "payments")
    assert result.success, result.error
    assert double.requests and all(r.signature_ok for r in double.requests)


def test_a_wrong_key_is_refused_with_a_clear_message(double: OciDouble, tmp_path: Path) -> None:
    credentials = double.write_credentials(tmp_path / "oci")
    other = OciDouble()  # another key pair, same account names: the signature cannot verify
    wrong_key = other.write_credentials(tmp_path / "other")
    text = credentials.read_text().replace(
        next(line for line in credentials.read_text().splitlines() if line.startswith("key_file")),
        next(line for line in wrong_key.read_text().splitlines() if line.startswith("key_file")),
    )
    credentials.write_text(text)
    config = load_config(oci_config_dir(tmp_path / "config", double, credentials), environ={})
    executor = create_executor(ENV, config.environments.environments[ENV])
    result = run(config, executor, "get_status", "payments")  # type: ignore[arg-type]
    executor.close()
    assert result.error is not None and result.error.kind is ErrorKind.PERMANENT
    assert "401" in result.error.message and "key" in result.error.hint


def test_list_services_shows_each_instance_and_its_containers(
    config: UICIConfig, executor: OCIExecutor
) -> None:
    result = run(config, executor, "list_services")
    assert result.success, result.error
    by_name = {item["name"]: item for item in result.data}
    assert {"payments", "gateway", "batch"} <= set(by_name)
    assert by_name["payments"]["health"] == "unhealthy"
    assert by_name["gateway"]["health"] == "healthy"
    assert by_name["batch"]["state"] == "INACTIVE"
    assert result.command[:4] == ["oci", "container-instances", "container-instance", "list"]


def test_get_status_reports_exit_code_restarts_and_work_requests(
    config: UICIConfig, executor: OCIExecutor, failing: scenarios.OciScenario
) -> None:
    result = run(config, executor, "get_status", "payments")
    assert result.success, result.error
    app_item = next(i for i in result.data if i["container"] == failing.container)
    assert app_item["lifecycle_state"] == "FAILED" and app_item["exit_code"] == 1
    assert app_item["restart_count"] == 5
    assert app_item["work_requests"], "the last work requests on the instance"
    only = run(config, executor, "get_status", f"payments/{failing.container}")
    assert [i["container"] for i in only.data] == [failing.container]
    by_id = run(config, executor, "get_status", failing.instance_id)
    assert by_id.success and by_id.data[0]["instance"] == "payments"


def test_get_logs_from_the_container_and_logging_search(
    config: UICIConfig, executor: OCIExecutor, failing: scenarios.OciScenario
) -> None:
    result = run(config, executor, "get_logs", f"payments/{failing.container}", lines=100)
    assert result.success, result.error
    sources = {item["source"] for item in result.data}
    assert {failing.container, "logging-search"} <= sources
    assert FATAL in result.output
    assert all(FATAL in item["lines"] for item in result.data if item["source"] == "logging-search")
    capped = run(config, executor, "get_logs", "payments", max_bytes=1024, pattern="FATAL")
    assert capped.success
    assert all("FATAL" in line or "cut at max_bytes" in line for line in capped.output.splitlines())


def test_get_metrics_reads_cpu_and_memory_from_monitoring(
    config: UICIConfig, executor: OCIExecutor, double: OciDouble
) -> None:
    double.clear_requests()
    result = run(config, executor, "get_metrics", "payments", window="15m")
    assert result.success, result.error
    [item] = result.data
    assert item["cpu_percent"] is not None and item["memory_percent"] is not None
    queries = [r.body["query"] for r in double.requests if r.body and "query" in r.body]
    assert any(q.startswith("CpuUtilization[1m]") for q in queries)
    assert all(r.body.get("namespace") == "oci_computecontainerinstance"
               for r in double.requests if r.body and "query" in r.body)  # fmt: skip


def test_describe_redacts_environment_values(config: UICIConfig, executor: OCIExecutor) -> None:
    result = run(config, executor, "describe", "payments")
    assert result.success, result.error
    assert f"DATABASE_PASSWORD={REDACTED}" in result.output
    assert scenarios.SECRET_VALUE not in result.output + str(result.data)
    assert result.data["shape"] and result.data["containers"][0]["image"]


def test_unknown_instance_lists_the_existing_ones(
    config: UICIConfig, executor: OCIExecutor
) -> None:
    result = run(config, executor, "get_status", "paymnts")
    assert result.error is not None and result.error.kind is ErrorKind.PERMANENT
    assert "payments" in result.error.hint


def test_unsupported_operations_are_refused_with_a_reason(config: UICIConfig) -> None:
    registry = OperationRegistry.from_config(config)
    for operation in ("get_events", "scale_service", "rollback_service"):
        with pytest.raises(CallValidationError, match=r"oci|Container Instance"):
            registry.validate(
                operation, ENV, {"replicas": 1} if "scale" in operation else {}, "payments"
            )


# --- the normalised status (infrastructure/executors/status.py) -----------------------------


def test_get_status_normalises_a_failing_container_and_its_health_check(
    config: UICIConfig, executor: OCIExecutor, failing: scenarios.OciScenario
) -> None:
    result = run(config, executor, "get_status", "payments")
    assert result.success, result.error
    by_name = {i["container"]: i for i in result.data}
    app = by_name[failing.container]
    assert app["state"] == "failed" and app["lifecycle_state"] == "FAILED"
    assert app["exit_code"] == 1 and app["signal"] is None and app["oom_killed"] is False
    assert app["exit_meaning"] == "the program exited with an error (code 1)"
    assert app["restart_count"] == 5 and app["up_seconds"] == 0
    assert app["healthy"] is False and app["ready"] is None and app["waiting_reason"] is None
    assert app["message"] == "Container exited with exit code 1"
    assert app["probe_output"] == "Get http://127.0.0.1:8080/healthz: connection refused"
    assert app["health_checks"] == [
        {
            "name": "http-healthz",
            "type": "HTTP",
            "status": "UNHEALTHY",
            "details": "Get http://127.0.0.1:8080/healthz: connection refused",
        }
    ]
    proxy = by_name[scenarios.PROXY]
    assert proxy["state"] == "running" and proxy["healthy"] is True
    assert proxy["exit_code"] is None and proxy["probe_output"] is None
    # ACTIVE since the instance was created 2 h 14 min ago (OCI's last state change)
    assert 2 * 3600 + 14 * 60 <= proxy["up_seconds"] <= 2 * 3600 + 16 * 60
    assert "http-healthz UNHEALTHY" in result.output
    assert "check: Get http://127.0.0.1:8080/healthz: connection refused" in result.output


def test_an_exit_137_is_an_oom_kill_only_when_oci_says_so(
    config: UICIConfig, executor: OCIExecutor, double: OciDouble
) -> None:
    for name, details in (
        ("killed", "Container exited with exit code 137"),
        ("oomed", "Container exited with exit code 137: OOMKilled"),
    ):
        scenarios.from_setup(
            double,
            name,
            OciSetup(
                containers=[
                    OciContainer(
                        name="app",
                        lifecycle_state="FAILED",
                        lifecycle_details=details,
                        exit_code=137,
                        restart_attempts=2,
                    )
                ]
            ),
        )
    [killed] = run(config, executor, "get_status", "killed").data
    assert killed["signal"] == "SIGKILL" and killed["oom_killed"] is False
    assert "not by the OOM killer" in killed["exit_meaning"]
    assert killed["healthy"] is None  # no health check
    [oomed] = run(config, executor, "get_status", "oomed").data
    assert oomed["oom_killed"] is True
    assert oomed["exit_meaning"] == "killed by the kernel's OOM killer (SIGKILL, code 137)"


def test_a_container_being_created_has_no_verdict_yet(
    config: UICIConfig, executor: OCIExecutor, double: OciDouble
) -> None:
    scenarios.from_setup(
        double,
        "fresh",
        OciSetup(
            lifecycle_state="CREATING",
            containers=[
                OciContainer(
                    name="app",
                    lifecycle_state="CREATING",
                    health_checks=[OciHealthCheck(type="TCP", status="UNKNOWN")],
                )
            ],
        ),
    )
    [item] = run(config, executor, "get_status", "fresh").data
    assert item["state"] == "starting" and item["waiting_reason"] == "Creating"
    assert item["healthy"] is None and item["up_seconds"] == 0 and item["exit_code"] is None
    assert item["health_checks"][0]["type"] == "TCP"


def test_metrics_are_the_latest_utilisation_in_percent(
    config: UICIConfig, executor: OCIExecutor
) -> None:
    [item] = run(config, executor, "get_metrics", "payments", window="15m").data
    # the last of the scenario's per-minute datapoints, percent of the instance's OCPUs/memory
    assert item["cpu_percent"] == 42.6 and item["memory_percent"] == 12.8
    assert item["cpu_percent_max"] == 44.3


# --- errors --------------------------------------------------------------------------------


def test_404_is_permanent_and_mentions_permissions(
    config: UICIConfig, executor: OCIExecutor, double: OciDouble
) -> None:
    double.fail("GET", r"/containerInstances/", 404, times=1)
    result = run(config, executor, "get_status", "payments")
    double.clear_failures()
    assert result.error is not None and result.error.kind is ErrorKind.PERMANENT
    assert "missing permission" in result.error.hint


def test_429_and_500_on_reads_are_retried(
    config: UICIConfig, executor: OCIExecutor, double: OciDouble
) -> None:
    double.clear_failures()
    double.clear_requests()
    double.fail("GET", r"/containerInstances/", 429, times=1, headers={"Retry-After": "1"})
    result = run(config, executor, "get_status", "payments")
    assert result.success, result.error
    assert [r.status for r in double.requests if "/containerInstances/" in r.path][:2] == [429, 200]
    double.fail("GET", r"/containerInstances/", 500, times=3)
    failed = run(config, executor, "get_status", "payments")
    double.clear_failures()
    assert failed.error is not None and failed.error.kind is ErrorKind.RETRYABLE


# --- writes --------------------------------------------------------------------------------


def test_restart_polls_its_work_request_to_the_end(
    config: UICIConfig, executor: OCIExecutor, double: OciDouble, failing: scenarios.OciScenario
) -> None:
    before = double.get_container(failing.container_id)["containerRestartAttemptCount"]
    double.clear_requests()
    result = run(config, executor, "restart_service", "payments", runtime={"intent": "k@t"})
    assert result.success, result.error
    assert result.data["work_request_status"] == "SUCCEEDED"
    assert double.work_request(result.data["work_request_id"])["status"] == "SUCCEEDED"
    posts = [
        r for r in double.requests if r.method == "POST" and r.path.endswith("/actions/restart")
    ]
    assert len(posts) == 1 and posts[0].headers.get("if-match")
    after = double.get_container(failing.container_id)["containerRestartAttemptCount"]
    assert after == before + 1
    # A crashed worker's recovery finds this work request instead of restarting again.
    assert executor.effect_observed("restart_service", "payments", 0) is True


def test_a_409_on_an_action_rereads_and_tries_once_more(
    config: UICIConfig, executor: OCIExecutor, double: OciDouble
) -> None:
    double.clear_requests()
    double.fail("POST", r"/actions/restart$", 409, times=1, code="Conflict")
    result = run(config, executor, "restart_service", "gateway", runtime={"intent": "k@t"})
    assert result.success, result.error
    statuses = [r.status for r in double.requests if r.path.endswith("/actions/restart")]
    assert statuses[0] == 409 and len(statuses) == 2
    double.fail("POST", r"/actions/restart$", 412, times=2)
    twice = run(config, executor, "restart_service", "gateway", runtime={"intent": "k@t"})
    double.clear_failures()
    assert twice.error is not None and twice.error.kind is ErrorKind.RETRYABLE


def test_a_500_on_an_action_is_not_resent(
    config: UICIConfig, executor: OCIExecutor, double: OciDouble
) -> None:
    double.clear_requests()
    double.fail("POST", r"/actions/stop$", 500, times=3)
    result = run(config, executor, "stop_service", "gateway", runtime={"intent": "k@t"})
    double.clear_failures()
    assert result.error is not None and result.error.kind is ErrorKind.RETRYABLE
    assert "observe before repeating" in result.error.hint
    assert len([r for r in double.requests if r.path.endswith("/actions/stop")]) == 1


def test_stop_then_start(config: UICIConfig, executor: OCIExecutor, double: OciDouble) -> None:
    stopped = run(config, executor, "stop_service", "batch", runtime={"intent": "a@t"})
    # batch is already stopped: OCI answers 409 IncorrectState twice, reported, not hidden
    assert stopped.error is not None and "409" in stopped.error.message
    started = run(config, executor, "start_service", "batch", runtime={"intent": "b@t"})
    assert started.success, started.error
    [instance] = [i for i in run(config, executor, "list_services").data if i["name"] == "batch"]
    assert instance["state"] == "ACTIVE"


def test_uici_run_get_status_against_the_double(config_dir: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "--config-dir",
            str(config_dir),
            "run",
            "get_status",
            "--env",
            ENV,
            "--target",
            "payments",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "FAILED" in result.output and "exit code 1" in result.output


# --- found in review ---------------------------------------------------------------------------


def test_recovery_tells_start_from_restart_and_unfinished_from_done(
    config: UICIConfig, executor: OCIExecutor, double: OciDouble
) -> None:
    scenarios.healthy_instance(double, "ledger")
    assert run(config, executor, "restart_service", "ledger", runtime={"intent": "k@t"}).success
    assert executor.effect_observed("restart_service", "ledger", 0) is True
    assert executor.effect_observed("start_service", "ledger", 0) is False  # RESTART is not START
    assert executor.effect_observed("restart_service", "no-such-instance", 0) is None


def test_acting_in_the_wrong_state_is_permanent_and_says_why(
    config: UICIConfig, executor: OCIExecutor, double: OciDouble
) -> None:
    scenarios.stopped_instance(double, "archive")
    double.clear_requests()
    result = run(config, executor, "stop_service", "archive", runtime={"intent": "k@t"})
    assert result.error is not None and result.error.kind is ErrorKind.PERMANENT
    assert "IncorrectState" in result.error.message and "state" in result.error.hint
    assert len([r for r in double.requests if r.path.endswith("/actions/stop")]) == 1


def test_many_failures_in_a_row_stay_classified(
    config: UICIConfig, executor: OCIExecutor, double: OciDouble
) -> None:
    # The SDK's default circuit breaker would open after 10 failures and raise its own error.
    double.fail("GET", r"/containerInstances/", 500, times=15)
    results = [run(config, executor, "get_status", "payments") for _ in range(5)]
    double.clear_failures()
    assert all(r.error is not None and r.error.kind is ErrorKind.RETRYABLE for r in results)
    assert run(config, executor, "get_status", "payments").success


def test_a_missing_key_file_is_a_configuration_error(double: OciDouble, tmp_path: Path) -> None:
    credentials = double.write_credentials(tmp_path / "oci")
    key_line = next(
        line for line in credentials.read_text().splitlines() if line.startswith("key_file")
    )
    credentials.write_text(
        credentials.read_text().replace(key_line, f"key_file={tmp_path}/gone.pem")
    )
    config = load_config(oci_config_dir(tmp_path / "config", double, credentials), environ={})
    executor = create_executor(ENV, config.environments.environments[ENV])
    result = run(config, executor, "get_status", "payments")  # type: ignore[arg-type]
    assert result.error is not None and result.error.kind is ErrorKind.PERMANENT
    assert "gone.pem" in result.error.message or "key" in result.error.message.lower()
    assert "unexpected" not in result.error.message


def test_a_literal_pattern_filters_in_the_logging_search_query(
    config: UICIConfig, executor: OCIExecutor, double: OciDouble
) -> None:
    double.clear_requests()
    result = run(config, executor, "get_logs", "payments", pattern="DATABASE_URL", since="30m")
    assert result.success, result.error
    [search] = [r for r in double.requests if r.path.endswith("/search")]
    assert search.body["searchQuery"].endswith(
        "| where data.message = '*DATABASE_URL*' | sort by datetime desc"
    )
    start, end = search.body["timeStart"], search.body["timeEnd"]
    assert start < end  # a time range, from `since`
    regex = run(config, executor, "get_logs", "payments", pattern="DATABASE_(URL|HOST)")
    assert regex.success and FATAL in regex.output  # applied here, not sent


def test_timeouts_are_explicit(executor: OCIExecutor) -> None:
    client = executor._client("container_instances")
    assert client.base_client.timeout == (2, 5)


def test_max_bytes_bounds_the_whole_answer(config: UICIConfig, executor: OCIExecutor) -> None:
    result = run(config, executor, "get_logs", "payments", max_bytes=1024, lines=1000)
    assert result.success, result.error
    assert len(result.data) >= 3  # containers, a previous run, Logging Search
    assert sum(len(line) + 1 for item in result.data for line in item["lines"]) <= 1024
