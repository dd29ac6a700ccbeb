"""Issue 12, no SQL outside the storage module: every SQL statement of the product code is in
agent/incidents/storage.py, so the schema and its queries change in one place. The schema's
history (the Alembic revisions under agent/incidents/migrations/, issue 16) is part of it."""

from __future__ import annotations

import ast
import re

import pytest

from tests.conftest import REPO_ROOT

CODE_DIRS = ("agent", "flows", "tasks", "infrastructure")
STORAGE = REPO_ROOT / "agent" / "incidents" / "storage.py"
MIGRATIONS = REPO_ROOT / "agent" / "incidents" / "migrations"
SOURCES = sorted(p for d in CODE_DIRS for p in (REPO_ROOT / d).rglob("*.py"))

# A string that starts an SQL statement (upper case, as this code base writes SQL). The data
# statements need something after the keyword: a bare "DELETE" is an HTTP method.
SQL = re.compile(
    r"^\s*(?:(?:SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA)\s|(?:BEGIN|COMMIT|ROLLBACK)\b)"
)


def sql_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of the string constants and f-strings that start an SQL statement, one
    per line. An f-string is read as its literal parts with `{}` for each replacement field,
    and each literal part is also read on its own."""
    found: dict[int, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                part.value
                if isinstance(part, ast.Constant) and isinstance(part.value, str)
                else "{}"
                for part in node.values
            )
            if SQL.search(text):
                found.setdefault(node.lineno, text)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and SQL.search(node.value)
        ):
            found.setdefault(node.lineno, node.value)
    return sorted(found.items())


def test_there_is_code_to_check() -> None:
    assert STORAGE in SOURCES
    assert len(SOURCES) >= 10
    # The checker sees the statements that are where they belong.
    assert len(sql_strings(ast.parse(STORAGE.read_text(), str(STORAGE)))) >= 20


def test_no_sql_outside_the_storage_module() -> None:
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{line}: {text.strip()[:60]!r}"
        for path in SOURCES
        if path != STORAGE and MIGRATIONS not in path.parents
        for line, text in sql_strings(ast.parse(path.read_text(), str(path)))
    ]
    assert offenders == [], "SQL outside agent/incidents/storage.py:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "source",
    [
        'q = "SELECT * FROM incidents WHERE id = ?"',
        'db.execute("INSERT INTO t" " VALUES (?)", (1,))',
        'q = """\n    CREATE TABLE IF NOT EXISTS t (id INTEGER)\n"""',
        'q = "UPDATE t SET a = 1"',
        'q = "DELETE FROM t"',
        'q = "DROP TABLE t"',
        'q = "ALTER TABLE t ADD COLUMN b"',
        'db.execute("PRAGMA journal_mode=WAL")',
        'db.execute("BEGIN IMMEDIATE")',
        'db.execute("COMMIT")',
        'db.execute("ROLLBACK")',
        'q = f"SELECT * FROM t {where} LIMIT ?"',
        'q = f"SELECT {columns} FROM t"',
        'q = f"  UPDATE {table} SET a = ?"',
        'q = f"{prefix}" + f"DELETE FROM {table}"',
    ],
)
def test_the_checker_finds_sql(source: str) -> None:
    assert sql_strings(ast.parse(source)) != []


@pytest.mark.parametrize(
    "source",
    [
        'methods = {"GET", "POST", "PUT", "PATCH", "DELETE"}',
        'q = "select * from t"',
        'text = "Selected the target"',
        'text = "the SELECT statement"',
        'text = f"{count} rows UPDATED"',
        'text = "UPDATED"',
    ],
)
def test_the_checker_leaves_other_strings(source: str) -> None:
    assert sql_strings(ast.parse(source)) == []
