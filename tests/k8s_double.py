"""A stateful Kubernetes API double served over real HTTP on 127.0.0.1.

No Kubernetes API server can run where the tests run, so this stands in for one. The official
`kubernetes` Python client and a real `kubectl` talk to it unchanged: it serves legacy discovery,
a minimal OpenAPI v3 (enough for `kubectl apply`), server-side Tables (what `kubectl get` prints),
pod logs as text, the `/scale` and `/status` subresources, watches, and every error as a real
`Status` object. Writes behave like the API server (resourceVersion bumps, optimistic concurrency,
the three patch types) and a synchronous deployment controller keeps ReplicaSets, revisions and
statuses the way Kubernetes does, which is what makes `rollout restart` and `rollout undo`
testable. Every request is recorded so tests can assert on what left the process, and `fail()`
scripts API errors (403, 404, 429 with Retry-After, 500, ...) for error-path tests.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import ipaddress
import json
import math
import re
import secrets
import socket
import ssl
import tempfile
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.loopback_server import LoopbackServer, TrackedHandler

Obj = dict[str, Any]

SERVER_VERSION = {
    "major": "1",
    "minor": "37",
    "emulationMajor": "1",
    "emulationMinor": "37",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "36",
    "gitVersion": "v1.37.1",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-15T00:00:00Z",
    "goVersion": "go1.25.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}
# The identity named in scripted 403 messages, as a service account's would be on a real cluster.
FORBIDDEN_USER = "system:serviceaccount:uici:uici-agent"

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
HASH_LABEL = "pod-template-hash"

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

CONFLICT_TEXT = (
    "the object has been modified; please apply your changes to the latest version and try again"
)
PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)


# --- time ------------------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """metav1.Time: RFC 3339 at second precision, UTC, as the API server writes it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_time_nano(moment: datetime) -> str:
    """RFC3339Nano as Go prints it (trailing zeros of the fraction dropped): kubelet log stamps."""
    fraction = f"{moment.microsecond:06d}000".rstrip("0")
    base = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery duration.HumanDuration: the AGE column's format."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    s = int(seconds)
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{days}d" if hours % 24 == 0 else f"{days}d{hours % 24}h"
    years = days // 365
    if years < 2:
        return f"{days}d"
    if years < 8:
        return f"{years}y" if days % 365 == 0 else f"{years}y{days % 365}d"
    return f"{years}y"


def since(text: str | None) -> str:
    moment = parse_time(text)
    if moment is None:
        return "<unknown>"
    return human_duration((now() - moment).total_seconds())


# --- errors ----------------------------------------------------------------------------------


