"""deployments/kubernetes/: least-privilege RBAC, valid Kubernetes objects, a ConfigMap in step
with infrastructure/config/, an API Deployment (`uici serve`, several replicas on a shared
PostgreSQL store, probes that match the app's routes) and a worker Deployment (`prefect worker
start`) that run UICI the way it reads its configuration, and kubectl's view of it all. No
cluster needed: kubectl talks to the API double of tests/k8s_double.py.

Every check is a function that returns problems (file, kind, name, what is wrong), so each one
is also fed broken manifests below: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import json
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = REPO_ROOT / "deployments" / "kubernetes"
CONFIG_DIR = REPO_ROOT / "infrastructure" / "config"
REGENERATE = ".venv/bin/python deployments/kubernetes/render_configmap.py"

NAMESPACE = "uici"
SECRET_NAME = "uici-secrets"
CONFIGMAP_NAME = "uici-config"
SERVICE_PORT = 8080
SA_SUBJECT = {"kind": "ServiceAccount", "name": "uici", "namespace": NAMESPACE}

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Doc:
    """One YAML document and the file it came from."""

    file: str
    body: Manifest

    @property
    def kind(self) -> str:
        return str(self.body.get("kind"))

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name"))

    @property
    def namespace(self) -> str | None:
        return (self.body.get("metadata") or {}).get("namespace")

    @property
    def label(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.file}: {self.kind} {where}{self.name}"


def load_docs(directory: Path = K8S_DIR) -> list[Doc]:
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        for body in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if body is not None:
                docs.append(Doc(path.name, body))
    return docs


def kubernetes_docs(docs: list[Doc]) -> list[Doc]:
    """The objects kubectl sends to the API server (kustomization.yaml is not one)."""
    return [d for d in docs if d.kind != "Kustomization"]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    matches = [d for d in docs if d.kind == kind and d.name == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return load_docs()


def _assert_no_problems(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


# --- 1. RBAC ---------------------------------------------------------------------------------

ALLOWED_VERBS = frozenset({"get", "list", "watch", "patch"})
# Each one reads secrets, runs code in or reaches into a pod or node, or mints credentials.
FORBIDDEN_RESOURCES = frozenset(
    {
        "secrets",
        "pods/exec",
        "pods/attach",
        "pods/portforward",
        "pods/proxy",
        "pods/ephemeralcontainers",
        "services/proxy",
        "nodes/proxy",
        "serviceaccounts/token",
    }
)
READ = ("get", "list", "watch")
# Exactly what the read operations need (operations.yml); any grant beyond this is a finding.
READ_GRANTS = frozenset(
    {("", r, v) for r in ("pods", "events", "services", "endpoints", "namespaces") for v in READ}
    | {("", "pods/log", "get")}
    | {("events.k8s.io", "events", v) for v in READ}
    | {
        ("apps", r, v)
        for r in ("deployments", "replicasets", "statefulsets", "daemonsets")
        for v in READ
    }
    | {("metrics.k8s.io", r, v) for r in ("pods", "nodes") for v in ("get", "list")}
)
# restart and rollback patch the workload, scale patches the scale subresource.
WRITE_RESOURCES = ("deployments", "statefulsets", "deployments/scale", "statefulsets/scale")
WRITE_GRANTS = frozenset({("apps", r, v) for r in WRITE_RESOURCES for v in ("get", "patch")})
ROLE_KINDS = ("Role", "ClusterRole")
BINDING_KINDS = ("RoleBinding", "ClusterRoleBinding")


def grants(rule: Manifest) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for group in rule.get("apiGroups") or []
        for resource in rule.get("resources") or []
        for verb in rule.get("verbs") or []
    }


def _rule_problems(doc: Doc, index: int, rule: Manifest) -> Iterator[str]:
    where = f"{doc.label} rule {index} {json.dumps(rule, sort_keys=True)}"
    for field in ("apiGroups", "resources", "verbs", "resourceNames"):
        # Also partial wildcards such as "pods/*" or "*/scale".
        if any("*" in str(item) for item in rule.get(field) or []):
            yield f"{where}: '*' in {field}"
    if rule.get("nonResourceURLs"):
        yield f"{where}: nonResourceURLs (UICI reads no non-resource endpoint)"
    for resource in sorted(set(rule.get("resources") or []) & FORBIDDEN_RESOURCES):
        yield f"{where}: forbidden resource {resource!r}"
    for verb in sorted(set(rule.get("verbs") or []) - ALLOWED_VERBS - {"*"}):
        yield f"{where}: forbidden verb {verb!r} (allowed: {', '.join(sorted(ALLOWED_VERBS))})"
    if "patch" in (rule.get("verbs") or []) and doc.name != "uici-write":
        yield f"{where}: 'patch' outside the write role uici-write"


def _grant_diff(doc: Doc, granted: set[tuple[str, str, str]], expected: frozenset[Any]) -> str:
    extra = sorted(granted - expected)
    missing = sorted(expected - granted)
    return f"{doc.label}: grants beyond the reviewed set {extra}, missing {missing}"


def rbac_problems(docs: list[Doc]) -> list[str]:
    problems: list[str] = []
    roles = [d for d in docs if d.kind in ROLE_KINDS]
    for doc in roles:
        if doc.body.get("aggregationRule"):
            problems.append(f"{doc.label}: aggregationRule (would take in other roles' rules)")
        rules = doc.body.get("rules") or []
        for index, rule in enumerate(rules):
            problems.extend(_rule_problems(doc, index, rule))
        granted = set().union(*(grants(rule) for rule in rules))
        if doc.name == "uici-read":
            if doc.kind != "ClusterRole":
                problems.append(f"{doc.label}: the read role is a ClusterRole bound per namespace")
            if granted != READ_GRANTS:
                problems.append(_grant_diff(doc, granted, READ_GRANTS))
        elif doc.name == "uici-write":
            if doc.kind != "Role":
                problems.append(
                    f"{doc.label}: the write role must be a namespaced Role, one per namespace"
                    " where writes are enabled"
                )
            if granted != WRITE_GRANTS:
                problems.append(_grant_diff(doc, granted, WRITE_GRANTS))
        else:
            problems.append(f"{doc.label}: an unreviewed role (known: uici-read, uici-write)")
    for name, kind in (("uici-read", "ClusterRole"), ("uici-write", "Role")):
        if not any(d.name == name for d in roles):
            problems.append(f"no {kind} {name} in the manifests")

    read_namespaces: set[str | None] = set()
    write_namespaces: dict[str | None, Doc] = {}
    for doc in (d for d in docs if d.kind in BINDING_KINDS):
        ref = doc.body.get("roleRef") or {}
        ref_kind, ref_name = ref.get("kind"), ref.get("name")
        subjects = doc.body.get("subjects") or []
        if subjects != [SA_SUBJECT]:
            problems.append(f"{doc.label}: subjects {subjects}, expected only {SA_SUBJECT}")
        if doc.kind == "ClusterRoleBinding":
            what = "the write role" if ref_name == "uici-write" else f"{ref_kind} {ref_name}"
            problems.append(
                f"{doc.label}: binds {what} cluster-wide; UICI is bound per namespace "
                "with RoleBindings"
            )
            continue
        # A RoleBinding reaches a Role in its own namespace only; a ClusterRole anywhere.
        defined = any(
            r.kind == ref_kind
            and r.name == ref_name
            and (ref_kind == "ClusterRole" or r.namespace == doc.namespace)
            for r in roles
        )
        if not defined:
            problems.append(
                f"{doc.label}: binds {ref_kind} {ref_name}, which these manifests do not define"
                " here (a built-in role such as cluster-admin, edit or view is never bound)"
            )
        if ref_name == "uici-read":
            read_namespaces.add(doc.namespace)
        elif ref_name == "uici-write":
            write_namespaces[doc.namespace] = doc
    for namespace, doc in write_namespaces.items():
        if namespace not in read_namespaces:
            problems.append(
                f"{doc.label}: writes enabled in {namespace!r} without the read RoleBinding"
                " (a rollback reads ReplicaSets)"
            )
    return problems


def test_rbac_is_least_privilege(docs: list[Doc]) -> None:
    _assert_no_problems(rbac_problems(kubernetes_docs(docs)))


def test_rbac_binds_both_roles_in_the_example_namespace(docs: list[Doc]) -> None:
    bindings = {
        (d.kind, d.namespace, d.body["roleRef"]["name"]) for d in docs if d.kind in BINDING_KINDS
    }
    assert bindings == {
        ("RoleBinding", "default", "uici-read"),
        ("RoleBinding", "default", "uici-write"),
    }
    assert find(docs, "Role", "uici-write").namespace == "default"


def _role(docs: list[Doc], name: str) -> Manifest:
    return next(d.body for d in docs if d.kind in ROLE_KINDS and d.name == name)


def _binding(docs: list[Doc], name: str) -> Manifest:
    return next(d.body for d in docs if d.kind in BINDING_KINDS and d.name == name)


def _wildcard_verb(docs: list[Doc]) -> None:
    _role(docs, "uici-read")["rules"][0]["verbs"] = ["*"]


def _wildcard_group(docs: list[Doc]) -> None:
    _role(docs, "uici-read")["rules"][0]["apiGroups"] = ["*"]


def _wildcard_subresource(docs: list[Doc]) -> None:
    _role(docs, "uici-read")["rules"][1]["resources"] = ["pods/*"]


def _secrets(docs: list[Doc]) -> None:
    _role(docs, "uici-read")["rules"].append(
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
    )


def _pods_exec(docs: list[Doc]) -> None:
    _role(docs, "uici-read")["rules"].append(
        {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}
    )


def _delete(docs: list[Doc]) -> None:
    _role(docs, "uici-write")["rules"][0]["verbs"].append("delete")


def _update_configmaps(docs: list[Doc]) -> None:
    _role(docs, "uici-write")["rules"].append(
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["update"]}
    )


def _patch_pods(docs: list[Doc]) -> None:
    _role(docs, "uici-read")["rules"][0]["verbs"].append("patch")


def _extra_read(docs: list[Doc]) -> None:
    _role(docs, "uici-read")["rules"].append(
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}
    )


def _non_resource_urls(docs: list[Doc]) -> None:
    _role(docs, "uici-read")["rules"].append({"nonResourceURLs": ["/metrics"], "verbs": ["get"]})


def _aggregation(docs: list[Doc]) -> None:
    _role(docs, "uici-read")["aggregationRule"] = {
        "clusterRoleSelectors": [{"matchLabels": {"rbac.example/aggregate-to-uici": "true"}}]
    }


def _write_as_cluster_role(docs: list[Doc]) -> None:
    role = _role(docs, "uici-write")
    role["kind"] = "ClusterRole"
    del role["metadata"]["namespace"]
    _binding(docs, "uici-write")["roleRef"]["kind"] = "ClusterRole"


def _write_cluster_binding(docs: list[Doc]) -> None:
    _write_as_cluster_role(docs)
    binding = _binding(docs, "uici-write")
    binding["kind"] = "ClusterRoleBinding"
    del binding["metadata"]["namespace"]


def _read_cluster_binding(docs: list[Doc]) -> None:
    binding = _binding(docs, "uici-read")
    binding["kind"] = "ClusterRoleBinding"
    del binding["metadata"]["namespace"]


def _cluster_admin(docs: list[Doc]) -> None:
    _binding(docs, "uici-read")["roleRef"]["name"] = "cluster-admin"


def _other_subject(docs: list[Doc]) -> None:
    _binding(docs, "uici-write")["subjects"].append(
        {"kind": "ServiceAccount", "name": "default", "namespace": "default"}
    )


def _write_without_read(docs: list[Doc]) -> None:
    docs.remove(next(d for d in docs if d.kind == "RoleBinding" and d.name == "uici-read"))


# (breakage, a fragment the report must contain). Each proves one rule of the check bites.
RBAC_BREAKAGES: dict[str, tuple[Callable[[list[Doc]], None], str]] = {
    "wildcard verb": (_wildcard_verb, "rbac-read.yaml: ClusterRole uici-read rule 0"),
    "wildcard apiGroup": (_wildcard_group, "'*' in apiGroups"),
    "wildcard subresource": (_wildcard_subresource, "'*' in resources"),
    "secrets": (_secrets, "forbidden resource 'secrets'"),
    "pods/exec": (_pods_exec, "forbidden resource 'pods/exec'"),
    "create": (_pods_exec, "forbidden verb 'create'"),
    "delete": (_delete, "rbac-write.yaml: Role default/uici-write rule 0"),
    "update configmaps": (_update_configmaps, "forbidden verb 'update'"),
    "patch in the read role": (_patch_pods, "'patch' outside the write role"),
    "read beyond the list": (_extra_read, "('', 'configmaps', 'get')"),
    "nonResourceURLs": (_non_resource_urls, "nonResourceURLs"),
    "aggregationRule": (_aggregation, "aggregationRule"),
    "write role as ClusterRole": (_write_as_cluster_role, "must be a namespaced Role"),
    "write role bound cluster-wide": (_write_cluster_binding, "binds the write role cluster-wide"),
    "read role bound cluster-wide": (_read_cluster_binding, "ClusterRole uici-read cluster-wide"),
    "binding to cluster-admin": (_cluster_admin, "binds ClusterRole cluster-admin"),
    "another subject": (_other_subject, "expected only"),
    "writes without reads": (_write_without_read, "without the read RoleBinding"),
}


@pytest.mark.parametrize("breakage", sorted(RBAC_BREAKAGES))
def test_rbac_check_reports_each_breakage(docs: list[Doc], breakage: str) -> None:
    mutate, expected = RBAC_BREAKAGES[breakage]
    broken = [Doc(d.file, copy.deepcopy(d.body)) for d in kubernetes_docs(docs)]
    mutate(broken)
    problems = rbac_problems(broken)
    assert any(expected in p for p in problems), f"{breakage}: not reported in {problems}"
    # The "delete" case must also name the verb, not only the place.
    if breakage == "delete":
        assert any("forbidden verb 'delete'" in p for p in problems), problems


# --- 2. Schema: the official client's models --------------------------------------------------

API_VERSIONS = {
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "ConfigMap": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
}
# Old (list[X], dict(str, X)) and new (List[X], Dict[str, X]) spellings of the client's types.
_OPTIONAL = re.compile(r"^Optional\[(.*)\]$")
_LIST = re.compile(r"^(?:List\[(.*)\]|list\[(.*)\])$")
_DICT = re.compile(r"^(?:Dict\[[^,]*, (.*)\]|dict\([^,]*, (.*)\))$")
_LEAVES = frozenset({"str", "int", "float", "bool", "object", "date", "datetime", "bytes"})


def _model_name(kind: str) -> str:
    return f"V1{kind}"


def unknown_fields(value: Any, type_name: str, path: str) -> list[str]:
    """Keys that are no field of the model, found by walking attribute_map and openapi_types:
    the models drop unknown keys silently, so a typo would otherwise vanish."""
    import kubernetes.client.models as models

    if match := _OPTIONAL.match(type_name):
        return unknown_fields(value, match.group(1), path)
    if match := _LIST.match(type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list ({type_name})"]
        inner = match.group(1) or match.group(2)
        return [
            p for i, item in enumerate(value) for p in unknown_fields(item, inner, f"{path}[{i}]")
        ]
    if match := _DICT.match(type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping ({type_name})"]
        inner = match.group(1) or match.group(2)
        return [
            p for key, item in value.items() for p in unknown_fields(item, inner, f"{path}.{key}")
        ]
    if type_name in _LEAVES:
        return []
    model = getattr(models, type_name, None)
    if model is None:
        return [f"{path}: the client has no model {type_name}"]
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({type_name})"]
    fields = {wire: attribute for attribute, wire in model.attribute_map.items()}
    problems = []
    for key, item in value.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{path}.{key}: not a field of {type_name}{hint}")
            continue
        problems.extend(unknown_fields(item, model.openapi_types[fields[key]], f"{path}.{key}"))
    return problems


def schema_problems(docs: list[Doc]) -> list[str]:
    from kubernetes.client import ApiClient

    problems: list[str] = []
    with ApiClient() as client:
        for doc in docs:
            expected = API_VERSIONS.get(doc.kind)
            if expected is None:
                problems.append(f"{doc.label}: no schema check for kind {doc.kind!r}")
                continue
            if doc.body.get("apiVersion") != expected:
                problems.append(
                    f"{doc.label}: apiVersion {doc.body.get('apiVersion')!r}, expected {expected!r}"
                )
            if doc.kind != "Namespace" and "Cluster" not in doc.kind and doc.namespace is None:
                problems.append(f"{doc.label}: a namespaced object without metadata.namespace")
            model = _model_name(doc.kind)
            problems.extend(f"{doc.label}: {p}" for p in unknown_fields(doc.body, model, "$"))
            # What kubectl would send is JSON; the model must take it and give it back
            # unchanged (a dropped key or a coerced value, "1" for 1, shows as a difference).
            wire = json.loads(json.dumps(doc.body))
            try:
                obj = client._ApiClient__deserialize(wire, model)
            except Exception as exc:
                problems.append(f"{doc.label}: not a valid {model}: {exc}")
                continue
            if client.sanitize_for_serialization(obj) != wire:
                problems.append(f"{doc.label}: changed by a round trip through {model}")
    return problems


def test_manifests_match_the_client_models(docs: list[Doc]) -> None:
    _assert_no_problems(schema_problems(kubernetes_docs(docs)))


def _container(docs: list[Doc]) -> Manifest:
    container: Manifest = find(docs, "Deployment", "uici").body["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


def _typo(docs: list[Doc]) -> None:
    _container(docs)["imagePullPolicyy"] = "IfNotPresent"


def _nested_typo(docs: list[Doc]) -> None:
    _container(docs)["securityContext"]["readOnlyRootFileSystem"] = True


def _nameless_container(docs: list[Doc]) -> None:
    del _container(docs)["name"]


def _string_replicas(docs: list[Doc]) -> None:
    find(docs, "Deployment", "uici").body["spec"]["replicas"] = "one"


def _wrong_api_version(docs: list[Doc]) -> None:
    find(docs, "Deployment", "uici").body["apiVersion"] = "extensions/v1beta1"


def _unknown_kind(docs: list[Doc]) -> None:
    docs.append(
        Doc("extra.yaml", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}})
    )


SCHEMA_BREAKAGES: dict[str, tuple[Callable[[list[Doc]], None], str]] = {
    "typo imagePullPolicyy": (
        _typo,
        "$.spec.template.spec.containers[0].imagePullPolicyy: not a field of V1Container; "
        "did you mean 'imagePullPolicy'?",
    ),
    "nested typo": (_nested_typo, "readOnlyRootFileSystem: not a field of V1SecurityContext"),
    "container without a name": (_nameless_container, "not a valid V1Deployment"),
    "replicas not a number": (_string_replicas, "not a valid V1Deployment"),
    "wrong apiVersion": (_wrong_api_version, "expected 'apps/v1'"),
    "unchecked kind": (_unknown_kind, "no schema check for kind 'Secret'"),
}


@pytest.mark.parametrize("breakage", sorted(SCHEMA_BREAKAGES))
def test_schema_check_reports_each_breakage(docs: list[Doc], breakage: str) -> None:
    mutate, expected = SCHEMA_BREAKAGES[breakage]
    broken = [Doc(d.file, copy.deepcopy(d.body)) for d in kubernetes_docs(docs)]
    mutate(broken)
    problems = schema_problems(broken)
    assert any(expected in p for p in problems), f"{breakage}: not reported in {problems}"
    if breakage.startswith("typo"):
        assert any(p.startswith("deployment.yaml: Deployment uici/uici: ") for p in problems)


def test_kustomization_lists_every_manifest(docs: list[Doc]) -> None:
    (kustomization,) = [d.body for d in docs if d.kind == "Kustomization"]
    files = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    # A kustomize `namespace:` would move the RoleBindings out of the namespaces they grant.
    assert "namespace" not in kustomization
    assert not [d.label for d in docs if d.kind == "Secret"], "secrets never live in the manifests"


def test_namespace_and_service_account(docs: list[Doc]) -> None:
    namespace = find(docs, "Namespace", NAMESPACE).body
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    account = find(docs, "ServiceAccount", "uici")
    assert account.namespace == NAMESPACE
    assert account.body["automountServiceAccountToken"] is True


# --- 3. The ConfigMap is infrastructure/config/ -----------------------------------------------


def _render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_configmap", K8S_DIR / "render_configmap.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def configmap_drift(data: dict[str, str], config_dir: Path) -> list[str]:
    from infrastructure.configuration.loader import CONFIG_FILES

    names = sorted(file_name for file_name, _ in CONFIG_FILES.values())
    problems = []
    if sorted(data) != names:
        problems.append(f"configmap.yaml: keys {sorted(data)}, UICI reads {names}")
    for name in names:
        text = (config_dir / name).read_text(encoding="utf-8")
        if data.get(name) != text:
            diff = difflib.unified_diff(
                (data.get(name) or "").splitlines(),
                text.splitlines(),
                f"configmap.yaml {name}",
                f"infrastructure/config/{name}",
                lineterm="",
                n=0,
            )
            head = "\n".join(list(diff)[:12])
            problems.append(f"configmap.yaml: {name} differs from {config_dir / name}:\n{head}")
    if problems:
        problems.append(f"fix: {REGENERATE}")
    return problems


def test_configmap_equals_the_configuration_files(docs: list[Doc]) -> None:
    configmap = find(docs, "ConfigMap", CONFIGMAP_NAME)
    assert configmap.namespace == NAMESPACE
    _assert_no_problems(configmap_drift(configmap.body["data"], CONFIG_DIR))


def test_configmap_is_what_the_script_writes() -> None:
    written = (K8S_DIR / "configmap.yaml").read_text(encoding="utf-8")
    assert _render_module().render() == written, (
        f"configmap.yaml is stale or edited by hand; fix: {REGENERATE}"
    )


def test_drift_is_reported_with_the_fix(tmp_path: Path) -> None:
    render = _render_module()
    config = tmp_path / "config"
    config.mkdir()
    for name in render.CONFIG_FILES:
        (config / name).write_text(
            (CONFIG_DIR / name).read_text(encoding="utf-8"), encoding="utf-8"
        )
    data = yaml.safe_load(render.render(config))["data"]
    assert configmap_drift(data, config) == []
    with (config / "agents.yml").open("a", encoding="utf-8") as handle:
        handle.write("# a local change\n")
    problems = configmap_drift(data, config)
    assert any("agents.yml differs" in p and "+# a local change" in p for p in problems), problems
    assert problems[-1] == f"fix: {REGENERATE}"
    # --check answers 1 on a stale output and rewrites nothing; a render makes it current.
    output = tmp_path / "configmap.yaml"
    output.write_text(render.render(CONFIG_DIR), encoding="utf-8")
    args = ["--config-dir", str(config), "--output", str(output)]
    assert render.main([*args, "--check"]) == 1
    assert render.main(args) == 0
    assert render.main([*args, "--check"]) == 0
    assert (
        "# a local change"
        in yaml.safe_load(output.read_text(encoding="utf-8"))["data"]["agents.yml"]
    )


# --- 4. The Deployments: the API and the workers ---------------------------------------------

API_DEPLOYMENT = "uici"
WORKER_DEPLOYMENT = "uici-worker"
# The store's URL holds the database password: its own Secret, created by hand (README.md).
STORAGE_SECRET = "uici-storage"
STORAGE_KEY = "url"
WORKER_POOL = "uici-process"
PROJECT_DIR_VARIABLE = "UICI_PROJECT_DIR"
DOCKERFILE = REPO_ROOT / "deployments" / "docker" / "Dockerfile"
# A liveness probe must ride out this long without an answer (a busy event loop, a slow
# node): failureThreshold x periodSeconds.
MIN_LIVENESS_WINDOW_SECONDS = 30

Routes = set[tuple[str, str]]


def openapi_routes(app: Any) -> Routes:
    """(method, path) of every route a FastAPI app serves in its schema."""
    return {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real agent service app (the tests' configuration, an SQLite store in a temporary
    directory): the probes are checked against what it serves, not against a list."""
    import shutil

    from fastapi.testclient import TestClient

    from agent.service.app import create_app
    from infrastructure.configuration.cache import ConfigCache
    from tests.api_support import key_env
    from tests.conftest import TEST_CONFIG

    tmp = tmp_path_factory.mktemp("service")
    shutil.copytree(TEST_CONFIG, tmp / "config")
    configs = ConfigCache(tmp / "config", environ=key_env(tmp))
    app = create_app(configs, run_dispatcher=False, run_notifier=False)
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def routes(service: Any) -> Routes:
    return openapi_routes(service.app)


