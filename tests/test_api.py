"""The agent service in process (FastAPI's TestClient over the real app and a real SQLite
store): the Alertmanager contract, authentication, limits, incidents, operations, audit,
events, health and metrics. Bad inputs first."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from fastapi.testclient import TestClient

from agent.service.app import create_app
from infrastructure.configuration.cache import ConfigCache
from tests.api_support import KEYS, alert, auth, key_env, notification
from tests.store_backend import BACKEND, StoreSQL, store_url_for

MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(test_config_dir: Path, tmp_path: Path) -> Iterator[MakeClient]:
    clients: list[TestClient] = []

    def make(**extra: str) -> TestClient:
        configs = ConfigCache(test_config_dir, environ=key_env(tmp_path, **extra))
        client = TestClient(create_app(configs, run_dispatcher=False))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client()


def db(tmp_path: Path) -> StoreSQL:
    """The test's store (tests/store_backend.py: SQLite or PostgreSQL)."""
    return StoreSQL(store_url_for(tmp_path))


def post(
    client: TestClient, body: Any, key: str = "webhook", headers: dict[str, str] | None = None
) -> Any:
    headers = {**auth(key), **(headers or {})}
    if isinstance(body, bytes):
        return client.post("/webhooks/alertmanager", content=body, headers=headers)
    return client.post("/webhooks/alertmanager", json=body, headers=headers)


# --- bad input ------------------------------------------------------------------------------


