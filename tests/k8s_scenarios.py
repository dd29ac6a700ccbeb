"""Broken and healthy workloads for the Kubernetes API double, shaped like real clusters' objects.

Each function takes a `KubeDouble` and a name, adds the objects a cluster would hold in that
situation (Deployment through the double's own controller, so ReplicaSets and revisions are
real; pods with full container statuses; kubelet events; previous and current logs; PodMetrics
when the double serves metrics) and returns the names a test needs. The field layout follows
`kubectl get -o yaml` from real clusters (kubelet/containerd), so code that works against these
objects is exercising the same shapes it will meet in production.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from agent.evaluation.cloud_setup import (
    KubernetesContainer,
    KubernetesEvent,
    KubernetesNeighbour,
    KubernetesSetup,
)
from tests.k8s_double import REVISION, KubeDouble, format_time, now

Obj = dict[str, Any]

# The line UICI's runbook rules match for a missing-configuration crash loop.
FATAL_LINE = "FATAL: required environment variable DATABASE_URL is not set"
# A secret-looking value in a Deployment's env: it must never reach a prompt, log or report.
SECRET_VALUE = "pg-Sup3rS3cret-7f3a9c"
NODES = ("worker-1", "worker-2", "worker-3")
REGISTRY = "registry.example.com/shop"


@dataclass
class Scenario:
    """The names of what a scenario added."""

    kind: str
    name: str
    namespace: str
    container: str
    image: str
    pods: list[str] = field(default_factory=list)
    replicasets: list[str] = field(default_factory=list)
    service: str | None = None
    events: list[str] = field(default_factory=list)


# --- shared shapes ---------------------------------------------------------------------------


def _ago(seconds: float) -> str:
    return format_time(now() - timedelta(seconds=seconds))


def _hex(seed: str, length: int = 64) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:length]


def _suffix(seed: str, length: int = 5) -> str:
    """Like the random suffix Kubernetes appends to generated names (no vowels), but stable."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(
        alphabet[b % len(alphabet)] for b in hashlib.sha256(seed.encode()).digest()[:length]
    )


def _pod_ip(seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return f"10.244.{digest[0] % 3 + 1}.{digest[1] % 250 + 2}"


def _node_ip(node: str) -> str:
    return f"10.0.1.{11 + NODES.index(node)}" if node in NODES else "10.0.1.10"


def _container(
    name: str,
    image: str,
    *,
    env: list[Obj] | None = None,
    requests: Obj | None = None,
    limits: Obj | None = None,
    port: int | None = 8080,
    probes: bool = True,
    liveness: bool | None = None,
    readiness: bool | None = None,
) -> Obj:
    """A pod template's container; `probes` gives it both HTTP probes (`liveness` and
    `readiness` choose them one by one)."""
    container: Obj = {"name": name, "image": image}
    if port is not None:
        container["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    if env:
        container["env"] = env
    resources: Obj = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    container["resources"] = resources
    if port is None:
        return container
    if probes if liveness is None else liveness:
        container["livenessProbe"] = {
            "httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
            "initialDelaySeconds": 10,
            "timeoutSeconds": 2,
            "periodSeconds": 10,
            "successThreshold": 1,
            "failureThreshold": 3,
        }
    if probes if readiness is None else readiness:
        container["readinessProbe"] = {
            "httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"},
            "timeoutSeconds": 1,
            "periodSeconds": 5,
            "successThreshold": 1,
            "failureThreshold": 3,
        }
    return container


def _deployment(
    name: str,
    namespace: str,
    container: Obj | list[Obj],
    replicas: int,
    created_seconds_ago: float,
) -> Obj:
    labels = {"app": name, "app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "shop"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels),
            "creationTimestamp": _ago(created_seconds_ago),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": container if isinstance(container, list) else [container]},
            },
        },
    }


def _current_replicaset(double: KubeDouble, deployment: Obj) -> Obj:
    meta = deployment["metadata"]
    revision = meta["annotations"][REVISION]
    for rs in double.list_objects(
        "apps/v1", "ReplicaSet", meta["namespace"], f"app={meta['name']}"
    ):
        if rs["metadata"]["annotations"].get(REVISION) == revision:
            return rs
    raise AssertionError(f"no current ReplicaSet for {meta['name']}")


def _kube_api_access(seed: str) -> tuple[Obj, Obj]:
    """The projected service-account volume every pod gets, and its mount."""
    name = f"kube-api-access-{_suffix(seed)}"
    volume = {
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }
                        ]
                    }
                },
            ],
        },
    }
    mount = {
        "name": name,
        "readOnly": True,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
    }
    return volume, mount


def _qos(containers: list[Obj]) -> str:
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    if all(r.get("limits") and r.get("requests", r["limits"]) == r["limits"] for r in resources):
        return "Guaranteed"
    return "Burstable"


