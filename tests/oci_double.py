"""A stateful Oracle Cloud (OCI) API double served over real HTTP on 127.0.0.1.

No OCI tenancy is reachable where the tests run, so this stands in for three OCI services on one
port: Container Instances (`/20210415`), Logging Search (`/20190909`) and Monitoring
(`/20180401`). The real `oci` SDK talks to it unchanged (`service_endpoint=double.url`): every
request must carry a valid OCI HTTP signature made with the API key `write_credentials()` wrote
(draft-cavage signatures, verified with `cryptography` exactly as OCI rebuilds the signing
string, body hash included), bodies are the SDK models' camelCase JSON, and errors are OCI's
`{"code": ..., "message": ...}` with an `opc-request-id` header.

Container instance actions (restart, start, stop, delete, create) answer 202 with an
`opc-work-request-id`; the work request moves ACCEPTED -> IN_PROGRESS -> SUCCEEDED one step per
GET of it (or every `work_request_step_seconds`, whichever comes first) and the instance and its
containers change state when it succeeds. `if-match` is checked against the resource's etag
(412 NoEtagMatch), `opc-retry-token` makes a POST idempotent, actions in a conflicting state
answer 409 IncorrectState. Every request is recorded (`requests`, with `signature_ok`), and
`fail()` scripts OCI errors (429 with Retry-After, 500, ...) for error-path tests.

Query support, deliberately small and strict (anything else answers 400 InvalidParameter):
- Logging Search: `search "<scope>"[, "<scope>"...]` where a scope is
  `compartmentOcid[/logGroupOcidOrName[/logOcidOrName]]`, followed by any of the stages
  `| where <condition>` (comparisons `= != < <= > >=`, `in (...)`, `not in (...)`, combined with
  `and`, `or`, `not` and parentheses; a string `=`/`!=` with `*` is a wildcard match; fields are
  dotted paths such as `data.message`, `type`, `source`, `subject`, `oracle.logid`, `datetime`,
  or the same under `logContent.`), `| sort by <field> [asc|desc][, ...]` and `| limit <n>`.
- Monitoring (MQL): `Metric[interval]{dim = "v", dim != "v", dim =~ "glob*"}.grouping()` or
  `.groupBy(dim, ...)`, then one statistic `.mean() .max() .min() .sum() .count() .last()
  .rate() .increment() .percentile(p)`, optionally followed by a comparison (`> 80`) that keeps
  only the datapoints satisfying it. Datapoints are bucketed by `interval` (epoch-aligned, the
  bucket's start as timestamp) within [startTime, endTime).

Not served (404, or 405 where the path exists for other methods): UpdateContainerInstance,
UpdateContainer, ChangeContainerInstanceCompartment, ListContainerInstanceShapes, the Logging
Management API (log groups and logs are added with `add_log`), PostMetricData and alarms.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import copy
import email.utils
import fnmatch
import hashlib
import json
import math
import re
import secrets
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.loopback_server import LoopbackServer, Reply, TrackedHandler

Obj = dict[str, Any]

REGION = "eu-frankfurt-1"
AVAILABILITY_DOMAIN = "Uocm:EU-FRANKFURT-1-AD-1"
CONTAINER_INSTANCES = "/20210415"
LOGGING_SEARCH = "/20190909"
MONITORING = "/20180401"
CONTAINER_NAMESPACE = "oci_computecontainerinstance"
# How far a request's Date may be from the server's clock before OCI refuses it.
MAX_CLOCK_SKEW = timedelta(minutes=5)
# Logging Search refuses wider time ranges.
MAX_SEARCH_RANGE = timedelta(days=14)

DEFAULT_CODES = {
    400: "InvalidParameter",
    401: "NotAuthenticated",
    403: "NotAllowed",
    404: "NotAuthorizedOrNotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    412: "NoEtagMatch",
    429: "TooManyRequests",
    500: "InternalServerError",
    501: "MethodNotImplemented",
    503: "ServiceUnavailable",
}
DEFAULT_MESSAGES = {
    400: "The request is invalid.",
    401: "The required information to complete authentication was not provided or was incorrect.",
    403: "The operation is not allowed.",
    404: "Authorization failed or requested resource not found.",
    405: "The method is not allowed on this resource.",
    409: "The resource is in a conflicting state.",
    412: "The resource has changed: the If-Match etag does not match the current etag.",
    429: "Too many requests for the user, please retry after some time.",
    500: "Internal Server Error",
    501: "The operation is not implemented.",
    503: "The service is currently unavailable, please retry after some time.",
}
NOT_FOUND = DEFAULT_MESSAGES[404]

# Processor descriptions per shape, as ListContainerInstanceShapes reports them.
PROCESSORS = {
    "CI.Standard.E4.Flex": "2.55 GHz AMD EPYC\u2122 7J13 (Milan)",
    "CI.Standard.E3.Flex": "2.25 GHz AMD EPYC\u2122 7742 (Rome)",
    "CI.Standard.A1.Flex": "3.0 GHz Ampere\u00ae Altra\u2122",
}

INSTANCE_SUMMARY_FIELDS = (
    "id",
    "displayName",
    "compartmentId",
    "freeformTags",
    "definedTags",
    "systemTags",
    "availabilityDomain",
    "faultDomain",
    "lifecycleState",
    "lifecycleDetails",
    "timeCreated",
    "timeUpdated",
    "shape",
    "shapeConfig",
    "containerCount",
    "gracefulShutdownTimeoutInSeconds",
    "volumeCount",
    "containerRestartPolicy",
    "securityContext",
)
CONTAINER_SUMMARY_FIELDS = (
    "id",
    "displayName",
    "compartmentId",
    "freeformTags",
    "definedTags",
    "systemTags",
    "availabilityDomain",
    "faultDomain",
    "lifecycleState",
    "lifecycleDetails",
    "timeCreated",
    "timeUpdated",
    "containerInstanceId",
    "resourceConfig",
    "imageUrl",
    "isResourcePrincipalDisabled",
    "securityContext",
)
WORK_REQUEST_FIELDS = (
    "operationType",
    "status",
    "id",
    "compartmentId",
    "resources",
    "percentComplete",
    "timeAccepted",
    "timeStarted",
    "timeFinished",
)
# Keys of add_instance() container dicts that configure the double, not the API object.
BEHAVIOUR_KEYS = ("log", "previous_log", "restart_log", "restart_fixes")


# --- time and identifiers ---------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 with milliseconds, UTC, as OCI services write timestamps."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip().replace("Z", "+00:00"))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def _random(length: int) -> str:
    return "".join(secrets.choice(_BASE32) for _ in range(length))


def ocid(kind: str, region: str | None = REGION) -> str:
    """An OCID of the real shape: global (`..aaaaaaaa...`) or regional (`.<region>.an...`)."""
    if region is None:
        return f"ocid1.{kind}.oc1..aaaaaaaa{_random(52)}"
    return f"ocid1.{kind}.oc1.{region}.an{_random(58)}"


def _request_id() -> str:
    return "/".join(secrets.token_hex(16).upper() for _ in range(3))


def _etag() -> str:
    return secrets.token_hex(32)


def key_fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """OCI's API key fingerprint: MD5 of the DER SubjectPublicKeyInfo, colon-separated hex."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.md5(der).hexdigest()  # OCI defines the fingerprint as MD5
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


# --- errors, records, replies -----------------------------------------------------------------