def worker_health_routes() -> Routes:
    """What `prefect worker start --with-healthcheck` serves (prefect/workers/server.py)."""
    from prefect.workers.server import _build_healthcheck_server

    return openapi_routes(_build_healthcheck_server(lambda: True).config.app)


def worker_health_port(env: dict[str, str]) -> int:
    """The port Prefect's settings give the worker's health server under this environment."""
    import os
    from unittest import mock

    from prefect.settings import Settings

    with mock.patch.dict(os.environ, env):
        return int(Settings().worker.webserver.port)


def config_variables() -> set[str]:
    """Every ${VAR} the configuration files reference."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(CONFIG_DIR.glob("*.yml")))
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def secret_variables() -> set[str]:
    """The referenced variables that carry credentials: API key hashes and the LLM's key."""
    return {v for v in config_variables() if v.endswith(("_KEY_SHA256", "_API_KEY"))}


def _platform() -> Manifest:
    platform: Manifest = yaml.safe_load((CONFIG_DIR / "platform.yml").read_text(encoding="utf-8"))
    return platform


def longest_step_seconds() -> float:
    """The longest one flow step may take: an operation's attempts with their back-off
    (operations.yml), or an LLM call with its retries (platform.yml llm)."""
    operations = yaml.safe_load((CONFIG_DIR / "operations.yml").read_text(encoding="utf-8"))
    longest = 0.0
    for spec in operations["operations"].values():
        retry = spec.get("retry") or {}
        attempts = int(retry.get("attempts", 1))
        delay, factor = float(retry.get("delay_seconds", 0)), float(retry.get("backoff_factor", 1))
        waits = sum(delay * factor**i for i in range(attempts - 1))
        longest = max(longest, attempts * float(spec["timeout_seconds"]) + waits)
    llm = _platform()["llm"]

    def number(value: Any) -> float:  # "${UICI_LLM_TIMEOUT_SECONDS:-30}" -> 30
        text = str(value)
        match = re.fullmatch(r"\$\{[A-Z0-9_]+:-([0-9.]+)\}", text)
        return float(match.group(1) if match else text)

    # Each wait between LLM attempts is capped by max_retry_after_seconds.
    llm_attempts = 1 + number(llm["max_retries"])
    llm_seconds = llm_attempts * number(llm["timeout_seconds"])
    llm_seconds += (llm_attempts - 1) * number(llm["max_retry_after_seconds"])
    return max(longest, llm_seconds)