def _condition(kind: str, status: bool, since: float, reason: str = "", message: str = "") -> Obj:
    condition: Obj = {
        "type": kind,
        "status": "True" if status else "False",
        "lastProbeTime": None,
        "lastTransitionTime": _ago(since),
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _pod(
    owner: Obj,
    owner_kind: str,
    name: str,
    node: str,
    template: Obj,
    labels: dict[str, str],
    container_statuses: list[Obj],
    created_seconds_ago: float,
    *,
    phase: str = "Running",
    unschedulable: str | None = None,
) -> Obj:
    """A pod as the kubelet reports it; `container_statuses` decide readiness and phase.

    `unschedulable` is the scheduler's message for a pod no node fits: it is Pending with no
    node, no IPs, no start time and no container statuses, and only PodScheduled=False."""
    meta = owner["metadata"]
    spec = copy.deepcopy(template["spec"])
    volume, mount = _kube_api_access(name)
    for container in spec["containers"]:
        container.setdefault("volumeMounts", []).append(dict(mount))
    spec.update(
        {
            "nodeName": node,
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "volumes": [*spec.get("volumes", []), volume],
            "tolerations": [
                {
                    "key": f"node.kubernetes.io/{taint}",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
                for taint in ("not-ready", "unreachable")
            ],
        }
    )
    ready = all(s["ready"] for s in container_statuses)
    unready = [s["name"] for s in container_statuses if not s["ready"]]
    not_ready_message = f"containers with unready status: [{' '.join(unready)}]"
    ip = _pod_ip(name)
    for status in container_statuses:
        status.setdefault("volumeMounts", [{**mount, "recursiveReadOnly": "Disabled"}])
    pod: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": f"{meta['name']}-",
            "namespace": meta["namespace"],
            "uid": str(uuid.uuid4()),
            "labels": labels,
            "creationTimestamp": _ago(created_seconds_ago),
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": owner_kind,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
        "status": {
            "phase": phase,
            "conditions": [
                _condition("PodReadyToStartContainers", True, created_seconds_ago - 2),
                _condition("Initialized", True, created_seconds_ago - 1),
                _condition(
                    "Ready",
                    ready,
                    60 if not ready else created_seconds_ago - 12,
                    "" if ready else "ContainersNotReady",
                    "" if ready else not_ready_message,
                ),
                _condition(
                    "ContainersReady",
                    ready,
                    60 if not ready else created_seconds_ago - 12,
                    "" if ready else "ContainersNotReady",
                    "" if ready else not_ready_message,
                ),
                _condition("PodScheduled", True, created_seconds_ago),
            ],
            "hostIP": _node_ip(node),
            "hostIPs": [{"ip": _node_ip(node)}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": _ago(created_seconds_ago - 1),
            "containerStatuses": container_statuses,
            "qosClass": _qos(spec["containers"]),
        },
    }
    if unschedulable is not None:
        del pod["spec"]["nodeName"]
        pod["status"] = {
            "phase": "Pending",
            "conditions": [
                _condition(
                    "PodScheduled", False, created_seconds_ago, "Unschedulable", unschedulable
                )
            ],
            "qosClass": _qos(spec["containers"]),
        }
    return pod


def _image_id(image: str) -> str:
    repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    return f"{repository}@sha256:{_hex(image)}"


def _running(
    container: Obj,
    seed: str,
    started_seconds_ago: float,
    restarts: int = 0,
    last: Obj | None = None,
) -> Obj:
    return {
        "name": container["name"],
        "state": {"running": {"startedAt": _ago(started_seconds_ago)}},
        "lastState": {"terminated": last} if last else {},
        "ready": True,
        "restartCount": restarts,
        "image": container["image"],
        "imageID": _image_id(container["image"]),
        "containerID": f"containerd://{_hex(seed + 'running')}",
        "started": True,
    }


def _terminated(seed: str, reason: str, exit_code: int, started: float, finished: float) -> Obj:
    return {
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": _ago(started),
        "finishedAt": _ago(finished),
        "containerID": f"containerd://{_hex(seed + 'terminated')}",
    }


def _event(
    involved: Obj,
    reason: str,
    message: str,
    *,
    kind: str = "Normal",
    count: int = 1,
    first_seconds_ago: float,
    last_seconds_ago: float,
    component: str = "kubelet",
    host: str | None = None,
    field_path: str | None = None,
) -> Obj:
    """A core/v1 Event as the kubelet or a controller records it (name = object.hex)."""
    meta = involved["metadata"]
    reference: Obj = {
        "apiVersion": involved["apiVersion"],
        "kind": involved["kind"],
        "name": meta["name"],
        "namespace": meta["namespace"],
        "uid": meta["uid"],
        "resourceVersion": meta["resourceVersion"],
    }
    if field_path:
        reference["fieldPath"] = field_path
    source: Obj = {"component": component}
    if host:
        source["host"] = host
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta['name']}.{_hex(meta['name'] + reason + message, 16)}",
            "namespace": meta["namespace"],
            "creationTimestamp": _ago(first_seconds_ago),
        },
        "involvedObject": reference,
        "reason": reason,
        "message": message,
        "source": source,
        "firstTimestamp": _ago(first_seconds_ago),
        "lastTimestamp": _ago(last_seconds_ago),
        "count": count,
        "type": kind,
        "eventTime": None,
        "reportingComponent": component,
        "reportingInstance": host or "",
    }


def _pod_metrics(pod: Obj, usage: dict[str, tuple[str, str]]) -> Obj:
    """metrics-server's PodMetrics for a pod: container name -> (cpu, memory)."""
    return {
        "apiVersion": "metrics.k8s.io/v1beta1",
        "kind": "PodMetrics",
        "metadata": {
            "name": pod["metadata"]["name"],
            "namespace": pod["metadata"]["namespace"],
            "labels": dict(pod["metadata"]["labels"]),
            "creationTimestamp": format_time(now()),
        },
        "timestamp": _ago(12),
        "window": "20.285s",
        "containers": [
            {"name": c, "usage": {"cpu": cpu, "memory": memory}}
            for c, (cpu, memory) in usage.items()
        ],
    }


