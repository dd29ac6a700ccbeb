"""The Kubernetes API double, exercised the way the executor will use it: through the official
`kubernetes` client and a real kubectl, over real HTTP(S). If these pass, a test that runs
against the double is talking to something that behaves like an API server, not to a mock that
agrees with whatever the code under test happens to send."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.k8s_double import REVISION, KubeDouble
from tests.k8s_scenarios import (
    FATAL_LINE,
    SECRET_VALUE,
    Scenario,
    crash_looping_deployment,
    daemonset,
    healthy_statefulset,
    image_pull_failure_deployment,
    oom_killed_deployment,
    rolled_out_twice_deployment,
)

KUBECTL = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "kubectl"
NS = "default"


@pytest.fixture(scope="module")
def double() -> Iterator[KubeDouble]:
    with KubeDouble() as kube:
        yield kube


@pytest.fixture(scope="module")
def scenarios(double: KubeDouble) -> dict[str, Scenario]:
    return {
        "crash": crash_looping_deployment(double, "checkout"),
        "oom": oom_killed_deployment(double, "reports"),
        "pull": image_pull_failure_deployment(double, "payments"),
        "rolled": rolled_out_twice_deployment(double, "catalog"),
        "sts": healthy_statefulset(double, "orders-db"),
        "ds": daemonset(double, "node-exporter"),
    }


@pytest.fixture(scope="module")
def kubeconfig(double: KubeDouble, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return double.kubeconfig(tmp_path_factory.mktemp("kube") / "config")


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture(scope="module")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="module")
def apps(api: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api)


@pytest.fixture(scope="module")
def kubectl(
    kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:  # a function: kubectl(*args) -> CompletedProcess
    cache = tmp_path_factory.mktemp("kube-cache")

    def run(*args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == expect, f"kubectl {' '.join(args)}: {result.stderr}"
        return result

    return run


def _status(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def _replicasets(double: KubeDouble, name: str) -> dict[str, int]:
    """ReplicaSet name -> revision, for one deployment."""
    return {
        rs["metadata"]["name"]: int(rs["metadata"]["annotations"][REVISION])
        for rs in double.list_objects("apps/v1", "ReplicaSet", NS, f"app={name}")
    }


# --- the official client -----------------------------------------------------------------------


def test_list_pods_by_label_selector(
    core: client.CoreV1Api, scenarios: dict[str, Scenario]
) -> None:
    pods = core.list_namespaced_pod(NS, label_selector="app=checkout")
    assert sorted(p.metadata.name for p in pods.items) == sorted(scenarios["crash"].pods)
    state = pods.items[0].status.container_statuses[0]
    assert state.state.waiting.reason == "CrashLoopBackOff"
    assert state.last_state.terminated.reason == "Error"
    assert state.last_state.terminated.exit_code == 1
    assert state.restart_count == 7

    set_based = core.list_namespaced_pod(NS, label_selector="app in (checkout,reports),!missing")
    assert len(set_based.items) == 4
    excluded = core.list_namespaced_pod(
        NS, label_selector="app.kubernetes.io/part-of==shop,app!=checkout"
    )
    assert {p.metadata.labels["app"] for p in excluded.items} == {"reports", "payments", "catalog"}
    assert len(core.list_pod_for_all_namespaces(label_selector="app notin (checkout)").items) >= 9
    assert len(core.list_namespaced_pod(NS, label_selector="app=checkout", limit=1).items) == 1
    with pytest.raises(ApiException) as bad:
        core.list_namespaced_pod(NS, label_selector="app in (a")
    assert bad.value.status == 400


def test_read_deployment(apps: client.AppsV1Api, scenarios: dict[str, Scenario]) -> None:
    deployment = apps.read_namespaced_deployment("checkout", NS)
    assert deployment.spec.replicas == 2
    assert deployment.metadata.annotations[REVISION] == "1"
    assert deployment.spec.strategy.type == "RollingUpdate"  # defaulted like the API server
    container = deployment.spec.template.spec.containers[0]
    assert container.resources.limits == {"cpu": "500m", "memory": "256Mi"}
    assert {e.name: e.value for e in container.env}["DATABASE_PASSWORD"] == SECRET_VALUE
    assert deployment.status.replicas == 2 and not deployment.status.ready_replicas
    assert deployment.status.unavailable_replicas == 2
    conditions = {c.type: c for c in deployment.status.conditions}
    assert conditions["Available"].reason == "MinimumReplicasUnavailable"
    assert conditions["Progressing"].reason == "ProgressDeadlineExceeded"  # 23 minutes > 600 s

    healthy = apps.read_namespaced_deployment("catalog", NS)
    assert healthy.status.ready_replicas == healthy.status.available_replicas == 2
    sts = apps.read_namespaced_stateful_set("orders-db", NS)
    assert sts.status.ready_replicas == 2
    ds = apps.read_namespaced_daemon_set("node-exporter", NS)
    assert ds.status.number_ready == ds.status.desired_number_scheduled == 3

    with pytest.raises(ApiException) as missing:
        apps.read_namespaced_deployment("nope", NS)
    assert missing.value.status == 404
    assert _status(missing.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'deployments.apps "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "group": "apps", "kind": "deployments"},
        "code": 404,
    }


def test_previous_logs_with_tail_and_limit(
    core: client.CoreV1Api, scenarios: dict[str, Scenario]
) -> None:
    pod = scenarios["crash"].pods[0]
    text = core.read_namespaced_pod_log(pod, NS, container="app", previous=True, tail_lines=1)
    assert text == FATAL_LINE + "\n"
    limited = core.read_namespaced_pod_log(
        pod, NS, container="app", previous=True, tail_lines=1, limit_bytes=5
    )
    assert limited == "FATAL"
    whole = core.read_namespaced_pod_log(pod, NS, previous=True)
    assert whole.count("\n") == 3 and FATAL_LINE in whole
    current = core.read_namespaced_pod_log(pod, NS)
    assert "starting checkout" in current and FATAL_LINE not in current
    stamped = core.read_namespaced_pod_log(pod, NS, previous=True, tail_lines=1, timestamps=True)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z " + re.escape(FATAL_LINE) + "\n", stamped
    )
    assert core.read_namespaced_pod_log(pod, NS, previous=True, since_seconds=1) == ""


def test_log_errors_match_the_api(
    double: KubeDouble, core: client.CoreV1Api, scenarios: dict[str, Scenario]
) -> None:
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod_log("ghost", NS)
    assert (
        missing.value.status == 404
        and _status(missing.value)["message"] == 'pods "ghost" not found'
    )

    pod = scenarios["rolled"].pods[0]
    with pytest.raises(ApiException) as no_previous:
        core.read_namespaced_pod_log(pod, NS, previous=True)
    assert no_previous.value.status == 400
    assert _status(no_previous.value)["message"] == (
        f'previous terminated container "app" in pod "{pod}" not found'
    )

    with pytest.raises(ApiException) as pulling:
        core.read_namespaced_pod_log(scenarios["pull"].pods[0], NS)
    assert (
        "is waiting to start: trying and failing to pull image" in _status(pulling.value)["message"]
    )

    double.add(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "two-containers", "namespace": NS},
            "spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]},
        }
    )
    with pytest.raises(ApiException) as ambiguous:
        core.read_namespaced_pod_log("two-containers", NS)
    assert ambiguous.value.status == 400
    assert _status(ambiguous.value)["message"] == (
        "a container name must be specified for pod two-containers, choose one of: [a b]"
    )
    double.set_log(NS, "two-containers", "b", "one\ntwo\nthree\n")
    assert (
        core.read_namespaced_pod_log("two-containers", NS, container="b", tail_lines=2)
        == "two\nthree\n"
    )


def test_restart_patch_creates_a_replicaset(double: KubeDouble, apps: client.AppsV1Api) -> None:
    rolled_out_twice_deployment(double, "restart-me")
    before = _replicasets(double, "restart-me")
    assert sorted(before.values()) == [1, 2, 3]
    generation = apps.read_namespaced_deployment("restart-me", NS).metadata.generation

    body = {
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}
                }
            }
        }
    }
    patched = apps.patch_namespaced_deployment("restart-me", NS, body)
    assert patched.metadata.annotations[REVISION] == "4"
    assert patched.metadata.generation == generation + 1
    assert patched.status.observed_generation == generation + 1
    assert double.requests[-1].content_type == "application/strategic-merge-patch+json"

    after = _replicasets(double, "restart-me")
    (new,) = set(after) - set(before)
    assert after[new] == 4
    rs = double.get("apps/v1", "ReplicaSet", new)
    assert rs is not None
    assert rs["spec"]["replicas"] == 2
    assert (
        rs["spec"]["template"]["metadata"]["annotations"]
        == body["spec"]["template"]["metadata"]["annotations"]
    )
    assert (
        rs["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] == new.rsplit("-", 1)[1]
    )
    owner = rs["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Deployment", "restart-me", True)
    for old in before:
        old_rs = double.get("apps/v1", "ReplicaSet", old)
        assert old_rs is not None and old_rs["spec"]["replicas"] == 0
    # Restarted pods have not been created (the double runs no kubelet): the rollout is pending.
    assert patched.status.updated_replicas is None

    # Patching the same template again is no rollout.
    again = apps.patch_namespaced_deployment("restart-me", NS, body)
    assert (
        again.metadata.annotations[REVISION] == "4" and len(_replicasets(double, "restart-me")) == 4
    )


def test_scale_subresource_changes_replicas_only(
    double: KubeDouble, apps: client.AppsV1Api
) -> None:
    rolled_out_twice_deployment(double, "scale-me")
    before = _replicasets(double, "scale-me")
    scale = apps.patch_namespaced_deployment_scale("scale-me", NS, {"spec": {"replicas": 5}})
    assert scale.spec.replicas == 5
    assert scale.status.selector == "app=scale-me"
    assert _replicasets(double, "scale-me") == before
    deployment = apps.read_namespaced_deployment("scale-me", NS)
    assert deployment.spec.replicas == 5
    assert deployment.metadata.annotations[REVISION] == "3"
    current = max(before, key=lambda name: before[name])
    rs = double.get("apps/v1", "ReplicaSet", current)
    assert rs is not None and rs["spec"]["replicas"] == 5
    read = apps.read_namespaced_deployment_scale("scale-me", NS)
    assert read.spec.replicas == 5 and read.status.replicas == 2  # two pods exist
    apps.patch_namespaced_deployment("scale-me", NS, {"spec": {"replicas": 1}})
    assert _replicasets(double, "scale-me") == before
    with pytest.raises(ApiException) as negative:
        apps.patch_namespaced_deployment_scale("scale-me", NS, {"spec": {"replicas": -1}})
    assert negative.value.status == 422


def test_stale_resource_version_is_a_conflict(double: KubeDouble, apps: client.AppsV1Api) -> None:
    current = apps.read_namespaced_deployment("catalog", NS).metadata.resource_version
    with pytest.raises(ApiException) as stale:
        apps.patch_namespaced_deployment(
            "catalog",
            NS,
            {"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 3}},
            _content_type="application/merge-patch+json",
        )
    assert stale.value.status == 409
    status = _status(stale.value)
    assert status["reason"] == "Conflict"
    assert status["message"] == (
        'Operation cannot be fulfilled on deployments.apps "catalog": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
    assert apps.read_namespaced_deployment("catalog", NS).metadata.resource_version == current
    stale_object = apps.read_namespaced_deployment("catalog", NS)
    stale_object.metadata.resource_version = "1"
    with pytest.raises(ApiException) as replaced:
        apps.replace_namespaced_deployment("catalog", NS, stale_object)
    assert replaced.value.status == 409

    fresh = apps.patch_namespaced_deployment(
        "catalog",
        NS,
        {"metadata": {"resourceVersion": current, "labels": {"team": "web"}}},
        _content_type="application/merge-patch+json",
    )
    assert int(fresh.metadata.resource_version) > int(current)
    assert fresh.metadata.labels["team"] == "web"
    removed = apps.patch_namespaced_deployment(
        "catalog",
        NS,
        {"metadata": {"labels": {"team": None}}},
        _content_type="application/merge-patch+json",
    )
    assert "team" not in removed.metadata.labels


def test_json_patch_and_content_types(
    apps: client.AppsV1Api, scenarios: dict[str, Scenario]
) -> None:
    ops = [
        {"op": "test", "path": "/spec/replicas", "value": 2},
        {"op": "add", "path": "/metadata/labels/owner", "value": "payments-team"},
    ]
    patched = apps.patch_namespaced_deployment("reports", NS, ops)
    assert patched.metadata.labels["owner"] == "payments-team"
    with pytest.raises(ApiException) as failed:
        apps.patch_namespaced_deployment(
            "reports", NS, [{"op": "test", "path": "/spec/replicas", "value": 9}]
        )
    assert failed.value.status == 422 and _status(failed.value)["reason"] == "Invalid"
    with pytest.raises(ApiException) as unsupported:
        apps.patch_namespaced_deployment(
            "reports", NS, {"spec": {"replicas": 1}}, _content_type="application/apply-patch+yaml"
        )
    assert unsupported.value.status == 415
    assert _status(unsupported.value)["reason"] == "UnsupportedMediaType"


def test_strategic_merge_merges_containers_by_name(
    double: KubeDouble, apps: client.AppsV1Api
) -> None:
    rolled_out_twice_deployment(double, "sidecar")
    body = {
        "spec": {"template": {"spec": {"containers": [{"name": "proxy", "image": "envoy:1.31"}]}}}
    }
    merged = apps.patch_namespaced_deployment("sidecar", NS, body)
    assert [c.name for c in merged.spec.template.spec.containers] == ["app", "proxy"]
    replaced = apps.patch_namespaced_deployment(
        "sidecar", NS, body, _content_type="application/merge-patch+json"
    )
    assert [c.name for c in replaced.spec.template.spec.containers] == ["proxy"]


@pytest.mark.parametrize(
    ("status", "headers", "reason"),
    [
        (403, None, "Forbidden"),
        (404, None, "NotFound"),
        (429, {"Retry-After": "1"}, "TooManyRequests"),
        (500, None, "InternalError"),
    ],
)
def test_scripted_failures(
    double: KubeDouble,
    apps: client.AppsV1Api,
    scenarios: dict[str, Scenario],
    status: int,
    headers: dict[str, str] | None,
    reason: str,
) -> None:
    double.fail("PATCH", r"/deployments/checkout$", status, headers=headers)
    with pytest.raises(ApiException) as failure:
        apps.patch_namespaced_deployment("checkout", NS, {"metadata": {"labels": {"x": "y"}}})
    assert failure.value.status == status
    body = _status(failure.value)
    assert (body["kind"], body["reason"], body["code"]) == ("Status", reason, status)
    if status == 403:
        assert body["message"].startswith('deployments.apps "checkout" is forbidden: User ')
        assert 'cannot patch resource "deployments" in API group "apps"' in body["message"]
    if headers:
        assert failure.value.headers["Retry-After"] == "1"
        assert body["details"]["retryAfterSeconds"] == 1
    assert double.requests[-1].status == status
    # Used up: the next request goes through (and a GET never matched the PATCH rule).
    apps.read_namespaced_deployment("checkout", NS)
    apps.patch_namespaced_deployment("checkout", NS, {"metadata": {"labels": {"x": None}}})


def test_missing_or_wrong_token_is_401(double: KubeDouble) -> None:
    for token in (None, "not-the-token"):
        configuration = client.Configuration(host=double.url)
        if token:
            configuration.api_key = {"BearerToken": token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        with client.ApiClient(configuration) as anonymous, pytest.raises(ApiException) as denied:
            client.CoreV1Api(anonymous).list_namespaced_pod(NS)
        assert denied.value.status == 401
        assert _status(denied.value)["reason"] == "Unauthorized"
    # The token, over plain HTTP (double.url), is enough for the Python client.
    configuration = client.Configuration(host=double.url)
    configuration.api_key = {"BearerToken": double.token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    with client.ApiClient(configuration) as plain:
        assert client.CoreV1Api(plain).read_namespace("kube-system").status.phase == "Active"


def test_events_by_field_selector(core: client.CoreV1Api, scenarios: dict[str, Scenario]) -> None:
    pod = scenarios["crash"].pods[0]
    events = core.list_namespaced_event(NS, field_selector=f"involvedObject.name={pod}")
    reasons = {e.reason: e for e in events.items}
    assert set(reasons) == {"Scheduled", "Pulled", "Created", "Started", "BackOff"}
    backoff = reasons["BackOff"]
    assert backoff.type == "Warning" and backoff.count == 97
    assert backoff.message.startswith("Back-off restarting failed container app in pod")
    assert backoff.involved_object.kind == "Pod" and backoff.source.component == "kubelet"
    assert backoff.last_timestamp > backoff.first_timestamp

    pulls = core.list_namespaced_event(
        NS,
        field_selector=f"involvedObject.name={scenarios['pull'].pods[0]},reason=Failed,type=Warning",
    )
    assert any(
        ": not found" in e.message and "Failed to pull image" in e.message for e in pulls.items
    )
    scaling = core.list_namespaced_event(
        NS, field_selector="involvedObject.kind=Deployment,involvedObject.name=checkout"
    )
    assert [e.reason for e in scaling.items] == ["ScalingReplicaSet"]
    with pytest.raises(ApiException) as unknown:
        core.list_namespaced_event(NS, field_selector="spec.bogus=1")
    assert unknown.value.status == 400
    assert _status(unknown.value)["message"] == "field label not supported: spec.bogus"
    running = core.list_namespaced_pod(NS, field_selector="status.phase=Pending")
    assert [p.metadata.name for p in running.items] == scenarios["pull"].pods


def test_metrics_on_and_off(
    api: client.ApiClient, scenarios: dict[str, Scenario], tmp_path: Path
) -> None:
    metrics = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "metrics.k8s.io", "v1beta1", NS, "pods", label_selector="app=reports"
    )
    assert metrics["kind"] == "PodMetricsList"
    assert {m["containers"][0]["usage"]["memory"] for m in metrics["items"]} == {"62Mi"}

    with KubeDouble(metrics=False) as bare:
        crash_looping_deployment(bare, "checkout")
        with config.new_client_from_config(
            config_file=str(bare.kubeconfig(tmp_path / "kc"))
        ) as other:
            groups = client.ApisApi(other).get_api_versions()
            assert "metrics.k8s.io" not in {g.name for g in groups.groups}
            assert "apps" in {g.name for g in groups.groups}
            with pytest.raises(ApiException) as absent:
                client.CustomObjectsApi(other).list_namespaced_custom_object(
                    "metrics.k8s.io", "v1beta1", NS, "pods"
                )
            assert absent.value.status == 404


def test_requests_are_recorded(
    double: KubeDouble, apps: client.AppsV1Api, scenarios: dict[str, Scenario]
) -> None:
    double.clear_requests()
    apps.list_namespaced_deployment(NS, label_selector="app=checkout", limit=10)
    apps.patch_namespaced_deployment("reports", NS, {"metadata": {"annotations": {"a": "b"}}})
    listed, patched = double.requests
    assert (listed.method, listed.path, listed.status) == (
        "GET",
        "/apis/apps/v1/namespaces/default/deployments",
        200,
    )
    assert listed.query == {"labelSelector": "app=checkout", "limit": "10"} and listed.body is None
    assert (patched.method, patched.status) == ("PATCH", 200)
    assert patched.body == {"metadata": {"annotations": {"a": "b"}}}
    assert patched.content_type == "application/strategic-merge-patch+json"


def test_watch_sees_changes(
    double: KubeDouble, apps: client.AppsV1Api, scenarios: dict[str, Scenario]
) -> None:
    version = apps.list_namespaced_deployment(NS).metadata.resource_version
    seen: list[tuple[str, str]] = []

    def follow() -> None:
        for event in watch.Watch().stream(
            apps.list_namespaced_deployment,
            NS,
            field_selector="metadata.name=reports",
            resource_version=version,
            timeout_seconds=5,
        ):
            seen.append((event["type"], event["object"].metadata.labels.get("watched", "")))
            if seen[-1] == ("MODIFIED", "yes"):
                return

    thread = threading.Thread(target=follow)
    thread.start()
    time.sleep(0.2)
    apps.patch_namespaced_deployment("reports", NS, {"metadata": {"labels": {"watched": "yes"}}})
    thread.join(timeout=10)
    assert ("MODIFIED", "yes") in seen


def test_raw_http_shapes(double: KubeDouble, scenarios: dict[str, Scenario]) -> None:
    headers = {"Authorization": f"Bearer {double.token}"}
    with httpx.Client(base_url=double.url, headers=headers) as http:
        listed = http.get(
            "/api/v1/namespaces/default/pods",
            params={"labelSelector": "app=checkout", "limit": "1"},
        ).json()
        assert (listed["kind"], listed["apiVersion"]) == ("PodList", "v1")
        assert int(listed["metadata"]["resourceVersion"]) > 0
        assert listed["metadata"]["remainingItemCount"] == 1
        assert "kind" not in listed["items"][0]  # list items carry no kind, as on the API server
        rest = http.get(
            "/api/v1/namespaces/default/pods",
            params={"labelSelector": "app=checkout", "continue": listed["metadata"]["continue"]},
        ).json()
        assert [p["metadata"]["name"] for p in listed["items"] + rest["items"]] == sorted(
            scenarios["crash"].pods
        )

        table = http.get(
            "/apis/apps/v1/namespaces/default/deployments/checkout",
            headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
        ).json()
        assert table["kind"] == "Table"
        assert [c["name"] for c in table["columnDefinitions"]][:5] == [
            "Name",
            "Ready",
            "Up-to-date",
            "Available",
            "Age",
        ]
        assert table["rows"][0]["cells"][:4] == ["checkout", "0/2", 2, 0]
        assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"

        missing = http.get("/apis/example.com/v1/widgets")
        assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"
        assert http.get("/version").json()["gitVersion"].startswith("v1.")
        groups = {g["name"] for g in http.get("/apis").json()["groups"]}
        assert {"apps", "metrics.k8s.io", "rbac.authorization.k8s.io"} <= groups
        logs = http.get(
            f"/api/v1/namespaces/default/pods/{scenarios['crash'].pods[0]}/log",
            params={"previous": "true"},
        )
        assert logs.headers["content-type"] == "text/plain; charset=utf-8"

    stored = double.get("v1", "Pod", scenarios["crash"].pods[0])
    assert stored is not None
    meta = stored["metadata"]
    assert (
        meta["uid"]
        and meta["resourceVersion"].isdigit()
        and meta["creationTimestamp"].endswith("Z")
    )
    assert meta["generation"] == 1


# --- kubectl -----------------------------------------------------------------------------------


def test_kubectl_get_pods_wide(kubectl: Any, scenarios: dict[str, Scenario]) -> None:
    out = kubectl(
        "get", "pods", "--namespace", NS, "--selector", "app=checkout", "--output", "wide"
    ).stdout
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert "NODE" in lines[0] and "IP" in lines[0]
    assert len(lines) == 3
    for pod, line in zip(sorted(scenarios["crash"].pods), lines[1:], strict=True):
        assert line.startswith(pod)
        assert re.search(r"0/1\s+CrashLoopBackOff\s+7 \(\S+ ago\)\s+23m", line), line
        assert "worker-" in line


def test_kubectl_get_workloads_wide(kubectl: Any, scenarios: dict[str, Scenario]) -> None:
    out = kubectl(
        "get", "deployments,statefulsets,daemonsets", "--namespace", NS, "--output", "wide"
    ).stdout
    rows = {
        line.split()[0]: line for line in out.splitlines() if line and not line.startswith("NAME")
    }
    assert re.search(
        r"0/2\s+2\s+0\s+23m\s+app\s+registry.example.com/shop/checkout:1.8.3\s+app=checkout",
        rows["deployment.apps/checkout"],
    )
    assert re.search(r"2/2\s+2\s+2\s+6d", rows["deployment.apps/catalog"])
    assert re.search(
        r"2/2\s+20d\s+postgres\s+docker.io/library/postgres:16.4",
        rows["statefulset.apps/orders-db"],
    )
    assert re.search(
        r"3\s+3\s+3\s+3\s+3\s+kubernetes.io/os=linux", rows["daemonset.apps/node-exporter"]
    )


def test_kubectl_previous_logs_of_a_deployment(
    double: KubeDouble, kubectl: Any, scenarios: dict[str, Scenario]
) -> None:
    double.clear_requests()
    result = kubectl(
        "logs", "--namespace", NS, "deployment/checkout", "--all-containers", "--tail=5",
        "--limit-bytes=1000", "--previous",
    )  # fmt: skip
    assert result.stdout.splitlines()[-1] == FATAL_LINE
    assert "starting checkout" in result.stdout
    log_requests = [r for r in double.requests if r.path.endswith("/log")]
    assert len(log_requests) == 1
    assert log_requests[0].query == {
        "container": "app",
        "previous": "true",
        "tailLines": "5",
        "limitBytes": "1000",
    }


def test_kubectl_events_for_a_pod(kubectl: Any, scenarios: dict[str, Scenario]) -> None:
    pod = scenarios["crash"].pods[0]
    out = kubectl(
        "get", "events", "--namespace", NS, "--field-selector", f"involvedObject.name={pod}"
    ).stdout
    assert out.splitlines()[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    backoff = next(line for line in out.splitlines() if "BackOff" in line)
    assert "Warning" in backoff and f"pod/{pod}" in backoff
    assert "Back-off restarting failed container app" in backoff
    assert len(out.splitlines()) == 6


def test_kubectl_describe_deployment(kubectl: Any, scenarios: dict[str, Scenario]) -> None:
    out = kubectl("describe", "deployment", "checkout", "--namespace", NS).stdout
    assert re.search(
        r"Replicas:\s+2 desired \| 2 updated \| 2 total \| 0 available \| 2 unavailable", out
    )
    assert re.search(r"StrategyType:\s+RollingUpdate", out)
    assert re.search(r"Available\s+False\s+MinimumReplicasUnavailable", out)
    assert re.search(r"Progressing\s+False\s+ProgressDeadlineExceeded", out)
    assert re.search(
        rf"NewReplicaSet:\s+{scenarios['crash'].replicasets[0]} \(2/2 replicas created\)", out
    )
    assert re.search(r"Image:\s+registry.example.com/shop/checkout:1.8.3", out)
    assert re.search(r"DATABASE_PASSWORD:\s+\S+", out)  # kubectl shows env values: mind secrets
    assert re.search(
        r"ScalingReplicaSet\s+23m\s+deployment-controller\s+Scaled up replica set checkout-\w+ from 0 to 2",
        out,
    )


def test_kubectl_top_pods(kubectl: Any, scenarios: dict[str, Scenario]) -> None:
    out = kubectl("top", "pods", "--namespace", NS, "--selector", "app=checkout").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "CPU(cores)", "MEMORY(bytes)"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(scenarios["crash"].pods)
    assert all(line.split()[1:] == ["1m", "12Mi"] for line in lines[1:])


def test_kubectl_rollout_restart_is_one_patch(double: KubeDouble, kubectl: Any) -> None:
    rolled_out_twice_deployment(double, "kubectl-restart")
    double.clear_requests()
    assert kubectl(
        "rollout", "restart", "deployment/kubectl-restart", "--namespace", NS
    ).stdout.strip() == ("deployment.apps/kubectl-restart restarted")
    writes = [r for r in double.requests if r.method != "GET"]
    assert len(writes) == 1
    (patch,) = writes
    assert patch.method == "PATCH" and patch.status == 200
    assert patch.path == "/apis/apps/v1/namespaces/default/deployments/kubectl-restart"
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert (
        "kubectl.kubernetes.io/restartedAt"
        in patch.body["spec"]["template"]["metadata"]["annotations"]
    )
    assert sorted(_replicasets(double, "kubectl-restart").values()) == [1, 2, 3, 4]


def test_kubectl_rollout_undo_goes_back_a_revision(double: KubeDouble, kubectl: Any) -> None:
    scenario = rolled_out_twice_deployment(double, "kubectl-undo")
    revision_2 = scenario.replicasets[1]
    out = kubectl("rollout", "undo", "deployment/kubectl-undo", "--namespace", NS).stdout
    assert out.strip() == "deployment.apps/kubectl-undo rolled back"
    deployment = double.get("apps/v1", "Deployment", "kubectl-undo")
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.1.0")
    assert deployment["metadata"]["annotations"][REVISION] == "4"
    revisions = _replicasets(double, "kubectl-undo")
    assert revisions[revision_2] == 4 and len(revisions) == 3  # reused, as Kubernetes does
    rs = double.get("apps/v1", "ReplicaSet", revision_2)
    assert rs is not None and rs["spec"]["replicas"] == 2
    assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "2"


MANIFEST = """\
apiVersion: v1
kind: ServiceAccount
metadata: {name: shop-api}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: shop-api-config}
data: {LOG_LEVEL: info}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: shop-api-reader}
rules:
- apiGroups: [""]
  resources: [pods, pods/log]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: shop-api-reader}