class ApiError(Exception):
    """An API failure, answered as a `Status` object like the API server's."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: Obj | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details
        self.headers = headers or {}

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(rt: ResourceType, name: str) -> Obj:
    details: Obj = {"name": name}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.plural
    return details


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, f'{rt.qualified} "{name}" not found', details=_details(rt, name))


def conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": {CONFLICT_TEXT}',
        details=_details(rt, name),
    )


def invalid(rt: ResourceType, name: str, field_path: str, value: Any, detail: str) -> ApiError:
    shown = json.dumps(value) if isinstance(value, str) else str(value)
    cause = f"Invalid value: {shown}: {detail}"
    details = _details(rt, name)
    details["kind"] = rt.kind
    details["causes"] = [{"reason": "FieldValueInvalid", "message": cause, "field": field_path}]
    kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    return ApiError(422, f'{kind} "{name}" is invalid: {field_path}: {cause}', details=details)


PAGE_NOT_FOUND = "the server could not find the requested resource"


# --- resource types --------------------------------------------------------------------------

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How the API server names the resource in messages: `deployments.apps`, `pods`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _rt(
    group: str,
    version: str,
    kind: str,
    plural: str,
    *,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    categories: tuple[str, ...] = (),
    subresources: tuple[str, ...] = (),
    verbs: tuple[str, ...] = ALL_VERBS,
) -> ResourceType:
    return ResourceType(
        group,
        version,
        kind,
        plural,
        kind.lower(),
        namespaced,
        short,
        categories,
        subresources,
        verbs,
    )


METRICS_GROUP = "metrics.k8s.io"
RESOURCE_TYPES: tuple[ResourceType, ...] = (
    _rt("", "v1", "Pod", "pods", short=("po",), categories=("all",), subresources=("log", "status")),
    _rt("", "v1", "Event", "events", short=("ev",)),
    _rt("", "v1", "Service", "services", short=("svc",), categories=("all",), subresources=("status",)),
    _rt("", "v1", "Endpoints", "endpoints", short=("ep",)),
    _rt("", "v1", "Namespace", "namespaces", namespaced=False, short=("ns",), subresources=("status",)),
    _rt("", "v1", "ConfigMap", "configmaps", short=("cm",)),
    _rt("", "v1", "Secret", "secrets"),
    _rt("", "v1", "ServiceAccount", "serviceaccounts", short=("sa",)),
    _rt("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", short=("pvc",)),
    _rt("", "v1", "Node", "nodes", namespaced=False, short=("no",), subresources=("status",)),
    _rt("apps", "v1", "Deployment", "deployments", short=("deploy",), categories=("all",), subresources=("scale", "status")),
    _rt("apps", "v1", "ReplicaSet", "replicasets", short=("rs",), categories=("all",), subresources=("scale", "status")),
    _rt("apps", "v1", "StatefulSet", "statefulsets", short=("sts",), categories=("all",), subresources=("scale", "status")),
    _rt("apps", "v1", "DaemonSet", "daemonsets", short=("ds",), categories=("all",), subresources=("status",)),
    _rt("apps", "v1", "ControllerRevision", "controllerrevisions"),
    _rt("batch", "v1", "Job", "jobs", categories=("all",), subresources=("status",)),
    _rt("batch", "v1", "CronJob", "cronjobs", short=("cj",), categories=("all",), subresources=("status",)),
    _rt("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", short=("hpa",), categories=("all",), subresources=("status",)),
    _rt("networking.k8s.io", "v1", "Ingress", "ingresses", short=("ing",), subresources=("status",)),
    _rt("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", short=("pdb",), subresources=("status",)),
    _rt("rbac.authorization.k8s.io", "v1", "Role", "roles"),
    _rt("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings"),
    _rt("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", namespaced=False),
    _rt("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False),
    _rt("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", namespaced=False, verbs=("create",)),
    _rt(METRICS_GROUP, "v1beta1", "PodMetrics", "pods", verbs=("get", "list")),
    _rt(METRICS_GROUP, "v1beta1", "NodeMetrics", "nodes", namespaced=False, verbs=("get", "list")),
)  # fmt: skip
BY_PATH = {(rt.group, rt.version, rt.plural): rt for rt in RESOURCE_TYPES}
BY_KIND = {(rt.api_version, rt.kind): rt for rt in RESOURCE_TYPES}


def resource_type(api_version: str, kind: str) -> ResourceType:
    try:
        return BY_KIND[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the double does not serve {kind} in {api_version}") from None


POD = BY_KIND[("v1", "Pod")]
EVENT = BY_KIND[("v1", "Event")]
NAMESPACE = BY_KIND[("v1", "Namespace")]
DEPLOYMENT = BY_KIND[("apps/v1", "Deployment")]
REPLICASET = BY_KIND[("apps/v1", "ReplicaSet")]
STATEFULSET = BY_KIND[("apps/v1", "StatefulSet")]
DAEMONSET = BY_KIND[("apps/v1", "DaemonSet")]
SERVICE = BY_KIND[("v1", "Service")]
ENDPOINTS = BY_KIND[("v1", "Endpoints")]


# --- label and field selectors ---------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "=":
            return value is not None and value == self.values[0]
        if self.op == "!=":
            return value != self.values[0]
        if self.op == "in":
            return value is not None and value in self.values
        if self.op == "notin":
            return value not in self.values
        if self.op == "exists":
            return value is not None
        return value is None  # "!"


_LABEL_KEY = re.compile(r"^([a-zA-Z0-9.\-]+/)?[a-zA-Z0-9]([a-zA-Z0-9_.\-]*[a-zA-Z0-9])?$")


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def parse_label_selector(text: str) -> list[Requirement]:
    """Equality- and set-based selectors, comma-separated (AND), as the API server parses them."""
    requirements = []
    for part in _split_top_level(text):
        set_based = re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", part)
        if set_based:
            values = tuple(v.strip() for v in set_based.group(3).split(",") if v.strip())
            key, op = set_based.group(1), set_based.group(2)
        elif part.startswith("!"):
            key, op, values = part[1:].strip(), "!", ()
        elif "!=" in part:
            key, value = part.split("!=", 1)
            op, values = "!=", (value.strip(),)
        elif "==" in part:
            key, value = part.split("==", 1)
            op, values = "=", (value.strip(),)
        elif "=" in part:
            key, value = part.split("=", 1)
            op, values = "=", (value.strip(),)
        else:
            key, op, values = part, "exists", ()
        key = key.strip()
        if not _LABEL_KEY.match(key):
            raise ApiError(400, f"unable to parse requirement: invalid label key {key!r}")
        requirements.append(Requirement(key, op, values))
    return requirements


def selector_requirements(selector: Obj | None) -> list[Requirement]:
    """A metav1.LabelSelector as requirements. An empty selector selects everything."""
    selector = selector or {}
    requirements = [
        Requirement(k, "=", (v,)) for k, v in (selector.get("matchLabels") or {}).items()
    ]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expression in selector.get("matchExpressions") or []:
        requirements.append(
            Requirement(
                expression["key"],
                ops[expression["operator"]],
                tuple(expression.get("values") or ()),
            )
        )
    return requirements


def selector_string(selector: Obj | None) -> str:
    """metav1.LabelSelectorAsSelector(...).String(): sorted by key, as kubectl and Scale show it."""
    parts = []
    for req in sorted(selector_requirements(selector), key=lambda r: (r.key, r.op)):
        if req.op == "=":
            parts.append(f"{req.key}={req.values[0]}")
        elif req.op in ("in", "notin"):
            parts.append(f"{req.key} {req.op} ({','.join(sorted(req.values))})")
        elif req.op == "exists":
            parts.append(req.key)
        else:
            parts.append(f"!{req.key}")
    return ",".join(parts)


def labels_of(obj: Obj) -> dict[str, str]:
    labels: dict[str, str] = obj.get("metadata", {}).get("labels") or {}
    return labels


def _dig(obj: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _field(*path: str) -> Callable[[Obj], str]:
    def get(obj: Obj) -> str:
        value = _dig(obj, *path)
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return get


_COMMON_FIELDS = {
    "metadata.name": _field("metadata", "name"),
    "metadata.namespace": _field("metadata", "namespace"),
}
# The field labels each kind supports, as registered by the API server (pkg/registry/*/strategy).
FIELD_LABELS: dict[str, dict[str, Callable[[Obj], str]]] = {
    "Pod": {
        "spec.nodeName": _field("spec", "nodeName"),
        "spec.restartPolicy": _field("spec", "restartPolicy"),
        "spec.schedulerName": _field("spec", "schedulerName"),
        "spec.serviceAccountName": _field("spec", "serviceAccountName"),
        "spec.hostNetwork": lambda pod: "true" if _dig(pod, "spec", "hostNetwork") else "false",
        "status.phase": _field("status", "phase"),
        "status.podIP": _field("status", "podIP"),
        "status.nominatedNodeName": _field("status", "nominatedNodeName"),
    },
    "Event": {
        "involvedObject.kind": _field("involvedObject", "kind"),
        "involvedObject.namespace": _field("involvedObject", "namespace"),
        "involvedObject.name": _field("involvedObject", "name"),
        "involvedObject.uid": _field("involvedObject", "uid"),
        "involvedObject.apiVersion": _field("involvedObject", "apiVersion"),
        "involvedObject.resourceVersion": _field("involvedObject", "resourceVersion"),
        "involvedObject.fieldPath": _field("involvedObject", "fieldPath"),
        "reason": _field("reason"),
        "reportingComponent": _field("reportingComponent"),
        "source": _field("source", "component"),
        "type": _field("type"),
    },
    "Namespace": {"status.phase": _field("status", "phase")},
    "Secret": {"type": _field("type")},
    "Node": {
        "spec.unschedulable": lambda n: "true" if _dig(n, "spec", "unschedulable") else "false"
    },
    "ReplicaSet": {"status.replicas": _field("status", "replicas")},
    "Job": {"status.successful": _field("status", "succeeded")},
}


def parse_field_selector(text: str, kind: str) -> list[tuple[Callable[[Obj], str], bool, str]]:
    """(getter, equal?, value) triples; an unsupported field label is a 400 like the real API."""
    supported = {**_COMMON_FIELDS, **FIELD_LABELS.get(kind, {})}
    terms = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = re.fullmatch(r"([^=!]+)(==|!=|=)(.*)", part)
        if not match:
            raise ApiError(400, f"invalid selector: '{text}'; can't understand '{part}'")
        key, op, value = match.group(1).strip(), match.group(2), match.group(3).strip()
        if key not in supported:
            raise ApiError(400, f"field label not supported: {key}")
        terms.append((supported[key], op != "!=", value))
    return terms


# --- patches ---------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# patchMergeKey of the lists Kubernetes merges by key (k8s.io/api types); other lists replace.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}


def _merge_key(field_name: str, items: list[Any]) -> str | None:
    if field_name == "ports":  # containers' ports merge on containerPort, services' on port
        return "containerPort" if any("containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(field_name)


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_directives(v)
            for k, v in value.items()
            if not k.startswith("$") and v is not None
        }
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _merge_list(current: list[Any], patch: list[Any], key: str) -> list[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [_strip_directives(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    result = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict):
            result.append(copy.deepcopy(item))
            continue
        index = next(
            (
                i
                for i, existing in enumerate(result)
                if isinstance(existing, dict) and existing.get(key) == item.get(key)
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is not None:
            result[index] = strategic_merge_patch(result[index], item)
        else:
            result.append(_strip_directives(item))
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch: a merge patch where keyed lists (containers, env, ports, ...)
    merge by their merge key, with the `$patch`, `$retainKeys`, `$setElementOrder/` and
    `$deleteFromPrimitiveList/` directives kubectl emits."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return _strip_directives(patch)
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [v for v in result.get(name) or [] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        merge_key = _merge_key(key, value) if isinstance(value, list) else None
        if merge_key and all(isinstance(i, dict) for i in value):
            result[key] = _merge_list(result.get(key) or [], value, merge_key)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = _strip_directives(value)
    for name, order in orders.items():
        items = result.get(name)
        merge_key = _merge_key(name, order)
        if not isinstance(items, list) or not merge_key:
            continue
        wanted = [o.get(merge_key) if isinstance(o, dict) else o for o in order]

        def position(item: Any, wanted: list[Any] = wanted, merge_key: str = merge_key) -> int:
            value = item.get(merge_key) if isinstance(item, dict) else item
            return wanted.index(value) if value in wanted else len(wanted)

        result[name] = sorted(items, key=position)
    if "$retainKeys" in patch:
        result = {k: v for k, v in result.items() if k in patch["$retainKeys"]}
    return result


class PatchTestFailed(Exception):
    """A JSON patch could not be applied (failed `test`, missing path): a 422 like the API's."""


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchTestFailed(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        if isinstance(doc, dict) and token in doc:
            doc = doc[token]
        elif isinstance(doc, list) and token.isdigit() and int(token) < len(doc):
            doc = doc[int(token)]
        else:
            raise PatchTestFailed(f"doc is missing path: /{'/'.join(tokens)}: missing value")
    return doc


def _pointer_set(doc: Any, tokens: list[str], value: Any, *, insert: bool) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if not insert and last not in parent:
            raise PatchTestFailed(
                f"replace operation does not apply: doc is missing key: /{'/'.join(tokens)}"
            )
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and insert:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (0 if insert else 1):
            if insert:
                parent.insert(int(last), value)
            else:
                parent[int(last)] = value
        else:
            raise PatchTestFailed(f"array index out of bounds: /{'/'.join(tokens)}")
    else:
        raise PatchTestFailed(f"doc is missing path: /{'/'.join(tokens)}")
    return doc


def _pointer_remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise PatchTestFailed("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise PatchTestFailed(
        f"remove operation does not apply: doc is missing path: /{'/'.join(tokens)}"
    )


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise ApiError(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for operation in operations:
        op, tokens = operation.get("op"), _pointer(operation.get("path", ""))
        if op == "add":
            doc = _pointer_set(doc, tokens, copy.deepcopy(operation.get("value")), insert=True)
        elif op == "replace":
            doc = _pointer_set(doc, tokens, copy.deepcopy(operation.get("value")), insert=False)
        elif op == "remove":
            _pointer_remove(doc, tokens)
        elif op in ("move", "copy"):
            source = _pointer(operation.get("from", ""))
            value = copy.deepcopy(_resolve(doc, source))
            if op == "move":
                _pointer_remove(doc, source)
            doc = _pointer_set(doc, tokens, value, insert=True)
        elif op == "test":
            if _resolve(doc, tokens) != operation.get("value"):
                raise PatchTestFailed(f"testing value {operation.get('path')} failed: test failed")
        else:
            raise ApiError(400, f"Unexpected kind: {op}")
    return doc


def apply_patch(target: Obj, patch: Any, content_type: str) -> Obj:
    """Apply a patch body of one of the three content types the API server takes."""
    target = copy.deepcopy(target)  # the result never shares structure with the stored object
    try:
        if content_type == "application/json-patch+json":
            result = json_patch(target, patch)
        elif not isinstance(patch, dict):
            raise ApiError(
                400, "json: cannot unmarshal array into Go value of type map[string]interface {}"
            )
        elif content_type == "application/merge-patch+json":
            result = merge_patch(target, patch)
        else:
            result = strategic_merge_patch(target, patch)
    except PatchTestFailed as exc:
        raise ApiError(
            422,
            "the server rejected our request due to an error in our request",
            details={"causes": [{"reason": "UnexpectedServerResponse", "message": str(exc)}]},
        ) from None
    if not isinstance(result, dict):
        raise ApiError(400, "the patch did not produce an object")
    return result


# --- tables: what `kubectl get` prints, computed on the server as the API server does ----------


def _col(name: str, type_: str = "string", priority: int = 0, fmt: str = "") -> Obj:
    return {"name": name, "type": type_, "format": fmt, "description": name, "priority": priority}


NAME_COLUMN = _col("Name", fmt="name")
AGE_COLUMN = _col("Age")


def _age(obj: Obj) -> str:
    return since(_dig(obj, "metadata", "creationTimestamp"))


def _containers_images(pod_spec: Obj | None) -> tuple[str, str]:
    containers = (pod_spec or {}).get("containers") or []
    return (
        ",".join(c.get("name", "") for c in containers),
        ",".join(c.get("image", "") for c in containers),
    )


def _pod_ready(pod: Obj) -> bool:
    statuses = _dig(pod, "status", "containerStatuses") or []
    return bool(statuses) and all(s.get("ready") for s in statuses)


def _pod_cells(pod: Obj) -> list[Any]:
    """pkg/printers/internalversion printPod, reduced to what real pods show."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    total, ready, restarts = len(spec.get("containers") or []), 0, 0
    last_restart: datetime | None = None
    reason = status.get("reason") or status.get("phase") or ""

    def note_restart(container_status: Obj) -> None:
        nonlocal last_restart
        finished = parse_time(_dig(container_status, "lastState", "terminated", "finishedAt"))
        if finished and (last_restart is None or finished > last_restart):
            last_restart = finished

    initializing = False
    init_count = len(spec.get("initContainers") or [])
    for index, cs in enumerate(status.get("initContainerStatuses") or []):
        restarts += cs.get("restartCount", 0)
        note_restart(cs)
        state = cs.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated and terminated.get("exitCode") == 0:
            continue
        if terminated:
            reason = "Init:" + (
                terminated.get("reason")
                or (
                    f"Signal:{terminated['signal']}"
                    if terminated.get("signal")
                    else f"ExitCode:{terminated.get('exitCode')}"
                )
            )
        elif waiting and waiting.get("reason") and waiting["reason"] != "PodInitializing":
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{index}/{init_count}"
        initializing = True
        break
    if not initializing:
        restarts, last_restart, has_running = 0, None, False
        for cs in reversed(status.get("containerStatuses") or []):
            restarts += cs.get("restartCount", 0)
            note_restart(cs)
            state = cs.get("state") or {}
            if _dig(state, "waiting", "reason"):
                reason = state["waiting"]["reason"]
            elif _dig(state, "terminated", "reason"):
                reason = state["terminated"]["reason"]
            elif "terminated" in state:
                terminated = state["terminated"] or {}
                reason = (
                    f"Signal:{terminated['signal']}"
                    if terminated.get("signal")
                    else f"ExitCode:{terminated.get('exitCode')}"
                )
            elif cs.get("ready") and "running" in state:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            reason = "Running"
    if _dig(pod, "metadata", "deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    restarts_text = str(restarts)
    if last_restart is not None:
        restarts_text += f" ({human_duration((now() - last_restart).total_seconds())} ago)"
    gates = spec.get("readinessGates") or []
    gates_text = "<none>"
    if gates:
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        true = sum(1 for g in gates if conditions.get(g.get("conditionType")) == "True")
        gates_text = f"{true}/{len(gates)}"
    return [
        pod["metadata"]["name"],
        f"{ready}/{total}",
        reason,
        restarts_text,
        _age(pod),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        gates_text,
    ]


def _workload_cells(obj: Obj, kind: str) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    containers, images = _containers_images(_dig(spec, "template", "spec"))
    name, selector = obj["metadata"]["name"], selector_string(spec.get("selector")) or "<none>"
    replicas = spec.get("replicas", 1)
    if kind == "Deployment":
        return [
            name,
            f"{status.get('readyReplicas', 0)}/{replicas}",
            status.get("updatedReplicas", 0),
            status.get("availableReplicas", 0),
            _age(obj),
            containers,
            images,
            selector,
        ]
    if kind == "ReplicaSet":
        return [
            name,
            replicas,
            status.get("replicas", 0),
            status.get("readyReplicas", 0),
            _age(obj),
            containers,
            images,
            selector,
        ]
    if kind == "StatefulSet":
        ready = f"{status.get('readyReplicas', 0)}/{replicas}"
        return [name, ready, _age(obj), containers, images]
    node_selector = _dig(spec, "template", "spec", "nodeSelector") or {}
    return [
        name,
        status.get("desiredNumberScheduled", 0),
        status.get("currentNumberScheduled", 0),
        status.get("numberReady", 0),
        status.get("updatedNumberScheduled", 0),
        status.get("numberAvailable", 0),
        ",".join(f"{k}={v}" for k, v in sorted(node_selector.items())) or "<none>",
        _age(obj),
        containers,
        images,
        selector,
    ]


def _service_cells(svc: Obj) -> list[Any]:
    spec = svc.get("spec") or {}
    kind = spec.get("type", "ClusterIP")
    external = list(spec.get("externalIPs") or [])
    if kind == "LoadBalancer":
        ingress = _dig(svc, "status", "loadBalancer", "ingress") or []
        external += [i.get("ip") or i.get("hostname") for i in ingress]
        external_text = ",".join(external) or "<pending>"
    elif kind == "ExternalName":
        external_text = spec.get("externalName", "<none>")
    else:
        external_text = ",".join(external) or "<none>"
    ports = []
    for port in spec.get("ports") or []:
        text = str(port.get("port"))
        if port.get("nodePort"):
            text += f":{port['nodePort']}"
        ports.append(f"{text}/{port.get('protocol', 'TCP')}")
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items()))
    return [
        svc["metadata"]["name"],
        kind,
        spec.get("clusterIP") or "<none>",
        external_text,
        ",".join(ports) or "<none>",
        _age(svc),
        selector or "<none>",
    ]


def _endpoints_cells(ep: Obj) -> list[Any]:
    addresses = []
    for subset in ep.get("subsets") or []:
        for address in subset.get("addresses") or []:
            for port in subset.get("ports") or [{}]:
                suffix = f":{port['port']}" if "port" in port else ""
                addresses.append(f"{address.get('ip')}{suffix}")
    text = ",".join(addresses[:3]) or "<none>"
    if len(addresses) > 3:
        text += f" + {len(addresses) - 3} more..."
    return [ep["metadata"]["name"], text, _age(ep)]


def _event_cells(event: Obj) -> list[Any]:
    involved = event.get("involvedObject") or {}
    last = event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
    first = event.get("firstTimestamp") or event.get("eventTime")
    target = involved.get("kind", "").lower()
    if involved.get("name"):
        target += "/" + involved["name"]
    source = event.get("source") or {}
    source_text = source.get("component") or event.get("reportingComponent") or ""
    if source.get("host"):
        source_text += ", " + source["host"]
    return [
        since(last),
        event.get("type", ""),
        event.get("reason", ""),
        target,
        involved.get("fieldPath", ""),
        source_text,
        (event.get("message") or "").strip(),
        since(first),
        event.get("count", 1),
        event["metadata"]["name"],
    ]


TABLES: dict[str, tuple[list[Obj], Callable[[Obj], list[Any]]]] = {
    "Pod": (
        [
            NAME_COLUMN,
            _col("Ready"),
            _col("Status"),
            _col("Restarts"),
            AGE_COLUMN,
            _col("IP", priority=1),
            _col("Node", priority=1),
            _col("Nominated Node", priority=1),
            _col("Readiness Gates", priority=1),
        ],
        _pod_cells,
    ),
    "Deployment": (
        [
            NAME_COLUMN,
            _col("Ready"),
            _col("Up-to-date", "integer"),
            _col("Available", "integer"),
            AGE_COLUMN,
            _col("Containers", priority=1),
            _col("Images", priority=1),
            _col("Selector", priority=1),
        ],
        lambda o: _workload_cells(o, "Deployment"),
    ),
    "ReplicaSet": (
        [
            NAME_COLUMN,
            _col("Desired", "integer"),
            _col("Current", "integer"),
            _col("Ready", "integer"),
            AGE_COLUMN,
            _col("Containers", priority=1),
            _col("Images", priority=1),
            _col("Selector", priority=1),
        ],
        lambda o: _workload_cells(o, "ReplicaSet"),
    ),
    "StatefulSet": (
        [
            NAME_COLUMN,
            _col("Ready"),
            AGE_COLUMN,
            _col("Containers", priority=1),
            _col("Images", priority=1),
        ],
        lambda o: _workload_cells(o, "StatefulSet"),
    ),
    "DaemonSet": (
        [
            NAME_COLUMN,
            _col("Desired", "integer"),
            _col("Current", "integer"),
            _col("Ready", "integer"),
            _col("Up-to-date", "integer"),
            _col("Available", "integer"),
            _col("Node Selector"),
            AGE_COLUMN,
            _col("Containers", priority=1),
            _col("Images", priority=1),
            _col("Selector", priority=1),
        ],
        lambda o: _workload_cells(o, "DaemonSet"),
    ),
    "Service": (
        [
            NAME_COLUMN,
            _col("Type"),
            _col("Cluster-IP"),
            _col("External-IP"),
            _col("Port(s)"),
            AGE_COLUMN,
            _col("Selector", priority=1),
        ],
        _service_cells,
    ),
    "Endpoints": ([NAME_COLUMN, _col("Endpoints"), AGE_COLUMN], _endpoints_cells),
    "Event": (
        [
            _col("Last Seen"),
            _col("Type"),
            _col("Reason"),
            _col("Object"),
            _col("Subobject", priority=1),
            _col("Source", priority=1),
            _col("Message"),
            _col("First Seen", priority=1),
            _col("Count", "integer", priority=1),
            _col("Name", priority=1),
        ],
        _event_cells,
    ),
    "Namespace": (
        [NAME_COLUMN, _col("Status"), AGE_COLUMN],
        lambda o: [o["metadata"]["name"], _dig(o, "status", "phase") or "Active", _age(o)],
    ),
    "ConfigMap": (
        [NAME_COLUMN, _col("Data", "integer"), AGE_COLUMN],
        lambda o: [
            o["metadata"]["name"],
            len(o.get("data") or {}) + len(o.get("binaryData") or {}),
            _age(o),
        ],
    ),
    "Secret": (
        [NAME_COLUMN, _col("Type"), _col("Data", "integer"), AGE_COLUMN],
        lambda o: [
            o["metadata"]["name"],
            o.get("type", "Opaque"),
            len(o.get("data") or {}),
            _age(o),
        ],
    ),
}


def _partial_metadata(obj: Obj) -> Obj:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": copy.deepcopy(obj.get("metadata") or {}),
    }


def to_table(rt: ResourceType, objects: list[Obj], include_object: str, list_meta: Obj) -> Obj:
    """A meta.k8s.io/v1 Table; kinds without a printer get NAME and AGE, as CRDs do."""
    columns, cells = TABLES.get(
        rt.kind, ([NAME_COLUMN, AGE_COLUMN], lambda o: [o["metadata"]["name"], _age(o)])
    )
    rows = []
    for obj in objects:
        row: Obj = {"cells": cells(obj)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = _partial_metadata(obj)
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": rows,
    }


# --- TLS: kubectl (client-go) only sends a bearer token over TLS ------------------------------

_TLS_LOCK = threading.Lock()
_TLS_MATERIAL: tuple[bytes, bytes, bytes] | None = None


def _tls_material() -> tuple[bytes, bytes, bytes]:
    """(CA PEM, server certificate PEM, server key PEM) for 127.0.0.1, made once per process.

    client-go drops the kubeconfig's credentials for an http:// server, so kubectl can only be
    authenticated over TLS; a throwaway CA and a leaf for 127.0.0.1/localhost are enough.
    """
    global _TLS_MATERIAL
    with _TLS_LOCK:
        if _TLS_MATERIAL is not None:
            return _TLS_MATERIAL
        start, end = now() - timedelta(hours=1), now() + timedelta(days=30)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-double-ca")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _TLS_MATERIAL = (
            ca.public_bytes(serialization.Encoding.PEM),
            leaf.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return _TLS_MATERIAL


def _server_tls_context() -> ssl.SSLContext:
    _, cert, key = _tls_material()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_alpn_protocols(["http/1.1"])  # no h2: this server speaks HTTP/1.1
    with tempfile.TemporaryDirectory() as directory:
        cert_file, key_file = Path(directory, "tls.crt"), Path(directory, "tls.key")
        cert_file.write_bytes(cert)
        key_file.write_bytes(key)
        context.load_cert_chain(cert_file, key_file)
    return context


# --- recorded requests, scripted failures, replies -------------------------------------------


@dataclass
class Recorded:
    """One request as the double received it, and the status it answered."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    headers: dict[str, str]
    message: str


@dataclass
class _Reply:
    status: int
    body: Any = None  # dict → JSON; str/bytes → text
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterator[bytes] | None = None

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass
class _Target:
    """A parsed resource path: /api/v1/namespaces/{ns}/{plural}/{name}/{sub}."""

    rt: ResourceType
    namespace: str | None
    name: str | None
    sub: str | None


_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class KubeDouble(LoopbackServer):
    """A Kubernetes API server double: stateful, over real HTTP, for the official client and kubectl.

    Objects live in memory keyed by (group, resource, namespace, name). `add()` and HTTP writes
    go through the same write path, so controller behaviour (ReplicaSets, revisions, statuses
    derived from pods) is identical however an object arrives.
    """

    def __init__(self, metrics: bool = True) -> None:
        super().__init__()
        self.metrics = metrics
        self.token = "kube-double-" + secrets.token_hex(16)
        # self.url: plain HTTP, fine for the Python client
        self.https_url = ""  # the same port over TLS: what kubeconfig() writes, for kubectl
        self.ca_pem = _tls_material()[0]
        self.requests: list[Recorded] = []
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._objects: dict[tuple[str, str, str, str], Obj] = {}
        self._rv = 0
        self._event_log: list[tuple[int, str, ResourceType, Obj]] = []
        self._logs: dict[tuple[str, str, str, bool], list[tuple[datetime, str]]] = {}
        self._failures: list[_Failure] = []
        self._progress_since: dict[str, datetime] = {}
        self._next_ip = 100
        self._tls: ssl.SSLContext | None = None
        self._stopping = threading.Event()
        cluster_birth = format_time(now() - timedelta(days=41))
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self._ensure_namespace(name, cluster_birth)

    # -- lifecycle ------------------------------------------------------------------------------

    def handler_class(self) -> type[TrackedHandler]:
        return _make_handler(self)

    def start(self) -> Self:
        self._stopping.clear()
        self._tls = _server_tls_context()
        super().start()
        self.https_url = self.url.replace("http://", "https://")
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        super().stop()

    def kubeconfig(
        self, path: Path, context: str = "double", namespace: str = "default", *, tls: bool = True
    ) -> Path:
        """Write a kubeconfig pointing at this double (bearer token, context with namespace).

        The server is the TLS address with the double's CA: client-go (kubectl) silently drops
        credentials for http:// servers, so a plain-HTTP kubeconfig only suits the Python client.
        """
        cluster: Obj = {"server": self.url}
        if tls:
            cluster = {
                "server": self.https_url,
                "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
            }
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": context, "user": context, "namespace": namespace},
                }
            ],
            "current-context": context,
            "preferences": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    # -- public store API ------------------------------------------------------------------------

    def add(self, obj: Obj) -> Obj:
        """Store an object (or update it if it exists) through the same write path as the API.

        Fills uid, resourceVersion, creationTimestamp (unless given) and generation; a
        namespace that does not exist yet is created, as a test setup would have done.
        """
        rt = resource_type(obj["apiVersion"], obj["kind"])
        namespace = obj.get("metadata", {}).get("namespace") or "default"
        with self._lock:
            if rt.namespaced:
                self._ensure_namespace(namespace)
            name = obj["metadata"]["name"]
            old = self._objects.get(self._key(rt, namespace, name))
            if old is None:
                return self._create(rt, namespace, copy.deepcopy(obj))
            return self._update(
                rt, namespace, name, copy.deepcopy(obj), keep_status=False, check_version=False
            )

    def get(self, api_version: str, kind: str, name: str, namespace: str = "default") -> Obj | None:
        rt = resource_type(api_version, kind)
        with self._lock:
            obj = self._objects.get(self._key(rt, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list_objects(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = "default",
        label_selector: str = "",
    ) -> list[Obj]:
        """Stored objects of a kind (namespace None: all namespaces), sorted by namespace/name."""
        rt = resource_type(api_version, kind)
        requirements = parse_label_selector(label_selector)
        with self._lock:
            return [
                copy.deepcopy(o)
                for o in self._list(rt, namespace)
                if all(r.matches(labels_of(o)) for r in requirements)
            ]

    def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        patch: Any,
        namespace: str = "default",
        content_type: str = "application/strategic-merge-patch+json",
    ) -> Obj:
        """Patch an object exactly as a PATCH request would (same checks, same controller)."""
        rt = resource_type(api_version, kind)
        with self._lock:
            return self._patch(rt, namespace, name, patch, content_type, dry_run=False)

    def delete(self, api_version: str, kind: str, name: str, namespace: str = "default") -> None:
        """Delete an object and, as the garbage collector would, everything it owns."""
        rt = resource_type(api_version, kind)
        with self._lock:
            self._delete(rt, namespace, name, propagate=True)

    def set_log(
        self, namespace: str, pod: str, container: str, text: str, previous: bool = False
    ) -> None:
        """The log the kubelet would return for a container (or its previous instance).

        Lines are stamped one second apart, the last one now (previous: a minute earlier), so
        `sinceSeconds` and `timestamps` behave like they do on a node.
        """
        lines = text.splitlines(keepends=True)
        end = now() - (timedelta(minutes=1) if previous else timedelta())
        stamped = [
            (end - timedelta(seconds=len(lines) - 1 - i), line) for i, line in enumerate(lines)
        ]
        with self._lock:
            self._logs[(namespace, pod, container, previous)] = stamped

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        times: int = 1,
        headers: dict[str, str] | None = None,
        message: str = "",
    ) -> None:
        """Answer the next `times` matching requests with `status` and a proper Status body.

        `method` is an HTTP method (case-insensitive) or "*"; `path_regex` is re.search-ed
        against the path without its query. Authentication is checked first: an unauthenticated
        request does not use up a scripted failure.
        """
        with self._lock:
            self._failures.append(
                _Failure(
                    method.upper(),
                    re.compile(path_regex),
                    status,
                    times,
                    dict(headers or {}),
                    message,
                )
            )

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def clear_failures(self) -> None:
        """Forget the scripted failures not used up yet."""
        with self._lock:
            self._failures.clear()

    # -- store internals -------------------------------------------------------------------------

    @staticmethod
    def _key(rt: ResourceType, namespace: str | None, name: str) -> tuple[str, str, str, str]:
        return (rt.group, rt.plural, (namespace or "") if rt.namespaced else "", name)

    def _list(self, rt: ResourceType, namespace: str | None) -> list[Obj]:
        found = [
            obj
            for (group, plural, ns, _), obj in self._objects.items()
            if group == rt.group
            and plural == rt.plural
            and (namespace is None or not rt.namespaced or ns == namespace)
        ]
        return sorted(
            found,
            key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]),
        )

    def _ensure_namespace(self, name: str, created: str | None = None) -> None:
        if self._key(NAMESPACE, None, name) in self._objects:
            return
        namespace: Obj = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/metadata.name": name},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        if created:
            namespace["metadata"]["creationTimestamp"] = created
        self._create(NAMESPACE, None, namespace)

    def _put(self, rt: ResourceType, obj: Obj, event: str) -> Obj:
        """The one place an object is stored: bumps the global resourceVersion, tells watchers."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        meta = obj["metadata"]
        key = self._key(rt, meta.get("namespace"), meta["name"])
        if event == "DELETED":
            self._objects.pop(key, None)
        else:
            self._objects[key] = obj
        self._event_log.append((self._rv, event, rt, copy.deepcopy(obj)))
        del self._event_log[:-5000]
        with self._changed:  # the lock is reentrant: callers already hold it
            self._changed.notify_all()
        return obj

    def _create(self, rt: ResourceType, namespace: str | None, obj: Obj) -> Obj:
        meta = obj.setdefault("metadata", {})
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        name = meta.get("name") or ""
        if not _NAME.match(name) or len(name) > 253:
            raise invalid(
                rt,
                name,
                "metadata.name",
                name,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        if rt.namespaced:
            meta["namespace"] = namespace or "default"
        else:
            meta.pop("namespace", None)
        if self._key(rt, namespace, name) in self._objects:
            raise ApiError(
                409, f'{rt.qualified} "{name}" already exists', details=_details(rt, name)
            )
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", format_time(now()))
        meta.pop("resourceVersion", None)
        if rt.group != METRICS_GROUP and rt.kind not in ("Event", "Namespace"):
            meta["generation"] = 1
        self._admit(rt, obj)
        if rt is DEPLOYMENT:
            created = parse_time(meta["creationTimestamp"]) or now()
            self._progress_since[meta["uid"]] = created
        self._put(rt, obj, "ADDED")
        self._after_write(rt, obj, None)
        return copy.deepcopy(self._objects[self._key(rt, namespace, name)])

    def _update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        obj: Obj,
        *,
        keep_status: bool,
        check_version: bool = True,
        dry_run: bool = False,
    ) -> Obj:
        old = self._objects.get(self._key(rt, namespace, name))
        if old is None:
            raise not_found(rt, name)
        meta = obj.setdefault("metadata", {})
        if check_version and meta.get("resourceVersion") not in (
            None,
            "",
            old["metadata"]["resourceVersion"],
        ):
            raise conflict(rt, name)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        for immutable in ("name", "namespace", "uid", "creationTimestamp"):
            if immutable in old["metadata"]:
                meta[immutable] = old["metadata"][immutable]
        if keep_status:
            if "status" in old:
                obj["status"] = copy.deepcopy(old["status"])
            else:
                obj.pop("status", None)
        self._admit(rt, obj)
        if "generation" in old["metadata"]:
            changed = obj.get("spec") != old.get("spec")
            meta["generation"] = old["metadata"]["generation"] + (1 if changed else 0)
        if dry_run:
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            return obj
        if rt is DEPLOYMENT and _template(obj) != _template(old):
            self._progress_since[meta["uid"]] = now()
        self._put(rt, obj, "MODIFIED")
        self._after_write(rt, obj, old)
        return copy.deepcopy(self._objects[self._key(rt, namespace, name)])

    def _patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        content_type: str,
        *,
        dry_run: bool,
        subresource: str | None = None,
    ) -> Obj:
        if content_type not in PATCH_TYPES:
            raise ApiError(
                415,
                "the body of the request was in an unknown format - accepted media types "
                "include: " + ", ".join(PATCH_TYPES),
            )
        old = self._objects.get(self._key(rt, namespace, name))
        if old is None:
            raise not_found(rt, name)
        current = old["metadata"]["resourceVersion"]
        if subresource == "scale":
            scale = apply_patch(self._scale(old), body, content_type)
            if _dig(scale, "metadata", "resourceVersion") not in (None, "", current):
                raise conflict(rt, name)
            return self._set_scale(rt, old, scale, dry_run=dry_run)
        # A patch that carries metadata.resourceVersion is a precondition, as on the API server.
        patched = apply_patch(old, body, content_type)
        if _dig(patched, "metadata", "resourceVersion") not in (None, "", current):
            raise conflict(rt, name)
        patched.setdefault("metadata", {})["resourceVersion"] = current
        if subresource == "status":
            patched = {**copy.deepcopy(old), "status": patched.get("status")}
        keep_status = subresource is None and "status" in rt.subresources
        return self._update(rt, namespace, name, patched, keep_status=keep_status, dry_run=dry_run)

    def _set_scale(self, rt: ResourceType, old: Obj, scale: Obj, *, dry_run: bool) -> Obj:
        replicas = _dig(scale, "spec", "replicas")
        name = old["metadata"]["name"]
        if not isinstance(replicas, int) or replicas < 0:
            raise invalid(rt, name, "spec.replicas", replicas, "must be greater than or equal to 0")
        updated = copy.deepcopy(old)
        updated.setdefault("spec", {})["replicas"] = replicas
        stored = self._update(
            rt,
            old["metadata"].get("namespace"),
            name,
            updated,
            keep_status=True,
            check_version=False,
            dry_run=dry_run,
        )
        return self._scale(stored)

    def _delete(
        self, rt: ResourceType, namespace: str | None, name: str, *, propagate: bool
    ) -> Obj:
        obj = self._objects.get(self._key(rt, namespace, name))
        if obj is None:
            raise not_found(rt, name)
        uid = obj["metadata"].get("uid")
        self._put(rt, copy.deepcopy(obj), "DELETED")
        if propagate and uid:
            for (_, _, ns, dependent_name), dependent in list(self._objects.items()):
                owners = dependent["metadata"].get("ownerReferences") or []
                if any(o.get("uid") == uid for o in owners):
                    dependent_rt = BY_KIND[(dependent["apiVersion"], dependent["kind"])]
                    self._delete(dependent_rt, ns or None, dependent_name, propagate=True)
        if rt is SERVICE and self._key(ENDPOINTS, namespace, name) in self._objects:
            self._delete(ENDPOINTS, namespace, name, propagate=False)
        self._sync_statuses(namespace)
        return obj

    def _admit(self, rt: ResourceType, obj: Obj) -> None:
        """What the API server does between decoding and storing: nulls vanish (Go's typed
        decoding), defaults are filled in, and the few validations tests care about run."""
        for key in [k for k, v in obj.items() if v is None and k != "eventTime"]:
            del obj[key]
        for value in obj.values():
            _drop_nulls_in_place(value)
        _apply_defaults(rt, obj, self._allocate_cluster_ip)
        name = obj["metadata"].get("name", "")
        if rt in (DEPLOYMENT, REPLICASET, STATEFULSET, DAEMONSET):
            spec = obj.get("spec") or {}
            if "selector" not in spec:
                raise invalid(rt, name, "spec.selector", None, "field is required")
            replicas = spec.get("replicas", 1)
            if not isinstance(replicas, int) or replicas < 0:
                raise invalid(
                    rt, name, "spec.replicas", replicas, "must be greater than or equal to 0"
                )
            template_labels = _dig(spec, "template", "metadata", "labels") or {}
            if not all(r.matches(template_labels) for r in selector_requirements(spec["selector"])):
                raise invalid(
                    rt,
                    name,
                    "spec.template.metadata.labels",
                    template_labels,
                    "`selector` does not match template `labels`",
                )

    # -- controllers -----------------------------------------------------------------------------

    def _after_write(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        namespace = obj["metadata"].get("namespace")
        if rt.namespaced and namespace:
            self._ensure_namespace(namespace)
        if rt is DEPLOYMENT:
            self._reconcile_deployment(obj["metadata"]["namespace"], obj["metadata"]["name"])
        if rt.namespaced:
            self._sync_statuses(namespace)

    def _owned(self, owner: Obj, rt: ResourceType) -> list[Obj]:
        uid = owner["metadata"]["uid"]
        return [
            obj
            for obj in self._list(rt, owner["metadata"]["namespace"])
            if any(
                ref.get("uid") == uid and ref.get("controller")
                for ref in obj["metadata"].get("ownerReferences") or []
            )
        ]

    def _reconcile_deployment(self, namespace: str, name: str) -> None:
        """The deployment controller, synchronously: find or create the ReplicaSet for the
        current template, number revisions like Kubernetes (a template that returns reuses its
        ReplicaSet and gets revision max+1), scale the old ReplicaSets to zero."""
        deployment = self._objects[self._key(DEPLOYMENT, namespace, name)]
        template = _template(deployment)
        owned = self._owned(deployment, REPLICASET)
        max_revision = max((_revision(rs) for rs in owned), default=0)
        current = next((rs for rs in owned if _template(rs) == template), None)
        replicas = deployment["spec"].get("replicas", 1)
        surge = _int_or_percent(
            _dig(deployment, "spec", "strategy", "rollingUpdate", "maxSurge"), replicas, up=True
        )
        if current is None:
            # The first ReplicaSet is as old as its Deployment (which add() may have backdated).
            created = None if owned else deployment["metadata"]["creationTimestamp"]
            current = self._new_replicaset(deployment, max_revision + 1, replicas, surge, created)
            if replicas:
                self._scaling_event(deployment, current["metadata"]["name"], 0, replicas, created)
        elif _revision(current) < max_revision:
            previous_revision = str(_revision(current))
            updated = copy.deepcopy(current)
            annotations = updated["metadata"].setdefault("annotations", {})
            history = [h for h in annotations.get(REVISION_HISTORY, "").split(",") if h]
            annotations[REVISION_HISTORY] = ",".join([*history, previous_revision])
            annotations[REVISION] = str(max_revision + 1)
            current = self._put(REPLICASET, updated, "MODIFIED")
        for rs in owned:
            if rs["metadata"]["uid"] == current["metadata"]["uid"]:
                continue
            if rs["spec"].get("replicas", 1) != 0:
                self._scaling_event(deployment, rs["metadata"]["name"], rs["spec"]["replicas"], 0)
                scaled_down = copy.deepcopy(rs)
                scaled_down["spec"]["replicas"] = 0
                self._put(REPLICASET, scaled_down, "MODIFIED")
        annotations = current["metadata"].get("annotations") or {}
        wanted = {DESIRED_REPLICAS: str(replicas), MAX_REPLICAS: str(replicas + surge)}
        if current["spec"].get("replicas") != replicas or any(
            annotations.get(k) != v for k, v in wanted.items()
        ):
            if current["spec"].get("replicas") != replicas:
                old_count = current["spec"].get("replicas", 0)
                self._scaling_event(deployment, current["metadata"]["name"], old_count, replicas)
            updated = copy.deepcopy(current)
            updated["spec"]["replicas"] = replicas
            updated["metadata"].setdefault("annotations", {}).update(wanted)
            current = self._put(REPLICASET, updated, "MODIFIED")
        revision = current["metadata"]["annotations"][REVISION]
        if (deployment["metadata"].get("annotations") or {}).get(REVISION) != revision:
            updated = copy.deepcopy(deployment)
            updated["metadata"].setdefault("annotations", {})[REVISION] = revision
            self._put(DEPLOYMENT, updated, "MODIFIED")

    def _new_replicaset(
        self, deployment: Obj, revision: int, replicas: int, surge: int, created: str | None
    ) -> Obj:
        meta, spec = deployment["metadata"], deployment["spec"]
        template = copy.deepcopy(spec["template"])
        pod_hash = hashlib.sha256(
            json.dumps(_template(deployment), sort_keys=True).encode()
        ).hexdigest()[:10]
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = pod_hash
        selector = copy.deepcopy(spec["selector"])
        selector.setdefault("matchLabels", {})[HASH_LABEL] = pod_hash
        replicaset: Obj = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{meta['name']}-{pod_hash}",
                "namespace": meta["namespace"],
                "uid": str(uuid.uuid4()),
                "generation": 1,
                "creationTimestamp": created or format_time(now()),
                "labels": dict(template["metadata"]["labels"]),
                "annotations": {
                    DESIRED_REPLICAS: str(replicas),
                    MAX_REPLICAS: str(replicas + surge),
                    REVISION: str(revision),
                },
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {"replicas": replicas, "selector": selector, "template": template},
            "status": {"replicas": 0, "observedGeneration": 1},
        }
        return self._put(REPLICASET, replicaset, "ADDED")

    def _allocate_cluster_ip(self) -> str:
        self._next_ip += 1
        return f"10.96.{self._next_ip // 250}.{self._next_ip % 250 + 2}"

    def _scaling_event(
        self, deployment: Obj, replicaset: str, old: int, new: int, stamp: str | None = None
    ) -> None:
        meta = deployment["metadata"]
        stamp = stamp or format_time(now())
        direction = "up" if new > old else "down"
        self._put(
            EVENT,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": f"{meta['name']}.{secrets.token_hex(8)}",
                    "namespace": meta["namespace"],
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": stamp,
                },
                "involvedObject": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta["uid"],
                    "resourceVersion": meta.get("resourceVersion", ""),
                },
                "reason": "ScalingReplicaSet",
                "message": f"Scaled {direction} replica set {replicaset} from {old} to {new}",
                "source": {"component": "deployment-controller"},
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
                "type": "Normal",
                "eventTime": None,
                "reportingComponent": "deployment-controller",
                "reportingInstance": "",
            },
            "ADDED",
        )

    def _sync_statuses(self, namespace: str | None) -> None:
        """Workload statuses follow the pods, as their controllers would make them."""
        if namespace is None:
            return
        pods = [p for p in self._list(POD, namespace) if not p["metadata"].get("deletionTimestamp")]
        for rt, compute in (
            (REPLICASET, self._replicaset_status),
            (DEPLOYMENT, self._deployment_status),
            (STATEFULSET, self._statefulset_status),
            (DAEMONSET, self._daemonset_status),
        ):
            for obj in self._list(rt, namespace):
                status = compute(obj, pods)
                if status != obj.get("status"):
                    self._put(rt, {**copy.deepcopy(obj), "status": status}, "MODIFIED")
        for service in self._list(SERVICE, namespace):
            if _dig(service, "spec", "selector"):
                self._sync_endpoints(service, pods)

    def _sync_endpoints(self, service: Obj, pods: list[Obj]) -> None:
        """The endpoints controller: a Service's Endpoints list its selected pods' IPs, the
        unready ones under notReadyAddresses (why a Service with crash-looping pods is dead)."""
        meta, spec = service["metadata"], service["spec"]
        selector = spec["selector"]
        mine = [
            p
            for p in pods
            if _dig(p, "status", "podIP")
            and all(labels_of(p).get(k) == v for k, v in selector.items())
        ]
        ready: list[Obj] = []
        not_ready: list[Obj] = []
        for pod in mine:
            address = {
                "ip": pod["status"]["podIP"],
                "nodeName": _dig(pod, "spec", "nodeName"),
                "targetRef": {
                    "kind": "Pod",
                    "namespace": pod["metadata"]["namespace"],
                    "name": pod["metadata"]["name"],
                    "uid": pod["metadata"].get("uid"),
                },
            }
            (ready if _pod_ready(pod) else not_ready).append(_drop_nulls(address))
        ports = []
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if isinstance(target, str):  # a named port: look it up in the pods' containers
                target = next(
                    (
                        cp.get("containerPort")
                        for pod in mine
                        for c in _dig(pod, "spec", "containers") or []
                        for cp in c.get("ports") or []
                        if cp.get("name") == target
                    ),
                    None,
                )
            if target is not None:
                entry = {"port": target, "protocol": port.get("protocol", "TCP")}
                if port.get("name"):
                    entry["name"] = port["name"]
                ports.append(entry)
        subset: Obj = {}
        if ready:
            subset["addresses"] = ready
        if not_ready:
            subset["notReadyAddresses"] = not_ready
        endpoints: Obj = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "labels": dict(meta.get("labels") or {}),
            },
        }
        if subset and ports:
            endpoints["subsets"] = [{**subset, "ports": ports}]
        old = self._objects.get(self._key(ENDPOINTS, meta["namespace"], meta["name"]))
        if old is not None:
            if old.get("subsets") == endpoints.get("subsets") and labels_of(old) == labels_of(
                endpoints
            ):
                return
            endpoints["metadata"] = {**old["metadata"], "labels": endpoints["metadata"]["labels"]}
            self._put(ENDPOINTS, endpoints, "MODIFIED")
            return
        endpoints["metadata"]["uid"] = str(uuid.uuid4())
        endpoints["metadata"]["creationTimestamp"] = meta.get("creationTimestamp") or format_time(
            now()
        )
        self._put(ENDPOINTS, endpoints, "ADDED")

    def _replicaset_status(self, rs: Obj, pods: list[Obj]) -> Obj:
        requirements = selector_requirements(_dig(rs, "spec", "selector"))
        mine = [p for p in pods if all(r.matches(labels_of(p)) for r in requirements)]
        ready = sum(1 for p in mine if _pod_ready(p))
        status: Obj = {"replicas": len(mine)}
        if mine:
            status["fullyLabeledReplicas"] = len(mine)
        if ready:
            status["readyReplicas"] = ready
            status["availableReplicas"] = ready
        status["observedGeneration"] = rs["metadata"].get("generation", 1)
        return status

    def _deployment_status(self, deployment: Obj, pods: list[Obj]) -> Obj:
        spec, meta = deployment["spec"], deployment["metadata"]
        requirements = selector_requirements(spec.get("selector"))
        mine = [p for p in pods if all(r.matches(labels_of(p)) for r in requirements)]
        revision = (meta.get("annotations") or {}).get(REVISION)
        current = next(
            (
                rs
                for rs in self._owned(deployment, REPLICASET)
                if (rs["metadata"].get("annotations") or {}).get(REVISION) == revision
            ),
            None,
        )
        current_hash = labels_of(current).get(HASH_LABEL) if current else None
        desired = spec.get("replicas", 1)
        updated = sum(1 for p in mine if labels_of(p).get(HASH_LABEL) in (None, current_hash))
        ready = sum(1 for p in mine if _pod_ready(p))
        counts = {
            "replicas": len(mine),
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(max(desired, len(mine)) - ready, 0),
        }
        status: Obj = {"observedGeneration": meta.get("generation", 1)}
        status.update({k: v for k, v in counts.items() if v})  # omitempty, as Go serialises it
        max_unavailable = _int_or_percent(
            _dig(spec, "strategy", "rollingUpdate", "maxUnavailable"), desired, up=False
        )
        rs_name = current["metadata"]["name"] if current else meta["name"]
        if ready >= desired - max_unavailable:
            available = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        else:
            available = (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        if updated == desired == len(mine) and ready >= desired:
            progressing = (
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "{rs_name}" has successfully progressed.',
            )
        else:
            started = self._progress_since.get(meta["uid"], now())
            deadline = spec.get("progressDeadlineSeconds", 600)
            if (now() - started).total_seconds() > deadline:
                progressing = (
                    "False",
                    "ProgressDeadlineExceeded",
                    f'ReplicaSet "{rs_name}" has timed out progressing.',
                )
            else:
                progressing = (
                    "True",
                    "ReplicaSetUpdated",
                    f'ReplicaSet "{rs_name}" is progressing.',
                )
        previous = {c.get("type"): c for c in _dig(deployment, "status", "conditions") or []}
        conditions = []
        for kind, (state, reason, message) in (
            ("Available", available),
            ("Progressing", progressing),
        ):
            before = previous.get(kind, {})
            stamp = format_time(now())
            same_state = before.get("status") == state
            unchanged = (
                same_state and before.get("reason") == reason and before.get("message") == message
            )
            conditions.append(
                {
                    "type": kind,
                    "status": state,
                    "lastUpdateTime": before["lastUpdateTime"] if unchanged else stamp,
                    "lastTransitionTime": before["lastTransitionTime"] if same_state else stamp,
                    "reason": reason,
                    "message": message,
                }
            )
        status["conditions"] = conditions
        return status

    def _owned_pods(self, owner: Obj, pods: list[Obj]) -> list[Obj]:
        uid = owner["metadata"]["uid"]
        return [
            p
            for p in pods
            if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])
        ]

    def _statefulset_status(self, sts: Obj, pods: list[Obj]) -> Obj:
        mine = self._owned_pods(sts, pods)
        ready = sum(1 for p in mine if _pod_ready(p))
        previous = sts.get("status") or {}
        status: Obj = {
            "observedGeneration": sts["metadata"].get("generation", 1),
            "replicas": len(mine),
        }
        if ready:
            status["readyReplicas"] = ready
        if mine:
            status["currentReplicas"] = len(mine)
            status["updatedReplicas"] = len(mine)
        for key in ("currentRevision", "updateRevision"):
            if key in previous:
                status[key] = previous[key]
        status["collisionCount"] = previous.get("collisionCount", 0)
        status["availableReplicas"] = ready
        return status

    def _daemonset_status(self, ds: Obj, pods: list[Obj]) -> Obj:
        mine = self._owned_pods(ds, pods)
        ready = sum(1 for p in mine if _pod_ready(p))
        status: Obj = {
            "currentNumberScheduled": len(mine),
            "numberMisscheduled": 0,
            "desiredNumberScheduled": len(mine),
            "numberReady": ready,
            "observedGeneration": ds["metadata"].get("generation", 1),
        }
        if mine:
            status["updatedNumberScheduled"] = len(mine)
        if ready:
            status["numberAvailable"] = ready
        if len(mine) - ready:
            status["numberUnavailable"] = len(mine) - ready
        return status

    def _scale(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta
            },
            "spec": {"replicas": _dig(obj, "spec", "replicas") or 0},
            "status": {
                "replicas": _dig(obj, "status", "replicas") or 0,
                "selector": selector_string(_dig(obj, "spec", "selector")),
            },
        }

    # -- HTTP -----------------------------------------------------------------------------------

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], raw: bytes) -> _Reply:
        parts = urlsplit(raw_path)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        body: Any = None
        body_error = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body_error = True
        record = Recorded(method, path, query, body, content_type, headers)
        with self._lock:
            self.requests.append(record)
        try:
            if headers.get("authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized")
            self._scripted_failure(method, path)
            if raw and method in ("POST", "PUT") and content_type not in ("application/json", ""):
                raise ApiError(  # protobuf or CBOR: this double only decodes JSON
                    415,
                    "the body of the request was in an unknown format - accepted media types "
                    "include: application/json, application/yaml",
                )
            if body_error and content_type in (*PATCH_TYPES, "application/json"):
                raise ApiError(400, "the request body is not valid JSON")
            reply = self._route(method, path, query, headers, body, content_type)
        except ApiError as exc:
            reply = _Reply(exc.code, exc.status(), headers=exc.headers)
        except Exception as exc:
            traceback.print_exc()
            reply = _Reply(500, ApiError(500, f"Internal error occurred: {exc}").status())
        record.status = reply.status
        return reply

    def _scripted_failure(self, method: str, path: str) -> None:
        with self._lock:
            for failure in self._failures:
                if failure.remaining <= 0 or failure.method not in ("*", method):
                    continue
                if not failure.pattern.search(path):
                    continue
                failure.remaining -= 1
                raise self._failure_error(failure, method, path)
            self._failures = [f for f in self._failures if f.remaining > 0]

    def _failure_error(self, failure: _Failure, method: str, path: str) -> ApiError:
        """The Status the API server would send for this failure on this path."""
        target: _Target | None
        try:
            target = self._parse_target(path)
        except ApiError:
            target = None
        code = failure.status
        details: Obj | None = None
        headers = dict(failure.headers)
        message = failure.message
        if target is not None:
            name = target.name or ""
            details = (
                _details(target.rt, name)
                if name
                else {"group": target.rt.group, "kind": target.rt.plural}
            )
            verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(
                method, "get" if target.name else "list"
            )
            resource = target.rt.plural + (f"/{target.sub}" if target.sub else "")
            where = f' in the namespace "{target.namespace}"' if target.namespace else ""
            subject = f'{target.rt.qualified} "{name}"' if name else target.rt.qualified
            defaults = {
                403: f'{subject} is forbidden: User "{FORBIDDEN_USER}" cannot {verb} resource '
                f'"{resource}" in API group "{target.rt.group}"{where}',
                404: f"{subject} not found" if name else PAGE_NOT_FOUND,
                409: f"Operation cannot be fulfilled on {subject}: {CONFLICT_TEXT}",
            }
            message = message or defaults.get(code, "")
        if code == 429:
            retry = headers.get("Retry-After")
            details = dict(details or {})
            if retry and retry.isdigit():
                details["retryAfterSeconds"] = int(retry)
        generic = {
            401: "Unauthorized",
            403: "forbidden",
            404: PAGE_NOT_FOUND,
            409: CONFLICT_TEXT,
            422: "the server rejected our request due to an error in our request",
            429: "Too many requests, please try again later.",
            500: "Internal error occurred: injected failure",
            503: "the server is currently unable to handle the request",
            504: "the server was unable to return a response in the time allotted, but may still be processing the request",
        }
        return ApiError(
            code,
            message or generic.get(code, f"injected failure {code}"),
            details=details,
            headers=headers,
        )

    def _served(self, group: str, version: str) -> bool:
        if group == METRICS_GROUP and not self.metrics:
            return False
        return any(rt.group == group and rt.version == version for rt in RESOURCE_TYPES)

    def _groups(self) -> list[Obj]:
        seen: dict[str, str] = {}
        for rt in RESOURCE_TYPES:
            if rt.group and self._served(rt.group, rt.version):
                seen.setdefault(rt.group, rt.version)
        return [
            {
                "name": group,
                "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
                "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version},
            }
            for group, version in seen.items()
        ]

    def _resource_list(self, group: str, version: str) -> Obj:
        resources: list[Obj] = []
        for rt in RESOURCE_TYPES:
            if rt.group != group or rt.version != version:
                continue
            entry: Obj = {
                "name": rt.plural,
                "singularName": rt.singular,
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": list(rt.verbs),
            }
            if rt.short_names:
                entry["shortNames"] = list(rt.short_names)
            if rt.categories:
                entry["categories"] = list(rt.categories)
            resources.append(entry)
            for sub in rt.subresources:
                sub_entry: Obj = {
                    "name": f"{rt.plural}/{sub}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": ["get", "patch", "update"],
                }
                if sub == "scale":
                    sub_entry.update({"group": "autoscaling", "version": "v1", "kind": "Scale"})
                elif sub == "log":
                    sub_entry.update({"kind": "Pod", "verbs": ["get"]})
                resources.append(sub_entry)
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    def _openapi_v3_doc(self, group: str, version: str) -> Obj:
        """Just enough OpenAPI v3 for kubectl: each PATCH operation names its GVK and takes
        `fieldValidation`, so `kubectl apply` leaves validation to the server instead of
        needing full schemas; each kind has a (loose) schema so patches can be computed."""
        prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
        paths: Obj = {}
        schemas: Obj = {}
        for rt in RESOURCE_TYPES:
            if rt.group != group or rt.version != version:
                continue
            gvk = {"group": group, "version": version, "kind": rt.kind}
            scope = f"{prefix}/namespaces/{{namespace}}" if rt.namespaced else prefix
            parameters = [
                {"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                for p in ("dryRun", "fieldManager", "fieldValidation", "force")
            ]
            paths[f"{scope}/{rt.plural}/{{name}}"] = {
                "patch": {
                    "operationId": f"patch{rt.kind}",
                    "parameters": parameters,
                    "responses": {"200": {"description": "OK"}},
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                }
            }
            schema_name = f"io.k8s.double.{group or 'core'}.{version}.{rt.kind}"
            schemas[schema_name] = {
                "type": "object",
                "x-kubernetes-group-version-kind": [gvk],
            }
        return {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
            "paths": paths,
            "components": {"schemas": schemas},
        }

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        content_type: str,
    ) -> _Reply:
        segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        if method == "GET":
            discovery = self._discovery(segments)
            if discovery is not None:
                return discovery
        target = self._parse_target(path)
        return self._serve_resource(method, target, query, headers, body, content_type)

    def _discovery(self, segments: list[str]) -> _Reply | None:
        if segments == ["version"]:
            return _Reply(200, SERVER_VERSION)
        if segments in (["healthz"], ["livez"], ["readyz"]):
            return _Reply(200, "ok", "text/plain; charset=utf-8")
        if segments == ["api"]:
            address = self.url.removeprefix("http://")
            return _Reply(
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": address}
                    ],
                },
            )
        if segments == ["api", "v1"]:
            return _Reply(200, self._resource_list("", "v1"))
        if segments == ["apis"]:
            return _Reply(
                200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": self._groups()}
            )
        if len(segments) == 2 and segments[0] == "apis":
            group = next((g for g in self._groups() if g["name"] == segments[1]), None)
            if group is None:
                raise ApiError(404, PAGE_NOT_FOUND, details={})
            return _Reply(200, {"kind": "APIGroup", "apiVersion": "v1", **group})
        if len(segments) == 3 and segments[0] == "apis":
            if not self._served(segments[1], segments[2]):
                raise ApiError(404, PAGE_NOT_FOUND, details={})
            return _Reply(200, self._resource_list(segments[1], segments[2]))
        if segments[:1] == ["openapi"]:
            return self._openapi(segments[1:])
        return None

    def _openapi(self, rest: list[str]) -> _Reply:
        if rest == ["v3"]:
            paths: Obj = {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=DOUBLE"}}
            for group in self._groups():
                gv = group["preferredVersion"]["groupVersion"]
                paths[f"apis/{gv}"] = {"serverRelativeURL": f"/openapi/v3/apis/{gv}?hash=DOUBLE"}
            return _Reply(200, {"paths": paths})
        if rest[:2] == ["v3", "api"] and len(rest) == 3:
            return _Reply(200, self._openapi_v3_doc("", rest[2]))
        if rest[:2] == ["v3", "apis"] and len(rest) == 4 and self._served(rest[2], rest[3]):
            return _Reply(200, self._openapi_v3_doc(rest[2], rest[3]))
        raise ApiError(404, PAGE_NOT_FOUND, details={})

    def _parse_target(self, path: str) -> _Target:
        segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        if len(segments) >= 3 and segments[0] == "api":
            group, version, rest = "", segments[1], segments[2:]
        elif len(segments) >= 4 and segments[0] == "apis":
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            raise ApiError(404, PAGE_NOT_FOUND, details={})
        if not self._served(group, version):
            raise ApiError(404, PAGE_NOT_FOUND, details={})
        namespace = None
        if (
            rest[0] == "namespaces"
            and len(rest) >= 3
            and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
        ):
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise ApiError(404, PAGE_NOT_FOUND, details={})
        rt = BY_PATH.get((group, version, rest[0]))
        if rt is None or (namespace is not None and not rt.namespaced):
            raise ApiError(404, PAGE_NOT_FOUND, details={})
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in rt.subresources:
            raise ApiError(404, PAGE_NOT_FOUND, details={})
        if rt.namespaced and namespace is None and name is not None:
            raise ApiError(404, PAGE_NOT_FOUND, details={})
        return _Target(rt, namespace, name, sub)

    def _serve_resource(
        self,
        method: str,
        target: _Target,
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        content_type: str,
    ) -> _Reply:
        rt, namespace, name, sub = target.rt, target.namespace, target.name, target.sub
        watching = query.get("watch") in ("1", "true")
        verb = {
            "GET": ("watch" if watching else "list") if name is None else "get",
            "POST": "create",
            "PATCH": "patch",
            "PUT": "update",
            "DELETE": "delete" if name else "deletecollection",
        }.get(method)
        if verb is None or verb not in rt.verbs or (verb == "create" and name is not None):
            raise ApiError(405, "the server does not allow this method on the requested resource")
        dry_run = query.get("dryRun") == "All"
        wants_table = "as=Table" in headers.get("accept", "")
        include = query.get("includeObject", "PartialObjectMetadata")
        with self._lock:
            if verb == "watch":
                return _Reply(200, stream=self._watch(rt, namespace, query))
            if verb == "list":
                items, meta = self._select(rt, namespace, query)
                if wants_table:
                    return _Reply(200, to_table(rt, items, include, meta))
                return _Reply(
                    200,
                    {
                        "kind": f"{rt.kind}List",
                        "apiVersion": rt.api_version,
                        "metadata": meta,
                        "items": [
                            {k: v for k, v in o.items() if k not in ("kind", "apiVersion")}
                            for o in items
                        ],
                    },
                )
            if verb == "create":
                if not isinstance(body, dict):
                    raise ApiError(400, "the request body must be a JSON object")
                if (
                    rt.namespaced
                    and self._key(NAMESPACE, None, namespace or "") not in self._objects
                ):
                    raise not_found(NAMESPACE, namespace or "")
                if rt.kind == "SelfSubjectAccessReview":  # `kubectl auth can-i`: all allowed
                    review = {**copy.deepcopy(body), "apiVersion": rt.api_version, "kind": rt.kind}
                    review["status"] = {
                        "allowed": True,
                        "reason": 'RBAC: allowed by ClusterRoleBinding "kube-double" of '
                        'ClusterRole "cluster-admin"',
                    }
                    return _Reply(201, review)
                if dry_run:
                    return _Reply(201, self._dry_create(rt, namespace, body))
                return _Reply(201, self._create(rt, namespace, copy.deepcopy(body)))
            if verb == "deletecollection":
                items, meta = self._select(rt, namespace, {**query, "limit": ""})
                if not dry_run:
                    for item in items:
                        item_meta = item["metadata"]
                        self._delete(
                            rt, item_meta.get("namespace"), item_meta["name"], propagate=True
                        )
                return _Reply(
                    200,
                    {
                        "kind": f"{rt.kind}List",
                        "apiVersion": rt.api_version,
                        "metadata": meta,
                        "items": items,
                    },
                )
            assert name is not None
            if sub == "log":
                return self._pod_log(namespace or "", name, query)
            if verb == "get":
                obj = self._objects.get(self._key(rt, namespace, name))
                if obj is None:
                    raise not_found(rt, name)
                if sub == "scale":
                    return _Reply(200, self._scale(obj))
                if wants_table:
                    meta = {"resourceVersion": obj["metadata"]["resourceVersion"]}
                    return _Reply(200, to_table(rt, [obj], include, meta))
                return _Reply(200, copy.deepcopy(obj))
            if verb == "patch":
                return _Reply(
                    200,
                    self._patch(
                        rt, namespace, name, body, content_type, dry_run=dry_run, subresource=sub
                    ),
                )
            if verb == "update":
                if not isinstance(body, dict):
                    raise ApiError(400, "the request body must be a JSON object")
                old = self._objects.get(self._key(rt, namespace, name))
                if old is None:
                    raise not_found(rt, name)
                if sub == "scale":
                    version = _dig(body, "metadata", "resourceVersion")
                    if version and version != old["metadata"]["resourceVersion"]:
                        raise conflict(rt, name)
                    return _Reply(200, self._set_scale(rt, old, body, dry_run=dry_run))
                if sub == "status":
                    body = {**copy.deepcopy(old), "status": body.get("status"),
                            "metadata": {**old["metadata"], **{k: v for k, v in (body.get("metadata") or {}).items() if k == "resourceVersion"}}}  # fmt: skip
                keep = sub is None and "status" in rt.subresources
                return _Reply(
                    200,
                    self._update(
                        rt, namespace, name, copy.deepcopy(body), keep_status=keep, dry_run=dry_run
                    ),
                )
            # delete
            if dry_run:
                obj = self._objects.get(self._key(rt, namespace, name))
                if obj is None:
                    raise not_found(rt, name)
                return _Reply(200, copy.deepcopy(obj))
            orphan = (body or {}).get("propagationPolicy") == "Orphan" or query.get(
                "propagationPolicy"
            ) == "Orphan"
            deleted = self._delete(rt, namespace, name, propagate=not orphan)
            return _Reply(200, deleted)

    def _dry_create(self, rt: ResourceType, namespace: str | None, body: Obj) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if self._key(rt, namespace, meta.get("name", "")) in self._objects:
            raise ApiError(
                409,
                f'{rt.qualified} "{meta.get("name")}" already exists',
                details=_details(rt, meta.get("name", "")),
            )
        if rt.namespaced:
            meta["namespace"] = namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", format_time(now()))
        meta["generation"] = 1
        self._admit(rt, obj)
        return obj

    def _select(
        self, rt: ResourceType, namespace: str | None, query: dict[str, str]
    ) -> tuple[list[Obj], Obj]:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), rt.kind)
        items = [
            o
            for o in self._list(rt, namespace)
            if all(r.matches(labels_of(o)) for r in labels)
            and all((get(o) == value) == equal for get, equal, value in fields)
        ]
        meta: Obj = {"resourceVersion": str(self._rv)}
        start = 0
        if query.get("continue"):
            try:
                start = int(base64.urlsafe_b64decode(query["continue"]).decode())
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "continue key is not valid") from None
        limit = int(query["limit"]) if query.get("limit", "").isdigit() else 0
        items = items[start:]
        if limit and len(items) > limit:
            meta["continue"] = base64.urlsafe_b64encode(str(start + limit).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return [copy.deepcopy(o) for o in items], meta

    def _watch(
        self, rt: ResourceType, namespace: str | None, query: dict[str, str]
    ) -> Iterator[bytes]:
        """Watch events as JSON lines until timeoutSeconds (capped) or the double stops."""
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), rt.kind)
        timeout = float(query.get("timeoutSeconds") or 300)
        version = query.get("resourceVersion", "")

        def wanted(obj: Obj) -> bool:
            return (
                (
                    namespace is None
                    or not rt.namespaced
                    or obj["metadata"].get("namespace") == namespace
                )
                and all(r.matches(labels_of(obj)) for r in labels)
                and all((get(obj) == value) == equal for get, equal, value in fields)
            )

        def line(kind: str, obj: Obj) -> bytes:
            return (json.dumps({"type": kind, "object": obj}) + "\n").encode()

        # A streaming list (client-go's WatchList, what `kubectl rollout status` and `kubectl
        # wait` use) asks for the current objects first, then a bookmark marking their end.
        streaming_list = query.get("sendInitialEvents") == "true"
        bookmarks = query.get("allowWatchBookmarks") == "true"
        if version in ("", "0") or streaming_list:
            initial = [copy.deepcopy(o) for o in self._list(rt, namespace) if wanted(o)]
            cursor = self._rv
        else:
            initial, cursor = [], int(version) if version.isdigit() else self._rv
        end_of_initial = {
            "kind": rt.kind,
            "apiVersion": rt.api_version,
            "metadata": {
                "resourceVersion": str(cursor),
                "annotations": {"k8s.io/initial-events-end": "true"},
            },
        }

        def stream() -> Iterator[bytes]:
            nonlocal cursor
            deadline = now() + timedelta(seconds=timeout)
            for obj in initial:
                yield line("ADDED", obj)
            if streaming_list:
                yield line("BOOKMARK", end_of_initial)
            last_sent = now()
            while not self._stopping.is_set() and now() < deadline:
                with self._changed:
                    if self._rv <= cursor:
                        self._changed.wait(timeout=0.25)
                    pending = [
                        (kind, obj)
                        for rv, kind, event_rt, obj in self._event_log
                        if rv > cursor and event_rt is rt and wanted(obj)
                    ]
                    cursor = self._rv
                for kind, obj in pending:
                    yield line(kind, obj)
                    last_sent = now()
                if bookmarks and now() - last_sent > timedelta(seconds=5):
                    # Also how a watcher that went away is noticed: the write fails.
                    bookmark = {"kind": rt.kind, "apiVersion": rt.api_version}
                    yield line(
                        "BOOKMARK", {**bookmark, "metadata": {"resourceVersion": str(cursor)}}
                    )
                    last_sent = now()

        return stream()

    def _pod_log(self, namespace: str, name: str, query: dict[str, str]) -> _Reply:
        """GET pods/{name}/log as the kubelet answers it, with its error messages."""
        pod = self._objects.get(self._key(POD, namespace, name))
        if pod is None:
            raise not_found(POD, name)
        spec = pod.get("spec") or {}
        containers = [c["name"] for c in spec.get("containers") or []]
        init = [c["name"] for c in spec.get("initContainers") or []]
        ephemeral = [c["name"] for c in spec.get("ephemeralContainers") or []]
        container = query.get("container", "")
        if not container:
            if len(containers) != 1:
                message = (
                    f"a container name must be specified for pod {name}, "
                    f"choose one of: [{' '.join(containers)}]"
                )
                if init:
                    message += f" or one of the init containers: [{' '.join(init)}]"
                raise ApiError(400, message)
            container = containers[0]
        if container not in (*containers, *init, *ephemeral):
            raise ApiError(400, f"container {container} is not valid for pod {name}")
        previous = query.get("previous") in ("true", "1")
        entries = self._logs.get((namespace, name, container, previous))
        if entries is None:
            # (A log set with set_log() is served whatever the pod says.)
            if not spec.get("nodeName"):  # the API server has no kubelet to ask
                raise ApiError(400, f"pod {name} does not have a host assigned")
            if previous:
                raise ApiError(
                    400, f'previous terminated container "{container}" in pod "{name}" not found'
                )
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            statuses += (pod.get("status") or {}).get("initContainerStatuses") or []
            mine: Obj = next((s for s in statuses if s.get("name") == container), {})
            state = mine.get("state") or {}
            waiting = _dig(state, "waiting", "reason")
            never_ran = not _dig(mine, "lastState", "terminated")
            # kubelet validateContainerLogStatus: a container that is waiting and never ran
            # has no log; the most common reasons get their own words.
            if waiting and never_ran:
                detail = {
                    "ErrImagePull": "image can't be pulled",
                    "ImagePullBackOff": "trying and failing to pull image",
                }.get(waiting, waiting)
                raise ApiError(
                    400, f'container "{container}" in pod "{name}" is waiting to start: {detail}'
                )
            # Not running now but ran before (a crash loop's back-off): the kubelet answers
            # with the last terminated instance's log, as `kubectl logs` shows it.
            entries = (
                [] if "running" in state else self._logs.get((namespace, name, container, True), [])
            )
        since_seconds = query.get("sinceSeconds", "")
        if since_seconds.isdigit():
            cutoff = now() - timedelta(seconds=int(since_seconds))
            entries = [e for e in entries if e[0] >= cutoff]
        since_time = parse_time(query.get("sinceTime"))
        if since_time is not None:
            entries = [e for e in entries if e[0] >= since_time]
        tail = query.get("tailLines", "")
        if tail.isdigit():
            entries = entries[-int(tail) :] if int(tail) else []
        stamped = query.get("timestamps") in ("true", "1")
        text = "".join(f"{format_time_nano(t)} {line}" if stamped else line for t, line in entries)
        data = text.encode()
        limit = query.get("limitBytes", "")
        if limit.isdigit():
            data = data[: int(limit)]
        return _Reply(200, data, "text/plain; charset=utf-8")


# --- small helpers used by the controller ----------------------------------------------------


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _drop_nulls_in_place(value: Any) -> None:
    """Like _drop_nulls, keeping every dict's identity (callers hold references into it)."""
    if isinstance(value, dict):
        for key in [k for k, v in value.items() if v is None]:
            del value[key]
        for item in value.values():
            _drop_nulls_in_place(item)
    elif isinstance(value, list):
        for item in value:
            _drop_nulls_in_place(item)