def ensure_nodes(double: KubeDouble) -> list[str]:
    """Three Ready worker nodes (the pods' nodeName values), added once per double."""
    for index, node in enumerate(NODES):
        if double.get("v1", "Node", node) is not None:
            continue
        double.add(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": node,
                    "creationTimestamp": _ago(41 * 86400 - index * 60),
                    "labels": {
                        "kubernetes.io/arch": "amd64",
                        "kubernetes.io/hostname": node,
                        "kubernetes.io/os": "linux",
                        "node.kubernetes.io/instance-type": "m6i.large",
                        "topology.kubernetes.io/zone": f"eu-west-1{'abc'[index]}",
                    },
                },
                "spec": {
                    "podCIDR": f"10.244.{index + 1}.0/24",
                    "providerID": f"aws:///eu-west-1{'abc'[index]}/i-0{_hex(node, 16)}",
                },
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": _node_ip(node)},
                        {"type": "Hostname", "address": node},
                    ],
                    "allocatable": {"cpu": "1930m", "memory": "7220184Ki", "pods": "29"},
                    "capacity": {"cpu": "2", "memory": "7934904Ki", "pods": "29"},
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "lastHeartbeatTime": _ago(20),
                            "lastTransitionTime": _ago(41 * 86400),
                            "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                        }
                    ],
                    "nodeInfo": {
                        "architecture": "amd64",
                        "containerRuntimeVersion": "containerd://1.7.27",
                        "kernelVersion": "6.1.134-152.225.amzn2023.x86_64",
                        "kubeProxyVersion": "",
                        "kubeletVersion": "v1.37.1",
                        "operatingSystem": "linux",
                        "osImage": "Amazon Linux 2023.7.20250512",
                    },
                },
            }
        )
    return list(NODES)


def _service(
    double: KubeDouble,
    name: str,
    namespace: str,
    created: str,
    port: int = 80,
    headless: bool = False,
) -> str:
    spec: Obj = {
        "selector": {"app": name},
        "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
    }
    if headless:
        spec["clusterIP"] = "None"
        spec["clusterIPs"] = ["None"]
    double.add(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app": name},
                "creationTimestamp": created,
            },
            "spec": spec,
        }
    )
    return name


def _deployment_pods(
    double: KubeDouble,
    deployment: Obj,
    count: int,
    statuses: Callable[[int, str], list[Obj]],
    created_seconds_ago: float,
    *,
    phase: str = "Running",
    unschedulable: str | None = None,
) -> list[Obj]:
    """`count` pods owned by the current RS; `statuses(index, "name_namespace(uid)")` gives
    each pod's container statuses (the kubelet names pods that way in its messages)."""
    rs = _current_replicaset(double, deployment)
    template = rs["spec"]["template"]
    pods = []
    for index in range(count):
        name = f"{rs['metadata']['name']}-{_suffix(rs['metadata']['name'] + str(index))}"
        labels = dict(template["metadata"]["labels"])
        uid = str(uuid.uuid4())
        kubelet_name = f"{name}_{rs['metadata']['namespace']}({uid})"
        pod = _pod(
            rs,
            "ReplicaSet",
            name,
            NODES[index % len(NODES)],
            template,
            labels,
            statuses(index, kubelet_name),
            created_seconds_ago,
            phase=phase,
            unschedulable=unschedulable,
        )
        pod["metadata"]["uid"] = uid
        pods.append(double.add(pod))
    return pods


# --- scenarios -------------------------------------------------------------------------------


def crash_looping_deployment(double: KubeDouble, name: str, namespace: str = "default") -> Scenario:
    """Two replicas crash on start-up because DATABASE_URL is missing: CrashLoopBackOff,
    restartCount 7, last exit 1 (Error), the FATAL line in each pod's previous log."""
    ensure_nodes(double)
    image = f"{REGISTRY}/{name}:1.8.3"
    container = _container(
        "app",
        image,
        env=[
            {"name": "LOG_LEVEL", "value": "info"},
            {"name": "PORT", "value": "8080"},
            {"name": "DATABASE_USER", "value": "shop"},
            {"name": "DATABASE_PASSWORD", "value": SECRET_VALUE},
        ],
        requests={"cpu": "100m", "memory": "128Mi"},
        limits={"cpu": "500m", "memory": "256Mi"},
    )
    age = 23 * 60
    deployment = double.add(_deployment(name, namespace, container, 2, age))

    def crash_looping(index: int, kubelet_name: str) -> list[Obj]:
        seed = f"{name}-{index}"
        return [
            {
                "name": "app",
                "state": {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off 5m0s restarting failed container=app pod={kubelet_name}",
                    }
                },
                "lastState": {"terminated": _terminated(seed, "Error", 1, 171, 170)},
                "ready": False,
                "restartCount": 7,
                "image": image,
                "imageID": _image_id(image),
                "containerID": f"containerd://{_hex(seed + 'terminated')}",
                "started": False,
            }
        ]

    pods = _deployment_pods(double, deployment, 2, crash_looping, age)
    scenario = Scenario(
        "Deployment",
        name,
        namespace,
        "app",
        image,
        service=_service(double, name, namespace, deployment["metadata"]["creationTimestamp"]),
    )
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        scenario.pods.append(pod_name)
        double.set_log(
            namespace,
            pod_name,
            "app",
            f"{_ago(171)} INFO  starting {name} version=1.8.3 pid=1\n"
            f"{_ago(171)} INFO  reading configuration from environment\n"
            f"{FATAL_LINE}\n",
            previous=True,
        )
        double.set_log(
            namespace, pod_name, "app", f"{_ago(2)} INFO  starting {name} version=1.8.3 pid=1\n"
        )
        node = pod["spec"]["nodeName"]
        kubelet = {"host": node, "field_path": "spec.containers{app}"}
        for event in (
            _event(pod, "Scheduled", f"Successfully assigned {namespace}/{pod_name} to {node}", first_seconds_ago=age, last_seconds_ago=age, component="default-scheduler"),
            _event(pod, "Pulled", f'Container image "{image}" already present on machine', count=8, first_seconds_ago=age - 40, last_seconds_ago=171, **kubelet),
            _event(pod, "Created", "Created container: app", count=8, first_seconds_ago=age - 39, last_seconds_ago=171, **kubelet),
            _event(pod, "Started", "Started container app", count=8, first_seconds_ago=age - 39, last_seconds_ago=171, **kubelet),
            _event(pod, "BackOff", f"Back-off restarting failed container app in pod {pod_name}_{namespace}({pod['metadata']['uid']})", kind="Warning", count=97, first_seconds_ago=age - 30, last_seconds_ago=4, **kubelet),
        ):  # fmt: skip
            scenario.events.append(double.add(event)["metadata"]["name"])
        if double.metrics:
            double.add(_pod_metrics(pod, {"app": ("1m", "12Mi")}))
    scenario.replicasets.append(_current_replicaset(double, deployment)["metadata"]["name"])
    return scenario


