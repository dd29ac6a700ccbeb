"""A real PostgreSQL cluster for the tests (Debian's `postgresql`, installed by `make
packages`): initdb in a temporary directory, started with pg_ctl as a plain process on
127.0.0.1 and a free port, trust authentication for the `uici` superuser and a password for
`uici_pw` (to test a refused password). As root the cluster belongs to the `postgres` user,
because PostgreSQL refuses to run as root."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.service_process import free_port

PASSWORD_USER = "uici_pw"
PASSWORD = "SENTINEL-pg-password"


def _bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class PostgresCluster:
    """One cluster; `database()` makes a new empty database and returns its URL."""

    def __init__(self) -> None:
        binaries = _bin()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed: run `make packages`")
        self.bin = binaries
        self.port = free_port()
        # /tmp/pytest-of-root is root-only: the cluster's directory must be the postgres user's.
        self.dir = Path(tempfile.mkdtemp(prefix="uici-pg-"))
        self.dir.chmod(0o755)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._as: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres")
        self._names = itertools.count(1)
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "uici", "--no-sync")
        hba = self.data / "pg_hba.conf"
        # The password user must give its password; everyone else is trusted (loopback only).
        # (root may write the postgres user's file; it keeps its owner.)
        hba.write_text(f"host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        self.start()
        self.sql(f"CREATE ROLE {PASSWORD_USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")

    def _pg(self, program: str, *arguments: str) -> str:
        done = subprocess.run(
            [*self._as, str(self.bin / program), *arguments],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def start(self) -> None:
        # fsync off: the tests need a real server, not durability across power cuts.
        self._pg(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "start",
            "-o", f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
        )  # fmt: skip

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def sql(self, statement: str, database: str = "postgres") -> str:
        return self._pg(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "uici", "-d", database,
            "-v", "ON_ERROR_STOP=1", "-tAc", statement,
        ).strip()  # fmt: skip

    def database(self) -> str:
        name = f"uici_test_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name} TEMPLATE template0")
        return f"postgresql://uici@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