class OciError(Exception):
    """An API failure, answered as OCI's error body {"code", "message"}."""

    def __init__(
        self,
        status: int,
        message: str = "",
        code: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code or DEFAULT_CODES.get(status, "InternalServerError")
        self.message = message or DEFAULT_MESSAGES.get(status, f"Error {status}")
        self.headers = dict(headers or {})
        super().__init__(f"{status} {self.code}: {self.message}")

    def body(self) -> Obj:
        return {"code": self.code, "message": self.message}


def not_found(what: str = "") -> OciError:
    return OciError(404, NOT_FOUND if not what else f"{NOT_FOUND} ({what})")


def invalid(message: str) -> OciError:
    return OciError(400, message, "InvalidParameter")


@dataclass
class Recorded:
    """One request as the double received it, and how it answered."""

    method: str
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON, or None
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    signature_ok: bool = False
    operation: str = ""  # e.g. "RestartContainerInstance", once routed
    raw: bytes = b""


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    headers: dict[str, str]
    code: str
    message: str


@dataclass
class _Behaviour:
    """What a container does when (re)started: the double's side of a container."""

    log: str = ""
    previous_log: str = ""
    restart_log: str | None = None
    restart_fixes: bool = True
    failure: Obj | None = None  # lifecycleState/exitCode/lifecycleDetails of a failing run


@dataclass
class _WorkRequest:
    record: Obj
    instance_id: str
    step: int = 0  # 0 ACCEPTED, 1 IN_PROGRESS, 2 finished
    last_step: float = 0.0
    fail_message: str | None = None
    errors: list[Obj] = field(default_factory=list)
    logs: list[Obj] = field(default_factory=list)
    previous_state: str = "ACTIVE"
    container_states: dict[str, str] = field(default_factory=dict)  # before the action ran


@dataclass
class _Log:
    id: str
    display_name: str
    log_group_id: str
    log_group_name: str
    compartment_id: str
    entries: list[Obj] = field(default_factory=list)  # {"datetime": ms, "logContent": {...}}


@dataclass
class _Series:
    namespace: str
    name: str
    compartment_id: str
    dimensions: dict[str, str]
    unit: str
    points: list[tuple[datetime, float]] = field(default_factory=list)


@dataclass
class _Call:
    """What a handler gets: path parameters, query, parsed body, lower-cased headers."""

    params: dict[str, str]
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


Handler = Callable[[_Call], Reply]


# --- the double -------------------------------------------------------------------------------


class OciDouble(LoopbackServer):
    """Container Instances, Logging Search and Monitoring, for the real `oci` SDK.

    State lives in memory; the public `add_*`/`set_*` methods and HTTP requests go through the
    same store, under one lock. Times are real (UTC now), so "the last 10 minutes" means it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.region = REGION
        self.tenancy = ocid("tenancy", None)
        self.user = ocid("user", None)
        self.compartment_id = ocid("compartment", None)
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_key = self._private_key.public_key()
        self.fingerprint = key_fingerprint(self.public_key)
        self.requests: list[Recorded] = []
        # Seconds per work request step when nobody polls it; None: only polling advances.
        self.work_request_step_seconds: float | None = 0.3
        self._lock = threading.RLock()
        self._compartments = {self.compartment_id}
        self._instances: dict[str, Obj] = {}
        self._containers: dict[str, Obj] = {}
        self._behaviour: dict[str, _Behaviour] = {}
        self._etags: dict[str, str] = {}
        self._work_requests: dict[str, _WorkRequest] = {}
        self._doomed: dict[str, list[str]] = {}  # instance id -> messages of work requests to fail
        self._retry_tokens: dict[str, tuple[str, str, Reply]] = {}
        self._log_groups: dict[str, tuple[str, str]] = {}  # name -> (ocid, compartment)
        self._logs: dict[str, _Log] = {}
        self._series: list[_Series] = []
        self._failures: list[_Failure] = []
        self._routes = self._build_routes()

    # -- lifecycle ---------------------------------------------------------------------------

    def handler_class(self) -> type[TrackedHandler]:
        return _make_handler(self)

    # -- credentials -------------------------------------------------------------------------

    def private_key_pem(self) -> bytes:
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write_credentials(self, directory: Path, profile: str = "DEFAULT") -> Path:
        """Write the API key (PEM, 0600) and an OCI config file; return the config file's path.

        The key is the double's one RSA key (generated once per double); the config names the
        double's user, tenancy, region and the key's real fingerprint, so
        `oci.config.from_file(path, profile)` gives a config the SDK validates and signs with.
        Other profiles already in the file are kept.
        """
        directory.mkdir(parents=True, exist_ok=True)
        key_file = directory / "oci_api_key.pem"
        key_file.write_bytes(self.private_key_pem())
        key_file.chmod(0o600)
        config_file = directory / "config"
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        if config_file.exists():
            parser.read(config_file)
        section = {
            "user": self.user,
            "fingerprint": self.fingerprint,
            "key_file": str(key_file),
            "tenancy": self.tenancy,
            "region": self.region,
        }
        if profile == "DEFAULT":
            parser["DEFAULT"] = section
        else:
            parser[profile] = section
        with config_file.open("w") as handle:
            parser.write(handle)
        config_file.chmod(0o600)
        return config_file

    # -- container instances: store API ------------------------------------------------------

    def add_instance(
        self,
        display_name: str,
        containers: list[Obj],
        shape: str = "CI.Standard.E4.Flex",
        *,
        ocpus: float = 1.0,
        memory_in_gbs: float = 4.0,
        lifecycle_state: str = "ACTIVE",
        lifecycle_details: str | None = None,
        compartment_id: str | None = None,
        availability_domain: str = AVAILABILITY_DOMAIN,
        fault_domain: str = "FAULT-DOMAIN-2",
        container_restart_policy: str = "ALWAYS",
        graceful_shutdown_timeout_in_seconds: int = 0,
        freeform_tags: dict[str, str] | None = None,
        restart_fixes: bool = True,
        created: datetime | None = None,
        history: bool = True,
    ) -> Obj:
        """Add a container instance and its containers; return the instance (API JSON).

        Each container dict needs `displayName` and takes any Container field in camelCase
        (`imageUrl`, `environmentVariables`, `lifecycleState`, `exitCode`,
        `containerRestartAttemptCount`, `resourceConfig`, `healthChecks`, ...) over realistic
        defaults. Keys only the double reads: `log` (what RetrieveLogs returns),
        `previous_log` (with isPrevious=true), `restart_log` (the log after a restart; default:
        `log`, or empty when a restart fixes a failing container) and `restart_fixes` (whether
        a failing container comes back ACTIVE after a restart/start; default: the
        `restart_fixes` argument). A container is failing when its lifecycleState is FAILED or
        it has a non-zero exitCode. Unless `history` is False, a CREATE_CONTAINER_INSTANCE
        work request (SUCCEEDED) is recorded at the creation time, as the real service's
        history would show.
        """
        created = created or now() - timedelta(hours=3)
        compartment = compartment_id or self.compartment_id
        with self._lock:
            self._compartments.add(compartment)
            instance_id = ocid("computecontainerinstance")
            refs: list[Obj] = []
            for spec in containers:
                container = self._new_container(spec, instance_id, compartment, created)
                container["availabilityDomain"] = availability_domain
                container["faultDomain"] = fault_domain
                if lifecycle_state in ("INACTIVE", "DELETED"):
                    container["lifecycleState"] = lifecycle_state
                behaviour = _Behaviour(
                    log=spec.get("log", ""),
                    previous_log=spec.get("previous_log", ""),
                    restart_log=spec.get("restart_log"),
                    restart_fixes=bool(spec.get("restart_fixes", restart_fixes)),
                )
                if _is_failing(container):
                    behaviour.failure = {
                        "lifecycleState": container["lifecycleState"],
                        "exitCode": container.get("exitCode"),
                        "lifecycleDetails": container.get("lifecycleDetails"),
                    }
                self._containers[container["id"]] = container
                self._behaviour[container["id"]] = behaviour
                self._etags[container["id"]] = _etag()
                refs.append(
                    {"containerId": container["id"], "displayName": container["displayName"]}
                )
            instance: Obj = {
                "id": instance_id,
                "displayName": display_name,
                "compartmentId": compartment,
                "tenantId": self.tenancy,
                "freeformTags": dict(freeform_tags or {}),
                "definedTags": {
                    "Oracle-Tags": {"CreatedBy": "uici-ops", "CreatedOn": format_time(created)}
                },
                "systemTags": {},
                "availabilityDomain": availability_domain,
                "faultDomain": fault_domain,
                "lifecycleState": lifecycle_state,
                "lifecycleDetails": lifecycle_details,
                "volumes": [],
                "volumeCount": 0,
                "containers": refs,
                "containerCount": len(refs),
                "timeCreated": format_time(created),
                "timeUpdated": format_time(created),
                "shape": shape,
                "shapeConfig": {
                    "ocpus": ocpus,
                    "memoryInGBs": memory_in_gbs,
                    "processorDescription": PROCESSORS.get(shape, "2.55 GHz AMD EPYC\u2122 7J13"),
                    "networkingBandwidthInGbps": max(1.0, ocpus),
                },
                "vnics": [{"vnicId": ocid("vnic")}],
                "dnsConfig": {"nameservers": [], "searches": [], "options": []},
                "gracefulShutdownTimeoutInSeconds": graceful_shutdown_timeout_in_seconds,
                "imagePullSecrets": [],
                "containerRestartPolicy": container_restart_policy,
            }
            self._instances[instance_id] = instance
            self._etags[instance_id] = _etag()
            if history:
                self.record_work_request(instance_id, "CREATE_CONTAINER_INSTANCE", accepted=created)
            return copy.deepcopy(instance)

    def _new_container(
        self, spec: Obj, instance_id: str, compartment: str, created: datetime
    ) -> Obj:
        name = spec["displayName"]
        container: Obj = {
            "id": ocid("computecontainer"),
            "displayName": name,
            "compartmentId": compartment,
            "freeformTags": {},
            "definedTags": {},
            "systemTags": {},
            "availabilityDomain": AVAILABILITY_DOMAIN,
            "faultDomain": "FAULT-DOMAIN-2",
            "lifecycleState": "ACTIVE",
            "lifecycleDetails": None,
            "exitCode": None,
            "timeTerminated": None,
            "timeCreated": format_time(created),
            "timeUpdated": format_time(created),
            "containerInstanceId": instance_id,
            "imageUrl": f"docker.io/library/{name}:latest",
            "command": [],
            "arguments": [],
            "workingDirectory": None,
            "environmentVariables": {},
            "volumeMounts": [],
            "healthChecks": [],
            "isResourcePrincipalDisabled": False,
            "resourceConfig": {"vcpusLimit": 1.0, "memoryLimitInGBs": 4.0},
            "containerRestartAttemptCount": 0,
            "securityContext": {
                "securityContextType": "LINUX",
                "runAsUser": None,
                "runAsGroup": None,
                "isNonRootUserCheckEnabled": False,
                "isRootFileSystemReadonly": False,
                "capabilities": {"addCapabilities": [], "dropCapabilities": []},
            },
        }
        for key, value in spec.items():
            if key not in BEHAVIOUR_KEYS:
                container[key] = copy.deepcopy(value)
        for key in ("timeCreated", "timeUpdated", "timeTerminated"):
            value = container.get(key)
            if isinstance(value, datetime):
                container[key] = format_time(value)
        return container

    def get_instance(self, instance_id: str) -> Obj:
        with self._lock:
            self._tick()
            return copy.deepcopy(self._instance(instance_id))

    def get_container(self, container_id: str) -> Obj:
        with self._lock:
            self._tick()
            return copy.deepcopy(self._container(container_id))

    def containers_of(self, instance_id: str) -> list[Obj]:
        with self._lock:
            self._tick()
            return [
                copy.deepcopy(self._containers[ref["containerId"]])
                for ref in self._instance(instance_id)["containers"]
            ]

    def etag(self, resource_id: str) -> str:
        with self._lock:
            return self._etags[resource_id]

    def set_container_logs(self, container_id: str, text: str, previous: bool = False) -> None:
        """What RetrieveLogs answers for the container (previous: with isPrevious=true)."""
        with self._lock:
            self._container(container_id)
            behaviour = self._behaviour[container_id]
            if previous:
                behaviour.previous_log = text
            else:
                behaviour.log = text

    def container_logs(self, container_id: str, previous: bool = False) -> str:
        with self._lock:
            behaviour = self._behaviour[container_id]
            return behaviour.previous_log if previous else behaviour.log

    def fail_work_requests(
        self,
        instance_id: str,
        message: str = "Internal error while processing the work request",
        times: int = 1,
    ) -> None:
        """The next `times` work requests on the instance end FAILED (with this error) and
        leave the instance as it was."""
        with self._lock:
            self._instance(instance_id)
            self._doomed.setdefault(instance_id, []).extend([message] * times)

    def record_work_request(
        self,
        instance_id: str,
        operation: str,
        status: str = "SUCCEEDED",
        accepted: datetime | None = None,
    ) -> Obj:
        """Add a finished work request to the history (no effect on the instance)."""
        accepted = accepted or now()
        with self._lock:
            wr = self._new_work_request(instance_id, operation, accepted)
            wr.step = 2
            finished = accepted + timedelta(seconds=35)
            wr.record.update(
                status=status,
                percentComplete=100.0,
                timeStarted=format_time(accepted + timedelta(seconds=1)),
                timeFinished=format_time(finished),
            )
            wr.record["resources"][0]["actionType"] = _done_action(operation)
            return copy.deepcopy(wr.record)

    def work_request(self, work_request_id: str) -> Obj:
        """A work request as GetWorkRequest would show it now (without advancing it)."""
        with self._lock:
            self._tick()
            wr = self._work_requests.get(work_request_id)
            if wr is None:
                raise KeyError(work_request_id)
            return copy.deepcopy(wr.record)

    def work_requests(self, instance_id: str | None = None) -> list[Obj]:
        with self._lock:
            self._tick()
            return [
                copy.deepcopy(wr.record)
                for wr in self._work_requests.values()
                if instance_id is None or wr.instance_id == instance_id
            ]

    def settle(self) -> None:
        """Finish every pending work request now."""
        with self._lock:
            for wr in list(self._work_requests.values()):
                while wr.step < 2:
                    self._advance(wr)

    # -- logging and monitoring: store API ---------------------------------------------------

    def add_log(
        self, display_name: str, log_group: str = "container-instances", compartment_id: str = ""
    ) -> Obj:
        """Create a custom log in a log group (created by name if new); return its ids."""
        with self._lock:
            compartment = compartment_id or self.compartment_id
            self._compartments.add(compartment)
            group_id, _ = self._log_groups.setdefault(log_group, (ocid("loggroup"), compartment))
            log = _Log(ocid("log"), display_name, group_id, log_group, compartment)
            self._logs[log.id] = log
            return {
                "id": log.id,
                "displayName": display_name,
                "logGroupId": group_id,
                "logGroupName": log_group,
                "compartmentId": compartment,
            }

    def add_log_entries(self, log_id: str, entries: list[Obj]) -> None:
        """Ingest entries into a log (an unknown log OCID is created in the default group).

        An entry is `{"message": str}` or `{"data": {...}}`, with optional `time` (datetime or
        RFC 3339; default now), `type`, `source`, `subject` and `id`. Stored the way Logging
        Search returns them: `{"datetime": epoch-ms, "logContent": {data, id, oracle, source,
        specversion, subject, time, type}}`.
        """
        with self._lock:
            log = self._logs.get(log_id)
            if log is None:
                group_id, _ = self._log_groups.setdefault(
                    "container-instances", (ocid("loggroup"), self.compartment_id)
                )
                log = _Log(
                    log_id,
                    f"log-{log_id[-6:]}",
                    group_id,
                    "container-instances",
                    self.compartment_id,
                )
                self._logs[log_id] = log
            for entry in entries:
                moment = parse_time(entry.get("time")) or now()
                data = entry.get("data")
                if data is None:
                    data = {"message": entry.get("message", "")}
                content = {
                    "data": copy.deepcopy(data),
                    "id": entry.get("id") or str(uuid.uuid4()),
                    "oracle": {
                        "compartmentid": log.compartment_id,
                        "ingestedtime": format_time(moment + timedelta(milliseconds=850)),
                        "loggroupid": log.log_group_id,
                        "logid": log.id,
                        "tenantid": self.tenancy,
                    },
                    "source": entry.get("source", ""),
                    "specversion": "1.0",
                    "subject": entry.get("subject", ""),
                    "time": format_time(moment),
                    "type": entry.get("type", "com.oraclecloud.logging.custom.application"),
                }
                log.entries.append(
                    {"datetime": int(moment.timestamp() * 1000), "logContent": content}
                )
            log.entries.sort(key=lambda e: e["datetime"])

    def add_metric_points(
        self,
        namespace: str,
        name: str,
        resource_id: str,
        points: list[tuple[datetime, float]],
        *,
        dimensions: dict[str, str] | None = None,
        unit: str = "percent",
    ) -> None:
        """Raw datapoints of one timeseries (dimension resourceId, plus the instance's
        availabilityDomain/faultDomain/resourceDisplayName when the resource is a known
        container instance, plus `dimensions`)."""
        with self._lock:
            dims = {"resourceId": resource_id}
            instance = self._instances.get(resource_id)
            compartment = self.compartment_id
            if instance is not None:
                compartment = instance["compartmentId"]
                dims.update(
                    availabilityDomain=instance["availabilityDomain"],
                    faultDomain=instance["faultDomain"],
                    resourceDisplayName=instance["displayName"],
                )
            dims.update(dimensions or {})
            for series in self._series:
                if (series.namespace, series.name, series.dimensions) == (namespace, name, dims):
                    break
            else:
                series = _Series(namespace, name, compartment, dims, unit)
                self._series.append(series)
            series.points.extend((parse_time(t) or now(), float(v)) for t, v in points)
            series.points.sort(key=lambda p: p[0])

    # -- requests and failures ---------------------------------------------------------------

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        times: int = 1,
        headers: dict[str, str] | None = None,
        code: str = "",
        message: str = "",
    ) -> None:
        """Answer the next `times` matching requests with `status` and OCI's error body.

        `method` is an HTTP method (case-insensitive) or "*"; `path_regex` is re.search-ed
        against the path without its query. The signature is checked first: an unauthenticated
        request does not use up a scripted failure. A 409 on an action path defaults to code
        IncorrectState, elsewhere to Conflict.
        """
        with self._lock:
            self._failures.append(
                _Failure(
                    method.upper(),
                    re.compile(path_regex),
                    status,
                    times,
                    dict(headers or {}),
                    code,
                    message,
                )
            )

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- store internals ---------------------------------------------------------------------

    def _instance(self, instance_id: str) -> Obj:
        instance = self._instances.get(instance_id)
        if instance is None:
            raise not_found()
        return instance

    def _container(self, container_id: str) -> Obj:
        container = self._containers.get(container_id)
        if container is None:
            raise not_found()
        return container

    def _touch(self, resource_id: str, obj: Obj, moment: datetime) -> None:
        obj["timeUpdated"] = format_time(moment)
        self._etags[resource_id] = _etag()

    def _check_compartment(self, query: dict[str, str]) -> str:
        compartment = query.get("compartmentId", "")
        if not compartment:
            raise OciError(400, "compartmentId is required", "MissingParameter")
        if compartment not in self._compartments:
            raise not_found()
        return compartment

    # -- work requests -----------------------------------------------------------------------

    def _new_work_request(
        self, instance_id: str, operation: str, accepted: datetime
    ) -> _WorkRequest:
        wr_id = ocid("computecontainerworkrequest")
        instance = self._instances[instance_id]
        record: Obj = {
            "operationType": operation,
            "status": "ACCEPTED",
            "id": wr_id,
            "compartmentId": instance["compartmentId"],
            "resources": [
                {
                    "entityType": "ContainerInstance",
                    "actionType": "IN_PROGRESS",
                    "identifier": instance_id,
                    "entityUri": f"{CONTAINER_INSTANCES}/containerInstances/{instance_id}",
                }
            ],
            "percentComplete": 0.0,
            "timeAccepted": format_time(accepted),
            "timeStarted": None,
            "timeFinished": None,
        }
        wr = _WorkRequest(record, instance_id, last_step=time.monotonic())
        wr.logs.append(
            {
                "message": f"{_operation_words(operation)} accepted",
                "timestamp": format_time(accepted),
            }
        )
        self._work_requests[wr_id] = wr
        return wr

    def _tick(self) -> None:
        """Advance work requests nobody polled, one step per `work_request_step_seconds`."""
        step = self.work_request_step_seconds
        if step is None:
            return
        clock = time.monotonic()
        for wr in list(self._work_requests.values()):
            while wr.step < 2 and clock - wr.last_step >= step:
                self._advance(wr, wr.last_step + step)

    def _advance(self, wr: _WorkRequest, at: float | None = None) -> None:
        if wr.step >= 2:
            return
        wr.step += 1
        wr.last_step = time.monotonic() if at is None else at
        moment = now()
        record = wr.record
        instance = self._instances[wr.instance_id]
        operation = record["operationType"]
        if wr.step == 1:
            record.update(
                status="IN_PROGRESS", percentComplete=50.0, timeStarted=format_time(moment)
            )
            wr.logs.append(
                {
                    "message": f"{_operation_words(operation)} in progress",
                    "timestamp": format_time(moment),
                }
            )
            if operation in ("RESTART_CONTAINER_INSTANCE", "START_CONTAINER_INSTANCE"):
                for container in self._containers_of(instance):
                    wr.container_states[container["id"]] = container["lifecycleState"]
                    container["lifecycleState"] = "UPDATING"
                    self._touch(container["id"], container, moment)
            return
        record["timeFinished"] = format_time(moment)
        if wr.fail_message is not None:
            record.update(status="FAILED", percentComplete=100.0)
            record["resources"][0]["actionType"] = "FAILED"
            wr.errors.append(
                {
                    "code": "InternalError",
                    "message": wr.fail_message,
                    "timestamp": format_time(moment),
                }
            )
            wr.logs.append(
                {
                    "message": f"{_operation_words(operation)} failed",
                    "timestamp": format_time(moment),
                }
            )
            instance["lifecycleState"] = wr.previous_state
            for container in self._containers_of(instance):
                if container["lifecycleState"] == "CREATING":
                    container["lifecycleState"] = "FAILED"
                elif container["lifecycleState"] == "UPDATING":
                    container["lifecycleState"] = wr.container_states.get(container["id"], "ACTIVE")
            self._touch(instance["id"], instance, moment)
            return
        record.update(status="SUCCEEDED", percentComplete=100.0)
        record["resources"][0]["actionType"] = _done_action(operation)
        wr.logs.append(
            {
                "message": f"{_operation_words(operation)} succeeded",
                "timestamp": format_time(moment),
            }
        )
        if operation == "STOP_CONTAINER_INSTANCE":
            instance["lifecycleState"] = "INACTIVE"
            for container in self._containers_of(instance):
                container["lifecycleState"] = "INACTIVE"
                container["timeTerminated"] = format_time(moment)
                self._touch(container["id"], container, moment)
        elif operation == "DELETE_CONTAINER_INSTANCE":
            instance["lifecycleState"] = "DELETED"
            for container in self._containers_of(instance):
                container["lifecycleState"] = "DELETED"
                container["timeTerminated"] = container.get("timeTerminated") or format_time(moment)
                self._touch(container["id"], container, moment)
        else:  # create, start, restart: the containers run (again)
            instance["lifecycleState"] = "ACTIVE"
            for container in self._containers_of(instance):
                self._run_container(
                    container, moment, restarted=operation == "RESTART_CONTAINER_INSTANCE"
                )
        instance["lifecycleDetails"] = None
        self._touch(instance["id"], instance, moment)

    def _containers_of(self, instance: Obj) -> list[Obj]:
        return [self._containers[ref["containerId"]] for ref in instance["containers"]]

    def _run_container(self, container: Obj, moment: datetime, *, restarted: bool) -> None:
        behaviour = self._behaviour[container["id"]]
        was_failing = behaviour.failure is not None
        if restarted:
            container["containerRestartAttemptCount"] = (
                int(container.get("containerRestartAttemptCount") or 0) + 1
            )
        behaviour.previous_log = behaviour.log
        if was_failing and behaviour.restart_fixes:
            behaviour.failure = None
        if behaviour.restart_log is not None:
            behaviour.log = behaviour.restart_log
        elif was_failing and behaviour.failure is None:
            behaviour.log = ""
        if behaviour.failure is not None:  # it fails again, a moment after starting
            container["lifecycleState"] = behaviour.failure["lifecycleState"]
            container["exitCode"] = behaviour.failure["exitCode"]
            container["lifecycleDetails"] = behaviour.failure["lifecycleDetails"]
            container["timeTerminated"] = format_time(moment)
        else:
            container.update(
                lifecycleState="ACTIVE", exitCode=None, lifecycleDetails=None, timeTerminated=None
            )
        self._touch(container["id"], container, moment)

    def _action(self, instance_id: str, operation: str, headers: dict[str, str]) -> Reply:
        instance = self._instance(instance_id)
        self._check_etag(instance_id, headers)
        state = instance["lifecycleState"]
        allowed = {
            "RESTART_CONTAINER_INSTANCE": ("ACTIVE", "FAILED"),
            "STOP_CONTAINER_INSTANCE": ("ACTIVE", "FAILED"),
            "START_CONTAINER_INSTANCE": ("INACTIVE", "FAILED"),
            "DELETE_CONTAINER_INSTANCE": ("ACTIVE", "INACTIVE", "FAILED", "CREATING"),
        }[operation]
        if state not in allowed:
            raise OciError(
                409,
                f"Container instance {instance_id} is in lifecycle state {state}; "
                f"{_operation_words(operation).lower()} requires {' or '.join(allowed)}",
                "IncorrectState",
            )
        moment = now()
        wr = self._new_work_request(instance_id, operation, moment)
        wr.previous_state = state
        doomed = self._doomed.get(instance_id)
        if doomed:
            wr.fail_message = doomed.pop(0)
        instance["lifecycleState"] = (
            "DELETING" if operation == "DELETE_CONTAINER_INSTANCE" else "UPDATING"
        )
        self._touch(instance_id, instance, moment)
        return Reply(202, None, {"opc-work-request-id": wr.record["id"]})

    def _check_etag(self, resource_id: str, headers: dict[str, str]) -> None:
        expected = headers.get("if-match")
        if expected and expected != "*" and expected != self._etags.get(resource_id):
            raise OciError(
                412,
                f"The If-Match header's etag does not match the current etag of {resource_id}",
                "NoEtagMatch",
            )

    # -- HTTP --------------------------------------------------------------------------------

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], raw: bytes) -> Reply:
        parts = urlsplit(raw_path)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        body: Any = None
        if raw:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        record = Recorded(method, path, query, body, headers, raw=raw)
        with self._lock:
            self.requests.append(record)
        client_request_id = headers.get("opc-request-id", "")
        try:
            problem = self._signature_problem(method, raw_path, headers, raw)
            if problem:
                raise OciError(401, problem, "NotAuthenticated")
            record.signature_ok = True
            with self._lock:
                self._tick()
                route_error: OciError | None = None
                try:
                    operation, handler, params = self._route(method, path)
                    record.operation = operation
                except OciError as exc:
                    route_error = exc
                self._scripted_failure(method, path)
                if route_error is not None:
                    raise route_error
                if method in ("POST", "PUT") and raw and body is None:
                    raise invalid("The request body is not valid JSON")
                reply = self._idempotent(
                    method, path, headers, lambda: handler(_Call(params, query, body, headers))
                )
        except OciError as exc:
            reply = Reply(exc.status, exc.body(), dict(exc.headers))
        except Exception as exc:
            traceback.print_exc()
            reply = Reply(500, OciError(500, f"Internal error in the OCI double: {exc}").body())
        rid = _request_id()  # OCI appends its own ids to the client's opc-request-id
        reply.headers["opc-request-id"] = (
            f"{client_request_id}/{rid.split('/', 1)[1]}" if client_request_id else rid
        )
        record.status = reply.status
        return reply

    def _idempotent(
        self, method: str, path: str, headers: dict[str, str], run: Callable[[], Reply]
    ) -> Reply:
        """opc-retry-token: the same token on the same request replays the first answer."""
        token = headers.get("opc-retry-token")
        if method not in ("POST", "DELETE") or not token:
            return run()
        seen = self._retry_tokens.get(token)
        if seen is not None:
            seen_method, seen_path, reply = seen
            if (seen_method, seen_path) != (method, path):
                raise OciError(
                    409,
                    "The retry token was already used for a different request",
                    "RetryTokenConflict",
                )
            return Reply(reply.status, copy.deepcopy(reply.body), dict(reply.headers))
        reply = run()
        if 200 <= reply.status < 300:
            self._retry_tokens[token] = (
                method,
                path,
                Reply(reply.status, copy.deepcopy(reply.body), dict(reply.headers)),
            )
        return reply

    def _signature_problem(
        self, method: str, raw_path: str, headers: dict[str, str], raw: bytes
    ) -> str:
        """Why the request's OCI signature is not acceptable ("" when it is)."""
        authorization = headers.get("authorization", "")
        if not authorization.startswith("Signature "):
            return "The Authorization header is missing or is not an OCI request signature"
        params = dict(re.findall(r'(\w+)="([^"]*)"', authorization[len("Signature ") :]))
        if params.get("version", "1") != "1":
            return f"Unsupported signature version {params.get('version')}"
        if params.get("algorithm") != "rsa-sha256":
            return f"Unsupported signature algorithm {params.get('algorithm')}"
        expected_key = f"{self.tenancy}/{self.user}/{self.fingerprint}"
        if params.get("keyId") != expected_key:
            return f"Unknown keyId {params.get('keyId')!r}: no such API key for this user"
        signed = params.get("headers", "date").lower().split()
        required = ["(request-target)", "host"]
        if method in ("POST", "PUT", "PATCH"):
            required += ["content-length", "content-type", "x-content-sha256"]
        missing = [h for h in required if h not in signed]
        if not ("date" in signed or "x-date" in signed):
            missing.insert(0, "date")
        if missing:
            return f"The signature does not cover the required headers: {', '.join(missing)}"
        date_text = headers.get("x-date") or headers.get("date") or ""
        try:
            sent = email.utils.parsedate_to_datetime(date_text)
        except (TypeError, ValueError):
            return f"The Date header {date_text!r} is not a valid HTTP date"
        if sent.tzinfo is None or abs(now() - sent) > MAX_CLOCK_SKEW:
            return f"The Date header {date_text!r} is more than 5 minutes from the server's clock"
        if method in ("POST", "PUT", "PATCH"):
            digest = base64.b64encode(hashlib.sha256(raw).digest()).decode()
            if headers.get("x-content-sha256") != digest:
                return "The x-content-sha256 header does not match the body"
            if headers.get("content-length") != str(len(raw)):
                return "The content-length header does not match the body"
        lines = []
        for name in signed:
            if name == "(request-target)":
                lines.append(f"(request-target): {method.lower()} {raw_path}")
            elif name in headers:
                lines.append(f"{name}: {headers[name]}")
            else:
                return f"The signed header {name!r} is missing from the request"
        try:
            signature = base64.b64decode(params.get("signature", ""), validate=True)
            self.public_key.verify(
                signature, "\n".join(lines).encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except (InvalidSignature, ValueError):
            return "The request signature does not verify with the API key's public key"
        return ""

    def _scripted_failure(self, method: str, path: str) -> None:
        for failure in self._failures:
            if failure.remaining <= 0 or failure.method not in ("*", method):
                continue
            if not failure.pattern.search(path):
                continue
            failure.remaining -= 1
            self._failures = [f for f in self._failures if f.remaining > 0]
            code = failure.code
            if not code and failure.status == 409 and "/actions/" in path:
                code = "IncorrectState"
            raise OciError(failure.status, failure.message, code, failure.headers)

    # -- routing -----------------------------------------------------------------------------

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], str, Handler]]:
        ci = CONTAINER_INSTANCES
        table: list[tuple[str, str, str, Handler]] = [
            ("GET", rf"{ci}/containerInstances", "ListContainerInstances", self._list_instances),
            ("POST", rf"{ci}/containerInstances", "CreateContainerInstance", self._create_instance),
            ("GET", rf"{ci}/containerInstances/(?P<id>[^/]+)", "GetContainerInstance", self._get_instance),
            ("DELETE", rf"{ci}/containerInstances/(?P<id>[^/]+)", "DeleteContainerInstance", self._delete_instance),
            ("POST", rf"{ci}/containerInstances/(?P<id>[^/]+)/actions/restart", "RestartContainerInstance", self._restart),
            ("POST", rf"{ci}/containerInstances/(?P<id>[^/]+)/actions/start", "StartContainerInstance", self._start),
            ("POST", rf"{ci}/containerInstances/(?P<id>[^/]+)/actions/stop", "StopContainerInstance", self._stop),
            ("GET", rf"{ci}/containers", "ListContainers", self._list_containers),
            ("GET", rf"{ci}/containers/(?P<id>[^/]+)", "GetContainer", self._get_container),
            ("POST", rf"{ci}/containers/(?P<id>[^/]+)/actions/retrieveLogs", "RetrieveLogs", self._retrieve_logs),
            ("GET", rf"{ci}/workRequests", "ListWorkRequests", self._list_work_requests),
            ("GET", rf"{ci}/workRequests/(?P<id>[^/]+)", "GetWorkRequest", self._get_work_request),
            ("GET", rf"{ci}/workRequests/(?P<id>[^/]+)/errors", "ListWorkRequestErrors", self._work_request_errors),
            ("GET", rf"{ci}/workRequests/(?P<id>[^/]+)/logs", "ListWorkRequestLogs", self._work_request_logs),
            ("POST", rf"{LOGGING_SEARCH}/search", "SearchLogs", self._search_logs),
            ("POST", rf"{MONITORING}/metrics/actions/summarizeMetricsData", "SummarizeMetricsData", self._summarize_metrics),
            ("POST", rf"{MONITORING}/metrics/actions/listMetrics", "ListMetrics", self._list_metrics),
        ]  # fmt: skip
        return [(m, re.compile(f"^{p}$"), name, h) for m, p, name, h in table]

    def _route(self, method: str, path: str) -> tuple[str, Handler, dict[str, str]]:
        path_matched = False
        for route_method, pattern, operation, handler in self._routes:
            match = pattern.match(path)
            if match is None:
                continue
            path_matched = True
            if route_method == method:
                return operation, handler, {k: unquote(v) for k, v in match.groupdict().items()}
        if path_matched:
            raise OciError(405, f"{method} is not allowed on {path}", "MethodNotAllowed")
        raise OciError(404, f"No such API: {method} {path}", "NotAuthorizedOrNotFound")

    # -- container instance handlers ---------------------------------------------------------

    def _page(self, items: list[Obj], query: dict[str, str]) -> tuple[list[Obj], dict[str, str]]:
        try:
            limit = int(query.get("limit") or 100)
            offset = int(query.get("page") or 0)
        except ValueError:
            raise invalid("limit and page must be a number and a page token") from None
        if not 1 <= limit <= 1000 or offset < 0:
            raise invalid("limit must be between 1 and 1000")
        headers = {}
        if offset + limit < len(items):
            headers["opc-next-page"] = str(offset + limit)
        return items[offset : offset + limit], headers

    @staticmethod
    def _sorted(items: list[Obj], query: dict[str, str], default: str = "timeCreated") -> list[Obj]:
        key = query.get("sortBy") or default
        if key not in ("timeCreated", "displayName", "timeAccepted"):
            raise invalid(f"Unsupported sortBy {key}")
        default_order = "ASC" if key == "displayName" else "DESC"
        order = query.get("sortOrder") or default_order
        return sorted(items, key=lambda o: str(o.get(key) or ""), reverse=order == "DESC")

    def _list_instances(self, call: _Call) -> Reply:
        query = call.query
        compartment = self._check_compartment(query)
        items = [
            i
            for i in self._instances.values()
            if i["compartmentId"] == compartment
            and query.get("displayName", i["displayName"]) == i["displayName"]
            and query.get("lifecycleState", i["lifecycleState"]) == i["lifecycleState"]
            and query.get("availabilityDomain", i["availabilityDomain"]) == i["availabilityDomain"]
        ]
        page, extra = self._page(self._sorted(items, query), query)
        summaries = [{k: copy.deepcopy(i.get(k)) for k in INSTANCE_SUMMARY_FIELDS} for i in page]
        return Reply(200, {"items": summaries}, extra)

    def _get_instance(self, call: _Call) -> Reply:
        params = call.params
        instance = self._instance(params["id"])
        return Reply(200, copy.deepcopy(instance), {"etag": self._etags[params["id"]]})

    def _restart(self, call: _Call) -> Reply:
        params, headers = call.params, call.headers
        return self._action(params["id"], "RESTART_CONTAINER_INSTANCE", headers)

    def _start(self, call: _Call) -> Reply:
        params, headers = call.params, call.headers
        return self._action(params["id"], "START_CONTAINER_INSTANCE", headers)

    def _stop(self, call: _Call) -> Reply:
        params, headers = call.params, call.headers
        return self._action(params["id"], "STOP_CONTAINER_INSTANCE", headers)

    def _delete_instance(self, call: _Call) -> Reply:
        params, headers = call.params, call.headers
        return self._action(params["id"], "DELETE_CONTAINER_INSTANCE", headers)

    def _create_instance(self, call: _Call) -> Reply:
        body = call.body
        if not isinstance(body, dict):
            raise invalid("CreateContainerInstanceDetails is required")
        for required in (
            "compartmentId",
            "availabilityDomain",
            "shape",
            "shapeConfig",
            "containers",
            "vnics",
        ):
            if not body.get(required):
                raise OciError(400, f"{required} is required", "MissingParameter")
        if body["compartmentId"] not in self._compartments:
            raise not_found()
        specs = []
        for spec in body["containers"]:
            if not spec.get("imageUrl"):
                raise OciError(400, "containers[].imageUrl is required", "MissingParameter")
            container = {
                k: v
                for k, v in spec.items()
                if k in ("displayName", "imageUrl", "command", "arguments", "workingDirectory",
                         "environmentVariables", "freeformTags", "definedTags",
                         "isResourcePrincipalDisabled")
            }  # fmt: skip
            container.setdefault("displayName", spec["imageUrl"].rsplit("/", 1)[-1].split(":")[0])
            resources = spec.get("resourceConfig") or {}
            container["resourceConfig"] = {
                "vcpusLimit": resources.get("vcpusLimit", body["shapeConfig"].get("ocpus", 1.0)),
                "memoryLimitInGBs": resources.get(
                    "memoryLimitInGBs", body["shapeConfig"].get("memoryInGBs", 4.0)
                ),
            }
            container["lifecycleState"] = "CREATING"
            specs.append(container)
        moment = now()
        instance = self.add_instance(
            body.get("displayName") or f"containerinstance{moment:%Y%m%d%H%M%S}",
            specs,
            body["shape"],
            ocpus=float(body["shapeConfig"].get("ocpus", 1.0)),
            memory_in_gbs=float(body["shapeConfig"].get("memoryInGBs", 4.0)),
            lifecycle_state="CREATING",
            compartment_id=body["compartmentId"],
            availability_domain=body["availabilityDomain"],
            fault_domain=body.get("faultDomain") or "FAULT-DOMAIN-1",
            container_restart_policy=body.get("containerRestartPolicy") or "ALWAYS",
            graceful_shutdown_timeout_in_seconds=int(
                body.get("gracefulShutdownTimeoutInSeconds") or 0
            ),
            freeform_tags=body.get("freeformTags"),
            created=moment,
            history=False,
        )
        instance_id = instance["id"]
        for container_id in (ref["containerId"] for ref in instance["containers"]):
            self._behaviour[container_id].failure = None  # "CREATING" is not a failure
        wr = self._new_work_request(instance_id, "CREATE_CONTAINER_INSTANCE", moment)
        wr.previous_state = "FAILED"
        doomed = self._doomed.get(instance_id)
        if doomed:
            wr.fail_message = doomed.pop(0)
        return Reply(
            200,
            copy.deepcopy(self._instances[instance_id]),
            {"etag": self._etags[instance_id], "opc-work-request-id": wr.record["id"]},
        )

    def _list_containers(self, call: _Call) -> Reply:
        query = call.query
        compartment = self._check_compartment(query)
        items = [
            c
            for c in self._containers.values()
            if c["compartmentId"] == compartment
            and query.get("containerInstanceId", c["containerInstanceId"])
            == c["containerInstanceId"]
            and query.get("displayName", c["displayName"]) == c["displayName"]
            and query.get("lifecycleState", c["lifecycleState"]) == c["lifecycleState"]
            and query.get("availabilityDomain", c["availabilityDomain"]) == c["availabilityDomain"]
        ]
        page, extra = self._page(self._sorted(items, query), query)
        summaries = [{k: copy.deepcopy(c.get(k)) for k in CONTAINER_SUMMARY_FIELDS} for c in page]
        return Reply(200, {"items": summaries}, extra)

    def _get_container(self, call: _Call) -> Reply:
        params = call.params
        container = self._container(params["id"])
        return Reply(200, copy.deepcopy(container), {"etag": self._etags[params["id"]]})

    def _retrieve_logs(self, call: _Call) -> Reply:
        params, query = call.params, call.query
        self._container(params["id"])
        behaviour = self._behaviour[params["id"]]
        previous = query.get("isPrevious", "false").lower() == "true"
        return Reply(200, behaviour.previous_log if previous else behaviour.log)

    def _list_work_requests(self, call: _Call) -> Reply:
        query = call.query
        compartment = self._check_compartment(query)
        items = [
            wr.record
            for wr in self._work_requests.values()
            if wr.record["compartmentId"] == compartment
            and query.get("workRequestId", wr.record["id"]) == wr.record["id"]
            and query.get("status", wr.record["status"]) == wr.record["status"]
            and (
                "resourceId" not in query
                or any(r["identifier"] == query["resourceId"] for r in wr.record["resources"])
            )
        ]
        page, extra = self._page(self._sorted(items, query, "timeAccepted"), query)
        summaries = [{k: copy.deepcopy(w.get(k)) for k in WORK_REQUEST_FIELDS} for w in page]
        return Reply(200, {"items": summaries}, extra)

    def _work_request_of(self, work_request_id: str) -> _WorkRequest:
        wr = self._work_requests.get(work_request_id)
        if wr is None:
            raise not_found()
        return wr

    def _get_work_request(self, call: _Call) -> Reply:
        params = call.params
        wr = self._work_request_of(params["id"])
        reply = Reply(200, copy.deepcopy(wr.record))
        if wr.step < 2:
            reply.headers["retry-after"] = "1"
        self._advance(wr)  # the next poll sees the next step
        return reply

    def _work_request_errors(self, call: _Call) -> Reply:
        params, query = call.params, call.query
        wr = self._work_request_of(params["id"])
        page, extra = self._page(copy.deepcopy(wr.errors), query)
        return Reply(200, {"items": page}, extra)

    def _work_request_logs(self, call: _Call) -> Reply:
        params, query = call.params, call.query
        wr = self._work_request_of(params["id"])
        page, extra = self._page(copy.deepcopy(wr.logs), query)
        return Reply(200, {"items": page}, extra)

    # -- logging search ----------------------------------------------------------------------

    def _search_logs(self, call: _Call) -> Reply:
        query, body = call.query, call.body
        if not isinstance(body, dict):
            raise invalid("SearchLogsDetails is required")
        start, end = parse_time(body.get("timeStart")), parse_time(body.get("timeEnd"))
        if start is None or end is None:
            raise invalid("timeStart and timeEnd are required RFC 3339 timestamps")
        if start > end:
            raise invalid("timeStart must be before timeEnd")
        if end - start > MAX_SEARCH_RANGE:
            raise invalid("The time range of a search cannot exceed 14 days")
        search = LogQuery.parse(str(body.get("searchQuery") or ""))
        logs = [log for log in self._logs.values() if search.selects(log)]
        start_ms, end_ms = start.timestamp() * 1000, end.timestamp() * 1000
        rows = [
            copy.deepcopy(entry)
            for log in logs
            for entry in log.entries
            if start_ms <= entry["datetime"] <= end_ms
        ]
        rows.sort(key=lambda r: r["datetime"])
        rows = search.apply(rows)
        page, extra = self._page(rows, query)
        response: Obj = {
            "results": [{"data": row} for row in page],
            "summary": {"resultCount": len(page), "fieldCount": 0},
        }
        if body.get("isReturnFieldInfo"):
            fields = _field_info(page)
            response["fields"] = fields
            response["summary"]["fieldCount"] = len(fields)
        return Reply(200, response, extra)

    # -- monitoring --------------------------------------------------------------------------

    def _summarize_metrics(self, call: _Call) -> Reply:
        query, body = call.query, call.body
        compartment = self._check_compartment(query)
        if not isinstance(body, dict) or not body.get("namespace") or not body.get("query"):
            raise invalid("namespace and query are required")
        mql = MetricQuery.parse(str(body["query"]))
        end = parse_time(body.get("endTime")) or now()
        start = parse_time(body.get("startTime")) or end - timedelta(hours=1)
        if start >= end:
            raise invalid("startTime must be before endTime")
        series = [
            s
            for s in self._series
            if s.namespace == body["namespace"]
            and s.name == mql.name
            and s.compartment_id == compartment
            and (body.get("resourceGroup") in (None, ""))
            and mql.matches(s.dimensions)
        ]
        return Reply(200, mql.summarize(series, start, end))

    def _list_metrics(self, call: _Call) -> Reply:
        query, body = call.query, call.body
        compartment = self._check_compartment(query)
        body = body if isinstance(body, dict) else {}
        filters = body.get("dimensionFilters") or {}
        metrics = [
            {
                "name": s.name,
                "namespace": s.namespace,
                "resourceGroup": None,
                "compartmentId": s.compartment_id,
                "dimensions": dict(s.dimensions),
            }
            for s in self._series
            if s.compartment_id == compartment
            and body.get("name", s.name) in (None, s.name)
            and body.get("namespace", s.namespace) in (None, s.namespace)
            and all(s.dimensions.get(k) == v for k, v in filters.items())
        ]
        metrics.sort(key=lambda m: (m["namespace"], m["name"]))
        page, extra = self._page(metrics, query)
        return Reply(200, page, extra)


