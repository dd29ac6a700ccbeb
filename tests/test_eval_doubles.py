"""The API doubles `uici eval` seeds from a scenario's `kubernetes:` / `oci:` data: the real
executors, built by the factory from the yielded environment model, read back what the setup
describes, in the normalised status fields, through the registry and translator."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.evaluation.cloud_setup import (
    KubernetesContainer,
    KubernetesEvent,
    KubernetesNeighbour,
    KubernetesSetup,
    OciContainer,
    OciHealthCheck,
    OciNeighbour,
    OciSetup,
)
from infrastructure.configuration.loader import UICIConfig, load_config
from infrastructure.configuration.models import KubernetesEnvironment, OCIEnvironment
from infrastructure.executors.base import EnvironmentExecutor, ErrorKind, OperationResult
from infrastructure.executors.factory import create_executor
from infrastructure.executors.kubernetes import KubernetesExecutor
from infrastructure.executors.oci import OCIExecutor
from tests.conftest import SHIPPED_CONFIG
from tests.eval_doubles import seeded_kubernetes, seeded_oci
from tests.executor_support import run_operation
from tests.k8s_scenarios import REGISTRY
from tests.oci_scenarios import HEALTH_CHECK_FAILURE

FATAL = "FATAL: required environment variable DATABASE_URL is not set"


def _config_with(name: str, environment: Any) -> UICIConfig:
    """The shipped configuration with `name` replaced by the seeded environment, as the
    evaluation harness runs a live scenario."""
    config = load_config(SHIPPED_CONFIG, environ={})
    environments = {**config.environments.environments, name: environment}
    return dataclasses.replace(
        config, environments=config.environments.model_copy(update={"environments": environments})
    )


def _run(
    name: str,
    config: UICIConfig,
    executor: EnvironmentExecutor,
    operation: str,
    target: str | None = None,
    **params: Any,
) -> OperationResult:
    result = run_operation(name, config, executor, operation, target, **params)
    assert result.success, result.error
    return result


CRASH_LOOP = KubernetesSetup(
    namespace="shop",
    replicas=2,
    image=f"{REGISTRY}/api:1.8.3",
    containers=[
        KubernetesContainer(
            state="waiting",
            reason="CrashLoopBackOff",
            last_reason="Error",
            last_exit_code=1,
            restart_count=7,
            liveness_probe=True,
            limits={"cpu": "500m", "memory": "256Mi"},
            env={"PORT": "8080"},
            previous_log=["INFO  starting api version=1.8.3", FATAL],
        )
    ],
    events=[
        KubernetesEvent(
            reason="BackOff",
            message="Back-off restarting failed container app",
            count=40,
            container="app",
        )
    ],
    others=[KubernetesNeighbour(name="db", ready=False), KubernetesNeighbour(name="cache")],
)


def test_a_crash_loop_seeded_in_the_kubernetes_double() -> None:
    with seeded_kubernetes(CRASH_LOOP, "api") as (name, environment):
        assert name == "staging-k8s" and isinstance(environment, KubernetesEnvironment)
        assert environment.enabled and environment.connection.namespace == "shop"
        assert environment.connection.allowed_namespaces == ["shop"]
        config = _config_with(name, environment)
        executor = create_executor(name, environment)
        assert isinstance(executor, KubernetesExecutor)
        status = _run(name, config, executor, "get_status", "api")
        assert len(status.data) == 2
        for item in status.data:
            assert item["state"] == "waiting" and item["waiting_reason"] == "CrashLoopBackOff"
            assert item["exit_code"] == 1 and item["signal"] is None
            assert item["exit_meaning"] == "the program exited with an error (code 1)"
            assert item["restart_count"] == 7 and item["ready"] is False
            assert item["oom_killed"] is False and item["up_seconds"] == 0
            assert item["message"].startswith("back-off 5m0s restarting failed container=app")
            assert item["last_terminated"]["reason"] == "Error"
        logs = _run(name, config, executor, "get_logs", "api", lines=50, max_bytes=4096)
        previous = [i for i in logs.data if i["previous"]]
        assert len(previous) == 2
        assert all(i["lines"] == ["INFO  starting api version=1.8.3", FATAL] for i in previous)
        assert f"[previous] | {FATAL}" in logs.output
        events = _run(name, config, executor, "get_events", "api", since="1h")
        assert {e["reason"] for e in events.data} == {"BackOff"}
        assert {e["count"] for e in events.data} == {40}
        # The neighbours: one down (its container crash-loops), one up; each has a Service.
        [db] = _run(name, config, executor, "get_status", "db").data
        assert db["state"] == "waiting" and db["ready"] is False
        [cache] = _run(name, config, executor, "get_status", "cache").data
        assert cache["state"] == "running" and cache["ready"] is True
        listed = {i["name"]: i for i in _run(name, config, executor, "list_services").data}
        assert listed["api"]["health"] == listed["db"]["health"] == "unhealthy"
        assert listed["cache"]["health"] == "healthy"
        executor.close()
        kubeconfig = Path(str(environment.connection.kubeconfig))
        assert kubeconfig.exists()
    assert not kubeconfig.exists()  # everything went with the block
    gone = create_executor(name, environment)
    result = run_operation(name, config, gone, "get_status", "api")
    assert result.error is not None and result.error.kind is ErrorKind.PERMANENT
    assert "cannot load the Kubernetes configuration" in result.error.message


def test_a_statefulset_with_an_oom_kill_and_its_metrics() -> None:
    setup = KubernetesSetup(
        kind="StatefulSet",
        image="docker.io/library/postgres:16.4",
        containers=[
            KubernetesContainer(
                name="postgres",
                started_seconds_ago=40,
                last_reason="OOMKilled",
                last_exit_code=137,
                restart_count=3,
                limits={"memory": "512Mi"},
                cpu_usage="120m",
                memory_usage="500Mi",
            )
        ],
    )
    with seeded_kubernetes(setup, "db") as (name, environment):
        config = _config_with(name, environment)
        executor = create_executor(name, environment)
        [item] = _run(name, config, executor, "get_status", "db").data
        assert item["pod"] == "db-0" and item["state"] == "running"
        assert item["oom_killed"] is True and item["signal"] == "SIGKILL"
        assert item["exit_meaning"] == "killed by the kernel's OOM killer (SIGKILL, code 137)"
        assert 40 <= item["up_seconds"] <= 80 and item["healthy"] is None
        [metrics] = _run(name, config, executor, "get_metrics", "db").data
        assert metrics["cpu_percent"] == 12.0  # of one core: no CPU limit
        assert metrics["memory_percent"] == 97.7  # 500Mi of 512Mi
        described = _run(name, config, executor, "describe", "db")
        assert described.data["kind"] == "StatefulSet"
        executor.close()


FAILING_INSTANCE = OciSetup(
    containers=[
        OciContainer(
            name="app",
            lifecycle_state="FAILED",
            lifecycle_details="Container exited with exit code 1",
            exit_code=1,
            restart_attempts=3,
            env={"DATABASE_USER": "orders"},
            health_checks=[OciHealthCheck(status="UNHEALTHY", details=HEALTH_CHECK_FAILURE)],
            log=['level=info msg="starting payments"', FATAL],
            previous_log=['level=info msg="starting payments"', FATAL],
        ),
        OciContainer(name="proxy", health_checks=[OciHealthCheck()]),
    ],
    logging_search=True,
    cpu_percent=[3.0, 41.0, 2.5],
    memory_percent=[11.5, 12.0, 12.5],
    others=[OciNeighbour(name="orders-db", lifecycle_state="INACTIVE")],
)


def test_a_failing_container_instance_seeded_in_the_oci_double() -> None:
    with seeded_oci(FAILING_INSTANCE, "payments") as (name, environment):
        assert name == "oci-prod" and isinstance(environment, OCIEnvironment)
        assert set(environment.connection.log_search_scopes) == {"payments"}
        config = _config_with(name, environment)
        executor = create_executor(name, environment)
        assert isinstance(executor, OCIExecutor)
        status = _run(name, config, executor, "get_status", "payments")
        app, proxy = sorted(status.data, key=lambda i: i["container"])
        assert app["state"] == "failed" and app["exit_code"] == 1
        assert app["exit_meaning"] == "the program exited with an error (code 1)"
        assert app["restart_count"] == 3 and app["up_seconds"] == 0
        assert app["healthy"] is False and app["probe_output"] == HEALTH_CHECK_FAILURE
        assert app["message"] == "Container exited with exit code 1"
        assert app["oom_killed"] is False and app["ready"] is None
        assert proxy["state"] == "running" and proxy["healthy"] is True
        logs = _run(name, config, executor, "get_logs", "payments", lines=50)
        by_source = {(i["source"], i["previous"]): i["lines"] for i in logs.data}
        assert by_source[("app", False)][-1] == FATAL
        assert by_source[("app", True)][-1] == FATAL
        assert FATAL in by_source[("logging-search", False)]
        metrics = _run(name, config, executor, "get_metrics", "payments", window="15m")
        assert metrics.data[0]["cpu_percent"] == 2.5
        assert metrics.data[0]["memory_percent"] == 12.5
        [db, _] = _run(name, config, executor, "get_status", "orders-db").data
        assert db["state"] == "exited"
        executor.close()


def test_setups_are_strict() -> None:
    with pytest.raises(ValidationError, match="extra"):
        KubernetesSetup.model_validate({"image": "x:1", "containers": [{}], "replicaz": 2})
    with pytest.raises(ValidationError, match="ever ran"):
        KubernetesSetup(
            image="x:1",
            unschedulable="0/3 nodes are available: 3 Insufficient cpu.",
            containers=[KubernetesContainer(state="waiting", restart_count=2)],
        )
    with pytest.raises(ValidationError, match="need a reason"):
        KubernetesSetup(image="x:1", containers=[KubernetesContainer(state="waiting")])
    with pytest.raises(ValidationError, match="should match pattern"):
        KubernetesContainer(limits={"memory": "lots"})
    with pytest.raises(ValidationError, match="go together"):
        KubernetesContainer(last_reason="OOMKilled")
    with pytest.raises(ValidationError, match="no exit code"):
        OciContainer(name="app", exit_code=1)
    with pytest.raises(ValidationError, match="frozen"):
        FAILING_INSTANCE.ocpus = 2  # type: ignore[misc]
