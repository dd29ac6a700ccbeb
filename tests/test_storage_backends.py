"""Issue 16, point 1: the store behaves the same on SQLite and on a real PostgreSQL cluster
(tests/postgres.py): migrations, alert dedupe, outbox claims, write intents and cool-downs,
the append-only audit trail enforced by the database, and event ids a reader can follow.
Every test here runs on both backends (the `store_url` fixture)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from alembic.config import Config
from alembic.script import ScriptDirectory

from agent.incidents.audit import AuditLog
from agent.incidents.events import EventLog
from agent.incidents.models import PlanStep
from agent.incidents.storage import (
    DUPLICATE_KEY,
    HEAD_REVISION,
    MIGRATIONS,
    Database,
    IncidentStore,
    StorageError,
    StoreFailure,
    WriteRecord,
    claim_notifications,
    insert_notification,
    metric_rows,
    run,
    storage_defaults,
)
from agent.service.intake import AlertIngestor, AlertmanagerWebhook
from infrastructure.configuration.loader import load_config
from infrastructure.executors.base import ResolvedTarget
from tests.api_support import alert, key_env, notification
from tests.postgres import PASSWORD, PASSWORD_USER, PostgresCluster, free_port


def tables(source: Database) -> set[str]:
    with source.connect() as db:
        return set(sqlalchemy.inspect(db).get_table_names())


def revision(source: Database) -> list[str]:
    with source.connect() as db:
        return [r[0] for r in run(db, "SELECT version_num FROM alembic_version")]


def step(target: str = "web") -> PlanStep:
    return PlanStep(
        phase="resolution",
        operation="restart_service",
        environment="local-docker",
        target=target,
        proposed_by="runbook",
    )


def write(key: str, target: str = "web", incident: str | None = "inc-1") -> WriteRecord:
    return WriteRecord(
        key=key,
        incident_id=incident,
        step=step(target),
        state="pending",
        actor="test",
        entry="test",
        recorded_at=time.time(),
        targets=[ResolvedTarget(identity=f"id-{target}", name=target)],
        owner="test-owner",
    )


# --- migrations ---------------------------------------------------------------------------


def test_the_head_revision_is_the_one_the_store_checks() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD_REVISION]


def test_a_new_store_is_migrated_once_and_reopened_without_change(store_url: str) -> None:
    store = IncidentStore(store_url)
    assert {"incidents", "alerts", "dispatch", "events", "audit", "writes"} <= tables(
        store.database
    )
    assert revision(store.database) == [HEAD_REVISION]
    store.database.migrate()  # again: nothing to do, nothing duplicated
    assert revision(store.database) == [HEAD_REVISION]


def test_processes_starting_at_once_migrate_once(store_url: str) -> None:
    """Four engines on one empty store migrate concurrently: one does it, the others wait
    for its lock and find the head."""
    databases = [Database(storage_defaults(store_url)) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda d: d.open(), databases))
    assert revision(databases[0]) == [HEAD_REVISION]


def test_a_failing_revision_leaves_the_schema_as_it_was(store_url: str, tmp_path: Path) -> None:
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, scripts)
    (scripts / "versions" / "0002_broken.py").write_text(
        'from alembic import op\nimport sqlalchemy as sa\nrevision = "0002_broken"\n'
        'down_revision = "0001_baseline"\nbranch_labels = None\ndepends_on = None\n'
        "def upgrade():\n"
        '    op.create_table("half_done", sa.Column("id", sa.Integer, primary_key=True))\n'
        '    op.add_column("incidents", sa.Column("extra", sa.Text))\n'
        '    raise RuntimeError("this revision fails halfway")\n'
    )
    source = Database(storage_defaults(store_url))
    with pytest.raises(RuntimeError, match="fails halfway"):
        source.migrate(scripts)
    # Nothing of it stayed: no table, no column, no revision.
    assert tables(source) == set()
    source.migrate()  # the good revisions still apply
    with source.connect() as db:
        columns = {c["name"] for c in sqlalchemy.inspect(db).get_columns("incidents")}
    assert "extra" not in columns and "half_done" not in tables(source)
    with pytest.raises(RuntimeError, match="fails halfway"):
        source.migrate(scripts)
    assert revision(source) == [HEAD_REVISION] and "half_done" not in tables(source)


# --- alerts: dedupe ------------------------------------------------------------------------


def test_the_same_alert_delivered_at_once_many_times_is_one_incident(
    store_url: str, test_config_dir: Path, tmp_path: Path
) -> None:
    config = load_config(test_config_dir, environ=key_env(tmp_path))
    store = IncidentStore(store_url)
    body = AlertmanagerWebhook.model_validate(notification(alert("web", fingerprint="dup" * 5)))
    barrier = threading.Barrier(8)

    def deliver(n: int) -> list[str]:
        barrier.wait()
        return (
            AlertIngestor(config, store).ingest(body, f"req-{n}", "webhook", "test").new_incidents
        )

    with ThreadPoolExecutor(8) as pool:
        created = [i for found in pool.map(deliver, range(8)) for i in found]
    assert len(created) == 1
    [row] = store.alerts_of(created[0])
    assert row["deliveries"] == 8
    with store.database.connect() as db:
        assert run(db, "SELECT COUNT(*) FROM dispatch").scalar() == 1
        assert run(db, "SELECT COUNT(*) FROM deliveries").scalar() == 8


# --- outboxes: claims ----------------------------------------------------------------------


def test_two_dispatchers_never_claim_the_same_outbox_row(
    store_url: str, test_config_dir: Path, tmp_path: Path
) -> None:
    config = load_config(test_config_dir, environ=key_env(tmp_path))
    store = IncidentStore(store_url)
    alerts = [alert(f"svc{n}", fingerprint=f"claim{n:011d}") for n in range(30)]
    AlertIngestor(config, store).ingest(
        AlertmanagerWebhook.model_validate(notification(*alerts)), "req", "webhook", "test"
    )
    barrier = threading.Barrier(3)

    def claim(_: int) -> list[int]:
        barrier.wait()
        taken: list[int] = []
        while batch := store.claim_dispatch(time.time(), 4, time.time() + 60):
            taken += [row["id"] for row in batch]
        return taken

    with ThreadPoolExecutor(3) as pool:
        claimed = list(pool.map(claim, range(3)))
    every = [i for taken in claimed for i in taken]
    assert len(every) == 30 and len(set(every)) == 30
    # Leased: nothing is due again until the lease runs out.
    assert store.claim_dispatch(time.time(), 50, time.time() + 60) == []
    assert len(store.claim_dispatch(time.time() + 61, 50, time.time() + 120)) == 30


def test_two_notifiers_never_claim_the_same_message(store_url: str) -> None:
    store = IncidentStore(store_url)
    with store.transaction() as db:
        for n in range(20):
            assert insert_notification(db, "slack", "diagnosed", f"inc-{n}", "", "{}", 0.0)
        # The same message again is not queued twice.
        assert not insert_notification(db, "slack", "diagnosed", "inc-0", "", "{}", 0.0)

    def claim(_: int) -> list[int]:
        taken: list[int] = []
        while batch := claim_notifications(
            store.database, "slack", time.time(), 3, time.time() + 60
        ):
            taken += [row["id"] for row in batch]
        return taken

    with ThreadPoolExecutor(3) as pool:
        every = [i for taken in pool.map(claim, range(3)) for i in taken]
    assert sorted(every) == sorted(set(every)) and len(every) == 20


# --- writes: intents and cool-down -------------------------------------------------------


def test_racing_writers_on_one_target_record_one_intent(store_url: str) -> None:
    """The policy's check sees the other writer's pending intent: only one passes."""
    store = IncidentStore(store_url)
    barrier = threading.Barrier(6)

    def check(facts: Any) -> str | None:
        time.sleep(0.05)  # widen the window between the read and the insert
        return "in progress" if facts.in_progress else None

    def begin(n: int) -> str | None:
        barrier.wait()
        return store.begin_write(write(f"w-{n}"), 0.0, check)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(begin, range(6)))
    assert answers.count(None) == 1 and answers.count("in progress") == 5
    assert len(store.writes()) == 1


def test_a_write_is_recorded_once_and_its_history_counts(store_url: str) -> None:
    store = IncidentStore(store_url)
    assert store.begin_write(write("w-1"), 0.0, lambda facts: None) is None
    assert store.begin_write(write("w-1"), 0.0, lambda facts: None) == DUPLICATE_KEY
    assert store.claim_write("w-1", "test-owner", "other") is True
    assert store.claim_write("w-1", "test-owner", "third") is False  # one taker only
    store.finish_write("w-1", "done", {"ok": True})
    facts = store.write_facts(write("w-2"), time.time() - 60)
    assert facts.last_write is not None and facts.last_write.key == "w-1"  # the cool-down's
    assert facts.writes_in_window == 1 and facts.incident_writes == 1 and facts.in_progress == []
    assert store.writes_in_incident("inc-1") == 1
    assert store.write("w-1") is not None and store.write("w-1").outcome == {"ok": True}  # type: ignore[union-attr]


# --- the audit trail: append-only in the database ----------------------------------------


@pytest.mark.parametrize(
    "statement", ["UPDATE audit SET result = 'rewritten'", "DELETE FROM audit"]
)
def test_the_database_refuses_to_rewrite_the_audit_trail(store_url: str, statement: str) -> None:
    store = IncidentStore(store_url)
    AuditLog(store.database).record("sre", "operation.restart_service", "success: restarted")
    with (
        pytest.raises(sqlalchemy.exc.DatabaseError, match="append-only"),
        store.transaction() as db,
    ):
        run(db, statement)
    [kept] = AuditLog(store.database).query()
    assert kept.result == "success: restarted"


def test_postgresql_also_refuses_to_truncate_the_audit_trail(postgres: PostgresCluster) -> None:
    store = IncidentStore(postgres.database())
    AuditLog(store.database).record("sre", "operation.restart_service", "success")
    with (
        pytest.raises(sqlalchemy.exc.DatabaseError, match="append-only"),
        store.transaction() as db,
    ):
        run(db, "TRUNCATE audit")
    assert len(AuditLog(store.database).query()) == 1


# --- events: ids a reader can follow ------------------------------------------------------


def test_a_reader_following_ids_misses_no_event_committed_late(store_url: str) -> None:
    """A transaction that took an id first but commits last must not be skipped by a reader
    that already moved past a later id: ids commit in their order."""
    store = IncidentStore(store_url)
    events = EventLog(store.database)
    inserted = threading.Event()

    def slow() -> None:
        with store.transaction() as db:
            events.emit("incident.created", "slow", db)
            inserted.set()
            time.sleep(0.5)

    slow_writer = threading.Thread(target=slow)
    slow_writer.start()
    inserted.wait(5)
    fast_writer = threading.Thread(target=lambda: events.emit("incident.created", "fast"))
    fast_writer.start()
    seen: list[int] = []
    deadline = time.time() + 5
    while len(seen) < 2 and time.time() < deadline:
        seen += [e.id for e in events.since(seen[-1] if seen else 0)]
        time.sleep(0.01)
    slow_writer.join()
    fast_writer.join()
    assert seen == [1, 2]
    assert [e.incident_id for e in events.since(0)] == ["slow", "fast"]


def test_concurrent_emitters_give_every_event_one_id_in_order(store_url: str) -> None:
    store = IncidentStore(store_url)
    events = EventLog(store.database)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda n: events.emit("phase.started", f"inc-{n % 3}", n=n), range(60)))
    found = events.since(0, limit=1000)
    assert [e.id for e in found] == list(range(1, 61))
    assert sorted(e.data["n"] for e in found) == list(range(60))
    assert events.last_id() == 60
    assert len(events.since(0, incident_id="inc-1")) == 20


def test_metrics_aggregate_the_same_on_both_backends(store_url: str) -> None:
    store = IncidentStore(store_url)
    events = EventLog(store.database)
    events.emit("llm.call", "inc-1", calls=2, prompt_tokens=100, completion_tokens=10, cost=0.5)
    events.emit("llm.call", "inc-1", prompt_tokens=50)
    events.emit(
        "operation.finished", "inc-1", environment="local-docker", operation="get_logs",
        outcome="success", duration_seconds=0.2,
    )  # fmt: skip
    events.emit("operation.finished", "inc-1", operation="get_logs", duration_seconds="bad")
    audit = AuditLog(store.database)
    audit.record(
        "flow", "operation.restart_service", "success: ok", "local-docker/web", {"risk": "write"}
    )
    audit.record(
        "flow", "operation.restart_service", "refused: policy", "local-docker/web",
        {"risk": "write", "refused_by": "policy"},
    )  # fmt: skip
    rows = metric_rows(store.database, (0.1, 1.0), (1.0,))
    llm = next(r for r in rows.events if r["type"] == "llm.call")
    assert (llm["count"], llm["calls"], llm["prompt"], llm["completion"], llm["cost"]) == (
        2, 3, 150, 10, 0.5,
    )  # fmt: skip
    timed = {(r["environment"], r["outcome"]): r for r in rows.operations}
    ok = timed[("local-docker", "success")]
    assert (ok["count"], ok["timed"], ok["b0"], ok["b1"]) == (1, 1, 0, 1)
    assert timed[("", "")]["timed"] == 0  # a duration that is no number is not timed
    assert [dict(r) for r in rows.gate_writes] == [
        {"environment": "local-docker", "outcome": "success", "count": 1}
    ]
    assert [(r["risk"], r["reason"]) for r in rows.gate_refusals] == [("write", "policy")]
    # Only what is new since the given ids.
    later = metric_rows(store.database, (0.1,), (1.0,), rows.last_event_id, rows.last_audit_id)
    assert later.events == [] and later.gate_writes == []


# --- bad input and faults -----------------------------------------------------------------


def test_an_unreachable_postgresql_names_the_host_and_the_fix() -> None:
    port = free_port()
    with pytest.raises(StorageError) as raised:
        IncidentStore(f"postgresql://uici:{PASSWORD}@127.0.0.1:{port}/uici")
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message and "UICI_STORAGE_URL" in message
    assert "Connection refused" in message and PASSWORD not in message


def test_a_wrong_password_or_database_says_which(postgres: PostgresCluster) -> None:
    with pytest.raises(StorageError, match="refused the credentials") as raised:
        IncidentStore(f"postgresql://{PASSWORD_USER}:wrong@127.0.0.1:{postgres.port}/postgres")
    assert "wrong" not in str(raised.value)
    with pytest.raises(StorageError, match="createdb nosuch"):
        IncidentStore(f"postgresql://uici@127.0.0.1:{postgres.port}/nosuch")
    with pytest.raises(StorageError, match="createuser --pwprompt nosuchrole"):
        IncidentStore(f"postgresql://nosuchrole@127.0.0.1:{postgres.port}/postgres")
    # The right password opens it.
    IncidentStore(f"postgresql://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{postgres.port}/postgres")


def test_a_lost_postgresql_connection_fails_then_recovers() -> None:
    """The server restarts under an open pool: the store fails while it is down (the service
    answers 503) and works again once it is back, with no restart of UICI."""
    cluster = PostgresCluster()
    try:
        store = IncidentStore(cluster.database())
        store.probe_write(5)
        cluster.stop()
        with pytest.raises(sqlalchemy.exc.OperationalError):
            store.probe_write(5)
        cluster.start()
        store.probe_write(5)
        EventLog(store.database).emit("incident.created", "after-restart")
        assert [e.incident_id for e in EventLog(store.database).since(0)] == ["after-restart"]
    finally:
        cluster.close()


def test_a_session_the_server_ended_is_a_store_failure(postgres: PostgresCluster) -> None:
    """A transaction left idle past the bound (its client stalled, or its statement was lost
    on the way) is ended by the server; the next statement fails as a StoreFailure (503, one
    CLI line), not as a bug's 500, and the store goes on."""
    settings = storage_defaults(postgres.database()).model_copy(
        update={"statement_timeout_seconds": 1.0}
    )
    store = IncidentStore(Database(settings).open())
    with pytest.raises(StoreFailure) as raised, store.transaction() as db:
        time.sleep(1.5)
        run(db, "SELECT 1")
    assert "idle-in-transaction" in str(raised.value)
    store.probe_write(5)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("iptables") is None,
    reason="dropping packets needs root and iptables (CI runs as root; docker.io brings it)",
)
def test_a_partitioned_postgresql_fails_the_statement_instead_of_hanging() -> None:
    """Packets to the server vanish (a partition, a dead host: nothing answers, nothing
    refuses). A write transaction already open on a connection fails once its bytes stay
    unacknowledged past the bound (TCP_USER_TIMEOUT, statement_timeout_seconds); a new write
    fails too (the pool's ping, then connect_timeout_seconds); neither hangs, and the store
    works again once the network is back."""
    cluster = PostgresCluster()
    rules = [
        ["INPUT", "-p", "tcp", "-d", "127.0.0.1", f"--{side}", str(cluster.port), "-j", "DROP"]
        for side in ("dport", "sport")  # both ways: nothing reaches either end
    ]
    try:
        settings = storage_defaults(cluster.database()).model_copy(
            update={"statement_timeout_seconds": 2.0, "connect_timeout_seconds": 2}
        )
        store = IncidentStore(Database(settings).open())
        store.probe_write(5)
        failures: dict[str, BaseException | None] = {}

        def attempt(name: str, write: Callable[[], None]) -> threading.Thread:
            def run_it() -> None:
                try:
                    write()
                    failures[name] = None
                except BaseException as exc:  # reported below
                    failures[name] = exc

            thread = threading.Thread(target=run_it, daemon=True)
            return thread

        def in_flight() -> None:
            with store.transaction() as db:  # open, and holding the write lock
                opened.set()
                partitioned.wait(10)
                run(db, "INSERT INTO readiness (id, at) VALUES (2, 0)")

        opened, partitioned = threading.Event(), threading.Event()
        open_one = attempt("in flight", in_flight)
        open_one.start()
        assert opened.wait(10)
        inserted: list[list[str]] = []
        try:
            for rule in rules:
                subprocess.run(["iptables", "-w", "-I", *rule], check=True)
                inserted.append(rule)
            partitioned.set()
            new_one = attempt("new", lambda: store.probe_write(5))
            new_one.start()
            for thread in (open_one, new_one):
                thread.join(40)  # the bounds are seconds: a hang would still be alive
                assert not thread.is_alive(), f"a write hung: {failures}"
        finally:
            for rule in inserted:  # each one, whatever happened to the others
                subprocess.run(["iptables", "-w", "-D", *rule], check=False)
        # What the service turns into 503 (and the CLI into one line), not a bug's 500.
        assert all(isinstance(e, StoreFailure) for e in failures.values()), failures
        assert set(failures) == {"in flight", "new"}
        store.probe_write(5)  # back: a new connection, no restart
    finally:
        cluster.close()


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--port", "1"],
        ["incidents", "list"],
        ["audit"],
        ["run", "get_logs", "--env", "local-docker", "--target", "web"],
        ["plan", "--alert", "tests/data/alerts/oom.json"],
        ["incidents", "show", "inc-1"],
    ],
)
def test_the_cli_stops_on_an_unreachable_store_with_the_fix_not_a_traceback(
    command: list[str],
) -> None:
    from tests.test_cli import uici

    port = free_port()
    done = uici(
        *command,
        env={"UICI_STORAGE_URL": f"postgresql://uici:{PASSWORD}@127.0.0.1:{port}/uici"},
    )
    # `uici run` refuses an operation it cannot record with its bad-input code, as before.
    assert done.returncode == (2 if command[0] == "run" else 1), done.stdout + done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "UICI_STORAGE_URL" in done.stderr
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr + done.stdout


