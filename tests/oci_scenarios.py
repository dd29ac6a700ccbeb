"""Broken and healthy OCI container instances for the OCI double, shaped like real ones.

Each function takes an `OciDouble` and a name, adds what the tenancy would hold in that
situation (the container instance with its containers as the Container Instances API returns
them, the containers' stdout as RetrieveLogs returns it, the application's entries in a custom
log for Logging Search, CpuUtilization/MemoryUtilization datapoints in the
`oci_computecontainerinstance` namespace for the last minutes, the work request history) and
returns the ids a test needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from agent.evaluation.cloud_setup import OciHealthCheck, OciSetup
from tests.oci_double import CONTAINER_NAMESPACE, Obj, OciDouble, now

# The line UICI's runbook rules match for a missing-configuration crash loop.
FATAL_LINE = "FATAL: required environment variable DATABASE_URL is not set"
# A secret-looking value in a container's environment: it must never reach a prompt, log or report.
SECRET_VALUE = "oci-Sup3rS3cret-4b1d9e"
# OCI Registry (OCIR) path: <region key>.ocir.io/<tenancy namespace>/<repository>.
REGISTRY = "fra.ocir.io/frl8xkq2mbcd/shop"
APP = "app"
PROXY = "proxy"


@dataclass
class OciScenario:
    """The ids of what a scenario added."""

    kind: str
    name: str  # the container instance's display name
    instance_id: str
    container: str  # the main container's display name
    container_id: str
    image: str
    containers: dict[str, str] = field(default_factory=dict)  # display name -> OCID
    log_id: str = ""
    log_name: str = ""
    log_group_id: str = ""
    log_group_name: str = ""
    metrics: tuple[str, ...] = ("CpuUtilization", "MemoryUtilization")
    namespace: str = CONTAINER_NAMESPACE
    restart_fixes: bool = False


# --- shared shapes ---------------------------------------------------------------------------


def _environment(name: str, *, with_url: bool) -> dict[str, str]:
    env = {
        "APP_NAME": name,
        "PORT": "8080",
        "LOG_LEVEL": "info",
        "DATABASE_HOST": "orders-db.sub07101.shopvcn.oraclevcn.com",
        "DATABASE_USER": "orders",
        "DATABASE_PASSWORD": SECRET_VALUE,
        "OTEL_SERVICE_NAME": name,
    }
    if with_url:
        env["DATABASE_URL"] = "postgresql://orders-db.sub07101.shopvcn.oraclevcn.com:5432/orders"
    return env


def _health_check(status: str, details: str | None = None) -> Obj:
    return {
        "name": "http-healthz",
        "healthCheckType": "HTTP",
        "initialDelayInSeconds": 10,
        "intervalInSeconds": 10,
        "failureThreshold": 3,
        "successThreshold": 1,
        "timeoutInSeconds": 5,
        "status": status,
        "statusDetails": details,
        "failureAction": "KILL",
        "path": "/healthz",
        "port": 8080,
        "headers": [],
    }


def _proxy(name: str, started: datetime) -> Obj:
    stamp = started.strftime("%d/%b/%Y:%H:%M:%S +0000")
    log = (
        "/docker-entrypoint.sh: Configuration complete; ready for start up\n"
        f"{started:%Y/%m/%d %H:%M:%S} [notice] 1#1: nginx/1.27.3\n"
        f"{started:%Y/%m/%d %H:%M:%S} [notice] 1#1: start worker processes\n"
        f'10.0.10.24 - - [{stamp}] "GET /healthz HTTP/1.1" 200 2 "-" "oci-lb/1.0"\n'
    )
    return {
        "displayName": PROXY,
        "imageUrl": f"{REGISTRY}/{name}-proxy:1.27.3",
        "command": [],
        "arguments": [],
        "environmentVariables": {"UPSTREAM": "127.0.0.1:8080"},
        "resourceConfig": {"vcpusLimit": 0.25, "memoryLimitInGBs": 0.5},
        "healthChecks": [_health_check("HEALTHY")],
        "log": log,
    }


def _every_minute(values: list[float], end: datetime) -> list[tuple[datetime, float]]:
    """`values` one minute apart, the last at `end`."""
    start = end - timedelta(minutes=len(values) - 1)
    return [(start + timedelta(minutes=i), v) for i, v in enumerate(values)]


def _log_lines(name: str, version: str, *, fatal: bool) -> list[str]:
    lines = [
        f'level=info msg="starting {name}" version={version} commit=9f3c2ab',
        'level=info msg="reading configuration from environment"',
    ]
    if fatal:
        lines.append(FATAL_LINE)
    else:
        lines += [
            'level=info msg="connected to database" host=orders-db.sub07101.shopvcn.oraclevcn.com',
            'level=info msg="listening" addr=:8080',
        ]
    return lines


def _scenario(kind: str, instance: Obj, image: str, restart_fixes: bool) -> OciScenario:
    containers = {ref["displayName"]: ref["containerId"] for ref in instance["containers"]}
    return OciScenario(
        kind=kind,
        name=str(instance["displayName"]),
        instance_id=str(instance["id"]),
        container=APP,
        container_id=containers[APP],
        image=image,
        containers=containers,
        restart_fixes=restart_fixes,
    )


def _add_log(double: OciDouble, scenario: OciScenario) -> None:
    log = double.add_log(f"{scenario.name}-{APP}", "container-instances")
    scenario.log_id = log["id"]
    scenario.log_name = log["displayName"]
    scenario.log_group_id = log["logGroupId"]
    scenario.log_group_name = log["logGroupName"]


def _entries(
    scenario: OciScenario, lines: list[str], at: datetime, spacing: float = 0.4
) -> list[Obj]:
    return [
        {
            "time": at + timedelta(seconds=i * spacing),
            "data": {
                "message": line,
                "level": "FATAL" if line.startswith("FATAL") else "INFO",
                "containerName": scenario.container,
                "containerId": scenario.container_id,
                "containerInstanceId": scenario.instance_id,
            },
            "source": scenario.name,
            "subject": scenario.container,
            "type": "com.oraclecloud.logging.custom.application",
        }
        for i, line in enumerate(lines)
    ]


# --- scenarios -------------------------------------------------------------------------------


def failing_instance(
    double: OciDouble, name: str, *, restart_fixes: bool = False, version: str = "2.4.1"
) -> OciScenario:
    """An ACTIVE container instance whose `app` container crashes at start-up.

    The app exits 1 because DATABASE_URL is missing from its environment (which does hold
    DATABASE_PASSWORD), has been restarted 5 times by the ALWAYS restart policy in the last
    10 minutes, and its HTTP health check is UNHEALTHY; the `proxy` sidecar is fine. A restart
    only helps when `restart_fixes` (a missing variable is not fixed by restarting: False by
    default). CPU spikes at each start; memory stays low.
    """
    moment = now()
    image = f"{REGISTRY}/{name}:{version}"
    created = moment - timedelta(hours=2, minutes=14)
    crash_log = "\n".join(_log_lines(name, version, fatal=True)) + "\n"
    app = {
        "displayName": APP,
        "imageUrl": image,
        "command": ["/app/server"],
        "arguments": ["--config-from-env"],
        "workingDirectory": "/app",
        "environmentVariables": _environment(name, with_url=False),
        "resourceConfig": {"vcpusLimit": 1.0, "memoryLimitInGBs": 2.0},
        "healthChecks": [
            _health_check("UNHEALTHY", "Get http://127.0.0.1:8080/healthz: connection refused")
        ],
        "lifecycleState": "FAILED",
        "lifecycleDetails": "Container exited with exit code 1",
        "exitCode": 1,
        "containerRestartAttemptCount": 5,
        "timeTerminated": moment - timedelta(seconds=20),
        "timeUpdated": moment - timedelta(seconds=20),
        "log": crash_log,
        "previous_log": crash_log,
        "restart_log": (
            "\n".join(_log_lines(name, version, fatal=False)) + "\n" if restart_fixes else None
        ),
        "restart_fixes": restart_fixes,
    }
    instance = double.add_instance(
        name,
        [app, _proxy(name, created)],
        ocpus=1.0,
        memory_in_gbs=4.0,
        freeform_tags={"app": name, "env": "production", "team": "shop"},
        created=created,
    )
    scenario = _scenario("failing", instance, image, restart_fixes)
    _add_log(double, scenario)
    for restart in range(6):  # the first start and five restarts, two minutes apart
        at = moment - timedelta(seconds=20 + (5 - restart) * 110)
        double.add_log_entries(
            scenario.log_id, _entries(scenario, _log_lines(name, version, fatal=True), at)
        )
    cpu = [3.1, 41.2, 2.0, 38.7, 1.9, 44.3, 2.2, 39.8, 1.7, 42.6]
    memory = [11.8, 12.6, 11.9, 12.4, 11.7, 12.9, 11.8, 12.5, 11.6, 12.8]
    end = moment - timedelta(seconds=30)
    double.add_metric_points(
        CONTAINER_NAMESPACE, "CpuUtilization", scenario.instance_id, _every_minute(cpu, end)
    )
    double.add_metric_points(
        CONTAINER_NAMESPACE,
        "MemoryUtilization",
        scenario.instance_id,
        _every_minute(memory, end),
    )
    return scenario


def healthy_instance(double: OciDouble, name: str, *, version: str = "3.1.0") -> OciScenario:
    """An ACTIVE container instance whose containers have run for days, serving traffic."""
    moment = now()
    image = f"{REGISTRY}/{name}:{version}"
    created = moment - timedelta(days=4, hours=6)
    log_lines = _log_lines(name, version, fatal=False) + [
        f'level=info msg="request" method=GET path=/api/orders status=200 duration_ms={12 + i}'
        for i in range(5)
    ]
    app = {
        "displayName": APP,
        "imageUrl": image,
        "command": ["/app/server"],
        "arguments": ["--config-from-env"],
        "workingDirectory": "/app",
        "environmentVariables": _environment(name, with_url=True),
        "resourceConfig": {"vcpusLimit": 1.5, "memoryLimitInGBs": 3.0},
        "healthChecks": [_health_check("HEALTHY")],
        "log": "\n".join(log_lines) + "\n",
    }
    instance = double.add_instance(
        name,
        [app, _proxy(name, created)],
        ocpus=2.0,
        memory_in_gbs=8.0,
        freeform_tags={"app": name, "env": "production", "team": "shop"},
        created=created,
    )
    scenario = _scenario("healthy", instance, image, True)
    _add_log(double, scenario)
    double.add_log_entries(
        scenario.log_id, _entries(scenario, log_lines[-5:], moment - timedelta(minutes=4), 45)
    )
    cpu = [24.1, 27.9, 23.4, 30.8, 26.2, 25.5, 28.7, 24.9, 29.3, 26.0]
    memory = [46.2, 46.5, 46.4, 46.9, 47.1, 46.8, 47.0, 47.3, 47.2, 47.4]
    end = moment - timedelta(seconds=30)
    double.add_metric_points(
        CONTAINER_NAMESPACE, "CpuUtilization", scenario.instance_id, _every_minute(cpu, end)
    )
    double.add_metric_points(
        CONTAINER_NAMESPACE,
        "MemoryUtilization",
        scenario.instance_id,
        _every_minute(memory, end),
    )
    return scenario


def stopped_instance(double: OciDouble, name: str, *, version: str = "1.8.2") -> OciScenario:
    """A container instance someone stopped 90 minutes ago (INACTIVE, containers INACTIVE,
    exit code 0, a STOP work request in the history, no metrics since)."""
    moment = now()
    stopped = moment - timedelta(minutes=90)
    image = f"{REGISTRY}/{name}:{version}"
    created = moment - timedelta(days=12)
    log_lines = [
        *_log_lines(name, version, fatal=False),
        'level=info msg="received SIGTERM, draining connections"',
        'level=info msg="shutdown complete"',
    ]
    app = {
        "displayName": APP,
        "imageUrl": image,
        "command": ["/app/worker"],
        "environmentVariables": _environment(name, with_url=True),
        "resourceConfig": {"vcpusLimit": 1.0, "memoryLimitInGBs": 2.0},
        "exitCode": 0,
        "timeTerminated": stopped,
        "timeUpdated": stopped,
        "log": "\n".join(log_lines) + "\n",
    }
    proxy = _proxy(name, created)
    proxy.update(exitCode=0, timeTerminated=stopped, timeUpdated=stopped)
    instance = double.add_instance(
        name,
        [app, proxy],
        lifecycle_state="INACTIVE",
        freeform_tags={"app": name, "env": "staging", "team": "shop"},
        created=created,
    )
    double.record_work_request(instance["id"], "STOP_CONTAINER_INSTANCE", accepted=stopped)
    scenario = _scenario("stopped", instance, image, True)
    _add_log(double, scenario)
    double.add_log_entries(
        scenario.log_id, _entries(scenario, log_lines[-2:], stopped - timedelta(seconds=3), 2)
    )
    end = stopped - timedelta(seconds=30)
    double.add_metric_points(
        CONTAINER_NAMESPACE,
        "CpuUtilization",
        scenario.instance_id,
        _every_minute([8.2, 7.9, 8.4, 8.1, 7.7, 8.8, 8.0, 7.6, 8.3, 2.1], end),
    )
    return scenario


# --- scenarios as data (agent/evaluation/cloud_setup.py) --------------------------------------

# The details OCI gives a container its health check failed, and the check's own words.
HEALTH_CHECK_FAILURE = "Get http://127.0.0.1:8080/healthz: context deadline exceeded"


def _setup_health_check(check: OciHealthCheck) -> Obj:
    """A ContainerHealthCheck of the setup's type, as GetContainer returns it."""
    shape = _health_check(check.status, check.details)
    shape["name"] = check.name
    shape["healthCheckType"] = check.type
    if check.type != "HTTP":
        del shape["path"], shape["headers"]
    if check.type == "COMMAND":
        del shape["port"]
        shape["command"] = ["/bin/sh", "-c", "/app/healthcheck"]
    return shape