def readiness_timeout_seconds() -> float:
    return float(_platform()["api"]["readiness_timeout_seconds"])


def _mounts_by_path(pod: Manifest, container: Manifest) -> dict[str, Manifest]:
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    return {
        m["mountPath"]: {**m, "volume": volumes.get(m["name"], {})}
        for m in container.get("volumeMounts") or []
    }


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _env(container: Manifest) -> dict[str, Manifest]:
    return {e["name"]: e for e in container.get("env") or []}


def _labels_match(selector: Manifest | None, labels: dict[str, str]) -> bool:
    """A LabelSelector's matchLabels (UICI's selectors use nothing else) against labels."""
    selector = selector or {}
    if selector.get("matchExpressions"):
        return False
    match = selector.get("matchLabels") or {}
    return bool(match) and match.items() <= labels.items()


def uici_deployments(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d.kind == "Deployment"]


def container_problems(doc: Doc) -> list[str]:
    """What every UICI container must be, the API's and the workers': its configuration from
    the ConfigMap, credentials and the store only from Secrets, no SQLite and no pod-local
    state, non-root on a read-only root filesystem."""
    from infrastructure.configuration.loader import CONFIG_DIR_VARIABLE, resolve_config_dir

    label = doc.label
    pod = doc.body["spec"]["template"]["spec"]
    problems: list[str] = []
    if pod.get("initContainers") or pod.get("ephemeralContainers"):
        problems.append(f"{label}: init or ephemeral containers are not reviewed")
    if pod.get("serviceAccountName") != "uici":
        problems.append(
            f"{label}: serviceAccountName {pod.get('serviceAccountName')!r}, expected 'uici'"
        )
    if pod.get("automountServiceAccountToken") is False:
        problems.append(f"{label}: the token is not mounted, in_cluster access would fail")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{label}: {flag}")
    for volume in pod.get("volumes") or []:
        projected = [s.get("secret") for s in (volume.get("projected") or {}).get("sources") or []]
        for secret in [volume.get("secret"), *projected]:
            if secret is not None:
                problems.append(f"{label}: volume {volume['name']} mounts a Secret")
        if "hostPath" in volume:
            problems.append(f"{label}: volume {volume['name']} is a hostPath")
        if "persistentVolumeClaim" in volume:
            problems.append(
                f"{label}: volume {volume['name']} is a PersistentVolumeClaim; the store is "
                "PostgreSQL and the pods keep no state"
            )

    pod_security = pod.get("securityContext") or {}
    if not pod.get("containers"):
        problems.append(f"{label}: no container")
    for container in pod.get("containers") or []:
        where = f"{label} container {container.get('name')}"
        env = _env(container)
        mounts = _mounts_by_path(pod, container)

        # The configuration: UICI_CONFIG_DIR names the directory where the whole ConfigMap is.
        config_dir = (env.get(CONFIG_DIR_VARIABLE) or {}).get("value")
        mount = mounts.get(str(config_dir)) if config_dir else None
        if mount is None:
            problems.append(f"{where}: {CONFIG_DIR_VARIABLE} does not name a mounted directory")
        else:
            source = mount["volume"].get("configMap") or {}
            if source.get("name") != CONFIGMAP_NAME or source.get("items") or mount.get("subPath"):
                problems.append(
                    f"{where}: {config_dir} is not the whole ConfigMap {CONFIGMAP_NAME} (subPath and items stop updates or drop files)"
                )
            if not mount.get("readOnly"):
                problems.append(f"{where}: the configuration mount is writable")
            if resolve_config_dir(None, {CONFIG_DIR_VARIABLE: str(config_dir)}) != Path(
                str(config_dir)
            ):
                problems.append(f"{where}: UICI would not read its configuration from {config_dir}")

        # The store: PostgreSQL, its URL only from the Secret uici-storage.
        storage = env.get("UICI_STORAGE_URL")
        storage_ref = ((storage or {}).get("valueFrom") or {}).get("secretKeyRef")
        if storage is None:
            problems.append(
                f"{where}: no UICI_STORAGE_URL (platform.yml would fall back to SQLite on the pod)"
            )
        elif storage_ref is None:
            problems.append(f"{where}: UICI_STORAGE_URL must come from a secretKeyRef, not a value")
        else:
            if (storage_ref.get("name"), storage_ref.get("key")) != (STORAGE_SECRET, STORAGE_KEY):
                problems.append(
                    f"{where}: UICI_STORAGE_URL reads {storage_ref.get('name')!r} key "
                    f"{storage_ref.get('key')!r}, expected Secret {STORAGE_SECRET!r} key {STORAGE_KEY!r}"
                )
            if storage_ref.get("optional"):
                problems.append(f"{where}: UICI_STORAGE_URL is optional (SQLite fallback)")

        # Other credentials: only references to uici-secrets, keys named as the variables.
        for name, entry in env.items():
            if "sqlite" in json.dumps(entry).lower():
                problems.append(f"{where}: {name} names SQLite; the store is PostgreSQL")
            if name == "UICI_STORAGE_URL":
                continue
            ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                if name in secret_variables() or re.search(r"KEY|TOKEN|PASSWORD|SECRET", name):
                    problems.append(f"{where}: {name} must come from a secretKeyRef, not a value")
                continue
            if ref.get("name") != SECRET_NAME:
                problems.append(
                    f"{where}: {name} reads Secret {ref.get('name')!r}, only {SECRET_NAME!r} is used"
                )
            if ref.get("key") != name:
                problems.append(
                    f"{where}: {name} reads key {ref.get('key')!r}; keys are named as the variables"
                )
        for source in container.get("envFrom") or []:
            if "secretRef" in source and source["secretRef"].get("name") != SECRET_NAME:
                problems.append(f"{where}: envFrom Secret {source['secretRef'].get('name')!r}")

        # Writable only on emptyDir scratch volumes; never a store there.
        writable = [
            path
            for path, m in mounts.items()
            if "emptyDir" in m["volume"] and not m.get("readOnly")
        ]
        prefect_home = (env.get("PREFECT_HOME") or {}).get("value") or ""
        if not prefect_home.startswith("/") or not any(_under(prefect_home, w) for w in writable):
            problems.append(
                f"{where}: PREFECT_HOME {prefect_home!r} is not on a writable emptyDir {writable}"
            )
        for path, m in mounts.items():
            if "emptyDir" in m["volume"] and re.search(r"uici|state|data|db", path):
                problems.append(
                    f"{where}: emptyDir {m['name']} at {path} looks like a store on the pod"
                )
        if "PREFECT_API_URL" not in env:
            problems.append(f"{where}: no PREFECT_API_URL")

        security = container.get("securityContext") or {}
        actual: dict[str, Any] = {
            "pod runAsNonRoot": pod_security.get("runAsNonRoot"),
            "pod seccompProfile": (pod_security.get("seccompProfile") or {}).get("type"),
            "allowPrivilegeEscalation": security.get("allowPrivilegeEscalation"),
            "readOnlyRootFilesystem": security.get("readOnlyRootFilesystem"),
            "capabilities.drop": (security.get("capabilities") or {}).get("drop"),
            "seccompProfile": (security.get("seccompProfile") or {}).get("type", "RuntimeDefault"),
        }
        wanted: dict[str, Any] = {
            "pod runAsNonRoot": True,
            "pod seccompProfile": "RuntimeDefault",
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities.drop": ["ALL"],
            "seccompProfile": "RuntimeDefault",
        }
        for key, value in wanted.items():
            if actual[key] != value:
                problems.append(
                    f"{where}: securityContext {key} is {actual[key]!r}, expected {value!r}"
                )
        if (security.get("capabilities") or {}).get("add") or security.get("privileged"):
            problems.append(f"{where}: adds capabilities or runs privileged")
        user = security.get("runAsUser", pod_security.get("runAsUser"))
        if security.get("runAsNonRoot") is False or not isinstance(user, int) or user == 0:
            problems.append(
                f"{where}: needs a non-zero numeric runAsUser so the kubelet can verify runAsNonRoot"
            )

        resources = container.get("resources") or {}
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (resources.get(bound) or {}):
                    problems.append(f"{where}: no {bound}.{resource}")
    return problems


