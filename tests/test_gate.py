"""The execution gate on a real Docker engine: every entry point refuses a write in cool-down,
over budget or of too wide a blast radius, says why, and audits it; a write whose outcome is
unknown is never repeated."""

from __future__ import annotations

import shutil
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from agent.cli import app
from agent.evaluation.failures import FailureLab, wait_for
from agent.incidents.models import AlertInfo, IncidentContext, PlanStep
from agent.incidents.storage import IncidentStore
from agent.safety.gate import ExecutionGate, GateRequest
from agent.safety.policy import Approval
from agent.service.app import create_app
from infrastructure.configuration.cache import ConfigCache
from infrastructure.configuration.loader import UICIConfig, load_config
from tests.api_support import auth, key_env
from tests.conftest import DATA, SHIPPED_CONFIG
from tests.store_backend import StoreSQL, store_url_for

pytestmark = pytest.mark.usefixtures("docker_client")
ENV = "local-docker"


def config_with(tmp_path: Path, policy: dict[str, Any], restart_timeout: int | None = None) -> Path:
    """The shipped configuration with local-docker's policy changed."""
    target = tmp_path / "config"
    shutil.copytree(SHIPPED_CONFIG, target)
    path = target / "environments.yml"
    document = yaml.safe_load(path.read_text())
    document["environments"][ENV]["policy"].update(policy)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    if restart_timeout is not None:
        ops = target / "operations.yml"
        text = ops.read_text()
        marker = "  restart_service:\n"
        head, _, tail = text.partition(marker)
        tail = tail.replace("timeout_seconds: 120", f"timeout_seconds: {restart_timeout}", 1)
        ops.write_text(head + marker + tail)
    return target


def load(config_dir: Path, tmp_path: Path) -> UICIConfig:
    return load_config(config_dir, environ={"UICI_STORAGE_URL": store_url_for(tmp_path)})


def request(
    config: UICIConfig,
    target: str,
    entry: str = "cli",
    operation: str = "restart_service",
    incident: str | None = None,
    **parameters: Any,
) -> GateRequest:
    step = PlanStep(
        phase="resolution",
        operation=operation,
        environment=ENV,
        target=target,
        parameters={"stop_timeout": 0, **parameters},
        proposed_by="runbook",
    )
    context = IncidentContext(
        incident_id=incident or f"t-{uuid.uuid4().hex[:8]}",
        alert=AlertInfo(labels={"alertname": "manual-operation"}),
        environment=ENV,
        service=target,
    )
    expires = time.time() + 600
    from datetime import UTC, datetime

    approval = Approval(
        step_key=step.key(),
        approved_by="sre",
        expires_at=datetime.fromtimestamp(expires, tz=UTC),
    )
    return GateRequest(
        step=step,
        context=context,
        actor="sre",
        entry=entry,  # type: ignore[arg-type]
        approval=approval,
        intent_key=f"{entry}-{uuid.uuid4().hex}",
    )


def audit_results(tmp_path: Path) -> list[str]:
    with StoreSQL(store_url_for(tmp_path)) as db:
        return [r[0] for r in db.execute("SELECT result FROM audit ORDER BY id")]


def compose_container(lab: FailureLab, suffix: str, project: str, service: str) -> Any:
    labels = {"com.docker.compose.project": project, "com.docker.compose.service": service}
    return lab.run(suffix, ["sleep", "600"], labels=labels)


def test_cooldown_keys_on_the_container_not_the_name_typed(lab: FailureLab, tmp_path: Path) -> None:
    project = f"gate{uuid.uuid4().hex[:6]}"
    container = compose_container(lab, "cool", project, "api")
    config = load(config_with(tmp_path, {"cooldown_seconds": 600}), tmp_path)
    gate = ExecutionGate(config, IncidentStore.from_config(config))
    first = gate.execute(request(config, container.name))
    assert first.outcome == "executed", first.note
    for alias in (container.id, container.id[:12], f"{project}/api"):
        refused = gate.execute(request(config, alias))
        assert refused.outcome == "refused" and refused.refused_by == "history", alias
        assert refused.note.startswith("cool-down:") and container.name in refused.note
        assert "no write there again until" in refused.note
    gate.close()
    assert lab.restart_events(container.name, time.time() - 120) == 1
    assert sum(r.startswith("refused: cool-down") for r in audit_results(tmp_path)) == 3