def from_setup(double: OciDouble, name: str, setup: OciSetup) -> OciScenario:
    """The container instance a corpus scenario describes as data: its containers with their
    states, health checks and logs (RetrieveLogs, and Logging Search when asked), the
    instance's utilisation, and the other instances of the compartment."""
    moment = now()
    created = moment - timedelta(hours=2, minutes=5)
    containers = []
    for index, c in enumerate(setup.containers):
        image = c.image or f"{REGISTRY}/{name}{'' if index == 0 else '-' + c.name}:1.0.0"
        spec: Obj = {
            "displayName": c.name,
            "imageUrl": image,
            "environmentVariables": dict(c.env),
            "resourceConfig": {"vcpusLimit": c.vcpus, "memoryLimitInGBs": c.memory_gbs},
            "healthChecks": [_setup_health_check(h) for h in c.health_checks],
            "lifecycleState": c.lifecycle_state,
            "lifecycleDetails": c.lifecycle_details,
            "exitCode": c.exit_code,
            "containerRestartAttemptCount": c.restart_attempts,
            "log": "".join(f"{line}\n" for line in c.log),
            "previous_log": "".join(f"{line}\n" for line in c.previous_log),
            "restart_fixes": c.restart_fixes,
        }
        if c.lifecycle_state in ("FAILED", "INACTIVE"):
            spec.update(timeTerminated=moment - timedelta(seconds=20))
            spec.update(timeUpdated=moment - timedelta(seconds=20))
        elif c.restart_attempts:  # restarted: ACTIVE again since its last start
            spec.update(timeUpdated=moment - timedelta(seconds=90))
        containers.append(spec)
    instance = double.add_instance(
        name,
        containers,
        ocpus=setup.ocpus,
        memory_in_gbs=setup.memory_gbs,
        lifecycle_state=setup.lifecycle_state,
        lifecycle_details=setup.lifecycle_details,
        freeform_tags={"app": name},
        created=created,
    )
    refs = {ref["displayName"]: ref["containerId"] for ref in instance["containers"]}
    first = setup.containers[0]
    scenario = OciScenario(
        kind="setup",
        name=name,
        instance_id=str(instance["id"]),
        container=first.name,
        container_id=refs[first.name],
        image=str(containers[0]["imageUrl"]),
        containers=refs,
        restart_fixes=first.restart_fixes,
    )
    if setup.logging_search:
        _add_log(double, scenario)
        lines = [*first.previous_log, *first.log]
        at = moment - timedelta(seconds=5 + 0.4 * len(lines))
        double.add_log_entries(scenario.log_id, _entries(scenario, lines, at))
    end = moment - timedelta(seconds=30)
    for metric, values in (
        ("CpuUtilization", setup.cpu_percent),
        ("MemoryUtilization", setup.memory_percent),
    ):
        if values:
            double.add_metric_points(
                CONTAINER_NAMESPACE, metric, scenario.instance_id, _every_minute(values, end)
            )
    for neighbour in setup.others:
        add = {
            "ACTIVE": healthy_instance,
            "INACTIVE": stopped_instance,
            "FAILED": failing_instance,
        }[neighbour.lifecycle_state]
        add(double, neighbour.name)
    return scenario


__all__ = [
    "APP",
    "FATAL_LINE",
    "HEALTH_CHECK_FAILURE",
    "PROXY",
    "REGISTRY",
    "SECRET_VALUE",
    "OciScenario",
    "failing_instance",
    "from_setup",
    "healthy_instance",
    "stopped_instance",
]
