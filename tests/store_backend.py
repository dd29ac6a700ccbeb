"""Which store the suite's stores are on. SQLite files by default; with
`UICI_TEST_STORE=postgresql` (`make test-postgres`) every store a test asks for is a new
database of one real PostgreSQL cluster (tests/postgres.py) started for the session, so the
service, flow and gate tests run unchanged on both backends.

Tests read their store back with `StoreSQL` (plain SQL with `?` placeholders, rows by index or
by name), which works on either backend, instead of sqlite3 on the file."""

from __future__ import annotations

import atexit
import os
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import text

from agent.incidents.storage import Connection, close_database, database

BACKEND = os.environ.get("UICI_TEST_STORE", "sqlite")
if BACKEND not in ("sqlite", "postgresql"):
    raise RuntimeError(f"UICI_TEST_STORE={BACKEND!r}: sqlite or postgresql")

_lock = threading.Lock()
_cluster: Any = None
_urls: dict[str, str] = {}


def shared_postgres() -> Any:
    """The session's PostgreSQL cluster, started on first use and stopped at exit."""
    global _cluster
    with _lock:
        if _cluster is None:
            from tests.postgres import PostgresCluster

            _cluster = PostgresCluster()
            atexit.register(_cluster.close)
        return _cluster


def store_url_for(directory: Path | str, name: str = "uici.db") -> str:
    """The store of a test's directory: `sqlite:///<directory>/<name>`, or on PostgreSQL a
    database of its own (the same one each time it is asked for)."""
    if BACKEND == "sqlite":
        return f"sqlite:///{directory}/{name}"
    key = f"{directory}/{name}"
    cluster = shared_postgres()
    with _lock:
        if key not in _urls:
            _urls[key] = cluster.database()
        return _urls[key]


def stores_made() -> set[str]:
    """The PostgreSQL stores handed out so far (their directory keys)."""
    with _lock:
        return set(_urls)


def drop_stores(keys: set[str]) -> None:
    """Close this process's connections to those stores and drop their databases, so that a
    long run does not pile up connections or databases on the cluster."""
    with _lock:
        urls = [_urls.pop(key) for key in keys if key in _urls]
    for url in urls:
        close_database(url)
        name = url.rsplit("/", 1)[1]
        shared_postgres().sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class StoreRow(Sequence[Any]):
    """A row by position (unpacking, `row[0]`, `== (...)`) or by column (`row["state"]`)."""

    def __init__(self, row: Any) -> None:
        self._values = tuple(row)
        self._mapping = dict(row._mapping)

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        return self._mapping[key] if isinstance(key, str) else self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return self._values == (tuple(other) if isinstance(other, (tuple, list)) else other)

    def __lt__(self, other: StoreRow) -> bool:  # sorted(rows), as with sqlite3's tuples
        return self._values < other._values

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return repr(self._values)

    def keys(self) -> list[str]:
        return list(self._mapping)


class _Result:
    def __init__(self, rows: list[StoreRow]) -> None:
        self._rows = rows

    def fetchone(self) -> StoreRow | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[StoreRow]:
        return list(self._rows)

    def __iter__(self) -> Iterator[StoreRow]:
        return iter(self._rows)


class StoreSQL:
    """`with StoreSQL(url_or_path) as db: db.execute("SELECT ... WHERE id = ?", (1,))`."""

    def __init__(self, source: Path | str) -> None:
        self.database = database(source)

    def __enter__(self) -> StoreSQL:
        self._opened = self.database.connect()
        self.connection: Connection = self._opened.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._opened.__exit__(*exc)  # type: ignore[arg-type]

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _Result:
        count = iter(range(len(parameters)))
        named = re.sub(r"\?", lambda _: f":p{next(count)}", sql)
        result = self.connection.execute(
            text(named), {f"p{i}": value for i, value in enumerate(parameters)}
        )
        # The store's connect() commits each statement (autocommit on both backends).
        return _Result([StoreRow(r) for r in result] if result.returns_rows else [])