@pytest.mark.parametrize("unknown", ["0099_from_the_future", "0001", "head", ""])
def test_a_schema_newer_than_this_code_is_refused_with_the_fix(
    store_url: str, unknown: str
) -> None:
    """A revision this code does not have (a newer UICI's; not Alembic's prefix or symbolic
    matches of ours) is refused, and the schema is left as it is."""
    store = IncidentStore(store_url)
    with store.database.connect() as db:
        run(db, "UPDATE alembic_version SET version_num = :v", {"v": unknown})
    with pytest.raises(StorageError) as raised:
        Database(storage_defaults(store_url)).open()
    message = str(raised.value)
    assert f"{unknown!r}" in message and "a newer UICI migrated it" in message
    assert HEAD_REVISION in message
    assert revision(store.database) == [unknown]  # left as it was


def test_a_held_write_lock_is_reported_within_the_readiness_bound(store_url: str) -> None:
    """A stuck writer holds the write lock. The deep check's lock probe fails within its bound
    on both backends. Readiness fails on SQLite (the lock is this host's file) but not on
    PostgreSQL, where every replica waits for the lock alike: failing them all would leave
    Alertmanager no endpoint to retry on. Once released, both pass."""
    store = IncidentStore(store_url)
    holding, release = threading.Event(), threading.Event()

    def stuck_writer() -> None:
        with store.transaction():
            holding.set()
            release.wait(30)

    writer = threading.Thread(target=stuck_writer, daemon=True)
    writer.start()
    assert holding.wait(10)
    try:
        started = time.monotonic()
        with pytest.raises(StoreFailure):
            store.probe_write_lock(0.5)
        if store.database.dialect == "sqlite":
            with pytest.raises(StoreFailure):
                store.probe_write(0.5)
        else:
            store.probe_write(0.5)
        assert time.monotonic() - started < 10  # the bound held, not storage.lock_timeout (30 s)
    finally:
        release.set()
        writer.join(10)
    store.probe_write(0.5)
    store.probe_write_lock(0.5)


