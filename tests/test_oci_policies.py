"""deployments/oci/*.policy: as narrow as Container Instances allows, and enough for every API
the OCI executor calls (per Oracle's policy reference, see deployments/oci/README.md)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO_ROOT

POLICIES = REPO_ROOT / "deployments" / "oci"
STATEMENT = re.compile(
    r"^Allow group <group> to (?P<verb>inspect|read|use|manage) (?P<resource>[a-z-]+)"
    r" in compartment <compartment>(?: where (?P<condition>.+))?$"
)
# API the executor calls -> (verb, resource-type, permission needed when the verb is "use")
NEEDED = {
    "ListContainerInstances": ("inspect", "compute-container-instances", None),
    "ListWorkRequests": ("inspect", "compute-container-instances", None),
    "GetContainerInstance": ("read", "compute-container-instances", None),
    "GetWorkRequest": ("read", "compute-container-instances", None),
    "ListContainers": ("read", "compute-containers", None),
    "GetContainer": ("read", "compute-containers", None),
    "RetrieveLogs": ("use", "compute-containers", "COMPUTE_CONTAINER_LOG_RETRIEVE"),
    "SearchLogs": ("read", "log-content", None),
    "SummarizeMetricsData": ("read", "metrics", None),
}
WRITES = {
    "RestartContainerInstance": "COMPUTE_CONTAINER_INSTANCE_RESTART",
    "StartContainerInstance": "COMPUTE_CONTAINER_INSTANCE_START",
    "StopContainerInstance": "COMPUTE_CONTAINER_INSTANCE_STOP",
}
ORDER = ["inspect", "read", "use", "manage"]


def statements(name: str) -> list[dict[str, str]]:
    found = []
    for line in (POLICIES / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = STATEMENT.match(line)
        assert match, f"{name}: not a narrow statement for <group> in <compartment>: {line}"
        found.append(match.groupdict())
    return found


def problems(rules: list[dict[str, str]]) -> list[str]:
    found = []
    for rule in rules:
        if rule["verb"] == "manage" or rule["resource"] == "all-resources":
            found.append(f"too broad: {rule}")
        if rule["verb"] == "use" and "request.permission" not in (rule["condition"] or ""):
            found.append(f"'use' without a request.permission condition: {rule}")
    return found


def grants(rules: list[dict[str, str]], verb: str, resource: str, permission: str | None) -> bool:
    for rule in rules:
        if rule["resource"] != resource or ORDER.index(rule["verb"]) < ORDER.index(verb):
            continue
        if rule["verb"] == "use" and verb == "use":
            return permission is not None and f"'{permission}'" in (rule["condition"] or "")
        return True
    return False


def test_read_only_covers_every_read_and_nothing_more() -> None:
    rules = statements("read-only.policy")
    assert problems(rules) == []
    for api, (verb, resource, permission) in NEEDED.items():
        assert grants(rules, verb, resource, permission), f"read-only.policy misses {api}"
    for api, permission in WRITES.items():
        assert not grants(rules, "use", "compute-container-instances", permission), api


def test_remediation_adds_only_the_three_actions() -> None:
    rules = statements("remediation.policy")
    assert problems(rules) == []
    for api, permission in WRITES.items():
        assert grants(rules, "use", "compute-container-instances", permission), api
    assert not grants(
        rules, "use", "compute-container-instances", "COMPUTE_CONTAINER_INSTANCE_UPDATE"
    )


@pytest.mark.parametrize(
    "line",
    [
        "Allow group <group> to manage compute-container-family in compartment <compartment>",
        "Allow group <group> to use compute-container-instances in compartment <compartment>",
        "Allow group <group> to read all-resources in compartment <compartment>",
    ],
)
def test_the_check_refuses_broad_statements(line: str) -> None:
    match = STATEMENT.match(line)
    assert match is not None
    assert problems([match.groupdict()])


def test_a_statement_for_another_scope_is_refused() -> None:
    assert STATEMENT.match("Allow group <group> to read metrics in tenancy") is None
