"""The production image (deployments/docker/Dockerfile), built and run for real.

A real base image without a registry: a Debian bookworm root filesystem made by debootstrap and
`docker import`ed (tests/infra/ensure_debootstrap.sh, reused once present). The UICI image is
built on it through deployments/docker/build.sh, then run: `uici serve` turns healthy by its
own HEALTHCHECK (also on a read-only root filesystem, as the Kubernetes manifests run it), a
mounted configuration overrides the shipped one, it runs as uid 10001, it holds no compiler,
no wheelhouse and no secret, and a Prefect worker from it registers prefect.yaml's deployments
and runs a flow against a real Prefect server.

Every container carries this run's label and is removed at the end, and so is the UICI image;
the base image and the build cache stay, so the next run builds in seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.service.auth import key_hash, new_key
from infrastructure.redaction import is_secret_key
from tests.conftest import REPO_ROOT, SHIPPED_CONFIG

# A cold build here takes about 20 minutes (the wheelhouse and every layer); warm, seconds.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

BASE_IMAGE = "uici-test/debian-python:bookworm"
RUN = uuid.uuid4().hex[:8]
LABEL = "uici-test.image-run"
IMAGE = f"uici-test/uici:{RUN}"
UID = "10001"
CONFIG_MOUNT = "/etc/uici"
BUILD_TIMEOUT = 1800  # a cold build here: the wheelhouse and every layer (minutes)


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return done


def inspect(name: str) -> dict[str, Any]:
    return dict(json.loads(docker("inspect", name).stdout)[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_detached(*args: str, name: str) -> str:
    container = f"uici-test-image-{RUN}-{name}"
    docker("run", "-d", "--name", container, "--label", f"{LABEL}={RUN}", *args)
    return container


def wait_for_health(container: str, wanted: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = inspect(container)["State"]
        if state.get("Health", {}).get("Status") == wanted:
            return state
        if state["Status"] == "exited":
            break
        time.sleep(0.5)
    logs = docker("logs", "--tail", "40", container, check=False)
    raise AssertionError(
        f"{container} did not turn {wanted}: {json.dumps(state.get('Health'), indent=1)}\n"
        f"{logs.stdout}{logs.stderr}"
    )


@pytest.fixture(scope="module")
def base_image() -> str:
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        pytest.fail("no Docker engine answers; run tests/infra/ensure_docker.sh", pytrace=False)
    done = subprocess.run(
        [str(REPO_ROOT / "tests/infra/ensure_debootstrap.sh"), BASE_IMAGE],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    if done.returncode == 3:  # cannot be done on this machine (not root on Debian)
        pytest.skip(f"no base image {BASE_IMAGE}: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr
    return BASE_IMAGE


@pytest.fixture(scope="module")
def image(base_image: str) -> Iterator[str]:
    started = time.monotonic()
    build = subprocess.run(
        [str(REPO_ROOT / "deployments/docker/build.sh"), "--base", base_image, "--tag", IMAGE,
         "--label", f"{LABEL}={RUN}"],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
    )  # fmt: skip
    assert build.returncode == 0, (build.stdout + build.stderr)[-6000:]
    print(f"\nbuild.sh: {time.monotonic() - started:.0f} s; {build.stdout.splitlines()[-1]}")
    try:
        yield IMAGE
    finally:
        mine = docker("ps", "-aq", "--filter", f"label={LABEL}={RUN}", check=False).stdout.split()
        if mine:
            docker("rm", "-f", *mine, check=False)
        docker("rmi", IMAGE, check=False)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A copy of the shipped configuration to mount at /etc/uici (readable by uid 10001)."""
    target = tmp_path / "config"
    shutil.copytree(SHIPPED_CONFIG, target)
    tmp_path.chmod(0o755)
    target.chmod(0o755)
    for path in target.iterdir():
        path.chmod(0o644)
    return target


def mount(config: Path) -> list[str]:
    return ["-v", f"{config}:{CONFIG_MOUNT}:ro", "-e", f"UICI_CONFIG_DIR={CONFIG_MOUNT}"]