def oom_killed_deployment(double: KubeDouble, name: str, namespace: str = "default") -> Scenario:
    """A worker with a 64Mi memory limit that keeps being OOM-killed: Running again, but
    lastState.terminated is OOMKilled (exit 137), 5 restarts, memory at the limit."""
    ensure_nodes(double)
    image = f"{REGISTRY}/{name}:3.2.0"
    container = _container(
        "worker",
        image,
        env=[{"name": "BATCH_SIZE", "value": "50000"}, {"name": "LOG_LEVEL", "value": "info"}],
        requests={"cpu": "50m", "memory": "32Mi"},
        limits={"cpu": "250m", "memory": "64Mi"},
    )
    age = 3 * 3600
    deployment = double.add(_deployment(name, namespace, container, 2, age))

    def oom_killed(i: int, _: str) -> list[Obj]:
        last = _terminated(f"{name}-{i}", "OOMKilled", 137, 400 + 30 * i, 96 + 30 * i)
        return [_running(container, f"{name}-{i}", 95 + 30 * i, restarts=5, last=last)]

    pods = _deployment_pods(double, deployment, 2, oom_killed, age)
    scenario = Scenario("Deployment", name, namespace, "worker", image)
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        scenario.pods.append(pod_name)
        double.set_log(
            namespace,
            pod_name,
            "worker",
            "".join(
                f"{_ago(400 - 30 * n)} INFO  processed batch {8800 + n} (50000 records)\n"
                for n in range(9)
            )
            + f"{_ago(97)} INFO  loading batch 8809 into memory (50000 records)\n",
            previous=True,
        )
        double.set_log(
            namespace,
            pod_name,
            "worker",
            f"{_ago(90)} INFO  starting {name} worker version=3.2.0\n",
        )
        node = pod["spec"]["nodeName"]
        kubelet = {"host": node, "field_path": "spec.containers{worker}"}
        for event in (
            _event(pod, "Pulled", f'Container image "{image}" already present on machine', count=6, first_seconds_ago=age - 5, last_seconds_ago=95, **kubelet),
            _event(pod, "Started", "Started container worker", count=6, first_seconds_ago=age - 4, last_seconds_ago=95, **kubelet),
            _event(pod, "BackOff", f"Back-off restarting failed container worker in pod {pod_name}_{namespace}({pod['metadata']['uid']})", kind="Warning", count=11, first_seconds_ago=age - 600, last_seconds_ago=110, **kubelet),
        ):  # fmt: skip
            scenario.events.append(double.add(event)["metadata"]["name"])
        if double.metrics:
            double.add(_pod_metrics(pod, {"worker": ("187m", "62Mi")}))
    scenario.replicasets.append(_current_replicaset(double, deployment)["metadata"]["name"])
    return scenario


def image_pull_failure_deployment(
    double: KubeDouble, name: str, namespace: str = "default"
) -> Scenario:
    """A tag that does not exist in the registry: Pending pods in ImagePullBackOff, events
    Failed "Failed to pull image ...: not found" and BackOff."""
    ensure_nodes(double)
    image = f"{REGISTRY}/{name}:2.0.0-rc.1"
    container = _container(
        "app", image, requests={"cpu": "100m", "memory": "128Mi"}, limits={"memory": "256Mi"}
    )
    age = 14 * 60
    deployment = double.add(_deployment(name, namespace, container, 1, age))

    def pull_failing(_: int, __: str) -> list[Obj]:
        return [
            {
                "name": "app",
                "state": {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "{image}": ErrImagePull: rpc error: code = NotFound desc = failed to pull and unpack image "{image}": failed to resolve reference "{image}": {image}: not found',
                    }
                },
                "lastState": {},
                "ready": False,
                "restartCount": 0,
                "image": image,
                "imageID": "",
                "started": False,
            }
        ]

    pods = _deployment_pods(double, deployment, 1, pull_failing, age, phase="Pending")
    scenario = Scenario("Deployment", name, namespace, "app", image)
    not_found = (
        f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and '
        f'unpack image "{image}": failed to resolve reference "{image}": {image}: not found'
    )
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        scenario.pods.append(pod_name)
        node = pod["spec"]["nodeName"]
        kubelet = {"host": node, "field_path": "spec.containers{app}"}
        for event in (
            _event(pod, "Scheduled", f"Successfully assigned {namespace}/{pod_name} to {node}", first_seconds_ago=age, last_seconds_ago=age, component="default-scheduler"),
            _event(pod, "Pulling", f'Pulling image "{image}"', count=7, first_seconds_ago=age - 1, last_seconds_ago=130, **kubelet),
            _event(pod, "Failed", not_found, kind="Warning", count=7, first_seconds_ago=age - 1, last_seconds_ago=130, **kubelet),
            _event(pod, "Failed", "Error: ErrImagePull", kind="Warning", count=7, first_seconds_ago=age - 1, last_seconds_ago=130, **kubelet),
            _event(pod, "BackOff", f'Back-off pulling image "{image}"', count=58, first_seconds_ago=age - 2, last_seconds_ago=6, **kubelet),
            _event(pod, "Failed", "Error: ImagePullBackOff", kind="Warning", count=58, first_seconds_ago=age - 2, last_seconds_ago=6, **kubelet),
        ):  # fmt: skip
            scenario.events.append(double.add(event)["metadata"]["name"])
    scenario.replicasets.append(_current_replicaset(double, deployment)["metadata"]["name"])
    return scenario


