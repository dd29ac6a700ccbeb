"""The outbox dispatcher against a real Prefect server: a Prefect outage delays diagnoses but
loses none, and a resubmitted alert finds the run that already exists."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def hanging_prefect(launcher: PrefectLauncher) -> Iterator[None]:
    """Prefect "hangs": the launcher's API is a socket that accepts and never answers."""
    with socket.socket() as hang:
        hang.bind(("127.0.0.1", 0))
        hang.listen(8)
        launcher.api_url = f"http://127.0.0.1:{hang.getsockname()[1]}/api"
        yield


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


def test_a_dispatcher_cancelled_mid_batch_gives_back_what_it_had_not_started(
    test_config_dir: Path, tmp_path: Path
) -> None:
    """Prefect hangs (a socket that accepts and never answers) and the task is cancelled: the
    row in flight keeps its lease (its start may still reach Prefect, so no other dispatcher
    takes it before the lease runs out), the row not started is due again at once."""
    config, store, launcher = setup(test_config_dir, tmp_path)
    body = AlertmanagerWebhook.model_validate(
        notification(alert("web", fingerprint="stop000000000001"), alert("db"))
    )
    AlertIngestor(config, store).ingest(body, "req-s", "webhook", "t")
    with hanging_prefect(launcher):
        dispatcher = Dispatcher(config, store, launcher)

        async def cancel_mid_batch() -> None:
            task = asyncio.create_task(dispatcher.run_once())
            await asyncio.sleep(1.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancel_mid_batch())
    with StoreSQL(store.database) as db:
        left = db.execute("SELECT state, attempts, next_attempt_at FROM dispatch ORDER BY id")
        (in_flight, not_started) = left.fetchall()
    now = time.time()
    assert in_flight[:2] == ("pending", 0) and in_flight[2] > now  # still leased
    assert not_started[:2] == ("pending", 0) and not_started[2] <= now
    assert len(Dispatcher(config, store, launcher)._due()) == 1  # another takes that one


def test_a_stopping_service_gives_back_the_rows_it_had_not_started(
    deployed: str, test_config_dir: Path, tmp_path: Path
) -> None:
    """The service stops (its lifespan sets `stop`) in the middle of a batch: the run being
    started finishes and is recorded, the rest of the batch is due again at once for the other
    replicas instead of waiting out its lease."""
    config, store, launcher = setup(test_config_dir, tmp_path)
    alerts = [alert(f"svc-{i}", fingerprint=f"halt{i:012d}") for i in range(12)]
    AlertIngestor(config, store).ingest(
        AlertmanagerWebhook.model_validate(notification(*alerts)), "req-h", "webhook", "t"
    )
    dispatcher = Dispatcher(config, store, launcher)

    async def stop_after_the_first_start() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run_forever(stop))
        deadline = time.monotonic() + 30
        while not any(e.type == "dispatch.started" for e in EventLog(store.database).since(0)):
            assert time.monotonic() < deadline, "no diagnosis was started"
            await asyncio.sleep(0.005)
        stop.set()
        await asyncio.wait_for(task, 60)

    asyncio.run(stop_after_the_first_start())
    with StoreSQL(store.database) as db:
        rows = db.execute("SELECT state, attempts, next_attempt_at FROM dispatch").fetchall()
    done = [r for r in rows if r[0] == "done"]
    given_back = [r for r in rows if r[0] == "pending"]
    assert len(rows) == 12 and 1 <= len(done) < 12, rows
    assert all(r[1] == 0 and r[2] <= time.time() for r in given_back), given_back
    started = [e for e in EventLog(store.database).since(0) if e.type == "dispatch.started"]
    assert len(started) == len(done)  # each start recorded once, none lost


def test_a_stop_while_prefect_hangs_gives_back_the_rest_at_once(
    test_config_dir: Path, tmp_path: Path
) -> None:
    """Prefect hangs on the first start and the service stops: the rows behind it are given
    back at once (the other replicas take them), not after the hung call's timeout."""
    config, store, launcher = setup(test_config_dir, tmp_path)
    body = AlertmanagerWebhook.model_validate(
        notification(*(alert(f"svc-{i}", fingerprint=f"hang{i:012d}") for i in range(3)))
    )
    AlertIngestor(config, store).ingest(body, "req-g", "webhook", "t")
    with hanging_prefect(launcher):
        dispatcher = Dispatcher(config, store, launcher)

        def due_now() -> int:
            with StoreSQL(store.database) as db:
                found = db.execute(
                    "SELECT COUNT(*) FROM dispatch WHERE next_attempt_at <= ?", (time.time(),)
                )
                return int(found.fetchone()[0])  # type: ignore[index]

        async def stop_while_hung() -> tuple[int, bool]:
            stop = asyncio.Event()
            task = asyncio.create_task(dispatcher.run_forever(stop))
            await asyncio.sleep(1.0)  # the first start hangs
            stop.set()
            deadline = time.monotonic() + 10
            while due_now() < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            given_back, still_waiting = due_now(), not task.done()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return given_back, still_waiting

        given_back, still_waiting = asyncio.run(stop_while_hung())
    assert given_back == 2 and still_waiting  # given back while the hung call still waited
    assert len(Dispatcher(config, store, launcher)._due()) == 2
