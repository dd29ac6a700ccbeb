"""`make up` / `make down` and `prefect deployment run`, for real: a server, the deployments of
prefect.yaml, a process worker, and a diagnosis run through them."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from agent.store import IncidentStore
from tests.conftest import REPO_ROOT
from tests.failures import FailureLab


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_deploy_run_and_down(lab: FailureLab, tmp_path: Path) -> None:
    target = lab.get("missing_env").target
    port = free_port()
    env = {
        **os.environ,
        "UICI_STATE_DIR": str(tmp_path / "state"),
        "UICI_PREFECT_PORT": str(port),
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
        state = tmp_path / "state"
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