def _http_probe(
    where: str, container: Manifest, probe: str, routes: Routes, problems: list[str]
) -> str | None:
    """The probe's GET path, checked to be a route of the process and on the container's port
    (its port as the process serves it is checked by the callers)."""
    action = (container.get(probe) or {}).get("httpGet")
    if action is None:
        problems.append(f"{where}: no httpGet {probe}")
        return None
    path = str(action.get("path"))
    if ("GET", path) not in routes:
        problems.append(f"{where}: {probe} GET {path} is no route of the process")
    return path


def _probe_port(container: Manifest, probe: str) -> Any:
    port = ((container.get(probe) or {}).get("httpGet") or {}).get("port")
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
    return ports.get(port, port)


def _rolls_without_downtime(doc: Doc, problems: list[str]) -> None:
    spec = doc.body["spec"]
    strategy = spec.get("strategy") or {}
    rolling = strategy.get("rollingUpdate") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        problems.append(f"{doc.label}: strategy {strategy.get('type')!r}, expected RollingUpdate")
    elif rolling.get("maxUnavailable") not in (0, "0%"):
        problems.append(
            f"{doc.label}: rollingUpdate.maxUnavailable {rolling.get('maxUnavailable', '25%')!r},"
            " expected 0 (no pod goes before its replacement is ready)"
        )
    elif rolling.get("maxSurge") in (None, 0, "0%"):
        problems.append(f"{doc.label}: rollingUpdate.maxSurge must be at least 1")