subjects: [{kind: ServiceAccount, name: shop-api}]
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: shop-api-reader}
---
apiVersion: v1
kind: Service
metadata: {name: shop-api}
spec:
  selector: {app: shop-api}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: catalog}
spec:
  replicas: 3
  selector: {matchLabels: {app: catalog}}
  template:
    metadata: {labels: {app: catalog}}
    spec:
      serviceAccountName: shop-api
      containers: [{name: app, image: "registry.example.com/shop/catalog:1.3.0"}]
"""


def test_kubectl_apply_dry_run_client(
    double: KubeDouble, kubectl: Any, scenarios: dict[str, Scenario], tmp_path: Path
) -> None:
    manifest = tmp_path / "shop.yaml"
    manifest.write_text(MANIFEST)
    double.clear_requests()
    out = kubectl("apply", "--dry-run=client", "-f", str(manifest)).stdout
    assert out.splitlines() == [
        "serviceaccount/shop-api created (dry run)",
        "configmap/shop-api-config created (dry run)",
        "role.rbac.authorization.k8s.io/shop-api-reader created (dry run)",
        "rolebinding.rbac.authorization.k8s.io/shop-api-reader created (dry run)",
        "service/shop-api created (dry run)",
        "deployment.apps/catalog configured (dry run)",  # it exists: kubectl computed a patch
    ]
    assert [r for r in double.requests if r.method != "GET"] == []
    assert double.get("v1", "ServiceAccount", "shop-api") is None


def test_kubectl_rollout_status(kubectl: Any, scenarios: dict[str, Scenario]) -> None:
    healthy = kubectl("rollout", "status", "deployment/reports", "--namespace", NS, "--timeout=10s")
    assert healthy.stdout.strip() == 'deployment "reports" successfully rolled out'
    stuck = kubectl(
        "rollout", "status", "deployment/checkout", "--namespace", NS, "--timeout=10s", expect=1
    )
    assert 'deployment "checkout" exceeded its progress deadline' in stuck.stderr
