"""`uici health`: the image's HEALTHCHECK. Against real HTTP servers on 127.0.0.1: 200, 503, a
closed port, a slow answer; the default URL from platform.yml; Prefect's own worker health
server (prefect/workers/server.py), which answers the same route."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from agent.cli.main import app
from tests.loopback_server import LoopbackServer, TrackedHandler

UICI = Path(sys.executable).parent / "uici"
runner = CliRunner()


class HealthServer(LoopbackServer):
    """/health 200, /health/ready 503 with a body, /slow answers after 3 s, /redirect 302."""

    def handler_class(self) -> type[TrackedHandler]:
        class Handler(TrackedHandler):
            def do_GET(self) -> None:
                if self.path == "/health":
                    self.send_reply(200, b'{"status":"ok"}', {"Content-Type": "application/json"})
                elif self.path == "/health/ready":
                    body = b'{"status": "unready",\n "checks": {"store": "locked"}}'
                    self.send_reply(503, body, {"Content-Type": "application/json"})
                elif self.path == "/slow":
                    time.sleep(3)
                    self.send_reply(200, b"late", {})
                elif self.path == "/redirect":
                    self.send_reply(302, b"", {"Location": "/health"})
                else:
                    self.send_reply(404, b"", {})

        return Handler


@pytest.fixture(scope="module")
def server() -> Iterator[HealthServer]:
    with HealthServer() as running:
        yield running


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def health(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, ["health", *args], env=env)


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in text
    return lines[0]


def test_a_2xx_answer_is_healthy(server: HealthServer) -> None:
    result = health("--url", f"{server.url}/health")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        rf"ok: GET {server.url}/health answered 200 in \d+ ms", one_line(result.stdout)
    )
    assert result.stderr == ""


def test_a_redirect_to_a_2xx_answer_is_healthy(server: HealthServer) -> None:
    result = health("--url", f"{server.url}/redirect")
    assert result.exit_code == 0, result.output


def test_a_503_names_the_status_and_quotes_the_body_on_one_line(server: HealthServer) -> None:
    result = health("--url", f"{server.url}/health/ready")
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        f"uici health: GET {server.url}/health/ready answered status 503: "
        '{"status": "unready", "checks": {"store": "locked"}}'
    )
    assert result.stdout == ""


def test_a_404_is_unhealthy(server: HealthServer) -> None:
    result = health("--url", f"{server.url}/nothing")
    assert result.exit_code == 1
    assert one_line(result.stderr).endswith("answered status 404")


def test_a_closed_port_is_connection_refused_at_host_and_port() -> None:
    port = closed_port()
    result = health("--url", f"http://127.0.0.1:{port}/health")
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith(
        f"uici health: connection refused at 127.0.0.1:{port} (GET http://127.0.0.1:{port}/health)"
    )


def test_a_slow_answer_is_a_timeout_within_the_bound(server: HealthServer) -> None:
    started = time.monotonic()
    result = health("--url", f"{server.url}/slow", "--timeout", "0.5")
    elapsed = time.monotonic() - started
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        f"uici health: timeout: no answer from 127.0.0.1:{port_of(server.url)} within 0.5 s "
        f"(GET {server.url}/slow)"
    )
    assert elapsed < 2.5, elapsed


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.1/health", "invalid URL 'ftp://127.0.0.1/health'"),
        ("http://127.0.0.1:99999/health", "invalid URL 'http://127.0.0.1:99999/health': bad port"),
        ("not a url", "invalid URL 'not a url'"),
    ],
)
def test_a_bad_url_is_one_line(url: str, message: str) -> None:
    result = health("--url", url)
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith(f"uici health: {message}")


def test_the_default_url_is_the_liveness_route_on_platform_yml_service_port(
    server: HealthServer, test_config_dir: Path
) -> None:
    platform = test_config_dir / "platform.yml"
    platform.write_text(
        platform.read_text().replace("port: 8080", f"port: {port_of(server.url)}"),
        encoding="utf-8",
    )
    for args, env in (
        (["--config-dir", str(test_config_dir)], None),
        ([], {"UICI_CONFIG_DIR": str(test_config_dir)}),
    ):
        result = health(*args, env=env)
        assert result.exit_code == 0, result.output
        assert f"GET http://127.0.0.1:{port_of(server.url)}/health answered 200" in result.stdout
    # The global option, before the command, as for every other command.
    global_option = runner.invoke(app, ["--config-dir", str(test_config_dir), "health"])
    assert global_option.exit_code == 0, global_option.output


def test_the_shipped_configuration_takes_the_port_from_uici_service_port(
    server: HealthServer,
) -> None:
    result = health(env={"UICI_SERVICE_PORT": str(port_of(server.url))})
    assert result.exit_code == 0, result.output
    port = closed_port()
    result = health(env={"UICI_SERVICE_PORT": str(port)})
    assert result.exit_code == 1
    assert f"connection refused at 127.0.0.1:{port}" in one_line(result.stderr)


def test_uici_health_url_overrides_the_default(server: HealthServer) -> None:
    result = health(env={"UICI_HEALTH_URL": f"{server.url}/health/ready"})
    assert result.exit_code == 1
    assert "answered status 503" in one_line(result.stderr)


def test_an_unreadable_port_is_one_line_naming_the_file(test_config_dir: Path) -> None:
    platform = test_config_dir / "platform.yml"
    platform.write_text(platform.read_text().replace("port: 8080", "port: eighty"), "utf-8")
    result = health("--config-dir", str(test_config_dir))
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith(
        f"uici health: cannot read service.port from {platform}: service.port: "
    )
    (test_config_dir / "platform.yml").unlink()
    result = health("--config-dir", str(test_config_dir))
    assert result.exit_code == 1
    assert "file is missing" in one_line(result.stderr)


def test_only_service_port_is_read_so_an_invalid_configuration_stays_healthy(
    server: HealthServer, test_config_dir: Path
) -> None:
    """A running service keeps its last good configuration when a change fails validation:
    the health check must not turn it unhealthy for that."""
    platform = test_config_dir / "platform.yml"
    data = yaml.safe_load(platform.read_text())
    data["service"]["port"] = port_of(server.url)
    data["llm"]["no_such_key"] = "${UNSET_VARIABLE_FOR_THIS_TEST}"
    platform.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert runner.invoke(
        app, ["config", "validate", "--config-dir", str(test_config_dir)]
    ).exit_code
    result = health("--config-dir", str(test_config_dir))
    assert result.exit_code == 0, result.output


def test_the_console_script_exits_1_with_one_line_and_imports_no_prefect(
    server: HealthServer,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UICI_", "PREFECT_"))}
    port = closed_port()
    done = subprocess.run(
        [str(UICI), "health", "--url", f"http://127.0.0.1:{port}/health"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert one_line(done.stderr).startswith(f"uici health: connection refused at 127.0.0.1:{port}")
    done = subprocess.run(
        [str(UICI), "health", "--url", f"{server.url}/health"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    probe = (
        "import sys\n"
        "from agent.cli import main\n"
        f"sys.argv = ['uici', 'health', '--url', '{server.url}/health']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "heavy = sorted(m for m in ('prefect', 'httpx', 'docker', 'kubernetes', 'oci', 'openai')"
        " if m in sys.modules)\n"
        "print('heavy:', heavy, 'code:', code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.stdout.splitlines()[-1] == "heavy: [] code: 0", done.stdout + done.stderr


def test_it_checks_a_prefect_worker_health_server() -> None:
    """What `prefect worker start --with-healthcheck` serves: GET /health on
    PREFECT_WORKER_WEBSERVER_PORT, 200 while the worker polls, 503 when it stopped."""
    from prefect.settings import (
        PREFECT_WORKER_WEBSERVER_HOST,
        PREFECT_WORKER_WEBSERVER_PORT,
        temporary_settings,
    )
    from prefect.workers.server import _run_healthcheck_server

    port = closed_port()
    polling = [True]
    url = f"http://127.0.0.1:{port}/health"
    settings = {PREFECT_WORKER_WEBSERVER_HOST: "127.0.0.1", PREFECT_WORKER_WEBSERVER_PORT: port}
    with temporary_settings(updates=settings), _run_healthcheck_server(lambda: polling[0]):
        deadline = time.monotonic() + 20
        while health("--url", url, "--timeout", "1").exit_code != 0:
            assert time.monotonic() < deadline, "the worker's health server did not start"
            time.sleep(0.1)
        # The default URL finds it too when service.port is the worker's port (in the image
        # both are 8080).
        result = health(env={"UICI_SERVICE_PORT": str(port)})
        assert result.exit_code == 0, result.output
        polling[0] = False
        result = health("--url", url)
        assert result.exit_code == 1
        assert one_line(result.stderr) == (
            f"uici health: GET {url} answered status 503: "
            '{"message":"Worker may be unresponsive at this time"}'
        )