def test_a_store_path_is_taken_literally(tmp_path: Path) -> None:
    """`?` and `%` in a file name are part of it, not a URL query or an escape."""
    path = tmp_path / "odd?name=1%2F.db"
    store = IncidentStore(path)
    store.probe_write(5)
    assert store.path == path and path.exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".db"] == [path.name]


def test_a_storage_url_with_a_bad_port_is_a_config_problem_and_a_clear_error(
    tmp_path: Path,
) -> None:
    from tests.test_cli import uici

    for bad, secret in (
        (f"postgresql://uici:{PASSWORD}@db.example:54x2/uici", PASSWORD),
        ("postgresql://uici:s3c@ret:pa55@db.example:5432/uici", "pa55"),  # @ not encoded
        ("postgresql://uici:s3c@ret@db.example/uici", "s3c"),
    ):
        done = uici("config", "validate", env={"UICI_STORAGE_URL": bad})
        said = done.stderr + done.stdout
        assert done.returncode == 2, said
        assert "storage.url" in said and "not a readable URL" in said, said
        assert "Traceback" not in said and secret not in said and "ret" not in said, said
        with pytest.raises(StorageError, match="not a readable URL") as raised:
            IncidentStore(bad)
        assert secret not in str(raised.value)


def test_an_sqlite_url_with_a_query_is_refused_not_read_as_another_file() -> None:
    from tests.test_cli import uici

    done = uici("config", "validate", env={"UICI_STORAGE_URL": "sqlite:////tmp/a?b.db"})
    assert done.returncode == 2 and "%3F" in done.stderr + done.stdout


