"""`uici diagnose`: the four-phase diagnosis of one service from a shell, on real containers.

Without --allow-writes it only reads: a write the policy would allow (the service-down
runbook's restart of an OOM-killed container) is reported as not executed, and the container
is left as it was. Bad input exits 2 with the reason.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from agent.cli.main import app
from agent.evaluation.failures import FailureLab, wait_for
from agent.incidents.report import IncidentReport
from agent.incidents.storage import IncidentStore

runner = CliRunner()
SHIPPED_VALIDATION = "validation: {settle_seconds: 5, checks: 3, interval_seconds: 2}"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    # An isolated store; the runbook planner whatever the caller's environment configures.
    return {
        "UICI_STORAGE_URL": f"sqlite:///{tmp_path}/uici.db",
        "UICI_PLANNER_MODE": "runbook",
        "COLUMNS": "120",
    }


@pytest.fixture
def config_dir(shipped_config_dir: Path) -> Path:
    """The shipped configuration with a 1 s settle window after a remediation."""
    path = shipped_config_dir / "agents.yml"
    text = path.read_text(encoding="utf-8")
    assert SHIPPED_VALIDATION in text
    path.write_text(
        text.replace(
            SHIPPED_VALIDATION, "validation: {settle_seconds: 1, checks: 1, interval_seconds: 0}"
        ),
        encoding="utf-8",
    )
    return shipped_config_dir


def diagnose(config_dir: Path, env: dict[str, str], *args: str) -> Result:
    return runner.invoke(app, ["--config-dir", str(config_dir), "diagnose", *args], env=env)


def stored_reports(env: dict[str, str]) -> list[IncidentReport]:
    store = IncidentStore(Path(env["UICI_STORAGE_URL"].removeprefix("sqlite:///")))
    return [IncidentReport.model_validate(r.report) for r in store.incidents() if r.report]


@pytest.fixture
def containers(lab: FailureLab) -> Iterator[list[str]]:
    """Names of containers a test made; removed afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        for container in lab.client.containers.list(all=True, filters={"name": f"^/{name}$"}):
            container.remove(force=True)


def crash_looping(lab: FailureLab, made: list[str]) -> str:
    """An API that crash-loops because DATABASE_URL is not set, and says so."""
    suffix = f"diag-api-{uuid.uuid4().hex[:6]}"
    made.append(lab.name(suffix))
    script = (
        'echo "INFO starting orders-api 1.4.2"; '
        'if [ -z "$DATABASE_URL" ]; then '
        'echo "FATAL: required environment variable DATABASE_URL is not set" >&2; exit 1; fi; '
        "exec httpd -f -p 8080 -h /www"
    )
    container = lab.run(suffix, ["sh", "-c", script], restart_policy={"Name": "always"})

    def restarted() -> bool:
        container.reload()
        return int(container.attrs["RestartCount"]) >= 3

    wait_for(restarted, 30, "the api to crash three times")
    return str(container.name)


def oom_killed(lab: FailureLab, made: list[str]) -> Any:
    suffix = f"diag-oom-{uuid.uuid4().hex[:6]}"
    made.append(lab.name(suffix))
    container = lab.run(
        suffix,
        ["sh", "-c", 'echo "INFO loading the whole dataset into memory"; tail /dev/zero'],
        mem_limit="16m",
        memswap_limit="16m",
    )

    def killed() -> bool:
        container.reload()
        state = container.attrs["State"]
        return bool(state["Status"] == "exited" and state["OOMKilled"])

    wait_for(killed, 30, "the worker to be OOM-killed")
    return container


def webhook(service: str, alertname: str = "ContainerExited") -> dict[str, Any]:
    return {
        "version": "4",
        "status": "firing",
        "receiver": "uici",
        "groupLabels": {"alertname": alertname},
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": alertname, "service": service, "severity": "critical"},
                "annotations": {"summary": f"{service} exited with code 137"},
                "startsAt": "2026-01-01T00:00:00Z",
                "fingerprint": "diag-cli",
            }
        ],
    }


def test_diagnose_a_crash_looping_service_prints_the_rendered_report(
    lab: FailureLab,
    containers: list[str],
    config_dir: Path,
    env: dict[str, str],
) -> None:
    service = crash_looping(lab, containers)
    result = diagnose(config_dir, env, "--service", service, "--env", "local-docker")
    assert result.exit_code == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())  # as read, whatever the terminal wrapped
    assert "Incident inc-" in out and service in out
    assert "The service exits at start-up because a required setting is missing" in out
    assert "variable DATABASE_URL" in out
    assert "category: missing_setting" in out
    # Rendered for a terminal, not raw Markdown.
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert not [line for line in lines if line.startswith(("# ", "## ", "### "))]
    assert "**" not in out
    assert "Diagnosis" in out and "Evidence" in out
    assert "No write operation was executed." in out
    [report] = stored_reports(env)
    assert report.service == service and report.environment == "local-docker"
    assert report.diagnosis is not None
    assert report.diagnosis.category == "missing_setting"
    assert report.actions == []


