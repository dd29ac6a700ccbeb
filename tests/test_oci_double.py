"""The OCI double, exercised the way the executor will use it: through the real `oci` SDK over
real HTTP, every request signed with an API key. If these pass, a test that runs against the
double is talking to something that checks signatures and answers with the SDK's own models,
not to a mock that agrees with whatever the code under test happens to send."""

from __future__ import annotations

import email.utils
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import oci
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.oci_double import CONTAINER_NAMESPACE, OciDouble, key_fingerprint
from tests.oci_scenarios import (
    APP,
    FATAL_LINE,
    PROXY,
    SECRET_VALUE,
    OciScenario,
    failing_instance,
    healthy_instance,
    stopped_instance,
)

NO_RETRY = oci.retry.NoneRetryStrategy()


@pytest.fixture(scope="module")
def double() -> Iterator[OciDouble]:
    with OciDouble() as server:
        yield server


@pytest.fixture(scope="module")
def scenarios(double: OciDouble) -> dict[str, OciScenario]:
    return {
        "failing": failing_instance(double, "orders-api"),
        "healthy": healthy_instance(double, "catalog-api"),
        "stopped": stopped_instance(double, "reports-worker"),
    }


@pytest.fixture(scope="module")
def config(double: OciDouble, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = double.write_credentials(tmp_path_factory.mktemp("oci"))
    loaded: dict[str, Any] = oci.config.from_file(str(path))
    return loaded


def _clients(config: dict[str, Any], url: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "service_endpoint": url,
        "retry_strategy": NO_RETRY,
        "circuit_breaker_strategy": oci.circuit_breaker.NoCircuitBreakerStrategy(),
    }
    return {
        "ci": oci.container_instances.ContainerInstanceClient(config, **options),
        "search": oci.loggingsearch.LogSearchClient(config, **options),
        "monitoring": oci.monitoring.MonitoringClient(config, **options),
    }


@pytest.fixture(scope="module")
def ci(config: dict[str, Any], double: OciDouble) -> Any:
    return _clients(config, double.url)["ci"]


@pytest.fixture(scope="module")
def search(config: dict[str, Any], double: OciDouble) -> Any:
    return _clients(config, double.url)["search"]


@pytest.fixture(scope="module")
def monitoring(config: dict[str, Any], double: OciDouble) -> Any:
    return _clients(config, double.url)["monitoring"]


@pytest.fixture(autouse=True)
def _clean(double: OciDouble) -> Iterator[None]:
    yield
    double.clear_failures()
    double.work_request_step_seconds = 0.3


def _wait_for(ci: Any, work_request_id: str, limit: int = 10) -> Any:
    for _ in range(limit):
        work_request = ci.get_work_request(work_request_id).data
        if work_request.status in ("SUCCEEDED", "FAILED", "CANCELED"):
            return work_request
    raise AssertionError(f"work request {work_request_id} did not finish")


def _service_error(call: Any) -> oci.exceptions.ServiceError:
    with pytest.raises(oci.exceptions.ServiceError) as caught:
        call()
    return caught.value


# --- server and credentials ------------------------------------------------------------------


def test_starts_fast_on_a_free_port_and_stops_cleanly(tmp_path: Path) -> None:
    began = time.monotonic()
    server = OciDouble().start()
    assert time.monotonic() - began < 1.0
    assert server.url.startswith("http://127.0.0.1:")
    port = int(server.url.rsplit(":", 1)[1])
    config = oci.config.from_file(str(server.write_credentials(tmp_path)))
    ci = _clients(config, server.url)["ci"]
    assert ci.list_container_instances(server.compartment_id).data.items == []
    thread = server._thread
    server.stop()
    assert thread is not None and not thread.is_alive()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        pass


def test_credentials_are_a_real_api_key_with_its_real_fingerprint(
    double: OciDouble, tmp_path: Path
) -> None:
    path = double.write_credentials(tmp_path, profile="UICI")
    config = oci.config.from_file(str(path), "UICI")
    oci.config.validate_config(config)
    assert config["tenancy"] == double.tenancy and double.tenancy.startswith("ocid1.tenancy.oc1..")
    assert config["user"] == double.user and config["region"] == "eu-frankfurt-1"
    key_file = Path(config["key_file"])
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    # The fingerprint the OCI console shows: openssl's MD5 of the DER public key.
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(key_file), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    md5 = subprocess.run(
        ["openssl", "md5", "-c"], input=der, check=True, capture_output=True
    ).stdout.decode()
    assert md5.strip().rsplit(" ", 1)[-1] == double.fingerprint == config["fingerprint"]
    # Same key for every profile and call: one key per double.
    again = oci.config.from_file(str(double.write_credentials(tmp_path)))
    assert Path(again["key_file"]).read_bytes() == key_file.read_bytes()


def test_a_client_signing_with_another_key_gets_401(
    double: OciDouble, config: dict[str, Any], tmp_path: Path, scenarios: dict[str, OciScenario]
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_file = tmp_path / "other.pem"
    other_file.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    double.fail("GET", r"/containerInstances$", 500)  # must not be used up by a 401
    double.clear_requests()
    # Same keyId, wrong key: the signature does not verify.
    forged = _clients(dict(config, key_file=str(other_file)), double.url)["ci"]
    error = _service_error(lambda: forged.list_container_instances(double.compartment_id))
    assert (error.status, error.code) == (401, "NotAuthenticated")
    assert error.headers.get("opc-request-id")
    # The other key's own fingerprint: an API key the user does not have.
    unknown = _clients(
        dict(config, key_file=str(other_file), fingerprint=key_fingerprint(other.public_key())),
        double.url,
    )["ci"]
    error = _service_error(lambda: unknown.get_container(scenarios["failing"].container_id))
    assert (error.status, error.code) == (401, "NotAuthenticated")
    assert "keyId" in error.message
    assert [(r.status, r.signature_ok) for r in double.requests] == [(401, False), (401, False)]
    # The scripted failure is still there for a properly signed request.
    good = _clients(config, double.url)["ci"]
    error = _service_error(lambda: good.list_container_instances(double.compartment_id))
    assert (error.status, error.code) == (500, "InternalServerError")
    assert double.requests[-1].signature_ok is True


def test_unsigned_tampered_and_stale_requests_are_refused(
    double: OciDouble, config: dict[str, Any]
) -> None:
    signer = oci.signer.Signer(
        config["tenancy"], config["user"], config["fingerprint"], config["key_file"]
    )
    url = f"{double.url}/20190909/search"
    body = json.dumps(
        {
            "timeStart": "2026-01-01T00:00:00Z",
            "timeEnd": "2026-01-01T01:00:00Z",
            "searchQuery": f'search "{double.compartment_id}"',
        }
    )

    def send(prepared: requests.PreparedRequest) -> requests.Response:
        with requests.Session() as session:
            return session.send(prepared, timeout=5)

    unsigned = send(requests.Request("POST", url, data=body).prepare())
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "NotAuthenticated"

    signed = requests.Request("POST", url, data=body).prepare()
    signer(signed)
    assert send(signed).status_code == 200  # the control: this signing is what the SDK does

    tampered = requests.Request("POST", url, data=body).prepare()
    signer(tampered)
    tampered.body = body.replace("01:00:00", "02:00:00")  # same length, different bytes
    answer = send(tampered)
    assert answer.status_code == 401 and "x-content-sha256" in answer.json()["message"]

    stale = requests.Request(
        "POST",
        url,
        data=body,
        headers={"date": email.utils.formatdate(time.time() - 900, usegmt=True)},
    ).prepare()
    signer(stale)
    answer = send(stale)
    assert answer.status_code == 401 and "5 minutes" in answer.json()["message"]

    resigned_path = requests.Request("POST", url, data=body).prepare()
    signer(resigned_path)
    resigned_path.url = f"{double.url}/20190909/search?limit=1"  # not what was signed
    assert send(resigned_path).status_code == 401
    assert [r.signature_ok for r in double.requests[-5:]] == [False, True, False, False, False]


# --- container instances ---------------------------------------------------------------------


def test_list_container_instances_filters_and_summary_fields(
    double: OciDouble, ci: Any, scenarios: dict[str, OciScenario]
) -> None:
    response = ci.list_container_instances(double.compartment_id)
    assert response.status == 200 and response.request_id
    items = response.data.items
    assert isinstance(items[0], oci.container_instances.models.ContainerInstanceSummary)
    names = [i.display_name for i in items]
    assert {"orders-api", "catalog-api", "reports-worker"} <= set(names)
    assert names.index("catalog-api") > names.index("orders-api")  # newest first by default

    orders = ci.list_container_instances(double.compartment_id, display_name="orders-api").data
    [summary] = orders.items
    assert summary.id == scenarios["failing"].instance_id
    assert summary.lifecycle_state == "ACTIVE"
    assert summary.shape == "CI.Standard.E4.Flex"
    assert summary.shape_config.ocpus == 1.0 and summary.shape_config.memory_in_gbs == 4.0
    assert summary.container_count == 2 and summary.container_restart_policy == "ALWAYS"
    assert summary.availability_domain == "Uocm:EU-FRANKFURT-1-AD-1"
    assert isinstance(summary.time_created, datetime)

    inactive = ci.list_container_instances(double.compartment_id, lifecycle_state="INACTIVE")
    assert [i.display_name for i in inactive.data.items] == ["reports-worker"]
    by_name = ci.list_container_instances(
        double.compartment_id, sort_by="displayName", sort_order="ASC"
    ).data.items
    assert [i.display_name for i in by_name] == sorted(i.display_name for i in by_name)

    paged = ci.list_container_instances(double.compartment_id, limit=1)
    assert len(paged.data.items) == 1 and paged.has_next_page and paged.next_page
    everything = oci.pagination.list_call_get_all_results(
        ci.list_container_instances, double.compartment_id, limit=1
    ).data
    assert len(everything) == len(items)

    error = _service_error(
        lambda: ci.list_container_instances("ocid1.compartment.oc1..aaaaaaaanotmine")
    )
    assert (error.status, error.code) == (404, "NotAuthorizedOrNotFound")


def test_get_container_instance_is_the_full_model_with_an_etag(
    double: OciDouble, ci: Any, scenarios: dict[str, OciScenario]
) -> None:
    scenario = scenarios["failing"]
    response = ci.get_container_instance(scenario.instance_id)
    instance = response.data
    assert isinstance(instance, oci.container_instances.models.ContainerInstance)
    assert response.headers["etag"] == double.etag(scenario.instance_id)
    assert instance.id == scenario.instance_id and instance.display_name == "orders-api"
    assert instance.compartment_id == double.compartment_id
    assert instance.tenant_id == double.tenancy
    assert {c.display_name: c.container_id for c in instance.containers} == scenario.containers
    assert instance.freeform_tags == {"app": "orders-api", "env": "production", "team": "shop"}
    assert instance.vnics[0].vnic_id.startswith("ocid1.vnic.oc1.eu-frankfurt-1.")
    assert instance.shape_config.processor_description
    assert instance.id.startswith("ocid1.computecontainerinstance.oc1.eu-frankfurt-1.")


def test_containers_deserialize_with_state_restarts_env_and_health(
    double: OciDouble, ci: Any, scenarios: dict[str, OciScenario]
) -> None:
    scenario = scenarios["failing"]
    listed = ci.list_containers(
        double.compartment_id, container_instance_id=scenario.instance_id
    ).data.items
    assert isinstance(listed[0], oci.container_instances.models.ContainerSummary)
    assert {c.display_name: c.lifecycle_state for c in listed} == {APP: "FAILED", PROXY: "ACTIVE"}
    failed_only = ci.list_containers(double.compartment_id, lifecycle_state="FAILED").data.items
    assert [c.id for c in failed_only] == [scenario.container_id]

    app = ci.get_container(scenario.container_id).data
    assert isinstance(app, oci.container_instances.models.Container)
    assert app.lifecycle_state == "FAILED" and app.exit_code == 1
    assert app.lifecycle_details == "Container exited with exit code 1"
    assert app.container_restart_attempt_count == 5
    assert isinstance(app.time_terminated, datetime)
    assert datetime.now(UTC) - app.time_terminated < timedelta(minutes=5)
    assert app.image_url == scenario.image and app.image_url.startswith("fra.ocir.io/")
    assert app.environment_variables["DATABASE_PASSWORD"] == SECRET_VALUE
    assert "DATABASE_URL" not in app.environment_variables
    assert app.resource_config.vcpus_limit == 1.0 and app.resource_config.memory_limit_in_gbs == 2.0
    assert app.container_instance_id == scenario.instance_id
    [check] = app.health_checks
    assert isinstance(check, oci.container_instances.models.ContainerHttpHealthCheck)
    assert (check.status, check.path, check.port) == ("UNHEALTHY", "/healthz", 8080)
    assert isinstance(app.security_context, oci.container_instances.models.LinuxSecurityContext)

    healthy = ci.get_container(scenarios["healthy"].container_id).data
    assert (healthy.lifecycle_state, healthy.exit_code) == ("ACTIVE", None)
    assert healthy.container_restart_attempt_count == 0

    stopped = ci.get_container(scenarios["stopped"].container_id).data
    assert (stopped.lifecycle_state, stopped.exit_code) == ("INACTIVE", 0)


def test_retrieve_logs_returns_the_container_log_as_text(
    ci: Any, scenarios: dict[str, OciScenario]
) -> None:
    response = ci.retrieve_logs(scenarios["failing"].container_id)
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.data.text
    assert FATAL_LINE in text.splitlines()
    assert ci.retrieve_logs(scenarios["failing"].container_id, is_previous=True).data.text == text
    assert "nginx" in ci.retrieve_logs(scenarios["failing"].containers[PROXY]).data.text
    error = _service_error(
        lambda: ci.retrieve_logs("ocid1.computecontainer.oc1.eu-frankfurt-1.annotthere")
    )
    assert (error.status, error.code) == (404, "NotAuthorizedOrNotFound")
    assert error.message == "Authorization failed or requested resource not found."


def test_restart_runs_a_work_request_and_the_crash_comes_back(double: OciDouble, ci: Any) -> None:
    scenario = failing_instance(double, "orders-restart")
    double.work_request_step_seconds = None  # only polling advances it: deterministic
    response = ci.restart_container_instance(scenario.instance_id)
    assert response.status == 202 and response.data is None
    work_request_id = response.headers["opc-work-request-id"]
    assert work_request_id.startswith("ocid1.computecontainerworkrequest.oc1.eu-frankfurt-1.")
    assert double.work_request(work_request_id)["status"] == "ACCEPTED"
    assert ci.get_container_instance(scenario.instance_id).data.lifecycle_state == "UPDATING"

    seen = []
    for _ in range(3):
        work_request = ci.get_work_request(work_request_id).data
        seen.append((work_request.status, work_request.percent_complete))
    assert seen == [("ACCEPTED", 0.0), ("IN_PROGRESS", 50.0), ("SUCCEEDED", 100.0)]
    assert isinstance(work_request, oci.container_instances.models.WorkRequest)
    assert work_request.operation_type == "RESTART_CONTAINER_INSTANCE"
    [resource] = work_request.resources
    assert (resource.entity_type, resource.action_type, resource.identifier) == (
        "ContainerInstance",
        "UPDATED",
        scenario.instance_id,
    )
    assert work_request.time_started and work_request.time_finished

    assert ci.get_container_instance(scenario.instance_id).data.lifecycle_state == "ACTIVE"
    app = ci.get_container(scenario.container_id).data
    assert app.container_restart_attempt_count == 6
    assert (app.lifecycle_state, app.exit_code) == ("FAILED", 1)  # restart_fixes=False
    proxy = ci.get_container(scenario.containers[PROXY]).data
    assert (proxy.lifecycle_state, proxy.container_restart_attempt_count) == ("ACTIVE", 1)
    assert FATAL_LINE in ci.retrieve_logs(scenario.container_id).data.text

    logs = ci.list_work_request_logs(work_request_id).data.items
    assert [entry.message for entry in logs][-1] == "Restart container instance succeeded"


def test_a_restart_that_fixes_the_container(double: OciDouble, ci: Any) -> None:
    scenario = failing_instance(double, "orders-transient", restart_fixes=True)
    before = ci.get_container(scenario.container_id).data
    work_request_id = ci.restart_container_instance(scenario.instance_id).headers[
        "opc-work-request-id"
    ]
    assert _wait_for(ci, work_request_id).status == "SUCCEEDED"
    app = ci.get_container(scenario.container_id).data
    assert (app.lifecycle_state, app.exit_code, app.time_terminated) == ("ACTIVE", None, None)
    assert app.container_restart_attempt_count == before.container_restart_attempt_count + 1
    assert app.time_updated > before.time_updated
    now_log = ci.retrieve_logs(scenario.container_id).data.text
    assert FATAL_LINE not in now_log and "listening" in now_log
    assert FATAL_LINE in ci.retrieve_logs(scenario.container_id, is_previous=True).data.text


def test_the_sdk_composite_waiter_sees_the_work_request_finish(double: OciDouble, ci: Any) -> None:
    scenario = healthy_instance(double, "catalog-composite")
    composite = oci.container_instances.ContainerInstanceClientCompositeOperations(ci)
    result = composite.restart_container_instance_and_wait_for_state(
        scenario.instance_id,
        ["SUCCEEDED", "FAILED"],
        waiter_kwargs={"max_interval_seconds": 1, "max_wait_seconds": 20},
    )
    assert result.data.status == "SUCCEEDED"
    assert oci.wait_until(
        ci,
        ci.get_container_instance(scenario.instance_id),
        "lifecycle_state",
        "ACTIVE",
        max_wait_seconds=10,
    ).data.containers


def test_work_requests_also_advance_with_time(double: OciDouble, ci: Any) -> None:
    scenario = healthy_instance(double, "catalog-timed")
    double.work_request_step_seconds = 0.05
    work_request_id = ci.restart_container_instance(scenario.instance_id).headers[
        "opc-work-request-id"
    ]
    time.sleep(0.15)
    assert ci.get_container_instance(scenario.instance_id).data.lifecycle_state == "ACTIVE"
    assert double.work_request(work_request_id)["status"] == "SUCCEEDED"


def test_stop_start_and_conflicting_states(double: OciDouble, ci: Any) -> None:
    scenario = healthy_instance(double, "catalog-stop")
    error = _service_error(lambda: ci.start_container_instance(scenario.instance_id))
    assert (error.status, error.code) == (409, "IncorrectState")
    assert "ACTIVE" in error.message

    stop_id = ci.stop_container_instance(scenario.instance_id).headers["opc-work-request-id"]
    # While the stop runs, another action conflicts.
    error = _service_error(lambda: ci.restart_container_instance(scenario.instance_id))
    assert (error.status, error.code) == (409, "IncorrectState")
    assert _wait_for(ci, stop_id).operation_type == "STOP_CONTAINER_INSTANCE"
    assert ci.get_container_instance(scenario.instance_id).data.lifecycle_state == "INACTIVE"
    app = ci.get_container(scenario.container_id).data
    assert app.lifecycle_state == "INACTIVE" and app.time_terminated is not None

    error = _service_error(lambda: ci.stop_container_instance(scenario.instance_id))
    assert (error.status, error.code) == (409, "IncorrectState")
    start_id = ci.start_container_instance(scenario.instance_id).headers["opc-work-request-id"]
    assert _wait_for(ci, start_id).status == "SUCCEEDED"
    assert ci.get_container_instance(scenario.instance_id).data.lifecycle_state == "ACTIVE"
    app = ci.get_container(scenario.container_id).data
    assert (app.lifecycle_state, app.time_terminated) == ("ACTIVE", None)
    assert app.container_restart_attempt_count == 0  # a start is not a restart attempt

    history = ci.list_work_requests(
        double.compartment_id, resource_id=scenario.instance_id
    ).data.items
    assert [w.operation_type for w in history] == [
        "START_CONTAINER_INSTANCE",
        "STOP_CONTAINER_INSTANCE",
        "CREATE_CONTAINER_INSTANCE",
    ]
    assert isinstance(history[0], oci.container_instances.models.WorkRequestSummary)


def test_the_same_retry_token_gives_one_work_request(double: OciDouble, ci: Any) -> None:
    scenario = healthy_instance(double, "catalog-retry")
    token = "uici-restart-7d1f0c2a9b"

    def restart() -> Any:
        return ci.base_client.call_api(
            resource_path="/containerInstances/{containerInstanceId}/actions/restart",
            method="POST",
            path_params={"containerInstanceId": scenario.instance_id},
            header_params={
                "accept": "application/json",
                "content-type": "application/json",
                "opc-retry-token": token,
            },
        )

    first, second = restart(), restart()
    assert first.status == second.status == 202
    assert first.headers["opc-work-request-id"] == second.headers["opc-work-request-id"]
    assert double.requests[-1].headers["opc-retry-token"] == token
    _wait_for(ci, first.headers["opc-work-request-id"])
    restarts = [
        w
        for w in ci.list_work_requests(
            double.compartment_id, resource_id=scenario.instance_id
        ).data.items
        if w.operation_type == "RESTART_CONTAINER_INSTANCE"
    ]
    assert len(restarts) == 1
    assert ci.get_container(scenario.container_id).data.container_restart_attempt_count == 1

    # CreateContainerInstance takes the token as a real SDK argument.
    details = oci.container_instances.models.CreateContainerInstanceDetails(
        compartment_id=double.compartment_id,
        availability_domain="Uocm:EU-FRANKFURT-1-AD-1",
        display_name="catalog-created",
        shape="CI.Standard.E4.Flex",
        shape_config=oci.container_instances.models.CreateContainerInstanceShapeConfigDetails(
            ocpus=1.0, memory_in_gbs=4.0
        ),
        containers=[
            oci.container_instances.models.CreateContainerDetails(
                display_name=APP, image_url="fra.ocir.io/frl8xkq2mbcd/shop/catalog:3.1.0"
            )
        ],
        vnics=[
            oci.container_instances.models.CreateContainerVnicDetails(
                subnet_id="ocid1.subnet.oc1.eu-frankfurt-1.aaaaaaaasubnet"
            )
        ],
    )
    created = ci.create_container_instance(details, opc_retry_token="uici-create-1")
    again = ci.create_container_instance(details, opc_retry_token="uici-create-1")
    assert created.data.id == again.data.id and created.data.lifecycle_state == "CREATING"
    assert created.headers["opc-work-request-id"] == again.headers["opc-work-request-id"]
    assert (
        len(
            ci.list_container_instances(
                double.compartment_id, display_name="catalog-created"
            ).data.items
        )
        == 1
    )
    assert _wait_for(ci, created.headers["opc-work-request-id"]).status == "SUCCEEDED"
    assert ci.get_container_instance(created.data.id).data.lifecycle_state == "ACTIVE"


def test_if_match_is_checked_against_the_etag(double: OciDouble, ci: Any) -> None:
    scenario = healthy_instance(double, "catalog-etag")
    error = _service_error(
        lambda: ci.restart_container_instance(scenario.instance_id, if_match="0badc0ffee")
    )
    assert (error.status, error.code) == (412, "NoEtagMatch")
    assert ci.get_container_instance(scenario.instance_id).data.lifecycle_state == "ACTIVE"
    etag = ci.get_container_instance(scenario.instance_id).headers["etag"]
    response = ci.restart_container_instance(scenario.instance_id, if_match=etag)
    assert response.status == 202
    # The restart changed the instance: the old etag no longer matches.
    assert ci.get_container_instance(scenario.instance_id).headers["etag"] != etag


def test_delete_runs_to_deleted(double: OciDouble, ci: Any) -> None:
    scenario = healthy_instance(double, "catalog-delete")
    work_request_id = ci.delete_container_instance(scenario.instance_id).headers[
        "opc-work-request-id"
    ]
    assert ci.get_container_instance(scenario.instance_id).data.lifecycle_state == "DELETING"
    work_request = _wait_for(ci, work_request_id)
    assert work_request.resources[0].action_type == "DELETED"
    assert ci.get_container_instance(scenario.instance_id).data.lifecycle_state == "DELETED"
    assert ci.get_container(scenario.container_id).data.lifecycle_state == "DELETED"


def test_a_failed_work_request_has_errors_and_leaves_the_instance(
    double: OciDouble, ci: Any
) -> None:
    scenario = failing_instance(double, "orders-wrfail")
    double.fail_work_requests(scenario.instance_id, "Out of host capacity for shape")
    work_request_id = ci.restart_container_instance(scenario.instance_id).headers[
        "opc-work-request-id"
    ]
    work_request = _wait_for(ci, work_request_id)
    assert work_request.status == "FAILED"
    [error] = ci.list_work_request_errors(work_request_id).data.items
    assert isinstance(error, oci.container_instances.models.WorkRequestError)
    assert error.message == "Out of host capacity for shape" and error.code
    assert ci.get_container_instance(scenario.instance_id).data.lifecycle_state == "ACTIVE"
    app = ci.get_container(scenario.container_id).data
    assert (app.lifecycle_state, app.container_restart_attempt_count) == ("FAILED", 5)
    failed = ci.list_work_requests(double.compartment_id, status="FAILED").data.items
    assert work_request_id in [w.id for w in failed]


def test_scripted_failures_arrive_as_service_errors(
    double: OciDouble, ci: Any, scenarios: dict[str, OciScenario]
) -> None:
    instance_id = scenarios["healthy"].instance_id
    double.fail("GET", r"/containerInstances/", 404)
    error = _service_error(lambda: ci.get_container_instance(instance_id))
    assert (error.status, error.code) == (404, "NotAuthorizedOrNotFound")
    assert error.message == "Authorization failed or requested resource not found."
    assert error.headers["opc-request-id"] == error.request_id

    double.fail("POST", r"/actions/restart$", 409)
    error = _service_error(lambda: ci.restart_container_instance(instance_id))
    assert (error.status, error.code) == (409, "IncorrectState")

    double.fail("*", r"/containers$", 429, times=2, headers={"Retry-After": "7"})
    for _ in range(2):
        error = _service_error(lambda: ci.list_containers(double.compartment_id))
        assert (error.status, error.code) == (429, "TooManyRequests")
        assert error.headers["retry-after"] == "7"
    assert ci.list_containers(double.compartment_id).status == 200  # used up

    double.fail("POST", r"/retrieveLogs$", 500, code="InternalError", message="log store down")
    error = _service_error(lambda: ci.retrieve_logs(scenarios["healthy"].container_id))
    assert (error.status, error.code, error.message) == (500, "InternalError", "log store down")
    assert error.operation_name == "retrieve_logs"

    double.fail("GET", r".", 503, times=5)
    double.clear_failures()
    assert ci.get_container_instance(instance_id).status == 200
    assert ci.get_container_instance(instance_id).data.lifecycle_state == "ACTIVE"


def test_requests_are_recorded(
    double: OciDouble, ci: Any, scenarios: dict[str, OciScenario]
) -> None:
    double.clear_requests()
    ci.list_containers(
        double.compartment_id, container_instance_id=scenarios["healthy"].instance_id
    )
    ci.retrieve_logs(scenarios["healthy"].container_id)
    listing, logs = double.requests
    assert (listing.method, listing.path, listing.operation) == (
        "GET",
        "/20210415/containers",
        "ListContainers",
    )
    assert listing.query == {
        "compartmentId": double.compartment_id,
        "containerInstanceId": scenarios["healthy"].instance_id,
    }
    assert listing.status == 200 and listing.signature_ok and listing.body is None
    assert listing.headers["authorization"].startswith("Signature ")
    assert (
        f'keyId="{double.tenancy}/{double.user}/{double.fingerprint}"'
        in (listing.headers["authorization"])
    )
    assert logs.operation == "RetrieveLogs" and logs.method == "POST"
    assert "x-content-sha256" in logs.headers


# --- logging search --------------------------------------------------------------------------


def _search(search: Any, query: str, minutes: int = 15, **kwargs: Any) -> Any:
    end = datetime.now(UTC)
    details = oci.loggingsearch.models.SearchLogsDetails(
        time_start=end - timedelta(minutes=minutes),
        time_end=end,
        search_query=query,
        is_return_field_info=kwargs.pop("fields", False),
    )
    return search.search_logs(details, **kwargs)


def test_logging_search_finds_the_fatal_lines(
    double: OciDouble, search: Any, scenarios: dict[str, OciScenario]
) -> None:
    scenario = scenarios["failing"]
    scope = f"{double.compartment_id}/{scenario.log_group_id}/{scenario.log_id}"
    response = _search(search, f"search \"{scope}\" | where data.message = '{FATAL_LINE}'")
    assert isinstance(response.data, oci.loggingsearch.models.SearchResponse)
    results = response.data.results
    assert len(results) == 6 and response.data.summary.result_count == 6
    first = results[0].data
    content = first["logContent"]
    assert content["data"]["message"] == FATAL_LINE
    assert content["data"]["containerInstanceId"] == scenario.instance_id
    assert content["oracle"]["logid"] == scenario.log_id
    assert content["oracle"]["loggroupid"] == scenario.log_group_id
    assert content["oracle"]["compartmentid"] == double.compartment_id
    assert content["source"] == "orders-api" and content["specversion"] == "1.0"
    assert isinstance(first["datetime"], int)

    # Names work in scopes; wildcards, sort and limit.
    by_name = f"{double.compartment_id}/{scenario.log_group_name}/{scenario.log_name}"
    newest = _search(
        search,
        f"search \"{by_name}\" | where data.message = 'FATAL*' and data.level = 'FATAL' "
        "| sort by datetime desc | limit 2",
    ).data.results
    assert len(newest) == 2 and newest[0].data["datetime"] > newest[1].data["datetime"]

    # The whole compartment, narrowed by a field; a narrow time range.
    everything = _search(search, f"search \"{double.compartment_id}\" | where subject = '{APP}'")
    sources = {r.data["logContent"]["source"] for r in everything.data.results}
    assert {"orders-api", "catalog-api"} <= sources and "reports-worker" not in sources
    recent = _search(search, f'search "{scope}"', minutes=3).data.results
    assert 0 < len(recent) < 18

    with_fields = _search(search, f'search "{scope}" | limit 1', fields=True).data
    assert "logContent.data.message" in {f.field_name for f in with_fields.fields}
    paged = _search(search, f'search "{scope}"', limit=5)
    assert len(paged.data.results) == 5 and paged.headers.get("opc-next-page")


def test_logging_search_rejects_what_it_does_not_support(double: OciDouble, search: Any) -> None:
    for query in (
        f'search "{double.compartment_id}" | summarize count() by data.level',
        "data.message = 'x'",
        f"search \"{double.compartment_id}\" | where data.message ~ 'x'",
    ):
        error = _service_error(lambda q=query: _search(search, q))
        assert (error.status, error.code) == (400, "InvalidParameter")
    error = _service_error(
        lambda: _search(search, f'search "{double.compartment_id}"', 60 * 24 * 15)
    )
    assert error.status == 400 and "14 days" in error.message


# --- monitoring ------------------------------------------------------------------------------


def _summarize(monitoring: Any, double: OciDouble, query: str, minutes: int = 15) -> list[Any]:
    end = datetime.now(UTC)
    details = oci.monitoring.models.SummarizeMetricsDataDetails(
        namespace=CONTAINER_NAMESPACE,
        query=query,
        start_time=end - timedelta(minutes=minutes),
        end_time=end,
        resolution="1m",
    )
    data: list[Any] = monitoring.summarize_metrics_data(double.compartment_id, details).data
    return data


def test_summarize_metrics_data_for_an_instance(
    double: OciDouble, monitoring: Any, scenarios: dict[str, OciScenario]
) -> None:
    instance_id = scenarios["failing"].instance_id
    [cpu] = _summarize(
        monitoring, double, f'CpuUtilization[1m]{{resourceId = "{instance_id}"}}.mean()'
    )
    assert isinstance(cpu, oci.monitoring.models.MetricData)
    assert (cpu.namespace, cpu.name, cpu.compartment_id) == (
        CONTAINER_NAMESPACE,
        "CpuUtilization",
        double.compartment_id,
    )
    assert cpu.dimensions["resourceId"] == instance_id
    assert cpu.dimensions["resourceDisplayName"] == "orders-api"
    values = [p.value for p in cpu.aggregated_datapoints]
    assert values == [3.1, 41.2, 2.0, 38.7, 1.9, 44.3, 2.2, 39.8, 1.7, 42.6]
    stamps = [p.timestamp for p in cpu.aggregated_datapoints]
    assert all(isinstance(s, datetime) for s in stamps) and stamps == sorted(stamps)
    assert all(s.second == 0 for s in stamps)

    [memory] = _summarize(
        monitoring, double, f'MemoryUtilization[1m]{{resourceId = "{instance_id}"}}.max()'
    )
    assert max(p.value for p in memory.aggregated_datapoints) == 12.9
    [five] = _summarize(
        monitoring, double, f'CpuUtilization[5m]{{resourceId = "{instance_id}"}}.max()'
    )
    assert 2 <= len(five.aggregated_datapoints) <= 3 and five.resolution == "5m"
    [spikes] = _summarize(
        monitoring, double, f'CpuUtilization[1m]{{resourceId = "{instance_id}"}}.mean() > 30'
    )
    assert len(spikes.aggregated_datapoints) == 5

    # Without a filter: one series per instance with data; grouping() folds them together.
    per_instance = _summarize(monitoring, double, "CpuUtilization[1m].mean()")
    assert {scenarios["failing"].instance_id, scenarios["healthy"].instance_id} <= {
        m.dimensions["resourceId"] for m in per_instance
    }
    [overall] = _summarize(monitoring, double, "CpuUtilization[1m].grouping().max()")
    assert overall.dimensions == {}
    # The stopped instance has no datapoints in the last 15 minutes.
    stopped = scenarios["stopped"].instance_id
    assert (
        _summarize(monitoring, double, f'CpuUtilization[1m]{{resourceId = "{stopped}"}}.mean()')
        == []
    )
    assert (
        len(
            _summarize(
                monitoring, double, f'CpuUtilization[1m]{{resourceId = "{stopped}"}}.mean()', 180
            )
        )
        == 1
    )

    error = _service_error(lambda: _summarize(monitoring, double, "CpuUtilization{resourceId = x}"))
    assert (error.status, error.code) == (400, "InvalidParameter")

    metrics = monitoring.list_metrics(
        double.compartment_id,
        oci.monitoring.models.ListMetricsDetails(
            namespace=CONTAINER_NAMESPACE, dimension_filters={"resourceId": instance_id}
        ),
    ).data
    assert sorted(m.name for m in metrics) == ["CpuUtilization", "MemoryUtilization"]
