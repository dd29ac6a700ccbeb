"""The Kubernetes executor: the official client over real HTTP against the API double.

Every operation runs through the registry and the translator, as `uici run` does, against
objects shaped like a real cluster's (tests/k8s_scenarios.py). The double answers the error
classes on demand, and records every request, so the tests also see what went over the wire.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from agent.cli.main import app
from agent.incidents.storage import IncidentStore
from infrastructure.configuration.loader import UICIConfig, load_config
from infrastructure.executors.base import ErrorKind, ExecutorError, intent_value
from infrastructure.executors.factory import create_executor
from infrastructure.executors.kubernetes import RESTARTED_AT, REVISION, KubernetesExecutor
from infrastructure.redaction import REDACTED
from infrastructure.registry import CallValidationError
from tests import k8s_scenarios as scenarios
from tests.executor_support import run_operation, shipped_config_with
from tests.k8s_double import KubeDouble

ENV = "staging-k8s"
FATAL = "FATAL: required environment variable DATABASE_URL is not set"


def k8s_config_dir(target: Path, kubeconfig: Path, **connection: Any) -> Path:
    """The shipped configuration with its Kubernetes environment enabled against the double."""
    return shipped_config_with(
        target,
        ENV,
        kubeconfig=str(kubeconfig),
        context="double",
        read_retries=2,
        retry_backoff_seconds=0.05,
        retry_after_cap_seconds=2,
        **connection,
    )


@pytest.fixture(scope="module")
def double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeDouble]:
    with KubeDouble() as server:
        scenarios.crash_looping_deployment(server, "api")
        scenarios.oom_killed_deployment(server, "worker")
        scenarios.image_pull_failure_deployment(server, "puller")
        scenarios.rolled_out_twice_deployment(server, "web")
        scenarios.healthy_statefulset(server, "db")
        scenarios.daemonset(server, "agent")
        scenarios.unschedulable_deployment(server, "pending")
        scenarios.config_error_deployment(server, "configless")
        scenarios.liveness_failing_deployment(server, "flaky")
        scenarios.readiness_failing_deployment(server, "warming")
        yield server


@pytest.fixture(scope="module")
def config_dir(double: KubeDouble, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("k8s")
    return k8s_config_dir(base / "config", double.kubeconfig(base / "kubeconfig"))


@pytest.fixture(scope="module")
def config(config_dir: Path) -> UICIConfig:
    return load_config(config_dir, environ={})


@pytest.fixture
def executor(config: UICIConfig) -> Iterator[KubernetesExecutor]:
    executor = create_executor(ENV, config.environments.environments[ENV])
    assert isinstance(executor, KubernetesExecutor)
    yield executor
    executor.close()


run = functools.partial(run_operation, ENV)


# --- read operations on realistic objects ----------------------------------------------------


def test_get_status_shows_the_crash_loop_and_its_last_exit(
    config: UICIConfig, executor: KubernetesExecutor
) -> None:
    result = run(config, executor, "get_status", "api")
    assert result.success, result.error
    assert len(result.data) == 2  # both replicas
    for item in result.data:
        assert item["state"] == "waiting" and item["reason"] == "CrashLoopBackOff"
        assert item["last_terminated"]["exit_code"] == 1
        assert item["restart_count"] >= 1 and item["node"]
    assert "CrashLoopBackOff" in result.output
    assert result.command[:3] == ["kubectl", "get", "pods"]


def test_get_status_names_the_oom_kill(config: UICIConfig, executor: KubernetesExecutor) -> None:
    result = run(config, executor, "get_status", "worker")
    assert result.success, result.error
    assert all(item["oom_killed"] for item in result.data)
    assert {item["last_terminated"]["reason"] for item in result.data} == {"OOMKilled"}
    assert "OOMKilled (exit code 137)" in result.output


def test_get_status_names_the_image_pull_failure(
    config: UICIConfig, executor: KubernetesExecutor
) -> None:
    result = run(config, executor, "get_status", "puller")
    assert result.success, result.error
    assert {item["reason"] for item in result.data} <= {"ImagePullBackOff", "ErrImagePull"}


def test_logs_of_a_crash_loop_include_the_previous_instance(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    double.clear_requests()
    result = run(config, executor, "get_logs", "api", lines=50, max_bytes=4096)
    assert result.success, result.error
    previous = [item for item in result.data if item["previous"]]
    assert previous and all(FATAL in item["lines"] for item in previous)
    assert f"[previous] | {FATAL}" in result.output  # replicas merged with a pod prefix
    log_calls = [r for r in double.requests if r.path.endswith("/log")]
    # max_bytes bounds the whole answer: 2 pods x (previous + current) get 1024 bytes each, and
    # limitBytes is twice that share (the API keeps the start of the tail, UICI the newest).
    assert len(log_calls) == 4
    assert all(r.query["tailLines"] == "50" and r.query["limitBytes"] == "2048" for r in log_calls)
    assert sum(len(line) + 1 for item in result.data for line in item["lines"]) <= 4096
    assert any(r.query.get("previous") == "true" for r in log_calls)


def test_logs_filter_by_level_and_pattern_and_cap_bytes(
    config: UICIConfig, executor: KubernetesExecutor
) -> None:
    only = run(config, executor, "get_logs", "api", previous=True, pattern="DATABASE_URL")
    assert only.success, only.error
    assert all(line.endswith(FATAL) for line in only.output.splitlines())
    errors = run(config, executor, "get_logs", "api", previous=True, level="error")
    assert errors.success and FATAL in errors.output
    assert "--previous" in errors.command


def test_events_of_the_workload_and_its_pods(
    config: UICIConfig, executor: KubernetesExecutor
) -> None:
    result = run(config, executor, "get_events", "puller", since="24h")
    assert result.success, result.error
    reasons = {event["reason"] for event in result.data}
    assert {"Failed", "BackOff"} <= reasons
    assert any("pull" in (event["message"] or "").lower() for event in result.data)


def test_metrics_with_requests_and_limits(config: UICIConfig, executor: KubernetesExecutor) -> None:
    result = run(config, executor, "get_metrics", "worker")
    assert result.success, result.error
    measured = [item for item in result.data if item["measured"]]
    assert measured and all(item["memory_bytes"] for item in measured)
    assert all(item["limits"].get("memory") for item in result.data)


def test_metrics_without_metrics_server_are_unsupported(tmp_path: Path) -> None:
    with KubeDouble(metrics=False) as server:
        scenarios.oom_killed_deployment(server, "worker")
        config = load_config(
            k8s_config_dir(tmp_path / "config", server.kubeconfig(tmp_path / "kubeconfig")),
            environ={},
        )
        executor = create_executor(ENV, config.environments.environments[ENV])
        assert isinstance(executor, KubernetesExecutor)
        result = run(config, executor, "get_metrics", "worker")
        executor.close()
    assert result.error is not None and result.error.kind is ErrorKind.UNSUPPORTED
    assert "metrics.k8s.io" in result.error.message


def test_describe_redacts_env_values_and_shows_the_rollout(
    config: UICIConfig, executor: KubernetesExecutor
) -> None:
    result = run(config, executor, "describe", "api")
    assert result.success, result.error
    container = result.data["containers"][0]
    assert container["image"] and container["limits"] and container["liveness"]
    assert f"DATABASE_PASSWORD={REDACTED}" in container["env"]
    assert scenarios.SECRET_VALUE not in result.output + str(result.data)
    assert result.data["revision"] is not None
    assert "DATABASE_PASSWORD" in result.output


def test_list_services_counts_replicas_and_restarts(
    config: UICIConfig, executor: KubernetesExecutor
) -> None:
    result = run(config, executor, "list_services")
    assert result.success, result.error
    by_name = {item["name"]: item for item in result.data}
    assert {"api", "worker", "puller", "web", "db", "agent"} <= set(by_name)
    assert by_name["api"]["state"] == "CrashLoopBackOff"
    assert by_name["api"]["health"] == "unhealthy" and by_name["api"]["restarts"] > 0
    assert by_name["db"]["kind"] == "StatefulSet" and by_name["agent"]["kind"] == "DaemonSet"


def test_unsupported_operations_say_why(config: UICIConfig, executor: KubernetesExecutor) -> None:
    for operation in ("exec_diagnostic", "check_endpoint"):
        spec_params: dict[str, Any] = (
            {"command": "uptime"} if operation == "exec_diagnostic" else {"port": 8080}
        )
        try:
            result = run(config, executor, operation, "api", **spec_params)
        except Exception as exc:  # the registry may refuse earlier: still with a reason
            assert "kubernetes" in str(exc).lower()
            continue
        assert result.error is not None and result.error.kind is ErrorKind.UNSUPPORTED
        assert "pods/exec" in result.error.message or "pods/proxy" in result.error.message


def test_an_unknown_target_names_what_exists(
    config: UICIConfig, executor: KubernetesExecutor
) -> None:
    result = run(config, executor, "get_status", "apx")
    assert result.error is not None and result.error.kind is ErrorKind.PERMANENT
    assert "deployment/api" in result.error.hint


def test_a_namespace_outside_the_allowed_ones_is_denied(
    config: UICIConfig, executor: KubernetesExecutor
) -> None:
    result = run(config, executor, "get_status", "kube-system/coredns")
    assert result.error is not None and result.error.kind is ErrorKind.DENIED


# --- the normalised status (infrastructure/executors/status.py) -----------------------------


def _status_items(config: UICIConfig, executor: KubernetesExecutor, target: str) -> list[Any]:
    result = run(config, executor, "get_status", target)
    assert result.success, result.error
    assert result.data
    return list(result.data)


def test_a_crash_loop_is_normalised(config: UICIConfig, executor: KubernetesExecutor) -> None:
    for item in _status_items(config, executor, "api"):
        assert item["state"] == "waiting" and item["waiting_reason"] == "CrashLoopBackOff"
        assert item["exit_code"] == 1 and item["signal"] is None and item["oom_killed"] is False
        assert item["exit_meaning"] == "the program exited with an error (code 1)"
        assert item["restart_count"] == 7 and item["ready"] is False
        assert item["up_seconds"] == 0  # not running
        assert item["healthy"] is None  # a probe, but no verdict while it does not run
        assert item["message"].startswith(
            f"back-off 5m0s restarting failed container=app pod={item['pod']}_default("
        )
        assert item["probe_output"] is None


def test_an_oom_kill_is_normalised(config: UICIConfig, executor: KubernetesExecutor) -> None:
    items = _status_items(config, executor, "worker")
    for item in items:
        assert item["state"] == "running" and item["oom_killed"] is True
        assert item["exit_code"] == 137 and item["signal"] == "SIGKILL"
        assert item["exit_meaning"] == "killed by the kernel's OOM killer (SIGKILL, code 137)"
        assert item["restart_count"] == 5 and item["ready"] is True
        assert item["healthy"] is True  # a liveness probe and no failure reported
        assert item["waiting_reason"] is None and item["probe_output"] is None
    first, second = sorted(i["up_seconds"] for i in items)  # startedAt 95 and 125 s ago
    assert 95 <= first <= 110 and 125 <= second <= 140


def test_an_image_pull_failure_is_normalised(
    config: UICIConfig, executor: KubernetesExecutor
) -> None:
    [item] = _status_items(config, executor, "puller")
    assert item["waiting_reason"] == "ImagePullBackOff" and item["exit_code"] is None
    assert item["message"].startswith(
        f'Back-off pulling image "{scenarios.REGISTRY}/puller:2.0.0-rc.1": ErrImagePull'
    )


def test_an_unschedulable_pod_says_why_from_its_condition(
    config: UICIConfig, executor: KubernetesExecutor
) -> None:
    result = run(config, executor, "get_status", "pending")
    assert result.success, result.error
    [item] = result.data
    assert item["phase"] == "Pending" and item["node"] is None
    assert item["state"] == "waiting" and item["waiting_reason"] == "Unschedulable"
    assert item["message"] == scenarios.UNSCHEDULABLE_MESSAGE
    assert item["message"].startswith("0/3 nodes are available: 3 Insufficient memory.")
    assert item["exit_code"] is None and item["exit_meaning"] is None
    assert item["restart_count"] == 0 and item["ready"] is False and item["healthy"] is None
    assert item["conditions"] == {"PodScheduled": "False"}
    assert "(Unschedulable)" in result.output and "3 Insufficient memory" in result.output
    listed = {i["name"]: i for i in run(config, executor, "list_services").data}
    assert listed["pending"]["state"] == "Unschedulable"
    assert listed["pending"]["health"] == "unhealthy"
    logs = run(config, executor, "get_logs", "pending")
    assert logs.success and "does not have a host assigned" in logs.data[0]["error"]


def test_a_missing_secret_is_a_create_container_config_error(
    config: UICIConfig, executor: KubernetesExecutor
) -> None:
    result = run(config, executor, "get_status", "configless")
    assert result.success, result.error
    assert len(result.data) == 2
    for item in result.data:
        assert item["phase"] == "Pending" and item["state"] == "waiting"
        assert item["waiting_reason"] == "CreateContainerConfigError"
        assert item["message"] == 'secret "db-credentials" not found'
        assert item["exit_code"] is None and item["restart_count"] == 0
        assert item["node"] in scenarios.NODES
    assert 'secret "db-credentials" not found' in result.output
    logs = run(config, executor, "get_logs", "configless")
    assert all("is waiting to start: CreateContainerConfigError" in i["error"] for i in logs.data)
    described = run(config, executor, "describe", "configless")
    assert "DATABASE_PASSWORD=<from secretKeyRef db-credentials>" in described.output


def test_a_failing_liveness_probe_is_read_from_the_kubelet_events(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    double.clear_requests()
    result = run(config, executor, "get_status", "flaky")
    assert result.success, result.error
    [item] = result.data
    assert item["healthy"] is False
    assert item["probe_output"] == scenarios.LIVENESS_FAILURE
    # Killed after the grace period: SIGKILL, but not the OOM killer.
    assert item["exit_code"] == 137 and item["signal"] == "SIGKILL" and not item["oom_killed"]
    assert "not by the OOM killer" in item["exit_meaning"]
    assert item["state"] == "running" and 20 <= item["up_seconds"] <= 60
    assert item["restart_count"] == 4 and item["ready"] is False
    assert f"probe: {scenarios.LIVENESS_FAILURE}" in result.output
    # One list call, narrowed to the probe events of the workload's one pod.
    [events] = [r for r in double.requests if r.path == "/api/v1/namespaces/default/events"]
    assert events.query["fieldSelector"] == (
        f"involvedObject.kind=Pod,reason=Unhealthy,involvedObject.name={item['pod']}"
    )


def test_a_failing_readiness_probe_leaves_it_healthy_but_not_ready(
    config: UICIConfig, executor: KubernetesExecutor
) -> None:
    [item] = _status_items(config, executor, "warming")
    assert item["state"] == "running" and item["restart_count"] == 0
    assert item["ready"] is False and item["healthy"] is True
    assert item["probe_output"] == scenarios.READINESS_FAILURE
    assert item["exit_code"] is None and item["waiting_reason"] is None
    assert 190 <= item["up_seconds"] <= 230


def test_old_or_foreign_probe_events_do_not_count(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    web = _status_items(config, executor, "web")
    pod = web[0]["pod"]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 7200))
    recent = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for name, involved, at in (
        ("old", {"kind": "Pod", "name": pod}, stamp),  # two hours ago
        ("other-uid", {"kind": "Pod", "name": pod, "uid": "not-this-pod"}, recent),
        ("sidecar", {"kind": "Pod", "name": pod, "fieldPath": "spec.containers{proxy}"}, recent),
    ):
        double.add({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{pod}.{name}", "namespace": "default"},
            "involvedObject": {**involved, "namespace": "default"},
            "reason": "Unhealthy", "type": "Warning", "count": 3,
            "message": "Liveness probe failed: HTTP probe failed with statuscode: 500",
            "firstTimestamp": at, "lastTimestamp": at,
        })  # fmt: skip
    item = next(i for i in _status_items(config, executor, "web") if i["pod"] == pod)
    assert item["healthy"] is True and item["probe_output"] is None
    double.add({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{pod}.now", "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": pod, "namespace": "default"},
        "reason": "Unhealthy", "type": "Warning", "count": 1,
        "message": "Startup probe failed: dial tcp 10.244.1.9:8080: connect: connection refused",
        "firstTimestamp": recent, "lastTimestamp": recent,
    })  # fmt: skip
    item = next(i for i in _status_items(config, executor, "web") if i["pod"] == pod)
    assert item["healthy"] is False and item["probe_output"].startswith("Startup probe failed")


def test_events_that_cannot_be_listed_leave_the_status(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    double.fail("GET", r"/namespaces/default/events$", 404, times=1)
    double.fail("GET", r"/namespaces/default/events$", 403, times=1)
    for _ in range(2):
        [item] = _status_items(config, executor, "flaky")
        assert item["healthy"] is True and item["probe_output"] is None  # no failure seen
        assert item["exit_code"] == 137  # the rest of the status is all there
    double.clear_failures()


def test_metrics_are_percent_of_the_limit_or_of_one_core(
    config: UICIConfig, executor: KubernetesExecutor
) -> None:
    worker = run(config, executor, "get_metrics", "worker")
    assert worker.success, worker.error
    for item in worker.data:  # 187m of 250m, 62Mi of 64Mi
        assert item["cpu_percent"] == item["cpu_percent_of_limit"] == 74.8
        assert item["memory_percent"] == item["memory_percent_of_limit"] == 96.9
    [flaky] = run(config, executor, "get_metrics", "flaky").data
    assert flaky["limits"] == {"memory": "512Mi"}  # no CPU limit: of one core
    assert flaky["cpu_percent"] == 95.0 and flaky["cpu_percent_of_limit"] is None
    assert flaky["memory_percent"] == 75.0  # 384Mi of 512Mi
    [pending] = run(config, executor, "get_metrics", "pending").data
    assert not pending["measured"]
    assert pending["cpu_percent"] is None and pending["memory_percent"] is None


# --- writes --------------------------------------------------------------------------------


def test_restart_is_exactly_one_annotation_patch_and_repeating_changes_nothing(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    before = double.get("apps/v1", "Deployment", "web")
    assert before is not None
    revision = int(before["metadata"]["annotations"][REVISION])
    recorded_at = time.time()
    intent = intent_value("0123456789abcdef01234567", recorded_at)
    double.clear_requests()
    result = run(config, executor, "restart_service", "web", runtime={"intent": intent})
    assert result.success, result.error
    writes = [r for r in double.requests if r.method != "GET"]
    assert len(writes) == 1
    [patch] = writes
    assert patch.method == "PATCH" and patch.path.endswith("/deployments/web")
    assert patch.body == {
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: intent}}}}
    }
    after = double.get("apps/v1", "Deployment", "web")
    assert after is not None and int(after["metadata"]["annotations"][REVISION]) == revision + 1
    assert executor.effect_observed("restart_service", "web", recorded_at, intent) is True
    assert executor.effect_observed("restart_service", "web", recorded_at) is True  # by time

    again = run(config, executor, "restart_service", "web", runtime={"intent": intent})
    assert again.success and again.data["already_applied"] is True
    same = double.get("apps/v1", "Deployment", "web")
    assert same is not None and int(same["metadata"]["annotations"][REVISION]) == revision + 1


def test_scale_patches_the_scale_subresource_within_bounds(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    double.clear_requests()
    result = run(config, executor, "scale_service", "db", replicas=3)
    assert result.success, result.error
    [patch] = [r for r in double.requests if r.method != "GET"]
    assert patch.path.endswith("/statefulsets/db/scale") and patch.body == {"spec": {"replicas": 3}}
    assert result.data["replicas"] == 3
    too_many = run(config, executor, "scale_service", "db", replicas=11)
    assert too_many.error is not None and too_many.error.kind is ErrorKind.DENIED
    assert "max_replicas" in too_many.error.hint


def test_rollback_returns_to_the_previous_revision_template(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    def image() -> str:
        current = double.get("apps/v1", "Deployment", "web")
        assert current is not None
        return str(current["spec"]["template"]["spec"]["containers"][0]["image"])

    replica_sets = [
        rs
        for rs in double.list_objects("apps/v1", "ReplicaSet")
        if rs["metadata"]["name"].startswith("web-")
    ]
    by_revision = {int(rs["metadata"]["annotations"][REVISION]): rs for rs in replica_sets}
    current = max(by_revision)
    previous_image = by_revision[current - 1]["spec"]["template"]["spec"]["containers"][0]["image"]
    result = run(config, executor, "rollback_service", "web")
    assert result.success, result.error
    assert result.data["to_revision"] == current - 1
    assert image() == previous_image
    missing = run(config, executor, "rollback_service", "web", revision=99)
    assert missing.error is not None and "no revision 99" in missing.error.message


# --- error classes ----------------------------------------------------------------------------


def test_403_is_denied_and_never_retried(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    double.clear_requests()
    double.fail("GET", r"/deployments/api$", 403, times=5)
    result = run(config, executor, "get_status", "api")
    assert result.error is not None and result.error.kind is ErrorKind.DENIED
    assert len([r for r in double.requests if r.path.endswith("/deployments/api")]) == 1
    double.clear_failures()


def test_429_and_500_on_reads_are_retried_honouring_retry_after(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    double.clear_requests()
    double.fail("GET", r"/deployments/api$", 429, times=1, headers={"Retry-After": "1"})
    started = time.monotonic()
    result = run(config, executor, "get_status", "api")
    assert result.success, result.error
    assert time.monotonic() - started >= 0.9  # waited as told
    double.fail("GET", r"/deployments/api$", 500, times=3)
    failed = run(config, executor, "get_status", "api")
    assert failed.error is not None and failed.error.kind is ErrorKind.RETRYABLE
    assert len([r for r in double.requests if r.path.endswith("/deployments/api")]) == 1 + 1 + 3


def test_a_write_is_not_resent_after_a_500(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    double.clear_requests()
    double.fail("PATCH", r"/deployments/web$", 500, times=2)
    result = run(
        config, executor, "restart_service", "web", runtime={"intent": "x@2026-01-01T00:00:00Z"}
    )
    assert result.error is not None and result.error.kind is ErrorKind.RETRYABLE
    assert "observe before repeating" in result.error.hint
    assert len([r for r in double.requests if r.method == "PATCH"]) == 1
    double.clear_failures()


def test_a_409_on_a_patch_rereads_and_retries_once(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    double.clear_requests()
    double.fail("PATCH", r"/deployments/web$", 409, times=1)
    result = run(config, executor, "rollback_service", "web")
    assert result.success, result.error
    assert len([r for r in double.requests if r.method == "PATCH"]) == 2
    double.fail("PATCH", r"/deployments/web$", 409, times=2)
    twice = run(config, executor, "rollback_service", "web")
    assert twice.error is not None and twice.error.kind is ErrorKind.RETRYABLE


def test_404_is_permanent(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    double.fail("GET", r"/pods/[^/]+/log$", 404, times=10)
    result = run(config, executor, "get_logs", "worker")
    double.clear_failures()
    assert result.success  # each container says what failed; the operation keeps the rest
    assert all(item["error"] and "not found" in item["error"] for item in result.data)


def test_an_unreachable_api_is_retryable(config_dir: Path, tmp_path: Path) -> None:
    dead = KubeDouble().start()
    kubeconfig = dead.kubeconfig(tmp_path / "kubeconfig")
    dead.stop()
    config = load_config(k8s_config_dir(tmp_path / "config", kubeconfig), environ={})
    executor = create_executor(ENV, config.environments.environments[ENV])
    assert isinstance(executor, KubernetesExecutor)
    result = run(config, executor, "get_status", "api")
    executor.close()
    assert result.error is not None and result.error.kind is ErrorKind.RETRYABLE
    assert "cannot reach the Kubernetes API" in result.error.message


def test_a_bad_kubeconfig_says_which_file(tmp_path: Path) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("this: is: not a kubeconfig")
    config = load_config(k8s_config_dir(tmp_path / "config", broken), environ={})
    executor = create_executor(ENV, config.environments.environments[ENV])
    result = run(config, executor, "get_status", "api")
    assert result.error is not None and result.error.kind is ErrorKind.PERMANENT
    assert str(broken) in result.error.message


# --- the CLI -----------------------------------------------------------------------------------


def test_uici_run_get_status_against_the_double(config_dir: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["--config-dir", str(config_dir), "run", "get_status", "--env", ENV, "--target", "api"],
    )
    assert result.exit_code == 0, result.output
    assert "CrashLoopBackOff" in result.output


def test_a_429_on_a_write_is_sent_again_since_the_server_did_not_act(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    double.clear_requests()
    double.fail("PATCH", r"/statefulsets/db/scale$", 429, times=1, headers={"Retry-After": "0"})
    result = run(config, executor, "scale_service", "db", replicas=2)
    assert result.success, result.error
    assert [r.status for r in double.requests if r.method == "PATCH"] == [429, 200]


def test_the_client_retries_only_connections_itself(executor: KubernetesExecutor) -> None:
    retries = executor._configuration().retries
    assert (retries.connect, retries.read, retries.status, retries.other) == (2, 0, 0, 0)


# --- remediation at most once, through the intent ----------------------------------------------


def test_a_restart_remediation_happens_once_even_across_a_crash(
    double: KubeDouble, config_dir: Path, tmp_path: Path
) -> None:
    from agent.incidents.models import AlertInfo, IncidentContext, PlanStep
    from agent.safety.gate import ExecutionGate, GateRequest
    from agent.safety.policy import Approval, SafetyPolicy

    scenarios.rolled_out_twice_deployment(double, "shop")
    config = load_config(config_dir, environ={"UICI_STORAGE_URL": f"sqlite:///{tmp_path}/u.db"})
    policy = SafetyPolicy(config, IncidentStore.from_config(config))
    store = IncidentStore.from_config(config)
    context = IncidentContext(
        incident_id="inc-k8s",
        alert=AlertInfo(labels={"alertname": "Down", "service": "shop"}, fingerprint="fp-k8s",
                        starts_at="2026-11-25T13:00:00Z"),
        environment=ENV,
        service="shop",
    )  # fmt: skip
    step = PlanStep(phase="resolution", operation="restart_service", environment=ENV,
                    target="shop", proposed_by="runbook")  # fmt: skip
    approval = Approval(
        step_key=step.key(), approved_by="sre", expires_at=policy.approval_expiry(step)
    )

    def revision() -> int:
        found = double.get("apps/v1", "Deployment", "shop")
        assert found is not None
        return int(found["metadata"]["annotations"][REVISION])

    def crash_after_call(boundary: str) -> None:
        if boundary == "after_call":
            raise SystemExit("worker killed")  # the outcome is never recorded

    before = revision()
    double.clear_requests()
    request = GateRequest(step=step, context=context, actor="sre", entry="flow", approval=approval)
    with pytest.raises(SystemExit):
        ExecutionGate(config, store, checkpoint=crash_after_call).execute(request)
    [pending] = store.writes(state="pending")
    assert revision() == before + 1
    annotation = double.get("apps/v1", "Deployment", "shop")["spec"]["template"]["metadata"][  # type: ignore[index]
        "annotations"
    ][RESTARTED_AT]
    assert annotation.startswith(pending.key + "@")

    recovered = ExecutionGate(config, store).execute(request)
    assert recovered.outcome == "recovered" and not recovered.executed
    again = ExecutionGate(config, store).execute(request)
    assert again.outcome == "already_done" and not again.executed
    assert revision() == before + 1
    assert len([r for r in double.requests if r.method == "PATCH"]) == 1


# --- found in review ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target", ["default/../kube-system", "default/..%2Fkube-system", "../kube-system", "default/"]
)
def test_a_target_cannot_leave_the_allowed_namespaces_through_the_path(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble, target: str
) -> None:
    double.clear_requests()
    try:
        result = run(config, executor, "restart_service", target)
    except CallValidationError:
        pass  # refused by the registry's target pattern already
    else:
        assert result.error is not None
        assert result.error.kind in (ErrorKind.PERMANENT, ErrorKind.DENIED)
    assert not double.requests, [r.path for r in double.requests]


def test_the_executor_itself_refuses_path_tricks(executor: KubernetesExecutor) -> None:
    # The registry's pattern lets "." and "/" through; the executor is the last guard.
    for target in ("default/../kube-system", "default/", "Default/web", "default/a..b"):
        with pytest.raises(ExecutorError, match="is not a Kubernetes name"):
            executor.resolve(target)


def test_a_failed_patch_test_422_counts_as_a_conflict(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    double.clear_requests()
    double.fail("PATCH", r"/deployments/web$", 422, times=1,
                message='the server rejected our request: testing value /metadata/generation failed')  # fmt: skip
    result = run(config, executor, "rollback_service", "web")
    double.clear_failures()
    assert result.success, result.error
    [first, second] = [r for r in double.requests if r.method == "PATCH"]
    assert first.status == 422 and second.status == 200
    assert second.body[0] == {"op": "test", "path": "/metadata/generation",
                              "value": double.get("apps/v1", "Deployment", "web")["metadata"]["generation"] - 1}  # type: ignore[index]  # fmt: skip


def test_recovery_recognises_only_its_own_restart(
    config: UICIConfig, executor: KubernetesExecutor
) -> None:
    mine = "aaaaaaaaaaaaaaaaaaaaaaaa@2026-11-25T13:10:00Z"
    assert run(config, executor, "restart_service", "web", runtime={"intent": mine}).success
    assert executor.effect_observed("restart_service", "web", 0, mine) is True
    other = "bbbbbbbbbbbbbbbbbbbbbbbb@2026-11-25T13:10:00Z"
    assert executor.effect_observed("restart_service", "web", 0, other) is False
    assert executor.effect_observed("restart_service", "no-such-workload", 0, mine) is None


def test_a_log_longer_than_the_api_limit_keeps_the_newest_lines_and_says_so(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    scenario = scenarios.rolled_out_twice_deployment(double, "chatty")
    pod = scenario.pods[0]
    double.set_log("default", pod, scenario.container,
                   "".join(f"line {i:05d} {'x' * 80}\n" for i in range(3000)))  # fmt: skip
    result = run(config, executor, "get_logs", f"default/{pod}", lines=3000, max_bytes=1024)
    assert result.success, result.error
    [item] = result.data
    assert item["error"] and "limitBytes" in item["error"]
    assert sum(len(line) + 1 for line in item["lines"]) <= 1024
    assert all(len(line) == len("line 00000 ") + 80 for line in item["lines"])  # no cut line


def test_two_clusters_are_two_environments(tmp_path: Path) -> None:
    with KubeDouble() as staging, KubeDouble() as production:
        scenarios.crash_looping_deployment(staging, "api")
        scenarios.rolled_out_twice_deployment(production, "api")
        config_dir = k8s_config_dir(tmp_path / "config", staging.kubeconfig(tmp_path / "staging"))
        path = config_dir / "environments.yml"
        document = yaml.safe_load(path.read_text())
        second = json.loads(json.dumps(document["environments"][ENV]))
        second["connection"]["kubeconfig"] = str(production.kubeconfig(tmp_path / "production"))
        second["description"] = "the production cluster"
        document["environments"]["prod-k8s"] = second
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        config = load_config(config_dir, environ={})
        states = {}
        for name in (ENV, "prod-k8s"):
            executor = create_executor(name, config.environments.environments[name])
            result = run_operation(name, config, executor, "get_status", "api")
            executor.close()
            assert result.success, result.error
            states[name] = {item["state"] for item in result.data}
        assert staging.requests and production.requests
    assert states == {ENV: {"waiting"}, "prod-k8s": {"running"}}


def test_a_paused_deployment_is_not_rolled_back(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    scenarios.rolled_out_twice_deployment(double, "frozen")
    double.patch("apps/v1", "Deployment", "frozen", {"spec": {"paused": True}})
    double.clear_requests()
    result = run(config, executor, "rollback_service", "frozen")
    assert result.error is not None and result.error.kind is ErrorKind.PERMANENT
    assert "paused" in result.error.message and "rollout resume" in result.error.hint
    assert not [r for r in double.requests if r.method == "PATCH"]


def test_events_of_another_kind_with_the_same_name_are_left_out(
    config: UICIConfig, executor: KubernetesExecutor, double: KubeDouble
) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    double.add({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "puller.svc-event", "namespace": "default"},
        "involvedObject": {"kind": "Service", "name": "puller", "namespace": "default"},
        "reason": "SyncLoadBalancerFailed", "message": "a Service event", "type": "Warning",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    })  # fmt: skip
    result = run(config, executor, "get_events", "puller", since="1h")
    assert result.success, result.error
    assert "SyncLoadBalancerFailed" not in {e["reason"] for e in result.data}
    assert {e["object"].split("/")[0] for e in result.data} <= {"pod", "replicaset", "deployment"}
