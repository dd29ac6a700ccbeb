"""The health sweep never repeats itself: real containers on the real engine (labelled per run
by the failure library), the real incident store, and for the whole sweep a real Prefect server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker.models.containers import Container

from agent.evaluation.failures import FailureLab, wait_for
from agent.incidents.context import LabelConventions, context_from_alert
from agent.incidents.models import AlertInfo, IncidentContext
from agent.incidents.storage import IncidentStore
from agent.incidents.sweep import (
    UnhealthyService,
    open_sweep_incident,
    select_for_diagnosis,
    sweep_alert,
    unhealthy_services,
)
from agent.planning.runbook import RunbookPlanner
from infrastructure.configuration.loader import UICIConfig, load_config
from infrastructure.executors.factory import create_executor
from tests.conftest import SHIPPED_CONFIG
from tests.executor_support import run_operation

CRASH = ["sh", "-c", "echo 'ERROR: cannot open /data/state.db'; exit 3"]


@pytest.fixture
def config(tmp_path: Path) -> UICIConfig:
    return load_config(SHIPPED_CONFIG, environ={"UICI_STORAGE_URL": f"sqlite:///{tmp_path}/u.db"})


@pytest.fixture
def marked(lab: FailureLab) -> Iterator[tuple[str, dict[str, str]]]:
    """A selector and labels that only this test's containers carry (besides the run label)."""
    marker = uuid.uuid4().hex[:8]
    yield f"uici.test.sweep={marker}", {"uici.test.sweep": marker}
    for container in lab.client.containers.list(
        all=True, filters={"label": f"uici.test.sweep={marker}"}
    ):
        container.remove(force=True)


def exited(container: Container) -> Container:
    wait_for(lambda: (container.reload() or container.status) == "exited", 20, "the exit")
    return container


def listed(config: UICIConfig, selector: str) -> list[dict[str, object]]:
    """What the sweep reads: list_services on local-docker, run as every operation is run."""
    executor = create_executor("local-docker", config.environments.environments["local-docker"])
    try:
        result = run_operation("local-docker", config, executor, "list_services", selector=selector)
    finally:
        executor.close()
    assert result.success, result.error
    assert isinstance(result.data, list)
    return result.data


def test_a_one_shot_that_exited_0_is_not_unhealthy_but_a_crash_is(
    lab: FailureLab, config: UICIConfig, marked: tuple[str, dict[str, str]]
) -> None:
    selector, labels = marked
    marker = labels["uici.test.sweep"]
    done = exited(lab.run(f"oneshot-{marker}", ["true"], labels=labels))
    crashed = exited(lab.run(f"crash-{marker}", CRASH, labels=labels))
    items = {i["container"]: i for i in listed(config, selector)}
    # The engine's own exit codes reach the sweep through list_services.
    assert items[done.name]["exit_code"] == 0 and items[done.name]["state"] == "exited"
    assert items[crashed.name]["exit_code"] == 3
    found = unhealthy_services("local-docker", list(items.values()), config.agents.health_sweep)
    assert [u.service for u in found] == [crashed.name]
    [crash] = found
    assert (crash.observed_state, crash.exit_code) == ("exited", 3)
    assert crash.reason == "state exited (exit code 3)"


def test_sweep_incidents_match_runbooks_on_what_was_observed(
    lab: FailureLab, config: UICIConfig, tmp_path: Path
) -> None:
    scenario = lab.get("unhealthy")  # running, its health check failing
    lab.get("oom")  # exited 137
    settings = config.agents.health_sweep
    found = {
        u.service: u
        for u in unhealthy_services(
            "local-docker", listed(config, f"uici.test.run={lab.run_id}"), settings
        )
    }
    unhealthy, oom = found[scenario.target], found[lab.name("worker")]
    assert unhealthy.observed_state == "unhealthy" and oom.observed_state == "exited"
    conventions = LabelConventions.from_config(config)
    planner = RunbookPlanner(config.agents)
    store = IncidentStore(tmp_path / "store.db")
    for finding in (unhealthy, oom):
        alert, context = open_sweep_incident(store, finding, conventions, settings)
        labels = context.alert.labels
        assert labels[settings.source_label] == "sweep"
        assert labels[settings.observed_state_label] == finding.observed_state
        assert labels["alertname"] == "HealthSweep"  # one name for every finding: not matched on
        assert planner.match(context).name == "service-down"
        # The alert maps back to the service through the same label conventions.
        mapped = context_from_alert(alert, conventions)
        assert (mapped.environment, mapped.service) == ("local-docker", finding.service)
        stored = store.get(context.incident_id)
        assert stored is not None and stored.status == "open"
        assert stored.context.alert.labels[settings.source_label] == "sweep"
    # Without the observed state, the sweep's alert name alone matches no specific runbook.
    bare = context.model_copy(update={"alert": AlertInfo(labels={"alertname": "HealthSweep"})})
    assert planner.match(bare).name == "default"