def _spreads(doc: Doc, labels: dict[str, str], problems: list[str]) -> None:
    """Preferably one pod per node: a topology spread over hostnames, or preferred pod
    anti-affinity, selecting the Deployment's own pods; never a hard rule that leaves pods
    pending on a small cluster."""
    pod = doc.body["spec"]["template"]["spec"]
    spread = [
        c
        for c in pod.get("topologySpreadConstraints") or []
        if c.get("topologyKey") == "kubernetes.io/hostname"
        and _labels_match(c.get("labelSelector"), labels)
    ]
    anti = (pod.get("affinity") or {}).get("podAntiAffinity") or {}
    preferred = [
        term
        for term in anti.get("preferredDuringSchedulingIgnoredDuringExecution") or []
        if (term.get("podAffinityTerm") or {}).get("topologyKey") == "kubernetes.io/hostname"
        and _labels_match((term.get("podAffinityTerm") or {}).get("labelSelector"), labels)
    ]
    if not spread and not preferred:
        problems.append(
            f"{doc.label}: no topology spread or preferred pod anti-affinity across nodes "
            "selecting its own pods"
        )
    hard = [c for c in spread if c.get("whenUnsatisfiable", "DoNotSchedule") == "DoNotSchedule"]
    if hard or anti.get("requiredDuringSchedulingIgnoredDuringExecution"):
        problems.append(
            f"{doc.label}: a hard spreading rule leaves pods pending on a one-node cluster; "
            "use ScheduleAnyway or preferred anti-affinity"
        )


def api_problems(docs: list[Doc], routes: Routes) -> list[str]:
    """The API: at least two replicas, rolled without downtime, kept by a PodDisruptionBudget,
    spread across nodes, with probes that match what the service checks."""
    doc = find(docs, "Deployment", API_DEPLOYMENT)
    label = doc.label
    spec = doc.body["spec"]
    template = spec["template"]
    labels = template["metadata"].get("labels") or {}
    problems: list[str] = []
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 2:
        problems.append(f"{label}: replicas {replicas!r}, expected at least 2")
    _rolls_without_downtime(doc, problems)
    _spreads(doc, labels, problems)
    if not _labels_match(spec.get("selector"), labels):
        problems.append(f"{label}: the selector does not select its own pod template")

    budgets = [
        d
        for d in docs
        if d.kind == "PodDisruptionBudget"
        and d.namespace == doc.namespace
        and _labels_match((d.body.get("spec") or {}).get("selector"), labels)
    ]
    if not budgets:
        problems.append(f"{label}: no PodDisruptionBudget selects the API pods")
    for budget in budgets:
        rules = budget.body["spec"]
        minimum, unavailable = rules.get("minAvailable"), rules.get("maxUnavailable")
        if isinstance(minimum, int) and isinstance(replicas, int):
            if not 1 <= minimum < replicas:
                problems.append(
                    f"{budget.label}: minAvailable {minimum} with {replicas} replicas "
                    "(below 1 keeps nothing up, at the replica count no node can be drained)"
                )
        elif unavailable != 1:
            problems.append(f"{budget.label}: expected minAvailable 1 (or maxUnavailable 1)")

    containers = template["spec"].get("containers") or []
    if [c.get("name") for c in containers] != ["uici"]:
        return [*problems, f"{label}: expected exactly one container, uici"]
    container = containers[0]
    where = f"{label} container uici"
    if container.get("workingDir") and not any(
        _under(container["workingDir"], m["mountPath"]) for m in container.get("volumeMounts") or []
    ):
        problems.append(f"{where}: workingDir {container['workingDir']} is on the root filesystem")

    # Liveness: the process answers, nothing else (a database outage must not restart the
    # pods). Readiness: the store takes writes and the configuration is valid.
    liveness = _http_probe(where, container, "livenessProbe", routes, problems)
    readiness = _http_probe(where, container, "readinessProbe", routes, problems)
    if liveness is not None and (liveness.startswith("/health/") or liveness == readiness):
        problems.append(
            f"{where}: livenessProbe GET {liveness} checks dependencies; liveness is GET /health"
        )
    if readiness is not None and readiness != "/health/ready":
        problems.append(f"{where}: readinessProbe GET {readiness}, expected /health/ready")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container and _probe_port(container, probe) != SERVICE_PORT:
            problems.append(f"{where}: {probe} port is not the container's {SERVICE_PORT}")
    ready = container.get("readinessProbe") or {}
    if ready.get("timeoutSeconds", 1) <= readiness_timeout_seconds():
        problems.append(
            f"{where}: readinessProbe timeoutSeconds {ready.get('timeoutSeconds', 1)} is not above "
            f"api.readiness_timeout_seconds {readiness_timeout_seconds():g} (a slow store would "
            "read as a failed probe, not a failed check)"
        )
    live = container.get("livenessProbe") or {}
    window = live.get("failureThreshold", 3) * live.get("periodSeconds", 10)
    if window < MIN_LIVENESS_WINDOW_SECONDS or live.get("timeoutSeconds", 1) < 2:
        problems.append(
            f"{where}: livenessProbe restarts after {window} s (timeout "
            f"{live.get('timeoutSeconds', 1)} s); give it at least {MIN_LIVENESS_WINDOW_SECONDS} s"
        )
    if "startupProbe" not in container:
        problems.append(f"{where}: no startupProbe (the schema migration runs at start-up)")
    return problems