def test_the_webhook_refuses_missing_wrong_and_foreign_credentials(
    client: TestClient, tmp_path: Path
) -> None:
    body = notification(alert())
    missing = client.post("/webhooks/alertmanager", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = client.post(
        "/webhooks/alertmanager", json=body, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    basic_wrong = client.post("/webhooks/alertmanager", json=body, auth=("am", "nope"))
    assert basic_wrong.status_code == 401
    assert post(client, body, "reader").status_code == 403  # a read key is not the webhook's
    assert post(client, body, "admin").status_code == 403
    with db(tmp_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 0
        failures = conn.execute("SELECT COUNT(*) FROM audit WHERE action = 'auth.failed'")
        assert failures.fetchone()[0] == 3
    # Alertmanager's basic_auth: any user name, the key as password.
    ok = client.post("/webhooks/alertmanager", json=body, auth=("alertmanager", KEYS["webhook"]))
    assert ok.status_code == 202, ok.text


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "malformed JSON body"),
        (b"\xff\xfe not text", 400, "malformed JSON body"),
        (json.dumps({"version": "4", "status": "firing"}).encode(), 422, "body.alerts: Field"),
        (json.dumps({"version": "4", "alerts": {"a": 1}}).encode(), 422, "body.alerts"),
        (json.dumps([1, 2]).encode(), 422, "body: a list"),
    ],
    ids=["malformed", "not-utf8", "missing-alerts", "alerts-not-a-list", "not-object"],
)
def test_a_body_that_is_no_notification_gets_a_precise_4xx_and_stores_nothing(
    client: TestClient, tmp_path: Path, body: bytes, status: int, needle: str
) -> None:
    response = client.post(
        "/webhooks/alertmanager",
        content=body,
        headers={**auth("webhook"), "Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
    text = json.dumps(response.json())
    assert needle in text
    assert response.json()["request_id"]
    with db(tmp_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM invalid_alerts").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({**alert("x"), "startsAt": "yesterday"}, "startsAt"),
        ({**alert("x"), "status": "exploded"}, "status"),
        ({**alert("x"), "labels": {}}, "labels"),
        ({**alert("x"), "labels": {"alertname": 7}}, "labels.alertname"),
        ({**alert("x"), "labels": {"a" * 300: "v"}}, "longer than 256"),
        ("just a string", "not an object"),
    ],
    ids=["bad-time", "bad-status", "no-labels", "label-not-text", "long-label-name", "not-object"],
)
def test_one_invalid_alert_is_stored_and_reported_while_the_valid_ones_proceed(
    client: TestClient, tmp_path: Path, bad: Any, needle: str
) -> None:
    body = notification(alert("web"), alert("api"))
    body["alerts"].insert(1, bad)
    body["version"] = "3"  # an unexpected version is no reason to drop alerts either
    response = post(client, body)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["received"] == 3 and answer["invalid"] == 1
    assert [a["outcome"] for a in answer["alerts"]] == ["new_incident", "invalid", "new_incident"]
    assert answer["alerts"][1]["index"] == 1 and needle in answer["alerts"][1]["reason"]
    assert len(answer["new_incidents"]) == 2
    with db(tmp_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0] == 2
        [row] = conn.execute("SELECT * FROM invalid_alerts").fetchall()
        assert row["position"] == 1 and needle in row["reason"]
        assert json.loads(row["body"]) == bad  # kept as it came, to look at later
        [event] = conn.execute("SELECT * FROM events WHERE type = 'alert.invalid'").fetchall()
        assert json.loads(event["data"])["index"] == 1


def test_the_diagnosis_is_queued_with_the_alert_redacted(
    client: TestClient, tmp_path: Path
) -> None:
    leaky = alert("web")
    leaky["annotations"]["description"] = "connect with password hunter2 failed"
    assert post(client, notification(leaky)).status_code == 202
    with db(tmp_path) as conn:
        [payload] = conn.execute("SELECT payload FROM dispatch").fetchall()
    # The flow run's parameters (which Prefect keeps and shows) carry no secret.
    assert "hunter2" not in payload["payload"]
    assert "[REDACTED]" in json.loads(payload["payload"])["alert"]["annotations"]["description"]


def test_an_oversized_value_is_cut_with_a_marker_and_the_alert_kept(
    client: TestClient, tmp_path: Path
) -> None:
    big = {**alert("web"), "annotations": {"description": "é" * 6144, "summary": "web is down"}}
    big["labels"]["pod_template"] = "x" * 5000
    response = post(client, notification(big, alert("api")))
    assert response.status_code == 202, response.text
    answer = response.json()
    assert len(answer["new_incidents"]) == 2
    assert answer["alerts"][0]["truncated"] == {
        "annotations.description": 6144,
        "labels.pod_template": 5000,
    }
    with db(tmp_path) as conn:
        row = conn.execute(
            "SELECT annotations, labels, truncated FROM alerts WHERE incident_id = ?",
            (answer["new_incidents"][0],),
        ).fetchone()
        description = json.loads(row["annotations"])["description"]
        assert len(description) == 4096 and description.endswith("[cut by UICI: 6144 characters]")
        assert len(json.loads(row["labels"])["pod_template"]) == 4096
        assert json.loads(row["truncated"])["annotations.description"] == 6144
        incident = conn.execute(
            "SELECT context FROM incidents WHERE id = ?", (answer["new_incidents"][0],)
        ).fetchone()
        assert (
            "cut by UICI" in json.loads(incident["context"])["alert"]["annotations"]["description"]
        )


def test_an_oversized_body_is_refused_before_parsing(make_client: MakeClient) -> None:
    client = make_client(UICI_TEST_WEBHOOK_BODY_BYTES="131072")
    group = notification(*(alert(f"svc-{i}") for i in range(300)))  # > 64 KiB, < 128 KiB
    assert 65536 < len(json.dumps(group)) < 131072
    # The webhook has its own limit (api.webhook.max_body_bytes), above the API's 64 KiB.
    assert post(client, group).status_code == 202
    too_big = client.post(
        "/incidents", content=b"{" + b" " * 70_000 + b"}", headers=auth("operator")
    )
    assert too_big.status_code == 413 and "larger than 65536 bytes" in too_big.json()["error"]
    huge = notification(*(alert(f"svc-{i}") for i in range(600)))  # > 128 KiB
    response = post(client, huge)
    assert response.status_code == 413
    assert "larger than 131072 bytes" in response.json()["error"]

    def chunks() -> Iterator[bytes]:
        yield b'{"version": "4", "status": "firing", "alerts": ['
        for _ in range(200):
            yield b'{"x": "' + b"a" * 1000 + b'"},'
        yield b"{}]}"

    streamed = client.post(
        "/webhooks/alertmanager",
        content=chunks(),
        headers={**auth("webhook"), "Content-Type": "application/json"},
    )
    assert streamed.status_code == 413


# --- the Alertmanager contract --------------------------------------------------------------


def test_a_real_alertmanager_body_with_extras_is_accepted(
    client: TestClient, tmp_path: Path
) -> None:
    body = notification(
        {**alert("web"), "startsAt": "2026-11-24T13:22:34.501986677+02:00", "valueString": "x"},
        routeLabels={"team": "sre"},
        notification_reason="new",
        orgId=1,
    )
    response = post(client, body)
    assert response.status_code == 202, response.text
    [disposition] = response.json()["alerts"]
    assert disposition["outcome"] == "new_incident"
    assert disposition["starts_at"] == "2026-11-24T11:22:34.501986Z"  # UTC, microseconds
    incident = client.get(f"/incidents/{disposition['incident_id']}", headers=auth("reader"))
    assert incident.status_code == 200
    detail = incident.json()
    assert detail["service"] == "web" and detail["environment"] == "test-docker"
    assert detail["status"] == "open"
    assert [e["event"] for e in detail["timeline"]] == ["incident.created"]
    with db(tmp_path) as conn:
        [row] = conn.execute("SELECT * FROM dispatch").fetchall()
        assert row["kind"] == "diagnose" and row["state"] == "pending"
        parameters = json.loads(row["payload"])
        assert parameters["service"] == "web" and parameters["incident_id"] == detail["id"]
        assert parameters["request_id"] == response.headers["x-request-id"]


def test_repeats_update_one_incident_and_new_episodes_open_another(
    client: TestClient, tmp_path: Path
) -> None:
    a = alert("web", fingerprint="aaaa000000000001")
    first = post(client, notification(a)).json()
    assert first["alerts"][0]["outcome"] == "new_incident"
    # The whole group again, plus a new member: only the new one opens an incident.
    b = alert("db", fingerprint="bbbb000000000002")
    second = post(client, notification(a, b)).json()
    assert [d["outcome"] for d in second["alerts"]] == ["repeat", "new_incident"]
    # Same fingerprint, a new startsAt: a new firing episode, a new incident.
    a2 = {**a, "startsAt": "2026-11-25T08:00:00Z"}
    third = post(client, notification(a2)).json()
    assert third["alerts"][0]["outcome"] == "new_incident"
    assert third["alerts"][0]["incident_id"] != first["alerts"][0]["incident_id"]
    with db(tmp_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0] == 3
        assert conn.execute("SELECT COUNT(*) FROM dispatch").fetchone()[0] == 3
        deliveries = conn.execute(
            "SELECT deliveries FROM alerts WHERE fingerprint = ?", (a["fingerprint"],)
        )
        assert sorted(r[0] for r in deliveries) == [1, 2]


def test_concurrent_duplicate_deliveries_open_one_incident(
    client: TestClient, tmp_path: Path
) -> None:
    body = notification(alert("web", fingerprint="dup0000000000001"))
    codes: list[int] = []

    def send() -> None:
        codes.append(post(client, body).status_code)

    threads = [threading.Thread(target=send) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [202] * 12
    with db(tmp_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM dispatch").fetchone()[0] == 1
        assert conn.execute("SELECT deliveries FROM alerts").fetchone()[0] == 12


def test_each_alert_status_counts_not_the_top_level_one(client: TestClient, tmp_path: Path) -> None:
    a = alert("web", fingerprint="mix0000000000001")
    opened = post(client, notification(a)).json()["alerts"][0]["incident_id"]
    b = alert("api", fingerprint="mix0000000000002")
    resolved_a = {**a, "status": "resolved", "endsAt": "2026-11-24T14:00:00.123456789Z"}
    unknown = alert("cache", status="resolved", fingerprint="mix0000000000003")
    mixed = post(client, notification(resolved_a, b, unknown, status="firing")).json()
    outcomes = {d["fingerprint"]: d["outcome"] for d in mixed["alerts"]}
    assert outcomes == {
        a["fingerprint"]: "resolved",
        b["fingerprint"]: "new_incident",
        unknown["fingerprint"]: "resolved_unknown",
    }
    assert mixed["resolved_incidents"] == [opened]
    detail = client.get(f"/incidents/{opened}", headers=auth("reader")).json()
    assert detail["status"] == "resolved"
    assert detail["alerts"][0]["state"] == "resolved"
    # A late firing (retry, HA peer) after the resolve does not reopen it.
    late = post(client, notification(a)).json()
    assert late["alerts"][0]["outcome"] == "late_firing"
    assert client.get(f"/incidents/{opened}", headers=auth("reader")).json()["status"] == "resolved"
    with db(tmp_path) as conn:
        kinds = {r[0] for r in conn.execute("SELECT kind FROM dispatch")}
        assert kinds == {"diagnose", "cancel_approvals"}
        # The undispatched diagnosis of the resolved incident is not started any more.
        state = conn.execute(
            "SELECT state FROM dispatch WHERE kind = 'diagnose' AND incident_id = ?", (opened,)
        ).fetchone()[0]
        assert state == "skipped"


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({"service": None}, "no target: none of the labels"),
        ({"uici_env": "prod-nowhere"}, "environment 'prod-nowhere' is not configured"),
        ({"service": "*"}, "invalid target '*'"),
        ({"service": "web;reboot"}, "invalid target 'web;reboot'"),
        ({"uici_env": "off-docker"}, None),
    ],
    ids=["no-target", "unknown-env", "wildcard", "shell", "disabled-env"],
)
def test_an_alert_that_maps_to_nothing_is_recorded_not_dropped(
    client: TestClient, tmp_path: Path, labels: dict[str, str | None], reason: str | None
) -> None:
    a = alert("web")
    for key, value in labels.items():
        if value is None:
            del a["labels"][key]
        else:
            a["labels"][key] = value
    response = post(client, notification(a))
    assert response.status_code == 202
    [disposition] = response.json()["alerts"]
    assert disposition["outcome"] == "unmapped"
    if reason:
        assert reason in disposition["reason"]
    with db(tmp_path) as conn:
        row = conn.execute("SELECT state, reason, labels FROM alerts").fetchone()
        assert row["state"] == "unmapped" and row["reason"] == disposition["reason"]
        assert conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0] == 0
        assert conn.execute("SELECT type FROM events").fetchone()[0] == "alert.unmapped"


