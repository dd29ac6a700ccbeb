"""The Docker Compose stack of deployments/compose, checked without starting it (no image can be
pulled here): Debian's docker-compose 1.29 must accept the file, and its normalised output must
have a health check on every long-running service, the named volumes, one network, the designed
`depends_on` conditions, no secret written in the file, Alertmanager posting to UICI's webhook
with a key from a file, and Prometheus scraping uici-api. The files the stack mounts are laid
out as the containers see them and given to the real tools: `promtool check config`, `amtool
check-config`, `uici config validate` with the exact environment of uici-api and uici-worker.
secrets.sh makes a real .env and keys, and the PostgreSQL init script runs against a real
PostgreSQL, whose users then take UICI's migrations (and, in the slow test, Prefect's)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest
import yaml

from agent.evaluation.failures import ensure_test_image
from agent.service.app import WEBHOOK_PATH
from infrastructure.configuration.loader import load_config
from tests.conftest import REPO_ROOT
from tests.postgres import free_port
from tests.promstack import ENSURE_SCRIPT

COMPOSE_DIR = REPO_ROOT / "deployments" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
SECRETS_SCRIPT = COMPOSE_DIR / "secrets.sh"
INIT_SCRIPT = COMPOSE_DIR / "postgres" / "init-databases.sh"
SHELL_SCRIPTS = [
    COMPOSE_DIR / "drill.sh",
    COMPOSE_DIR / "stack.sh",
    SECRETS_SCRIPT,
    INIT_SCRIPT,
]
BIN = Path(sys.executable).parent  # .venv/bin: uici, prefect

SERVICES = {
    "postgres", "docker-proxy", "prefect-server", "uici-deploy", "uici-api", "uici-worker",
    "prometheus", "alertmanager", "loki", "grafana",
}  # fmt: skip
ONE_SHOT = {"uici-deploy"}
UICI_SERVICES = {"prefect-server", "uici-deploy", "uici-api", "uici-worker"}  # the UICI image
# The design: what waits for what, and for which condition.
DEPENDS_ON = {
    "prefect-server": {"postgres": "service_healthy"},
    "uici-deploy": {"prefect-server": "service_healthy"},
    # Started, not healthy: a Prefect outage must not keep the webhook from taking alerts.
    "uici-api": {
        "postgres": "service_healthy",
        "docker-proxy": "service_healthy",
        "prefect-server": "service_started",
    },
    "uici-worker": {
        "postgres": "service_healthy",
        "docker-proxy": "service_healthy",
        "prefect-server": "service_healthy",
        "uici-deploy": "service_completed_successfully",
    },
    "prometheus": {"alertmanager": "service_healthy"},
    "grafana": {"prometheus": "service_healthy", "loki": "service_healthy"},
}
# Named volume -> (service, path it holds the service's state at).
VOLUMES = {
    "postgres-data": ("postgres", "/var/lib/postgresql/data"),
    "prometheus-data": ("prometheus", "/prometheus"),
    "alertmanager-data": ("alertmanager", "/alertmanager"),
    "loki-data": ("loki", "/loki"),
    "grafana-data": ("grafana", "/var/lib/grafana"),
}
GENERATED_SECRETS = [
    "POSTGRES_PASSWORD", "UICI_DB_PASSWORD", "PREFECT_DB_PASSWORD", "GRAFANA_ADMIN_PASSWORD",
    "UICI_WEBHOOK_KEY_SHA256", "UICI_READER_KEY_SHA256", "UICI_OPERATOR_KEY_SHA256",
    "UICI_ADMIN_KEY_SHA256",
]  # fmt: skip
KEY_FILES = {
    "UICI_WEBHOOK_KEY_SHA256": "uici-webhook-key",
    "UICI_READER_KEY_SHA256": "uici-reader-key",
    "UICI_OPERATOR_KEY_SHA256": "uici-operator-key",
    "UICI_ADMIN_KEY_SHA256": "uici-admin-key",
}
# Names of variables that hold secrets (a Slack or apprise URL is its own credential).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY|TOKEN|SHA256|CREDENTIAL|WEBHOOK_URL|APPRISE")
# `${VAR}`, `${VAR:?message}`, `${VAR:-}`: a reference with no default value.
REFERENCE = re.compile(r"\$\{[A-Z][A-Z0-9_]*(?::\?[^}]*|:-)?\}")


def run(
    command: list[str], env: dict[str, str] | None = None, cwd: Path = REPO_ROOT, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def clean_env(**extra: str) -> dict[str, str]:
    """No variable of the caller's shell may leak into compose's interpolation or UICI's."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **extra}


@pytest.fixture(scope="module", autouse=True)
def packages_installed() -> None:
    result = run(["bash", str(ENSURE_SCRIPT)], timeout=600)
    if result.returncode != 0 or shutil.which("docker-compose") is None:
        pytest.fail(
            f"{ENSURE_SCRIPT} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}",
            pytrace=False,
        )