def test_blast_radius_refuses_a_write_on_several_containers_and_lists_them(
    lab: FailureLab, tmp_path: Path
) -> None:
    project = f"gate{uuid.uuid4().hex[:6]}"
    one = compose_container(lab, "wide-1", project, "worker")
    two = compose_container(lab, "wide-2", project, "worker")
    config = load(config_with(tmp_path, {"cooldown_seconds": 0}), tmp_path)
    gate = ExecutionGate(config, IncidentStore.from_config(config))
    refused = gate.execute(request(config, f"{project}/worker"))
    assert refused.outcome == "refused" and refused.note.startswith("blast radius:")
    assert one.name in refused.note and two.name in refused.note
    assert "max_targets_per_write" in refused.note
    # A label selector always needs a person, even where runbooks may auto-approve.
    selector = request(config, f"com.docker.compose.project={project}")
    unapproved = gate.execute(selector.model_copy(update={"approval": None}))
    assert unapproved.outcome == "needs_approval" and "label selector" in unapproved.note
    gate.close()
    assert lab.restart_events(one.name, time.time() - 120) == 0


def test_writes_per_target_in_the_window_escalate_instead_of_looping(
    lab: FailureLab, tmp_path: Path
) -> None:
    container = lab.run("loop", ["sleep", "600"])
    config = load(
        config_with(tmp_path, {"cooldown_seconds": 0, "max_writes_per_target": 2}), tmp_path
    )
    gate = ExecutionGate(config, IncidentStore.from_config(config))
    outcomes = [gate.execute(request(config, container.name)).outcome for _ in range(3)]
    assert outcomes == ["executed", "executed", "refused"]
    third = gate.execute(request(config, container.name))
    assert third.note.startswith("escalate to a person: 2 writes")
    gate.close()
    assert lab.restart_events(container.name, time.time() - 120) == 2


def test_the_incident_budget_holds_for_every_caller(lab: FailureLab, tmp_path: Path) -> None:
    a = lab.run("budget-a", ["sleep", "600"])
    b = lab.run("budget-b", ["sleep", "600"])
    config = load(
        config_with(tmp_path, {"cooldown_seconds": 0, "max_write_steps_per_incident": 1}),
        tmp_path,
    )
    gate = ExecutionGate(config, IncidentStore.from_config(config))
    first = gate.execute(request(config, a.name, incident="inc-budget"))
    assert first.outcome == "executed"
    second = gate.execute(request(config, b.name, incident="inc-budget"))
    assert second.outcome == "refused"
    assert second.note.startswith("write budget used: 1 of 1 write steps for incident inc-budget")
    gate.close()
    assert lab.restart_events(b.name, time.time() - 120) == 0