def test_diagnose_an_alertmanager_body_sends_no_write_without_allow_writes(
    lab: FailureLab,
    containers: list[str],
    config_dir: Path,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    container = oom_killed(lab, containers)
    started = container.attrs["State"]["StartedAt"]
    alert = tmp_path / "alert.json"
    alert.write_text(json.dumps(webhook(str(container.name))), encoding="utf-8")
    result = diagnose(config_dir, env, "--alert", str(alert), "--env", "local-docker")
    assert result.exit_code == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())  # as read, whatever the terminal wrapped
    assert "killed by the kernel for exceeding its memory limit" in out
    assert f"restart_service {container.name} on local-docker: not executed" in out
    [report] = stored_reports(env)
    assert report.diagnosis is not None and report.diagnosis.category == "oom_killed"
    [action] = report.actions
    assert action.step.startswith(f"restart_service {container.name}")
    assert action.outcome == "not executed"
    assert action.detail == "this run sends no writes (read-only)"
    # The policy would have allowed it; only the missing --allow-writes held it back.
    assert action.policy.startswith("auto-approved by runbook service-down")
    container.reload()
    assert container.attrs["State"]["StartedAt"] == started
    assert container.attrs["State"]["Status"] == "exited"

    # With --allow-writes the same diagnosis restarts it.
    allowed = diagnose(config_dir, env, "--alert", str(alert), "--allow-writes", "--json")
    assert allowed.exit_code == 0, allowed.stdout + allowed.stderr
    data = json.loads(allowed.stdout)
    [restart] = data["actions"]
    assert restart["step"].startswith(f"restart_service {container.name}")
    assert restart["outcome"] in ("executed", "recovered"), restart
    container.reload()
    assert container.attrs["State"]["StartedAt"] != started


def test_the_rendered_report_wraps_long_lines_instead_of_cutting_them(
    lab: FailureLab,
    containers: list[str],
    config_dir: Path,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    container = oom_killed(lab, containers)
    alert = tmp_path / "alert.json"
    alert.write_text(json.dumps(webhook(str(container.name))), encoding="utf-8")
    result = diagnose(config_dir, env, "--alert", str(alert), "--env", "local-docker")
    assert result.exit_code == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    # The action line ends with why it did not run.
    assert "(read-only)" in out


def test_diagnose_with_one_alert_rather_than_a_webhook_body(
    lab: FailureLab,
    containers: list[str],
    config_dir: Path,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    service = crash_looping(lab, containers)
    alert = tmp_path / "one-alert.json"
    one = webhook(service, "ServiceCrashLooping")["alerts"][0]
    alert.write_text(json.dumps(one), encoding="utf-8")
    result = diagnose(config_dir, env, "--alert", str(alert), "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["service"] == service
    assert data["environment"] == "local-docker"  # the default environment
    assert data["diagnosis"]["category"] == "missing_setting"
    assert any("DATABASE_URL" in fact for fact in data["diagnosis"]["facts"])
    assert data["actions"] == []


@pytest.mark.parametrize(
    ("args", "content", "message"),
    [
        (["--service", "api", "--alert", "ALERT"], "{}", "give --alert FILE or --service NAME"),
        ([], None, "give --alert FILE or --service NAME"),
        (["--alert", "ALERT"], "not json {", "bad input: "),
        (["--alert", "ALERT"], "[1, 2]", "expected an Alertmanager webhook body or one alert"),
        (["--alert", "ALERT"], '{"version": "4", "alerts": []}', "the webhook body has no alerts"),
        (["--alert", "MISSING"], None, "bad input: "),
        (
            ["--service", "api", "--env", "nowhere"],
            None,
            "unknown environment 'nowhere'; configured: local-docker",
        ),
        (["--alert", "ALERT"], '{"labels": {"alertname": "X"}}', "bad input: "),
    ],
    ids=[
        "both",
        "neither",
        "not-json",
        "not-a-mapping",
        "no-alerts",
        "no-such-file",
        "unknown-env",
        "no-service",
    ],
)
def test_diagnose_bad_input_exits_2(
    args: list[str],
    content: str | None,
    message: str,
    env: dict[str, str],
    config_dir: Path,
    tmp_path: Path,
) -> None:
    alert = tmp_path / "alert.json"
    if content is not None:
        alert.write_text(content, encoding="utf-8")
    argv = [
        str(alert) if a == "ALERT" else str(tmp_path / "missing.json") if a == "MISSING" else a
        for a in args
    ]
    result = diagnose(config_dir, env, *argv)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert message in result.stderr, result.stderr
    assert result.stdout == ""
    assert stored_reports(env) == []  # nothing was investigated