def _is_failing(container: Obj) -> bool:
    return container.get("lifecycleState") == "FAILED" or container.get("exitCode") not in (None, 0)


def _operation_words(operation: str) -> str:
    return operation.replace("_", " ").capitalize()


def _done_action(operation: str) -> str:
    return {"CREATE_CONTAINER_INSTANCE": "CREATED", "DELETE_CONTAINER_INSTANCE": "DELETED"}.get(
        operation, "UPDATED"
    )


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _field_info(rows: list[Obj]) -> list[Obj]:
    seen: dict[str, str] = {}
    for row in rows:
        for name, value in _flatten(row).items():
            kind = (
                "NUMBER"
                if isinstance(value, int | float) and not isinstance(value, bool)
                else "STRING"
            )
            seen.setdefault(name, kind)
    return [{"fieldName": name, "fieldType": kind} for name, kind in sorted(seen.items())]


# --- Logging Search query language (the supported subset) -------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<dq>\"(?:[^\"]|\"\")*\")|(?P<sq>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)"
    r"|(?P<op><=|>=|!=|=|<|>|\||,|\(|\)|\.)|(?P<word>[A-Za-z_][A-Za-z0-9_$-]*))"
)


@dataclass
class _Tok:
    kind: str  # dq, sq, num, op, word
    text: str

    @property
    def value(self) -> str:
        if self.kind == "dq":
            return self.text[1:-1].replace('""', '"')
        if self.kind == "sq":
            return self.text[1:-1].replace("''", "'")
        return self.text


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise invalid(f"Query syntax error near {text[position : position + 20]!r}")
        kind = match.lastgroup or ""
        tokens.append(_Tok(kind, match.group(kind)))
        position = match.end()
    return tokens