def test_a_restart_that_outlasts_its_deadline_is_unknown_and_never_repeated(
    lab: FailureLab, tmp_path: Path
) -> None:
    """A container that ignores SIGTERM, a stop timeout longer than the operation's deadline:
    the call times out while the engine goes on restarting. Exactly one restart, before and
    after re-runs of the same intent and a new caller."""
    container = lab.run("stubborn", ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"])
    since = time.time() - 1
    config = load(config_with(tmp_path, {"cooldown_seconds": 0}, restart_timeout=2), tmp_path)
    store = IncidentStore.from_config(config)
    container.reload()
    started = container.attrs["State"]["StartedAt"]
    first = request(config, container.name, entry="flow", stop_timeout=6)
    gate = ExecutionGate(config, store)
    outcome = gate.execute(first)
    assert outcome.outcome == "unknown", outcome
    assert store.write(outcome.key or "").state == "unknown"  # type: ignore[union-attr]
    # The same intent again, at once (a retried or re-run flow): not repeated.
    again = ExecutionGate(config, store).execute(first)
    assert again.outcome == "refused" and "not repeated blindly" in again.note
    # Another caller: nothing more is sent while the outcome is unknown.
    other = ExecutionGate(config, store).execute(request(config, container.name))
    assert other.outcome == "refused" and other.note.startswith("unknown outcome:")

    def restarted() -> bool:
        container.reload()
        return container.attrs["State"]["StartedAt"] != started and container.status == "running"

    wait_for(restarted, 30, "the engine to finish the restart")
    # Now the effect is observable: the same intent is recovered, not sent again.
    recovered = ExecutionGate(config, store).execute(first)
    assert recovered.outcome == "recovered", recovered.note
    assert store.write(outcome.key or "").state == "done"  # type: ignore[union-attr]
    time.sleep(0.5)  # let the engine publish its events
    assert lab.restart_events(container.name, since) == 1
    gate.close()


# --- the entry points: uici run and POST /operations/{name}/run --------------------------------


def test_uici_run_twice_within_the_cooldown_refuses_the_second(
    lab: FailureLab, tmp_path: Path
) -> None:
    container = lab.run("cli-twice", ["sleep", "600"])
    config_dir = config_with(tmp_path, {"cooldown_seconds": 600})
    env = {"UICI_STORAGE_URL": store_url_for(tmp_path)}
    runner = CliRunner()
    args = ["--config-dir", str(config_dir), "run", "restart_service", "--env", ENV]
    args += ["--target", container.name, "--param", "stop_timeout=0", "--yes"]
    first = runner.invoke(app, args, env=env)
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, args, env=env)
    assert second.exit_code == 2, second.output
    assert "refused: cool-down:" in second.output and "no write there again until" in second.output
    without_yes = runner.invoke(app, args[:-1], env=env)
    assert without_yes.exit_code == 2 and "re-run with --yes" in without_yes.output
    assert lab.restart_events(container.name, time.time() - 120) == 1
    results = audit_results(tmp_path)
    assert any(r.startswith("refused: cool-down") for r in results), results
    assert sum(r == "success" for r in results) == 1


def test_uici_run_over_the_incident_budget_is_refused(lab: FailureLab, tmp_path: Path) -> None:
    a = lab.run("cli-budget-a", ["sleep", "600"])
    b = lab.run("cli-budget-b", ["sleep", "600"])
    config_dir = config_with(tmp_path, {"cooldown_seconds": 0, "max_write_steps_per_incident": 1})
    config = load(config_dir, tmp_path)
    IncidentStore.from_config(config).open_incident(
        IncidentContext(
            incident_id="inc-cli",
            alert=AlertInfo(labels={"alertname": "Down"}),
            environment=ENV,
            service=a.name,
            dependencies=[b.name],
        )
    )
    env = {"UICI_STORAGE_URL": store_url_for(tmp_path)}
    runner = CliRunner()
    base = ["--config-dir", str(config_dir), "run", "restart_service", "--env", ENV, "--yes"]
    base += ["--param", "stop_timeout=0", "--incident", "inc-cli", "--target"]
    assert runner.invoke(app, [*base, a.name], env=env).exit_code == 0
    over = runner.invoke(app, [*base, b.name], env=env)
    assert over.exit_code == 2 and "write budget used: 1 of 1" in over.output
    assert lab.restart_events(b.name, time.time() - 120) == 0
    assert any("write budget used" in r for r in audit_results(tmp_path))