def test_a_truncated_notification_is_recorded(client: TestClient, tmp_path: Path) -> None:
    response = post(client, notification(alert("web"), truncatedAlerts=37))
    assert response.json()["truncated_alerts"] == 37
    with db(tmp_path) as conn:
        assert conn.execute("SELECT truncated_alerts FROM deliveries").fetchone()[0] == 37
        result = conn.execute("SELECT result FROM audit WHERE action = 'webhook.alertmanager'")
        assert "truncated: 37 alerts not in the list" in result.fetchone()[0]


@pytest.mark.skipif(
    BACKEND != "sqlite", reason="breaks an SQLite file; the next test is PostgreSQL's"
)
def test_a_store_failure_answers_503_so_alertmanager_retries(
    client: TestClient, tmp_path: Path
) -> None:
    database = tmp_path / "uici.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    database.mkdir()  # the store's file is now a directory: every write fails for real
    response = post(client, notification(alert("web")))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "retry" in response.json()["error"]


def test_a_postgresql_outage_answers_503_and_the_service_recovers(
    test_config_dir: Path, tmp_path: Path
) -> None:
    """The store on PostgreSQL goes away under a running service: the webhook and the API
    answer 503 (Alertmanager retries), readiness says not ready, liveness stays up; once the
    server is back the same process takes the retried notification, with no restart."""
    from tests.postgres import PostgresCluster

    cluster = PostgresCluster()
    try:
        url = cluster.database()
        configs = ConfigCache(test_config_dir, environ=key_env(tmp_path, UICI_TEST_STORAGE_URL=url))
        with TestClient(create_app(configs, run_dispatcher=False)) as client:
            assert post(client, notification(alert("web"))).status_code == 202
            cluster.stop()
            retried = notification(alert("api", fingerprint="pgoutage00000001"))
            down = post(client, retried)
            assert down.status_code == 503 and down.headers["retry-after"] == "5"
            listed = client.get("/incidents", headers=auth("reader"))
            assert listed.status_code == 503 and "unavailable" in listed.json()["error"]
            assert client.get("/health/ready").status_code == 503
            assert client.get("/health").status_code == 200
            cluster.start()
            assert post(client, retried).status_code == 202
            incidents = client.get("/incidents", headers=auth("reader")).json()
            assert {i["service"] for i in incidents} == {"web", "api"}
    finally:
        cluster.close()