def test_a_store_failing_mid_command_is_reported_not_traced_back(tmp_path: Path) -> None:
    """The store opens, then its write lock stays taken past the bound: the command says the
    store failed and what to check, exits 1, and leaves the write as it was."""
    from tests.test_cli import uici

    path = tmp_path / "uici.db"
    store = IncidentStore(path)
    store.begin_write(write("w-1"), 0.0, lambda facts: None)
    store.finish_write("w-1", "unknown", {})
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        done = uici(
            "writes", "resolve", "w-1", "done", "--reason", "checked",
            env={"UICI_STORAGE_URL": f"sqlite:///{path}", "UICI_STORAGE_LOCK_TIMEOUT_SECONDS": "1"},
        )  # fmt: skip
    finally:
        holder.rollback()
        holder.close()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the incident store failed: database is locked" in done.stderr
    assert "Traceback" not in done.stderr
    assert store.write("w-1").state == "unknown"  # type: ignore[union-attr]


def test_config_show_masks_the_password_of_the_store_url() -> None:
    from tests.test_cli import uici

    url = f"postgresql://uici:{PASSWORD}@db.example:5432/uici"
    for args in (["config", "show"], ["config", "show", "--json"]):
        shown = uici(*args, env={"UICI_STORAGE_URL": url})
        assert shown.returncode == 0, shown.stderr
        assert PASSWORD not in shown.stdout and "uici:**********@db.example:5432" in shown.stdout