def rolled_out_twice_deployment(
    double: KubeDouble, name: str, namespace: str = "default"
) -> Scenario:
    """Created at 1.0.0, then rolled out to 1.1.0 and 1.2.0 through the double's write path:
    three ReplicaSets with revisions 1, 2, 3 (the old ones at 0 replicas), two healthy pods."""
    ensure_nodes(double)
    images = [f"{REGISTRY}/{name}:1.{minor}.0" for minor in range(3)]
    container = _container(
        "app",
        images[0],
        env=[{"name": "LOG_LEVEL", "value": "info"}],
        requests={"cpu": "100m", "memory": "128Mi"},
        limits={"cpu": "500m", "memory": "256Mi"},
    )
    deployment = double.add(_deployment(name, namespace, container, 2, 6 * 86400))
    for image in images[1:]:
        deployment = double.patch(
            "apps/v1",
            "Deployment",
            name,
            {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}},
            namespace,
        )
    current = _current_replicaset(double, deployment)
    running = current["spec"]["template"]["spec"]["containers"][0]
    pods = _deployment_pods(
        double, deployment, 2, lambda i, _: [_running(running, f"{name}-{i}", 3500 - i * 20)], 3600
    )
    scenario = Scenario(
        "Deployment",
        name,
        namespace,
        "app",
        images[-1],
        service=_service(double, name, namespace, deployment["metadata"]["creationTimestamp"]),
    )
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        scenario.pods.append(pod_name)
        double.set_log(
            namespace,
            pod_name,
            "app",
            f"{_ago(3500)} INFO  starting {name} version=1.2.0 pid=1\n{_ago(3499)} INFO  listening on :8080\n",
        )
        if double.metrics:
            double.add(_pod_metrics(pod, {"app": ("4m", "71Mi")}))
    scenario.replicasets = [
        rs["metadata"]["name"]
        for rs in sorted(
            double.list_objects("apps/v1", "ReplicaSet", namespace, f"app={name}"),
            key=lambda rs: int(rs["metadata"]["annotations"][REVISION]),
        )
    ]
    return scenario


def healthy_statefulset(double: KubeDouble, name: str, namespace: str = "default") -> Scenario:
    """A two-replica database StatefulSet with its headless Service, PVC template, pods -0 and -1."""
    ensure_nodes(double)
    image = "docker.io/library/postgres:16.4"
    container = _container(
        "postgres",
        image,
        env=[{"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
        requests={"cpu": "250m", "memory": "512Mi"},
        limits={"memory": "1Gi"},
        port=5432,
        probes=False,
    )
    container["ports"][0]["name"] = "postgres"
    container["volumeMounts"] = [{"name": "data", "mountPath": "/var/lib/postgresql/data"}]
    labels = {
        "app": name,
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "database",
    }
    revision = f"{name}-{_suffix(name, 10)}"
    service = _service(double, name, namespace, _ago(20 * 86400), port=5432, headless=True)
    statefulset = double.add(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels), "creationTimestamp": _ago(20 * 86400)},
            "spec": {
                "replicas": 2,
                "serviceName": name,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": dict(labels)}, "spec": {"containers": [container]}},
                "volumeClaimTemplates": [
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "data"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}, "volumeMode": "Filesystem"},
                    }
                ],
            },
            "status": {"currentRevision": revision, "updateRevision": revision, "collisionCount": 0},
        }
    )  # fmt: skip
    scenario = Scenario("StatefulSet", name, namespace, "postgres", image, service=service)
    template = statefulset["spec"]["template"]
    for index in range(2):
        pod_name = f"{name}-{index}"
        pod_labels = {
            **labels,
            "controller-revision-hash": revision,
            "apps.kubernetes.io/pod-index": str(index),
            "statefulset.kubernetes.io/pod-name": pod_name,
        }
        pod = _pod(
            statefulset, "StatefulSet", pod_name, NODES[index], template, pod_labels,
            [_running(container, pod_name, 20 * 86400 - index * 40)], 20 * 86400 - index * 40,
        )  # fmt: skip
        pod["spec"]["hostname"] = pod_name
        pod["spec"]["subdomain"] = name
        pod["spec"]["volumes"].insert(
            0, {"name": "data", "persistentVolumeClaim": {"claimName": f"data-{pod_name}"}}
        )
        double.add(pod)
        scenario.pods.append(pod_name)
        double.set_log(
            namespace,
            pod_name,
            "postgres",
            f"{_ago(60)} LOG:  checkpoint complete: wrote 42 buffers (0.3%)\n",
        )
    return scenario