def test_the_api_refuses_a_write_in_cooldown_and_over_budget_and_audits_it(
    lab: FailureLab, tmp_path: Path, test_config_dir: Path
) -> None:
    """tests/data/config: test-docker allows writes with approval, cooldown 60 s, budget 1."""
    a = lab.run("api-a", ["sleep", "600"])
    b = lab.run("api-b", ["sleep", "600"])
    # The test configuration's restart takes a stop timeout, as the shipped one does.
    ops = test_config_dir / "operations.yml"
    ops.write_text(
        ops.read_text().replace(
            "    environments: [docker]\n  scale_service:",
            "    environments: [docker]\n    parameters:\n      stop_timeout: {type: integer,"
            " description: s, default: 0, minimum: 0, maximum: 60}\n  scale_service:",
        )
    )
    # Writes need no approval here (one that does becomes an operation request another
    # person approves: tests/test_api.py), so the cool-down and budgets are what refuse.
    environments = test_config_dir / "environments.yml"
    environments.write_text(
        environments.read_text().replace("approval_required: [write]", "approval_required: []")
    )
    configs = ConfigCache(test_config_dir, environ=key_env(tmp_path))
    with TestClient(create_app(configs, run_dispatcher=False)) as client:
        store = IncidentStore.from_config(configs.get())
        store.open_incident(
            IncidentContext(
                incident_id="inc-api",
                alert=AlertInfo(labels={"alertname": "Down"}),
                environment="test-docker",
                service=a.name,
                dependencies=[b.name],
            )
        )

        def restart(target: str, **extra: Any) -> Any:
            body = {"environment": "test-docker", "target": target, **extra}
            return client.post(
                "/operations/restart_service/run", json=body, headers=auth("operator")
            )

        assert restart(a.name).status_code == 200
        again = restart(a.name)
        assert again.status_code == 409 and "cool-down" in again.json()["error"]
        cooling = restart(a.name, incident_id="inc-api")
        assert cooling.status_code == 409 and "cool-down" in cooling.json()["error"]
        first = restart(b.name, incident_id="inc-api")
        assert first.status_code == 200, first.text
        over = restart(a.name, incident_id="inc-api")
        assert over.status_code == 409 and "write budget used: 1 of 1" in over.json()["error"]
        reader = client.post(
            "/operations/restart_service/run",
            json={"environment": "test-docker", "target": "x" * 5, "approve": True},
            headers=auth("reader"),
        )
        assert reader.status_code == 403
        # A client that retries the same request (same X-Request-ID) writes once.
        c = lab.run("api-c", ["sleep", "600"])
        same = {**auth("operator"), "X-Request-ID": "retry-0001"}
        body = {"environment": "test-docker", "target": c.name}
        replies = [
            client.post("/operations/restart_service/run", json=body, headers=same)
            for _ in range(2)
        ]
        assert [r.status_code for r in replies] == [200, 200]
        assert lab.restart_events(c.name, time.time() - 120) == 1
    results = audit_results(tmp_path)
    assert sum(r.startswith("refused: cool-down") for r in results) >= 2
    assert lab.restart_events(a.name, time.time() - 120) == 1
    assert lab.restart_events(b.name, time.time() - 120) == 1


def test_an_unusable_store_refuses_the_write(lab: FailureLab, tmp_path: Path) -> None:
    container = lab.run("no-store", ["sleep", "600"])
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's directory should be")
    env = {"UICI_STORAGE_URL": f"sqlite:///{blocker}/uici.db"}
    args = ["--config-dir", str(SHIPPED_CONFIG), "run", "restart_service", "--env", ENV]
    result = CliRunner().invoke(app, [*args, "--target", container.name, "--yes"], env=env)
    assert result.exit_code == 2 and "the incident store" in result.output
    assert "none runs" in result.output
    assert lab.restart_events(container.name, time.time() - 120) == 0
    assert DATA.exists()


def test_a_person_resolves_an_unknown_write_and_the_target_opens_again(
    lab: FailureLab, tmp_path: Path
) -> None:
    from agent.incidents.storage import WriteRecord
    from infrastructure.executors.base import ResolvedTarget

    container = lab.run("resolve", ["sleep", "600"])
    config_dir = config_with(tmp_path, {"cooldown_seconds": 0})
    config = load(config_dir, tmp_path)
    store = IncidentStore.from_config(config)
    earlier = request(config, container.name)
    record = WriteRecord(
        key="w-unknown", incident_id=None, step=earlier.step, state="pending", actor="flow",
        entry="flow", recorded_at=time.time() + 3600,  # in the future: never observed as done
        targets=[ResolvedTarget(identity=container.id, name=container.name)],
    )  # fmt: skip
    assert store.begin_write(record, 0.0, lambda facts: None) is None
    store.finish_write("w-unknown", "unknown", {})
    gate = ExecutionGate(config, store)
    assert gate.execute(request(config, container.name)).note.startswith("unknown outcome:")
    env = {"UICI_STORAGE_URL": store_url_for(tmp_path)}
    cli = ["--config-dir", str(config_dir), "writes"]
    listed = CliRunner().invoke(app, [*cli, "list", "--state", "unknown", "--json"], env=env)
    assert listed.exit_code == 0 and '"w-unknown"' in listed.output
    bad = CliRunner().invoke(app, [*cli, "resolve", "w-unknown", "maybe"], env=env)
    assert bad.exit_code == 2
    done = CliRunner().invoke(
        app, [*cli, "resolve", "w-unknown", "failed", "--reason", "checked", "--as", "sre"], env=env
    )
    assert done.exit_code == 0, done.output
    assert store.write("w-unknown").state == "failed"  # type: ignore[union-attr]
    assert gate.execute(request(config, container.name)).outcome == "executed"
    gate.close()
    assert any(r.startswith("unknown -> failed") for r in audit_results(tmp_path))


