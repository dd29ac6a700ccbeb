"""A library of real failures: each one a real container, broken the way production services break.

Used by the Docker tests, and reusable by the demo and the evaluation suite. Everything it
creates carries the label `uici.test.run=<run id>` so that `FailureLab.cleanup()` removes
exactly what this run made, also after a failing test.

No registry is reachable, so the image is built locally: a root filesystem with Debian's
static busybox and a link per applet, imported with `docker import`, rebuilt only when missing.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

TEST_IMAGE = "uici-test/busybox:1"
RUN_LABEL = "uici.test.run"
BUSYBOX = "/bin/busybox"


# A health check with busybox's nc (its wget crashes in a static build): GET /health, print the
# status line, succeed only on 200. The image serves no /health, so it answers 404.
_HEALTH_PROBE = (
    "r=$(printf 'GET /health HTTP/1.0\\r\\n\\r\\n' | nc -w 1 127.0.0.1 8080 | head -n 1); "
    'echo "GET /health: $r"; case "$r" in *" 200 "*) exit 0;; *) exit 1;; esac'
)


def ensure_test_image(client: docker.DockerClient) -> str:
    """Build `uici-test/busybox:1` from the host's static busybox if the engine lacks it."""
    try:
        client.images.get(TEST_IMAGE)
        return TEST_IMAGE
    except docker.errors.ImageNotFound:
        pass
    busybox = shutil.which("busybox") or BUSYBOX
    # A fixed argv naming the host's busybox; no shell, nothing from outside.
    applets = subprocess.run(  # noqa: S603
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for directory in ("bin", "tmp", "www", "etc", "proc", "sys", "dev", "root"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            archive.addfile(info)
        archive.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            archive.addfile(link)
        for name, text in {
            "www/index.html": "ok\n",
            "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
            "etc/group": "root:x:0:\n",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    repository, tag = TEST_IMAGE.split(":")
    client.api.import_image_from_data(
        buffer.getvalue(), repository=repository, tag=tag, changes=["ENV PATH=/bin"]
    )
    return TEST_IMAGE


@dataclass
class Scenario:
    """One failing service: the target to diagnose and what a correct diagnosis says."""

    target: str
    description: str
    expected_rule: str  # the diagnosis rule in agents.yml that should name the cause
    containers: list[str] = field(default_factory=list)
    dependencies: list[str] = field(default_factory=list)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


class FailureLab:
    """Creates the failures on demand, once each, and removes everything it made."""

    def __init__(self, client: docker.DockerClient, prefix: str | None = None) -> None:
        self.client = client
        self.run_id = uuid.uuid4().hex[:8]
        self.prefix = prefix or f"uici-t{self.run_id}"
        self.labels = {RUN_LABEL: self.run_id}
        self._made: dict[str, Scenario] = {}
        ensure_test_image(client)
        self.remove_stale()

    def name(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def run(self, suffix: str, command: list[str], **options: Any) -> Container:
        return self.client.containers.run(
            TEST_IMAGE,
            command,
            name=self.name(suffix),
            detach=True,
            labels={**self.labels, **options.pop("labels", {})},
            **options,
        )

    def container(self, suffix: str) -> Container:
        return self.client.containers.get(self.name(suffix))

    def get(self, scenario: str) -> Scenario:
        if scenario not in self._made:
            self._made[scenario] = getattr(self, f"_make_{scenario.replace('-', '_')}")()
        elif scenario == "cpu_burn":
            # Tests stop the burner to give the core back; a later user gets it spinning again.
            burner = self.container("cruncher")
            burner.reload()
            if burner.status != "running":
                burner.start()
                time.sleep(1)  # a stats sample needs a second of burning to show it
        return self._made[scenario]

    # --- the failures -------------------------------------------------------------------

    def _make_missing_env(self) -> Scenario:
        """An API that crash-loops because DATABASE_URL is not set, and says so in its log."""
        script = (
            'echo "INFO starting orders-api 1.4.2"; '
            'if [ -z "$DATABASE_URL" ]; then '
            'echo "FATAL: required environment variable DATABASE_URL is not set" >&2; exit 1; fi; '
            "exec httpd -f -p 8080 -h /www"
        )
        self.run("api", ["sh", "-c", script], restart_policy={"Name": "always"})
        container = self.container("api")
        wait_for(
            lambda: (container.reload() or container.attrs["RestartCount"]) >= 3,
            30,
            "the api to crash three times",
        )
        return Scenario(
            self.name("api"),
            "crash loop on a missing setting",
            "missing-configuration",
            [self.name("api")],
        )

    def _make_oom(self) -> Scenario:
        """A worker OOM-killed under a 16 MiB limit (no swap), exit code 137."""
        self.run(
            "worker",
            ["sh", "-c", 'echo "INFO loading the whole dataset into memory"; tail /dev/zero'],
            mem_limit="16m",
            memswap_limit="16m",
        )
        container = self.container("worker")
        wait_for(
            lambda: (container.reload() or container.status) == "exited",
            30,
            "the worker to be OOM-killed",
        )
        return Scenario(self.name("worker"), "OOM kill", "oom-killed", [self.name("worker")])

    def _make_unhealthy(self) -> Scenario:
        """A web server whose health check fails: /health answers 404."""
        self.run(
            "web-unhealthy",
            ["httpd", "-f", "-p", "8080", "-h", "/www"],
            healthcheck={
                "test": ["CMD", "sh", "-c", _HEALTH_PROBE],
                "interval": 500_000_000,
                "timeout": 1_000_000_000,
                "retries": 2,
            },
        )
        container = self.container("web-unhealthy")
        wait_for(
            lambda: (
                (container.reload() or container.attrs["State"].get("Health", {}).get("Status"))
                == "unhealthy"
            ),
            30,
            "the health check to fail",
        )
        return Scenario(
            self.name("web-unhealthy"),
            "failing health check",
            "health-check-failing",
            [self.name("web-unhealthy")],
        )

    def _make_lost_dependency(self) -> Scenario:
        """An app that floods its log with connection errors after its database container stops."""
        network = self.client.networks.create(self.name("net"), labels=self.labels)
        db = self.run("db", ["httpd", "-f", "-p", "5432", "-h", "/www"], network=network.name)
        db.reload()
        # By address, with nc: a static busybox cannot use glibc's resolver (its wget crashes).
        address = db.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        script = (
            "while true; do "
            f"if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {address} 5432 >/dev/null 2>&1; "
            "then "
            'echo "INFO order batch synced"; '
            'else echo "ERROR connection to db:5432 refused, retrying" >&2; fi; '
            "sleep 0.3; done"
        )
        self.run("orders", ["sh", "-c", script], network=network.name)
        orders = self.container("orders")
        wait_for(lambda: b"INFO order batch synced" in orders.logs(), 20, "orders to reach db")
        self.container("db").stop(timeout=1)
        wait_for(
            lambda: orders.logs().count(b"ERROR connection to db:5432 refused") >= 3,
            30,
            "orders to log connection errors",
        )
        return Scenario(
            self.name("orders"),
            "dependency down",
            "dependency-down",
            [self.name("orders")],
            dependencies=[self.name("db")],
        )

    def _make_cpu_burn(self) -> Scenario:
        """A service spinning one core at 100 %."""
        self.run("cruncher", ["sh", "-c", "while :; do :; done"])
        return Scenario(
            self.name("cruncher"), "CPU saturation", "cpu-saturation", [self.name("cruncher")]
        )

    def _make_healthy_web(self) -> Scenario:
        """A healthy web server publishing 8080 on a random loopback port."""
        self.run(
            "web",
            ["httpd", "-f", "-p", "8080", "-h", "/www"],
            ports={"8080/tcp": ("127.0.0.1", None)},
            labels={"com.docker.compose.project": self.prefix, "com.docker.compose.service": "web"},
        )
        container = self.container("web")
        wait_for(lambda: (container.reload() or container.status) == "running", 10, "web to run")
        return Scenario(self.name("web"), "healthy", "", [self.name("web")])

    def restart_events(self, name: str, since: float) -> int:
        """How many times the engine restarted the container since `since` (its own event log)."""
        # By id: the engine matches a container filter's name as a substring ("web" would
        # count "web-2"'s restarts too).
        container_id = self.client.containers.get(name).id
        events = self.client.events(
            since=int(since),
            until=f"{time.time():.6f}",
            filters={"container": container_id, "event": "restart"},
            decode=True,
        )
        try:
            return sum(1 for _ in events)
        finally:
            events.close()

    # --- cleanup ------------------------------------------------------------------------

    def remove_stale(self, older_than_seconds: float = 3600) -> list[str]:
        """Remove test containers an earlier, killed run left behind (an hour old or more)."""
        removed = []
        for container in self.client.containers.list(all=True, filters={"label": RUN_LABEL}):
            if container.labels.get(RUN_LABEL) == self.run_id:
                continue
            created = container.attrs.get("Created", "")
            try:
                age = time.time() - _created_epoch(created)
            except ValueError:
                continue
            if age >= older_than_seconds:
                container.remove(force=True)
                removed.append(container.name)
        return removed

    def cleanup(self) -> list[str]:
        """Remove every container and network of this run; return what was removed."""
        removed = []
        label_filter = {"label": f"{RUN_LABEL}={self.run_id}"}
        for container in self.client.containers.list(all=True, filters=label_filter):
            container.remove(force=True)
            removed.append(container.name)
        for network in self.client.networks.list(filters=label_filter):
            network.remove()
            removed.append(network.name)
        return removed


def _created_epoch(created: str) -> float:
    """Docker's `Created` (RFC 3339 with nanoseconds) as seconds since the epoch."""
    from datetime import datetime

    return datetime.fromisoformat(created[:19] + "+00:00").timestamp()


class ScenarioSetupError(Exception):
    """A scenario's failure could not be created (a container that cannot run, a readiness
    condition that never came): reported as `setup failed`, never as a diagnosis result."""


def _container_options(spec: Any, network: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "environment": dict(spec.env),
        "network": network,
        "read_only": spec.read_only,
    }
    if spec.restart != "no":
        options["restart_policy"] = {"Name": spec.restart}
    if spec.memory:
        options["mem_limit"] = spec.memory
        options["memswap_limit"] = spec.memory  # no swap: the limit is the limit
    if spec.cpus:
        options["nano_cpus"] = int(spec.cpus * 1e9)
    if spec.user:
        options["user"] = spec.user
    if spec.tmpfs:
        options["tmpfs"] = dict(spec.tmpfs)
    if spec.health:
        options["healthcheck"] = {
            "test": ["CMD", "sh", "-c", spec.health.command],
            "interval": spec.health.interval_ms * 1_000_000,
            "timeout": spec.health.timeout_ms * 1_000_000,
            "retries": spec.health.retries,
        }
    if spec.ports:
        options["ports"] = {f"{port}/tcp": ("127.0.0.1", None) for port in spec.ports}
    if spec.log_driver:
        options["log_config"] = {"type": spec.log_driver, "config": {}}
    if spec.compose_service:
        options["labels"] = {
            "com.docker.compose.project": "uici-eval",
            "com.docker.compose.service": spec.compose_service,
        }
    return options


def build_docker_scenario(lab: FailureLab, name: str, setup: Any, service: str) -> str:
    """Create a corpus scenario's containers (agent/evaluation/scenarios.py: DockerSetup) on
    the lab's engine, wait until its failure has happened, and return the service's container
    name. Containers are named `lab.prefix-<name>`, on a network of their own."""
    network = lab.client.networks.create(lab.name(f"{name}-net"), labels=lab.labels)
    try:
        for spec in setup.containers:
            if not spec.start:
                continue
            try:
                lab.run(spec.name, list(spec.command), **_container_options(spec, network.name))
            except docker.errors.APIError:
                # Created but not started (e.g. its command does not exist): a failure the
                # scenario may mean; `ready` says whether it is the one expected.
                lab.container(spec.name)
        target = lab.container(service)
        ready = setup.ready

        def happened() -> bool:
            target.reload()
            attrs = target.attrs
            if ready.restarts and attrs["RestartCount"] < ready.restarts:
                return False
            if ready.state and attrs["State"]["Status"] != ready.state:
                return False
            if ready.health and attrs["State"].get("Health", {}).get("Status") != ready.health:
                return False
            return not (
                ready.log
                and target.logs().decode(errors="replace").count(ready.log) < ready.log_count
            )

        wait_for(
            happened, setup.timeout_seconds, f"{name}: {ready.model_dump(exclude_defaults=True)}"
        )
        if setup.stop:
            for stopped in setup.stop:
                lab.container(stopped).stop(timeout=1)
            if ready.after_stop_log:
                wait_for(
                    lambda: (
                        target.logs().decode(errors="replace").count(ready.after_stop_log or "")
                        >= ready.after_stop_count
                    ),
                    setup.timeout_seconds,
                    f"{name}: {ready.after_stop_log!r} after stopping {setup.stop}",
                )
        if ready.seconds:
            time.sleep(ready.seconds)
        return str(target.name)
    except (docker.errors.DockerException, TimeoutError) as exc:
        logs = ""
        with contextlib.suppress(docker.errors.DockerException):
            logs = lab.container(service).logs(tail=5).decode(errors="replace")
        raise ScenarioSetupError(
            f"{type(exc).__name__}: {exc}" + (f"; last log: {logs}" if logs else "")
        ) from exc
