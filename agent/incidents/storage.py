"""The incident store: incidents, their reports, the alert and notification outboxes, the
remediation intents that make a write happen at most once, approvals, events and the audit
trail. Every SQL statement of UICI is in this module.

Two backends, one behaviour (platform.yml `storage.url`):
- `sqlite:///path`: the embedded default. WAL; every write transaction is BEGIN IMMEDIATE, so
  writers queue for SQLite's one write lock (30 s at most) and several processes (service,
  workers, CLI) share the file.
- `postgresql://user:password@host:port/db`: the production topology (several API processes and
  workers), through SQLAlchemy Core and psycopg 3. A write transaction first takes one
  transaction-scoped advisory lock, the equivalent of BEGIN IMMEDIATE: the check-then-write
  logic (write intents, alert dedupe, outbox claims, the notifier's cursor) holds as on SQLite,
  and event and audit ids are committed in id order, so a reader that follows ids (the event
  stream, the metrics, the notifier) never skips a row committed late. Single statements run
  in autocommit and rely on row locks.
The schema is versioned (Alembic, agent/incidents/migrations) and brought to the head when a
store is opened, in one transaction under the same lock: idempotent, done once when several
processes start at once, and a failed revision leaves the schema as it was.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import sqlalchemy
import sqlalchemy.exc
from pydantic import BaseModel, Field
from sqlalchemy import (
    URL,
    CursorResult,
    RowMapping,
    TextClause,
    create_engine,
    event,
    make_url,
    text,
)
from sqlalchemy.pool import NullPool

from agent.incidents.models import IncidentContext, PlanStep
from infrastructure.configuration.loader import UICIConfig
from infrastructure.configuration.models import StorageSettings, url_problem
from infrastructure.executors.base import ResolvedTarget
from infrastructure.redaction import Redactor, RedactorHolder, configured_redactor

IncidentStatus = Literal[
    "open", "diagnosing", "awaiting_approval", "diagnosed", "resolved", "failed", "escalated"
]
WriteState = Literal["pending", "done", "failed", "unknown"]
# States that mean the write was (or may have been) sent: they count against the cool-down and
# the budgets, and hold the target's lock while pending.
SENT_STATES: tuple[WriteState, ...] = ("pending", "done", "unknown")
# What begin_write answers when the write's key is already recorded.
DUPLICATE_KEY = "duplicate key"

# --- the database: engines, transactions, migrations --------------------------------------

# Rows as this module returns them: read by column name (`row["id"]`), `dict(row)` copies.
Row = RowMapping
Connection = sqlalchemy.Connection

# The advisory lock every PostgreSQL write transaction takes first (any constant; this one
# spells "UICI" in ASCII), and the one migrations take.
_WRITE_LOCK = 0x55494349
_MIGRATION_LOCK = 0x55494350
# The revision a store must be at (agent/incidents/migrations/versions): a store already there
# is opened without loading Alembic at all. tests/test_storage_backends.py checks it is the head.
HEAD_REVISION = "0001_baseline"
MIGRATIONS = Path(__file__).with_name("migrations")


class StorageError(RuntimeError):
    """The store cannot be opened: unreachable, refused, or its schema cannot be migrated. The
    message names the store (password masked) and the fix."""


# What a failing store raises, whichever backend: the driver's errors (wrapped by SQLAlchemy)
# and StorageError when it cannot be opened.
# Deterministic errors (a constraint, bad data) are not among them: they are bugs, not outages.
StoreFailure: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    StorageError,
)
# ... and a store that cannot be reached at all (a file that cannot be opened).
UNRECORDABLE: tuple[type[Exception], ...] = (*StoreFailure, OSError)


class StorageSettingsLike(Protocol):
    """platform.yml `storage` (StorageSettings), or the defaults for a bare path or URL."""

    @property
    def url(self) -> str: ...
    @property
    def lock_timeout_seconds(self) -> float: ...
    @property
    def connect_timeout_seconds(self) -> int: ...
    @property
    def pool_size(self) -> int: ...
    @property
    def max_overflow(self) -> int: ...
    @property
    def statement_timeout_seconds(self) -> float: ...


def storage_defaults(url: str) -> StorageSettingsLike:
    """Settings for a store opened by path or URL alone (tests, tools, the evaluation harness):
    the shipped platform.yml's `storage` defaults, with this URL."""
    return _shipped_storage().model_copy(update={"url": url})


@functools.cache
def _shipped_storage() -> StorageSettings:
    from infrastructure.configuration.loader import PACKAGED_CONFIG_DIR
    from infrastructure.configuration.yaml_source import (
        interpolate_environment,
        load_yaml_document,
    )

    document, problems = load_yaml_document(PACKAGED_CONFIG_DIR / "platform.yml")
    if document is None:
        raise StorageError(f"the shipped platform.yml cannot be read: {problems[0].message}")
    interpolate_environment(document, {})  # its own defaults, whatever this process has set
    return StorageSettings.model_validate(document.data["storage"])


def store_url(source: Path | str) -> URL:
    """The URL of a store given as a path (an SQLite file, taken literally: `?` and `%` are
    part of the name) or as a URL; `postgres://` and `postgresql://` mean psycopg 3."""
    text_ = str(source)
    if "://" not in text_:
        return URL.create("sqlite", database=text_)
    scheme, rest = text_.split("://", 1)
    if scheme in ("postgres", "postgresql"):
        text_ = f"postgresql+psycopg://{rest}"
    problem = url_problem(text_)
    if problem is not None:
        raise StorageError(f"storage.url {problem} (platform.yml storage.url)")
    return make_url(text_)


def shown_url(url: str) -> str:
    """A store URL fit for a message: its password masked."""
    try:
        return _shown(store_url(url))
    except StorageError:
        return "(an unreadable storage.url)"


def _shown(url: URL) -> str:
    if "password" in url.query:
        url = url.update_query_dict({"password": "***"})
    return url.render_as_string(hide_password=True)


