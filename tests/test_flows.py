"""The incident flow on a real Prefect server and real Docker containers."""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from agent.evaluation.failures import FailureLab
from agent.incidents.audit import AuditLog
from agent.incidents.storage import IncidentStore
from flows.diagnose import artifact_key, diagnose_incident
from tests.data.capture_observations import alert_for
from tests.store_backend import StoreSQL, store_url_for

FAILURES = {
    "missing_env": "missing-configuration",
    "oom": "oom-killed",
    "unhealthy": "health-check-failing",
    "lost_dependency": "dependency-down",
    "cpu_burn": "cpu-saturation",
}


# `uici incidents approve` answers as the OS user at the shell.
CLI_USER = f"{getpass.getuser()}@{socket.gethostname()}"


def restarts(lab: FailureLab, name: str, since: float) -> int:
    return lab.restart_events(name, since)


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_each_failure_yields_a_completed_run_naming_the_cause(
    failure: str, lab: FailureLab, flow_env: Path
) -> None:
    lab.get(failure)
    report = asyncio.run(diagnose_incident(alert=alert_for(lab, failure)))
    assert report["diagnosis"]["rules_matched"][0] == FAILURES[failure]
    assert report["diagnosis"]["evidence"]
    assert report["flow_run_url"] and "/runs/flow-run/" in report["flow_run_url"]
    stored = IncidentStore(store_url_for(flow_env)).get(report["incident_id"])
    assert stored is not None and stored.report is not None
    assert stored.report["diagnosis"]["root_cause"] == report["diagnosis"]["root_cause"]
    if failure == "cpu_burn":
        lab.container("cruncher").stop(timeout=1)


def test_the_ui_gets_phase_subflows_named_tasks_and_the_report(
    lab: FailureLab, flow_env: Path
) -> None:
    lab.get("oom")
    report = asyncio.run(diagnose_incident(alert=alert_for(lab, "oom"), incident_id="ui-check"))
    run_id = report["flow_run_url"].rsplit("/", 1)[-1]

    async def inspect() -> tuple[list[str], list[str], list[str]]:
        async with get_client() as client:
            parent = await client.read_flow_run(run_id)
            children = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_task_run_id={"is_null_": False})
            )
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )
            child_tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[c.id for c in children]))
            )
            artifacts = await client.read_artifacts()
            assert parent.name == f"incident-{lab.name('worker')}-WorkerExited"
            return (
                [c.name for c in children],
                [t.name for t in tasks + child_tasks],
                [a.key for a in artifacts if a.key],
            )

    children, task_names, keys = asyncio.run(inspect())
    assert {"triage · local-docker", "root_cause · local-docker"} <= set(children)
    assert f"triage · local-docker · get_status · {lab.name('worker')}" in task_names
    assert "plan · triage · round 0" in task_names
    assert artifact_key("ui-check") in keys and artifact_key("ui-check", "-ops") in keys


def _strict(
    flow_env: Path, monkeypatch: pytest.MonkeyPatch, shipped_config_dir: Path, **edits: str
) -> None:
    """The shipped configuration with local-docker not auto-approving, and other edits."""
    path = shipped_config_dir / "environments.yml"
    text = path.read_text().replace(
        "    policy:\n      auto_approve: true", "    policy:\n      auto_approve: false", 1
    )
    for old, new in edits.items():
        text = text.replace(old, new)
    path.write_text(text)
    monkeypatch.setenv("UICI_CONFIG_DIR", str(shipped_config_dir))