def test_serve_turns_healthy_by_its_own_healthcheck_as_uid_10001(
    image: str, config_dir: Path
) -> None:
    webhook_key = new_key()
    port, read_only_port = free_port(), free_port()
    common = [
        *mount(config_dir),
        "-e", f"UICI_WEBHOOK_KEY_SHA256={key_hash(webhook_key)}",
        "-e", "UICI_LOG_LEVEL=WARNING",
        # The image's HEALTHCHECK command, checked every 2 s instead of every 30 s (each check
        # is a Python process: more often would slow this busy 2-core machine down).
        "--health-interval", "2s",
    ]  # fmt: skip
    serve = run_detached(*common, "-p", f"127.0.0.1:{port}:8080", image, name="serve")
    # As deployment.yaml runs it: read-only root filesystem, HOME and the store on /tmp.
    read_only = run_detached(
        *common, "--read-only", "--tmpfs", "/tmp", "-e", "HOME=/tmp",
        "-e", "UICI_STORAGE_URL=sqlite:////tmp/uici.db", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "-p", f"127.0.0.1:{read_only_port}:8080", image,
        name="serve-ro",
    )  # fmt: skip
    for container, published in ((serve, port), (read_only, read_only_port)):
        state = wait_for_health(container, "healthy")
        last = state["Health"]["Log"][-1]
        assert last["ExitCode"] == 0
        assert last["Output"].startswith("ok: GET http://127.0.0.1:8080/health answered 200")
        # Really serving: readiness (configuration and store) and an authenticated webhook.
        ready = httpx.get(f"http://127.0.0.1:{published}/health/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        posted = httpx.post(
            f"http://127.0.0.1:{published}/webhooks/alertmanager",
            headers={"Authorization": f"Bearer {webhook_key}"},
            json={"version": "4", "status": "firing", "receiver": "uici", "alerts": [],
                  "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
                  "externalURL": "http://am", "groupKey": "{}:{}", "truncatedAlerts": 0},
            timeout=10,
        )  # fmt: skip
        assert posted.status_code < 300, posted.text
        # Not root: the image's user, every process of the container.
        assert docker("exec", container, "id", "-u").stdout.strip() == UID
        assert docker("exec", container, "id", "-g").stdout.strip() == UID
        top = docker("top", container, "-eo", "pid,uid,args").stdout.splitlines()[1:]
        assert top and all(line.split()[1] == UID for line in top), top
    assert inspect(serve)["Config"]["User"] == f"{UID}:{UID}"
    # The default store is in the user's home, not in the (root-owned) working directory.
    assert docker("exec", serve, "ls", "/var/lib/uici/uici.db").returncode == 0
    # SIGTERM reaches `uici serve` (PID 1) and it stops cleanly, well before docker's kill.
    started = time.monotonic()
    docker("stop", "-t", "20", serve)
    assert time.monotonic() - started < 15
    assert inspect(serve)["State"]["ExitCode"] == 0


def test_the_healthcheck_turns_unhealthy_naming_what_failed(image: str) -> None:
    container = run_detached(
        # Failures count at once (the image's start period, 60 s, would hold them back).
        "--health-interval", "1s", "--health-retries", "2", "--health-start-period", "1s",
        "--entrypoint", "sleep", image, "300",
        name="nothing-listens",
    )  # fmt: skip
    state = wait_for_health(container, "unhealthy", timeout=60)
    last = state["Health"]["Log"][-1]
    assert last["ExitCode"] == 1
    assert last["Output"].strip() == (
        "uici health: connection refused at 127.0.0.1:8080 "
        "(GET http://127.0.0.1:8080/health): nothing listens there"
    )
    healthcheck = inspect(image)["Config"]["Healthcheck"]
    assert healthcheck["Test"][:3] == ["CMD", "/opt/venv/bin/uici", "health"]


def test_config_validate_uses_the_mounted_directory(image: str, config_dir: Path) -> None:
    done = docker("run", "--rm", *mount(config_dir), image, "config", "validate")
    assert done.stdout.startswith(f"OK: {CONFIG_MOUNT}: 5 files"), done.stdout
    # Without a mount: the configuration shipped inside the package.
    shipped = docker("run", "--rm", image, "config", "validate")
    assert shipped.stdout.startswith("OK: /opt/venv/lib/python3.11/site-packages/infrastructure")
    # A mounted directory overrides the shipped one, and its problems are reported as such.
    platform = config_dir / "platform.yml"
    platform.write_text(
        platform.read_text().replace("${UICI_SERVICE_PORT:-8080}", "eighty"), encoding="utf-8"
    )
    broken = docker("run", "--rm", *mount(config_dir), image, "config", "validate", check=False)
    assert broken.returncode == 2
    assert f"{CONFIG_MOUNT}/platform.yml:" in broken.stderr
    assert "service.port: invalid value 'eighty'" in broken.stderr


