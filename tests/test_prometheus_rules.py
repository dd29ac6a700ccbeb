"""The Prometheus and Alertmanager files of deployments/prometheus/, checked by the real tools
(Debian's promtool and amtool): every rules file is valid, UICI's own alert rules pass their
unit tests (and those cover every alert firing and not firing), the example configurations
load, Alertmanager routes UICI's own alerts away from UICI, and every example rule for a
watched service fires with labels that UICI maps to an environment and a target."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.incidents.context import LabelConventions
from infrastructure.configuration.loader import load_config
from tests.conftest import REPO_ROOT, SHIPPED_CONFIG
from tests.promstack import ENSURE_SCRIPT, available

PROMETHEUS_DIR = REPO_ROOT / "deployments" / "prometheus"
UICI_RULES = PROMETHEUS_DIR / "uici-rules.yml"
UICI_RULES_TESTS = PROMETHEUS_DIR / "uici-rules.test.yml"
SERVICE_RULES = PROMETHEUS_DIR / "service-rules.example.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.example.yml"
ALERTMANAGER_CONFIG = PROMETHEUS_DIR / "alertmanager.example.yml"
# Rules files are the YAML files with rule groups; the unit tests and configurations are not.
RULE_FILES = sorted(
    p
    for p in PROMETHEUS_DIR.glob("*.yml")
    if isinstance(doc := yaml.safe_load(p.read_text()), dict) and "groups" in doc
)


@pytest.fixture(scope="module", autouse=True)
def prometheus_installed() -> None:
    result = subprocess.run(
        ["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0 or not available():
        pytest.fail(
            f"{ENSURE_SCRIPT} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}",
            pytrace=False,
        )


def run(*command: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def rules_of(path: Path) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def test_the_rules_files_are_found() -> None:
    assert {UICI_RULES, SERVICE_RULES} <= set(RULE_FILES)
    assert UICI_RULES_TESTS not in RULE_FILES and PROMETHEUS_CONFIG not in RULE_FILES


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_accepts_the_rules_file(path: Path) -> None:
    result = run("promtool", "check", "rules", path.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules_of(path))} rules found" in result.stdout


def test_every_uici_rule_is_labelled_for_routing_and_says_what_to_do() -> None:
    for rule in rules_of(UICI_RULES):
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        # alertmanager.example.yml sends component=uici to people, not to UICI's webhook.
        assert rule["labels"]["component"] == "uici", name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        assert rule.get("for"), f"{name} has no `for`"
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        assert anchor == name.lower(), name


def test_uici_rules_pass_their_unit_tests() -> None:
    result = run("promtool", "test", "rules", UICI_RULES_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_unit_tests_show_each_uici_alert_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(UICI_RULES_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules_of(UICI_RULES)}
    assert alerts - firing == set(), "never shown firing"
    assert alerts - quiet == set(), "never shown not firing"
    assert len(alerts) >= 10


def test_the_example_prometheus_configuration_loads_the_shipped_rules(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == [UICI_RULES.name, SERVICE_RULES.name]
    # UICIDown and the dashboard look for the job "uici".
    assert "uici" in [job["job_name"] for job in config["scrape_configs"]]
    # Checked where it is copied with its rule files: relative paths resolve next to it.
    for path in (PROMETHEUS_CONFIG, UICI_RULES, SERVICE_RULES):
        (tmp_path / path.name).write_text(path.read_text())
    result = run("promtool", "check", "config", PROMETHEUS_CONFIG.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout
    assert f"SUCCESS: {len(rules_of(UICI_RULES))} rules found" in result.stdout


def test_the_example_alertmanager_configuration_keeps_uici_alerts_away_from_uici() -> None:
    result = run("amtool", "check-config", ALERTMANAGER_CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    [uici] = [r for r in config["receivers"] if r["name"] == "uici"]
    [webhook] = uici["webhook_configs"]
    assert webhook["url"].endswith("/webhooks/alertmanager")
    # The key comes from a file, never from the configuration itself.
    assert set(webhook["http_config"]["authorization"]) == {"type", "credentials_file"}

    def receiver(*labels: str) -> str:
        routed = run(
            "amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG.name}",
            *labels,
        )  # fmt: skip
        assert routed.returncode == 0, routed.stdout + routed.stderr
        return routed.stdout.strip()

    assert receiver("alertname=ContainerDown", "uici_env=local-docker", "container=web") == "uici"
    for rule in rules_of(UICI_RULES):
        labels = [f"alertname={rule['alert']}", *(f"{k}={v}" for k, v in rule["labels"].items())]
        assert receiver(*labels) != "uici", rule["alert"]


# --- the example rules for watched services fire with labels UICI maps ------------------------

POD = "-7d9f8b6c4d-x2k9p"  # a Deployment's pod: ReplicaSet hash and pod suffix

# alert -> (input series for promtool as (series, values), when it fires, the labels it must
# fire with, the target UICI must make of them). Each case also has a series that must not fire
# (promtool expects exactly the alerts listed).
SERVICE_CASES: dict[str, tuple[list[tuple[str, str]], str, dict[str, str], str]] = {
    "ContainerDown": (
        [
            ('container_last_seen{name="web", job="cadvisor"}', "0+60x3 180x10"),
            ('container_last_seen{name="db", job="cadvisor"}', "0+60x13"),
        ],
        "8m",
        {"container": "web"},
        "web",
    ),
    "ContainerCrashLooping": (
        [
            ('container_start_time_seconds{name="api", job="cadvisor"}', "100 100 200 300 400 400"),
            ('container_start_time_seconds{name="db", job="cadvisor"}', "50x5"),
        ],
        "5m",
        {"container": "api"},
        "api",
    ),
    "ContainerMemoryNearLimit": (
        [
            ('container_memory_working_set_bytes{name="cache", job="cadvisor"}', "950x10"),
            ('container_spec_memory_limit_bytes{name="cache", job="cadvisor"}', "1000x10"),
            # No limit (0): never "near" it.
            ('container_memory_working_set_bytes{name="batch", job="cadvisor"}', "5000x10"),
            ('container_spec_memory_limit_bytes{name="batch", job="cadvisor"}', "0x10"),
        ],
        "7m",
        {"container": "cache"},
        "cache",
    ),
    "PodCrashLooping": (
        [
            (
                f'kube_pod_container_status_restarts_total{{namespace="shop", pod="checkout{POD}", container="app", job="kube-state-metrics"}}',
                "0+1x20",
            ),
            (
                'kube_pod_container_status_restarts_total{namespace="shop", pod="cart-5c6b7d8f9-abcde", container="app", job="kube-state-metrics"}',
                "2x20",
            ),
        ],
        "20m",
        {"namespace": "shop", "service": "checkout"},
        "shop/checkout",
    ),
    "ContainerOOMKilled": (
        [
            (
                'kube_pod_container_status_last_terminated_reason{namespace="shop", pod="cart-5c6b7d8f9-abcde", container="app", reason="OOMKilled", job="kube-state-metrics"}',
                "1x10",
            ),
            (
                'kube_pod_container_status_restarts_total{namespace="shop", pod="cart-5c6b7d8f9-abcde", container="app", job="kube-state-metrics"}',
                "0 0 0 0 0 1 1 1 1 1",
            ),
            # OOM-killed long ago, not restarted since.
            (
                f'kube_pod_container_status_last_terminated_reason{{namespace="shop", pod="search{POD}", container="app", reason="OOMKilled", job="kube-state-metrics"}}',
                "1x10",
            ),
            (
                f'kube_pod_container_status_restarts_total{{namespace="shop", pod="search{POD}", container="app", job="kube-state-metrics"}}',
                "4x10",
            ),
        ],
        "7m",
        {"namespace": "shop", "service": "cart"},
        "shop/cart",
    ),
    "PodMemoryNearLimit": (
        [
            (
                f'container_memory_working_set_bytes{{namespace="shop", pod="search{POD}", container="app", job="kubelet"}}',
                "950x10",
            ),
            (
                f'container_memory_working_set_bytes{{namespace="shop", pod="search{POD}", container="POD", job="kubelet"}}',
                "950x10",
            ),
            (
                f'kube_pod_container_resource_limits{{namespace="shop", pod="search{POD}", container="app", resource="memory", job="kube-state-metrics"}}',
                "1000x10",
            ),
            (
                f'kube_pod_container_resource_limits{{namespace="shop", pod="search{POD}", container="app", resource="cpu", job="kube-state-metrics"}}',
                "1x10",
            ),
        ],
        "7m",
        {"namespace": "shop", "service": "search"},
        "shop/search",
    ),
    "HighErrorRate": (
        [
            ('http_requests_total{service="web", code="500", job="web"}', "0+10x20"),
            ('http_requests_total{service="web", code="200", job="web"}', "0+90x20"),
            ('http_requests_total{service="api", code="500", job="api"}', "0+1x20"),
            ('http_requests_total{service="api", code="200", job="api"}', "0+99x20"),
        ],
        "12m",
        {"service": "web"},
        "web",
    ),
    "CheckoutErrorRate": (
        [
            ('http_requests_total{service="checkout", code="503", job="checkout"}', "0+2x20"),
            ('http_requests_total{service="checkout", code="200", job="checkout"}', "0+98x20"),
            ('http_requests_total{service="web", code="500", job="web"}', "0+50x20"),
        ],
        "12m",
        {"service": "checkout"},
        "checkout",
    ),
}


def test_every_example_service_rule_has_a_case() -> None:
    assert {rule["alert"] for rule in rules_of(SERVICE_RULES)} == set(SERVICE_CASES)


def test_example_service_rules_fire_with_the_labels_uici_maps(tmp_path: Path) -> None:
    config = load_config(SHIPPED_CONFIG, environ={})
    alerts = config.platform.alerts
    conventions = LabelConventions.from_config(config)
    rules = {rule["alert"]: rule for rule in rules_of(SERVICE_RULES)}
    # The labels are what this test is about: promtool compares annotations too, so the copy
    # it runs has none.
    document = yaml.safe_load(SERVICE_RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(document))
    tests = []
    expected: dict[str, tuple[dict[str, str], str]] = {}
    for name, (series, at, target_labels, target) in SERVICE_CASES.items():
        rule = rules[name]
        labels = {**rule["labels"], **target_labels}
        # What platform.yml maps: an environment label, a target label, a severity.
        assert set(rule["labels"]) & set(alerts.environment_labels), name
        assert set(target_labels) & set(alerts.target_labels), name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        expected[name] = (labels, target)
        tests.append(
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "alert_rule_test": [
                    {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": labels}]}
                ],
            }
        )
    unit = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "rules.test.yml").write_text(yaml.safe_dump(unit, sort_keys=False))
    result = run("promtool", "test", "rules", "rules.test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    # The labels each alert fires with (exactly those: promtool compared them), read by
    # UICI's label conventions: the environment and the target it would diagnose.
    for name, (labels, target) in expected.items():
        mapped = conventions.map({"alertname": name, **labels})
        assert mapped.environment == labels["uici_env"], name
        assert mapped.environment in config.environments.environments, name
        assert mapped.target == target, name
        declared = labels.get(alerts.dependencies_label or "", "")
        assert mapped.dependencies == [d for d in declared.split(",") if d], name
    assert expected["CheckoutErrorRate"][0]["uici_dependencies"] == "payments,db"