def run_in_thread(**parameters: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["report"] = asyncio.run(diagnose_incident(**parameters))
        except BaseException as exc:  # surfaced by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def wait_for_pending_approval(store: IncidentStore, incident_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = store.approvals(incident_id, "pending")
        if pending:
            return pending[0]
        time.sleep(0.3)
    raise TimeoutError("no approval was requested")


def resume(incident_id: str, store: IncidentStore, approve: bool, env: dict[str, str]) -> None:
    """Approve with `uici incidents approve`, reject with `uici incidents reject`."""
    from typer.testing import CliRunner

    from agent.cli.main import app

    command = ["incidents", "approve" if approve else "reject", incident_id]
    deadline = time.monotonic() + 30
    while True:  # the pause becomes visible to the API a moment after the approval row
        result = CliRunner().invoke(app, command, env=env)
        if result.exit_code == 0:
            verb = "approved" if approve else "rejected"
            assert f"{verb} by {CLI_USER}: restart_service" in result.stdout
            return
        if time.monotonic() > deadline:
            raise AssertionError(result.stderr)
        time.sleep(0.5)


@pytest.mark.parametrize("approve", [True, False], ids=["approved", "rejected"])
def test_a_write_step_pauses_for_approval(
    approve: bool,
    lab: FailureLab,
    flow_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    shipped_config_dir: Path,
) -> None:
    _strict(flow_env, monkeypatch, shipped_config_dir)
    name = f"approval-{'yes' if approve else 'no'}"
    lab.run(
        name,
        ["sh", "-c", "echo INFO loading; tail /dev/zero"],
        mem_limit="16m",
        memswap_limit="16m",
    )
    target = lab.name(name)
    from agent.evaluation.failures import wait_for

    wait_for(
        lambda: (lab.container(name).reload() or lab.container(name).status) == "exited",
        30,
        "OOM kill",
    )
    start = time.time() - 1
    incident = f"approve-{approve}"
    thread, box = run_in_thread(
        alert={"labels": {"alertname": "WorkerExited", "service": target}, "fingerprint": incident},
        incident_id=incident,
    )
    store = IncidentStore(store_url_for(flow_env))
    pending = wait_for_pending_approval(store, incident)
    assert pending.step.operation == "restart_service" and pending.step.target == target
    assert restarts(lab, target, start) == 0, "nothing runs before the approval"
    import os

    resume(incident, store, approve, {k: v for k, v in os.environ.items() if k.startswith("UICI_")})
    thread.join(120)
    assert "error" not in box, box.get("error")
    report = box["report"]
    [action] = report["actions"]
    if approve:
        assert action["outcome"] == "executed" and f"approved by {CLI_USER}" in action["policy"]
        assert restarts(lab, target, start) == 1
        assert store.approvals(incident, "approved")
    else:
        assert action["outcome"] == "not executed" and f"rejected by {CLI_USER}" in action["detail"]
        assert restarts(lab, target, start) == 0
        assert store.approvals(incident, "rejected")


def test_two_people_approve_over_the_api_and_the_prefect_form_counts_for_nothing(
    lab: FailureLab,
    flow_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    shipped_config_dir: Path,
    tmp_path: Path,
) -> None:
    """The two-person rule on a real paused run: a Resume from the Prefect UI's form is no
    approval (the run waits on under a new pause), one key is not enough, two keys are."""
    import os

    from fastapi.testclient import TestClient
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL

    from agent.evaluation.failures import wait_for
    from agent.service.app import create_app
    from agent.service.auth import key_hash
    from infrastructure.configuration.cache import ConfigCache
    from tests.api_support import KEYS, auth

    _strict(
        flow_env, monkeypatch, shipped_config_dir,
        **{"  required_approvers: 1\n": "  required_approvers: 2\n"},
    )  # fmt: skip
    lab.run("pair", ["sh", "-c", "echo INFO loading; tail /dev/zero"], mem_limit="16m",
            memswap_limit="16m")  # fmt: skip
    target = lab.name("pair")
    wait_for(
        lambda: (lab.container("pair").reload() or lab.container("pair").status) == "exited",
        30,
        "OOM kill",
    )
    start = time.time() - 1
    incident = "two-person"
    thread, box = run_in_thread(
        alert={"labels": {"alertname": "WorkerExited", "service": target}, "fingerprint": incident},
        incident_id=incident,
    )
    store = IncidentStore(store_url_for(flow_env))
    pending = wait_for_pending_approval(store, incident)
    assert pending.required == 2 and pending.expires_at is not None
    record = store.get(incident)
    assert record is not None and record.flow_run_id
    # Someone in the Prefect UI answers the form, naming anybody.
    form = {"approve": True, "approver": "alice", "reason": "", "step_key": pending.step_key}
    deadline = time.monotonic() + 30
    while True:
        try:
            resume_flow_run(record.flow_run_id, run_input=form)
            break
        except Exception:  # the pause becomes visible a moment after the approval row
            assert time.monotonic() < deadline
            time.sleep(0.5)
    environ = {
        **{k: v for k, v in os.environ.items() if k.startswith("UICI_")},
        "UICI_OPERATOR_KEY_SHA256": key_hash(KEYS["operator"]),
        "UICI_ADMIN_KEY_SHA256": key_hash(KEYS["admin"]),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }
    app = create_app(
        ConfigCache(shipped_config_dir, environ=environ), run_dispatcher=False, run_notifier=False
    )
    with TestClient(app) as client:
        url = f"/incidents/{incident}/approve"
        first = client.post(url, json={"reason": "checked"}, headers=auth("operator"))
        assert first.status_code == 200 and first.json()["decision"] == "pending", first.text
        time.sleep(3)
        assert restarts(lab, target, start) == 0, "neither the form nor one key ran it"
        assert store.approvals(incident, "pending")
        deadline = time.monotonic() + 30
        while True:  # the run re-pauses after ignoring the form: wait for it
            second = client.post(url, json={"reason": "agreed"}, headers=auth("admin"))
            if second.status_code == 200:
                break
            assert second.status_code == 502 and time.monotonic() < deadline, second.text
            time.sleep(0.5)
        assert second.json()["decision"] == "approved"
        assert second.json()["approvers"] == ["operator", "admin"]
    thread.join(120)
    assert "error" not in box, box.get("error")
    [action] = box["report"]["actions"]
    assert action["outcome"] == "executed" and "approved by operator, admin" in action["policy"]
    assert restarts(lab, target, start) == 1
    trail = [
        (a.actor, a.action) for a in AuditLog(store.database).query(incident, None, None, None, 100)
    ]
    assert ("alice (Prefect UI, unauthenticated)", "approval.ignored") in trail
    assert ("operator", "approval.approve") in trail and ("admin", "approval.approve") in trail


def test_no_answer_in_time_means_not_executed(
    lab: FailureLab, flow_env: Path, monkeypatch: pytest.MonkeyPatch, shipped_config_dir: Path
) -> None:
    _strict(
        flow_env,
        monkeypatch,
        shipped_config_dir,
        **{"  approval_timeout_seconds: 900": "  approval_timeout_seconds: 3"},
    )
    lab.get("oom")
    start = time.time() - 1
    report = asyncio.run(diagnose_incident(alert=alert_for(lab, "oom"), incident_id="no-answer"))
    [action] = report["actions"]
    assert action["outcome"] == "not executed" and "no approval within 3 s" in action["detail"]
    assert restarts(lab, lab.name("worker"), start) == 0
    assert IncidentStore(store_url_for(flow_env)).approvals("no-answer", "expired")


def test_two_incidents_on_one_service_remediate_one_after_the_other(
    lab: FailureLab, flow_env: Path, monkeypatch: pytest.MonkeyPatch, shipped_config_dir: Path
) -> None:
    # Auto-approval on, no cool-down, so both incidents really restart the same service.
    path = shipped_config_dir / "environments.yml"
    path.write_text(path.read_text().replace("  cooldown_seconds: 900", "  cooldown_seconds: 0"))
    monkeypatch.setenv("UICI_CONFIG_DIR", str(shipped_config_dir))
    lab.run(
        "shared",
        ["sh", "-c", "echo INFO loading; tail /dev/zero"],
        mem_limit="16m",
        memswap_limit="16m",
        restart_policy={"Name": "no"},
    )
    target = lab.name("shared")
    time.sleep(2)

    async def both() -> list[dict[str, Any]]:
        return list(
            await asyncio.gather(
                diagnose_incident(
                    alert={
                        "labels": {"alertname": "WorkerExited", "service": target},
                        "fingerprint": "first",
                    },
                    incident_id="serial-1",
                ),
                diagnose_incident(
                    alert={
                        "labels": {"alertname": "WorkerExited", "service": target},
                        "fingerprint": "second",
                    },
                    incident_id="serial-2",
                ),
            )
        )

    reports = asyncio.run(both())
    executed = [a for r in reports for a in r["actions"] if a["outcome"] == "executed"]
    assert len(executed) == 2
    store = IncidentStore(store_url_for(flow_env))
    with StoreSQL(store.database) as db:
        spans = sorted(db.execute("SELECT recorded_at, finished_at FROM writes").fetchall())
    assert len(spans) == 2
    (_, first_end), (second_start, _) = spans
    assert second_start >= first_end, (
        f"the second remediation began before the first ended: {spans}"
    )


def test_a_read_step_against_an_unreachable_daemon_is_retried_and_reported(
    flow_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    report = asyncio.run(diagnose_incident(service="web", incident_id="daemon-down"))
    failed = [o for o in report["observations"] if not o["success"]]
    assert failed and all("is unreachable" in o["error"] for o in failed)
    assert report["diagnosis"]["category"] == "unknown"

    async def run_counts() -> list[int]:
        async with get_client() as client:
            runs = await client.read_task_runs()
            return [
                t.run_count
                for t in runs
                if t.name.startswith("triage · local-docker · get_status · web")
            ]

    counts = asyncio.run(run_counts())
    assert counts and max(counts) == 3, counts  # operations.yml: get_status attempts 3


def test_run_operation_reads_and_refuses(lab: FailureLab, flow_env: Path) -> None:
    from flows.operate import run_operation

    target = lab.get("oom").target
    read = asyncio.run(run_operation("get_status", target=target))
    assert read["decision"]["decision"] == "accepted"
    assert read["result"]["data"][0]["oom_killed"] is True
    destructive = asyncio.run(run_operation("stop_service", target=target))
    assert destructive["decision"]["decision"] == "rejected" and destructive["result"] is None
    invalid = asyncio.run(run_operation("get_logs", target="web;reboot"))
    assert "invalid target" in " ".join(invalid["decision"]["reasons"])


def test_health_sweep_opens_one_incident_per_unhealthy_service(
    lab: FailureLab, flow_env: Path
) -> None:
    from flows.sweep import health_sweep

    lab.get("oom")  # exited: unhealthy
    lab.get("healthy_web")  # running: healthy
    selector = f"uici.test.run={lab.run_id}"
    first = asyncio.run(health_sweep(selector=selector))
    names = {u["service"] for u in first["unhealthy"]}
    assert lab.name("worker") in names and lab.name("web") not in names
    assert len(first["incidents_started"]) == len(names)
    store = IncidentStore(store_url_for(flow_env))
    report = store.get(
        next(i for i in first["incidents_started"] if store.get(i).service == lab.name("worker"))
    ).report  # type: ignore[union-attr]
    assert report["diagnosis"]["rules_matched"][0] == "oom-killed"
    # An open incident covers a service: mark one open and sweep again without diagnosing.
    incident = store.incidents(service=lab.name("worker"))[0]
    store.set_status(incident.id, "awaiting_approval")
    second = asyncio.run(health_sweep(selector=selector, start_diagnoses=False))
    assert lab.name("worker") in second["already_covered"]


def test_the_reconciler_escalates_runs_that_died(lab: FailureLab, flow_env: Path) -> None:
    from prefect import flow
    from prefect.states import Crashed, Running

    from agent.incidents.models import AlertInfo, IncidentContext, PlanStep
    from flows.reconcile import reconcile_incidents, run_budget_seconds
    from infrastructure.configuration.loader import load_config

    @flow(name="stand-in-incident")
    def stand_in() -> None:
        return None

    config = load_config()
    store = IncidentStore(store_url_for(flow_env))
    target = lab.get("healthy_web").target

    async def make_run(state: Any) -> str:
        async with get_client() as client:
            run = await client.create_flow_run(stand_in)
            await client.set_flow_run_state(run.id, state, force=True)
            return str(run.id)

    stuck_run = asyncio.run(make_run(Running()))
    dead_run = asyncio.run(make_run(Crashed(message="worker killed")))
    for incident_id, run_id in (("stuck", stuck_run), ("dead", dead_run)):
        ctx = IncidentContext(
            incident_id=incident_id,
            alert=AlertInfo(labels={"service": target}),
            environment="local-docker",
            service=target,
        )
        store.open_incident(ctx, run_id)
        store.set_status(incident_id, "diagnosing", run_id)
    # The stuck run had recorded a restart intent before the container last started: done.
    step = PlanStep(
        phase="resolution",
        operation="restart_service",
        environment="local-docker",
        target=target,
        proposed_by="runbook",
    )
    from agent.incidents.storage import WriteRecord

    stuck = WriteRecord(
        key="intent-stuck", incident_id="stuck", step=step, state="pending", actor="flow",
        entry="flow", recorded_at=time.time() - 3600,
    )  # fmt: skip
    assert store.begin_write(stuck, 0.0, lambda facts: None) is None

    findings = asyncio.run(
        reconcile_incidents(config, now=time.time() + run_budget_seconds(config) + 60)
    )
    by_incident = {f["incident"]: f for f in findings}
    assert "marked Crashed" in by_incident["stuck"]["reason"]
    assert "ended CRASHED" in by_incident["dead"]["reason"]
    assert by_incident["stuck"]["intents"] == [f"{step.describe()}: took effect before the crash"]
    assert store.get("stuck").status == "escalated" and store.get("dead").status == "escalated"  # type: ignore[union-attr]
    assert store.write("intent-stuck").state == "done"  # type: ignore[union-attr]

    async def state_of(run_id: str) -> str:
        async with get_client() as client:
            return (await client.read_flow_run(run_id)).state.type.value  # type: ignore[union-attr]

    assert asyncio.run(state_of(stuck_run)) == "CRASHED"
    # A run within its budget is left alone.
    assert asyncio.run(reconcile_incidents(config)) == []


def test_a_resolved_alert_cancels_the_remediation_waiting_for_approval(
    lab: FailureLab,
    flow_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    shipped_config_dir: Path,
) -> None:
    """Firing alert through the webhook -> the diagnosis pauses for a restart -> the alert
    resolves -> the dispatcher answers the pause: nothing restarts, the incident stays resolved."""
    from fastapi.testclient import TestClient
    from prefect.settings import PREFECT_API_URL

    from agent.service.app import create_app
    from agent.service.dispatch import PrefectLauncher
    from infrastructure.configuration.cache import ConfigCache
    from tests.api_support import KEYS, alert, notification

    _strict(flow_env, monkeypatch, shipped_config_dir)
    from agent.service.auth import key_hash

    monkeypatch.setenv("UICI_WEBHOOK_KEY_SHA256", key_hash(KEYS["webhook"]))
    name = "resolves-itself"
    lab.run(
        name,
        ["sh", "-c", "echo INFO loading; tail /dev/zero"],
        mem_limit="16m",
        memswap_limit="16m",
    )
    from agent.evaluation.failures import wait_for

    wait_for(
        lambda: (lab.container(name).reload() or lab.container(name).status) == "exited",
        30,
        "OOM kill",
    )
    target = lab.name(name)
    start = time.time() - 1
    configs = ConfigCache(shipped_config_dir)
    launcher = PrefectLauncher(configs.get())
    launcher.api_url = PREFECT_API_URL.value()
    firing = alert(target, fingerprint="res0000000000001", alertname="WorkerExited")
    headers = {"Authorization": f"Bearer {KEYS['webhook']}"}
    with TestClient(create_app(configs, launcher, run_dispatcher=False)) as client:
        response = client.post("/webhooks/alertmanager", json=notification(firing), headers=headers)
        [incident] = response.json()["new_incidents"]
        store = IncidentStore(store_url_for(flow_env))
        with StoreSQL(store.database) as db:
            parameters = json.loads(db.execute("SELECT payload FROM dispatch").fetchone()[0])
        # The run a worker would start from the outbox, here in process.
        thread, box = run_in_thread(**parameters)
        wait_for_pending_approval(store, incident)
        resolved = {**firing, "status": "resolved", "endsAt": "2026-11-24T14:00:00Z"}
        answer = client.post("/webhooks/alertmanager", json=notification(resolved), headers=headers)
        assert answer.json()["resolved_incidents"] == [incident]
        state = client.app.state.uici  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the pause shows in the API a moment after the row
            asyncio.run(state.dispatcher.run_once())
            with StoreSQL(store.database) as db:
                result = db.execute(
                    "SELECT result FROM dispatch WHERE kind = 'cancel_approvals'"
                ).fetchone()
                done = db.execute(
                    "SELECT state FROM dispatch WHERE kind = 'cancel_approvals'"
                ).fetchone()[0]
            if done == "done":
                assert result[0] == "cancelled"
                break
            time.sleep(0.5)
        thread.join(120)
    assert "error" not in box, box.get("error")
    [action] = box["report"]["actions"]
    assert action["outcome"] == "not executed" and "alertmanager" in action["detail"]
    assert restarts(lab, target, start) == 0
    assert store.approvals(incident, "cancelled")
    assert store.get(incident).status == "resolved"  # type: ignore[union-attr]


def _oom_worker(lab: FailureLab, suffix: str) -> str:
    lab.run(
        suffix,
        ["sh", "-c", "echo INFO loading; tail /dev/zero"],
        mem_limit="16m",
        memswap_limit="16m",
        restart_policy={"Name": "no"},
    )
    time.sleep(2)  # OOM-killed and exited
    return lab.name(suffix)


def _audit(store: IncidentStore) -> list[str]:
    with StoreSQL(store.database) as db:
        return [r[0] for r in db.execute("SELECT result FROM audit ORDER BY id")]


def test_the_flows_refuse_a_write_in_cooldown_and_over_budget_and_audit_it(
    lab: FailureLab, flow_env: Path, monkeypatch: pytest.MonkeyPatch, shipped_config_dir: Path
) -> None:
    """A restart sent through `uici run` puts the container in its cool-down: the diagnose flow,
    whose runbook would auto-approve the restart (OOM evidence), and the run-operation flow
    both refuse it, say why in the report and audit it. An incident whose budget a person's
    write used up gets no write planned."""
    from typer.testing import CliRunner

    from agent.cli.main import app
    from agent.incidents.models import AlertInfo, IncidentContext
    from flows.operate import run_operation

    path = shipped_config_dir / "environments.yml"
    path.write_text(
        path.read_text().replace(
            "  max_write_steps_per_incident: 2", "  max_write_steps_per_incident: 1"
        )
    )
    monkeypatch.setenv("UICI_CONFIG_DIR", str(shipped_config_dir))
    target = _oom_worker(lab, "cooling")
    store = IncidentStore(store_url_for(flow_env))
    env = {"UICI_CONFIG_DIR": str(shipped_config_dir)}
    cli = ["run", "restart_service", "--env", "local-docker", "--target", target, "--yes"]
    since = time.time() - 1
    assert CliRunner().invoke(app, cli, env=env).exit_code == 0

    alert = {"labels": {"alertname": "WorkerExited", "service": target}, "fingerprint": "cool"}
    report = asyncio.run(diagnose_incident(alert=alert, incident_id="cool-1"))
    [action] = report["actions"]
    assert action["outcome"] == "not executed" and action["detail"].startswith("cool-down:")
    operated = asyncio.run(run_operation("restart_service", target=target))
    [refused] = operated["actions"]
    assert refused["outcome"] == "not executed" and refused["detail"].startswith("cool-down:")
    assert sum(r.startswith("refused: cool-down") for r in _audit(store)) == 2
    assert restarts(lab, target, since) == 1  # the person's, and no other

    # The budget: a person's write counted against an incident leaves its flow none.
    other = _oom_worker(lab, "budget")
    store.open_incident(
        IncidentContext(
            incident_id="budget-1",
            alert=AlertInfo(labels={"alertname": "WorkerExited", "service": other}),
            environment="local-docker",
            service=other,
        )
    )
    cli = ["run", "start_service", "--env", "local-docker", "--target", other, "--yes"]
    assert CliRunner().invoke(app, [*cli, "--incident", "budget-1"], env=env).exit_code == 0
    alert = {"labels": {"alertname": "WorkerExited", "service": other}, "fingerprint": "budget"}
    report = asyncio.run(diagnose_incident(alert=alert, incident_id="budget-1"))
    assert not report["actions"]
    assert any("write budget used: 1 of 1" in r["reasons"][0] for r in report["rejected"])
    assert any("write budget used: 1 of 1" in r for r in _audit(store))
