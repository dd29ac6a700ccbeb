"""Debian's real Prometheus and Alertmanager as plain processes on 127.0.0.1, for end-to-end tests.

A `PromStack` writes a Prometheus configuration with the given alert rules and an Alertmanager
configuration whose only receiver is a webhook (with bearer or basic credentials), starts both
binaries on free ports and waits until each reports ready. Used as a context manager, it stops
both on exit. Install the binaries with tests/infra/ensure_packages.sh; `available()` says
whether they are there.

Timing: Prometheus evaluates the rules every second and resends firing alerts every second
(`--rules.alert.resend-delay=1s`). Its notifier learns the Alertmanager address only from the
first update of its discovery manager, about five seconds after the start; alerts sent before
that are dropped, and without the short resend delay the next try would be a minute later. So a
rule with `for: 0s` reaches the webhook six to seven seconds after the start (measured with
Prometheus 2.42 and Alertmanager 0.25), while alerts given to `post_alerts` arrive about a
second later (`group_wait`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx
import yaml

PROMETHEUS_BIN = Path("/usr/bin/prometheus")
ALERTMANAGER_BIN = Path("/usr/bin/prometheus-alertmanager")  # Debian's name for alertmanager
ENSURE_SCRIPT = Path(__file__).resolve().parent / "infra" / "ensure_packages.sh"

HOST = "127.0.0.1"
LOG_TAIL_LINES = 40


def available() -> bool:
    """Whether both binaries are installed (tests/infra/ensure_packages.sh installs them)."""
    return all(
        shutil.which(str(binary)) is not None for binary in (PROMETHEUS_BIN, ALERTMANAGER_BIN)
    )


class PromStackError(RuntimeError):
    """A process of the stack did not start, or stopped answering."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


class _Process:
    """One binary of the stack: its command line, log file and readiness URL."""

    def __init__(self, name: str, command: list[str], log_path: Path, url: str) -> None:
        self.name = name
        self.command = command
        self.log_path = log_path
        self.url = url
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, not the stack
        )

    def failure(self, what: str) -> PromStackError:
        return PromStackError(
            f"{self.name} {what}; {self.log_path} ends with:\n{log_tail(self.log_path)}"
        )

    def wait_ready(self, client: httpx.Client, deadline: float) -> None:
        """Poll `/-/ready` until it answers 200; raise with the log tail if it never does."""
        assert self.popen is not None
        last_error = "no answer yet"
        while True:
            code = self.popen.poll()
            if code is not None:
                raise self.failure(f"exited with status {code} before it was ready")
            try:
                response = client.get(f"{self.url}/-/ready", timeout=2.0)
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == httpx.codes.OK:
                    return
                last_error = f"HTTP {response.status_code}: {response.text.strip()[:200]}"
            if time.monotonic() >= deadline:
                raise self.failure(f"was not ready at {self.url}/-/ready in time ({last_error})")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None