def daemonset(double: KubeDouble, name: str, namespace: str = "default") -> Scenario:
    """A node agent DaemonSet with one Running pod on each of the three nodes."""
    nodes = ensure_nodes(double)
    image = "quay.io/prometheus/node-exporter:v1.8.2"
    container = _container(
        "node-exporter",
        image,
        requests={"cpu": "10m", "memory": "24Mi"},
        limits={"memory": "64Mi"},
        port=9100,
        probes=False,
    )
    container["ports"][0]["name"] = "metrics"
    container["args"] = ["--path.rootfs=/host/root", "--web.listen-address=:9100"]
    labels = {
        "app": name,
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "monitoring",
    }
    revision = _suffix(name, 10)
    ds = double.add(
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels), "creationTimestamp": _ago(35 * 86400), "annotations": {"deprecated.daemonset.template.generation": "1"}},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": dict(labels)}, "spec": {"containers": [container], "hostNetwork": True, "hostPID": True, "nodeSelector": {"kubernetes.io/os": "linux"}}},
            },
        }
    )  # fmt: skip
    scenario = Scenario("DaemonSet", name, namespace, "node-exporter", image)
    template = ds["spec"]["template"]
    for node in nodes:
        pod_name = f"{name}-{_suffix(name + node)}"
        pod_labels = {
            **labels,
            "controller-revision-hash": revision,
            "pod-template-generation": "1",
        }
        pod = _pod(
            ds,
            "DaemonSet",
            pod_name,
            node,
            template,
            pod_labels,
            [_running(container, pod_name, 35 * 86400)],
            35 * 86400,
        )
        pod["status"]["podIP"] = _node_ip(node)  # hostNetwork pods share the node's address
        pod["status"]["podIPs"] = [{"ip": _node_ip(node)}]
        double.add(pod)
        scenario.pods.append(pod_name)
    return scenario


# --- scenarios as data (agent/evaluation/cloud_setup.py) --------------------------------------

# The scheduler's words when no node has the memory a pod requests (kube-scheduler 1.3x).
UNSCHEDULABLE_MESSAGE = (
    "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available:"
    " 3 No preemption victims found for incoming pod."
)
MISSING_SECRET_MESSAGE = 'secret "db-credentials" not found'
LIVENESS_FAILURE = "Liveness probe failed: HTTP probe failed with statuscode: 503"
READINESS_FAILURE = (
    'Readiness probe failed: Get "http://10.244.2.31:8080/ready": dial tcp 10.244.2.31:8080:'
    " connect: connection refused"
)
_SCHEDULER_REASONS = ("Scheduled", "FailedScheduling")


def _setup_container(container: KubernetesContainer, image: str) -> Obj:
    env: list[Obj] = [{"name": k, "value": v} for k, v in container.env.items()]
    for variable, reference in container.secret_env.items():
        secret, _, key = reference.partition("/")
        env.append({"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return _container(
        container.name,
        image,
        env=env,
        requests={str(k): v for k, v in container.requests.items()} or None,
        limits={str(k): v for k, v in container.limits.items()} or None,
        liveness=container.liveness_probe,
        readiness=container.readiness_probe,
    )


def _setup_status(container: KubernetesContainer, image: str, seed: str, kubelet_name: str) -> Obj:
    """containerStatuses[] of one container as the kubelet writes it for this setup."""
    ran = container.state != "waiting" or container.last_reason is not None
    last = None
    if container.last_reason is not None and container.last_exit_code is not None:
        ended = container.started_seconds_ago + 1 if container.state == "running" else 40
        last = _terminated(seed, container.last_reason, container.last_exit_code, ended + 60, ended)
        if container.last_message:
            last["message"] = container.last_message
    state: Obj
    if container.state == "running":
        state = {"running": {"startedAt": _ago(container.started_seconds_ago)}}
    elif container.state == "terminated":
        exit_code = container.exit_code or 0
        reason = container.reason or ("Completed" if exit_code == 0 else "Error")
        state = {
            "terminated": _terminated(
                seed + "now", reason, exit_code, container.started_seconds_ago, 10
            )
        }
        if container.message:
            state["terminated"]["message"] = container.message
    else:
        message = container.message or {
            "CrashLoopBackOff": f"back-off 5m0s restarting failed container={container.name} pod={kubelet_name}",
            "ImagePullBackOff": f'Back-off pulling image "{image}"',
        }.get(container.reason or "")
        state = {"waiting": {"reason": container.reason}}
        if message:
            state["waiting"]["message"] = message
    status: Obj = {
        "name": container.name,
        "state": state,
        "lastState": {"terminated": last} if last else {},
        "ready": container.state == "running" if container.ready is None else container.ready,
        "restartCount": container.restart_count,
        "image": image,
        "imageID": _image_id(image) if ran else "",
        "started": container.state == "running",
    }
    if ran:
        status["containerID"] = f"containerd://{_hex(seed + container.state)}"
    return status


def _setup_statefulset(
    double: KubeDouble, name: str, namespace: str, containers: list[Obj], replicas: int, age: float
) -> Obj:
    labels = {"app": name, "app.kubernetes.io/name": name}
    revision = f"{name}-{_suffix(name, 10)}"
    return double.add(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels), "creationTimestamp": _ago(age)},
            "spec": {
                "replicas": replicas,
                "serviceName": name,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": dict(labels)}, "spec": {"containers": containers}},
            },
            "status": {"currentRevision": revision, "updateRevision": revision, "collisionCount": 0},
        }
    )  # fmt: skip