def test_the_webhook_credential_is_never_answered_429(make_client: MakeClient) -> None:
    client = make_client(
        # Slow refills (one token per 100 s): the counts cannot depend on how fast this runs.
        UICI_TEST_WEBHOOK_RATE="0.01", UICI_TEST_WEBHOOK_BURST="3",
        UICI_TEST_KEY_RATE="0.01", UICI_TEST_KEY_BURST="3",
    )  # fmt: skip
    webhook_codes = [post(client, notification(alert("web"))).status_code for _ in range(6)]
    assert webhook_codes[:3] == [202] * 3
    assert set(webhook_codes[3:]) == {503}
    limited = post(client, notification(alert("web")))
    assert int(limited.headers["retry-after"]) >= 1
    reader_codes = [client.get("/incidents", headers=auth("reader")).status_code for _ in range(5)]
    assert reader_codes[:3] == [200] * 3 and set(reader_codes[3:]) == {429}
    assert 'uici_rate_limited_total{bucket="webhook"}' in client.get("/metrics").text


# --- incidents, approvals, operations -------------------------------------------------------


def test_incidents_are_listed_with_filters(client: TestClient) -> None:
    post(client, notification(alert("web"), alert("db")))
    listing = client.get("/incidents", headers=auth("reader")).json()
    assert {i["service"] for i in listing} == {"web", "db"}
    only_db = client.get("/incidents", params={"service": "db"}, headers=auth("reader")).json()
    assert [i["service"] for i in only_db] == ["db"]
    assert (
        client.get("/incidents", params={"status": "resolved"}, headers=auth("reader")).json() == []
    )
    future = client.get("/incidents", params={"since": 4102444800}, headers=auth("reader")).json()
    assert future == []
    bad = client.get("/incidents", params={"status": "sideways"}, headers=auth("reader"))
    assert bad.status_code == 422
    assert client.get("/incidents/nope", headers=auth("reader")).status_code == 404
    assert client.get("/incidents").status_code == 401