class PromStack:
    """Prometheus (with `rules`) and Alertmanager (delivering to `webhook_url`) on 127.0.0.1.

    Exactly one credential: `bearer="token"` makes Alertmanager send `Authorization: Bearer token`,
    `basic=("user", "password")` sends HTTP basic authentication. Each rule is a dict in
    Prometheus rule form, e.g. `{"alert": "Down", "expr": "vector(1) > 0", "for": "0s",
    "labels": {...}, "annotations": {...}}`; all rules go into one group evaluated every
    `evaluation_interval`. Configurations, data and the logs `prometheus.log` and
    `alertmanager.log` go into `workdir`.
    """

    def __init__(
        self,
        workdir: Path,
        webhook_url: str,
        *,
        bearer: str | None = None,
        basic: tuple[str, str] | None = None,
        rules: Sequence[Mapping[str, Any]] = (),
        group_by: Sequence[str] = ("alertname",),
        group_wait: str = "1s",
        group_interval: str = "2s",
        repeat_interval: str = "1h",
        send_resolved: bool = True,
        evaluation_interval: str = "1s",
        startup_timeout: float = 30.0,
    ) -> None:
        if (bearer is None) == (basic is None):
            raise ValueError(
                "give exactly one credential: bearer=<token> or basic=(user, password)"
            )
        self.workdir = workdir
        self.webhook_url = webhook_url
        self.bearer = bearer
        self.basic = basic
        self.rules = [dict(rule) for rule in rules]
        self.group_by = list(group_by)
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self.send_resolved = send_resolved
        self.evaluation_interval = evaluation_interval
        self.startup_timeout = startup_timeout

        self.prometheus_port = free_port()
        self.alertmanager_port = free_port()
        while self.alertmanager_port == self.prometheus_port:
            self.alertmanager_port = free_port()
        self._client = httpx.Client(timeout=10.0, trust_env=False)  # 127.0.0.1 only: no proxy
        self._processes: list[_Process] = []

    # --- addresses -----------------------------------------------------------------------------

    @property
    def prometheus_url(self) -> str:
        return f"http://{HOST}:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{HOST}:{self.alertmanager_port}"

    @property
    def prometheus_log(self) -> Path:
        return self.workdir / "prometheus.log"

    @property
    def alertmanager_log(self) -> Path:
        return self.workdir / "alertmanager.log"

    # --- configuration -------------------------------------------------------------------------

    def alertmanager_config(self) -> dict[str, Any]:
        http_config: dict[str, Any]
        if self.bearer is not None:
            http_config = {"authorization": {"type": "Bearer", "credentials": self.bearer}}
        else:
            assert self.basic is not None
            user, password = self.basic
            http_config = {"basic_auth": {"username": user, "password": password}}
        return {
            "route": {
                "receiver": "webhook",
                "group_by": self.group_by,
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [
                {
                    "name": "webhook",
                    "webhook_configs": [
                        {
                            "url": self.webhook_url,
                            "send_resolved": self.send_resolved,
                            "http_config": http_config,
                        }
                    ],
                }
            ],
        }

    def prometheus_config(self) -> dict[str, Any]:
        return {
            "global": {"evaluation_interval": self.evaluation_interval},
            "rule_files": [str(self.workdir / "rules.yml")],
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [f"{HOST}:{self.alertmanager_port}"]}]}
                ]
            },
        }

    def rules_config(self) -> dict[str, Any]:
        group = {"name": "uici-test", "interval": self.evaluation_interval, "rules": self.rules}
        return {"groups": [group]}

    def write_configs(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        files = {
            "alertmanager.yml": self.alertmanager_config(),
            "prometheus.yml": self.prometheus_config(),
            "rules.yml": self.rules_config(),
        }
        for name, content in files.items():
            (self.workdir / name).write_text(yaml.safe_dump(content, sort_keys=False))

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Write the configurations, start Alertmanager then Prometheus, wait until both are
        ready. On failure whatever was started is stopped again before the error is raised."""
        if self._processes:
            raise PromStackError("the stack is already running")
        self.write_configs()
        alertmanager = _Process(
            "alertmanager",
            [
                str(ALERTMANAGER_BIN),
                f"--config.file={self.workdir / 'alertmanager.yml'}",
                f"--storage.path={self.workdir / 'alertmanager-data'}",
                f"--web.listen-address={HOST}:{self.alertmanager_port}",
                f"--web.external-url={self.alertmanager_url}",
                "--cluster.listen-address=",  # empty: no clustering, no gossip port
                "--log.level=debug",
            ],
            self.alertmanager_log,
            self.alertmanager_url,
        )
        prometheus = _Process(
            "prometheus",
            [
                str(PROMETHEUS_BIN),
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address={HOST}:{self.prometheus_port}",
                f"--web.external-url={self.prometheus_url}",
                "--rules.alert.resend-delay=1s",  # else the first notification can be lost
            ],
            self.prometheus_log,
            self.prometheus_url,
        )
        deadline = time.monotonic() + self.startup_timeout
        try:
            for process in (alertmanager, prometheus):
                self._processes.append(process)
                process.start()
            for process in (alertmanager, prometheus):
                process.wait_ready(self._client, deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both processes (terminate, wait, kill). Safe to call more than once."""
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()

    def close(self) -> None:
        self.stop()
        self._client.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- talking to the stack ------------------------------------------------------------------

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Feed alerts straight to Alertmanager (`POST /api/v2/alerts`), as Prometheus would.

        Each alert is `{"labels": {...}, "annotations": {...}}`, optionally with `startsAt`,
        `endsAt` (RFC 3339) and `generatorURL`; an `endsAt` in the past resolves the alert.
        """
        response = self._client.post(f"{self.alertmanager_url}/api/v2/alerts", json=alerts)
        response.raise_for_status()

    def alerts(self) -> list[dict[str, Any]]:
        """Alertmanager's current alerts (`GET /api/v2/alerts`)."""
        response = self._client.get(f"{self.alertmanager_url}/api/v2/alerts")
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def prometheus_alerts(self) -> list[dict[str, Any]]:
        """The alerts Prometheus' rules produce right now (`GET /api/v1/alerts`)."""
        response = self._client.get(f"{self.prometheus_url}/api/v1/alerts")
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["data"]["alerts"]
        return result

    def logs(self) -> str:
        """The tails of both logs, for a failing test's message."""
        return (
            f"--- {self.prometheus_log} ---\n{log_tail(self.prometheus_log)}\n"
            f"--- {self.alertmanager_log} ---\n{log_tail(self.alertmanager_log)}"
        )