Condition = Callable[[Obj], bool]


class LogQuery:
    """A parsed Logging Search query: scopes, then where/sort/limit stages."""

    def __init__(self, scopes: list[list[str]], stages: list[Callable[[list[Obj]], list[Obj]]]):
        self.scopes = scopes
        self.stages = stages

    @classmethod
    def parse(cls, text: str) -> LogQuery:
        tokens = _tokenize(text)
        parser = _LogQueryParser(tokens)
        return parser.query()

    def selects(self, log: _Log) -> bool:
        for scope in self.scopes:
            compartment = scope[0]
            group = scope[1] if len(scope) > 1 else None
            name = scope[2] if len(scope) > 2 else None
            if compartment != log.compartment_id:
                continue
            if group is not None and group not in (log.log_group_id, log.log_group_name):
                continue
            if name is not None and name not in (log.id, log.display_name):
                continue
            return True
        return False

    def apply(self, rows: list[Obj]) -> list[Obj]:
        for stage in self.stages:
            rows = stage(rows)
        return rows


def _resolve(row: Obj, path: list[str]) -> Any:
    current: Any = row if path and path[0] in row else row.get("logContent", {})
    for part in path:
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current


def _sort_key(value: Any) -> tuple[int, float, str]:
    """Numbers before strings, nulls last (ascending)."""
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _row_key(path: list[str]) -> Callable[[Obj], tuple[int, float, str]]:
    return lambda row: _sort_key(_resolve(row, path))