class Database:
    """One store: its SQLAlchemy engine and the two ways this module uses it, `connect()`
    (autocommit: single statements and reads) and `transaction()` (one write transaction that
    commits on success, rolls back on error and is serialised with every other)."""

    def __init__(self, settings: StorageSettingsLike) -> None:
        self.url = store_url(settings.url)
        self.settings = settings
        self.dialect = self.url.get_backend_name()
        # What messages show: the store without its password.
        self.name = _shown(self.url)
        self.file: tuple[int, int] | None = None  # the SQLite file's device and inode, once open
        if self.dialect == "sqlite":
            self.path: Path | None = Path(self.url.database or "")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A connection per use, as sqlite3 costs little to open: nothing stays open
            # between calls, and a process that forks inherits no open file.
            self.engine = create_engine(
                self.url,
                # Error messages (logs, 503 bodies) never carry the statement's values.
                hide_parameters=True,
                poolclass=NullPool,
                connect_args={
                    "timeout": settings.lock_timeout_seconds,
                    "isolation_level": None,
                    "check_same_thread": False,
                },
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
        elif self.dialect == "postgresql":
            self.path = None
            statement_ms = int(settings.statement_timeout_seconds * 1000)
            self.engine = create_engine(
                self.url,
                hide_parameters=True,
                pool_size=settings.pool_size,
                max_overflow=settings.max_overflow,
                # A connection the server dropped (restart, failover) is replaced, not used.
                pool_pre_ping=True,
                connect_args={
                    "connect_timeout": settings.connect_timeout_seconds,
                    "application_name": "uici",
                    # A server that stops answering (a partition, a hung host) fails the
                    # statement instead of hanging it: TCP keepalives and a send timeout,
                    # and on the server a bound on statements and on idle transactions
                    # (which would otherwise keep the write lock).
                    "keepalives": 1,
                    "keepalives_idle": settings.connect_timeout_seconds,
                    "keepalives_interval": settings.connect_timeout_seconds,
                    "keepalives_count": 3,
                    "tcp_user_timeout": statement_ms,
                    "options": f"-c statement_timeout={statement_ms}"
                    f" -c idle_in_transaction_session_timeout={statement_ms}",
                },
            )
            event.listen(self.engine, "handle_error", _session_ended_is_an_outage)
        else:
            raise StorageError(
                f"storage.url {self.name}: {self.dialect} is not supported; use sqlite:///path"
                " or postgresql://user:password@host:5432/database (platform.yml storage.url)"
            )

    def __repr__(self) -> str:
        return f"Database({self.name})"

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        if self.dialect == "postgresql":
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
                yield db
            return
        with self.engine.connect() as db:
            yield db

    @contextmanager
    def transaction(self, wait: float | None = None) -> Iterator[Connection]:
        """`wait`: how long to wait for the write lock (storage.lock_timeout_seconds if not
        given) before failing."""
        bound = self.settings.lock_timeout_seconds if wait is None else wait
        with self._locked(_WRITE_LOCK, bound) as db:
            yield db

    @contextmanager
    def _locked(self, key: int, wait: float | None) -> Iterator[Connection]:
        """One transaction holding the store's lock `key` (SQLite: its write lock, whatever
        the key), committed on success and rolled back on error; waiting for the lock fails
        after `wait` seconds (None: it waits as long as it takes)."""
        with self.engine.connect() as db:
            if self.dialect == "sqlite":
                if wait is not None and wait != self.settings.lock_timeout_seconds:
                    db.exec_driver_sql(f"PRAGMA busy_timeout = {max(1, int(wait * 1000))}")
                db.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                db.begin()
                if wait is not None:  # one round trip: the wait's bound, then the lock
                    db.execute(
                        _sql(
                            "SELECT set_config('lock_timeout', :wait, true),"
                            " pg_advisory_xact_lock(:key)"
                        ),
                        {"wait": _ms(wait), "key": key},
                    )
                else:
                    db.execute(_sql("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            try:
                yield db
            except BaseException:
                db.rollback()
                raise
            db.commit()

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read-only transaction: every query in it sees the same committed state."""
        with self.engine.connect() as db:
            if self.dialect == "sqlite":
                db.exec_driver_sql("BEGIN")
            else:
                db = db.execution_options(isolation_level="REPEATABLE READ")
                db.begin()
                db.exec_driver_sql("SET TRANSACTION READ ONLY")
            try:
                yield db
            finally:
                db.rollback()

    def migrate(self, script_location: Path = MIGRATIONS) -> None:
        """Bring the schema to the head revision, in one transaction under a lock, so two
        processes starting at once migrate once and a failed revision changes nothing."""
        if script_location == MIGRATIONS:
            with self.connect() as db:  # a current store: no lock, no Alembic
                if _revision(db) == HEAD_REVISION:
                    return
        with self._locked(_MIGRATION_LOCK, None) as db:
            revision = _revision(db)
            if script_location != MIGRATIONS or revision != HEAD_REVISION:
                _upgrade(db, script_location, revision, self.name)

    def open(self) -> Database:
        """Migrate, turning the driver's failure into a StorageError that names the store."""
        try:
            self.migrate()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise StorageError(f"{self.name}: {failure_reason(exc)}. {self._fix(exc)}") from exc
        self.file = None if self.path is None else _file_identity(self.path)
        return self

    def _fix(self, exc: Exception) -> str:
        if self.dialect == "sqlite" and "locked" in str(exc):
            return (
                "Another process held its write lock longer than storage.lock_timeout_seconds"
                f" ({self.settings.lock_timeout_seconds:g} s): retry, or find the stuck process"
                " (fuser on the file)."
            )
        if self.dialect == "sqlite":
            return "Check that the directory is writable (platform.yml storage.url)."
        where = f"{self.url.host or 'localhost'}:{self.url.port or 5432}"
        for kind, needle, hint in _POSTGRES_HINTS:
            if isinstance(exc, kind) and needle in str(exc):
                return hint.format(where=where, user=self.url.username, database=self.url.database)
        return (
            f"Check that PostgreSQL runs and accepts connections at {where}, and that"
            " UICI_STORAGE_URL names it (platform.yml storage.url)."
        )


# SQLSTATEs psycopg reports as InternalError (class 25, like a bug's "transaction aborted")
# that are the server ending a session it found idle or too long: an outage to retry.
_SESSION_ENDED = ("25P03", "25P04")


def _session_ended_is_an_outage(context: Any) -> Exception | None:
    """handle_error: the server ending a session under a transaction (its client's statement
    lost on the way) raised as OperationalError, a StoreFailure, not as a bug."""
    original = context.original_exception
    if getattr(original, "sqlstate", None) not in _SESSION_ENDED:
        return None
    return sqlalchemy.exc.OperationalError(
        context.statement, context.parameters, original, hide_parameters=True
    )


# What a PostgreSQL store that cannot be opened says, and its fix (the first that matches).
_POSTGRES_HINTS: tuple[tuple[type[Exception], str, str], ...] = (
    (
        sqlalchemy.exc.OperationalError,
        "password",
        "PostgreSQL at {where} refused the credentials: check the user and password in"
        " UICI_STORAGE_URL (platform.yml storage.url).",
    ),
    (
        sqlalchemy.exc.OperationalError,
        "role",
        "Create the role on {where} (createuser --pwprompt {user}) or fix the user in"
        " UICI_STORAGE_URL (platform.yml storage.url).",
    ),
    (
        sqlalchemy.exc.OperationalError,
        "does not exist",
        "Create the database on {where} (createdb {database}) or fix its name in"
        " UICI_STORAGE_URL (platform.yml storage.url).",
    ),
    (
        sqlalchemy.exc.ProgrammingError,
        "permission denied",
        "Grant {user} the right to create tables in {database} on {where} (GRANT CREATE ON"
        " SCHEMA public), or use its owner (platform.yml storage.url).",
    ),
)


def _ms(seconds: float) -> str:
    """A PostgreSQL duration setting; at least 1 ms, as 0 means no bound at all."""
    return f"{max(1, int(seconds * 1000))}ms"


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """WAL with synchronous=NORMAL: a committed write survives the process being killed (not a
    power cut), and readers never block the writer."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def failure_reason(exc: Exception) -> str:
    """The driver's first line, without SQLAlchemy's advice links."""
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return lines[0] if lines else type(original).__name__


def _revision(db: Connection) -> str | None:
    if not sqlalchemy.inspect(db).has_table("alembic_version"):
        return None
    row = db.execute(_sql("SELECT version_num FROM alembic_version")).first()
    return None if row is None else str(row[0])


def _upgrade(db: Connection, script_location: Path, revision: str | None, name: str) -> None:
    # Imported only when a store needs migrating: opening a current store stays cheap.
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["connection"] = db
    # Exactly one of ours: Alembic's own lookup also takes prefixes and names like "head".
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    if revision is not None and revision not in known:
        # Never guess at a schema this code does not know: a newer UICI migrated it.
        raise StorageError(
            f"{name}: its schema is at revision {revision!r}, which this UICI does not know"
            f" (its newest is {HEAD_REVISION}): a newer UICI migrated it. Run that version or"
            " a newer one against this store, or point storage.url at another store."
        )
    command.upgrade(config, "head")


_DATABASES: dict[URL, Database] = {}
_DATABASES_LOCK = threading.Lock()


def database(
    source: Database | Path | str, settings: StorageSettingsLike | None = None
) -> Database:
    """The one Database of this process for a store (a path, a URL or a Database), migrated
    the first time it is asked for."""
    if isinstance(source, Database):
        return source
    url = store_url(source)
    with _DATABASES_LOCK:
        found = _DATABASES.get(url)
        # An SQLite file removed or replaced since (a new store at the same path) is opened,
        # and migrated, anew.
        if found is None or (found.path is not None and _file_identity(found.path) != found.file):
            found = Database(settings or storage_defaults(str(source))).open()
            _DATABASES[url] = found
        return found


def close_database(source: Path | str) -> None:
    """Forget this process's Database for a store and close its pooled connections (a tool
    or a test done with a store; the next `database()` opens it anew)."""
    with _DATABASES_LOCK:
        found = _DATABASES.pop(store_url(source), None)
    if found is not None:
        found.engine.dispose()


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return (status.st_dev, status.st_ino)


def _forget_databases() -> None:
    """In a forked child: the parent's pooled connections are not the child's to use, and a
    lock another thread held at the fork would never be released."""
    global _DATABASES_LOCK
    _DATABASES_LOCK = threading.Lock()
    for known in _DATABASES.values():
        known.engine.dispose(close=False)
    _DATABASES.clear()


os.register_at_fork(after_in_child=_forget_databases)


@functools.lru_cache(maxsize=1024)
def _sql(query: str) -> TextClause:
    return text(query)


def _storable(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """PostgreSQL's text cannot hold NUL, which SQLite stores: an alert carrying one (text from
    outside) is stored with U+FFFD in its place on both, rather than refused on one."""
    return {
        k: v.replace("\x00", "\ufffd") if isinstance(v, str) and "\x00" in v else v
        for k, v in (values or {}).items()
    }


def run(db: Connection, query: str, values: Mapping[str, Any] | None = None) -> CursorResult[Any]:
    """One statement with named parameters (`:name`)."""
    return db.execute(_sql(query), _storable(values))


def run_many(db: Connection, query: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        db.execute(_sql(query), [_storable(row) for row in rows])


def rows(db: Connection, query: str, values: Mapping[str, Any] | None = None) -> list[Row]:
    return list(run(db, query, values).mappings())


def first(db: Connection, query: str, values: Mapping[str, Any] | None = None) -> Row | None:
    return run(db, query, values).mappings().first()


def scalar(db: Connection, query: str, values: Mapping[str, Any] | None = None) -> Any:
    return run(db, query, values).scalar()


def insert_sql(table: str, columns: tuple[str, ...], conflict: str = "") -> str:
    """`INSERT INTO table (a, b) VALUES (:a, :b) <conflict>`; `conflict` is an ON CONFLICT
    clause (both backends speak it)."""
    names = ", ".join(columns)
    marks = ", ".join(f":{c}" for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({marks}) {conflict}".rstrip()  # noqa: S608 - fixed names


def upsert_sql(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    """An insert that replaces the row with the same key (SQLite's INSERT OR REPLACE)."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return insert_sql(table, columns, f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


@contextmanager
def within(source: Database, db: Connection | None) -> Iterator[Connection]:
    """The caller's transaction when given, else a write transaction of its own."""
    if db is not None:
        yield db
        return
    with source.transaction() as own:
        yield own


def _json_text(dialect: str, column: str, key: str) -> str:
    """A JSON document's top-level `key` as text (NULL when missing or null)."""
    if dialect == "postgresql":
        return f"(CAST({column} AS json) ->> '{key}')"
    return f"json_extract({column}, '$.{key}')"


def _json_number(dialect: str, column: str, key: str) -> str:
    """A JSON document's top-level `key` as a number; NULL when it is not one."""
    if dialect == "postgresql":
        value = f"CAST({column} AS json) -> '{key}'"
        return (
            f"(CASE WHEN json_typeof({value}) = 'number'"
            f" THEN CAST(CAST({column} AS json) ->> '{key}' AS double precision) END)"
        )
    raw = f"json_extract({column}, '$.{key}')"
    return f"(CASE WHEN typeof({raw}) IN ('integer', 'real') THEN {raw} END)"


def _position(dialect: str, haystack: str, needle: str) -> str:
    """1-based position of `needle` (a literal) in `haystack`, 0 when absent."""
    return f"{'strpos' if dialect == 'postgresql' else 'instr'}({haystack}, '{needle}')"


def _greatest(dialect: str) -> str:
    return "GREATEST" if dialect == "postgresql" else "MAX"


def where_clause(filters: tuple[tuple[str, str, Any], ...]) -> tuple[str, dict[str, Any]]:
    """`WHERE a = :a AND ...` from fixed (clause, parameter, value) triples whose value is not
    None, and the values by parameter name."""
    used = [(clause, name, value) for clause, name, value in filters if value is not None]
    if not used:
        return "", {}
    return "WHERE " + " AND ".join(c for c, _, _ in used), {n: v for _, n, v in used}


class IncidentRecord(BaseModel):
    id: str
    status: IncidentStatus
    environment: str
    service: str
    context: IncidentContext
    report: dict[str, Any] | None = None
    flow_run_id: str | None = None
    created_at: float
    updated_at: float


class WriteRecord(BaseModel):
    key: str
    incident_id: str | None
    step: PlanStep
    state: WriteState
    actor: str
    entry: str
    recorded_at: float
    finished_at: float | None = None
    outcome: dict[str, Any] | None = None
    targets: list[ResolvedTarget] = []
    # The process sending it (host:pid:start time): a pending write whose process is gone was
    # never finished, one whose process lives is in progress.
    owner: str = ""


class WriteFacts(BaseModel):
    """What the write history says about a write about to be sent, read in its transaction."""

    incident_writes: int  # writes sent in this incident (pending, done or unknown)
    last_write: WriteRecord | None  # the latest finished write (done or unknown) on the targets
    writes_in_window: int  # writes tried on the targets since the window's start, failed too
    in_progress: list[WriteRecord]  # pending writes on any of the targets (they hold the lock)
    unresolved: list[WriteRecord]  # writes on the targets whose outcome is unknown


ApprovalStatus = Literal["pending", "approved", "rejected", "expired", "cancelled"]


class ApprovalRecord(BaseModel):
    incident_id: str
    step_key: str
    step: PlanStep
    command: str
    status: ApprovalStatus
    actor: str | None = None
    reason: str | None = None
    created_at: float
    decided_at: float | None = None
    expires_at: float | None = None
    required: int = 1  # distinct approvers needed
    requested_by: str | None = None  # who asked for the write: never its approver
    via: str | None = None  # where the decision came from: api, cli, prefect-ui, uici, ...
    runner: str = "flow"  # flow: a paused run waits for it; service: the service runs it
    acted_at: float | None = None  # when its runner took the decision up (it cannot be undone)
    # A secret the service and the CLI send when they wake the paused run, so the run tells
    # their wake-up from an answer typed into the Prefect UI's form (which never knows it).
    nonce: str | None = Field(default=None, exclude=True, repr=False)


class ApprovalVote(BaseModel):
    approver: str
    approve: bool
    via: str
    address: str | None = None
    reason: str | None = None
    at: float


_INCIDENT_COLUMNS = (
    "id", "status", "environment", "service", "fingerprint", "starts_at", "context", "report",
    "flow_run_id", "created_at", "updated_at",
)  # fmt: skip


def insert_incident(
    db: Connection,
    context: IncidentContext,
    flow_run_id: str | None = None,
    now: float | None = None,
    redactor: Redactor | None = None,
) -> None:
    """Write a new incident inside the caller's transaction; an existing id is left as it is.
    The alert's labels and annotations are stored redacted (they may carry secrets)."""
    now = time.time() if now is None else now
    run(
        db,
        insert_sql("incidents", _INCIDENT_COLUMNS, "ON CONFLICT DO NOTHING"),
        {
            "id": context.incident_id,
            "status": "open",
            "environment": context.environment,
            "service": context.service,
            "fingerprint": context.alert.fingerprint,
            "starts_at": context.alert.starts_at,
            "context": _redacted_context(context, redactor or configured_redactor()),
            "report": None,
            "flow_run_id": flow_run_id,
            "created_at": now,
            "updated_at": now,
        },
    )


# --- the notification outbox (agent.notifications.notifier) -------------------------------


NotificationState = Literal["pending", "sent", "failed"]


def read_cursor_in(db: Connection, name: str) -> int | None:
    value = scalar(db, "SELECT value FROM cursors WHERE name = :name", {"name": name})
    return None if value is None else int(value)


def read_cursor(source: Database, name: str) -> int | None:
    with source.connect() as db:
        return read_cursor_in(db, name)


def write_cursor(db: Connection, name: str, value: int) -> None:
    run(
        db,
        "INSERT INTO cursors (name, value) VALUES (:name, :value)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        {"name": name, "value": value},
    )


def events_batch(source: Database, after_id: int, limit: int) -> list[Row]:
    with source.connect() as db:
        return rows(
            db,
            "SELECT * FROM events WHERE id > :after ORDER BY id LIMIT :limit",
            {"after": after_id, "limit": limit},
        )


def max_event_id_in(db: Connection) -> int:
    return int(scalar(db, "SELECT COALESCE(MAX(id), 0) FROM events"))


def max_event_id(source: Database) -> int:
    with source.connect() as db:
        return max_event_id_in(db)


def insert_notification(
    db: Connection,
    sink: str,
    event: str,
    incident_id: str,
    dedup: str,
    payload: str,
    now: float,
) -> bool:
    """Queue one message; False when the same one is already queued or sent."""
    result = run(
        db,
        "INSERT INTO notifications (sink, event, incident_id, dedup, payload, state,"
        " attempts, next_attempt_at, created_at, updated_at)"
        " VALUES (:sink, :event, :incident_id, :dedup, :payload, 'pending', 0, :now, :now, :now)"
        " ON CONFLICT DO NOTHING",
        {
            "sink": sink,
            "event": event,
            "incident_id": incident_id,
            "dedup": dedup,
            "payload": payload,
            "now": now,
        },
    )
    return result.rowcount == 1


def _lease(
    db: Connection, table: str, where: str, values: dict[str, Any], lease: float
) -> list[Row]:
    """The due rows of an outbox table (`where` selects them, oldest first, at most :limit),
    leased to the caller until `lease`: another process on the same store does not take them
    too, and a caller that dies lets the lease run out. Inside a write transaction, which is
    serialised on both backends; SKIP LOCKED on PostgreSQL also steps over rows a statement
    outside it holds."""
    skip = " FOR UPDATE SKIP LOCKED" if db.dialect.name == "postgresql" else ""
    due = rows(db, f"SELECT * FROM {table} WHERE {where} ORDER BY id LIMIT :limit{skip}", values)  # noqa: S608 - fixed tables and clauses
    run_many(
        db,
        f"UPDATE {table} SET next_attempt_at = :lease WHERE id = :id",  # noqa: S608 - fixed tables
        [{"lease": lease, "id": row["id"]} for row in due],
    )
    return due


def claim_notifications(
    source: Database, sink: str, now: float, limit: int, lease_until: float
) -> list[Row]:
    """Due messages of a sink, leased to the caller until `lease_until`."""
    with source.transaction() as db:
        return _lease(
            db,
            "notifications",
            "sink = :sink AND state = 'pending' AND next_attempt_at <= :now",
            {"sink": sink, "now": now, "limit": limit},
            lease_until,
        )


def finish_notification(
    source: Database,
    notification_id: int,
    state: NotificationState,
    attempts: int,
    next_attempt_at: float,
    error: str | None,
    status_code: int | None,
    now: float,
) -> None:
    with source.transaction() as db:
        run(
            db,
            "UPDATE notifications SET state = :state, attempts = :attempts,"
            " next_attempt_at = :next, last_error = :error, status_code = :code,"
            " updated_at = :now WHERE id = :id",
            {
                "state": state,
                "attempts": attempts,
                "next": next_attempt_at,
                "error": error,
                "code": status_code,
                "now": now,
                "id": notification_id,
            },
        )


def notification_summary(source: Database) -> list[Row]:
    """Per sink and state: how many, the oldest pending, the last error and when."""
    with source.connect() as db:
        return rows(
            db,
            "SELECT sink, state, COUNT(*) AS count, MIN(created_at) AS oldest,"
            " MAX(updated_at) AS latest FROM notifications GROUP BY sink, state",
        )


def last_notification(source: Database, sink: str) -> Row | None:
    """The sink's latest finished or retried delivery (its health)."""
    with source.connect() as db:
        return first(
            db,
            "SELECT * FROM notifications WHERE sink = :sink"
            " AND (state != 'pending' OR attempts > 0) ORDER BY updated_at DESC LIMIT 1",
            {"sink": sink},
        )


def approvals_to_warn(source: Database, before: float) -> list[Row]:
    """Pending approval requests that expire before `before` and were not warned about."""
    with source.connect() as db:
        return rows(
            db,
            "SELECT incident_id, step_key FROM approvals WHERE status = 'pending'"
            " AND warned_at IS NULL AND expires_at IS NOT NULL AND expires_at <= :before"
            " AND expires_at > :now",
            {"before": before, "now": time.time()},
        )


def mark_warned(db: Connection, incident_id: str, step_key: str, now: float) -> bool:
    """False when another process warned about it first."""
    result = run(
        db,
        "UPDATE approvals SET warned_at = :now WHERE incident_id = :incident_id"
        " AND step_key = :step_key AND warned_at IS NULL",
        {"now": now, "incident_id": incident_id, "step_key": step_key},
    )
    return result.rowcount == 1


# --- the event log (agent.incidents.events) --------------------------------------------


def insert_event(
    source: Database,
    at: float,
    type_: str,
    incident_id: str | None,
    data: str,
    db: Connection | None = None,
) -> None:
    """An event row (`data` is JSON); inside `db`'s transaction when given, else in a write
    transaction of its own (ids commit in order: see the module's docstring)."""
    with within(source, db) as conn:
        run(
            conn,
            "INSERT INTO events (at, type, incident_id, data)"
            " VALUES (:at, :type, :incident_id, :data)",
            {"at": at, "type": type_, "incident_id": incident_id, "data": data},
        )


def events_after(
    source: Database, after_id: int, limit: int, incident_id: str | None = None
) -> list[Row]:
    """Events with an id above `after_id`, oldest first, of one incident when given."""
    query = "SELECT * FROM events WHERE id > :after"
    values: dict[str, Any] = {"after": after_id, "limit": limit}
    if incident_id is not None:
        query += " AND incident_id = :incident_id"
        values["incident_id"] = incident_id
    with source.connect() as db:
        return rows(db, query + " ORDER BY id LIMIT :limit", values)


def last_event_id(source: Database) -> int:
    with source.connect() as db:
        return max_event_id_in(db)


# --- the audit trail (agent.incidents.audit) -------------------------------------------


def insert_audit(
    source: Database,
    at: float,
    actor: str,
    action: str,
    target: str | None,
    parameters: str,
    result: str,
    incident_id: str | None,
    request_id: str | None,
    db: Connection | None = None,
) -> None:
    """An audit row (`parameters` is JSON, already masked); inside `db`'s transaction when
    given."""
    with within(source, db) as conn:
        run(
            conn,
            insert_sql(
                "audit",
                (
                    "at",
                    "actor",
                    "action",
                    "target",
                    "parameters",
                    "result",
                    "incident_id",
                    "request_id",
                ),
            ),
            {
                "at": at,
                "actor": actor,
                "action": action,
                "target": target,
                "parameters": parameters,
                "result": result,
                "incident_id": incident_id,
                "request_id": request_id,
            },
        )


def audit_rows(
    source: Database,
    incident_id: str | None,
    actor: str | None,
    action: str | None,
    since: float | None,
    limit: int,
) -> list[Row]:
    """Audit rows matching the filters that are not None, newest first."""
    where, values = where_clause(
        (
            ("incident_id = :incident_id", "incident_id", incident_id),
            ("actor = :actor", "actor", actor),
            ("action = :action", "action", action),
            ("at >= :since", "since", since),
        )
    )
    with source.connect() as db:
        return rows(
            db,
            f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT :limit",  # noqa: S608 - fixed clauses
            {**values, "limit": limit},
        )


# --- alerts and deliveries (agent.service.intake), inside the webhook's transaction ----


def insert_delivery(
    db: Connection,
    at: float,
    request_id: str,
    source: str,
    receiver: str,
    group_key: str,
    status: str,
    alerts: int,
    truncated_alerts: int,
    summary: str,
) -> None:
    """One received notification (`summary` is JSON)."""
    values = {
        "at": at,
        "request_id": request_id,
        "source": source,
        "receiver": receiver,
        "group_key": group_key,
        "status": status,
        "alerts": alerts,
        "truncated_alerts": truncated_alerts,
        "summary": summary,
    }
    run(db, insert_sql("deliveries", tuple(values)), values)


def alert_by_key(db: Connection, key: str) -> Row | None:
    return first(db, "SELECT * FROM alerts WHERE key = :key", {"key": key})


def insert_alert(
    db: Connection,
    key: str,
    fingerprint: str,
    starts_at: str,
    state: str,
    labels: str,
    annotations: str,
    ends_at: str | None,
    generator_url: str,
    receiver: str,
    group_key: str,
    environment: str | None,
    target: str | None,
    reason: str | None,
    incident_id: str | None,
    now: float,
    resolved_at: float | None,
    request_id: str,
    truncated: str | None = None,
    redactor: Redactor | None = None,
) -> None:
    """A first delivery of an alert (`labels`, `annotations` and `truncated` are JSON); what
    the alert says is stored redacted (labels, annotations, generator URL, group key)."""
    redact = redactor or configured_redactor()
    values = {
        "key": key,
        "fingerprint": fingerprint,
        "starts_at": starts_at,
        "state": state,
        "labels": _redacted_json(labels, redact),
        "annotations": _redacted_json(annotations, redact),
        "ends_at": ends_at,
        "generator_url": redact(generator_url),
        "receiver": receiver,
        "group_key": redact(group_key),
        "environment": environment,
        "target": target,
        "reason": reason,
        "incident_id": incident_id,
        "deliveries": 1,
        "first_seen": now,
        "last_seen": now,
        "resolved_at": resolved_at,
        "request_id": request_id,
        "truncated": truncated,
    }
    run(db, insert_sql("alerts", tuple(values)), values)


def insert_invalid_alert(
    db: Connection, at: float, request_id: str, position: int, reason: str, body: str
) -> None:
    values = {
        "at": at,
        "request_id": request_id,
        "position": position,
        "reason": reason,
        "body": body,
    }
    run(db, insert_sql("invalid_alerts", tuple(values)), values)


def count_alert_delivery(db: Connection, key: str, now: float) -> None:
    """One more delivery of a known alert."""
    run(
        db,
        "UPDATE alerts SET deliveries = deliveries + 1, last_seen = :now WHERE key = :key",
        {"now": now, "key": key},
    )


def set_alert_annotations(
    db: Connection, key: str, annotations: str, redactor: Redactor | None = None
) -> None:
    stored = _redacted_json(annotations, redactor or configured_redactor())
    run(
        db,
        "UPDATE alerts SET annotations = :annotations WHERE key = :key",
        {"annotations": stored, "key": key},
    )


def _redacted_json(text_: str, redactor: Redactor) -> str:
    """A JSON document with every string in it redacted (text that is no JSON: redacted)."""
    try:
        value = json.loads(text_)
    except ValueError:
        return redactor(text_)
    return json.dumps(redactor.data(value))


def resolve_alert(db: Connection, key: str, ends_at: str | None, now: float) -> None:
    run(
        db,
        "UPDATE alerts SET state = 'resolved', ends_at = :ends_at, resolved_at = :now"
        " WHERE key = :key",
        {"ends_at": ends_at, "now": now, "key": key},
    )


def touch_incident(db: Connection, incident_id: str, now: float) -> None:
    run(
        db, "UPDATE incidents SET updated_at = :now WHERE id = :id", {"now": now, "id": incident_id}
    )


def resolve_incident(db: Connection, incident_id: str, now: float) -> None:
    """The incident's alert resolved: the incident is resolved, whatever its status was."""
    run(
        db,
        "UPDATE incidents SET status = 'resolved', updated_at = :now WHERE id = :id",
        {"now": now, "id": incident_id},
    )


def set_flow_run(db: Connection, incident_id: str, flow_run_id: str, now: float) -> None:
    """The flow run the outbox started for the incident."""
    run(
        db,
        "UPDATE incidents SET flow_run_id = :run, updated_at = :now WHERE id = :id",
        {"run": flow_run_id, "now": now, "id": incident_id},
    )


# --- the dispatch outbox (agent.service.intake, agent.service.dispatch) ---------------


def insert_dispatch(
    db: Connection,
    kind: str,
    key: str,
    incident_id: str,
    payload: str,
    now: float,
) -> None:
    """An outbox row (`payload` is JSON), at most one per (kind, key)."""
    run(
        db,
        "INSERT INTO dispatch (kind, key, incident_id, payload, state, attempts,"
        " next_attempt_at, created_at, updated_at)"
        " VALUES (:kind, :key, :incident_id, :payload, 'pending', 0, :now, :now, :now)"
        " ON CONFLICT DO NOTHING",
        {"kind": kind, "key": key, "incident_id": incident_id, "payload": payload, "now": now},
    )


def skip_pending_diagnosis(db: Connection, key: str, now: float) -> None:
    """The alert resolved: its diagnosis, if not yet started, is not started."""
    run(
        db,
        "UPDATE dispatch SET state = 'skipped', result = 'alert resolved before dispatch',"
        " updated_at = :now WHERE kind = 'diagnose' AND key = :key AND state = 'pending'",
        {"now": now, "key": key},
    )


def claim_dispatch(source: Database, now: float, limit: int, lease_until: float) -> list[Row]:
    """Pending outbox rows whose next attempt is due, oldest first, leased to the caller until
    `lease_until`: two dispatchers on one store never start the same row."""
    with source.transaction() as db:
        return _lease(
            db,
            "dispatch",
            "state = 'pending' AND next_attempt_at <= :now",
            {"now": now, "limit": limit},
            lease_until,
        )


# A claimed row is finished only by the holder of its lease (the `next_attempt_at` its claim
# wrote): a dispatcher whose lease ran out while it worked finds the row taken by another and
# records nothing, so the outcome, its event and its audit entry are written once.
# (Each statement below says so: WHERE id = :id AND state = 'pending' AND next_attempt_at =
# :lease.)


def dispatch_done(db: Connection, dispatch_id: int, lease: float, result: str, now: float) -> bool:
    """The row's work is done; False if the lease was lost (another dispatcher has the row)."""
    done = run(
        db,
        "UPDATE dispatch SET state = 'done', result = :result, attempts = attempts + 1,"
        " updated_at = :now"
        " WHERE id = :id AND state = 'pending' AND next_attempt_at = :lease",
        {"result": result, "now": now, "id": dispatch_id, "lease": lease},
    )
    return done.rowcount == 1


def dispatch_failed(
    db: Connection,
    dispatch_id: int,
    lease: float,
    attempts: int,
    next_attempt_at: float,
    error: str,
    now: float,
) -> bool:
    """A failed attempt: retried at `next_attempt_at`; False if the lease was lost."""
    failed = run(
        db,
        "UPDATE dispatch SET attempts = :attempts, next_attempt_at = :next, last_error = :error,"
        " updated_at = :now"
        " WHERE id = :id AND state = 'pending' AND next_attempt_at = :lease",
        {
            "attempts": attempts,
            "next": next_attempt_at,
            "error": error,
            "now": now,
            "id": dispatch_id,
            "lease": lease,
        },
    )
    return failed.rowcount == 1


def release_dispatch(source: Database, leases: list[tuple[int, float]], now: float) -> None:
    """Claimed rows this dispatcher will not work on (it is stopping): due again now, for
    another dispatcher, instead of when their lease runs out."""
    with source.connect() as db:
        run_many(
            db,
            "UPDATE dispatch SET next_attempt_at = :now"
            " WHERE id = :id AND state = 'pending' AND next_attempt_at = :lease",
            [{"now": now, "id": id_, "lease": lease} for id_, lease in leases],
        )


# --- metrics (agent.service.metrics) ----------------------------------------------------


class MetricRows(NamedTuple):
    """What `GET /metrics` reads from the store: aggregates only, computed by the database.

    The event log and the audit trail only grow (the audit is append-only by trigger, events
    are never deleted, and both get their ids in commit order), so what is counted from them
    comes per range of ids: `events`, `operations`, `gate_*` cover the ids after the ones the
    caller already counted, up to `last_event_id` and `last_audit_id`. A scrape then reads
    only what is new. Histogram rows end in one cumulative count per bucket, columns `b0`,
    `b1`, ... in the order of the buckets asked for."""

    last_event_id: int
    last_audit_id: int
    incidents: Row  # opened, resolved
    by_status: list[Row]  # environment, status, count
    approvals: list[Row]  # environment, status, count, oldest (created_at)
    pending_dispatch: Row  # count, oldest (created_at)
    diagnosis: list[Row]  # environment, count, seconds, b*
    writes: list[Row]  # environment, state, count
    # New since the given ids:
    events: list[Row]  # type, count, last (at), calls, prompt, completion, cost
    operations: list[Row]  # environment, operation, outcome, count, timed, seconds, b*
    gate_writes: list[Row]  # environment, outcome, count
    gate_refusals: list[Row]  # environment, risk, reason, count


def _bucket_columns(value: str, buckets: tuple[float, ...]) -> tuple[str, dict[str, float]]:
    """`, SUM(...) AS b0, ...`: one count per bucket, and the bucket bounds by parameter."""
    columns = "".join(
        f", COALESCE(SUM(CASE WHEN {value} <= :bucket{i} THEN 1 ELSE 0 END), 0) AS b{i}"
        for i in range(len(buckets))
    )
    return columns, {f"bucket{i}": bound for i, bound in enumerate(buckets)}


def metric_rows(
    source: Database,
    operation_buckets: tuple[float, ...],
    diagnosis_buckets: tuple[float, ...],
    after_event_id: int = 0,
    after_audit_id: int = 0,
) -> MetricRows:
    """One read transaction, so every figure of a scrape comes from the same snapshot."""
    with source.snapshot() as db:
        return _metric_rows(
            db, operation_buckets, diagnosis_buckets, after_event_id, after_audit_id
        )


def _metric_rows(
    db: Connection,
    operation_buckets: tuple[float, ...],
    diagnosis_buckets: tuple[float, ...],
    after_event_id: int,
    after_audit_id: int,
) -> MetricRows:
    dialect = db.dialect.name

    def json_text(column: str, key: str) -> str:
        return _json_text(dialect, column, key)

    def json_number(column: str, key: str) -> str:
        return _json_number(dialect, column, key)

    last_event = max_event_id_in(db)
    last_audit = int(scalar(db, "SELECT COALESCE(MAX(id), 0) FROM audit"))
    new_events = {"after": after_event_id, "last": last_event}
    new_audit = {"after": after_audit_id, "last": last_audit}
    incidents = first(
        db,
        "SELECT COUNT(*) AS opened,"
        " COALESCE(SUM(CASE WHEN status = 'resolved' THEN 1 ELSE 0 END), 0) AS resolved"
        " FROM incidents",
    )
    by_status = rows(
        db,
        "SELECT environment, status, COUNT(*) AS count FROM incidents GROUP BY environment, status",
    )
    approvals = rows(
        db,
        f"SELECT COALESCE({json_text('step', 'environment')}, '') AS environment, status,"  # noqa: S608 - fixed fragments
        " COUNT(*) AS count, MIN(created_at) AS oldest FROM approvals GROUP BY 1, 2",
    )
    dispatch = first(
        db,
        "SELECT COUNT(*) AS count, MIN(created_at) AS oldest FROM dispatch WHERE state = 'pending'",
    )
    # From the first delivery of the alert that opened an incident to the end of the
    # incident's first diagnosis (its first incident.diagnosed event). Incidents no alert
    # opened (operation requests, the health sweep) have no such time.
    columns, bounds = _bucket_columns("d.seconds", diagnosis_buckets)
    diagnosis = rows(
        db,
        "SELECT i.environment AS environment, COUNT(*) AS count,"  # noqa: S608 - fixed fragments
        " COALESCE(SUM(d.seconds), 0) AS seconds"
        + columns
        + f" FROM (SELECT e.incident_id AS incident_id, {_greatest(dialect)}(0, MIN(e.at) -"  # noqa: S608 - fixed fragments
        " (SELECT MIN(a.first_seen) FROM alerts a WHERE a.incident_id = e.incident_id))"
        " AS seconds FROM events e WHERE e.type = 'incident.diagnosed'"
        " AND e.incident_id IS NOT NULL GROUP BY e.incident_id) d"
        " JOIN incidents i ON i.id = d.incident_id"
        " WHERE d.seconds IS NOT NULL GROUP BY i.environment",
        bounds,
    )
    writes = rows(
        db, "SELECT environment, state, COUNT(*) AS count FROM writes GROUP BY environment, state"
    )

    # The counts by type and what the LLM calls spent, in one pass (an llm.call event sums
    # the calls of one planning phase: `calls`, else one).
    def llm_sum(expression: str) -> str:
        return f"COALESCE(SUM(CASE WHEN type = 'llm.call' THEN {expression} END), 0)"

    events = rows(
        db,
        "SELECT type, COUNT(*) AS count, MAX(at) AS last,"  # noqa: S608 - fixed fragments
        f" {llm_sum('COALESCE(' + json_number('data', 'calls') + ', 1)')} AS calls,"
        f" {llm_sum(json_number('data', 'prompt_tokens'))} AS prompt,"
        f" {llm_sum(json_number('data', 'completion_tokens'))} AS completion,"
        f" {llm_sum(json_number('data', 'cost'))} AS cost"
        " FROM events WHERE id > :after AND id <= :last GROUP BY type",
        new_events,
    )
    # Materialized: each event's JSON is read once, not once per bucket column.
    columns, bounds = _bucket_columns("seconds", operation_buckets)
    operations = rows(
        db,
        "WITH finished AS MATERIALIZED (SELECT"  # noqa: S608 - fixed fragments
        f" COALESCE({json_text('data', 'environment')}, '') AS environment,"
        f" COALESCE({json_text('data', 'operation')}, '') AS operation,"
        f" COALESCE({json_text('data', 'outcome')}, '') AS outcome,"
        f" {json_number('data', 'duration_seconds')} AS seconds"
        " FROM events WHERE id > :after AND id <= :last AND type = 'operation.finished')"
        " SELECT environment, operation, outcome, COUNT(*) AS count, COUNT(seconds) AS timed,"
        " COALESCE(SUM(seconds), 0) AS seconds"
        + columns
        + " FROM finished GROUP BY environment, operation, outcome",
        {**new_events, **bounds},
    )
    # The gate's audit rows (agent/safety/gate.py): an operation it sent is journaled with its
    # risk and a result that starts with the outcome ("success", "retryable: ..."); one it
    # refused has `refused_by`.
    slash, colon = _position(dialect, "target", "/"), _position(dialect, "result", ":")
    environment = f"substr(target, 1, {slash} - 1)"
    gate_rows = (
        " FROM audit WHERE id > :after AND id <= :last AND action LIKE 'operation.%'"
        f" AND {slash} > 0"
    )
    gate_writes = rows(
        db,
        f"SELECT {environment} AS environment,"
        f" CASE WHEN {colon} > 0 THEN substr(result, 1, {colon} - 1) ELSE result END"
        " AS outcome, COUNT(*) AS count"
        + gate_rows
        + f" AND {json_text('parameters', 'risk')} IN ('write', 'destructive')"
        f" AND {json_text('parameters', 'refused_by')} IS NULL GROUP BY 1, 2",
        new_audit,
    )
    gate_refusals = rows(
        db,
        f"SELECT {environment} AS environment,"
        f" COALESCE({json_text('parameters', 'risk')}, 'unknown') AS risk,"
        f" {json_text('parameters', 'refused_by')} AS reason, COUNT(*) AS count"
        + gate_rows
        + f" AND {json_text('parameters', 'refused_by')} IS NOT NULL GROUP BY 1, 2, 3",
        new_audit,
    )
    assert incidents is not None and dispatch is not None  # aggregates always give a row
    return MetricRows(
        last_event,
        last_audit,
        incidents,
        by_status,
        approvals,
        dispatch,
        diagnosis,
        writes,
        events,
        operations,
        gate_writes,
        gate_refusals,
    )


def _redacted_context(context: IncidentContext, redactor: Redactor) -> str:
    alert = context.alert
    redacted = alert.model_copy(
        update={
            "labels": redactor.data(dict(alert.labels)),
            "annotations": redactor.data(dict(alert.annotations)),
        }
    )
    return context.model_copy(update={"alert": redacted}).model_dump_json()


class IncidentStore(RedactorHolder):
    """`redactor` redacts what the store keeps from outside (reports, alert labels and
    annotations); from_config builds it from the configuration, else it is the one of the
    configuration this process runs with (infrastructure/redaction.py).

    `source` is an SQLite path, a store URL or a Database; opening it migrates its schema
    (raises StorageError, naming the store and the fix, when it cannot be used)."""

    def __init__(self, source: Database | Path | str, redactor: Redactor | None = None) -> None:
        self.database = database(source)
        self._redactor = redactor

    @classmethod
    def from_config(cls, config: UICIConfig) -> IncidentStore:
        settings = config.platform.storage
        return cls(database(settings.url, settings), Redactor.from_config(config))

    @property
    def path(self) -> Path:
        """The SQLite file (tools and tests that open it directly); no path on PostgreSQL."""
        if self.database.path is None:
            raise AttributeError(f"{self.database.name} is not an SQLite file")
        return self.database.path

    def _db(self) -> contextlib.AbstractContextManager[Connection]:
        return self.database.connect()

    def transaction(self) -> contextlib.AbstractContextManager[Connection]:
        """One write transaction, serialised with every other: committed on success, rolled
        back on error."""
        return self.database.transaction()

    # --- incidents --------------------------------------------------------------------

    def open_incident(
        self, context: IncidentContext, flow_run_id: str | None = None
    ) -> IncidentRecord:
        """Create the incident, or return the existing one with the same id."""
        with self._db() as db:
            insert_incident(db, context, flow_run_id, redactor=self.redactor)
        record = self.get(context.incident_id)
        assert record is not None
        return record

    def get(self, incident_id: str) -> IncidentRecord | None:
        with self._db() as db:
            row = first(db, "SELECT * FROM incidents WHERE id = :id", {"id": incident_id})
        return None if row is None else _incident(row)

    def incidents(
        self,
        status: str | None = None,
        service: str | None = None,
        environment: str | None = None,
        limit: int = 100,
        since: float | None = None,
        until: float | None = None,
    ) -> list[IncidentRecord]:
        where, values = where_clause(
            (
                ("status = :status", "status", status),
                ("service = :service", "service", service),
                ("environment = :environment", "environment", environment),
                ("created_at >= :since", "since", since),
                ("created_at < :until", "until", until),
            )
        )
        with self._db() as db:
            found = rows(
                db,
                f"SELECT * FROM incidents {where} ORDER BY created_at DESC LIMIT :limit",  # noqa: S608 - fixed column names
                {**values, "limit": limit},
            )
        return [_incident(row) for row in found]

    def open_for(self, environment: str, service: str) -> list[IncidentRecord]:
        """Incidents on this service that are not finished (for the sweep's dedupe)."""
        with self._db() as db:
            found = rows(
                db,
                "SELECT * FROM incidents WHERE environment = :environment AND service = :service"
                " AND status IN ('open', 'diagnosing', 'awaiting_approval')",
                {"environment": environment, "service": service},
            )
        return [_incident(row) for row in found]

    # An incident closed because its alert resolved stays resolved, whatever its run does later.
    _KEEP_RESOLVED = (
        "status = CASE WHEN status = 'resolved' AND EXISTS (SELECT 1 FROM alerts"
        " WHERE alerts.incident_id = incidents.id AND alerts.state = 'resolved')"
        " THEN status ELSE :status END"
    )

    # In a write transaction: on PostgreSQL an autocommit UPDATE would read `alerts` as of
    # before an intake that resolves the alert concurrently, and undo its resolution.
    def set_status(
        self, incident_id: str, status: IncidentStatus, flow_run_id: str | None = None
    ) -> None:
        with self.transaction() as db:
            run(
                db,
                "UPDATE incidents SET updated_at = :now,"  # noqa: S608 - a fixed clause
                " flow_run_id = COALESCE(:run, flow_run_id), "
                + self._KEEP_RESOLVED
                + " WHERE id = :id",
                {"now": time.time(), "run": flow_run_id, "status": status, "id": incident_id},
            )

    def save_report(self, incident_id: str, report: dict[str, Any], status: IncidentStatus) -> None:
        """Every stored report is redacted here, whoever built it: the one choke point."""
        stored = json.dumps(self.redactor.json_data(report))
        with self.transaction() as db:
            run(
                db,
                "UPDATE incidents SET report = :report, updated_at = :now, "  # noqa: S608 - a fixed clause
                + self._KEEP_RESOLVED
                + " WHERE id = :id",
                {"report": stored, "now": time.time(), "status": status, "id": incident_id},
            )

    # --- incident memory ----------------------------------------------------------------

    def record_diagnosis(
        self,
        incident_id: str,
        environment: str,
        service: str,
        failure_class: str,
        signature: str,
        root_cause: str,
        remediations: list[str],
        recovered: bool | None,
        at: float | None = None,
    ) -> None:
        """Remember one finished diagnosis (a re-run of the incident replaces its row)."""
        values = {
            "incident_id": incident_id,
            "environment": environment,
            "service": service,
            "failure_class": failure_class,
            "signature": signature,
            "root_cause": root_cause,
            "remediations": json.dumps(remediations),
            "recovered": None if recovered is None else int(recovered),
            "at": time.time() if at is None else at,
        }
        with self._db() as db:
            run(db, upsert_sql("diagnoses", tuple(values), ("incident_id",)), values)

    def record_remediation(
        self, incident_id: str, environment: str, target: str, cause: str, step: str
    ) -> None:
        values = {
            "incident_id": incident_id,
            "environment": environment,
            "target": target,
            "cause": cause,
            "step": step,
            "at": time.time(),
        }
        with self._db() as db:
            run(db, insert_sql("remediations", tuple(values)), values)

    def remediated_incidents(
        self, environment: str, target: str, cause: str, since: float, exclude_incident: str
    ) -> list[str]:
        """The incidents that remediated `cause` on `target` since `since`, oldest first."""
        with self._db() as db:
            found = rows(
                db,
                "SELECT incident_id, MIN(at) AS first FROM remediations"
                " WHERE environment = :environment AND target = :target AND cause = :cause"
                " AND at >= :since AND incident_id != :exclude"
                " GROUP BY incident_id ORDER BY first",
                {
                    "environment": environment,
                    "target": target,
                    "cause": cause,
                    "since": since,
                    "exclude": exclude_incident,
                },
            )
        return [row["incident_id"] for row in found]

    def diagnosis_time(self, incident_id: str) -> float | None:
        with self._db() as db:
            at = scalar(db, "SELECT at FROM diagnoses WHERE incident_id = :id", {"id": incident_id})
        return None if at is None else float(at)

    def past_diagnoses(
        self,
        environment: str,
        service: str,
        failure_class: str | None = None,
        limit: int = 20,
        exclude_incident: str | None = None,
        since: float = 0.0,
        until: float | None = None,
    ) -> list[dict[str, Any]]:
        """Earlier diagnoses of the service (of one class), newest first; before `until` when
        given, and before the excluded incident's own diagnosis when it has one."""
        query = (
            "SELECT * FROM diagnoses WHERE environment = :environment AND service = :service"
            " AND at >= :since AND incident_id != :exclude AND at < COALESCE(:until,"
            " (SELECT at FROM diagnoses WHERE incident_id = :exclude), 1e300)"
        )
        values: dict[str, Any] = {
            "environment": environment,
            "service": service,
            "since": since,
            "exclude": exclude_incident or "",
            "until": until,
            "limit": limit,
        }
        if failure_class is not None:
            query += " AND failure_class = :failure_class"
            values["failure_class"] = failure_class
        with self._db() as db:
            found = rows(db, query + " ORDER BY at DESC LIMIT :limit", values)
        return [
            {
                **dict(row),
                "remediations": json.loads(row["remediations"]),
                "recovered": None if row["recovered"] is None else bool(row["recovered"]),
            }
            for row in found
        ]

    def alerts_of(self, incident_id: str) -> list[Row]:
        """The alerts that opened or repeated this incident."""
        with self._db() as db:
            return rows(db, "SELECT * FROM alerts WHERE incident_id = :id", {"id": incident_id})

    def alert_resolved(self, incident_id: str) -> bool:
        """Whether the alert that opened this incident has resolved (no remediation then)."""
        with self._db() as db:
            row = first(
                db,
                "SELECT 1 AS resolved FROM alerts WHERE incident_id = :id AND state = 'resolved'",
                {"id": incident_id},
            )
        return row is not None

    # --- approvals --------------------------------------------------------------------

    _APPROVAL_COLUMNS = (
        "incident_id", "step_key", "step", "command", "status", "actor", "reason", "created_at",
        "decided_at", "expires_at", "required", "requested_by", "via", "runner", "warned_at",
        "acted_at", "nonce",
    )  # fmt: skip

    def request_approval(
        self,
        incident_id: str,
        step: PlanStep,
        command: str,
        expires_at: float | None = None,
        required: int = 1,
        requested_by: str | None = None,
        runner: str = "flow",
    ) -> None:
        values = {
            "incident_id": incident_id,
            "step_key": step.key(),
            "step": step.model_dump_json(),
            "command": self.redactor(command),
            "status": "pending",
            "actor": None,
            "reason": None,
            "created_at": time.time(),
            "decided_at": None,
            "expires_at": expires_at,
            "required": required,
            "requested_by": requested_by,
            "via": None,
            "runner": runner,
            "warned_at": None,
            "acted_at": None,
            "nonce": secrets.token_hex(16),
        }
        with self.transaction() as db:
            run(
                db,
                upsert_sql("approvals", self._APPROVAL_COLUMNS, ("incident_id", "step_key")),
                values,
            )
            # A request asked again (a new run of the same step) starts with no answers.
            run(
                db,
                "DELETE FROM approval_votes WHERE incident_id = :incident_id"
                " AND step_key = :step_key",
                {"incident_id": incident_id, "step_key": step.key()},
            )

    def decide_approval(
        self,
        incident_id: str,
        step_key: str,
        status: ApprovalStatus,
        actor: str,
        reason: str,
        via: str = "uici",
    ) -> bool:
        """Record the decision if the request is still pending; False if it was not."""
        with self._db() as db:
            result = run(
                db,
                "UPDATE approvals SET status = :status, actor = :actor, reason = :reason,"
                " decided_at = :now, via = :via WHERE incident_id = :incident_id"
                " AND step_key = :step_key AND status = 'pending'",
                {
                    "status": status,
                    "actor": actor,
                    "reason": self.redactor(reason),
                    "now": time.time(),
                    "via": via,
                    "incident_id": incident_id,
                    "step_key": step_key,
                },
            )
            return result.rowcount == 1

    def reopen_approval(self, incident_id: str, step_key: str, actor: str) -> bool:
        """Undo a decision `actor` recorded (the run could not be told): pending again.
        False when its runner already acted on it: then it stands."""
        with self._db() as db:
            result = run(
                db,
                "UPDATE approvals SET status = 'pending', actor = NULL, reason = NULL,"
                " decided_at = NULL, via = NULL WHERE incident_id = :incident_id"
                " AND step_key = :step_key AND actor = :actor AND acted_at IS NULL",
                {"incident_id": incident_id, "step_key": step_key, "actor": actor},
            )
            return result.rowcount == 1

    def claim_decision(self, incident_id: str, step_key: str) -> ApprovalRecord | None:
        """The decided request, taken up by this caller: from now on an undo no longer
        applies and nobody else can take it up. None while it is pending, or when another
        caller took it up already (a decision is acted on once)."""
        with self._db() as db:
            result = run(
                db,
                "UPDATE approvals SET acted_at = :now WHERE incident_id = :incident_id"
                " AND step_key = :step_key AND status != 'pending' AND acted_at IS NULL",
                {"now": time.time(), "incident_id": incident_id, "step_key": step_key},
            )
            if result.rowcount != 1:
                return None
        return self.approval(incident_id, step_key)

    def service_approvals(self, status: ApprovalStatus) -> list[ApprovalRecord]:
        """Requests the service itself runs once approved (operation requests)."""
        with self._db() as db:
            ids = rows(
                db,
                "SELECT DISTINCT incident_id FROM approvals"
                " WHERE status = :status AND runner = 'service'",
                {"status": status},
            )
        return [
            a
            for row in ids
            for a in self.approvals(row["incident_id"], status)
            if a.runner == "service"
        ]

    def approval(self, incident_id: str, step_key: str) -> ApprovalRecord | None:
        return next((a for a in self.approvals(incident_id) if a.step_key == step_key), None)

    def record_vote(
        self,
        incident_id: str,
        step_key: str,
        approver: str,
        approve: bool,
        via: str,
        address: str | None,
        reason: str,
    ) -> bool:
        """One person's answer; False if this person already answered this request."""
        values = {
            "incident_id": incident_id,
            "step_key": step_key,
            "approver": approver,
            "approve": int(approve),
            "via": via,
            "address": address,
            "reason": self.redactor(reason),
            "at": time.time(),
        }
        with self._db() as db:
            result = run(
                db, insert_sql("approval_votes", tuple(values), "ON CONFLICT DO NOTHING"), values
            )
            return result.rowcount == 1

    def withdraw_vote(self, incident_id: str, step_key: str, approver: str) -> None:
        with self._db() as db:
            run(
                db,
                "DELETE FROM approval_votes WHERE incident_id = :incident_id"
                " AND step_key = :step_key AND approver = :approver",
                {"incident_id": incident_id, "step_key": step_key, "approver": approver},
            )

    def votes(self, incident_id: str, step_key: str) -> list[ApprovalVote]:
        with self._db() as db:
            found = rows(
                db,
                "SELECT * FROM approval_votes WHERE incident_id = :incident_id"
                " AND step_key = :step_key ORDER BY at",
                {"incident_id": incident_id, "step_key": step_key},
            )
        return [
            ApprovalVote(
                approver=r["approver"],
                approve=bool(r["approve"]),
                via=r["via"],
                address=r["address"],
                reason=r["reason"],
                at=r["at"],
            )
            for r in found
        ]

    def approvals(
        self, incident_id: str, status: ApprovalStatus | None = None
    ) -> list[ApprovalRecord]:
        query = "SELECT * FROM approvals WHERE incident_id = :incident_id"
        values: dict[str, Any] = {"incident_id": incident_id}
        if status is not None:
            query += " AND status = :status"
            values["status"] = status
        with self._db() as db:
            found = rows(db, query + " ORDER BY created_at", values)
        return [
            ApprovalRecord(
                incident_id=r["incident_id"],
                step_key=r["step_key"],
                step=PlanStep.model_validate_json(r["step"]),
                command=r["command"],
                status=r["status"],
                actor=r["actor"],
                reason=r["reason"],
                created_at=r["created_at"],
                decided_at=r["decided_at"],
                expires_at=r["expires_at"],
                required=r["required"],
                requested_by=r["requested_by"],
                via=r["via"],
                runner=r["runner"],
                acted_at=r["acted_at"],
                nonce=r["nonce"],
            )
            for r in found
        ]

    # --- writes: intents, outcomes, history ------------------------------------------

    _WRITE_COLUMNS = (
        "key", "incident_id", "environment", "operation", "target", "step", "state", "actor",
        "entry", "recorded_at", "finished_at", "outcome", "owner",
    )  # fmt: skip

    def begin_write(
        self,
        record: WriteRecord,
        window_start: float,
        check: Callable[[WriteFacts], str | None],
        history_start: float | None = None,
    ) -> str | None:
        """Record a write before it is sent, unless `check` (the policy) refuses it given the
        history: both in one write transaction (serialised with every other on both
        backends), so two writers racing for one target cannot both pass. Returns the
        refusal, or None when recorded."""
        with self.transaction() as db:
            facts = self._write_facts(db, record, window_start, history_start)
            refusal = check(facts)
            if refusal is not None:
                return refusal
            inserted = run(
                db,
                insert_sql("writes", self._WRITE_COLUMNS, "ON CONFLICT DO NOTHING"),
                {
                    "key": record.key,
                    "incident_id": record.incident_id,
                    "environment": record.step.environment,
                    "operation": record.step.operation,
                    "target": record.step.target,
                    "step": record.step.model_dump_json(),
                    "state": "pending",
                    "actor": record.actor,
                    "entry": record.entry,
                    "recorded_at": record.recorded_at,
                    "finished_at": None,
                    "outcome": None,
                    "owner": record.owner,
                },
            )
            if inserted.rowcount == 0:
                return DUPLICATE_KEY  # another caller recorded this very write first
            run_many(
                db,
                insert_sql(
                    "write_targets",
                    ("write_key", "environment", "identity", "name", "at"),
                    "ON CONFLICT DO NOTHING",
                ),
                [
                    {
                        "write_key": record.key,
                        "environment": record.step.environment,
                        "identity": t.identity,
                        "name": t.name,
                        "at": record.recorded_at,
                    }
                    for t in record.targets
                ],
            )
        return None

    def write_facts(
        self, record: WriteRecord, window_start: float, history_start: float | None = None
    ) -> WriteFacts:
        with self._db() as db:
            return self._write_facts(db, record, window_start, history_start)

    _SENT = ", ".join(f"'{s}'" for s in SENT_STATES)

    def _write_facts(
        self,
        db: Connection,
        record: WriteRecord,
        window_start: float,
        history_start: float | None = None,
    ) -> WriteFacts:
        """`window_start`: writes since then count per target; `history_start` (default the
        window's start): older finished writes are not read at all."""
        since = window_start if history_start is None else min(window_start, history_start)
        incident_writes = 0
        if record.incident_id is not None:
            incident_writes = scalar(
                db,
                f"SELECT COUNT(*) FROM writes WHERE incident_id = :id AND state IN ({self._SENT})",  # noqa: S608 - fixed states
                {"id": record.incident_id},
            )
        identities = {f"identity{i}": t.identity for i, t in enumerate(record.targets)}
        found = []
        if identities:
            marks = ", ".join(f":{name}" for name in identities)
            found = rows(
                db,
                "SELECT DISTINCT w.* FROM writes w JOIN write_targets t ON t.write_key = w.key"  # noqa: S608 - placeholders only
                f" WHERE t.environment = :environment AND t.identity IN ({marks})"
                " AND w.key != :key AND (w.recorded_at >= :since"
                " OR w.state IN ('pending', 'unknown')) ORDER BY w.recorded_at DESC",
                {
                    **identities,
                    "environment": record.step.environment,
                    "key": record.key,
                    "since": since,
                },
            )
        writes = [self._write(db, row) for row in found]
        finished = [w for w in writes if w.state in ("done", "unknown")]
        return WriteFacts(
            incident_writes=int(incident_writes),
            last_write=finished[0] if finished else None,
            writes_in_window=sum(1 for w in writes if w.recorded_at >= window_start),
            in_progress=[w for w in writes if w.state == "pending"],
            unresolved=[w for w in writes if w.state == "unknown"],
        )

    def claim_write(self, key: str, owner: str, new_owner: str) -> bool:
        """Take over a pending write whose process is gone: only one caller wins."""
        with self._db() as db:
            result = run(
                db,
                "UPDATE writes SET owner = :new_owner WHERE key = :key AND state = 'pending'"
                " AND owner = :owner",
                {"new_owner": new_owner, "key": key, "owner": owner},
            )
        return result.rowcount == 1

    def still_owner(self, key: str, owner: str) -> bool:
        """Right before a write is sent: is it still pending and ours (nobody took it over)?"""
        with self._db() as db:
            row = first(
                db,
                "SELECT 1 AS ours FROM writes WHERE key = :key AND owner = :owner"
                " AND state = 'pending'",
                {"key": key, "owner": owner},
            )
        return row is not None

    def write(self, key: str) -> WriteRecord | None:
        with self._db() as db:
            row = first(db, "SELECT * FROM writes WHERE key = :key", {"key": key})
            return None if row is None else self._write(db, row)

    def finish_write(self, key: str, state: WriteState, outcome: dict[str, Any]) -> None:
        with self._db() as db:
            run(
                db,
                "UPDATE writes SET state = :state, finished_at = :now, outcome = :outcome"
                " WHERE key = :key",
                {
                    "state": state,
                    "now": time.time(),
                    "outcome": json.dumps(outcome, default=str),
                    "key": key,
                },
            )

    def writes(
        self,
        state: WriteState | None = None,
        incident_id: str | None = None,
        limit: int = 100,
    ) -> list[WriteRecord]:
        where, values = where_clause(
            (
                ("state = :state", "state", state),
                ("incident_id = :incident_id", "incident_id", incident_id),
            )
        )
        with self._db() as db:
            found = rows(
                db,
                f"SELECT * FROM writes {where} ORDER BY recorded_at DESC LIMIT :limit",  # noqa: S608 - fixed column names
                {**values, "limit": limit},
            )
            return [self._write(db, row) for row in found]

    def writes_in_incident(self, incident_id: str) -> int:
        with self._db() as db:
            count = scalar(
                db,
                f"SELECT COUNT(*) FROM writes WHERE incident_id = :id AND state IN ({self._SENT})",  # noqa: S608 - fixed states
                {"id": incident_id},
            )
        return int(count)

    @staticmethod
    def _write(db: Connection, row: Row) -> WriteRecord:
        targets = rows(
            db,
            "SELECT identity, name FROM write_targets WHERE write_key = :key ORDER BY name",
            {"key": row["key"]},
        )
        return WriteRecord(
            key=row["key"],
            incident_id=row["incident_id"],
            step=PlanStep.model_validate_json(row["step"]),
            state=row["state"],
            actor=row["actor"],
            entry=row["entry"],
            recorded_at=row["recorded_at"],
            finished_at=row["finished_at"],
            outcome=json.loads(row["outcome"]) if row["outcome"] else None,
            owner=row["owner"],
            targets=[ResolvedTarget(identity=r["identity"], name=r["name"]) for r in targets],
        )

    def covering(self, environment: str, services: list[str], since: float) -> list[IncidentRecord]:
        """Incidents on a service (under any of its names) that are unfinished, or were last
        updated at or after `since`, newest first: the health sweep opens no new one then."""
        if not services:
            return []
        names = {f"service{i}": service for i, service in enumerate(services)}
        marks = ", ".join(f":{name}" for name in names)
        with self._db() as db:
            found = rows(
                db,
                "SELECT * FROM incidents WHERE environment = :environment"  # noqa: S608 - placeholders only
                f" AND service IN ({marks}) AND (status IN ('open', 'diagnosing',"
                " 'awaiting_approval') OR updated_at >= :since) ORDER BY updated_at DESC",
                {**names, "environment": environment, "since": since},
            )
        return [_incident(row) for row in found]

    def attach_flow_run(self, incident_id: str, flow_run_id: str) -> None:
        """Name the flow run started for an incident, unless its run already named itself;
        the status is left as it is (the run may have moved it on already)."""
        with self._db() as db:
            run(
                db,
                "UPDATE incidents SET flow_run_id = :run WHERE id = :id AND flow_run_id IS NULL",
                {"run": flow_run_id, "id": incident_id},
            )

    # --- the dispatch outbox and the readiness probe -------------------------------------

    def claim_dispatch(self, now: float, limit: int, lease_until: float) -> list[Row]:
        """Due outbox rows, oldest first, leased to this caller until `lease_until`."""
        return claim_dispatch(self.database, now, limit, lease_until)

    def probe_write(self, wait: float) -> None:
        """Rewrite the readiness row within `wait` seconds: raises unless this process can
        write to the store now. On SQLite in a write transaction (the file's one write lock,
        which is this host's). On PostgreSQL in a plain transaction bounded by `wait`, without
        the fleet's write lock: a lock every replica waits for alike says nothing about this
        replica, and failing them all at once would leave no endpoint to retry on
        (`probe_write_lock` reports it, in /health/deep)."""
        if self.database.dialect == "sqlite":
            with self.database.transaction(wait) as db:
                self._write_readiness(db)
            return
        with self.database.engine.connect() as db:
            db.begin()
            run(db, "SELECT set_config('statement_timeout', :wait, true)", {"wait": _ms(wait)})
            self._write_readiness(db)
            db.commit()

    def probe_write_lock(self, wait: float) -> None:
        """Take the store's write lock within `wait` seconds (raises if a writer holds it
        longer), and let it go."""
        with self.database.transaction(wait):
            pass

    @staticmethod
    def _write_readiness(db: Connection) -> None:
        run(db, upsert_sql("readiness", ("id", "at"), ("id",)), {"id": 1, "at": time.time()})


def _incident(row: Row) -> IncidentRecord:
    return IncidentRecord(
        id=row["id"],
        status=row["status"],
        environment=row["environment"],
        service=row["service"],
        context=IncidentContext.model_validate_json(row["context"]),
        report=json.loads(row["report"]) if row["report"] else None,
        flow_run_id=row["flow_run_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
