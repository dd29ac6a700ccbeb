"""deployments/kubernetes/: least-privilege RBAC, valid Kubernetes objects, a ConfigMap in step
with infrastructure/config/, and a Deployment that runs `uici serve` the way UICI reads its
configuration. No cluster needed.

Every check is a function that returns problems (file, kind, name, what is wrong), so each one
is also fed broken manifests below: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import ast
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
APP_SOURCE = REPO_ROOT / "agent" / "service" / "app.py"
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


# --- 4. The Deployment ------------------------------------------------------------------------


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every `@app.<method>("/path")` in agent/service/app.py, read without
    building the app (that would open the store)."""
    routes = set()
    for node in ast.walk(ast.parse(APP_SOURCE.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            if (
                isinstance(decorator, ast.Call)
                and isinstance(decorator.func, ast.Attribute)
                and isinstance(decorator.func.value, ast.Name)
                and decorator.func.value.id == "app"
                and decorator.args
                and isinstance(decorator.args[0], ast.Constant)
            ):
                routes.add((decorator.func.attr.upper(), str(decorator.args[0].value)))
    return routes


def config_variables() -> set[str]:
    """Every ${VAR} the configuration files reference."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(CONFIG_DIR.glob("*.yml")))
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def secret_variables() -> set[str]:
    """The referenced variables that carry credentials: API key hashes and the LLM's key."""
    return {v for v in config_variables() if v.endswith(("_KEY_SHA256", "_API_KEY"))}


def _mounts_by_path(pod: Manifest, container: Manifest) -> dict[str, Manifest]:
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    return {
        m["mountPath"]: {**m, "volume": volumes.get(m["name"], {})}
        for m in container.get("volumeMounts") or []
    }


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def deployment_problems(docs: list[Doc]) -> list[str]:
    from agent.incidents.storage import sqlite_path
    from infrastructure.configuration.loader import CONFIG_DIR_VARIABLE, resolve_config_dir

    doc = find(docs, "Deployment", "uici")
    label = doc.label
    pod = doc.body["spec"]["template"]["spec"]
    problems: list[str] = []
    containers = pod.get("containers") or []
    if [c.get("name") for c in containers] != ["uici"] or pod.get("initContainers"):
        return [f"{label}: expected exactly one container, uici"]
    container = containers[0]
    env = {e["name"]: e for e in container.get("env") or []}
    mounts = _mounts_by_path(pod, container)

    if pod.get("serviceAccountName") != "uici":
        problems.append(
            f"{label}: serviceAccountName {pod.get('serviceAccountName')!r}, expected 'uici'"
        )
    if pod.get("automountServiceAccountToken") is False:
        problems.append(f"{label}: the token is not mounted, in_cluster access would fail")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{label}: {flag}")

    # The configuration: UICI_CONFIG_DIR names the directory where the whole ConfigMap is.
    config_dir = (env.get(CONFIG_DIR_VARIABLE) or {}).get("value")
    mount = mounts.get(str(config_dir)) if config_dir else None
    if mount is None:
        problems.append(f"{label}: {CONFIG_DIR_VARIABLE} does not name a mounted directory")
    else:
        source = mount["volume"].get("configMap") or {}
        if source.get("name") != CONFIGMAP_NAME or source.get("items") or mount.get("subPath"):
            problems.append(
                f"{label}: {config_dir} is not the whole ConfigMap {CONFIGMAP_NAME} (subPath and items stop updates or drop files)"
            )
        if not mount.get("readOnly"):
            problems.append(f"{label}: the configuration mount is writable")
        if resolve_config_dir(None, {CONFIG_DIR_VARIABLE: str(config_dir)}) != Path(
            str(config_dir)
        ):
            problems.append(f"{label}: UICI would not read its configuration from {config_dir}")

    # Secrets: only references to uici-secrets, one per credential the configuration uses.
    from_secret = set()
    for name, entry in env.items():
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            if name in secret_variables() or re.search(r"KEY|TOKEN|PASSWORD|SECRET", name):
                problems.append(f"{label}: {name} must come from a secretKeyRef, not a value")
            continue
        from_secret.add(name)
        if ref.get("name") != SECRET_NAME:
            problems.append(
                f"{label}: {name} reads Secret {ref.get('name')!r}, only {SECRET_NAME!r} is used"
            )
        if ref.get("key") != name:
            problems.append(
                f"{label}: {name} reads key {ref.get('key')!r}; keys are named as the variables"
            )
    if from_secret != secret_variables():
        problems.append(
            f"{label}: secret variables {sorted(from_secret)}, the configuration references {sorted(secret_variables())}"
        )
    for source in container.get("envFrom") or []:
        if "secretRef" in source and source["secretRef"].get("name") != SECRET_NAME:
            problems.append(f"{label}: envFrom Secret {source['secretRef'].get('name')!r}")
    for volume in pod.get("volumes") or []:
        projected = [s.get("secret") for s in (volume.get("projected") or {}).get("sources") or []]
        for secret in [volume.get("secret"), *projected]:
            if secret is not None:
                problems.append(f"{label}: volume {volume['name']} mounts a Secret")
        if "hostPath" in volume:
            problems.append(f"{label}: volume {volume['name']} is a hostPath")

    # Writable state only on emptyDir volumes (the root filesystem is read-only).
    writable = [
        path for path, m in mounts.items() if "emptyDir" in m["volume"] and not m.get("readOnly")
    ]
    storage = (env.get("UICI_STORAGE_URL") or {}).get("value")
    state_paths = {
        "UICI_STORAGE_URL": str(sqlite_path(storage)) if storage else "",
        "PREFECT_HOME": (env.get("PREFECT_HOME") or {}).get("value") or "",
        "workingDir": container.get("workingDir") or "",
    }
    for what, path in state_paths.items():
        if not path.startswith("/") or not any(_under(path, w) for w in writable):
            problems.append(f"{label}: {what} {path!r} is not on a writable emptyDir {writable}")
    if "PREFECT_API_URL" not in env:
        problems.append(f"{label}: no PREFECT_API_URL")

    pod_security = pod.get("securityContext") or {}
    security = container.get("securityContext") or {}
    expected_security: dict[str, Any] = {
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
        if expected_security[key] != value:
            problems.append(
                f"{label}: securityContext {key} is {expected_security[key]!r}, expected {value!r}"
            )
    if (security.get("capabilities") or {}).get("add") or security.get("privileged"):
        problems.append(f"{label}: adds capabilities or runs privileged")
    if (
        security.get("runAsNonRoot") is False
        or not isinstance(pod_security.get("runAsUser"), int)
        or pod_security.get("runAsUser") == 0
    ):
        problems.append(
            f"{label}: needs a non-zero numeric runAsUser so the kubelet can verify runAsNonRoot"
        )

    resources = container.get("resources") or {}
    for bound in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(bound) or {}):
                problems.append(f"{label}: no {bound}.{resource}")

    # Probes: liveness asks only whether the process answers; readiness checks dependencies.
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
    routes = app_routes()
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/health/ready")):
        action = (container.get(probe) or {}).get("httpGet") or {}
        if action.get("path") != path:
            problems.append(f"{label}: {probe} path {action.get('path')!r}, expected {path!r}")
        if action.get("path") and ("GET", action["path"]) not in routes:
            problems.append(
                f"{label}: {probe} GET {action['path']} is no route in agent/service/app.py"
            )
        port = action.get("port")
        if ports.get(port, port) != SERVICE_PORT:
            problems.append(f"{label}: {probe} port {port!r} is not the container's {SERVICE_PORT}")
    return problems


def test_deployment_runs_uici_as_it_reads_its_configuration(docs: list[Doc]) -> None:
    _assert_no_problems(deployment_problems(docs))


def test_deployment_command_is_a_real_uici_serve_invocation(docs: list[Doc]) -> None:
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


def test_image_is_the_repository_version(docs: list[Doc]) -> None:
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]
    assert _container(docs)["image"] == f"uici:{version}"
    assert (K8S_DIR / "Dockerfile").is_file()


def test_service_routes_to_the_pod(docs: list[Doc]) -> None:
    service = find(docs, "Service", "uici").body
    template = find(docs, "Deployment", "uici").body["spec"]["template"]
    assert service["spec"]["type"] == "ClusterIP"
    selector = service["spec"]["selector"]
    assert selector.items() <= template["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == SERVICE_PORT
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    assert ports.get(port["targetPort"], port["targetPort"]) == SERVICE_PORT
    assert ("POST", "/webhooks/alertmanager") in app_routes()


def test_readme_creates_every_secret_key(docs: list[Doc]) -> None:
    readme = (K8S_DIR / "README.md").read_text(encoding="utf-8")
    assert f"kubectl create secret generic {SECRET_NAME}" in readme
    for name in sorted(secret_variables()):
        assert f"--from-literal={name}=" in readme, f"README.md does not show how to set {name}"
    assert "kubectl apply -k deployments/kubernetes/" in readme
    assert REGENERATE in readme


def _privilege_escalation(docs: list[Doc]) -> None:
    _container(docs)["securityContext"]["allowPrivilegeEscalation"] = True


def _other_secret(docs: list[Doc]) -> None:
    env = _container(docs)["env"]
    next(e for e in env if "valueFrom" in e)["valueFrom"]["secretKeyRef"]["name"] = "prod-db"


def _plain_secret(docs: list[Doc]) -> None:
    env = _container(docs)["env"]
    index = next(i for i, e in enumerate(env) if e["name"] == "UICI_LLM_API_KEY")
    env[index] = {"name": "UICI_LLM_API_KEY", "value": "sk-123"}


def _missing_probe_route(docs: list[Doc]) -> None:
    _container(docs)["readinessProbe"]["httpGet"]["path"] = "/healthz"


def _config_elsewhere(docs: list[Doc]) -> None:
    env = _container(docs)["env"]
    next(e for e in env if e["name"] == "UICI_CONFIG_DIR")["value"] = "/config"


def _store_on_root(docs: list[Doc]) -> None:
    env = _container(docs)["env"]
    next(e for e in env if e["name"] == "UICI_STORAGE_URL")["value"] = "sqlite:///.uici/uici.db"


DEPLOYMENT_BREAKAGES: dict[str, tuple[Callable[[list[Doc]], None], str]] = {
    "privilege escalation": (_privilege_escalation, "allowPrivilegeEscalation is True"),
    "another Secret": (_other_secret, "reads Secret 'prod-db'"),
    "a secret as a plain value": (_plain_secret, "UICI_LLM_API_KEY must come from a secretKeyRef"),
    "a probe path that is no route": (_missing_probe_route, "GET /healthz is no route"),
    "config dir not the mount": (
        _config_elsewhere,
        "UICI_CONFIG_DIR does not name a mounted directory",
    ),
    "store on the read-only root": (
        _store_on_root,
        "UICI_STORAGE_URL '.uici/uici.db' is not on a writable emptyDir",
    ),
}


@pytest.mark.parametrize("breakage", sorted(DEPLOYMENT_BREAKAGES))
def test_deployment_check_reports_each_breakage(docs: list[Doc], breakage: str) -> None:
    mutate, expected = DEPLOYMENT_BREAKAGES[breakage]
    broken = [Doc(d.file, copy.deepcopy(d.body)) for d in kubernetes_docs(docs)]
    mutate(broken)
    problems = deployment_problems(broken)
    assert any(expected in p for p in problems), f"{breakage}: not reported in {problems}"