def test_a_run_finishing_while_its_alert_resolves_leaves_the_incident_resolved(
    store_url: str, test_config_dir: Path, tmp_path: Path
) -> None:
    """The intake resolves the alert and the incident in one transaction; a flow run saving
    its report meanwhile must not put the incident back to `diagnosed`."""
    from agent.incidents.storage import resolve_alert, resolve_incident

    config = load_config(test_config_dir, environ=key_env(tmp_path))
    store = IncidentStore(store_url)
    firing = alert("web", fingerprint="race000000000001")
    [incident] = (
        AlertIngestor(config, store)
        .ingest(AlertmanagerWebhook.model_validate(notification(firing)), "r1", "webhook", "t")
        .new_incidents
    )
    [row] = store.alerts_of(incident)
    resolving = threading.Event()

    def intake() -> None:
        with store.transaction() as db:
            resolve_alert(db, row["key"], None, time.time())
            resolve_incident(db, incident, time.time())
            resolving.set()
            time.sleep(0.5)

    writer = threading.Thread(target=intake)
    writer.start()
    resolving.wait(5)
    store.save_report(incident, {"done": True}, "diagnosed")
    store.set_status(incident, "diagnosed")
    writer.join()
    record = store.get(incident)
    assert record is not None and record.status == "resolved" and record.report == {"done": True}


def test_an_alert_with_a_nul_character_is_stored_on_both(
    store_url: str, test_config_dir: Path, tmp_path: Path
) -> None:
    """PostgreSQL's text refuses NUL; text from outside carrying one is still stored."""
    config = load_config(test_config_dir, environ=key_env(tmp_path))
    store = IncidentStore(store_url)
    body = notification(alert("web", fingerprint="nul0000000000001"), groupKey="g\x00k")
    body["alerts"][0]["annotations"] = {"summary": "bad\x00byte"}
    result = AlertIngestor(config, store).ingest(
        AlertmanagerWebhook.model_validate(body), "req-nul", "webhook", "test"
    )
    [incident] = result.new_incidents
    [row] = store.alerts_of(incident)
    assert row["group_key"] == "g\ufffdk" and "bad" in row["annotations"]