def worker_problems(docs: list[Doc]) -> list[str]:
    """The workers: `prefect worker start` on UICI's pool with its health server, probed where
    Prefect serves it, the flows where prefect.yaml says, and time to finish a flow step."""
    from prefect.cli.worker import worker_app

    doc = find(docs, "Deployment", WORKER_DEPLOYMENT)
    label = doc.label
    spec = doc.body["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels") or {}
    problems: list[str] = []
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or not 2 <= replicas <= 3:
        problems.append(f"{label}: replicas {replicas!r}, expected 2 or 3")
    _rolls_without_downtime(doc, problems)
    _spreads(doc, labels, problems)
    if not _labels_match(spec.get("selector"), labels):
        problems.append(f"{label}: the selector does not select its own pod template")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < longest_step_seconds():
        problems.append(
            f"{label}: terminationGracePeriodSeconds {grace} is shorter than a flow step "
            f"({longest_step_seconds():g} s)"
        )

    containers = pod.get("containers") or []
    if len(containers) != 1:
        return [*problems, f"{label}: expected exactly one container"]
    container = containers[0]
    where = f"{label} container {container.get('name')}"
    env = {name: str(e.get("value")) for name, e in _env(container).items() if "value" in e}
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    if argv[:3] != ["prefect", "worker", "start"]:
        problems.append(f"{where}: command {argv}, expected prefect worker start ...")
    else:
        # Prefect's own CLI parses the options: one it does not have fails here.
        try:
            _, bound, _ = worker_app.parse_args(argv[2:], exit_on_error=False, print_error=False)
        except Exception as exc:
            problems.append(f"{where}: prefect worker start rejects {argv[3:]}: {exc}")
        else:
            options = bound.arguments
            if options.get("work_pool_name") != WORKER_POOL:
                problems.append(
                    f"{where}: polls pool {options.get('work_pool_name')!r}, prefect.yaml deploys "
                    f"to {WORKER_POOL!r}"
                )
            if options.get("worker_type") not in (None, "process"):
                problems.append(f"{where}: worker type {options.get('worker_type')!r}")
            if not options.get("with_healthcheck"):
                problems.append(f"{where}: no --with-healthcheck, nothing answers the probe")

    path = _http_probe(where, container, "livenessProbe", worker_health_routes(), problems)
    port = worker_health_port(env)
    if path is not None and _probe_port(container, "livenessProbe") != port:
        problems.append(
            f"{where}: livenessProbe port {_probe_port(container, 'livenessProbe')!r}, the "
            f"worker's health server listens on {port} (PREFECT_WORKER_WEBSERVER_PORT)"
        )

    # Where the flow runs find prefect.yaml's entrypoints: prefect.yaml's pull step and
    # working_dir are UICI_PROJECT_DIR.
    project = env.get(PROJECT_DIR_VARIABLE)
    if not project:
        problems.append(f"{where}: no {PROJECT_DIR_VARIABLE} (prefect.yaml's pull step)")
    elif container.get("workingDir") != project:
        problems.append(
            f"{where}: workingDir {container.get('workingDir')!r} is not {PROJECT_DIR_VARIABLE}"
            f" {project!r} (where `prefect deploy` finds prefect.yaml)"
        )
    return problems


def deployment_problems(docs: list[Doc], routes: Routes) -> list[str]:
    problems: list[str] = []
    deployments = uici_deployments(docs)
    for name in (API_DEPLOYMENT, WORKER_DEPLOYMENT):
        if not any(d.name == name for d in deployments):
            problems.append(f"no Deployment {name} in the manifests")
    for doc in deployments:
        problems.extend(container_problems(doc))
    if any(d.name == API_DEPLOYMENT for d in deployments):
        problems.extend(api_problems(docs, routes))
        api = find(docs, "Deployment", API_DEPLOYMENT)
        env = _env(api.body["spec"]["template"]["spec"]["containers"][0])
        from_secret = {
            n for n, e in env.items() if "secretKeyRef" in (e.get("valueFrom") or {})
        } - {"UICI_STORAGE_URL"}
        if from_secret != secret_variables():
            problems.append(
                f"{api.label}: secret variables {sorted(from_secret)}, the configuration references {sorted(secret_variables())}"
            )
    if any(d.name == WORKER_DEPLOYMENT for d in deployments):
        problems.extend(worker_problems(docs))
    images = {
        c.get("image")
        for d in deployments
        for c in d.body["spec"]["template"]["spec"].get("containers") or []
    }
    if len(images) != 1:
        problems.append(f"the Deployments run different images {sorted(map(str, images))}")
    return problems


def test_deployments_run_uici_as_it_reads_its_configuration(
    docs: list[Doc], routes: Routes
) -> None:
    _assert_no_problems(deployment_problems(docs, routes))


def test_api_command_is_a_real_uici_serve_invocation(docs: list[Doc]) -> None:
    import typer

    from agent.cli.main import app

    container = _container(docs)
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    assert argv[:2] == ["uici", "serve"], argv
    # The real CLI parses the options: an option it does not have fails here.
    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    parsed = serve.make_context("serve", argv[2:]).params
    assert parsed["host"] == "0.0.0.0"
    assert parsed["port"] == SERVICE_PORT
    assert {p["containerPort"] for p in container["ports"]} == {SERVICE_PORT}