def _compare(left: Any, op: str, right: Any) -> bool:
    if op in ("=", "!="):
        if isinstance(right, str) and "*" in right and isinstance(left, str):
            equal = fnmatch.fnmatchcase(left, right)
        elif isinstance(right, int | float) and isinstance(left, int | float):
            equal = float(left) == float(right)
        else:
            equal = left == right
        return equal if op == "=" else not equal
    if left is None:
        return False
    try:
        if op == "<":
            return bool(left < right)
        if op == "<=":
            return bool(left <= right)
        if op == ">":
            return bool(left > right)
        return bool(left >= right)
    except TypeError:
        return False


class _LogQueryParser:
    def __init__(self, tokens: list[_Tok]) -> None:
        self.tokens = tokens
        self.position = 0

    def peek(self, offset: int = 0) -> _Tok | None:
        index = self.position + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def take(self) -> _Tok:
        token = self.peek()
        if token is None:
            raise invalid("Query syntax error: unexpected end of query")
        self.position += 1
        return token

    def word(self, *expected: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.lower() in expected:
            self.position += 1
            return True
        return False

    def op(self, expected: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "op" and token.text == expected:
            self.position += 1
            return True
        return False

    def query(self) -> LogQuery:
        if not self.word("search"):
            raise invalid('Query syntax error: a query starts with search "<scope>"')
        scopes: list[list[str]] = []
        while True:
            token = self.take()
            if token.kind != "dq":
                raise invalid("Query syntax error: search scopes are double-quoted strings")
            scopes.append([part for part in token.value.split("/") if part])
            if not self.op(","):
                break
        stages: list[Callable[[list[Obj]], list[Obj]]] = []
        while self.op("|"):
            stages.append(self.stage())
        leftover = self.peek()
        if leftover is not None:
            raise invalid(f"Query syntax error near {leftover.text!r}")
        return LogQuery(scopes, stages)

    def stage(self) -> Callable[[list[Obj]], list[Obj]]:
        if self.word("where"):
            condition = self.disjunction()
            return lambda rows: [r for r in rows if condition(r)]
        if self.word("sort"):
            if not self.word("by"):
                raise invalid("Query syntax error: expected 'sort by'")
            keys: list[tuple[list[str], bool]] = []
            while True:
                path = self.field()
                descending = self.word("desc")
                if not descending:
                    self.word("asc")
                keys.append((path, descending))
                if not self.op(","):
                    break

            def sort(rows: list[Obj]) -> list[Obj]:
                for path, descending in reversed(keys):  # stable sorts, last key first
                    rows = sorted(rows, key=_row_key(path), reverse=descending)
                return rows

            return sort
        if self.word("limit", "head"):
            token = self.take()
            if token.kind != "num":
                raise invalid("Query syntax error: limit takes a number")
            count = int(float(token.text))
            return lambda rows: rows[:count]
        upcoming = self.peek()
        shown = upcoming.text if upcoming is not None else "end of query"
        raise invalid(
            f"Unsupported query stage {shown!r} (this double supports where, sort by, limit)"
        )

    def field(self) -> list[str]:
        parts: list[str] = []
        while True:
            token = self.take()
            if token.kind not in ("word", "dq"):
                raise invalid(f"Query syntax error: expected a field name, got {token.text!r}")
            parts.append(token.value)
            if not self.op("."):
                return parts

    def disjunction(self) -> Condition:
        terms = [self.conjunction()]
        while self.word("or"):
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else (lambda row: any(t(row) for t in terms))

    def conjunction(self) -> Condition:
        terms = [self.negation()]
        while self.word("and"):
            terms.append(self.negation())
        return terms[0] if len(terms) == 1 else (lambda row: all(t(row) for t in terms))

    def negation(self) -> Condition:
        if self.word("not"):
            inner = self.negation()
            return lambda row: not inner(row)
        if self.op("("):
            inner = self.disjunction()
            if not self.op(")"):
                raise invalid("Query syntax error: missing ')'")
            return inner
        return self.comparison()

    def literal(self) -> Any:
        token = self.take()
        if token.kind == "sq":
            return token.value
        if token.kind == "num":
            return float(token.text) if "." in token.text else int(token.text)
        if token.kind == "word" and token.text.lower() in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[token.text.lower()]
        raise invalid(f"Query syntax error: expected a literal, got {token.text!r}")

    def comparison(self) -> Condition:
        path = self.field()
        negated_in = False
        if self.word("not"):
            negated_in = True
            if not self.word("in"):
                raise invalid("Query syntax error: expected 'not in'")
        if negated_in or self.word("in"):
            if not self.op("("):
                raise invalid("Query syntax error: 'in' takes a parenthesised list")
            values = [self.literal()]
            while self.op(","):
                values.append(self.literal())
            if not self.op(")"):
                raise invalid("Query syntax error: missing ')'")
            return lambda row: (_resolve(row, path) in values) != negated_in
        token = self.take()
        if token.kind != "op" or token.text not in ("=", "!=", "<", "<=", ">", ">="):
            raise invalid(f"Unsupported operator {token.text!r} (supported: = != < <= > >= in)")
        operator = token.text
        value = self.literal()
        return lambda row: _compare(_resolve(row, path), operator, value)


# --- Monitoring Query Language (the supported subset) -----------------------------------------

_MQL = re.compile(
    r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_.]*)\s*\[\s*(?P<interval>\d+)(?P<unit>[mhd])\s*\]\s*"
    r"(?:\{(?P<dims>[^}]*)\})?\s*(?P<chain>(?:\.\s*[A-Za-z]+\s*\([^)]*\)\s*)+)"
    r"(?:(?P<cmp>>=|<=|==|!=|>|<)\s*(?P<threshold>-?\d+(?:\.\d+)?))?\s*$"
)
_MQL_DIM = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=~|!=|=)\s*"([^"]*)"\s*')
STATISTICS = ("mean", "max", "min", "sum", "count", "last", "rate", "increment", "percentile")