def test_approving_needs_an_operate_key_that_is_not_the_webhook(client: TestClient) -> None:
    incident = post(client, notification(alert("web"))).json()["new_incidents"][0]
    url = f"/incidents/{incident}/approve"
    assert client.post(url, json={}, headers=auth("webhook")).status_code == 403
    assert client.post(url, json={}, headers=auth("reader")).status_code == 403
    nothing = client.post(url, json={"reason": "ok"}, headers=auth("operator"))
    assert nothing.status_code == 409 and "nothing waits" in nothing.json()["error"]


def test_a_manual_incident_is_queued_for_diagnosis(client: TestClient, tmp_path: Path) -> None:
    assert (
        client.post("/incidents", json={"service": "web"}, headers=auth("reader")).status_code
        == 403
    )
    bad = client.post("/incidents", json={"service": "web$(id)"}, headers=auth("operator"))
    assert bad.status_code == 422 and "invalid target" in bad.json()["error"]
    created = client.post(
        "/incidents", json={"service": "web", "summary": "slow"}, headers=auth("operator")
    )
    assert created.status_code == 202
    incident = created.json()["incident_id"]
    with db(tmp_path) as conn:
        assert conn.execute("SELECT incident_id FROM dispatch").fetchone()[0] == incident
        actor = conn.execute("SELECT actor FROM audit WHERE action = 'incident.create'")
        assert actor.fetchone()[0] == "operator"


def test_operations_need_the_right_scope_and_pass_the_policy(
    client: TestClient, tmp_path: Path
) -> None:
    names = {o["name"] for o in client.get("/operations", headers=auth("reader")).json()}
    assert {"get_logs", "restart_service"} <= names
    assert client.get("/operations/get_logz", headers=auth("reader")).status_code == 404
    dry = client.post(
        "/operations/get_logs/run",
        json={"target": "web", "parameters": {"lines": 5}, "dry_run": True},
        headers=auth("reader"),
    )
    assert dry.status_code == 200 and dry.json()["command"][:4] == ["docker", "logs", "--tail", "5"]
    # A dry run touches nothing: it works on a disabled environment; a real run does not.
    off = {"target": "web", "environment": "off-docker", "parameters": {"lines": 5}}
    dry_off = client.post(
        "/operations/get_logs/run", json={**off, "dry_run": True}, headers=auth("reader")
    )
    assert dry_off.status_code == 200 and dry_off.json()["environment"] == "off-docker"
    real_off = client.post("/operations/get_logs/run", json=off, headers=auth("reader"))
    assert real_off.status_code == 422 and "disabled" in real_off.json()["error"]
    bad = client.post(
        "/operations/get_logs/run",
        json={"target": "web", "parameters": {"lines": "lots"}},
        headers=auth("reader"),
    )
    assert bad.status_code == 422 and "lines" in bad.json()["error"]
    unknown = client.post("/operations/rm_rf/run", json={"target": "web"}, headers=auth("reader"))
    assert unknown.status_code == 422 and "unknown operation" in unknown.json()["error"]
    write = {"target": "web"}
    read_key = client.post("/operations/restart_service/run", json=write, headers=auth("reader"))
    assert read_key.status_code == 403 and "operate" in read_key.json()["error"]
    # Nobody approves their own write: approve: true from the requester is refused.
    own = client.post(
        "/operations/restart_service/run", json={**write, "approve": True}, headers=auth("operator")
    )
    assert own.status_code == 403 and "cannot approve its own write" in own.json()["error"]
    with db(tmp_path) as conn:
        refused = conn.execute(
            "SELECT actor, result FROM audit WHERE action = 'operation.restart_service'"
        ).fetchall()
        assert conn.execute("SELECT COUNT(*) FROM writes").fetchone()[0] == 0
    assert [r["actor"] for r in refused][:2] == ["reader", "operator"]
    assert all(r["result"].startswith("refused") for r in refused)


@pytest.mark.usefixtures("docker_client")
def test_a_read_operation_runs_and_is_journaled(
    client: TestClient, lab: Any, tmp_path: Path
) -> None:
    lab.get("healthy_web")
    target = lab.name("web")
    response = client.post("/operations/list_services/run", json={}, headers=auth("reader"))
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True, response.json()
    assert target in {item["container"] for item in response.json()["data"]}
    events = client.get("/events", headers=auth("reader")).json()
    assert [e["type"] for e in events][-2:] == ["operation.started", "operation.finished"]
    assert events[-1]["data"]["outcome"] == "success"
    metrics = client.get("/metrics").text
    assert (
        'uici_operations_total{environment="test-docker",operation="list_services",outcome="success"} 1.0'
        in metrics
    )
    assert "uici_operation_duration_seconds_bucket" in metrics
    audit = client.get(
        "/audit", params={"action": "operation.list_services"}, headers=auth("admin")
    )
    assert audit.json()[0]["actor"] == "reader"


