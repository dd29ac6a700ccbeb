"""The Oracle Cloud executor: Container Instances, Logging Search and Monitoring through the
official `oci` SDK.

A target is a container instance, by display name or OCID, optionally with one of its
containers: `instance/container`. Results have one item per container; get_status items carry
the normalised fields every executor reports (infrastructure/executors/status.py), from the
container's lifecycle state and details, exit code, restart attempts and health checks.

Authentication is an API key from an OCI config file and profile (the key itself is read from
the file the profile names, never from UICI's configuration), or instance / resource
principals. `service_endpoints` points a service at a private endpoint (or a test double).

Errors come from the SDK's ServiceError: 401 and 404 are permanent (OCI also answers 404 when
a policy is missing: the message says so), 409/412 re-read the instance and try once more,
429 and 5xx are retryable with a back-off honouring Retry-After. The SDK's own retries are off
(NoneRetryStrategy) so that this executor alone decides: reads are retried, writes never are.
Start, stop and restart return a work request, which is polled to its end; recovery after a
crash looks for that work request instead of acting again.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import oci
import requests

from infrastructure.configuration.models import EnvironmentType, OCIConnection, OCIEnvironment
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
from infrastructure.executors.status import normalised
from infrastructure.redaction import REDACTED, Redactor
from infrastructure.registry import duration_seconds
from infrastructure.retry import parse_retry_after, retry_delay

METRIC_NAMESPACE = "oci_computecontainerinstance"
_ACTIONS = {
    "restart_service": ("restart_container_instance", "RESTART"),
    "start_service": ("start_container_instance", "START"),
    "stop_service": ("stop_container_instance", "STOP"),
}
_DONE = ("SUCCEEDED", "FAILED", "CANCELED")
_SEARCH_LIMIT = 1000  # results per Logging Search call
# A pattern with no regular-expression syntax and no quote can go into a search query as is.
_LITERAL = re.compile(r"[A-Za-z0-9 _:=,@#%/-]+")
# OCI's clock stamps a work request, UICI's clock the intent: allow this much disagreement.
# (The policy's cool-down keeps a second action on the same target out of this window.)
_CLOCK_SKEW_SECONDS = 60
# A container's lifecycle state as the rules and a person read it.
_STATE = {"ACTIVE": "running", "INACTIVE": "exited", "FAILED": "failed", "CREATING": "starting"}
# Why a container that is not ACTIVE does not run, in the normalised `waiting_reason`.
_WAITING = {"CREATING": "Creating", "UPDATING": "Updating", "DELETING": "Deleting"}
# lifecycleDetails that say the kernel's OOM killer ended the container.
_OOM = re.compile(r"(?i)\boom|out of memory")


class OCIExecutor(EnvironmentExecutor):
    environment_type = EnvironmentType.OCI

    def __init__(self, name: str, environment: OCIEnvironment) -> None:
        super().__init__(name, environment)
        self.connection: OCIConnection = environment.connection
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    # --- clients ------------------------------------------------------------------------

    def _sdk_config(self) -> tuple[dict[str, Any], Any]:
        conn = self.connection
        if conn.auth == "api_key":
            path = conn.config_file or "~/.oci/config"
            try:
                config = oci.config.from_file(file_location=path, profile_name=conn.profile)
                config["region"] = conn.region
                oci.config.validate_config(config)
            except (oci.exceptions.ClientError, OSError, ValueError) as exc:
                raise ExecutorError(
                    ErrorKind.PERMANENT,
                    f"cannot use the OCI config file {path} (profile {conn.profile}): {exc}",
                    "check connection.config_file and connection.profile in environments.yml;"
                    " the profile names the key file, which must be readable",
                ) from exc
            return config, None
        try:
            if conn.auth == "instance_principal":
                signer = oci.auth.signers.InstancePrincipalsSecurityTokenSigner()
            else:
                signer = oci.auth.signers.get_resource_principals_signer()
        except Exception as exc:  # the SDK raises several kinds here; all mean "no principal"
            raise ExecutorError(
                ErrorKind.PERMANENT,
                f"cannot get an OCI {conn.auth.replace('_', ' ')} token: {exc}",
                "run inside OCI with a dynamic group and policy, or use auth: api_key",
            ) from exc
        return {"region": conn.region}, signer

    def _client(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                config, signer = self._sdk_config()
                factory = {
                    "container_instances": oci.container_instances.ContainerInstanceClient,
                    "logging_search": oci.loggingsearch.LogSearchClient,
                    "monitoring": oci.monitoring.MonitoringClient,
                }[service]
                options: dict[str, Any] = {
                    "retry_strategy": oci.retry.NoneRetryStrategy(),
                    # The SDK's default circuit breaker would raise its own error after 10
                    # failures; this executor classifies and retries by itself.
                    "circuit_breaker_strategy": oci.circuit_breaker.NoCircuitBreakerStrategy(),
                    "timeout": (
                        self.connection.connect_timeout_seconds,
                        self.connection.timeout_seconds,
                    ),
                }
                if signer is not None:
                    options["signer"] = signer
                endpoint = self.connection.service_endpoints.get(service)  # type: ignore[call-overload]
                if endpoint:
                    options["service_endpoint"] = endpoint
                try:
                    self._clients[service] = factory(config, **options)
                except (oci.exceptions.ClientError, OSError, ValueError) as exc:
                    # the signer reads the key file here: missing, unreadable, encrypted
                    raise ExecutorError(
                        ErrorKind.PERMANENT,
                        f"cannot load the OCI API key named by profile {self.connection.profile}:"
                        f" {type(exc).__name__}: {exc}",
                        "check key_file (and pass_phrase) in the OCI config file",
                    ) from exc
            return self._clients[service]

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.base_client.session.close()
            self._clients.clear()

    def check_connection(self) -> MethodOutput:
        listed = self._call(
            "list_container_instances", compartment_id=self.connection.compartment_id, limit=1
        )
        return MethodOutput(
            output=f"OCI {self.connection.region}: compartment reachable",
            data={"instances_seen": len(listed.data.items)},
        )

    # --- calls with error classes -------------------------------------------------------

    def _call(
        self,
        method: str,
        *args: Any,
        service: str = "container_instances",
        write: bool = False,
        **kwargs: Any,
    ) -> Any:
        client = self._client(service)
        attempts = 1 if write else 1 + self.connection.read_retries
        for attempt in range(1, attempts + 1):
            try:
                return getattr(client, method)(*args, **kwargs)
            except oci.exceptions.ServiceError as exc:
                retryable = exc.status == 429 or exc.status >= 500
                if retryable and attempt < attempts:
                    time.sleep(self._backoff(exc.headers or {}, attempt))
                    continue
                raise self._error(exc, method, write) from exc
            except (oci.exceptions.RequestException, requests.exceptions.RequestException) as exc:
                if not write and attempt < attempts:
                    time.sleep(self._backoff({}, attempt))
                    continue
                raise ExecutorError(
                    ErrorKind.RETRYABLE,
                    f"cannot reach OCI ({method}): {exc}",
                    "check the network, the region and connection.service_endpoints"
                    + (
                        "; the action may have been sent: observe before repeating" if write else ""
                    ),
                ) from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    def _backoff(self, headers: dict[str, Any], attempt: int) -> float:
        return retry_delay(
            parse_retry_after(headers.get("Retry-After") or headers.get("retry-after")),
            attempt,
            self.connection.retry_backoff_seconds,
            self.connection.retry_after_cap_seconds,
        )

    def _error(self, exc: oci.exceptions.ServiceError, method: str, write: bool) -> ExecutorError:
        status, code, message = exc.status, exc.code, exc.message
        what = f"OCI answered {status} {code} to {method}: {message}"
        if status == 401:
            return ExecutorError(
                ErrorKind.PERMANENT,
                what,
                "the request signature was refused: check the profile's user, fingerprint and"
                " key file (the key must match the API key uploaded for that user)",
            )
        if status == 404:
            return ExecutorError(
                ErrorKind.PERMANENT,
                what,
                "OCI answers 404 both for a missing resource and for a missing permission:"
                " check the OCID and the IAM policy (deployments/oci/)",
            )
        if status == 409 and code == "IncorrectState":
            return ExecutorError(
                ErrorKind.PERMANENT,
                what,
                "the instance is not in a state that allows this action (see get_status)",
            )
        if status in (409, 412):
            return ExecutorError(ErrorKind.RETRYABLE, f"conflict: {what}", "the state changed")
        if status == 429 or status >= 500:
            retry_after = (exc.headers or {}).get("Retry-After")
            hint = f"retry after {retry_after} s" if retry_after else "retry with back-off"
            if write and status >= 500:
                hint += "; the action may have been applied: observe before repeating"
            return ExecutorError(ErrorKind.RETRYABLE, what, hint)
        return ExecutorError(ErrorKind.PERMANENT, what)

    # --- targets --------------------------------------------------------------------------

    def _instances(self) -> list[Any]:
        """Every page, each call classified and retried like any other read."""
        found: list[Any] = []
        page: str | None = None
        while True:
            response = self._call(
                "list_container_instances", self.connection.compartment_id, page=page
            )
            found.extend(response.data.items)
            page = response.headers.get("opc-next-page")
            if not page:
                return found

    def _instance_id(self, name: str) -> str:
        """The OCID of the instance a display name (or OCID) names."""
        if name.startswith("ocid1."):
            return name
        summaries = self._instances()
        live = [s for s in summaries if s.display_name == name and s.lifecycle_state != "DELETED"]
        if not live:
            known = sorted({s.display_name for s in summaries if s.lifecycle_state != "DELETED"})
            raise ExecutorError(
                ErrorKind.PERMANENT,
                f"no container instance named {name!r} in compartment"
                f" {self.connection.compartment_id}",
                f"existing instances: {', '.join(known) or 'none'}",
            )
        if len(live) > 1:
            raise ExecutorError(
                ErrorKind.PERMANENT,
                f"{len(live)} container instances are named {name!r}",
                "name one by its OCID: " + ", ".join(s.id for s in live),
            )
        return str(live[0].id)

    def write_targets(self, target: str) -> list[ResolvedTarget]:
        """The container instance (its actions act on the whole instance)."""
        name = target.partition("/")[0]
        instance_id = self._instance_id(name)
        return [ResolvedTarget(identity=instance_id, name=name)]

    def _resolve(self, target: str) -> tuple[Any, list[Any]]:
        """The instance (full model) and its containers (full models), narrowed to one
        container when the target names it."""
        name, _, container_name = target.partition("/")
        instance_id = self._instance_id(name)
        instance = self._call("get_container_instance", instance_id).data
        containers = [
            self._call("get_container", c.container_id).data for c in instance.containers or []
        ]
        if container_name:
            containers = [c for c in containers if c.display_name == container_name]
            if not containers:
                names = ", ".join(c.display_name for c in instance.containers or [])
                raise ExecutorError(
                    ErrorKind.PERMANENT,
                    f"instance {instance.display_name!r} has no container {container_name!r}",
                    f"its containers: {names or 'none'}",
                )
        return instance, containers

    # --- read operations ----------------------------------------------------------------

    @executor_method
    def list_services(
        self, compartment_id: str, include_stopped: bool = True, selector: str | None = None
    ) -> MethodOutput:
        key, _, value = (selector or "").partition("=")
        items = []
        for summary in self._instances():
            if summary.lifecycle_state == "DELETED":
                continue
            if not include_stopped and summary.lifecycle_state != "ACTIVE":
                continue
            if selector and (summary.freeform_tags or {}).get(key) != value:
                continue
            containers = self._call(
                "list_containers", compartment_id, container_instance_id=summary.id
            ).data.items
            states = [c.lifecycle_state for c in containers]
            unhealthy = summary.lifecycle_state != "ACTIVE" or any(s != "ACTIVE" for s in states)
            items.append(
                {
                    "name": summary.display_name,
                    "id": summary.id,
                    "state": summary.lifecycle_state,
                    "health": "unhealthy" if unhealthy else "healthy",
                    "shape": summary.shape,
                    "containers": [
                        {"name": c.display_name, "state": c.lifecycle_state} for c in containers
                    ],
                }
            )
        lines = [
            f"{i['name']}: {i['state']}, containers "
            + ", ".join(f"{c['name']} {c['state']}" for c in i["containers"])
            for i in items
        ]
        return MethodOutput(output="\n".join(lines) or "no container instances", data=items)

    @executor_method
    def get_status(self, target: str) -> MethodOutput:
        instance, containers = self._resolve(target)
        work = self._call(
            "list_work_requests",
            self.connection.compartment_id,
            resource_id=instance.id,
            limit=5,
            sort_order="DESC",
        ).data.items
        recent = [
            {
                "id": w.id,
                "operation": w.operation_type,
                "status": w.status,
                "accepted": _iso(w.time_accepted),
            }
            for w in work
        ]
        items = [{**_container_status(instance, c), "work_requests": recent} for c in containers]
        lines = []
        for i in items:
            text = (
                f"{i['instance']}/{i['container']}: {i['lifecycle_state']}"
                + (f" ({i['details']})" if i["details"] else "")
                + f", exit code {i['exit_code']}, restarts {i['restart_count']}"
            )
            checks = i["health_checks"]
            if checks:
                text += ", health " + ", ".join(f"{h['name']} {h['status']}" for h in checks)
            if i["probe_output"]:
                text += f"; check: {i['probe_output']}"
            lines.append(text)
        if recent:
            lines.append(
                "work requests: "
                + "; ".join(f"{w['operation']} {w['status']} at {w['accepted']}" for w in recent)
            )
        return MethodOutput(output="\n".join(lines), data=items)

    @executor_method
    def get_logs(
        self,
        target: str,
        lines: int,
        max_bytes: int,
        since: str | None = None,
        level: str | None = None,
        level_patterns: dict[str, str] | None = None,
        pattern: str | None = None,
        previous: bool = False,
    ) -> MethodOutput:
        """Each container's log through RetrieveLogs (a container that restarted and is not
        running also gets its previous run's log), and Logging Search when a scope is
        configured for the instance."""
        keep = line_filter(level, level_patterns or {}, pattern)
        instance, containers = self._resolve(target)
        reads = [
            (c, earlier)
            for c in containers
            for earlier in instances_to_read(
                previous,
                (c.container_restart_attempt_count or 0) > 0 and c.lifecycle_state != "ACTIVE",
            )
        ]
        scope = self.connection.log_search_scopes.get(instance.display_name)
        share = byte_share(max_bytes, len(reads) + (1 if scope else 0))
        items = []
        for c, earlier in reads:
            try:
                response = self._call("retrieve_logs", c.id, is_previous=earlier)
            except ExecutorError as exc:
                if exc.kind is not ErrorKind.PERMANENT:
                    raise
                # e.g. no previous run kept: say so for this one, keep the others
                item = _log_item(c.display_name, earlier, [], lines, share, keep, self.redactor)
                items.append({**item, "error": exc.message})
                continue
            text = response.data.content.decode("utf-8", errors="replace")
            items.append(
                _log_item(
                    c.display_name, earlier, text.splitlines(), lines, share, keep, self.redactor
                )
            )
        if scope:
            try:
                items.append(self._search(scope, since or "1h", lines, share, keep, pattern))
            except ExecutorError as exc:  # the container logs above still stand
                item = _log_item("logging-search", False, [], lines, share, keep, self.redactor)
                items.append({**item, "error": f"{exc.message} ({exc.hint})"})
        several = len(items) > 1
        output = render_logs(items, lambda i: i["source"] if several or i["previous"] else "")
        return MethodOutput(output=output, data=items)

    def _search(
        self,
        scope: str,
        since: str,
        lines: int,
        max_bytes: int,
        keep: Callable[[str], bool],
        pattern: str | None,
    ) -> dict[str, Any]:
        """Logging Search over `since`, newest first. A literal `pattern` is also sent as a
        `where` filter, so the service returns matches instead of the newest lines only (a
        regular expression is applied here, as for every other log)."""
        end = datetime.now(UTC)
        query = f'search "{scope}"'
        if pattern and _LITERAL.fullmatch(pattern):
            query += f" | where data.message = '*{pattern}*'"
        details = oci.loggingsearch.models.SearchLogsDetails(
            time_start=end - timedelta(seconds=duration_seconds(since)),
            time_end=end,
            search_query=f"{query} | sort by datetime desc",
            is_return_field_info=False,
        )
        limit = min(lines, _SEARCH_LIMIT)
        response = self._call("search_logs", details, service="logging_search", limit=limit)
        messages = []
        for result in response.data.results or []:
            data = result.data if isinstance(result.data, dict) else {}
            content = data.get("logContent")
            payload = content.get("data") if isinstance(content, dict) else None
            message = payload.get("message") if isinstance(payload, dict) else payload
            messages.append(str(message if message is not None else result.data))
        messages.reverse()  # oldest first, like a log
        return _log_item("logging-search", False, messages, lines, max_bytes, keep, self.redactor)

    @executor_method
    def get_metrics(self, target: str, window: str, compartment_id: str) -> MethodOutput:
        instance = self._call(
            "get_container_instance", self._instance_id(target.partition("/")[0])
        ).data
        end = datetime.now(UTC)
        start = end - timedelta(seconds=duration_seconds(window))
        series: dict[str, list[dict[str, Any]]] = {}
        for metric in ("CpuUtilization", "MemoryUtilization"):
            details = oci.monitoring.models.SummarizeMetricsDataDetails(
                namespace=METRIC_NAMESPACE,
                query=f'{metric}[1m]{{resourceId = "{instance.id}"}}.mean()',
                start_time=start,
                end_time=end,
            )
            data = self._call(
                "summarize_metrics_data", compartment_id, details, service="monitoring"
            ).data
            points = sorted(
                (p for d in data for p in d.aggregated_datapoints or []), key=lambda p: p.timestamp
            )
            series[metric] = [{"at": _iso(p.timestamp), "value": p.value} for p in points]
        cpu, memory = series["CpuUtilization"], series["MemoryUtilization"]
        item = {
            "instance": instance.display_name,
            "window": window,
            "cpu_percent": cpu[-1]["value"] if cpu else None,
            "memory_percent": memory[-1]["value"] if memory else None,
            "cpu_percent_max": max((p["value"] for p in cpu), default=None),
            "memory_percent_max": max((p["value"] for p in memory), default=None),
            "series": series,
        }
        if not cpu and not memory:
            output = f"{instance.display_name}: no datapoints in the last {window}"
        else:
            output = (
                f"{instance.display_name}: cpu {item['cpu_percent']}%"
                f" (max {item['cpu_percent_max']}%),"
                f" memory {item['memory_percent']}% (max {item['memory_percent_max']}%)"
                f" over {window}"
            )
        return MethodOutput(output=output, data=[item])

    @executor_method
    def describe(self, target: str) -> MethodOutput:
        instance, containers = self._resolve(target)
        shape = instance.shape_config
        data = {
            "instance": instance.display_name,
            "id": instance.id,
            "shape": instance.shape,
            "ocpus": getattr(shape, "ocpus", None),
            "memory_in_gbs": getattr(shape, "memory_in_gbs", None),
            "restart_policy": instance.container_restart_policy,
            "graceful_shutdown_seconds": instance.graceful_shutdown_timeout_in_seconds,
            "containers": [
                {
                    "name": c.display_name,
                    "image": c.image_url,
                    "command": c.command or [],
                    "arguments": c.arguments or [],
                    "resources": {
                        "vcpus_limit": getattr(c.resource_config, "vcpus_limit", None),
                        "memory_limit_in_gbs": getattr(
                            c.resource_config, "memory_limit_in_gbs", None
                        ),
                    },
                    "environment": sorted(
                        f"{k}={REDACTED}" for k in (c.environment_variables or {})
                    ),
                    "health_checks": [
                        getattr(h, "health_check_type", None) for h in c.health_checks or []
                    ],
                }
                for c in containers
            ],
        }
        lines = [
            f"{data['instance']}: shape {data['shape']} ({data['ocpus']} OCPU,"
            f" {data['memory_in_gbs']} GB), restart policy {data['restart_policy']}"
        ]
        lines += [
            f"  {c['name']}: image {c['image']}, limits {c['resources']},"
            f" env {', '.join(c['environment']) or 'none'}"
            for c in data["containers"]
        ]
        return MethodOutput(output="\n".join(lines), data=data)

    # --- write operations -----------------------------------------------------------------

    @executor_method
    def restart_service(self, target: str, intent: str | None = None) -> MethodOutput:
        return self._act("restart_service", target, intent)

    @executor_method
    def start_service(self, target: str, intent: str | None = None) -> MethodOutput:
        return self._act("start_service", target, intent)

    @executor_method
    def stop_service(self, target: str, intent: str | None = None) -> MethodOutput:
        return self._act("stop_service", target, intent)

    def _act(self, operation: str, target: str, intent: str | None) -> MethodOutput:
        """One action call (its if-match the instance's etag), then its work request polled to
        the end. A 409/412 (the instance changed under us) re-reads it and tries once more."""
        method, _ = _ACTIONS[operation]
        instance_id = self._instance_id(target.partition("/")[0])
        for attempt in (1, 2):
            current = self._call("get_container_instance", instance_id)
            instance, etag = current.data, current.headers.get("etag")
            try:
                response = self._call(method, instance.id, write=True, if_match=etag)
                break
            except ExecutorError as exc:
                if attempt == 2 or not exc.message.startswith("conflict"):
                    raise
        work_request_id = response.headers.get("opc-work-request-id")
        data = {
            "instance": instance.display_name,
            "id": instance.id,
            "work_request_id": work_request_id,
            "work_request_status": "UNKNOWN",
            "intent": intent,
        }
        sent = "observe the instance (get_status) before repeating: the action was sent"
        try:
            if work_request_id:
                data["work_request_status"] = self._await_work_request(work_request_id)
        except ExecutorError as exc:
            raise ExecutorError(
                ErrorKind.RETRYABLE,
                f"{operation} of {instance.display_name} was sent (work request"
                f" {work_request_id}), then polling failed: {exc.message}",
                sent,
                data=data,
            ) from exc
        status = data["work_request_status"]
        if status != "SUCCEEDED":
            raise ExecutorError(
                # FAILED or CANCELED is an answer; anything else is still under way.
                ErrorKind.PERMANENT if status in _DONE else ErrorKind.RETRYABLE,
                f"{operation} of {instance.display_name}: work request {work_request_id} {status}",
                sent,
                output=f"work request {work_request_id}: {status}",
                data=data,
            )
        return MethodOutput(
            output=f"{instance.display_name}: {operation.removesuffix('_service')} done"
            f" (work request {work_request_id} {status})",
            data=data,
        )

    def _await_work_request(self, work_request_id: str) -> str:
        deadline = time.monotonic() + self.connection.work_request_timeout_seconds
        while True:
            status: str = self._call("get_work_request", work_request_id).data.status
            if status in _DONE or time.monotonic() >= deadline:
                return status
            time.sleep(self.connection.work_request_poll_seconds)

    def effect_observed(
        self, operation: str, target: str, since: float, intent: str | None = None
    ) -> bool | None:
        """A work request of exactly this action on the instance, accepted since the intent was
        recorded: SUCCEEDED means it took effect (True); still running, failed or unreadable
        means a person must look (None); none at all means the action was never sent (False)."""
        if operation not in _ACTIONS:
            return None
        kind = f"{_ACTIONS[operation][1]}_CONTAINER_INSTANCE"
        try:
            work = self._call(
                "list_work_requests",
                self.connection.compartment_id,
                resource_id=self._instance_id(target.partition("/")[0]),
            ).data.items
            for request in work:
                accepted = request.time_accepted.timestamp() if request.time_accepted else 0
                if request.operation_type == kind and accepted >= since - _CLOCK_SKEW_SECONDS:
                    status = self._await_work_request(request.id)
                    return True if status == "SUCCEEDED" else None
        except Exception:  # cannot tell: the caller must not repeat blindly
            return None
        return False


def _container_status(instance: Any, c: Any) -> dict[str, Any]:
    """One container's status item with the normalised fields (executors/status.py)."""
    checks = [
        {
            "name": getattr(h, "name", None),
            "type": getattr(h, "health_check_type", None),
            "status": getattr(h, "status", None),
            "details": getattr(h, "status_details", None),
        }
        for h in c.health_checks or []
    ]
    verdicts = [h["status"] for h in checks]
    failing = [h for h in checks if h["status"] == "UNHEALTHY"]
    healthy = (
        False if failing else (True if verdicts and all(v == "HEALTHY" for v in verdicts) else None)
    )
    active = c.lifecycle_state == "ACTIVE"
    # OCI reports no start time: an ACTIVE container last changed state when it started.
    since = (c.time_updated or c.time_created) if active else None
    details = c.lifecycle_details
    return {
        "instance": instance.display_name,
        "instance_state": instance.lifecycle_state,
        "container": c.display_name,
        "lifecycle_state": c.lifecycle_state,
        **normalised(
            state=_STATE.get(c.lifecycle_state, str(c.lifecycle_state).lower()),
            exit_code=c.exit_code,
            # Only when OCI says so: an exit code of 137 alone is any SIGKILL.
            oom_killed=bool(details and _OOM.search(details)),
            restart_count=c.container_restart_attempt_count or 0,
            up_seconds=(datetime.now(UTC) - since).total_seconds() if since else None,
            healthy=healthy,
            ready=None,  # Container Instances have no readiness
            waiting_reason=None if active else _WAITING.get(c.lifecycle_state),
            message=details,
            probe_output=next((h["details"] for h in failing if h["details"]), None),
        ),
        "details": details,
        "terminated_at": _iso(c.time_terminated),
        "health": None,
        "health_checks": checks,
    }


def _log_item(
    source: str,
    previous: bool,
    all_lines: list[str],
    lines: int,
    max_bytes: int,
    keep: Callable[[str], bool],
    redactor: Redactor,
) -> dict[str, Any]:
    # Redacted whole before the newest `lines` are taken (kept_lines redacts again: a no-op).
    newest = redactor.lines(all_lines)[-lines:]
    return {
        "source": source,
        "container": source,
        "previous": previous,
        **kept_lines(newest, keep, max_bytes, redactor),
        "error": None,
    }


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