def _prune(value: Any) -> Any:
    """Without nulls and empty maps and lists: `resources: {}` and an absent `resources` are the
    same template, as they are once the API server has decoded them into Go structs."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def _template(obj: Obj) -> Obj:
    """A pod template without the pod-template-hash label: how templates are compared."""
    template: Obj = _prune(copy.deepcopy(_dig(obj, "spec", "template") or {}))
    labels = (template.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
    return template


def _image_pull_policy(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    if "@" in name or (":" in name and not name.endswith(":latest")):
        return "IfNotPresent"
    return "Always"


def _default_pod_spec(spec: Obj) -> None:
    """Defaults the API server fills into every pod spec (pkg/apis/core/v1/defaults.go)."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for kind in ("initContainers", "containers"):
        for container in spec.get(kind) or []:
            container.setdefault("resources", {})
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            container.setdefault("imagePullPolicy", _image_pull_policy(container.get("image", "")))
            for port in container.get("ports") or []:
                port.setdefault("protocol", "TCP")
            for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = container.get(probe_name)
                if isinstance(probe, dict):
                    probe.setdefault("timeoutSeconds", 1)
                    probe.setdefault("periodSeconds", 10)
                    probe.setdefault("successThreshold", 1)
                    probe.setdefault("failureThreshold", 3)
                    if isinstance(probe.get("httpGet"), dict):
                        probe["httpGet"].setdefault("scheme", "HTTP")