@pytest.mark.usefixtures("docker_client")
def test_a_write_that_needs_approval_becomes_a_request_another_person_approves(
    client: TestClient, lab: Any, tmp_path: Path
) -> None:
    lab.get("healthy_web")
    target = lab.name("web")
    started = lab.container("web").attrs["State"]["StartedAt"]
    body = {"target": target, "parameters": {}}
    headers = {**auth("operator"), "X-Request-ID": "req-restart-1"}
    asked = client.post("/operations/restart_service/run", json=body, headers=headers)
    assert asked.status_code == 202, asked.text
    request = asked.json()
    assert request["status"] == "pending" and request["requested_by"] == "operator"
    assert request["incident_id"].startswith("op-") and request["required_approvers"] == 1
    # The same request sent again (a client's retry) is the same request.
    again = client.post("/operations/restart_service/run", json=body, headers=headers)
    assert again.status_code == 202 and again.json()["incident_id"] == request["incident_id"]
    incident = request["incident_id"]
    detail = client.get(f"/incidents/{incident}", headers=auth("reader")).json()
    assert detail["status"] == "awaiting_approval"
    assert detail["approvals"][0]["requested_by"] == "operator"
    url = f"/incidents/{incident}/approve"
    own = client.post(url, json={}, headers=auth("operator"))
    assert own.status_code == 403 and "cannot approve" in own.json()["error"]
    lab.container("web").reload()
    assert lab.container("web").attrs["State"]["StartedAt"] == started, "nothing ran yet"
    approved = client.post(url, json={"reason": "go"}, headers=auth("admin"))
    assert approved.status_code == 200, approved.text
    answer = approved.json()
    assert answer["decision"] == "approved" and answer["approvers"] == ["admin"]
    assert answer["outcome"] == "executed" and answer["result"]["success"] is True, json.dumps(
        answer
    )[:3000]
    lab.container("web").reload()
    assert lab.container("web").attrs["State"]["StartedAt"] != started, "restarted once"
    detail = client.get(f"/incidents/{incident}", headers=auth("reader")).json()
    assert detail["status"] == "resolved"
    assert detail["report"]["operation_request"]["approved_by"] == ["admin"]
    assert client.post(url, json={}, headers=auth("admin")).status_code == 409
    with db(tmp_path) as conn:
        [write_row] = conn.execute("SELECT actor, state FROM writes").fetchall()
        assert write_row["actor"] == "operator" and write_row["state"] == "done"
        trail = conn.execute(
            "SELECT actor, action, result, parameters FROM audit WHERE incident_id = ? ORDER BY id",
            (incident,),
        ).fetchall()
    actions = [(r["actor"], r["action"]) for r in trail]
    assert ("operator", "approval.approve") in actions and ("admin", "approval.approve") in actions
    admin_vote = next(
        r for r in trail if r["actor"] == "admin" and r["action"] == "approval.approve"
    )
    assert json.loads(admin_vote["parameters"])["via"] == "api"
    assert json.loads(admin_vote["parameters"])["address"] == "testclient"


# --- audit, events, health, metrics, logs ---------------------------------------------------


def test_the_audit_trail_is_admin_only_and_append_only(client: TestClient, tmp_path: Path) -> None:
    post(client, notification(alert("web")))
    assert client.get("/audit", headers=auth("operator")).status_code == 403
    records = client.get("/audit", headers=auth("admin")).json()
    assert records[0]["action"] == "webhook.alertmanager" and records[0]["actor"] == "webhook"
    with db(tmp_path) as conn:
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"):
            conn.execute("UPDATE audit SET result = 'forged'")
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"):
            conn.execute("DELETE FROM audit")


def test_events_stream_live_and_replay_from_an_id(client: TestClient) -> None:
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws/events") as ws:
        ws.receive_text()
    with (
        pytest.raises(WebSocketDisconnect),
        client.websocket_connect("/ws/events", headers=auth("webhook")) as ws,
    ):
        ws.receive_text()
    first = post(client, notification(alert("web"))).json()["new_incidents"][0]
    with client.websocket_connect("/ws/events?since=0", headers=auth("reader")) as ws:
        replayed = json.loads(ws.receive_text())
        assert replayed["type"] == "incident.created" and replayed["incident_id"] == first
        second = post(client, notification(alert("db"))).json()["new_incidents"][0]
        live = json.loads(ws.receive_text())
        assert live["incident_id"] == second and live["id"] > replayed["id"]
    schema = client.get("/events/schema").json()
    assert set(schema["required"]) >= {"id", "at", "type"}