def incident(store: IncidentStore, service: str, status: str, **labels: str) -> str:
    incident_id = f"inc-{uuid.uuid4().hex[:8]}"
    context = IncidentContext(
        incident_id=incident_id,
        alert=AlertInfo(labels={"alertname": "ContainerDown", **labels}),
        environment="local-docker",
        service=service,
    )
    store.open_incident(context)
    if status != "open":
        store.set_status(incident_id, status)  # type: ignore[arg-type]
    return incident_id


def finding(service: str, *aliases: str) -> UnhealthyService:
    return UnhealthyService(
        environment="local-docker",
        service=service,
        reason="state exited (exit code 1)",
        observed_state="exited",
        exit_code=1,
        aliases=list(aliases),
    )


def test_an_unfinished_or_recent_incident_covers_a_service(
    config: UICIConfig, tmp_path: Path
) -> None:
    store = IncidentStore(tmp_path / "store.db")
    settings = config.agents.health_sweep
    window = settings.rediagnose_after_seconds
    later = time.time() + window + 60
    waiting = incident(store, "api", "awaiting_approval")
    recent = incident(store, "worker", "diagnosed")
    incident(store, "web", "open")  # a webhook incident on the compose service name

    found = [finding("api"), finding("worker"), finding("proj-web-1", "web"), finding("new")]
    selected, covered = select_for_diagnosis(found, store, settings)
    assert [u.service for u in selected] == ["new"]
    reasons = {c.service: (c.incident_id, c.reason) for c in covered}
    assert reasons["api"] == (waiting, f"incident {waiting} is awaiting_approval")
    assert reasons["worker"][0] == recent
    assert "within health_sweep.rediagnose_after_seconds" in reasons["worker"][1]
    assert "proj-web-1" in reasons

    # After the window only unfinished incidents still cover; a diagnosed one does not.
    selected, covered = select_for_diagnosis(found, store, settings, now=later)
    assert sorted(u.service for u in selected) == ["new", "worker"]
    # With no window at all, the same.
    no_window = settings.model_copy(update={"rediagnose_after_seconds": 0})
    selected, _ = select_for_diagnosis(found, store, no_window)
    assert sorted(u.service for u in selected) == ["new", "worker"]
    # The same service listed twice in one sweep gets one incident.
    selected, _ = select_for_diagnosis([finding("twice"), finding("twice")], store, settings)
    assert [u.service for u in selected] == ["twice"]


def test_an_incident_is_stored_before_its_diagnosis_starts(
    config: UICIConfig, tmp_path: Path
) -> None:
    store = IncidentStore(tmp_path / "store.db")
    settings = config.agents.health_sweep
    conventions = LabelConventions.from_config(config)
    alert, context = open_sweep_incident(store, finding("batch"), conventions, settings)
    assert alert["labels"][settings.observed_state_label] == "exited"
    # A second sweep before the diagnosis has even begun still sees it.
    selected, [covered] = select_for_diagnosis([finding("batch")], store, settings)
    assert selected == [] and covered.incident_id == context.incident_id
    assert sweep_alert(finding("batch"), conventions, settings)["labels"] == alert["labels"]


def test_two_sweeps_open_one_incident_that_says_it_came_from_the_sweep(
    lab: FailureLab, flow_env: Path, marked: tuple[str, dict[str, str]]
) -> None:
    from flows.sweep import health_sweep

    selector, labels = marked
    marker = labels["uici.test.sweep"]
    crashed = exited(lab.run(f"crash-{marker}", CRASH, labels=labels))
    exited(lab.run(f"oneshot-{marker}", ["true"], labels=labels))

    first = asyncio.run(health_sweep(selector=selector))
    assert [u["service"] for u in first["unhealthy"]] == [crashed.name]
    [incident_id] = first["incidents_started"]
    second = asyncio.run(health_sweep(selector=selector))
    assert second["incidents_started"] == []
    assert second["already_covered"] == [crashed.name]
    assert second["covered_by"][0]["incident_id"] == incident_id

    store = IncidentStore(flow_env / "uici.db")
    assert [i.id for i in store.incidents(service=crashed.name)] == [incident_id]
    stored = store.get(incident_id)
    assert stored is not None and stored.report is not None
    assert stored.status not in ("open", "diagnosing"), stored.status
    assert stored.context.alert.labels["uici_source"] == "sweep"
    assert stored.context.alert.labels["uici_observed_state"] == "exited"
    report_labels = stored.report["alert"]["labels"]
    assert report_labels["uici_source"] == "sweep"
    assert "exited (exit code 3)" in stored.report["alert"]["annotations"]["description"]
    events = [entry["event"] for entry in stored.report["timeline"]]
    assert "incident opened (runbook service-down)" in events