def test_no_compiler_no_wheelhouse_no_pip_cache(image: str, base_image: str) -> None:
    script = (
        "for c in gcc cc c++ g++ clang make ld as; do command -v $c; done; "
        "find / -xdev \\( -name '*.whl' -o -name wheelhouse -o -path '*/.cache/pip' "
        "-o -name .env -o -name requirements.txt \\) -print 2>/dev/null | sort"
    )

    def found(name: str) -> set[str]:
        out = docker("run", "--rm", "--entrypoint", "sh", name, "-c", script, check=False)
        return set(out.stdout.split())

    in_base = found(base_image)
    in_image = found(image)
    assert in_image - in_base == set(), "the image adds compilers or build leftovers"
    assert not any(p.startswith("/src") for p in in_image)
    # UICI's project directory holds only what a worker's flow runs load.
    listing = docker("run", "--rm", "--entrypoint", "ls", image, "-A", "/opt/uici").stdout.split()
    assert sorted(listing) == ["flows", "prefect.yaml", "tasks"]


def test_no_secret_in_the_image(image: str) -> None:
    config = inspect(image)["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert not [name for name in env if is_secret_key(name)], env
    assert "@" not in env["UICI_STORAGE_URL"]  # no credentials in the default store URL
    assert not [k for k in (config.get("Labels") or {}) if is_secret_key(k)]
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    for word in ("PIP_CERT", "uici-ca", "ca-certificates.crt", "_SHA256", "API_KEY", "PASSWORD"):
        assert word not in history, word


def test_prefect_runs_from_the_image(image: str) -> None:
    done = docker("run", "--rm", "--entrypoint", "prefect", image, "version")
    version = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/prefect"), "--version"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    assert re.search(rf"^Version:\s+{re.escape(version)}$", done.stdout, re.MULTILINE), done.stdout


@pytest.fixture
def prefect_api(tmp_path: Path) -> Iterator[str]:
    """A real Prefect server on the host (SQLite), for containers on the host's network."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "UICI_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log = (tmp_path / "prefect-server.log").open("wb")
    server = subprocess.Popen(
        [str(REPO_ROOT / ".venv/bin/prefect"), "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "prefect-server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the Prefect server did not answer"
            time.sleep(0.5)
        yield api
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_a_worker_from_the_image_deploys_and_runs_a_flow(
    image: str, config_dir: Path, prefect_api: str, tmp_path: Path
) -> None:
    """prefect.yaml and flows/ are where the deployments expect them (UICI_PROJECT_DIR)."""
    host_net = ["--network", "host", "-e", f"PREFECT_API_URL={prefect_api}"]
    prefect = ["--entrypoint", "prefect", image]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "UICI_"))}
    env.update(PREFECT_API_URL=prefect_api, PREFECT_HOME=str(tmp_path / "client"))
    host_prefect = str(REPO_ROOT / ".venv/bin/prefect")
    started = time.monotonic()
    subprocess.run(
        [host_prefect, "work-pool", "create", "uici-process", "--type", "process"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    deployed = docker("run", "--rm", *host_net, *prefect, "--no-prompt", "deploy", "--all",
                      timeout=300)  # fmt: skip
    assert "run-operation/run-operation" in deployed.stdout, deployed.stdout
    health_port = free_port()
    socket_gid = str(os.stat("/var/run/docker.sock").st_gid)
    worker = run_detached(
        *host_net, *mount(config_dir),
        "-e", f"PREFECT_WORKER_WEBSERVER_PORT={health_port}",
        "-e", f"UICI_HEALTH_URL=http://127.0.0.1:{health_port}/health",
        "-e", "PREFECT_WORKER_QUERY_SECONDS=1", "-e", "PREFECT_WORKER_PREFETCH_SECONDS=1",
        # The flow's operation reads the local Docker engine.
        "-v", "/var/run/docker.sock:/var/run/docker.sock", "--group-add", socket_gid,
        "--health-interval", "2s", "--init",
        *prefect, "worker", "start", "--pool", "uici-process", "--limit", "2",
        "--with-healthcheck",
        name="worker",
    )  # fmt: skip
    print(f"deployed from the image: {time.monotonic() - started:.0f} s")
    wait_for_health(worker, "healthy")
    print(f"worker healthy: {time.monotonic() - started:.0f} s")
    run = subprocess.run(
        [host_prefect, "deployment", "run",
         "run-operation/run-operation", "--param", "operation=list_services",
         "--param", "environment=local-docker", "--watch", "--watch-timeout", "240"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    print(f"flow run finished: {time.monotonic() - started:.0f} s")
    logs = docker("logs", "--tail", "60", worker, check=False)
    assert run.returncode == 0 and "Completed" in run.stdout, (
        run.stdout + run.stderr + logs.stdout + logs.stderr
    )
    # The flow run ran inside the worker's container, as uid 10001, and recorded the operation
    # in the image's default store.
    audit = docker("exec", worker, "uici", "audit", "--json")
    actions = [record["action"] for record in json.loads(audit.stdout)]
    assert "operation.list_services" in actions, actions