def _statefulset_pods(
    double: KubeDouble,
    statefulset: Obj,
    count: int,
    statuses: Callable[[int, str], list[Obj]],
    created_seconds_ago: float,
    *,
    phase: str,
    unschedulable: str | None,
) -> list[Obj]:
    meta = statefulset["metadata"]
    template = statefulset["spec"]["template"]
    revision = statefulset["status"]["currentRevision"]
    pods = []
    for index in range(count):
        name = f"{meta['name']}-{index}"
        uid = str(uuid.uuid4())
        labels = {
            **template["metadata"]["labels"],
            "controller-revision-hash": revision,
            "apps.kubernetes.io/pod-index": str(index),
            "statefulset.kubernetes.io/pod-name": name,
        }
        pod = _pod(
            statefulset, "StatefulSet", name, NODES[index % len(NODES)], template, labels,
            statuses(index, f"{name}_{meta['namespace']}({uid})"), created_seconds_ago,
            phase=phase, unschedulable=unschedulable,
        )  # fmt: skip
        pod["metadata"]["uid"] = uid
        pod["spec"]["hostname"] = name
        pod["spec"]["subdomain"] = meta["name"]
        pods.append(double.add(pod))
    return pods


def _neighbour(double: KubeDouble, neighbour: KubernetesNeighbour, namespace: str) -> None:
    """Another Deployment with its Service: ready, or crash-looping behind its Service."""
    image = f"{REGISTRY}/{neighbour.name}:1.0.0"
    container = _container(
        "app", image, requests={"cpu": "100m", "memory": "128Mi"}, limits={"memory": "256Mi"}
    )
    age = 5 * 86400
    deployment = double.add(
        _deployment(neighbour.name, namespace, container, neighbour.replicas, age)
    )

    def statuses(index: int, kubelet_name: str) -> list[Obj]:
        seed = f"{neighbour.name}-{index}"
        if neighbour.ready:
            return [_running(container, seed, age - 300)]
        down = KubernetesContainer(
            state="waiting", reason="CrashLoopBackOff", last_reason="Error", last_exit_code=1,
            restart_count=6, liveness_probe=True, readiness_probe=True,
        )  # fmt: skip
        return [_setup_status(down, image, seed, kubelet_name)]

    _deployment_pods(double, deployment, neighbour.replicas, statuses, age)
    _service(double, neighbour.name, namespace, deployment["metadata"]["creationTimestamp"])


def from_setup(double: KubeDouble, name: str, setup: KubernetesSetup) -> Scenario:
    """The workload a corpus scenario describes as data: the Deployment (through the double's
    controller) or StatefulSet, one pod per replica with the setup's container statuses, a
    Service of its name, the events on each pod (or on the workload), the current and previous
    logs, PodMetrics of its running containers, and the other workloads of the namespace."""
    ensure_nodes(double)
    namespace = setup.namespace
    images = {c.name: c.image or setup.image for c in setup.containers}
    specs = [_setup_container(c, images[c.name]) for c in setup.containers]
    age = max(3600.0, *(c.started_seconds_ago + 60 for c in setup.containers))
    phase = setup.pod_phase

    def statuses(index: int, kubelet_name: str) -> list[Obj]:
        if setup.unschedulable is not None:
            return []
        return [
            _setup_status(c, images[c.name], f"{name}-{index}-{c.name}", kubelet_name)
            for c in setup.containers
        ]

    if setup.kind == "StatefulSet":
        workload = _setup_statefulset(double, name, namespace, specs, setup.replicas, age)
        pods = _statefulset_pods(
            double, workload, setup.replicas, statuses, age, phase=phase,
            unschedulable=setup.unschedulable,
        )  # fmt: skip
    else:
        workload = double.add(_deployment(name, namespace, specs, setup.replicas, age))
        pods = _deployment_pods(
            double, workload, setup.replicas, statuses, age, phase=phase,
            unschedulable=setup.unschedulable,
        )  # fmt: skip
    created = workload["metadata"]["creationTimestamp"]
    scenario = Scenario(
        setup.kind, name, namespace, setup.containers[0].name, images[setup.containers[0].name],
        service=_service(double, name, namespace, created),
    )  # fmt: skip
    if setup.kind == "Deployment":
        scenario.replicasets.append(_current_replicaset(double, workload)["metadata"]["name"])
    controller = (
        "statefulset-controller" if setup.kind == "StatefulSet" else "deployment-controller"
    )
    for event in setup.events:
        if event.on != "workload":
            continue
        added = _event(
            workload, event.reason, event.message, kind=event.type, count=event.count,
            first_seconds_ago=event.seconds_ago + 10 * (event.count - 1),
            last_seconds_ago=event.seconds_ago, component=controller,
        )  # fmt: skip
        scenario.events.append(double.add(added)["metadata"]["name"])
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        scenario.pods.append(pod_name)
        node = pod["spec"].get("nodeName")
        for event in setup.events:
            if event.on != "pod":
                continue
            scheduler = event.reason in _SCHEDULER_REASONS
            # The kubelet names the pod as name_namespace(uid) in its messages.
            message = event.message.replace(
                "{pod}", f"{pod_name}_{namespace}({pod['metadata']['uid']})"
            )
            added = _event(
                pod, event.reason, message, kind=event.type, count=event.count,
                first_seconds_ago=event.seconds_ago + 10 * (event.count - 1),
                last_seconds_ago=event.seconds_ago,
                component="default-scheduler" if scheduler else "kubelet",
                host=None if scheduler else node,
                field_path=f"spec.containers{{{event.container}}}" if event.container else None,
            )  # fmt: skip
            scenario.events.append(double.add(added)["metadata"]["name"])
        for c in setup.containers:
            if c.log:
                double.set_log(namespace, pod_name, c.name, "".join(f"{line}\n" for line in c.log))
            if c.previous_log:
                text = "".join(f"{line}\n" for line in c.previous_log)
                double.set_log(namespace, pod_name, c.name, text, previous=True)
        usage = {
            c.name: (c.cpu_usage or "0", c.memory_usage or "0")
            for c in setup.containers
            if c.state == "running" and (c.cpu_usage or c.memory_usage)
        }
        if double.metrics and usage and node:
            double.add(_pod_metrics(pod, usage))
    for neighbour in setup.others:
        _neighbour(double, neighbour, namespace)
    return scenario