def _apply_defaults(rt: ResourceType, obj: Obj, allocate_ip: Callable[[], str]) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if rt in (DEPLOYMENT, REPLICASET, STATEFULSET, DAEMONSET):
        template_spec = _dig(spec, "template", "spec")
        if isinstance(template_spec, dict):
            _default_pod_spec(template_spec)
        if rt is not DAEMONSET:
            spec.setdefault("replicas", 1)
    if rt is DEPLOYMENT:
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", "25%")
            rolling.setdefault("maxSurge", "25%")
    elif rt is STATEFULSET:
        spec.setdefault("podManagementPolicy", "OrderedReady")
        spec.setdefault("revisionHistoryLimit", 10)
        strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
        if strategy.get("type") == "RollingUpdate":
            strategy.setdefault("rollingUpdate", {"partition": 0})
        spec.setdefault(
            "persistentVolumeClaimRetentionPolicy",
            {"whenDeleted": "Retain", "whenScaled": "Retain"},
        )
    elif rt is DAEMONSET:
        spec.setdefault("revisionHistoryLimit", 10)
        strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
        if strategy.get("type") == "RollingUpdate":
            strategy.setdefault("rollingUpdate", {"maxUnavailable": 1, "maxSurge": 0})
    elif rt is POD:
        _default_pod_spec(spec)
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault("priority", 0)
    elif rt is SERVICE:
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec["type"] != "ExternalName":
            spec.setdefault("clusterIP", allocate_ip())
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))


