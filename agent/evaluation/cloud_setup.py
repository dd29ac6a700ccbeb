"""How a Kubernetes or OCI scenario of the evaluation corpus creates its failure: the objects
seeded into the API doubles (pods with their container statuses, logs, events, metrics; an OCI
container instance with its containers and logs). Data only; tests/ seeds the doubles from it
(tests/eval_doubles.py), in the shapes a real cluster or tenancy reports.

A scenario file embeds one of these under `kubernetes:` or `oci:`, for example:

    kubernetes:
      image: registry.example.com/shop/api:1.8.3
      replicas: 2
      containers:
        - name: app
          state: waiting
          reason: CrashLoopBackOff
          last_reason: Error
          last_exit_code: 1
          restart_count: 7
          previous_log: ["FATAL: required environment variable DATABASE_URL is not set"]
      events:
        - {reason: BackOff, message: "Back-off restarting failed container app", count: 40}
      others:
        - {name: db, ready: false}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# A Kubernetes name (what a Deployment, container or namespace may be called).
_K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A quantity as Kubernetes writes it: 950m, 1, 0.5 (CPU); 120Mi, 1Gi, 64M (memory).
_QUANTITY = r"^\d+(\.\d+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"
Quantity = Annotated[str, StringConstraints(pattern=_QUANTITY)]
SecretKey = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-._a-zA-Z0-9]+$")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- Kubernetes ------------------------------------------------------------------------------


class KubernetesContainer(_Strict):
    """One container of the workload's pod template and its status in every replica."""

    name: str = Field(default="app", pattern=_K8S_NAME)
    image: str | None = None  # default: the setup's image
    # The current state (containerStatuses[].state): a reason and message for waiting or
    # terminated (CrashLoopBackOff, ImagePullBackOff, CreateContainerConfigError, Error...).
    state: Literal["running", "waiting", "terminated"] = "running"
    reason: str | None = None
    message: str | None = None  # default for CrashLoopBackOff / ImagePullBackOff: kubelet's
    exit_code: int | None = None  # of a terminated state
    started_seconds_ago: float = Field(default=300, gt=0)  # when the running instance started
    # The previous instance's end (lastState.terminated), e.g. Error / 1 or OOMKilled / 137.
    last_reason: str | None = None
    last_exit_code: int | None = None
    # lastState.terminated.message: what the runtime said, e.g. containerd's StartError text.
    last_message: str | None = None
    restart_count: int = Field(default=0, ge=0)
    ready: bool | None = None  # default: running
    liveness_probe: bool = False  # an HTTP GET /healthz probe on port 8080
    readiness_probe: bool = False  # an HTTP GET /ready probe on port 8080
    requests: dict[Literal["cpu", "memory"], Quantity] = Field(default_factory=dict)
    limits: dict[Literal["cpu", "memory"], Quantity] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)  # the template's env (values redacted)
    # Variables from a Secret (valueFrom.secretKeyRef), as "<secret>/<key>".
    secret_env: dict[str, SecretKey] = Field(default_factory=dict)
    log: list[str] = Field(default_factory=list)  # the current instance's log lines
    previous_log: list[str] = Field(default_factory=list)  # `kubectl logs --previous`
    # metrics-server's usage of a running container (PodMetrics): "950m", "120Mi".
    cpu_usage: Quantity | None = None
    memory_usage: Quantity | None = None

    @model_validator(mode="after")
    def _consistent(self) -> KubernetesContainer:
        if self.state == "running" and (self.reason or self.exit_code is not None):
            raise ValueError("a running container has no reason or exit_code")
        if self.state == "terminated" and self.exit_code is None:
            raise ValueError("a terminated container needs exit_code")
        if (self.last_reason is None) != (self.last_exit_code is None):
            raise ValueError("last_reason and last_exit_code go together (e.g. Error and 1)")
        if self.last_message and self.last_reason is None:
            raise ValueError("last_message needs a previous instance: set last_reason")
        if self.previous_log and self.last_reason is None:
            raise ValueError("previous_log needs a previous instance: set last_reason")
        return self


class KubernetesEvent(_Strict):
    """A core/v1 Event on every pod of the workload (or on the workload itself)."""

    type: Literal["Normal", "Warning"] = "Warning"
    reason: str  # BackOff, Unhealthy, FailedScheduling, Failed, Killing...
    # e.g. "Liveness probe failed: HTTP probe failed with statuscode: 500"; {pod} becomes the
    # pod as the kubelet names it (name_namespace(uid)), e.g. "Back-off restarting failed
    # container app in pod {pod}".
    message: str
    count: int = Field(default=1, ge=1)
    seconds_ago: float = Field(default=20, ge=0)  # lastTimestamp
    on: Literal["pod", "workload"] = "pod"
    container: str | None = None  # the fieldPath spec.containers{name} of a kubelet event


class KubernetesNeighbour(_Strict):
    """Another Deployment of the namespace with a Service of its name: a dependency that is up
    (ready pods) or down (its container crash-loops and nothing serves behind the Service)."""

    name: str = Field(pattern=_K8S_NAME)
    ready: bool = True
    replicas: int = Field(default=1, ge=0, le=5)  # 0: scaled to zero