def test_health_readiness_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    # Readiness is what the webhook needs: Prefect being down (the test configuration points
    # it at a port nothing listens on) keeps the service ready; the outbox covers Prefect.
    ready = client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert {c["name"] for c in ready.json()["checks"]} == {"configuration", "store"}
    assert client.get("/health/deep").status_code == 401  # the deep check needs a key
    deep = client.get("/health/deep", headers=auth("reader"))
    checks = {c["name"]: c for c in deep.json()["checks"]}
    assert deep.status_code == 503 and checks["prefect"]["ok"] is False
    assert checks["configuration"]["ok"] and checks["store"]["ok"]
    assert "environment:test-docker" in checks
    assert all(c["latency_ms"] >= 0 for c in checks.values())
    post(client, notification(alert("web"), alert("db", status="resolved")))
    text = client.get("/metrics").text
    assert 'uici_alerts_received_total{status="firing"} 1.0' in text
    assert 'uici_alerts_received_total{status="resolved"} 1.0' in text
    assert "uici_incidents_opened_total 1.0" in text
    assert "uici_dispatch_pending 1.0" in text
    assert 'uici_webhook_duration_seconds_count{code="202"} 1.0' in text
    assert "uici_approvals_pending 0.0" in text


def test_logs_carry_the_request_id(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from agent.logs import ContextFilter, JsonFormatter

    caplog.set_level(logging.WARNING, logger="uici")
    response = post(
        client, notification(alert("web"), truncatedAlerts=2), headers={"X-Request-ID": "req-123"}
    )
    assert response.headers["x-request-id"] == "req-123"
    [record] = [r for r in caplog.records if "truncated" in r.getMessage()]
    ContextFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["request_id"] == "req-123" and entry["level"] == "WARNING"


def test_no_configured_secret_leaks_anywhere(
    make_client: MakeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    llm_key = "sk-SENTINEL-llm-key-0d9e2f"
    client = make_client(UICI_TEST_LLM_KEY=llm_key)
    bodies = [
        post(client, notification(alert("web"))).text,
        post(client, b"{bad", headers={"Content-Type": "application/json"}).text,
        client.post(
            "/webhooks/alertmanager",
            json=notification(alert("db")),
            headers={"Authorization": f"Bearer {KEYS['webhook']}x"},
        ).text,
        client.get("/audit", headers=auth("admin")).text,
        client.get("/events", headers=auth("reader")).text,
        client.get("/health/ready").text,
        client.get("/metrics").text,
        client.get("/openapi.json").text,
        client.post(
            "/operations/get_logs/run",
            json={"target": "web", "parameters": {"lines": 3}, "dry_run": True},
            headers=auth("operator"),
        ).text,
    ]
    for incident in client.get("/incidents", headers=auth("reader")).json():
        bodies.append(client.get(f"/incidents/{incident['id']}", headers=auth("reader")).text)
    with db(tmp_path) as conn:
        dumped = "\n".join(
            json.dumps([tuple(r) for r in conn.execute(f"SELECT * FROM {table}")])
            for table in ("alerts", "audit", "events", "dispatch", "incidents", "deliveries")
        )
    haystack = "\n".join([*bodies, caplog.text, dumped])
    for secret in (llm_key, *KEYS.values()):
        assert secret not in haystack
    assert os.environ.get("UICI_TEST_LLM_KEY") is None


# --- keys, limits and CORS follow the configuration; addresses behind a proxy -----------------


def test_keys_and_cors_follow_a_configuration_reload_without_a_restart(
    test_config_dir: Path, tmp_path: Path
) -> None:
    import time

    configs = ConfigCache(test_config_dir, environ=key_env(tmp_path), ttl_seconds=0.2)
    with TestClient(create_app(configs, run_dispatcher=False)) as client:
        assert client.get("/incidents", headers=auth("reader")).status_code == 200
        preflight = {"Origin": "https://ops.example", "Access-Control-Request-Method": "GET"}
        assert (
            "access-control-allow-origin"
            not in client.options("/incidents", headers=preflight).headers
        )
        platform = test_config_dir / "platform.yml"
        text = platform.read_text()
        assert '- {name: reader, sha256: "${UICI_TEST_READER_SHA256:-}", scopes: [read]}\n' in text
        text = text.replace(
            '    - {name: reader, sha256: "${UICI_TEST_READER_SHA256:-}", scopes: [read]}\n', ""
        ).replace("cors_origins: []", 'cors_origins: ["https://ops.example"]')
        platform.write_text(text)
        time.sleep(0.3)
        assert client.get("/incidents", headers=auth("reader")).status_code == 401
        assert client.get("/incidents", headers=auth("operator")).status_code == 200
        allowed = client.options("/incidents", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://ops.example"


def test_a_flood_of_bad_keys_behind_the_ingress_cannot_lock_operators_out(
    test_config_dir: Path, tmp_path: Path
) -> None:
    env = key_env(tmp_path, UICI_TEST_ADDRESS_RATE="0.001", UICI_TEST_ADDRESS_BURST="5")
    app = create_app(ConfigCache(test_config_dir, environ=env), run_dispatcher=False)
    # The ingress (a trusted proxy in the test configuration) forwards everybody's requests.
    with TestClient(app, client=("10.255.255.254", 4000)) as ingress:
        attacker = {"Authorization": "Bearer uici_guess", "X-Forwarded-For": "203.0.113.9"}
        codes = [ingress.get("/incidents", headers=attacker).status_code for _ in range(8)]
        assert codes == [401] * 5 + [429] * 3
        operator = {**auth("operator"), "X-Forwarded-For": "198.51.100.7"}
        assert ingress.get("/incidents", headers=operator).status_code == 200
        # Even from the flooding address: a valid key is limited by its own bucket only.
        same = {**auth("operator"), "X-Forwarded-For": "203.0.113.9"}
        assert ingress.get("/incidents", headers=same).status_code == 200
        # Another client behind the ingress has a bucket of its own.
        other = {"X-Forwarded-For": "198.51.100.8"}
        assert ingress.get("/incidents", headers=other).status_code == 401
        # A line of its own in front of the proxy's is no way out of the flooder's bucket.
        spoofed = [
            ("Authorization", "Bearer uici_guess"),
            ("X-Forwarded-For", "192.0.2.77"),
            ("X-Forwarded-For", "203.0.113.9"),
        ]
        assert ingress.get("/incidents", headers=spoofed).status_code == 429
    # From a peer that is no trusted proxy, X-Forwarded-For is ignored: no spoofing out of it.
    with TestClient(app, client=("192.0.2.1", 4000)) as direct:
        codes = [
            direct.get("/incidents", headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
            for i in range(7)
        ]
        assert codes == [401] * 5 + [429] * 2


def test_the_client_address_is_read_from_the_right_of_x_forwarded_for() -> None:
    from agent.service.auth import client_address

    trusted = ["10.0.0.0/8", "192.168.1.1"]
    assert client_address("10.1.1.1", "203.0.113.9", trusted) == "203.0.113.9"
    # The client may write anything on the left; the nearest untrusted hop is the client.
    assert client_address("10.1.1.1", "1.2.3.4, 203.0.113.9, 10.2.2.2", trusted) == "203.0.113.9"
    assert client_address("10.1.1.1", "garbage, 192.168.1.1", trusted) == "192.168.1.1"
    assert client_address("198.51.100.1", "203.0.113.9", trusted) == "198.51.100.1"
    assert client_address("10.1.1.1", None, trusted) == "10.1.1.1"
    assert client_address("testclient", "203.0.113.9", trusted) == "testclient"
    # As proxies write addresses: with ports, bracketed v6, v4-mapped v6 peers.
    assert client_address("::ffff:10.1.1.1", "203.0.113.9:5555", trusted) == "203.0.113.9"
    assert client_address("10.1.1.1", "[2001:db8::1]:443", trusted) == "2001:db8::1"


def test_a_removed_key_ends_the_event_stream_it_opened(
    test_config_dir: Path, tmp_path: Path
) -> None:
    import time

    from starlette.websockets import WebSocketDisconnect

    configs = ConfigCache(test_config_dir, environ=key_env(tmp_path), ttl_seconds=0.2)
    app = create_app(configs, run_dispatcher=False, run_notifier=False)
    with (
        TestClient(app) as client,
        client.websocket_connect("/ws/events", headers=auth("reader")) as ws,
    ):
        platform = test_config_dir / "platform.yml"
        reader = '    - {name: reader, sha256: "${UICI_TEST_READER_SHA256:-}", scopes: [read]}\n'
        platform.write_text(platform.read_text().replace(reader, ""))
        time.sleep(0.3)
        post(client, notification(alert("web")))  # an event arrives
        with pytest.raises(WebSocketDisconnect) as closed:
            for _ in range(50):
                ws.receive_text()
        assert closed.value.code == 1008


def test_the_deep_check_is_cached_between_calls(test_config_dir: Path, tmp_path: Path) -> None:
    platform = test_config_dir / "platform.yml"
    platform.write_text(
        platform.read_text().replace(
            "deep_health: {cache_seconds: 0}", "deep_health: {cache_seconds: 60}"
        )
    )
    configs = ConfigCache(test_config_dir, environ=key_env(tmp_path))
    with TestClient(create_app(configs, run_dispatcher=False, run_notifier=False)) as client:
        first = client.get("/health/deep", headers=auth("reader")).json()
        second = client.get("/health/deep", headers=auth("reader")).json()
        assert first == second, "the second caller got the first run's answer, latencies and all"
