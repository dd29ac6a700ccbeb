"""A remediation happens at most once, even when the worker dies at any step boundary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.evaluation.failures import FailureLab
from agent.incidents.storage import IncidentStore
from agent.safety.gate import BOUNDARIES
from tests.conftest import REPO_ROOT


def run_child(storage_url: str, target: str, boundary: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.remediation_child", storage_url, target, boundary],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


def restarts(lab: FailureLab, name: str, since: float) -> int:
    return lab.restart_events(name, since)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_a_worker_killed_at_each_boundary_restarts_exactly_once(
    boundary: str, lab: FailureLab, tmp_path: Path
) -> None:
    name = f"crash-{boundary.replace('_', '-')}"
    lab.run(name, ["sleep", "600"])
    target = lab.name(name)
    storage_url = f"sqlite:///{tmp_path}/uici.db"
    start = time.time() - 1

    crashed = run_child(storage_url, target, boundary)
    assert crashed.returncode == 1, crashed.stderr  # died at the boundary
    recovered = run_child(storage_url, target, "none")
    assert recovered.returncode == 0, recovered.stderr
    outcome = json.loads(recovered.stdout.strip().splitlines()[-1])

    time.sleep(0.5)  # let the engine publish its events
    assert restarts(lab, target, start) == 1
    expected_executed = boundary in ("before_intent", "after_intent")
    assert outcome["executed"] is expected_executed, outcome
    assert IncidentStore(tmp_path / "uici.db").writes(state="pending") == [], "none left pending"
    # And a third run, e.g. a re-run flow, does nothing at all.
    again = json.loads(run_child(storage_url, target, "none").stdout.strip().splitlines()[-1])
    assert again["executed"] is False
    assert restarts(lab, target, start) == 1