def unschedulable_deployment(double: KubeDouble, name: str) -> Scenario:
    """Asks for 16Gi of memory on nodes of 7Gi: Pending, no node, FailedScheduling events."""
    return from_setup(
        double,
        name,
        KubernetesSetup(
            image=f"{REGISTRY}/{name}:4.1.0",
            containers=[
                KubernetesContainer(
                    state="waiting",
                    requests={"cpu": "500m", "memory": "16Gi"},
                    limits={"memory": "16Gi"},
                )
            ],
            unschedulable=UNSCHEDULABLE_MESSAGE,
            events=[
                KubernetesEvent(reason="FailedScheduling", message=UNSCHEDULABLE_MESSAGE, count=6)
            ],
        ),
    )


def config_error_deployment(double: KubeDouble, name: str) -> Scenario:
    """Its DATABASE_PASSWORD comes from a Secret that does not exist: the kubelet cannot create
    the container (CreateContainerConfigError), Failed events say which secret."""
    return from_setup(
        double,
        name,
        KubernetesSetup(
            image=f"{REGISTRY}/{name}:2.3.0",
            replicas=2,
            containers=[
                KubernetesContainer(
                    state="waiting",
                    reason="CreateContainerConfigError",
                    message=MISSING_SECRET_MESSAGE,
                    env={"DATABASE_USER": "shop"},
                    secret_env={"DATABASE_PASSWORD": "db-credentials/password"},
                    requests={"cpu": "100m", "memory": "128Mi"},
                    limits={"memory": "256Mi"},
                )
            ],
            events=[
                KubernetesEvent(
                    type="Normal",
                    reason="Pulled",
                    count=9,
                    container="app",
                    message=f'Container image "{REGISTRY}/{name}:2.3.0" already present on machine',
                ),
                KubernetesEvent(
                    reason="Failed",
                    message=f"Error: {MISSING_SECRET_MESSAGE}",
                    count=9,
                    container="app",
                ),
            ],
        ),
    )


def liveness_failing_deployment(double: KubeDouble, name: str) -> Scenario:
    """Its /healthz answers 503 under load: the kubelet kills it (SIGKILL after the grace
    period, exit 137 without an OOM kill) and restarts it; 950m of CPU without a CPU limit."""
    return from_setup(
        double,
        name,
        KubernetesSetup(
            image=f"{REGISTRY}/{name}:5.0.2",
            containers=[
                KubernetesContainer(
                    started_seconds_ago=25,
                    last_reason="Error",
                    last_exit_code=137,
                    restart_count=4,
                    ready=False,
                    liveness_probe=True,
                    readiness_probe=True,
                    requests={"cpu": "250m", "memory": "256Mi"},
                    limits={"memory": "512Mi"},
                    log=["INFO  starting worker pool size=64", "WARN  queue depth 18000"],
                    previous_log=["WARN  queue depth 25000", "WARN  health handler timed out"],
                    cpu_usage="950m",
                    memory_usage="384Mi",
                )
            ],
            events=[
                KubernetesEvent(
                    reason="Unhealthy",
                    message=LIVENESS_FAILURE,
                    count=12,
                    seconds_ago=35,
                    container="app",
                ),
                KubernetesEvent(
                    type="Normal",
                    reason="Killing",
                    count=4,
                    seconds_ago=34,
                    container="app",
                    message="Container app failed liveness probe, will be restarted",
                ),
            ],
        ),
    )


def readiness_failing_deployment(double: KubeDouble, name: str) -> Scenario:
    """Runs, but its port is not open yet: the readiness probe fails, the pod is not Ready
    (no restarts: readiness failures do not restart a container)."""
    return from_setup(
        double,
        name,
        KubernetesSetup(
            image=f"{REGISTRY}/{name}:1.4.0",
            containers=[
                KubernetesContainer(
                    started_seconds_ago=200,
                    ready=False,
                    liveness_probe=True,
                    readiness_probe=True,
                    limits={"cpu": "500m", "memory": "256Mi"},
                    log=["INFO  warming cache (2/9 shards)"],
                )
            ],
            events=[
                KubernetesEvent(
                    reason="Unhealthy",
                    message=READINESS_FAILURE,
                    count=40,
                    seconds_ago=3,
                    container="app",
                )
            ],
        ),
    )


__all__ = [
    "FATAL_LINE",
    "LIVENESS_FAILURE",
    "MISSING_SECRET_MESSAGE",
    "READINESS_FAILURE",
    "SECRET_VALUE",
    "UNSCHEDULABLE_MESSAGE",
    "Scenario",
    "config_error_deployment",
    "crash_looping_deployment",
    "daemonset",
    "ensure_nodes",
    "from_setup",
    "healthy_statefulset",
    "image_pull_failure_deployment",
    "liveness_failing_deployment",
    "oom_killed_deployment",
    "readiness_failing_deployment",
    "rolled_out_twice_deployment",
    "unschedulable_deployment",
]