def test_liveness_answers_while_the_store_is_away(
    docs: list[Doc], service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe paths of deployment.yaml against the real app: both answer 200 while the
    store is there; with every connection to it failing, readiness turns 503 and liveness
    stays 200, so the kubelet takes the pods out of the Service and never restarts them."""
    from sqlalchemy.exc import OperationalError

    container = _container(docs)
    live = container["livenessProbe"]["httpGet"]["path"]
    ready = container["readinessProbe"]["httpGet"]["path"]
    assert service.get(live).status_code == 200
    assert service.get(ready).status_code == 200

    def away(*_: Any, **__: Any) -> Any:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    database = service.app.state.uici.store.database
    monkeypatch.setattr(database, "connect", away)
    monkeypatch.setattr(database, "transaction", away)
    answer = service.get(ready)
    assert answer.status_code == 503, answer.text
    store = next(c for c in answer.json()["checks"] if c["name"] == "store")
    assert not store["ok"] and "connection refused" in store["detail"]
    assert service.get(live).status_code == 200


def test_worker_health_server_answers_the_probe(docs: list[Doc]) -> None:
    """Prefect's worker health server, built as `--with-healthcheck` builds it: the probe's
    path answers 200 while the worker polls and 503 once it stopped."""
    from fastapi.testclient import TestClient
    from prefect.workers.server import _build_healthcheck_server

    container = find(docs, "Deployment", WORKER_DEPLOYMENT).body["spec"]["template"]["spec"][
        "containers"
    ][0]
    path = container["livenessProbe"]["httpGet"]["path"]
    for healthy, status in ((True, 200), (False, 503)):

        def is_healthy(answer: bool = healthy) -> bool:
            return answer

        app: Any = _build_healthcheck_server(is_healthy).config.app
        assert TestClient(app).get(path).status_code == status


def test_image_is_the_repository_version_built_with_the_flows(docs: list[Doc]) -> None:
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]
    for doc in uici_deployments(docs):
        for container in doc.body["spec"]["template"]["spec"]["containers"]:
            assert container["image"] == f"uici:{version}", doc.label
    assert not list(K8S_DIR.glob("Dockerfile*")), "the Dockerfile is deployments/docker/"
    for path in K8S_DIR.glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        assert "deployments/kubernetes/Dockerfile" not in text, path.name
    # The workers' flow runs import prefect.yaml's entrypoints from UICI_PROJECT_DIR: the
    # image must have them there.
    worker = find(docs, "Deployment", WORKER_DEPLOYMENT).body["spec"]["template"]["spec"]
    project = next(
        e["value"] for e in worker["containers"][0]["env"] if e["name"] == PROJECT_DIR_VARIABLE
    )
    prefect_yaml = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    assert f"${PROJECT_DIR_VARIABLE}" in json.dumps(prefect_yaml["pull"])
    for deployment in prefect_yaml["deployments"]:
        assert deployment["work_pool"]["name"] == WORKER_POOL
        assert (REPO_ROOT / deployment["entrypoint"].split(":")[0]).is_file()
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", dockerfile, re.MULTILINE)
    assert project in workdirs, f"{DOCKERFILE}: no WORKDIR {project} ({workdirs})"
    for needed in ("prefect.yaml", "flows", "tasks"):
        assert re.search(rf"^COPY\b.*\b{re.escape(needed)}\b", dockerfile, re.MULTILINE), (
            f"{DOCKERFILE} does not copy {needed} into the image"
        )


def test_service_routes_to_the_api_pods_only(docs: list[Doc], routes: Routes) -> None:
    service = find(docs, "Service", "uici").body
    api = find(docs, "Deployment", API_DEPLOYMENT).body["spec"]["template"]
    worker = find(docs, "Deployment", WORKER_DEPLOYMENT).body["spec"]["template"]
    assert service["spec"]["type"] == "ClusterIP"
    selector = {"matchLabels": service["spec"]["selector"]}
    assert _labels_match(selector, api["metadata"]["labels"])
    assert not _labels_match(selector, worker["metadata"]["labels"]), "the Service selects workers"
    (port,) = service["spec"]["ports"]
    assert port["port"] == SERVICE_PORT
    ports = {p["name"]: p["containerPort"] for p in api["spec"]["containers"][0]["ports"]}
    assert ports.get(port["targetPort"], port["targetPort"]) == SERVICE_PORT
    assert ("POST", "/webhooks/alertmanager") in routes
    # No budget selects the other Deployment's pods by accident.
    for budget in (d for d in docs if d.kind == "PodDisruptionBudget"):
        selector = budget.body["spec"]["selector"]
        assert _labels_match(selector, api["metadata"]["labels"]) != _labels_match(
            selector, worker["metadata"]["labels"]
        ), budget.label


def test_readme_creates_every_secret_key(docs: list[Doc]) -> None:
    readme = (K8S_DIR / "README.md").read_text(encoding="utf-8")
    assert f"kubectl create secret generic {SECRET_NAME}" in readme
    for name in sorted(secret_variables()):
        assert f"--from-literal={name}=" in readme, f"README.md does not show how to set {name}"
    assert f"kubectl create secret generic {STORAGE_SECRET}" in readme
    assert f"--from-literal={STORAGE_KEY}=postgresql://" in readme
    assert "kubectl apply -k deployments/kubernetes/" in readme
    assert REGENERATE in readme


def _api(docs: list[Doc]) -> Manifest:
    spec: Manifest = find(docs, "Deployment", API_DEPLOYMENT).body["spec"]
    return spec


def _worker(docs: list[Doc]) -> Manifest:
    container: Manifest = find(docs, "Deployment", WORKER_DEPLOYMENT).body["spec"]["template"][
        "spec"
    ]["containers"][0]
    return container


def _env_entry(container: Manifest, name: str) -> Manifest:
    entry: Manifest = next(e for e in container["env"] if e["name"] == name)
    return entry


def _privilege_escalation(docs: list[Doc]) -> None:
    _container(docs)["securityContext"]["allowPrivilegeEscalation"] = True


def _other_secret(docs: list[Doc]) -> None:
    env = _container(docs)["env"]
    next(e for e in env if e["name"] == "UICI_READER_KEY_SHA256")["valueFrom"]["secretKeyRef"][
        "name"
    ] = "prod-db"


def _plain_secret(docs: list[Doc]) -> None:
    env = _container(docs)["env"]
    index = next(i for i, e in enumerate(env) if e["name"] == "UICI_LLM_API_KEY")
    env[index] = {"name": "UICI_LLM_API_KEY", "value": "sk-123"}


def _missing_probe_route(docs: list[Doc]) -> None:
    _container(docs)["readinessProbe"]["httpGet"]["path"] = "/healthz"


def _liveness_on_readiness(docs: list[Doc]) -> None:
    _container(docs)["livenessProbe"]["httpGet"]["path"] = "/health/ready"


def _hasty_liveness(docs: list[Doc]) -> None:
    _container(docs)["livenessProbe"].update(periodSeconds=5, failureThreshold=1)


def _short_readiness_timeout(docs: list[Doc]) -> None:
    _container(docs)["readinessProbe"]["timeoutSeconds"] = 1


def _config_elsewhere(docs: list[Doc]) -> None:
    _env_entry(_container(docs), "UICI_CONFIG_DIR")["value"] = "/config"


def _sqlite_store(docs: list[Doc]) -> None:
    entry = _env_entry(_worker(docs), "UICI_STORAGE_URL")
    entry.clear()
    entry.update(name="UICI_STORAGE_URL", value="sqlite:////var/lib/uici/uici.db")
    pod = find(docs, "Deployment", WORKER_DEPLOYMENT).body["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "state", "emptyDir": {}})
    _worker(docs)["volumeMounts"].append({"name": "state", "mountPath": "/var/lib/uici"})


def _storage_other_key(docs: list[Doc]) -> None:
    _env_entry(_container(docs), "UICI_STORAGE_URL")["valueFrom"]["secretKeyRef"]["key"] = "dsn"


def _no_storage(docs: list[Doc]) -> None:
    _worker(docs)["env"].remove(_env_entry(_worker(docs), "UICI_STORAGE_URL"))


def _one_replica(docs: list[Doc]) -> None:
    _api(docs)["replicas"] = 1


def _recreate(docs: list[Doc]) -> None:
    _api(docs)["strategy"] = {"type": "Recreate"}


def _max_unavailable(docs: list[Doc]) -> None:
    _api(docs)["strategy"]["rollingUpdate"]["maxUnavailable"] = 1


def _no_budget(docs: list[Doc]) -> None:
    docs.remove(find(docs, "PodDisruptionBudget", "uici"))


def _budget_selects_nothing(docs: list[Doc]) -> None:
    find(docs, "PodDisruptionBudget", "uici").body["spec"]["selector"]["matchLabels"][
        "app.kubernetes.io/component"
    ] = "api"


def _budget_blocks_drains(docs: list[Doc]) -> None:
    find(docs, "PodDisruptionBudget", "uici").body["spec"]["minAvailable"] = 2


def _no_spread(docs: list[Doc]) -> None:
    del _api(docs)["template"]["spec"]["topologySpreadConstraints"]


def _hard_spread(docs: list[Doc]) -> None:
    for constraint in _api(docs)["template"]["spec"]["topologySpreadConstraints"]:
        constraint["whenUnsatisfiable"] = "DoNotSchedule"


def _no_worker(docs: list[Doc]) -> None:
    docs.remove(find(docs, "Deployment", WORKER_DEPLOYMENT))


def _other_pool(docs: list[Doc]) -> None:
    command = _worker(docs)["command"]
    command[command.index("--pool") + 1] = "default"


def _no_healthcheck(docs: list[Doc]) -> None:
    _worker(docs)["command"].remove("--with-healthcheck")


def _misspelt_option(docs: list[Doc]) -> None:
    command = _worker(docs)["command"]
    command[command.index("--with-healthcheck")] = "--with-health-check"


def _worker_probe_path(docs: list[Doc]) -> None:
    _worker(docs)["livenessProbe"]["httpGet"]["path"] = "/health/ready"


def _worker_probe_port(docs: list[Doc]) -> None:
    _env_entry(_worker(docs), "PREFECT_WORKER_WEBSERVER_PORT")["value"] = "8081"


def _short_grace(docs: list[Doc]) -> None:
    find(docs, "Deployment", WORKER_DEPLOYMENT).body["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ] = 30


def _no_project_dir(docs: list[Doc]) -> None:
    _worker(docs)["env"].remove(_env_entry(_worker(docs), PROJECT_DIR_VARIABLE))


def _writable_root(docs: list[Doc]) -> None:
    _worker(docs)["securityContext"]["readOnlyRootFilesystem"] = False


def _worker_as_root(docs: list[Doc]) -> None:
    _worker(docs)["securityContext"]["runAsUser"] = 0


def _other_image(docs: list[Doc]) -> None:
    _worker(docs)["image"] = "uici:0.0.9"


def _worker_without_secret_config(docs: list[Doc]) -> None:
    _env_entry(_worker(docs), "UICI_LLM_API_KEY")["valueFrom"]["secretKeyRef"]["key"] = "llm"


DEPLOYMENT_BREAKAGES: dict[str, tuple[Callable[[list[Doc]], None], str]] = {
    "privilege escalation": (_privilege_escalation, "allowPrivilegeEscalation is True"),
    "another Secret": (_other_secret, "reads Secret 'prod-db'"),
    "a secret as a plain value": (_plain_secret, "UICI_LLM_API_KEY must come from a secretKeyRef"),
    "a probe path that is no route": (_missing_probe_route, "GET /healthz is no route"),
    "liveness on /health/ready": (_liveness_on_readiness, "livenessProbe GET /health/ready checks"),
    "a hasty liveness probe": (_hasty_liveness, "livenessProbe restarts after 5 s"),
    "readiness timeout under the checks'": (_short_readiness_timeout, "timeoutSeconds 1 is not"),
    "config dir not the mount": (
        _config_elsewhere,
        "UICI_CONFIG_DIR does not name a mounted directory",
    ),
    "an SQLite store on an emptyDir": (_sqlite_store, "UICI_STORAGE_URL names SQLite"),
    "the store as a plain value": (_sqlite_store, "UICI_STORAGE_URL must come from a secretKeyRef"),
    "an emptyDir at the store path": (_sqlite_store, "emptyDir state at /var/lib/uici"),
    "the store from another key": (_storage_other_key, "expected Secret 'uici-storage' key 'url'"),
    "no store at all": (_no_storage, "no UICI_STORAGE_URL"),
    "one API replica": (_one_replica, "replicas 1, expected at least 2"),
    "Recreate": (_recreate, "strategy 'Recreate', expected RollingUpdate"),
    "maxUnavailable 1": (_max_unavailable, "maxUnavailable 1, expected 0"),
    "no PodDisruptionBudget": (_no_budget, "no PodDisruptionBudget selects the API pods"),
    "a budget that selects nothing": (
        _budget_selects_nothing,
        "no PodDisruptionBudget selects the API pods",
    ),
    "a budget that blocks drains": (_budget_blocks_drains, "minAvailable 2 with 2 replicas"),
    "no spreading": (_no_spread, "no topology spread or preferred pod anti-affinity"),
    "hard spreading": (_hard_spread, "a hard spreading rule"),
    "no worker Deployment": (_no_worker, "no Deployment uici-worker"),
    "another pool": (_other_pool, "polls pool 'default'"),
    "no health server": (_no_healthcheck, "no --with-healthcheck"),
    "a misspelt worker option": (_misspelt_option, "prefect worker start rejects"),
    "worker probe path": (_worker_probe_path, "livenessProbe GET /health/ready is no route"),
    "worker probe port": (_worker_probe_port, "listens on 8081 (PREFECT_WORKER_WEBSERVER_PORT)"),
    "a grace period shorter than a step": (_short_grace, "terminationGracePeriodSeconds 30"),
    "no project directory": (_no_project_dir, "no UICI_PROJECT_DIR"),
    "a writable root filesystem": (_writable_root, "readOnlyRootFilesystem is False"),
    "a worker as root": (_worker_as_root, "needs a non-zero numeric runAsUser"),
    "different images": (_other_image, "the Deployments run different images"),
    "a key named otherwise": (_worker_without_secret_config, "reads key 'llm'"),
}


@pytest.mark.parametrize("breakage", sorted(DEPLOYMENT_BREAKAGES))
def test_deployment_check_reports_each_breakage(
    docs: list[Doc], routes: Routes, breakage: str
) -> None:
    mutate, expected = DEPLOYMENT_BREAKAGES[breakage]
    broken = [Doc(d.file, copy.deepcopy(d.body)) for d in kubernetes_docs(docs)]
    mutate(broken)
    problems = deployment_problems(broken, routes)
    assert any(expected in p for p in problems), f"{breakage}: not reported in {problems}"


# --- 5. kubectl -------------------------------------------------------------------------------
#
# No API server runs here, so kubectl talks to tests/k8s_double.py, which serves discovery and
# an OpenAPI v3 whose operations accept `fieldValidation`. Against it `kubectl apply
# --dry-run=client --validate=strict` proves that kubectl can read every file, that every
# kind exists at its apiVersion with the right scope, and what kubectl would send; the field
# by field check (unknown or misspelt fields) is kubectl's server-side one, which a client dry
# run never reaches: schema_problems above does it with the official client's models.

KUBECTL = REPO_ROOT / ".venv" / "bin" / "kubectl"


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    import subprocess

    from tests.k8s_double import KubeDouble

    home = tmp_path_factory.mktemp("kubectl")
    with KubeDouble() as double:
        kubeconfig = double.kubeconfig(home / "config")

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(KUBECTL), "--kubeconfig", str(kubeconfig), "--cache-dir", str(home), *args],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                cwd=REPO_ROOT,
            )

        yield run


def _object_names(docs: list[Doc]) -> list[str]:
    """What `kubectl ... -o name` prints for these objects: kind.group/name."""
    names = []
    for doc in docs:
        group = doc.body["apiVersion"].rpartition("/")[0]
        kind = doc.kind.lower()
        names.append(f"{kind}.{group}/{doc.name}" if group else f"{kind}/{doc.name}")
    return sorted(names)


def test_kustomize_builds_exactly_the_files(docs: list[Doc], kubectl: Callable[..., Any]) -> None:
    result = kubectl("kustomize", "deployments/kubernetes")
    assert result.returncode == 0, result.stderr
    built = [body for body in yaml.safe_load_all(result.stdout) if body]

    def key(body: Manifest) -> tuple[str, str, str]:
        meta = body["metadata"]
        return (body["kind"], meta.get("namespace", ""), meta["name"])

    expected = {key(d.body): d.body for d in kubernetes_docs(docs)}
    assert {key(b): b for b in built} == expected


def test_kubectl_apply_strict_dry_run(docs: list[Doc], kubectl: Callable[..., Any]) -> None:
    result = kubectl(
        "apply", "--dry-run=client", "--validate=strict", "-k", "deployments/kubernetes/",
        "-o", "name",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == _object_names(kubernetes_docs(docs))


def test_kubectl_refuses_a_kind_the_server_does_not_serve(
    tmp_path: Path, kubectl: Callable[..., Any]
) -> None:
    """What the kubectl check catches: an apiVersion that no longer exists (the
    PodDisruptionBudget's policy/v1beta1 was removed in Kubernetes 1.25): strict validation
    finds no schema for it, and without validation kubectl finds no such kind."""
    budget = next(yaml.safe_load_all((K8S_DIR / "pdb.yaml").read_text(encoding="utf-8")))
    budget["apiVersion"] = "policy/v1beta1"
    path = tmp_path / "pdb.yaml"
    path.write_text(yaml.safe_dump(budget), encoding="utf-8")
    strict = kubectl("apply", "--dry-run=client", "--validate=strict", "-f", str(path))
    assert strict.returncode == 1
    assert f'error validating "{path}"' in strict.stderr, strict.stderr
    unvalidated = kubectl("apply", "--dry-run=client", "--validate=false", "-f", str(path))
    assert unvalidated.returncode == 1
    assert 'no matches for kind "PodDisruptionBudget" in version "policy/v1beta1"' in (
        unvalidated.stderr
    ), unvalidated.stderr