def compose_config(env_file: Path) -> dict[str, Any]:
    """`docker-compose config`: the file as compose understands it, every variable resolved."""
    result = run(
        ["docker-compose", "-f", str(COMPOSE_FILE.relative_to(REPO_ROOT)),
         "--env-file", str(env_file), "config"],
        env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    """The stack as `docker-compose --env-file .env.example config` resolves it."""
    return compose_config(ENV_EXAMPLE.relative_to(REPO_ROOT))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory where secrets.sh made .env and secrets/ from .env.example, for real."""
    where = tmp_path_factory.mktemp("compose")
    shutil.copy(ENV_EXAMPLE, where / ".env.example")
    shutil.copy(SECRETS_SCRIPT, where / "secrets.sh")
    result = run(["bash", str(where / "secrets.sh")], env=clean_env(), cwd=where)
    assert result.returncode == 0, result.stdout + result.stderr
    return where


@pytest.fixture(scope="module")
def stack(made: Path) -> dict[str, Any]:
    """The stack as it runs with the .env secrets.sh made."""
    return compose_config(made / ".env")


def service(config: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = config["services"][name]
    return found


def mounts(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume; a source without a slash is a named volume."""
    found = []
    for volume in svc.get("volumes", []):
        if isinstance(volume, str):  # docker-compose 1.29: "source:target[:mode]"
            source, target = volume.split(":")[:2]
        else:  # docker compose v2: {type, source, target}
            source, target = volume["source"], volume["target"]
        found.append((source, target))
    return found


def binds(svc: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of each bind mount."""
    return {target: Path(source) for source, target in mounts(svc) if source.startswith("/")}


def lay_out(config: dict[str, Any], name: str, root: Path) -> Path:
    """The service's bind mounts and secrets copied under `root` at their container paths."""
    svc = service(config, name)
    for target, source in binds(svc).items():
        destination = root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            assert source.is_file(), f"{name} mounts {source}, which does not exist"
            shutil.copy(source, destination)
    for secret in svc.get("secrets", []):
        destination = root / secret["target"].lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text("placeholder")
    return root


def mounted(config: dict[str, Any], name: str, container_path: str) -> Path:
    """The host file behind a container path of a service (a file mount or inside a dir)."""
    for target, source in sorted(binds(service(config, name)).items(), key=lambda i: -len(i[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / os.path.relpath(container_path, target)
    raise AssertionError(f"{name} has nothing mounted at {container_path}")


def flag(svc: dict[str, Any], name: str) -> str:
    for argument in svc.get("command", []):
        if argument.startswith(f"--{name}="):
            return str(argument.split("=", 1)[1])
    raise AssertionError(f"no --{name}= in {svc.get('command')}")


def names_of(config: dict[str, Any], name: str) -> set[str]:
    """The host names a service answers to on the stack's network."""
    aliases = set()
    for network in (service(config, name).get("networks") or {}).values():
        aliases |= set((network or {}).get("aliases") or [])
    return {name} | aliases


def api_port(config: dict[str, Any]) -> int:
    command = service(config, "uici-api")["command"]
    assert command[0] == "serve"
    return int(command[command.index("--port") + 1])


# --- the file as compose reads it ------------------------------------------------------------


def test_docker_compose_accepts_the_file_with_the_example_env(example: dict[str, Any]) -> None:
    assert set(example["services"]) == SERVICES
    # The worker runs UICI's flows from the pool prefect.yaml deploys to.
    prefect_yaml = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in prefect_yaml["deployments"]}
    worker = service(example, "uici-worker")
    assert worker["entrypoint"] == ["prefect"]
    command = worker["command"]
    assert command[:2] == ["worker", "start"] and "--with-healthcheck" in command
    assert {command[command.index("--pool") + 1]} == pools == {"uici-process"}
    deploy = " ".join(service(example, "uici-deploy")["command"])
    assert "prefect --no-prompt deploy --all" in deploy
    assert "work-pool create uici-process --type process" in deploy
    # prefect.yaml's templates resolve to the project directory baked into the image.
    assert service(example, "uici-deploy")["environment"]["UICI_PROJECT_DIR"] == "/opt/uici"
    assert worker["environment"]["UICI_PROJECT_DIR"] == "/opt/uici"
    for name in UICI_SERVICES:
        assert service(example, name)["image"] == "uici:0.1.0", name


def test_every_long_running_service_has_a_health_check(example: dict[str, Any]) -> None:
    long_running = {n for n, s in example["services"].items() if s.get("restart") != "no"}
    assert long_running == SERVICES - ONE_SHOT
    for name in long_running:
        check = service(example, name).get("healthcheck")
        assert check and check["test"] and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert "interval" in check and "retries" in check, name

    # The UICI checks ask the port each process really listens on.
    def health_url(name: str) -> str:
        test = service(example, name)["healthcheck"]["test"]
        assert test[:3] == ["CMD", "uici", "health"], test
        return str(test[test.index("--url") + 1])

    assert health_url("uici-api") == f"http://127.0.0.1:{api_port(example)}/health/ready"
    worker = service(example, "uici-worker")
    port = worker["environment"]["PREFECT_WORKER_WEBSERVER_PORT"]
    assert health_url("uici-worker") == f"http://127.0.0.1:{port}/health"
    server = service(example, "prefect-server")["command"]
    assert health_url("prefect-server") == (
        f"http://127.0.0.1:{server[server.index('--port') + 1]}/api/health"
    )
    # The one-shot turns the image's HEALTHCHECK off, and is never restarted.
    assert service(example, "uici-deploy")["healthcheck"]["test"] == ["NONE"]


def test_depends_on_follows_the_design(example: dict[str, Any]) -> None:
    found = {
        name: {dep: spec["condition"] for dep, spec in (svc.get("depends_on") or {}).items()}
        for name, svc in example["services"].items()
        if svc.get("depends_on")
    }
    assert found == DEPENDS_ON
    for wanted in found.values():
        for dependency, condition in wanted.items():
            if condition == "service_healthy":
                assert service(example, dependency)["healthcheck"]["test"] != ["NONE"]
            if condition == "service_completed_successfully":
                assert dependency in ONE_SHOT


def test_named_volumes_hold_the_state_and_there_is_one_network(example: dict[str, Any]) -> None:
    assert set(example["volumes"]) == set(VOLUMES)
    for volume, (name, path) in VOLUMES.items():
        assert (volume, path) in mounts(service(example, name)), (volume, name)
    named = {s for svc in example["services"].values() for s, _ in mounts(svc) if "/" not in s}
    assert named == set(VOLUMES)
    assert list(example["networks"]) == ["stack"]
    for name, svc in example["services"].items():
        assert list(svc["networks"]) == ["stack"], name
        assert "network_mode" not in svc, name
    # uici-api also answers as `uici`, where ../prometheus/alertmanager.example.yml posts.
    assert names_of(example, "uici-api") == {"uici-api", "uici"}


def test_public_images_are_pinned_and_the_stack_can_scale(example: dict[str, Any]) -> None:
    for name, svc in example["services"].items():
        if name in UICI_SERVICES:
            continue
        repository, _, tag = svc["image"].rpartition(":")
        assert repository and re.search(r"\d", tag) and tag != "latest", svc["image"]
        assert "/" not in tag, svc["image"]
    # --scale needs generated container names and, for the API, a port per replica.
    for name, svc in example["services"].items():
        assert "container_name" not in svc, name
    (published,) = service(example, "uici-api")["ports"]
    match = re.fullmatch(r"127\.0\.0\.1:(\d+)-(\d+):(\d+)(/tcp)?", str(published))
    assert match, published
    first, last, container = (int(g) for g in match.groups()[:3])
    assert last - first >= 1 and container == api_port(example)
    assert "ports" not in service(example, "uici-worker")
    # Every published port is on loopback by default; the Docker proxy and PostgreSQL not at all.
    for name, svc in example["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert "ports" not in service(example, "docker-proxy")
    assert "ports" not in service(example, "postgres")


def test_what_the_uici_image_writes_is_on_its_tmpfs(example: dict[str, Any]) -> None:
    """The UICI containers run with a read-only root filesystem: every place they write
    (HOME, Prefect's home, the server's UI bundle) must be on their tmpfs."""
    for name in UICI_SERVICES:
        svc = service(example, name)
        assert svc["read_only"] is True, name
        writable = [str(t).split(":")[0] for t in svc["tmpfs"]]
        env = svc["environment"]
        places = ["HOME", "PREFECT_HOME"]
        if name == "prefect-server":
            places.append("PREFECT_UI_STATIC_DIRECTORY")
        for variable in places:
            value = env[variable]
            assert any(value == w or value.startswith(w + "/") for w in writable), (name, value)


def test_only_the_proxy_mounts_the_docker_socket(example: dict[str, Any]) -> None:
    socket = "/var/run/docker.sock"
    holders = {n for n, s in example["services"].items() if socket in dict(mounts(s)).values()}
    assert holders == {"docker-proxy"}
    proxy = service(example, "docker-proxy")
    assert (socket, socket) in mounts(proxy)
    env = proxy["environment"]
    # Reads, logs, events and start/stop/restart; no other POST (create, exec) and no images.
    assert {k for k, v in env.items() if v == "1"} == {
        "CONTAINERS", "ALLOW_LOGS", "ALLOW_START", "ALLOW_STOP", "ALLOW_RESTARTS", "EVENTS",
        "PING", "VERSION",
    }  # fmt: skip
    assert env["POST"] == "0" and env["EXEC"] == "0" and env["IMAGES"] == "0"
    for name in ("uici-api", "uici-worker"):
        svc = service(example, name)
        assert urlsplit(svc["environment"]["DOCKER_HOST"]).hostname in names_of(
            example, "docker-proxy"
        )
        # No root, no capabilities, no writable image.
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name


# --- secrets -----------------------------------------------------------------------------------


def test_no_secret_is_written_in_the_compose_file(made: Path, stack: dict[str, Any]) -> None:
    raw_text = COMPOSE_FILE.read_text()
    raw = yaml.safe_load(raw_text)
    # (docker-proxy's variables are 0/1 switches of API sections, one of them named SECRETS.)
    environments = [
        svc.get("environment") or {} for n, svc in raw["services"].items() if n != "docker-proxy"
    ] + [value for key, value in raw.items() if key.startswith("x-") and key.endswith("-env")]
    assert set(raw["services"]["docker-proxy"]["environment"].values()) == {"0", "1"}
    checked = 0
    for environment in environments:
        for name, value in environment.items():
            text = str(value)
            if SECRET_NAME.search(name):
                assert REFERENCE.fullmatch(text), f"{name}: {text!r} is not a bare ${{VAR}}"
                checked += 1
            for password in re.findall(r"://[^:/@]+:([^@]+)@", text):
                assert REFERENCE.fullmatch(password), f"{name}: password {password!r} inline"
                checked += 1
    assert checked >= 12
    assert not re.search(r"\b[0-9a-f]{32,}\b|uici_[A-Za-z0-9_-]{20,}", raw_text)
    # The values secrets.sh made come from .env and reach exactly the places that need them.
    made_env = read_env(made / ".env")
    for name in GENERATED_SECRETS:
        assert re.fullmatch(r"[0-9a-f]{32,64}", made_env[name]), name
        assert made_env[name] not in raw_text
    api, worker = service(stack, "uici-api"), service(stack, "uici-worker")
    storage = f"postgresql://uici:{made_env['UICI_DB_PASSWORD']}@postgres:5432/uici"
    assert api["environment"]["UICI_STORAGE_URL"] == worker["environment"]["UICI_STORAGE_URL"]
    assert api["environment"]["UICI_STORAGE_URL"] == storage
    assert service(stack, "prefect-server")["environment"][
        "PREFECT_SERVER_DATABASE_CONNECTION_URL"
    ] == (f"postgresql+asyncpg://prefect:{made_env['PREFECT_DB_PASSWORD']}@postgres:5432/prefect")
    postgres = service(stack, "postgres")["environment"]
    for name in ("POSTGRES_PASSWORD", "UICI_DB_PASSWORD", "PREFECT_DB_PASSWORD"):
        assert postgres[name] == made_env[name]
    for name in KEY_FILES:
        assert api["environment"][name] == made_env[name]
        assert name not in worker["environment"]  # the workers serve no API
    assert (
        service(stack, "grafana")["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
        == (made_env["GRAFANA_ADMIN_PASSWORD"])
    )
    # The keys themselves are only in files: no container gets one in its environment.
    rendered = json.dumps(stack)
    for file in KEY_FILES.values():
        assert (made / "secrets" / file).read_text() not in rendered


def test_secrets_sh_makes_keys_whose_hashes_are_in_env(made: Path) -> None:
    made_env = read_env(made / ".env")
    assert "CHANGE_ME" not in made_env.values()
    assert set(read_env(ENV_EXAMPLE)) == set(made_env)  # every variable, none invented
    assert (made / ".env").stat().st_mode & 0o777 == 0o600
    assert (made / "secrets").stat().st_mode & 0o777 == 0o700
    hashes = set()
    for variable, file in KEY_FILES.items():
        path = made / "secrets" / file
        key = path.read_text()
        assert re.fullmatch(r"uici_[A-Za-z0-9_-]{32}", key), file  # agent.service.auth.new_key
        assert hashlib.sha256(key.encode()).hexdigest() == made_env[variable]
        # Alertmanager reads its key as another user (nobody): the file is world-readable,
        # the directory is not.
        assert path.stat().st_mode & 0o777 == 0o644, file
        hashes.add(made_env[variable])
    assert len(hashes) == len(KEY_FILES)  # platform.yml refuses two keys with one hash
    # Run again: nothing changes; a key file that no longer matches .env is refused.
    before = (made / ".env").read_text()
    again = run(["bash", str(made / "secrets.sh")], env=clean_env(), cwd=made)
    assert again.returncode == 0 and (made / ".env").read_text() == before, again.stderr
    other = made.parent / "compose-mismatch"
    shutil.copytree(made, other)
    (other / "secrets" / "uici-webhook-key").write_text("uici_" + "x" * 32)
    refused = run(["bash", str(other / "secrets.sh")], env=clean_env(), cwd=other)
    assert refused.returncode == 1
    assert "secrets/uici-webhook-key does not match UICI_WEBHOOK_KEY_SHA256" in refused.stderr


def test_env_example_documents_every_variable_the_stack_reads() -> None:
    code = [x for x in COMPOSE_FILE.read_text().splitlines() if not x.lstrip().startswith("#")]
    referenced = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", "\n".join(code)))
    documented = read_env(ENV_EXAMPLE)
    # COMPOSE_PROJECT_NAME is compose's own; everything else is read by docker-compose.yml.
    assert referenced == set(documented) - {"COMPOSE_PROJECT_NAME"}
    # Each variable has a comment in its block (the lines since the last blank one).
    block: list[str] = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        if not line.strip():
            block = []
            continue
        if not line.startswith("#"):
            assert any(b.startswith("#") for b in block), f"{line.split('=')[0]} is undocumented"
        block.append(line)


def test_env_and_secret_files_are_git_ignored(example: dict[str, Any]) -> None:
    secret_files = [Path(s["file"]) for s in example["secrets"].values()]
    assert secret_files == [COMPOSE_DIR / "secrets" / "uici-webhook-key"]
    paths = [COMPOSE_DIR / ".env", *secret_files, COMPOSE_DIR / "secrets" / "uici-reader-key"]
    ignored = run(["git", "check-ignore", *map(str, paths)])
    assert ignored.returncode == 0 and len(ignored.stdout.split()) == len(paths), ignored.stdout
    assert run(["git", "check-ignore", "-q", str(ENV_EXAMPLE)]).returncode == 1


# --- Alertmanager and Prometheus, checked by their own tools ----------------------------------


def test_alertmanager_posts_to_the_webhook_with_a_key_from_a_file(
    example: dict[str, Any], tmp_path: Path
) -> None:
    alertmanager = service(example, "alertmanager")
    config_path = flag(alertmanager, "config.file")
    config = yaml.safe_load(mounted(example, "alertmanager", config_path).read_text())
    hooks = [
        (receiver["name"], hook)
        for receiver in config["receivers"]
        for hook in receiver.get("webhook_configs") or []
    ]
    to_uici = [(r, h) for r, h in hooks if urlsplit(h["url"]).path == WEBHOOK_PATH]
    assert len(to_uici) == 1
    receiver, hook = to_uici[0]
    url = urlsplit(hook["url"])
    assert url.hostname in names_of(example, "uici-api") and url.port == api_port(example)
    authorization = hook["http_config"]["authorization"]
    assert "credentials" not in authorization
    assert authorization.get("type", "Bearer") == "Bearer"
    key_path = authorization["credentials_file"]
    secrets = {s["target"]: s["source"] for s in alertmanager["secrets"]}
    assert key_path in secrets, f"{key_path} is not mounted into alertmanager"
    assert Path(example["secrets"][secrets[key_path]]["file"]).name == "uici-webhook-key"
    # UICI's own alerts go to people, never to UICI.
    assert config["route"]["receiver"] == receiver
    own = [r for r in config["route"]["routes"] if 'component="uici"' in r.get("matchers", [])]
    assert own and own[0]["receiver"] != receiver
    # The real amtool, on the file as mounted (and it does reject a broken one).
    root = lay_out(example, "alertmanager", tmp_path / "am")
    checked = run(["amtool", "check-config", str(root / config_path.lstrip("/"))])
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked.stdout + checked.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({**config, "route": {"receiver": "nobody"}}))
    assert run(["amtool", "check-config", str(broken)]).returncode != 0


def test_prometheus_scrapes_uici_api_and_promtool_accepts_its_config(
    example: dict[str, Any], tmp_path: Path
) -> None:
    prometheus = service(example, "prometheus")
    config_path = flag(prometheus, "config.file")
    config = yaml.safe_load(mounted(example, "prometheus", config_path).read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "uici"]  # UICIDown: job uici
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [(name, sd["port"]) for sd in job.get("dns_sd_configs", []) for name in sd["names"]]
    for static in job.get("static_configs", []):
        for target in static["targets"]:
            host, port = target.rsplit(":", 1)
            targets.append((host, int(port)))
    assert targets and all(
        host in names_of(example, "uici-api") and port == api_port(example)
        for host, port in targets
    ), targets
    # /metrics needs a key only with api.metrics_require_key; then the scrape must send one.
    config_dir = binds(service(example, "uici-api"))["/etc/uici"]
    platform = yaml.safe_load((config_dir / "platform.yml").read_text())
    if platform["api"]["metrics_require_key"]:
        assert job["authorization"]["credentials_file"]
    else:
        assert "authorization" not in job and "basic_auth" not in job
    (alerting,) = config["alerting"]["alertmanagers"]
    (target,) = alerting["static_configs"][0]["targets"]
    host, port = target.rsplit(":", 1)
    assert host in names_of(example, "alertmanager") and port == "9093"
    # UICI's rules are loaded from the file the stack mounts.
    rules = REPO_ROOT / "deployments" / "prometheus" / "uici-rules.yml"
    rule_targets = [
        str(Path(config_path).parent / r) if not r.startswith("/") else r
        for r in config["rule_files"]
    ]
    assert [mounted(example, "prometheus", r) for r in rule_targets] == [rules]
    # The real promtool, on the files laid out as the container sees them.
    root = lay_out(example, "prometheus", tmp_path / "prom")
    checked = run(["promtool", "check", "config", str(root / config_path.lstrip("/"))])
    output = checked.stdout + checked.stderr
    assert checked.returncode == 0, output
    rule_count = sum(len(g["rules"]) for g in yaml.safe_load(rules.read_text())["groups"])
    assert f"SUCCESS: {rule_count} rules found" in output
    # Without the rules mount the same check fails: the layout is what is checked.
    (root / rule_targets[0].lstrip("/")).unlink()
    assert run(["promtool", "check", "config", str(root / config_path.lstrip("/"))]).returncode


# --- Grafana ------------------------------------------------------------------------------------


def dashboard_datasources(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            yield node["datasource"]
        for value in node.values():
            yield from dashboard_datasources(value)
    elif isinstance(node, list):
        for value in node:
            yield from dashboard_datasources(value)


def test_grafana_provisions_the_datasources_the_dashboard_uses(
    example: dict[str, Any], tmp_path: Path
) -> None:
    root = lay_out(example, "grafana", tmp_path / "grafana")
    provisioning = root / "etc" / "grafana" / "provisioning"
    datasources = [
        d
        for f in sorted((provisioning / "datasources").glob("*.y*ml"))
        for d in yaml.safe_load(f.read_text())["datasources"]
    ]
    by_type = {d["type"]: d for d in datasources}
    assert set(by_type) == {"prometheus", "loki"}
    assert sum(1 for d in datasources if d.get("isDefault")) == 1
    for kind, name, port in (("prometheus", "prometheus", 9090), ("loki", "loki", 3100)):
        url = urlsplit(by_type[kind]["url"])
        assert url.hostname in names_of(example, name) and url.port == port, by_type[kind]
    (provider,) = yaml.safe_load(next((provisioning / "dashboards").glob("*.y*ml")).read_text())[
        "providers"
    ]
    dashboards = root / provider["options"]["path"].lstrip("/")
    files = sorted(dashboards.glob("*.json"))
    assert [f.name for f in files] == ["uici.json"]
    home = service(example, "grafana")["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (root / home.lstrip("/")).is_file()
    dashboard = json.loads(files[0].read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    uids = {d["uid"] for d in datasources}
    used = list(dashboard_datasources(dashboard))
    assert used
    for ref in used:
        if (ref["type"], ref.get("uid")) == ("grafana", "-- Grafana --"):
            continue  # Grafana's built-in annotations source, never provisioned
        assert ref["type"] in by_type, ref
        variable = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", ref.get("uid", ""))
        if variable:  # a datasource variable: it must offer a provisioned datasource's type
            chosen = variables[variable.group(1) or variable.group(2)]
            assert chosen["type"] == "datasource" and chosen["query"] in by_type, chosen
        else:
            assert ref["uid"] in uids, ref


# --- UICI's configuration with the stack's environment ------------------------------------------


@pytest.mark.parametrize("name", ["uici-api", "uici-worker"])
def test_uici_accepts_its_mounted_configuration_with_the_stack_env(
    stack: dict[str, Any], name: str, tmp_path: Path
) -> None:
    svc = service(stack, name)
    env = {k: str(v) for k, v in svc["environment"].items()}
    config_dir = binds(svc)[env["UICI_CONFIG_DIR"]]
    assert config_dir == REPO_ROOT / "infrastructure" / "config"
    # HOME and PREFECT_HOME point at the container's /tmp; here at a directory of the test.
    env.update(PATH=os.environ["PATH"], HOME=str(tmp_path), PREFECT_HOME=str(tmp_path / "p"))
    env["UICI_CONFIG_DIR"] = str(config_dir)
    validated = run([str(BIN / "uici"), "config", "validate"], env=env)
    assert validated.returncode == 0 and validated.stdout.startswith("OK"), (
        validated.stdout + validated.stderr
    )
    # The same configuration, read in this process with that environment.
    environments = load_config(config_dir, environ=env).environments
    # local-docker reaches the engine through the proxy; metrics and logs are the stack's.
    base_url = getattr(environments.environments["local-docker"].connection, "base_url", "")
    assert urlsplit(base_url).hostname in names_of(stack, "docker-proxy")
    assert urlsplit(base_url).port == 2375
    sources = environments.observability_sources
    assert urlsplit(sources.prometheus["main"].url).hostname in names_of(stack, "prometheus")
    assert urlsplit(sources.loki["main"].url).hostname in names_of(stack, "loki")
    assert urlsplit(env["PREFECT_API_URL"]).hostname in names_of(stack, "prefect-server")
    assert urlsplit(env["UICI_STORAGE_URL"]).hostname in names_of(stack, "postgres")


# --- PostgreSQL: the init script, for real -----------------------------------------------------


class Postgres:
    """A throwaway cluster whose superuser is `postgres`, as in the image, and whose other
    users must give their password over TCP (so a wrong or missing one fails)."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not found:
            pytest.fail("PostgreSQL is not installed: run `make packages`", pytrace=False)
        self.bin = found[-1].parent
        self.port = free_port()
        # Not under pytest's tmp_path: /tmp/pytest-of-root is root-only, the cluster is postgres's.
        self.dir = Path(tempfile.mkdtemp(prefix="uici-compose-pg-"))
        self.dir.chmod(0o755)
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres")
        self.data = self.dir / "data"
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        (self.data / "pg_hba.conf").write_text(
            "host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        self._pg(
            "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "start",
            "-o", f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off",
        )  # fmt: skip

    def _pg(self, program: str, *arguments: str) -> None:
        done = run([*self._as, str(self.bin / program), *arguments])
        assert done.returncode == 0, done.stdout + done.stderr

    def psql(self, user: str, password: str, database: str) -> subprocess.CompletedProcess[str]:
        return run(
            [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", user,
             "-d", database, "-w", "-tAc", "SELECT current_user"],
            env=clean_env(PGPASSWORD=password),
        )  # fmt: skip

    def local(self, url: str) -> str:
        """The stack's URL (host postgres:5432) pointed at this cluster."""
        parts = urlsplit(url)
        assert parts.hostname == "postgres" and parts.port == 5432, url
        netloc = f"{parts.username}:{parts.password}@127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def close(self) -> None:
        try:
            run([*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def initialised(stack: dict[str, Any]) -> Iterator[Postgres]:
    """A cluster initialised by init-databases.sh, run as the postgres image runs it: with the
    environment compose gives the postgres service."""
    cluster = Postgres()
    try:
        env = {k: str(v) for k, v in service(stack, "postgres")["environment"].items()}
        assert binds(service(stack, "postgres"))[
            "/docker-entrypoint-initdb.d/10-init-databases.sh"
        ] == (INIT_SCRIPT)
        assert os.access(INIT_SCRIPT, os.X_OK)  # executed by the entrypoint, not sourced
        env.update(PATH=f"{cluster.bin}:{os.environ['PATH']}", PGHOST="127.0.0.1")
        env["PGPORT"] = str(cluster.port)
        done = run([str(INIT_SCRIPT)], env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        yield cluster
    finally:
        cluster.close()


def test_the_init_script_makes_two_databases_with_a_user_each(
    initialised: Postgres, made: Path
) -> None:
    made_env = read_env(made / ".env")
    uici, prefect = made_env["UICI_DB_PASSWORD"], made_env["PREFECT_DB_PASSWORD"]
    assert initialised.psql("uici", uici, "uici").stdout.strip() == "uici"
    assert initialised.psql("prefect", prefect, "prefect").stdout.strip() == "prefect"
    crossed = initialised.psql("uici", uici, "prefect")
    assert crossed.returncode != 0 and "permission denied for database" in crossed.stderr
    assert initialised.psql("prefect", prefect, "uici").returncode != 0
    wrong = initialised.psql("uici", prefect, "uici")
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr


def test_uici_migrates_its_store_with_the_stack_storage_url(
    initialised: Postgres, stack: dict[str, Any], tmp_path: Path
) -> None:
    url = initialised.local(service(stack, "uici-api")["environment"]["UICI_STORAGE_URL"])
    env = clean_env(UICI_STORAGE_URL=url, HOME=str(tmp_path), PREFECT_HOME=str(tmp_path / "p"))
    listed = run([str(BIN / "uici"), "incidents", "list", "--json"], env=env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert json.loads(listed.stdout) == []
    tables = run(
        [str(initialised.bin / "psql"), "-h", "127.0.0.1", "-p", str(initialised.port),
         "-U", "postgres", "-d", "uici", "-tAc",
         "SELECT count(*) FROM pg_tables WHERE tableowner = 'uici'"],
        env=clean_env(),
    )  # fmt: skip
    assert int(tables.stdout) >= 5, tables.stdout + tables.stderr


@pytest.mark.slow
def test_prefect_migrates_its_database_with_the_stack_connection_url(
    initialised: Postgres, stack: dict[str, Any], tmp_path: Path
) -> None:
    """Prefect's migrations (extensions included) as the prefect user, not a superuser: 30 s."""
    server = service(stack, "prefect-server")["environment"]
    url = initialised.local(server["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
    env = clean_env(
        PREFECT_SERVER_DATABASE_CONNECTION_URL=url,
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    upgraded = run([str(BIN / "prefect"), "server", "database", "upgrade", "-y"], env=env)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert "Migrations succeeded" in upgraded.stdout


# --- the drill, against a scripted UICI and Alertmanager ----------------------------------------


class FakeStack:
    """UICI's API and Alertmanager's alert API, as far as drill.sh uses them: the incident
    appears once the alert came, is `diagnosing` at first and `diagnosed` after (or never, with
    `diagnose=False`). The container the alert names is inspected when the alert arrives."""

    READER_KEY = "uici_" + "r" * 32

    def __init__(self, docker_client: Any, diagnose: bool = True) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.seen: dict[str, Any] = {}
        self.polls = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/api/v2/alerts"
                fake.alerts.extend(body)
                name = body[0]["labels"]["service"]
                container = docker_client.containers.get(name)
                fake.seen = {
                    "restarts": container.attrs["RestartCount"],
                    "logs": container.logs().decode(),
                    "labels": container.labels,
                }
                self.reply(200, "")

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/health/ready":
                    return self.reply(200, {"status": "ready"})
                if self.headers.get("Authorization") != f"Bearer {fake.READER_KEY}":
                    return self.reply(401, {"detail": "no key"})
                query = parse_qs(url.query)
                if url.path == "/incidents":
                    if "service" not in query or not fake.alerts:
                        return self.reply(200, [])
                    assert query["service"] == [fake.alerts[0]["labels"]["service"]]
                    fake.polls += 1
                    done = diagnose and fake.polls > 1
                    status = "diagnosed" if done else "diagnosing"
                    return self.reply(200, [{"id": "inc-1", "status": status}])
                assert url.path == "/incidents/inc-1"
                labels = fake.alerts[0]["labels"]
                observation = {
                    "id": "o1",
                    "operation": "get_logs",
                    "output": fake.seen["logs"],
                }
                diagnosis = {
                    "root_cause": "DATABASE_URL is not set",
                    "category": "missing-configuration",
                    "confidence": 0.9,
                    "rules_matched": ["missing-env"],
                    "evidence": ["o1"],
                }
                report = {"diagnosis": diagnosis, "observations": [observation], "actions": []}
                return self.reply(
                    200,
                    {"id": "inc-1", "status": "diagnosed", "service": labels["service"],
                     "environment": labels["uici_env"], "flow_run_id": "run-1", "report": report},
                )  # fmt: skip

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_drill(
    where: Path, fake: FakeStack, image: str, timeout: int
) -> subprocess.CompletedProcess[str]:
    """drill.sh copied into `where` beside a .env, the reader key and a stack.sh that finds no
    stack (so UICI_API_URL and ALERTMANAGER_URL are used)."""
    shutil.copy(COMPOSE_DIR / "drill.sh", where / "drill.sh")
    (where / "stack.sh").write_text("#!/bin/sh\nexit 1\n")
    (where / "stack.sh").chmod(0o755)
    shutil.copy(ENV_EXAMPLE, where / ".env")
    (where / "secrets").mkdir()
    (where / "secrets" / "uici-reader-key").write_text(fake.READER_KEY)
    env = clean_env(
        UICI_API_URL=fake.url, ALERTMANAGER_URL=fake.url, UICI_IMAGE=image,
        DRILL_TIMEOUT=str(timeout),
    )  # fmt: skip
    return run(["bash", str(where / "drill.sh")], env=env, cwd=where, timeout=timeout + 120)


def drill_containers(docker_client: Any) -> list[Any]:
    return list(docker_client.containers.list(all=True, filters={"label": "uici.drill=1"}))


@pytest.mark.parametrize("diagnose", [True, False], ids=["diagnosed", "timeout"])
def test_the_drill_breaks_a_container_raises_its_alert_and_prints_the_diagnosis(
    docker_client: Any, tmp_path: Path, diagnose: bool
) -> None:
    image = ensure_test_image(docker_client)
    before = {c.id for c in drill_containers(docker_client)}
    fake = FakeStack(docker_client, diagnose=diagnose)
    try:
        done = run_drill(tmp_path, fake, image, timeout=60 if diagnose else 4)
    finally:
        fake.close()
        for container in drill_containers(docker_client):
            if container.id not in before:  # only what this test's drill made
                container.remove(force=True)
                pytest.fail(f"drill.sh left {container.name} behind")
    output = done.stdout + done.stderr
    # A real crash loop on the engine, at least three restarts before the alert.
    (alert,) = fake.alerts
    assert alert["labels"]["alertname"] == "ServiceCrashLooping"
    assert alert["labels"]["uici_env"] == "local-docker"
    assert alert["labels"]["service"].startswith("uici-drill-api-")
    assert fake.seen["restarts"] >= 3 and fake.seen["labels"] == {"uici.drill": "1"}
    assert "FATAL: required environment variable DATABASE_URL is not set" in fake.seen["logs"]
    if diagnose:
        assert done.returncode == 0, output
        assert "incident inc-1 is diagnosing" in output
        assert "root cause: DATABASE_URL is not set" in output
        assert "evidence o1 (get_logs): FATAL: required environment variable" in output
        assert "flow run: http://127.0.0.1:4200/runs/flow-run/run-1" in output
    else:
        assert done.returncode == 1, output
        assert "incident inc-1 is still diagnosing after 4 s" in done.stderr


# --- the scripts and make targets -------------------------------------------------------------


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_the_scripts_are_valid_shell(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script} is not executable"
    checked = run(["bash", "-n", str(script)])
    assert checked.returncode == 0, checked.stderr
    if shutil.which("shellcheck"):
        linted = run(["shellcheck", str(script)])
        assert linted.returncode == 0, linted.stdout


def test_make_has_the_stack_targets() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    phony = {t for line in re.findall(r"^\.PHONY:(.*)$", makefile, re.M) for t in line.split()}
    assert {"stack", "stack-down", "drill"} <= phony
    # `make -n stack` would run its `$(MAKE) image` line (make runs those even with -n).
    assert "\tdeployments/compose/stack.sh up\n" in makefile.split("\nstack:", 1)[1]
    for target, script in (("stack-down", "stack.sh down"), ("drill", "drill.sh")):
        dry = run(["make", "-n", "--no-print-directory", target])
        assert dry.returncode == 0 and f"deployments/compose/{script}" in dry.stdout, dry.stdout
    helped = run(["make", "--no-print-directory", "help"])
    assert "make stack" in helped.stdout and "make drill" in helped.stdout