class KubernetesSetup(_Strict):
    """A failing workload (Deployment or StatefulSet) with a Service of its name, its pods (one
    per replica, each with the same container statuses), events, logs and metrics."""

    kind: Literal["Deployment", "StatefulSet"] = "Deployment"
    namespace: str = Field(default="default", pattern=_K8S_NAME)
    replicas: int = Field(default=1, ge=1, le=5)
    image: str
    containers: list[KubernetesContainer] = Field(min_length=1)
    # The pods' phase; default: Running once a container has started, else Pending.
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"] | None = None
    # The scheduler's message when no node fits (PodScheduled=False, reason Unschedulable):
    # the pods are Pending on no node and no container has a status.
    unschedulable: str | None = None
    events: list[KubernetesEvent] = Field(default_factory=list)
    others: list[KubernetesNeighbour] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> KubernetesSetup:
        names = [c.name for c in self.containers]
        if len(set(names)) != len(names):
            raise ValueError(f"container names repeat: {names}")
        unknown = sorted({e.container for e in self.events if e.container} - set(names))
        if unknown:
            raise ValueError(f"events name containers the pod does not have: {unknown}")
        if self.unschedulable is None:
            vague = [c.name for c in self.containers if c.state == "waiting" and not c.reason]
            if vague:
                raise ValueError(f"waiting containers need a reason (CrashLoopBackOff...): {vague}")
            return self
        started = [
            c.name
            for c in self.containers
            if c.state != "waiting" or c.reason or c.restart_count or c.last_reason or c.log
        ]
        if started or self.phase not in (None, "Pending"):
            raise ValueError(
                "an unschedulable pod is Pending and none of its containers ever ran: give them"
                f" state waiting with no reason, restarts or logs (not so: {started})"
            )
        return self

    @property
    def pod_phase(self) -> str:
        if self.phase is not None:
            return self.phase
        if self.unschedulable is not None:
            return "Pending"
        started = any(
            c.state != "waiting" or c.restart_count or c.last_reason for c in self.containers
        )
        return "Running" if started else "Pending"


# --- OCI ---------------------------------------------------------------------------------------


class OciHealthCheck(_Strict):
    """A container's health check and the verdict the service reports for it."""

    name: str = "http-healthz"
    type: Literal["HTTP", "TCP", "COMMAND"] = "HTTP"
    status: Literal["HEALTHY", "UNHEALTHY", "UNKNOWN"] = "HEALTHY"
    details: str | None = None  # statusDetails, e.g. "Get http://...: connection refused"


class OciContainer(_Strict):
    """One container of the instance as GetContainer reports it, and what RetrieveLogs says."""

    name: str
    image: str | None = None  # default: <registry>/<instance>-<name>:1.0.0
    lifecycle_state: Literal["CREATING", "ACTIVE", "UPDATING", "INACTIVE", "FAILED"] = "ACTIVE"
    lifecycle_details: str | None = None  # e.g. "Container exited with exit code 1"
    exit_code: int | None = None
    restart_attempts: int = Field(default=0, ge=0)  # containerRestartAttemptCount
    vcpus: float = Field(default=1.0, gt=0)
    memory_gbs: float = Field(default=2.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)
    health_checks: list[OciHealthCheck] = Field(default_factory=list)
    log: list[str] = Field(default_factory=list)
    previous_log: list[str] = Field(default_factory=list)  # isPrevious=true
    # Whether a restart of the instance brings a failing container back ACTIVE.
    restart_fixes: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> OciContainer:
        if self.lifecycle_state == "ACTIVE" and self.exit_code not in (None, 0):
            raise ValueError("an ACTIVE container has no exit code; FAILED or INACTIVE has one")
        return self


class OciNeighbour(_Strict):
    """Another container instance of the compartment: a dependency that is up or down."""

    name: str
    lifecycle_state: Literal["ACTIVE", "INACTIVE", "FAILED"] = "ACTIVE"


class OciSetup(_Strict):
    """A container instance (named after the scenario's service unless `display_name` says
    otherwise) with its containers, and optionally its Logging Search log and utilisation."""

    display_name: str | None = None
    lifecycle_state: Literal["CREATING", "ACTIVE", "INACTIVE", "FAILED"] = "ACTIVE"
    lifecycle_details: str | None = None
    ocpus: float = Field(default=1.0, gt=0)
    memory_gbs: float = Field(default=4.0, gt=0)
    containers: list[OciContainer] = Field(min_length=1)
    # Also write the containers' log lines to a custom log, searched with Logging Search.
    logging_search: bool = False
    # CpuUtilization / MemoryUtilization of the instance, one value a minute, the last now.
    cpu_percent: list[float] = Field(default_factory=list)
    memory_percent: list[float] = Field(default_factory=list)
    others: list[OciNeighbour] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> OciSetup:
        names = [c.name for c in self.containers]
        if len(set(names)) != len(names):
            raise ValueError(f"container names repeat: {names}")
        return self
