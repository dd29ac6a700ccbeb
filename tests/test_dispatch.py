"""The outbox dispatcher against a real Prefect server: a Prefect outage delays diagnoses but
loses none, and a resubmitted alert finds the run that already exists."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from agent.incidents.audit import AuditLog
from agent.incidents.events import EventLog
from agent.incidents.storage import IncidentStore, run
from agent.service.dispatch import Dispatcher, PrefectLauncher
from agent.service.intake import AlertIngestor, AlertmanagerWebhook
from infrastructure.configuration.loader import load_config
from tests.api_support import alert, key_env, notification
from tests.store_backend import StoreSQL

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def deployed() -> str:
    """The diagnose-incident deployment registered on the test server (no worker runs it)."""
    from flows.diagnose import diagnose_incident

    async def apply() -> str:
        deployment = await diagnose_incident.to_deployment(name="diagnose-incident")
        return str(await deployment.apply())

    return asyncio.run(apply())


def setup(test_config_dir: Path, tmp_path: Path) -> tuple[Any, IncidentStore, PrefectLauncher]:
    config = load_config(test_config_dir, environ=key_env(tmp_path))
    store = IncidentStore.from_config(config)
    launcher = PrefectLauncher(config)
    launcher.api_url = PREFECT_API_URL.value()  # the test server, not platform.yml's
    return config, store, launcher


def test_a_prefect_outage_delays_dispatch_and_loses_nothing(
    deployed: str, test_config_dir: Path, tmp_path: Path
) -> None:
    config, store, launcher = setup(test_config_dir, tmp_path)
    body = AlertmanagerWebhook.model_validate(
        notification(alert("web", fingerprint="out0000000000001"))
    )
    [incident] = (
        AlertIngestor(config, store).ingest(body, "req-outage", "webhook", "test").new_incidents
    )
    dispatcher = Dispatcher(config, store, launcher)

    launcher.api_url = "http://127.0.0.1:9/api"  # nothing listens: Prefect is "down"
    assert asyncio.run(dispatcher.run_once()) == 1
    with StoreSQL(store.database) as db:
        state, attempts, error = db.execute(
            "SELECT state, attempts, last_error FROM dispatch"
        ).fetchone()
        assert (state, attempts) == ("pending", 1) and "Connect" in error
        events = [r[0] for r in db.execute("SELECT type FROM events ORDER BY id")]
    assert events == ["incident.created", "dispatch.failed"]
    assert store.get(incident).flow_run_id is None  # type: ignore[union-attr]

    launcher.api_url = PREFECT_API_URL.value()  # Prefect is back
    time.sleep(config.platform.api.dispatch.retry_backoff_seconds)
    assert asyncio.run(dispatcher.run_once()) == 1
    record = store.get(incident)
    assert record is not None and record.flow_run_id
    with StoreSQL(store.database) as db:
        assert db.execute("SELECT state FROM dispatch").fetchone()[0] == "done"
        assert (
            db.execute("SELECT COUNT(*) FROM dispatch WHERE state = 'pending'").fetchone()[0] == 0
        )

    async def read(run_id: str) -> Any:
        async with get_client() as client:
            return await client.read_flow_run(run_id)

    run = asyncio.run(read(record.flow_run_id))
    assert str(run.deployment_id) == deployed
    assert run.parameters["incident_id"] == incident
    assert run.parameters["service"] == "web" and run.parameters["request_id"] == "req-outage"
    assert run.idempotency_key == body.alerts[0].key

    # The same alert dispatched again (an ambiguous failure, a second service) finds that run.
    again = asyncio.run(launcher.start_diagnosis(run.parameters, run.idempotency_key))
    assert again == record.flow_run_id


def test_a_missing_deployment_is_retried_not_dropped(test_config_dir: Path, tmp_path: Path) -> None:
    config, store, launcher = setup(test_config_dir, tmp_path)
    launcher.deployment = "diagnose-incident/not-deployed"
    body = AlertmanagerWebhook.model_validate(notification(alert("web")))
    AlertIngestor(config, store).ingest(body, "req-x", "webhook", "test")
    asyncio.run(Dispatcher(config, store, launcher).run_once())
    with StoreSQL(store.database) as db:
        state, error = db.execute("SELECT state, last_error FROM dispatch").fetchone()
    assert state == "pending" and "ObjectNotFound" in error


def test_a_dispatcher_that_lost_its_lease_records_nothing(
    deployed: str, test_config_dir: Path, tmp_path: Path
) -> None:
    """Dispatcher A claims a row and is slow; its lease runs out and B starts the same alert.
    Both reach Prefect (the idempotency key makes it one run), but only the holder of the lease
    records the outcome: one audit entry, one dispatch.started event."""
    config, store, launcher = setup(test_config_dir, tmp_path)
    body = AlertmanagerWebhook.model_validate(notification(alert("web")))
    [incident] = AlertIngestor(config, store).ingest(body, "req-l", "webhook", "t").new_incidents
    first, second = Dispatcher(config, store, launcher), Dispatcher(config, store, launcher)
    [row] = first._due()
    with store.transaction() as db:  # A's lease runs out while it works
        run(db, "UPDATE dispatch SET next_attempt_at = :past", {"past": time.time() - 1})
    assert asyncio.run(second.run_once()) == 1
    late = asyncio.run(first._dispatch(row))
    first._done(row, late)
    record = store.get(incident)
    assert record is not None and record.flow_run_id == late  # one run, by its key
    entries = AuditLog(store.database).query(incident, None, "dispatch.diagnose", None, 10)
    started = [e for e in EventLog(store.database).since(0) if e.type == "dispatch.started"]
    assert len(entries) == 1 and len(started) == 1
    with store.database.connect() as db:
        assert run(db, "SELECT state, attempts FROM dispatch").all() == [("done", 1)]


def test_a_dispatcher_stopped_mid_batch_gives_its_rows_back(
    test_config_dir: Path, tmp_path: Path
) -> None:
    """Prefect hangs (a socket that accepts and never answers) and the service stops: the rows
    claimed and not finished are due again at once, not when their lease runs out."""
    config, store, launcher = setup(test_config_dir, tmp_path)
    body = AlertmanagerWebhook.model_validate(
        notification(alert("web", fingerprint="stop000000000001"), alert("db"))
    )
    AlertIngestor(config, store).ingest(body, "req-s", "webhook", "t")
    with socket.socket() as hang:
        hang.bind(("127.0.0.1", 0))
        hang.listen(8)
        launcher.api_url = f"http://127.0.0.1:{hang.getsockname()[1]}/api"
        dispatcher = Dispatcher(config, store, launcher)

        async def stop_mid_batch() -> None:
            task = asyncio.create_task(dispatcher.run_once())
            await asyncio.sleep(1.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(stop_mid_batch())
    with store.database.connect() as db:
        left = run(db, "SELECT state, attempts, next_attempt_at FROM dispatch").all()
    assert len(left) == 2 and all(r[0] == "pending" and r[1] == 0 for r in left)
    assert all(r[2] <= time.time() for r in left)
    assert len(Dispatcher(config, store, launcher)._due()) == 2  # another dispatcher takes them
