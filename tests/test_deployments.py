"""`make up` / `make down` and `prefect deployment run`, for real: a server, the deployments of
prefect.yaml, a process worker, and a diagnosis run through them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from agent.evaluation.failures import FailureLab
from agent.incidents.storage import IncidentStore
from tests.conftest import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unknown_prefect_database_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "UICI_STATE_DIR": str(tmp_path / "state"), "UICI_PREFECT_DB": "mysql"}
    up = subprocess.run(
        [str(REPO_ROOT / "deployments/prefect/up.sh")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert up.returncode == 1
    assert "UICI_PREFECT_DB must be sqlite or postgres, not 'mysql'" in up.stderr
    assert not (tmp_path / "state" / "prefect-server.pid").exists()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_up_deploy_run_and_down(lab: FailureLab, tmp_path: Path, database: str) -> None:
    target = lab.get("missing_env").target
    port = free_port()
    # pytest's tmp_path sits in a root-only directory; the postgres user must reach its data.
    state = Path(tempfile.mkdtemp(prefix="uici-test-up-")) / "state"
    state.parent.chmod(0o755)
    env = {
        **os.environ,
        "UICI_STATE_DIR": str(state),
        "UICI_PREFECT_PORT": str(port),
        "UICI_PREFECT_DB": database,
        "UICI_PREFECT_PG_PORT": str(free_port()),
        "UICI_STORAGE_URL": f"sqlite:///{tmp_path}/uici.db",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    env.pop("PREFECT_HOME", None)
    try:
        up = subprocess.run(
            [str(REPO_ROOT / "deployments/prefect/up.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        # The server keeps its state where it was told to: SQLite file or Postgres cluster.
        sqlite_file = state / "prefect" / "prefect.db"
        assert sqlite_file.exists() == (database == "sqlite")
        assert (state / "postgres" / "PG_VERSION").exists() == (database == "postgres")
        prefect = str(REPO_ROOT / ".venv/bin/prefect")
        run = subprocess.run(
            [
                prefect,
                "deployment",
                "run",
                "diagnose-incident/diagnose-incident",
                "--param",
                f"service={target}",
                "--param",
                "incident_id=deployed-1",
                "--watch",
                "--watch-timeout",
                "180",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Completed" in run.stdout
        record = IncidentStore(tmp_path / "uici.db").get("deployed-1")
        assert record is not None and record.report is not None
        assert record.report["diagnosis"]["rules_matched"][0] == "missing-configuration"
        listed = subprocess.run(
            [prefect, "deployment", "ls"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (
            "health-sweep/health-sweep" in listed.stdout
            and "run-operation/run-operation" in listed.stdout
        )
    finally:
        pids = [int(p.read_text()) for p in state.glob("*.pid")] if state.exists() else []
        down = subprocess.run(
            [str(REPO_ROOT / "deployments/prefect/down.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert down.returncode == 0, down.stderr
    assert len(pids) == 2
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )
    assert not list(state.glob("*.pid"))
    # Postgres removes its postmaster.pid once it has stopped.
    assert not (state / "postgres" / "postmaster.pid").exists()
    shutil.rmtree(state.parent)