@dataclass
class MetricQuery:
    name: str
    window: timedelta
    resolution: str
    filters: list[tuple[str, str, str]]
    statistic: str
    percentile: float
    group_by: list[str] | None  # None: one result per timeseries
    threshold: tuple[str, float] | None

    @classmethod
    def parse(cls, text: str) -> MetricQuery:
        match = _MQL.match(text)
        if match is None:
            raise invalid(f"Invalid query {text!r}: expected Metric[interval]{{dims}}.statistic()")
        unit = match["unit"]
        amount = int(match["interval"])
        seconds = {"m": 60, "h": 3600, "d": 86400}[unit] * amount
        window = timedelta(seconds=seconds)
        if not timedelta(minutes=1) <= window <= timedelta(days=1):
            raise invalid(f"Invalid query {text!r}: the interval must be between 1m and 1d")
        filters: list[tuple[str, str, str]] = []
        dims = (match["dims"] or "").strip()
        if dims:
            for clause in re.split(r",|&&", dims):
                dim = _MQL_DIM.fullmatch(clause)
                if dim is None:
                    raise invalid(f"Invalid dimension filter {clause.strip()!r} in {text!r}")
                filters.append((dim[1], dim[2], dim[3]))
        statistic = ""
        percentile = 0.0
        group_by: list[str] | None = None
        for function, args in re.findall(r"\.\s*([A-Za-z]+)\s*\(([^)]*)\)", match["chain"]):
            if function == "grouping":
                group_by = []
            elif function == "groupBy":
                group_by = [a.strip() for a in args.split(",") if a.strip()]
            elif function in STATISTICS and not statistic:
                statistic = function
                if function == "percentile":
                    try:
                        percentile = float(args)
                    except ValueError:
                        raise invalid(f"Invalid percentile {args!r} in {text!r}") from None
                    if not 0 < percentile < 1:
                        raise invalid(f"percentile() takes a value in (0, 1) in {text!r}")
            else:
                raise invalid(f"Unsupported function {function}() in {text!r}")
        if not statistic:
            raise invalid(f"Invalid query {text!r}: a statistic such as .mean() is required")
        threshold = None
        if match["cmp"]:
            threshold = (match["cmp"], float(match["threshold"]))
        return cls(
            match["name"],
            window,
            f"{amount}{unit}",
            filters,
            statistic,
            percentile,
            group_by,
            threshold,
        )

    def matches(self, dimensions: dict[str, str]) -> bool:
        for name, op, value in self.filters:
            actual = dimensions.get(name)
            if op == "=" and actual != value:
                return False
            if op == "!=" and actual == value:
                return False
            if op == "=~" and (actual is None or not any(
                fnmatch.fnmatchcase(actual, alternative) for alternative in value.split("|")
            )):  # fmt: skip
                return False
        return True

    def summarize(self, series: list[_Series], start: datetime, end: datetime) -> list[Obj]:
        groups: dict[tuple[tuple[str, str], ...], list[_Series]] = {}
        for s in series:
            if self.group_by is None:
                key = tuple(sorted(s.dimensions.items()))
            else:
                key = tuple((d, s.dimensions.get(d, "")) for d in self.group_by)
            groups.setdefault(key, []).append(s)
        window = self.window.total_seconds()
        results: list[Obj] = []
        for key, members in groups.items():
            buckets: dict[float, list[tuple[datetime, float]]] = {}
            for s in members:
                for moment, value in s.points:
                    if start <= moment < end:
                        bucket = math.floor(moment.timestamp() / window) * window
                        buckets.setdefault(bucket, []).append((moment, value))
            datapoints = []
            for bucket in sorted(buckets):
                value = self._statistic(sorted(buckets[bucket]), window)
                if self.threshold is None or _threshold(value, *self.threshold):
                    datapoints.append(
                        {
                            "timestamp": format_time(datetime.fromtimestamp(bucket, UTC)),
                            "value": value,
                        }
                    )
            if not datapoints:
                continue
            first = members[0]
            results.append(
                {
                    "namespace": first.namespace,
                    "resourceGroup": None,
                    "compartmentId": first.compartment_id,
                    "name": first.name,
                    "dimensions": dict(key),
                    "metadata": {"unit": first.unit, "displayName": _display_name(first.name)},
                    "resolution": self.resolution,
                    "aggregatedDatapoints": datapoints,
                }
            )
        return results

    def _statistic(self, points: list[tuple[datetime, float]], window: float) -> float:
        values = [v for _, v in points]
        match self.statistic:
            case "mean":
                return sum(values) / len(values)
            case "max":
                return max(values)
            case "min":
                return min(values)
            case "sum":
                return sum(values)
            case "count":
                return float(len(values))
            case "last":
                return values[-1]
            case "increment":
                return values[-1] - values[0]
            case "rate":
                seconds = (points[-1][0] - points[0][0]).total_seconds() or window
                return (values[-1] - values[0]) / seconds
            case _:  # percentile, nearest rank
                ordered = sorted(values)
                rank = max(1, math.ceil(self.percentile * len(ordered)))
                return ordered[rank - 1]


def _threshold(value: float, op: str, limit: float) -> bool:
    return {
        ">": value > limit,
        ">=": value >= limit,
        "<": value < limit,
        "<=": value <= limit,
        "==": value == limit,
        "!=": value != limit,
    }[op]


def _display_name(metric: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", metric)


# --- HTTP handler -----------------------------------------------------------------------------


def _make_handler(double: OciDouble) -> type[TrackedHandler]:
    class RequestHandler(TrackedHandler):
        def _serve(self) -> None:
            headers, raw = self.read_request()
            reply = double._handle(self.command, self.path, headers, raw)
            payload, content_type = reply.payload()
            sent = {"Content-Type": content_type} if content_type else {}
            sent["Date"] = email.utils.formatdate(usegmt=True)
            self.send_reply(reply.status, payload, {**sent, **reply.headers})

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    return RequestHandler
