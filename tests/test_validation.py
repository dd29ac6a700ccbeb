"""Validation after a remediation: recovered only when the service settled (agents.yml
diagnostic_agent.validation), never because it was running the instant the restart returned."""

from __future__ import annotations

from typing import Any

from agent.incidents.models import Observation
from agent.incidents.report import recovery


def status(obs_id: str, **item: Any) -> Observation:
    return Observation(
        id=obs_id,
        phase="resolution",
        operation="get_status",
        environment="local-docker",
        target="api",
        success=True,
        data=[{"container": "api", "state": "running", "restart_count": 2, **item}],
    )


def test_steady_checks_mean_recovered_and_say_which() -> None:
    ok, detail = recovery([status("obs-5"), status("obs-6"), status("obs-7")], "api", 5)
    assert ok and detail.startswith("recovered: 3 status checks after 5 s to settle")
    assert "restart count steady at 2 (obs-5, obs-6, obs-7)" in detail


def test_a_restart_count_that_moves_while_settling_is_not_recovered() -> None:
    """A crash loop is `running` between its crashes: the count tells."""
    checks = [status("obs-5"), status("obs-6", restart_count=3), status("obs-7", restart_count=4)]
    ok, detail = recovery(checks, "api", 5)
    assert not ok and "restarted again while settling (restart count 2 -> 4" in detail


def test_unhealthy_not_running_or_not_ready_is_not_recovered() -> None:
    unhealthy = status("obs-6", health={"status": "unhealthy"})
    assert recovery([status("obs-5"), unhealthy], "api", 0) == (
        False,
        "not recovered: api is unhealthy (obs-6)",
    )
    assert not recovery([status("obs-5", state="exited")], "api", 0)[0]
    unready = status("obs-5", ready=False, pod="api-7d9-x")
    assert recovery([unready], "api", 0) == (False, "not recovered: api-7d9-x not ready (obs-5)")
    assert recovery([], "api", 0)[0] is False


def test_a_health_check_not_yet_passing_or_replaced_replicas_are_not_recovered() -> None:
    starting = status("obs-6", health={"status": "starting"})
    assert recovery([status("obs-5"), starting], "api", 0) == (
        False,
        "not recovered: api not yet healthy (obs-6)",
    )
    old = Observation(
        id="obs-5", operation="get_status", target="api", success=True,
        data=[{"pod": "api-1", "state": "Running", "restarts": 3, "ready": True}],
    )  # fmt: skip
    new = old.model_copy(
        update={"id": "obs-6", "data": [{"pod": "api-2", "state": "Running", "restarts": 0}]}
    )
    ok, detail = recovery([old, new], "api", 0)
    assert not ok and "its replicas changed while settling (api-1 -> api-2" in detail