def test_no_code_but_the_gate_calls_an_executor_write_or_execute() -> None:
    """Every operation goes through ExecutionGate: outside it (and the executors themselves)
    nothing in the product calls `execute` on an executor or one of its write methods."""
    import ast

    from tests.conftest import REPO_ROOT

    writes = {"restart_service", "start_service", "stop_service", "scale_service",
              "rollback_service", "execute"}  # fmt: skip
    allowed = {
        REPO_ROOT / "agent" / "safety" / "gate.py",
        REPO_ROOT / "infrastructure" / "executors" / "base.py",
    }
    found = []
    for folder in ("agent", "flows", "tasks", "infrastructure", "deployments"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            if path in allowed:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    name = node.func.attr
                    receiver = ast.unparse(node.func.value)
                    if name == "execute" and "executor" not in receiver.lower():
                        continue  # a database cursor, not an executor
                    # the executors' own methods, and the gate's, are the implementation
                    inside = "executors" in path.parts and receiver == "self"
                    if name in writes and not inside and not receiver.endswith("gate"):
                        where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
                        found.append(f"{where} {receiver}.{name}")
    assert found == [], found


def test_a_write_being_sent_by_a_live_process_is_not_sent_again(
    lab: FailureLab, tmp_path: Path
) -> None:
    """The same key met while its owner still runs (a client retrying a request that is still
    being served): refused, never sent twice."""
    from agent.incidents.storage import WriteRecord
    from agent.safety.gate import _host, _process_start
    from infrastructure.executors.base import ResolvedTarget

    # Another process of this host that runs (pid 1), and one that is gone (a start time pid 1
    # never had).
    alive = f"{_host()}:1:{_process_start(1)}#t1"
    gone = f"{_host()}:1:0#t2"
    container = lab.run("live", ["sleep", "600"])
    config = load(config_with(tmp_path, {"cooldown_seconds": 0}), tmp_path)
    store = IncidentStore.from_config(config)
    live = request(config, container.name)
    record = WriteRecord(
        key=live.intent_key or "", incident_id=live.context.incident_id, step=live.step,
        state="pending", actor="sre", entry="cli", recorded_at=time.time(), owner=alive,
        targets=[ResolvedTarget(identity=container.id, name=container.name)],
    )  # fmt: skip
    assert store.begin_write(record, 0.0, lambda facts: None) is None
    gate = ExecutionGate(config, store)
    again = gate.execute(live)
    assert again.outcome == "refused" and "is being sent right now" in again.note
    # A process that is gone: taken over, observed (no sign of the call on the engine), sent once.
    store.finish_write(record.key, "failed", {})
    dead = record.model_copy(update={"key": "dead-owner", "owner": gone})
    assert store.begin_write(dead, 0.0, lambda facts: None) is None
    taken = gate.execute(live.model_copy(update={"intent_key": "dead-owner"}))
    assert taken.outcome == "executed", taken.note
    gate.close()
    assert lab.restart_events(container.name, time.time() - 120) == 1


def test_a_store_made_before_write_owners_is_migrated(tmp_path: Path) -> None:
    """A store whose writes table predates the owner column gets it when opened."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE writes (key TEXT PRIMARY KEY, incident_id TEXT, environment TEXT NOT"
            " NULL, operation TEXT NOT NULL, target TEXT, step TEXT NOT NULL, state TEXT NOT"
            " NULL, actor TEXT NOT NULL, entry TEXT NOT NULL, recorded_at REAL NOT NULL,"
            " finished_at REAL, outcome TEXT)"
        )
    IncidentStore(path)
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(writes)")]
    assert columns[-1] == "owner"