def _revision(obj: Obj) -> int:
    value = (obj["metadata"].get("annotations") or {}).get(REVISION, "0")
    return int(value) if str(value).isdigit() else 0


def _int_or_percent(value: Any, total: int, *, up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent with the rolling-update defaults (25%)."""
    if value is None:
        value = "25%"
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        scaled = int(value[:-1]) * total / 100
        return math.ceil(scaled) if up else math.floor(scaled)
    return int(value) if str(value).isdigit() else 0


def _make_handler(double: KubeDouble) -> type[TrackedHandler]:
    class Handler(TrackedHandler):
        def setup(self) -> None:
            # One port, both schemes: a TLS ClientHello starts with 0x16, HTTP with a method.
            raw: socket.socket = self.request
            try:
                first = raw.recv(1, socket.MSG_PEEK)
            except OSError:
                first = b""
            if first == b"\x16" and double._tls is not None:
                raw.settimeout(10)
                wrapped = double._tls.wrap_socket(raw, server_side=True)
                wrapped.settimeout(None)
                self.request = wrapped
            super().setup()

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                if isinstance(self.request, ssl.SSLSocket):  # the server only closes the raw one
                    with contextlib.suppress(OSError):
                        self.request.close()

        def _serve(self) -> None:
            headers, raw = self.read_request()
            reply = double._handle(self.command, self.path, headers, raw)
            if reply.stream is None:
                self.send_reply(
                    reply.status,
                    reply.payload(),
                    {
                        "Content-Type": reply.content_type,
                        "Cache-Control": "no-cache, private",
                        "Audit-Id": str(uuid.uuid4()),
                        **reply.headers,
                    },
                )
                return
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Cache-Control", "no-cache, private")
                self.end_headers()
                for chunk in reply.stream:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                self.close_connection = True  # the client went away (or the double stopped)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler
