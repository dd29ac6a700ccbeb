"""The Kubernetes executor: universal operations on a cluster through the official client.

Targets are `name` or `namespace/name` (the namespace must be one of `allowed_namespaces`). A
name is looked up as a Deployment, then a StatefulSet, then a DaemonSet, then a Pod, and last
through the configured `target_selectors` (e.g. `app={target}`). The workload's pods are found
through its own selector, and per-pod results are reported for every replica.

Responses are read as the API's own JSON (`_preload_content=False`), so output and data use
the field names an SRE knows from `kubectl get -o json`. get_status and get_metrics items also
carry the normalised fields every executor reports (infrastructure/executors/status.py): a
probe's verdict comes from the kubelet's recent `Unhealthy` events of the pods, an unscheduled
pod's reason from its PodScheduled condition.

Errors: 403 is `denied` and never retried, 404 is `permanent` (with the names that do exist),
409 on a patch re-reads and retries once, 429/5xx/connection errors are `retryable`. Reads are
retried here with a back-off that honours Retry-After; a write is re-sent only when the server
said it did not process it (429), never after a 5xx or a lost connection. urllib3's own retries
are set explicitly: connection attempts only, which never re-send a request.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from infrastructure.configuration.models import (
    EnvironmentType,
    KubernetesConnection,
    KubernetesEnvironment,
)
from infrastructure.executors.base import (
    EnvironmentExecutor,
    ErrorKind,
    ExecutorError,
    MethodOutput,
    ResolvedTarget,
    executor_method,
)
from infrastructure.executors.logtext import (
    byte_share,
    instances_to_read,
    kept_lines,
    line_filter,
    render_logs,
)
from infrastructure.executors.status import normalised, percent
from infrastructure.redaction import REDACTED, Redactor
from infrastructure.registry import duration_seconds
from infrastructure.retry import parse_retry_after, retry_delay

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
REVISION = "deployment.kubernetes.io/revision"
_WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
_SCALABLE = ("Deployment", "StatefulSet")
_UNPROCESSED = (429,)  # the server refused before acting: safe to send again
_PROBE_FAILURE = re.compile(r"^(Liveness|Readiness|Startup) probe (?:failed|errored)\b")
_FIELD_PATH = re.compile(r"spec\.containers\{([^}]+)\}")
_ONE_CORE_MILLICORES = 1000
_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass
class Workload:
    """What a target resolved to: a workload (or a bare pod / selector) and its pods."""

    kind: str  # Deployment, StatefulSet, DaemonSet, Pod or Selector
    name: str
    namespace: str
    selector: str
    obj: dict[str, Any] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)


class KubernetesExecutor(EnvironmentExecutor):
    environment_type = EnvironmentType.KUBERNETES

    def __init__(self, name: str, environment: KubernetesEnvironment) -> None:
        super().__init__(name, environment)
        self.connection: KubernetesConnection = environment.connection
        self._api: k8s.ApiClient | None = None
        self._lock = threading.Lock()

    # --- connection -----------------------------------------------------------------

    def _client(self) -> k8s.ApiClient:
        with self._lock:
            if self._api is None:
                self._api = k8s.ApiClient(self._configuration())
            return self._api

    def _configuration(self) -> k8s.Configuration:
        conn = self.connection
        configuration = k8s.Configuration()
        try:
            if conn.in_cluster:
                k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
            else:
                path = os.path.expanduser(conn.kubeconfig or "~/.kube/config")
                k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=path,
                    context=conn.context or None,
                    client_configuration=configuration,
                )
        except (ConfigException, OSError, TypeError, ValueError) as exc:
            where = "the in-cluster service account" if conn.in_cluster else conn.kubeconfig
            raise ExecutorError(
                ErrorKind.PERMANENT,
                f"cannot load the Kubernetes configuration from {where}: {exc}",
                "check connection.kubeconfig / connection.context in environments.yml"
                " (or in_cluster: true inside a cluster)",
            ) from exc
        if conn.api_server:
            configuration.host = conn.api_server.rstrip("/")
        # Explicit: urllib3 retries only failed connection attempts (nothing was sent), never
        # reads or statuses; our own loop retries reads and decides about writes.
        configuration.retries = urllib3.Retry(
            total=None, connect=conn.connect_retries, read=0, redirect=0, status=0, other=0
        )
        configuration.client_go_retries = False
        return configuration

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                self._api.close()  # type: ignore[no-untyped-call]
                self._api = None

    def check_connection(self) -> MethodOutput:
        version = self._json("GET", "/version")
        namespace = self.connection.namespace
        self._json("GET", f"/api/v1/namespaces/{namespace}/pods", {"limit": "1"})
        return MethodOutput(
            output=f"Kubernetes {version.get('gitVersion', '?')}"
            f" at {self._client().configuration.host}",
            data={"version": version, "namespace": namespace},
        )

    # --- HTTP with error classes ------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> urllib3.BaseHTTPResponse:
        api = self._client()
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        params = [(k, _query_value(v)) for k, v in (query or {}).items() if v is not None]
        write = method not in ("GET", "HEAD")
        attempts = 1 + self.connection.read_retries
        for attempt in range(1, attempts + 1):
            try:
                response: urllib3.BaseHTTPResponse = api.call_api(
                    *api.param_serialize(
                        method=method,
                        resource_path=path,
                        query_params=params,
                        header_params=headers,
                        body=body,
                        auth_settings=["BearerToken"],
                    ),
                    _request_timeout=self.connection.request_timeout_seconds,
                ).response
            except ApiException as exc:
                response = _as_response(exc)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ExecutorError(
                    ErrorKind.RETRYABLE,
                    f"cannot reach the Kubernetes API at {api.configuration.host}: {exc}",
                    "check the cluster is up and connection.kubeconfig / api_server;"
                    + (" the write may have been sent: observe before repeating" if write else ""),
                ) from exc
            status = response.status
            if status < 400:
                return response
            retryable = status == 429 or status >= 500
            may_resend = not write or status in _UNPROCESSED
            if retryable and may_resend and attempt < attempts:
                if hasattr(response, "drain_conn"):
                    response.drain_conn()  # give the connection back before waiting
                time.sleep(self._backoff(response, attempt))
                continue
            raise self._error(response, path, write)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _backoff(self, response: urllib3.BaseHTTPResponse, attempt: int) -> float:
        return retry_delay(
            parse_retry_after(response.headers.get("Retry-After")),
            attempt,
            self.connection.retry_backoff_seconds,
            self.connection.retry_after_cap_seconds,
        )

    def _error(self, response: urllib3.BaseHTTPResponse, path: str, write: bool) -> ExecutorError:
        status = response.status
        message = _status_message(response, self.redactor)
        retry_after = response.headers.get("Retry-After")
        if status in (401, 403):
            return ExecutorError(
                ErrorKind.DENIED,
                f"the Kubernetes API refused {path} ({status}): {message}",
                "grant UICI's service account this permission (deployments/kubernetes/rbac-*.yaml)"
                if status == 403
                else "the credentials in the kubeconfig were not accepted",
            )
        if status == 404:
            return ExecutorError(ErrorKind.PERMANENT, f"not found: {message}")
        # A JSON-patch `test` that fails is answered 422: the object changed under us.
        if status == 409 or (status == 422 and "test" in message.lower()):
            return ExecutorError(ErrorKind.RETRYABLE, f"conflict on {path}: {message}")
        if status == 429 or status >= 500:
            hint = f"retry after {retry_after} s" if retry_after else "retry with back-off"
            if write and status >= 500:
                hint += "; the write may have been applied: observe before repeating"
            return ExecutorError(
                ErrorKind.RETRYABLE, f"the Kubernetes API answered {status}: {message}", hint
            )
        return ExecutorError(
            ErrorKind.PERMANENT, f"the Kubernetes API answered {status}: {message}"
        )

    def _json(self, method: str, path: str, query: dict[str, Any] | None = None) -> Any:
        return json.loads(self._request(method, path, query).data or b"{}")

    def _patch(self, path: str, body: Any, reread: Callable[[], Any] | None = None) -> Any:
        """A patch; on 409 the object is re-read (`reread` rebuilds the body) and the patch sent
        once more, since a conflict means the server did not apply it."""
        kind = "application/json-patch+json" if isinstance(body, list) else (
            "application/strategic-merge-patch+json"
        )  # fmt: skip
        try:
            return json.loads(self._request("PATCH", path, body=body, content_type=kind).data)
        except ExecutorError as exc:
            if reread is None or not exc.message.startswith("conflict"):
                raise
        body = reread()
        return json.loads(self._request("PATCH", path, body=body, content_type=kind).data)

    # --- targets ------------------------------------------------------------------------

    def _namespace_and_name(self, target: str, namespace: str | None) -> tuple[str, str]:
        if "/" in target:
            namespace, _, target = target.partition("/")
        # Both go into URL paths: anything but a Kubernetes name (e.g. "..", "/") could
        # reach another namespace or resource, so it is refused here.
        for part in (target, namespace):
            if part is not None and part != "-" and not _NAME.fullmatch(part):
                raise ExecutorError(
                    ErrorKind.PERMANENT,
                    f"{part!r} is not a Kubernetes name (lower-case letters, digits, '-' and"
                    " '.', at most 253 characters)",
                    "a target is `name` or `namespace/name`",
                )
        namespace = namespace or self.connection.namespace
        if namespace not in self.connection.allowed_namespaces:
            raise ExecutorError(
                ErrorKind.DENIED,
                f"namespace {namespace!r} is not in allowed_namespaces"
                f" {self.connection.allowed_namespaces}",
                "add it to connection.allowed_namespaces in environments.yml",
            )
        return namespace, target

    def resolve(self, target: str, namespace: str | None = None) -> Workload:
        namespace, name = self._namespace_and_name(target, namespace)
        for kind in _WORKLOAD_KINDS:
            obj = self._get_optional(_workload_path(kind, namespace, name))
            if obj is not None:
                selector = _selector(obj["spec"].get("selector") or {})
                return Workload(
                    kind, name, namespace, selector, obj, self._pods(namespace, selector)
                )
        pod = self._get_optional(f"/api/v1/namespaces/{namespace}/pods/{name}")
        if pod is not None:
            return Workload("Pod", name, namespace, f"metadata.name={name}", pod, [pod])
        for template in self.connection.target_selectors:
            selector = template.replace("{target}", name)
            pods = self._pods(namespace, selector)
            if pods:
                return Workload("Selector", name, namespace, selector, {}, pods)
        raise ExecutorError(
            ErrorKind.PERMANENT,
            f"no deployment, statefulset, daemonset or pod {name!r} in namespace {namespace!r},"
            f" and no pods match {', '.join(self.connection.target_selectors)}",
            self._closest(namespace, name),
        )

    def write_targets(self, target: str) -> list[ResolvedTarget]:
        """A workload is one target (its controller rolls the pods); pods named directly or
        by a selector count as the workloads that own them (a ReplicaSet's Deployment)."""
        workload = self.resolve(target)
        if workload.kind in _WORKLOAD_KINDS:
            identity = f"{workload.namespace}/{workload.kind}/{workload.name}"
            return [ResolvedTarget(identity=identity, name=identity)]
        owners: dict[str, ResolvedTarget] = {}
        for pod in workload.pods:
            kind, name = self._owner(workload.namespace, pod)
            identity = f"{workload.namespace}/{kind}/{name}"
            owners[identity] = ResolvedTarget(identity=identity, name=identity)
        return sorted(owners.values(), key=lambda t: t.identity)

    def _owner(self, namespace: str, obj: dict[str, Any]) -> tuple[str, str]:
        """The controlling owner of a pod, followed through a ReplicaSet to its Deployment."""
        metadata = obj.get("metadata") or {}
        owner = next(
            (o for o in metadata.get("ownerReferences") or [] if o.get("controller")), None
        )
        if owner is None:
            return obj.get("kind") or "Pod", metadata.get("name", "")
        if owner.get("kind") == "ReplicaSet":
            replica_set = self._get_optional(
                f"/apis/apps/v1/namespaces/{namespace}/replicasets/{owner['name']}"
            )
            if replica_set is not None:
                return self._owner(namespace, {**replica_set, "kind": "ReplicaSet"})
        return str(owner.get("kind")), str(owner.get("name"))

    def _get_optional(self, path: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._json("GET", path)
        except ExecutorError as exc:
            if exc.kind is ErrorKind.PERMANENT and exc.message.startswith("not found"):
                return None
            raise
        return found

    def _pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        found = self._json(
            "GET", f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": selector}
        )
        return sorted(found.get("items", []), key=lambda p: p["metadata"]["name"])

    def _closest(self, namespace: str, name: str) -> str:
        names: list[str] = []
        for kind in _WORKLOAD_KINDS:
            listed = self._json("GET", _workload_path(kind, namespace, None))
            names += [f"{kind.lower()}/{i['metadata']['name']}" for i in listed.get("items", [])]
        if not names:
            return f"namespace {namespace!r} has no workloads"
        bare = {n.partition("/")[2]: n for n in names}
        close = difflib.get_close_matches(name, list(bare), n=3, cutoff=0.5)
        shown = ", ".join(bare[c] for c in close) if close else ", ".join(names[:10])
        return f"{'did you mean' if close else 'existing workloads'}: {shown}"

    def _workload(self, target: str, namespace: str | None, kinds: tuple[str, ...]) -> Workload:
        workload = self.resolve(target, namespace)
        if workload.kind not in kinds:
            raise ExecutorError(
                ErrorKind.PERMANENT,
                f"{target!r} is a {workload.kind.lower()}, and this operation needs a"
                f" {' or '.join(k.lower() for k in kinds)}",
            )
        return workload

    # --- read operations ----------------------------------------------------------------

    @executor_method
    def list_services(
        self, namespace: str, include_stopped: bool = True, selector: str | None = None
    ) -> MethodOutput:
        namespace, _ = self._namespace_and_name("-", namespace)
        pods = self._json(
            "GET", f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": selector}
        ).get("items", [])
        items: list[dict[str, Any]] = []
        for kind in _WORKLOAD_KINDS:
            listed = self._json(
                "GET", _workload_path(kind, namespace, None), {"labelSelector": selector}
            )
            for obj in listed.get("items", []):
                item = _workload_summary(kind, obj, pods)
                if include_stopped or item["desired"]:
                    items.append(item)
        lines = [
            f"{i['kind'].lower()}/{i['name']}: {i['state']}, {i['ready']}/{i['desired']} ready,"
            f" {i['restarts']} restarts, age {i['age']}"
            for i in items
        ]
        return MethodOutput(output="\n".join(lines) or f"no workloads in {namespace}", data=items)

    @executor_method
    def get_status(self, target: str, namespace: str | None = None) -> MethodOutput:
        workload = self.resolve(target, namespace)
        if not workload.pods:
            raise ExecutorError(
                ErrorKind.PERMANENT,
                f"{workload.kind.lower()} {workload.name!r} has no pods (selector"
                f" {workload.selector})",
                "a scaled-to-zero or not yet scheduled workload has no status to read",
            )
        failures = self._probe_failures(workload)
        items = [item for pod in workload.pods for item in _container_statuses(pod, failures)]
        lines = []
        for i in items:
            text = f"{i['pod']}/{i['container']}: {i['phase']}, {i['state']}"
            if i["reason"] or i["waiting_reason"]:
                text += f" ({i['reason'] or i['waiting_reason']})"
            text += f", restarts {i['restart_count']}, ready {str(i['ready']).lower()}"
            last = i["last_terminated"]
            if last:
                text += f"; last exit: {last['reason']} (exit code {last['exit_code']})"
            text += f", node {i['node'] or '-'}"
            if i["message"]:
                text += f"; {i['message']}"
            if i["probe_output"]:
                text += f"; probe: {i['probe_output']}"
            lines.append(text)
        return MethodOutput(output="\n".join(lines), data=items)

    def _probe_failures(self, workload: Workload) -> dict[tuple[str, str | None], list[Probe]]:
        """The kubelet's recent `Unhealthy` events of the workload's pods, by (pod, container):
        one list call for the namespace (narrowed by field selectors the API server supports),
        None as the container when the event names no fieldPath. A namespace without events
        (404) or a role without events access has no probe failures to show."""
        pods = {p["metadata"]["name"]: p["metadata"].get("uid") for p in workload.pods}
        selector = "involvedObject.kind=Pod,reason=Unhealthy"
        if len(pods) == 1:
            selector += f",involvedObject.name={next(iter(pods))}"
        try:
            listed = self._json(
                "GET",
                f"/api/v1/namespaces/{workload.namespace}/events",
                {"fieldSelector": selector},
            )
        except ExecutorError as exc:
            if exc.kind is ErrorKind.DENIED or exc.message.startswith("not found"):
                return {}
            raise
        cutoff = time.time() - self.environment.connection.probe_event_window_seconds
        found: dict[tuple[str, str | None], list[Probe]] = {}
        for event in listed.get("items") or []:
            obj = event.get("involvedObject") or {}
            name, uid = str(obj.get("name") or ""), obj.get("uid")
            if obj.get("kind") != "Pod" or name not in pods:
                continue
            if uid and pods[name] and uid != pods[name]:
                continue  # an earlier pod of the same name (a StatefulSet's replica)
            at = _event_time(event)
            message = str(event.get("message") or "")
            kind = _PROBE_FAILURE.match(message)
            if kind is None or (at is not None and at < cutoff):
                continue
            container = _FIELD_PATH.fullmatch(str(obj.get("fieldPath") or ""))
            key = (name, container.group(1) if container else None)
            found.setdefault(key, []).append(Probe(kind.group(1).lower(), at or 0.0, message))
        return found

    @executor_method
    def get_logs(
        self,
        target: str,
        lines: int,
        max_bytes: int,
        namespace: str | None = None,
        since: str | None = None,
        timestamps: bool = False,
        previous: bool = False,
        level: str | None = None,
        level_patterns: dict[str, str] | None = None,
        pattern: str | None = None,
    ) -> MethodOutput:
        """Each pod's containers. Without `previous`, a container that restarted and is not
        running now also gets its previous instance's log: that is where a crash loop says why
        (`kubectl logs --previous`)."""
        keep = line_filter(level, level_patterns or {}, pattern)
        workload = self.resolve(target, namespace)
        reads = [
            (status, earlier)
            for pod in workload.pods
            for status in _container_statuses(pod)
            for earlier in instances_to_read(
                previous, status["restart_count"] > 0 and status["state"] != "running"
            )
        ]
        share = byte_share(max_bytes, len(reads))
        items = [
            self._log(workload.namespace, status, earlier, lines, share, since, timestamps, keep)
            for status, earlier in reads
        ]
        several = len({(i["pod"], i["container"]) for i in items}) > 1
        output = render_logs(items, lambda i: f"{i['pod']}/{i['container']}" if several else "")
        return MethodOutput(output=output, data=items)

    def _log(
        self,
        namespace: str,
        status: dict[str, Any],
        previous: bool,
        lines: int,
        max_bytes: int,
        since: str | None,
        timestamps: bool,
        keep: Callable[[str], bool],
    ) -> dict[str, Any]:
        item: dict[str, Any] = {
            "pod": status["pod"],
            "container": status["container"],
            "previous": previous,
            **kept_lines([], bool, max_bytes, self.redactor),
            "error": None,
        }
        # The API keeps the *first* limitBytes of the tail; ask for twice the cap so that
        # cap_tail can keep the newest lines, and say so when even that was cut.
        api_limit = 2 * max_bytes
        query = {
            "container": status["container"],
            "tailLines": lines,
            "limitBytes": api_limit,
            "timestamps": timestamps or None,
            "previous": previous or None,
            "sinceSeconds": duration_seconds(since) if since else None,
        }
        try:
            raw = self._request(
                "GET", f"/api/v1/namespaces/{namespace}/pods/{status['pod']}/log", query
            )
        except ExecutorError as exc:
            if exc.kind is not ErrorKind.PERMANENT:
                raise
            item["error"] = exc.message  # e.g. no previous instance: say so, keep the others
            return item
        all_lines = raw.data.decode("utf-8", errors="replace").splitlines()
        if len(raw.data) >= api_limit and all_lines:
            all_lines.pop()  # cut mid-line by limitBytes
            item["error"] = (
                f"the API cut the log at limitBytes={api_limit}; the newest lines may be"
                " missing: ask for fewer lines"
            )
        item.update(kept_lines(all_lines, keep, max_bytes, self.redactor))
        return item

    @executor_method
    def get_events(
        self, target: str, since: str, limit: int, namespace: str | None = None
    ) -> MethodOutput:
        workload = self.resolve(target, namespace)
        # (kind, name): a Service or ConfigMap that shares the workload's name is not it.
        involved = {("Pod", p["metadata"]["name"]) for p in workload.pods}
        involved.add((workload.kind, workload.name))
        if workload.kind == "Deployment":
            involved |= {
                ("ReplicaSet", rs["metadata"]["name"]) for rs in self._replica_sets(workload)
            }
        cutoff = time.time() - duration_seconds(since)
        listed = self._json("GET", f"/api/v1/namespaces/{workload.namespace}/events")
        events = []
        for event in listed.get("items", []):
            obj = event.get("involvedObject") or {}
            at = _event_time(event)
            if (obj.get("kind"), obj.get("name")) in involved and (at is None or at >= cutoff):
                events.append(
                    {
                        "time": _iso(at),
                        "type": event.get("type"),
                        "reason": event.get("reason"),
                        "object": f"{str(obj.get('kind', '')).lower()}/{obj.get('name')}",
                        "message": event.get("message"),
                        "count": event.get("count") or 1,
                    }
                )
        events.sort(key=lambda e: e["time"] or "")
        events = events[-limit:]
        output = "\n".join(
            f"{e['time']} {e['type']} {e['reason']} {e['object']}: {e['message']}"
            + (f" (x{e['count']})" if e["count"] > 1 else "")
            for e in events
        )
        return MethodOutput(output=output or f"no events since {since}", data=events)

    @executor_method
    def get_metrics(self, target: str, namespace: str | None = None) -> MethodOutput:
        workload = self.resolve(target, namespace)
        path = f"/apis/metrics.k8s.io/v1beta1/namespaces/{workload.namespace}/pods"
        by = "fieldSelector" if workload.kind == "Pod" else "labelSelector"
        try:
            listed = self._json("GET", path, {by: workload.selector})
        except ExecutorError as exc:
            if exc.kind is ErrorKind.PERMANENT and exc.message.startswith("not found"):
                raise ExecutorError(
                    ErrorKind.UNSUPPORTED,
                    "this cluster does not serve metrics.k8s.io (no metrics-server)",
                    "install metrics-server to get CPU and memory use per pod",
                ) from exc
            raise
        usage = {m["metadata"]["name"]: m for m in listed.get("items", [])}
        items = []
        for pod in workload.pods:
            name = pod["metadata"]["name"]
            measured = {
                c["name"]: c.get("usage", {}) for c in usage.get(name, {}).get("containers", [])
            }
            for container in pod["spec"].get("containers", []):
                resources = container.get("resources") or {}
                limits = resources.get("limits") or {}
                used = measured.get(container["name"], {})
                cpu, cpu_limit = _millicores(used.get("cpu")), _millicores(limits.get("cpu"))
                memory_percent = percent(_bytes(used.get("memory")), _bytes(limits.get("memory")))
                items.append(
                    {
                        "pod": name,
                        "container": container["name"],
                        "measured": container["name"] in measured,
                        "cpu_millicores": _millicores(used.get("cpu")),
                        "memory_bytes": _bytes(used.get("memory")),
                        "requests": resources.get("requests") or {},
                        "limits": resources.get("limits") or {},
                        "memory_percent_of_limit": memory_percent,
                        "cpu_percent_of_limit": percent(cpu, cpu_limit),
                        # The normalised fields: of the limit; CPU of one core without one.
                        "cpu_percent": percent(cpu, cpu_limit or _ONE_CORE_MILLICORES),
                        "memory_percent": memory_percent,
                    }
                )
        lines = [
            f"{i['pod']}/{i['container']}: "
            + (
                f"cpu {i['cpu_millicores']}m (limit {i['limits'].get('cpu', 'none')}), memory "
                f"{_mib(i['memory_bytes'])} (limit {i['limits'].get('memory', 'none')})"
                if i["measured"]
                else "no sample yet"
            )
            for i in items
        ]
        return MethodOutput(output="\n".join(lines), data=items)

    @executor_method
    def describe(self, target: str, namespace: str | None = None) -> MethodOutput:
        workload = self.resolve(target, namespace)
        obj = workload.obj
        spec = obj.get("spec", {})
        template = spec.get("template", {}).get("spec", {}) if workload.kind != "Pod" else spec
        if workload.kind == "Selector":
            template = workload.pods[0]["spec"] if workload.pods else {}
        metadata = obj.get("metadata", {})
        status = obj.get("status", {})
        data = {
            "kind": workload.kind,
            "name": workload.name,
            "namespace": workload.namespace,
            "selector": workload.selector,
            "replicas": spec.get("replicas"),
            "strategy": (spec.get("strategy") or spec.get("updateStrategy") or {}).get("type"),
            "revision": (metadata.get("annotations") or {}).get(REVISION),
            "generation": metadata.get("generation"),
            "observed_generation": status.get("observedGeneration"),
            "rollout": _rollout(workload.kind, obj),
            "containers": [_container_spec(c) for c in template.get("containers", [])],
        }
        lines = [
            f"{workload.kind.lower()}/{workload.name} in {workload.namespace}: replicas"
            f" {data['replicas']}, strategy {data['strategy']}, revision {data['revision']},"
            f" rollout {data['rollout']}"
        ]
        for c in data["containers"]:
            lines.append(
                f"  {c['name']}: image {c['image']}, requests {c['requests'] or 'none'}, limits"
                f" {c['limits'] or 'none'}, liveness {c['liveness'] or 'none'}, readiness"
                f" {c['readiness'] or 'none'}, env {', '.join(c['env']) or 'none'}"
            )
        return MethodOutput(output="\n".join(lines), data=data)

    @executor_method
    def exec_diagnostic(self, target: str, **_: Any) -> MethodOutput:
        raise ExecutorError(
            ErrorKind.UNSUPPORTED,
            "exec_diagnostic is not available on Kubernetes: UICI's role has no pods/exec",
            "pods/exec would let UICI run any command in any pod it can see; it is left out"
            " of the RBAC on purpose",
        )

    @executor_method
    def check_endpoint(self, target: str, **_: Any) -> MethodOutput:
        raise ExecutorError(
            ErrorKind.UNSUPPORTED,
            "check_endpoint is not available on Kubernetes: pod IPs are not reachable from"
            " outside the cluster and UICI's role has no pods/exec or pods/proxy",
            "watch the readiness probe instead (get_status shows the Ready condition)",
        )

    # --- write operations ---------------------------------------------------------------

    @executor_method
    def restart_service(
        self, target: str, namespace: str | None = None, intent: str | None = None
    ) -> MethodOutput:
        """`kubectl rollout restart`: exactly one patch of the pod template's restartedAt
        annotation. Its value names the remediation intent, so repeating the same intent
        patches in the same value and the controller rolls nothing."""
        # DaemonSets too could be restarted so, but UICI's write role patches only deployments
        # and statefulsets (deployments/kubernetes/rbac-write.yaml): say so before the 403.
        workload = self._workload(target, namespace, _SCALABLE)
        value = intent or f"manual@{_iso(time.time())}"
        annotations = workload.obj["spec"]["template"]["metadata"].get("annotations") or {}
        before = annotations.get(RESTARTED_AT)
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: value}}}}}
        path = _workload_path(workload.kind, workload.namespace, workload.name)
        patched = self._patch(path, body, reread=lambda: body)  # idempotent: resend as is
        data = {
            "kind": workload.kind,
            "name": workload.name,
            "namespace": workload.namespace,
            "restarted_at": value,
            "already_applied": before == value,
            "generation": patched["metadata"].get("generation"),
        }
        verb = "already restarted for this intent" if before == value else "rollout restarted"
        return MethodOutput(output=f"{workload.kind.lower()}/{workload.name}: {verb}", data=data)

    @executor_method
    def scale_service(
        self, target: str, replicas: int, namespace: str | None = None
    ) -> MethodOutput:
        low, high = self.connection.min_replicas, self.connection.max_replicas
        if not low <= replicas <= high:
            raise ExecutorError(
                ErrorKind.DENIED,
                f"replicas={replicas} is outside this environment's bounds [{low}, {high}]",
                "change connection.min_replicas / max_replicas in environments.yml",
            )
        workload = self._workload(target, namespace, _SCALABLE)
        before = workload.obj["spec"].get("replicas")
        path = _workload_path(workload.kind, workload.namespace, workload.name) + "/scale"
        body = {"spec": {"replicas": replicas}}
        scale = self._patch(path, body, reread=lambda: body)  # absolute: resend as is
        data = {
            "kind": workload.kind,
            "name": workload.name,
            "namespace": workload.namespace,
            "previous_replicas": before,
            "replicas": scale.get("spec", {}).get("replicas"),
        }
        return MethodOutput(
            output=f"{workload.kind.lower()}/{workload.name}: replicas {before} -> {replicas}",
            data=data,
        )

    @executor_method
    def rollback_service(
        self, target: str, namespace: str | None = None, revision: int | None = None
    ) -> MethodOutput:
        """`kubectl rollout undo`: the deployment's pod template replaced by the one of the
        ReplicaSet at `revision` (default: the one before the current)."""
        workload = self._workload(target, namespace, ("Deployment",))
        if workload.obj["spec"].get("paused"):
            raise ExecutorError(
                ErrorKind.PERMANENT,
                f"deployment {workload.name!r} is paused: a rollback would not roll out",
                "resume it first (kubectl rollout resume), as kubectl rollout undo requires",
            )

        revisions: dict[str, int] = {}  # filled by body(), which a 409 may call again

        def body() -> list[dict[str, Any]]:
            current = self._json(
                "GET", _workload_path("Deployment", workload.namespace, workload.name)
            )
            fresh = Workload(
                workload.kind, workload.name, workload.namespace, workload.selector, current
            )
            source, current_revision = self._rollback_source(fresh, revision)
            template = json.loads(json.dumps(source["spec"]["template"]))
            template.get("metadata", {}).get("labels", {}).pop("pod-template-hash", None)
            revisions.update(current=current_revision, target=_revision(source))
            # `generation` moves only when the spec does (resourceVersion also moves with
            # every status update, which a failing rollout makes often).
            return [
                {"op": "test", "path": "/metadata/generation",
                 "value": current["metadata"].get("generation")},
                {"op": "replace", "path": "/spec/template", "value": template},
            ]  # fmt: skip

        path = _workload_path("Deployment", workload.namespace, workload.name)
        self._patch(path, body(), reread=body)
        current_revision, target_revision = revisions["current"], revisions["target"]
        return MethodOutput(
            output=f"deployment/{workload.name}: rolled back from revision {current_revision}"
            f" to the template of revision {target_revision}",
            data={
                "name": workload.name,
                "namespace": workload.namespace,
                "from_revision": current_revision,
                "to_revision": target_revision,
            },
        )

    def _replica_sets(self, workload: Workload) -> list[dict[str, Any]]:
        uid = workload.obj.get("metadata", {}).get("uid")
        listed = self._json(
            "GET",
            f"/apis/apps/v1/namespaces/{workload.namespace}/replicasets",
            {"labelSelector": workload.selector},
        )
        return [
            rs
            for rs in listed.get("items", [])
            if any(o.get("uid") == uid for o in rs["metadata"].get("ownerReferences") or [])
        ]

    def _rollback_source(
        self, workload: Workload, revision: int | None
    ) -> tuple[dict[str, Any], int]:
        history = sorted(self._replica_sets(workload), key=_revision)
        current = _revision_of(workload.obj) or (history and _revision(history[-1])) or 0
        if revision is None:
            older = [rs for rs in history if _revision(rs) < current]
            if not older:
                raise ExecutorError(
                    ErrorKind.PERMANENT,
                    f"deployment {workload.name!r} has no revision before {current} to return to",
                    "a deployment rolled out once has nothing to roll back to",
                )
            return older[-1], current
        for rs in history:
            if _revision(rs) == revision:
                return rs, current
        known = ", ".join(str(_revision(rs)) for rs in history) or "none"
        raise ExecutorError(
            ErrorKind.PERMANENT,
            f"deployment {workload.name!r} has no revision {revision} (known: {known})",
        )

    def effect_observed(
        self, operation: str, target: str, since: float, intent: str | None = None
    ) -> bool | None:
        """restart: the template carries this intent's restartedAt (another restart written
        since, by a person or another alert, is not this one)."""
        if operation != "restart_service":
            return None
        try:
            workload = self._workload(target, None, _SCALABLE)
            annotations = workload.obj["spec"]["template"]["metadata"].get("annotations") or {}
        except Exception:  # cannot tell: the caller must not repeat blindly
            return None
        value = annotations.get(RESTARTED_AT)
        if intent is not None:
            return value == intent
        written = _parse_time(str(value or "").rpartition("@")[2])
        return written is not None and written.timestamp() >= since - 1


# --- helpers -----------------------------------------------------------------------------


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _as_response(exc: ApiException) -> Any:
    """An ApiException carries what the server answered; look at it like a response."""

    class Answer:
        status = exc.status or 0
        headers = exc.headers or {}
        data = (exc.body or b"") if isinstance(exc.body, bytes) else str(exc.body or "").encode()

    return Answer()


def _status_message(response: Any, redactor: Redactor) -> str:
    """What the API said, redacted whole before it is cut to 300 characters."""
    try:
        body = json.loads(response.data or b"{}")
    except ValueError:
        return redactor.cut((response.data or b"").decode("utf-8", errors="replace"), 300)
    if isinstance(body, dict) and body.get("message"):
        return redactor(str(body["message"]))
    return redactor.cut(str(body), 300)


def _workload_path(kind: str, namespace: str, name: str | None) -> str:
    plural = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}
    path = f"/apis/apps/v1/namespaces/{namespace}/{plural[kind]}"
    return f"{path}/{name}" if name else path


def _selector(selector: dict[str, Any]) -> str:
    """A LabelSelector object as the labelSelector query string."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif operator == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif operator == "Exists":
            parts.append(key)
        elif operator == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def _pod_matches(pod: dict[str, Any], selector: dict[str, Any]) -> bool:
    labels = pod["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if (
            (operator == "In" and labels.get(key) not in (values or []))
            or (operator == "NotIn" and present and labels[key] in (values or []))
            or (operator == "Exists" and not present)
            or (operator == "DoesNotExist" and present)
        ):
            return False
    return True


@dataclass(frozen=True)
class Probe:
    """A failed probe the kubelet reported (an `Unhealthy` event)."""

    kind: str  # liveness, readiness or startup
    at: float
    message: str


def _container_statuses(
    pod: dict[str, Any], failures: dict[tuple[str, str | None], list[Probe]] | None = None
) -> list[dict[str, Any]]:
    """One item per container: what the rules and a person need to see how it is doing, with
    the normalised fields (infrastructure/executors/status.py). `failures` are the pod's recent
    probe failures (`_probe_failures`)."""
    status = pod.get("status", {})
    pod_name = pod["metadata"]["name"]
    conditions = {c["type"]: c.get("status") for c in status.get("conditions") or []}
    scheduled: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {}
    )
    # Never scheduled: no container has a status yet; the scheduler's condition says why.
    unschedulable = (
        scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
    )
    statuses = {c["name"]: c for c in status.get("containerStatuses") or []}
    items = []
    for container in pod["spec"].get("containers", []):
        name = container["name"]
        current = statuses.get(name, {})
        state_name, state = next(iter((current.get("state") or {"waiting": {}}).items()))
        state = state or {}
        last = (current.get("lastState") or {}).get("terminated")
        terminated = state if state_name == "terminated" else None
        oom = any(t and t.get("reason") == "OOMKilled" for t in (terminated, last))
        waiting_reason = state.get("reason") if state_name == "waiting" else None
        message = state.get("message") or (last or {}).get("message")
        if waiting_reason == "CrashLoopBackOff" and (last or {}).get("message"):
            # "back-off 5m0s restarting failed container" says nothing; how it ended does.
            message = (last or {})["message"]
        if unschedulable and not current:
            waiting_reason = scheduled.get("reason")
            message = scheduled.get("message")
        probes = sorted(
            [
                *(failures or {}).get((pod_name, name), []),
                *(failures or {}).get((pod_name, None), []),
            ],
            key=lambda p: p.at,
        )
        fatal = [p for p in probes if p.kind in ("liveness", "startup")]
        checked = bool(container.get("livenessProbe") or container.get("startupProbe"))
        healthy = False if fatal else (True if checked and state_name == "running" else None)
        shown = (fatal or probes)[-1].message if probes else None
        started = _parse_time(state.get("startedAt") or "") if state_name == "running" else None
        items.append(
            {
                "pod": pod_name,
                "container": name,
                "phase": status.get("phase"),
                **normalised(
                    state=state_name,
                    exit_code=(terminated or last or {}).get("exitCode"),
                    oom_killed=oom,
                    restart_count=current.get("restartCount", 0),
                    up_seconds=max(0.0, time.time() - started.timestamp()) if started else None,
                    healthy=healthy,
                    ready=bool(current.get("ready")),
                    waiting_reason=waiting_reason,
                    message=message,
                    probe_output=shown,
                ),
                "reason": state.get("reason"),
                "last_terminated": None
                if not last
                else {
                    "reason": last.get("reason"),
                    "exit_code": last.get("exitCode"),
                    "message": last.get("message"),
                    "finished_at": last.get("finishedAt"),
                },
                "image": current.get("image") or container.get("image"),
                "node": pod["spec"].get("nodeName"),
                "conditions": conditions,
                "health": None,
            }
        )
    return items


def _workload_summary(kind: str, obj: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    spec, status = obj.get("spec", {}), obj.get("status", {})
    own = [p for p in pods if _pod_matches(p, spec.get("selector") or {})]
    if kind == "DaemonSet":
        desired, ready = status.get("desiredNumberScheduled", 0), status.get("numberReady", 0)
    else:
        desired, ready = spec.get("replicas", 1), status.get("readyReplicas", 0)
    restarts = sum(
        c.get("restartCount", 0)
        for p in own
        for c in p.get("status", {}).get("containerStatuses") or []
    )
    created = _parse_time(obj["metadata"].get("creationTimestamp") or "")
    # The sweep reads `state` and `health`: a waiting reason such as CrashLoopBackOff says more
    # than a phase, and a workload with fewer ready pods than desired is unhealthy.
    waiting = [
        c["state"]["waiting"].get("reason")
        for p in own
        for c in p.get("status", {}).get("containerStatuses") or []
        if (c.get("state") or {}).get("waiting")
    ] + [
        "Unschedulable"
        for p in own
        for c in p.get("status", {}).get("conditions") or []
        if c.get("type") == "PodScheduled"
        and c.get("status") == "False"
        and c.get("reason") == "Unschedulable"
    ]
    state = next((r for r in waiting if r), "running" if ready >= desired else "degraded")
    if not desired:
        state = "scaled to zero"
    return {
        "kind": kind,
        "state": state,
        "health": None if not desired else ("healthy" if ready >= desired else "unhealthy"),
        "name": obj["metadata"]["name"],
        "namespace": obj["metadata"].get("namespace"),
        "desired": desired,
        "ready": ready,
        "pods": len(own),
        "restarts": restarts,
        "age": _age(created),
        "created": obj["metadata"].get("creationTimestamp"),
    }


def _container_spec(container: dict[str, Any]) -> dict[str, Any]:
    resources = container.get("resources") or {}
    env = []
    for variable in container.get("env") or []:
        source = variable.get("valueFrom")
        if source:
            ref: dict[str, Any] = next(iter(source.values()), {})
            env.append(f"{variable['name']}=<from {next(iter(source))} {ref.get('name', '')}>")
        else:
            env.append(f"{variable['name']}={REDACTED}")
    return {
        "name": container["name"],
        "image": container.get("image"),
        "command": container.get("command") or [],
        "args": container.get("args") or [],
        "ports": [p.get("containerPort") for p in container.get("ports") or []],
        "requests": resources.get("requests") or {},
        "limits": resources.get("limits") or {},
        "liveness": _probe(container.get("livenessProbe")),
        "readiness": _probe(container.get("readinessProbe")),
        "startup": _probe(container.get("startupProbe")),
        "env": env,
    }


def _probe(probe: dict[str, Any] | None) -> str | None:
    if not probe:
        return None
    if "httpGet" in probe:
        how = f"GET {probe['httpGet'].get('path', '/')} :{probe['httpGet'].get('port')}"
    elif "tcpSocket" in probe:
        how = f"tcp :{probe['tcpSocket'].get('port')}"
    elif "exec" in probe:
        how = "exec " + " ".join(probe["exec"].get("command") or [])
    elif "grpc" in probe:
        how = f"grpc :{probe['grpc'].get('port')}"
    else:
        how = "unknown"
    return (
        f"{how} every {probe.get('periodSeconds', 10)}s, timeout {probe.get('timeoutSeconds', 1)}s,"
        f" failure threshold {probe.get('failureThreshold', 3)}"
    )


def _rollout(kind: str, obj: dict[str, Any]) -> str:
    if kind not in ("Deployment", "StatefulSet"):
        return "n/a"
    spec, status = obj.get("spec", {}), obj.get("status", {})
    if status.get("observedGeneration", 0) < obj["metadata"].get("generation", 0):
        return "waiting for the controller to observe the new spec"
    wanted = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    available = status.get("availableReplicas", status.get("readyReplicas", 0))
    if updated < wanted:
        return f"in progress: {updated} of {wanted} updated"
    if available < wanted:
        return f"in progress: {available} of {wanted} available"
    return "complete"


def _revision(obj: dict[str, Any]) -> int:
    return _revision_of(obj) or 0


def _revision_of(obj: dict[str, Any]) -> int | None:
    value = (obj.get("metadata", {}).get("annotations") or {}).get(REVISION)
    return int(value) if value and str(value).isdigit() else None


def _event_time(event: dict[str, Any]) -> float | None:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        if event.get(key):
            parsed = _parse_time(event[key])
            if parsed is not None:
                return parsed.timestamp()
    created = _parse_time(event.get("metadata", {}).get("creationTimestamp") or "")
    return created.timestamp() if created else None


def _parse_time(value: str) -> datetime | None:
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value or "")
    if match is None:
        return None
    fraction = (match.group(2) or ".0")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(f"{match.group(1)}{fraction}{zone}")


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(created: datetime | None) -> str:
    if created is None:
        return "?"
    seconds = max(0, int(time.time() - created.timestamp()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "m": 1e-3, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip


def _bytes(quantity: str | None) -> int | None:
    if not quantity:
        return None
    match = re.match(r"^(\d+(?:\.\d+)?)([A-Za-z]*)$", quantity)
    if match is None:
        return None
    return int(float(match.group(1)) * _SUFFIX.get(match.group(2), 1))


def _millicores(quantity: str | None) -> int | None:
    if not quantity:
        return None
    if quantity.endswith("n"):
        return int(quantity[:-1]) // 1_000_000
    if quantity.endswith("u"):
        return int(quantity[:-1]) // 1_000
    if quantity.endswith("m"):
        return int(quantity[:-1])
    return int(float(quantity) * 1000)


def _mib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**20:.1f} MiB"
