"""API doubles seeded from an evaluation scenario's `kubernetes:` or `oci:` section.

`uici eval` runs a live Kubernetes or OCI scenario against one of these: the double is started
on 127.0.0.1, filled from the scenario's setup (tests/k8s_scenarios.py and
tests/oci_scenarios.py turn the data into the objects a real cluster or tenancy holds), and
the environment model that reaches it is the shipped environments.yml entry of that type with
its connection pointed at the double, as the executor and flow tests build it. The real
KubernetesExecutor / OCIExecutor (infrastructure.executors.factory.create_executor) use it
unchanged. Everything (the server, the kubeconfig or API key) is gone when the block ends.

    with seeded_kubernetes(scenario.kubernetes, scenario.service) as (name, environment):
        executor = create_executor(name, environment)
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.evaluation.cloud_setup import KubernetesSetup, OciSetup
from infrastructure.configuration.models import (
    EnvironmentsConfig,
    KubernetesEnvironment,
    OCIEnvironment,
)
from infrastructure.configuration.yaml_source import interpolate_environment, load_yaml_document
from tests import k8s_scenarios, oci_scenarios
from tests.conftest import SHIPPED_CONFIG
from tests.k8s_double import KubeDouble
from tests.oci_double import OciDouble

# The shipped environments of each type, which the seeded doubles stand in for.
KUBERNETES_ENV = "staging-k8s"
OCI_ENV = "oci-prod"
# Short back-offs and timeouts: a double answers at once or never.
_RETRIES = {"read_retries": 2, "retry_backoff_seconds": 0.05, "retry_after_cap_seconds": 2}


def shipped_environment(name: str, **connection: Any) -> KubernetesEnvironment | OCIEnvironment:
    """The shipped environments.yml entry `name` (its `${VAR:-default}` values resolved as if
    no variable were set), enabled, with these connection settings changed, and the default
    policy and observability merged in as the loader does."""
    document, problems = load_yaml_document(SHIPPED_CONFIG / "environments.yml")
    assert document is not None and not problems, problems
    problems = interpolate_environment(document, environ={})
    assert not problems, problems
    data = document.data
    settings = data["environments"][name]
    settings["enabled"] = True
    settings["connection"].update(connection)
    # With the shipped metric and log settings (their sources off: no url is set), so the
    # harness can point the environment at a scenario's seeded Prometheus and Loki.
    config = EnvironmentsConfig.model_validate(
        {
            "default_policy": data["default_policy"],
            "observability_sources": data.get("observability_sources") or {},
            "default_observability": data.get("default_observability") or {},
            "environments": {name: settings},
        }
    )
    environment = config.environments[name]
    assert isinstance(environment, KubernetesEnvironment | OCIEnvironment)
    return environment


@contextmanager
def seeded_kubernetes(
    setup: KubernetesSetup, service: str
) -> Iterator[tuple[str, KubernetesEnvironment]]:
    """A Kubernetes API double holding the setup's workload, named `service`, in the setup's
    namespace; yields the environment's name and model (kubeconfig with the double's CA and
    token, that namespace the default and only allowed one)."""
    with tempfile.TemporaryDirectory(prefix="uici-eval-k8s-") as directory, KubeDouble() as double:
        k8s_scenarios.from_setup(double, service, setup)
        kubeconfig = double.kubeconfig(Path(directory) / "kubeconfig", namespace=setup.namespace)
        environment = shipped_environment(
            KUBERNETES_ENV,
            kubeconfig=str(kubeconfig),
            context="double",
            namespace=setup.namespace,
            allowed_namespaces=[setup.namespace],
            **_RETRIES,
        )
        assert isinstance(environment, KubernetesEnvironment)
        yield KUBERNETES_ENV, environment


@contextmanager
def seeded_oci(setup: OciSetup, service: str) -> Iterator[tuple[str, OCIEnvironment]]:
    """An OCI double holding the setup's container instance (named `service` unless the setup
    names it); yields the environment's name and model (an API key the double verifies every
    signature with, all three services at the double, Logging Search scoped to the instance's
    log when the setup has one)."""
    with tempfile.TemporaryDirectory(prefix="uici-eval-oci-") as directory, OciDouble() as double:
        name = setup.display_name or service
        scenario = oci_scenarios.from_setup(double, name, setup)
        credentials = double.write_credentials(Path(directory) / "oci")
        scopes = {}
        if setup.logging_search:
            scopes[name] = f"{double.compartment_id}/{scenario.log_group_id}/{scenario.log_id}"
        environment = shipped_environment(
            OCI_ENV,
            config_file=str(credentials),
            profile="DEFAULT",
            region=double.region,
            compartment_id=double.compartment_id,
            service_endpoints={
                "container_instances": double.url,
                "logging_search": double.url,
                "monitoring": double.url,
            },
            connect_timeout_seconds=2,
            timeout_seconds=5,
            work_request_poll_seconds=0.1,
            work_request_timeout_seconds=20,
            log_search_scopes=scopes,
            **_RETRIES,
        )
        assert isinstance(environment, OCIEnvironment)
        yield OCI_ENV, environment


def seeded_cloud(scenario: Any) -> Any:
    """The harness's cloud_setup: the API double of a Kubernetes or OCI scenario, seeded."""
    if scenario.environment == "kubernetes":
        return seeded_kubernetes(scenario.kubernetes, scenario.service)
    return seeded_oci(scenario.oci, scenario.service)
