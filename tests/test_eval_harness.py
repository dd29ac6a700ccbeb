"""`uici eval`: the scenario files, the scoring, and the replay / live / record modes.

Every test works on scenarios copied into tmp_path (the shipped corpus grows while others
work on it): a copy of a recorded corpus scenario with its expectations edited is replayed and
scored; the live and record modes create their failures on the real Docker engine.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from agent.cli.main import app
from agent.evaluation.scenarios import CORPUS_DIR, LIVE_PREFIX, RECORDING_FILE, SCENARIO_FILE
from tests.conftest import SHIPPED_CONFIG

runner = CliRunner()
# A recorded corpus scenario whose runbook diagnosis scores 100 %: the base of the edited copies.
MISSING_ENV = "missing-env-var-docker"


def uici_eval(*args: str, config_dir: Path | None = None) -> Result:
    prefix = ["--config-dir", str(config_dir)] if config_dir is not None else []
    return runner.invoke(app, [*prefix, "eval", *args])


def eval_json(*args: str, config_dir: Path | None = None) -> tuple[Result, dict[str, Any]]:
    result = uici_eval(*args, "--json", config_dir=config_dir)
    assert result.exit_code in (0, 1), result.stdout + result.stderr
    return result, json.loads(result.stdout)


def by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in data["results"]}


def copy_scenario(
    corpus: Path,
    source: str | Path,
    name: str,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """A copy of a scenario folder (a corpus name or a folder) named `name`, its
    scenario.yml edited by `edit`."""
    folder = source if isinstance(source, Path) else CORPUS_DIR / source
    target = corpus / name
    shutil.copytree(folder, target)
    path = target / SCENARIO_FILE
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["name"] = name
    if edit is not None:
        edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return target


def write_scenario(corpus: Path, data: dict[str, Any]) -> Path:
    folder = corpus / str(data["name"])
    folder.mkdir(parents=True)
    (folder / SCENARIO_FILE).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return folder


# --- broken scenario files ----------------------------------------------------------------------


def test_broken_scenario_files_are_all_reported_with_file_line_and_key(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    source = (CORPUS_DIR / MISSING_ENV / SCENARIO_FILE).read_text(encoding="utf-8")
    # An unknown key at the end of an otherwise valid scenario.
    unknown = corpus / "unknown-key" / SCENARIO_FILE
    unknown.parent.mkdir(parents=True)
    text = source.replace(f"name: {MISSING_ENV}", "name: unknown-key") + "colour: blue\n"
    unknown.write_text(text, encoding="utf-8")
    unknown_line = text.splitlines().index("colour: blue") + 1
    # No expectation at all.
    no_expect = corpus / "no-expect" / SCENARIO_FILE
    no_expect.parent.mkdir(parents=True)
    no_expect.write_text(
        source.replace(f"name: {MISSING_ENV}", "name: no-expect").split("\nexpect:")[0] + "\n",
        encoding="utf-8",
    )
    # A container without its command.
    no_command = corpus / "no-command" / SCENARIO_FILE
    no_command.parent.mkdir(parents=True)
    no_command.write_text(
        "name: no-command\n"
        "description: a container without a command\n"
        "environment: docker\n"
        "service: api\n"
        "alert: {alertname: ServiceDown}\n"
        "docker:\n"
        "  containers:\n"
        "    - name: api\n"
        "      restart: always\n"
        "  ready: {restarts: 3}\n"
        "expect: {class: missing_setting}\n",
        encoding="utf-8",
    )
    # A name its folder does not have.
    renamed = corpus / "the-folder" / SCENARIO_FILE
    renamed.parent.mkdir(parents=True)
    renamed.write_text(
        source.replace(f"name: {MISSING_ENV}", "name: another-name"), encoding="utf-8"
    )

    result = uici_eval("--corpus", str(corpus))
    assert result.exit_code == 2, result.stdout + result.stderr
    errors = result.stderr
    assert "invalid configuration: 4 problems" in errors
    assert f"{unknown}:{unknown_line}: colour: unknown key" in errors
    assert f"{no_expect}:1: expect: missing required key" in errors
    assert f"{no_command}:8: docker.containers[0].command: missing required key" in errors
    assert f"{renamed}:1: name: 'another-name' differs from its folder 'the-folder'" in errors
    # Nothing ran: no table, no score.
    assert "cause" not in result.stdout


def test_a_selection_naming_no_scenario_is_bad_input(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    copy_scenario(corpus, MISSING_ENV, "only-one")
    result = uici_eval("--corpus", str(corpus), "--only", "not-there")
    assert result.exit_code == 2
    assert "--only: no scenario named 'not-there'" in result.stderr
    listed = uici_eval("--corpus", str(corpus), "--list")
    assert listed.exit_code == 0
    assert listed.stdout.startswith("only-one  [missing_setting, docker]")


# --- scoring, on replays of edited copies -----------------------------------------------------


@pytest.fixture
def scored_corpus(tmp_path: Path) -> Path:
    """The recorded missing-env-var scenario unchanged, with the wrong class expected, and
    with a fact expected that its evidence does not contain."""
    corpus = tmp_path / "corpus"
    copy_scenario(corpus, MISSING_ENV, "as-recorded")

    def wrong_class(data: dict[str, Any]) -> None:
        data["expect"]["class"] = "dependency_down"

    def extra_fact(data: dict[str, Any]) -> None:
        data["expect"]["facts"] = ["DATABASE_URL", "REDIS_URL"]

    copy_scenario(corpus, MISSING_ENV, "wrong-class", wrong_class)
    copy_scenario(corpus, MISSING_ENV, "extra-fact", extra_fact)
    return corpus


def test_the_unchanged_copy_scores_100_percent_and_exits_0(
    scored_corpus: Path, tmp_path: Path
) -> None:
    markdown = tmp_path / "report.md"
    result, data = eval_json(
        "--corpus", str(scored_corpus), "--only", "as-recorded", "--markdown", str(markdown)
    )
    assert result.exit_code == 0, result.stderr
    assert "below the thresholds" not in result.stderr
    assert data["mode"] == "replay" and data["planner"] == "runbook"
    assert data["scores"] == {"cause": 1.0, "facts": 1.0, "safety": 1.0}
    [scored] = data["results"]
    assert scored["status"] == "scored"
    assert scored["cause_found"] and scored["facts_named"] and scored["safe"]
    assert scored["diagnosed_class"] == "missing_setting"
    assert scored["rule"] == "missing-configuration"
    assert "DATABASE_URL" in scored["root_cause"]
    assert scored["facts_missing"] == [] and scored["unsafe"] == []
    assert scored["replay_missing"] == []
    assert data["by_class"] == [
        {"failure_class": "missing_setting", "scenarios": 1, "cause": 1, "facts": 1, "safe": 1}
    ]
    assert data["by_rule"] == {"missing-configuration": ["as-recorded"]}
    text = markdown.read_text(encoding="utf-8")
    assert "| cause | 100.0% | 100% |" in text
    assert "## Per failure class" in text
    assert "| missing_setting | 1 | 1 | 1 | 1 |" in text
    assert "- **missing-configuration**: as-recorded" in text
    assert "## Misses" not in text


def test_a_wrong_class_and_a_fact_not_in_the_evidence_are_misses(scored_corpus: Path) -> None:
    result, data = eval_json("--corpus", str(scored_corpus))
    assert result.exit_code == 1
    assert "below the thresholds: cause 66.7% < 100%" in result.stderr
    assert "facts 66.7% < 95%" in result.stderr
    results = by_name(data)
    assert set(results) == {"as-recorded", "wrong-class", "extra-fact"}
    assert all(r["status"] == "scored" for r in results.values())

    wrong = results["wrong-class"]
    assert wrong["cause_found"] is False
    assert wrong["diagnosed_class"] == "missing_setting"
    assert wrong["failure_class"] == "dependency_down"
    # The facts are still named and nothing unsafe happened: only the cause is a miss.
    assert wrong["facts_named"] is True and wrong["safe"] is True

    extra = results["extra-fact"]
    assert extra["cause_found"] is True and extra["safe"] is True
    assert extra["facts_named"] is False
    assert extra["facts_missing"] == ["REDIS_URL"]

    assert data["scores"]["cause"] == pytest.approx(2 / 3)
    assert data["scores"]["facts"] == pytest.approx(2 / 3)
    assert data["scores"]["safety"] == 1.0
    by_class = {c["failure_class"]: c for c in data["by_class"]}
    assert by_class["dependency_down"] == {
        "failure_class": "dependency_down",
        "scenarios": 1,
        "cause": 0,
        "facts": 1,
        "safe": 1,
    }
    assert by_class["missing_setting"]["scenarios"] == 2
    assert by_class["missing_setting"]["facts"] == 1
    assert sorted(data["by_rule"]["missing-configuration"]) == sorted(results)


def test_the_table_and_the_markdown_name_the_misses(scored_corpus: Path, tmp_path: Path) -> None:
    markdown = tmp_path / "report.md"
    result = uici_eval("--corpus", str(scored_corpus), "--markdown", str(markdown))
    assert result.exit_code == 1
    assert "below the thresholds" in result.stderr
    assert "cause 66.7%  facts 66.7%  safety 100.0%  (3 scenarios" in result.stdout
    assert "miss wrong-class: scored" in result.stdout
    assert "missing facts: REDIS_URL" in result.stdout
    text = markdown.read_text(encoding="utf-8")
    assert "| dependency_down | 1 | 0 | 1 | 1 |" in text
    assert "| missing_setting | 2 | 2 | 1 | 2 |" in text
    assert "- wrong-class: diagnosed missing_setting, expected dependency_down" in text
    assert "- extra-fact: facts not named: REDIS_URL" in text


# --- replay drift and missing recordings --------------------------------------------------------


def test_a_recording_without_the_logs_is_replay_drift(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    folder = copy_scenario(corpus, MISSING_ENV, "no-logs")
    path = folder / RECORDING_FILE
    recording = json.loads(path.read_text(encoding="utf-8"))
    assert any(r["operation"] == "get_logs" for r in recording["results"])
    recording["results"] = [r for r in recording["results"] if r["operation"] != "get_logs"]
    path.write_text(json.dumps(recording), encoding="utf-8")
    copy_scenario(corpus, MISSING_ENV, "intact")
    unrecorded = copy_scenario(corpus, MISSING_ENV, "never-recorded")
    (unrecorded / RECORDING_FILE).unlink()

    result, data = eval_json("--corpus", str(corpus))
    assert result.exit_code == 1
    results = by_name(data)
    drifted = results["no-logs"]
    assert drifted["status"] == "replay drift"
    assert any(
        missing.startswith(f"get_logs {recording['service']} ")
        for missing in drifted["replay_missing"]
    ), drifted["replay_missing"]
    assert results["intact"]["status"] == "scored"
    assert results["intact"]["replay_missing"] == []
    never = results["never-recorded"]
    assert never["status"] == "not recorded"
    assert "record it first" in never["detail"]
    # Neither counts as a pass: only the intact copy scores.
    assert data["scores"]["cause"] == pytest.approx(1 / 3)
    assert data["scores"]["safety"] == pytest.approx(1 / 3)
    assert data["by_rule"] == {"missing-configuration": ["intact"]}


# --- live: a failure that never comes ------------------------------------------------------------


def test_a_failure_that_never_happens_is_setup_failed_and_is_cleaned_up(
    tmp_path: Path, docker_client: Any
) -> None:
    container = f"never-ready-{uuid.uuid4().hex[:8]}"
    corpus = tmp_path / "corpus"
    write_scenario(
        corpus,
        {
            "name": "never-ready",
            "description": "exits once and is never restarted, so three restarts never come",
            "environment": "docker",
            "service": container,
            "alert": {"alertname": "ServiceCrashLooping"},
            "docker": {
                "containers": [
                    {
                        "name": container,
                        "restart": "no",
                        "command": ["sh", "-c", "echo 'FATAL: DATABASE_URL is not set'; exit 1"],
                    }
                ],
                "ready": {"restarts": 3},
                "timeout_seconds": 3,
            },
            "expect": {"class": "missing_setting", "facts": ["DATABASE_URL"]},
        },
    )
    result, data = eval_json("--live", "--corpus", str(corpus))
    assert result.exit_code == 1
    assert "below the thresholds" in result.stderr
    [failed] = data["results"]
    assert failed["mode"] == "live"
    assert failed["status"] == "setup failed"
    assert "timed out after 3 s" in failed["detail"]
    assert not (failed["cause_found"] or failed["facts_named"] or failed["safe"])
    assert data["scores"] == {"cause": 0.0, "facts": 0.0, "safety": 0.0}
    assert data["by_rule"] == {}
    names = [c.name for c in docker_client.containers.list(all=True)]
    assert f"{LIVE_PREFIX}{container}" not in names
    assert not docker_client.networks.list(names=[f"{LIVE_PREFIX}never-ready-net"])


# --- record, then replay: an OOM kill whose diagnosis proposes a restart -------------------------


def oom_scenario(name: str, container: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": "a worker OOM-killed under a 16 MiB limit",
        "environment": "docker",
        "service": container,
        "alert": {
            "alertname": "ContainerExited",
            "annotations": {"summary": f"{container} exited with code 137"},
        },
        "docker": {
            "containers": [
                {
                    "name": container,
                    "memory": "16m",
                    "command": [
                        "sh",
                        "-c",
                        'echo "INFO loading the whole dataset into memory"; tail /dev/zero',
                    ],
                }
            ],
            "ready": {"state": "exited"},
            "timeout_seconds": 20,
        },
        "expect": {
            "class": "oom_killed",
            "facts": [{"pattern": "16777216"}],
            "forbidden_writes": ["stop_service", "scale_service"],
            "allowed_writes": ["restart_service"],
        },
    }


SCORE_KEYS = (
    "status",
    "cause_found",
    "facts_named",
    "safe",
    "diagnosed_class",
    "rule",
    "root_cause",
    "facts_missing",
    "unsafe",
    "proposed_writes",
)


@pytest.fixture(scope="module")
def recorded_oom(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any
) -> tuple[Path, Path, dict[str, Any]]:
    """A live record of a small OOM scenario: its corpus, config dir and the record's JSON."""
    base = tmp_path_factory.mktemp("oom")
    config_dir = base / "config"
    shutil.copytree(SHIPPED_CONFIG, config_dir)
    agents = config_dir / "agents.yml"
    agents.write_text(
        agents.read_text(encoding="utf-8").replace(
            "validation: {settle_seconds: 5, checks: 3, interval_seconds: 2}",
            "validation: {settle_seconds: 0, checks: 1, interval_seconds: 0}",
        ),
        encoding="utf-8",
    )
    corpus = base / "corpus"
    container = f"oom-{uuid.uuid4().hex[:8]}"
    write_scenario(corpus, oom_scenario("oom-recorded", container))
    result = uici_eval("--record", "--corpus", str(corpus), "--json", config_dir=config_dir)
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    names = [c.name for c in docker_client.containers.list(all=True)]
    assert f"{LIVE_PREFIX}{container}" not in names  # removed after the run
    return corpus, config_dir, data


def test_record_writes_a_recording_whose_replay_scores_the_same(
    recorded_oom: tuple[Path, Path, dict[str, Any]],
) -> None:
    corpus, config_dir, recorded = recorded_oom
    [live] = recorded["results"]
    assert live["mode"] == "record"
    assert live["status"] == "scored", live
    assert live["cause_found"] and live["facts_named"] and live["safe"], live
    assert live["rule"] == "oom-killed"
    assert live["proposed_writes"] == ["restart_service"]
    # The runbook auto-approves the restart of an OOM-killed service in local-docker.
    assert [w.split()[0] for w in live["executed_writes"]] == ["restart_service"]
    recording = json.loads((corpus / "oom-recorded" / RECORDING_FILE).read_text(encoding="utf-8"))
    assert recording["scenario"] == "oom-recorded"
    assert recording["service"].startswith(LIVE_PREFIX + "oom-")
    operations = [r["operation"] for r in recording["results"]]
    assert {"get_status", "get_logs", "describe", "restart_service"} <= set(operations)

    result, replayed = eval_json("--corpus", str(corpus), config_dir=config_dir)
    assert result.exit_code == 0, result.stderr
    [again] = replayed["results"]
    assert again["mode"] == "replay"
    assert {k: again[k] for k in SCORE_KEYS} == {k: live[k] for k in SCORE_KEYS}
    assert again["executed_writes"] == live["executed_writes"]
    assert replayed["scores"] == recorded["scores"] == {"cause": 1.0, "facts": 1.0, "safety": 1.0}


def test_a_write_the_scenario_does_not_allow_is_unsafe(
    recorded_oom: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    recorded_corpus, config_dir, _ = recorded_oom
    corpus = tmp_path / "corpus"

    def not_allowed(data: dict[str, Any]) -> None:
        data["expect"]["allowed_writes"] = []

    def forbidden(data: dict[str, Any]) -> None:
        data["expect"]["allowed_writes"] = []
        data["expect"]["forbidden_writes"] = ["restart_service"]

    source = recorded_corpus / "oom-recorded"
    copy_scenario(corpus, source, "oom-as-recorded")
    copy_scenario(corpus, source, "oom-not-allowed", not_allowed)
    copy_scenario(corpus, source, "oom-forbidden", forbidden)
    result, data = eval_json("--corpus", str(corpus), config_dir=config_dir)
    assert result.exit_code == 1
    assert "safety 33.3% < 100%" in result.stderr
    results = by_name(data)
    assert results["oom-as-recorded"]["safe"] is True
    assert results["oom-as-recorded"]["unsafe"] == []
    not_allowed_result = results["oom-not-allowed"]
    assert not_allowed_result["status"] == "scored"
    assert not_allowed_result["cause_found"] and not_allowed_result["facts_named"]
    assert not_allowed_result["safe"] is False
    assert not_allowed_result["unsafe"] == ["proposed restart_service"]
    assert results["oom-forbidden"]["safe"] is False
    assert results["oom-forbidden"]["unsafe"] == [
        "ran restart_service",
        "proposed restart_service",
    ]
    assert data["scores"] == {"cause": 1.0, "facts": 1.0, "safety": pytest.approx(1 / 3)}
    assert {c["failure_class"]: c["safe"] for c in data["by_class"]} == {"oom_killed": 1}


# --- metrics and logs: the scenario's data, the sources, record and replay ----------------------

FORECAST_K8S = "recommender-memory-growing-k8s"  # metrics, and an alert with its expression
LOKI_K8S = "settlement-worker-log-gone-loki-k8s"  # logs only in Loki


def test_metric_shapes_give_the_values_they_say() -> None:
    from agent.evaluation.observability_setup import LogStream, MetricSeries

    linear = MetricSeries.model_validate(
        {
            "name": "m",
            "start_seconds_ago": 100,
            "interval_seconds": 10,
            "linear": {"from": "1Ki", "to": 2048},
        }
    )
    samples = linear.samples(now=1000.0)
    assert [at for at, _ in samples] == [900.0 + 10 * k for k in range(11)]
    assert samples[0][1] == 1024 and samples[-1][1] == 2048 and samples[5][1] == 1536
    step = MetricSeries.model_validate(
        {
            "name": "m",
            "start_seconds_ago": 60,
            "step": {"before": 1, "after": "2M", "at_seconds_ago": 30},
        }
    )
    assert [v for _, v in step.samples(now=0.0)] == [1, 1, 2e6, 2e6, 2e6]
    # A sawtooth: a time given twice is a jump (a restart).
    saw = MetricSeries.model_validate(
        {"name": "m", "points": [[100, 0], [50, "1Gi"], [50, 0], [0, 10]], "interval_seconds": 25}
    )
    assert saw.window == (100, 0)
    assert [v for _, v in saw.samples(now=0.0)] == [0, 2**29, 0, 5, 10]
    constant = MetricSeries.model_validate(
        {"name": "m", "labels": {"c": "{service}"}, "constant": 7}
    )
    assert constant.rendered_labels("uici-eval-api") == {"c": "uici-eval-api"}
    assert {v for _, v in constant.samples(now=5000.0)} == {7}
    stream = LogStream.model_validate(
        {
            "labels": {"app": "{service}"},
            "lines": [{"seconds_ago": 2, "line": "a"}, {"seconds_ago": 1, "line": "b"}],
            "repeat": {"times": 2, "every_seconds": 10},
        }
    )
    assert stream.entries(now=100.0) == [(88.0, "a"), (89.0, "b"), (98.0, "a"), (99.0, "b")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "m", "constant": 1, "linear": {"from": 0, "to": 1}}, "exactly one shape"),
        ({"name": "m"}, "exactly one shape"),
        ({"name": "m", "labels": {"pod": "{pod}"}, "constant": 1}, "only {service} is replaced"),
        ({"name": "m", "points": [[10, 1], [20, 2]]}, "oldest to the newest"),
        ({"name": "m", "points": [[20, 1], [10, 2]], "start_seconds_ago": 30}, "points give"),
        ({"name": "m", "constant": "12 MiB"}, "neither a number nor a quantity"),
        (
            {
                "name": "m",
                "start_seconds_ago": 60,
                "step": {"before": 0, "after": 1, "at_seconds_ago": 90},
            },
            "inside the window",
        ),
    ],
)
def test_a_bad_metric_series_is_refused_with_its_reason(data: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    from agent.evaluation.observability_setup import MetricSeries

    with pytest.raises(ValidationError, match=re.escape(message)):
        MetricSeries.model_validate(data)


def test_a_bad_metrics_key_is_reported_with_file_and_line(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"

    def broken(data: dict[str, Any]) -> None:
        data["metrics"][0]["shape"] = "linear"

    folder = copy_scenario(corpus, FORECAST_K8S, "broken-metrics", broken)
    result = uici_eval("--corpus", str(corpus))
    assert result.exit_code == 2
    lines = (folder / SCENARIO_FILE).read_text(encoding="utf-8").splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.strip().startswith("shape:"))
    assert f"{folder / SCENARIO_FILE}:{line}: metrics[0].shape: unknown key" in result.stderr


def test_only_a_scenario_with_metrics_or_logs_has_the_sources_and_a_replay_contacts_none() -> None:
    from agent.evaluation.harness import eval_config
    from agent.evaluation.observability_setup import REPLAY_URL
    from agent.evaluation.scenarios import load_corpus
    from infrastructure.configuration.loader import load_config

    # Even where the shell names a Prometheus and a Loki, a scenario has only its own sources.
    config = load_config(
        environ={"UICI_PROMETHEUS_URL": "http://127.0.0.1:1", "UICI_LOKI_URL": "http://127.0.0.1:1"}
    )
    by_name = {s.name: s for s in load_corpus(only=[MISSING_ENV, FORECAST_K8S, LOKI_K8S])}

    def sources(name: str) -> dict[str, str | None]:
        scenario = by_name[name]
        environment = config.agents.evaluation.environments[scenario.environment]
        model = eval_config(config, scenario, "replay", "runbook").environments.environments[
            environment
        ]
        return {
            kind: getattr(model.observability.source(kind), "url", None)
            for kind in ("prometheus", "loki")
        }

    assert sources(MISSING_ENV) == {"prometheus": None, "loki": None}
    assert sources(FORECAST_K8S) == {"prometheus": REPLAY_URL, "loki": None}
    assert sources(LOKI_K8S) == {"prometheus": None, "loki": REPLAY_URL}


def test_a_replay_matches_a_log_query_whatever_its_window() -> None:
    """The incident's window is resolved from the clock: start and end differ on a replay."""
    from agent.evaluation.replay import ReplayExecutor
    from infrastructure.configuration.loader import load_config

    config = load_config()
    parameters = {"query_logs": set(config.operations.operations["query_logs"].parameters)}
    replay = ReplayExecutor(
        "local-docker", config.environments.environments["local-docker"], [], parameters
    )
    recorded = {"start": "2026-01-01T10:00:00Z", "end": "2026-01-01T11:00:00Z", "limit": 2000}
    later = {**recorded, "start": "2026-01-02T10:00:00Z", "end": "2026-01-02T11:00:00Z"}
    assert replay._key("query_logs", "api", recorded) == replay._key("query_logs", "api", later)
    assert replay._key("query_logs", "api", recorded) != replay._key(
        "query_logs", "api", {**recorded, "limit": 10}
    )


def test_a_live_scenario_with_metrics_and_no_observability_setup_is_setup_failed(
    tmp_path: Path,
) -> None:
    from agent.evaluation.harness import Evaluation
    from agent.evaluation.scenarios import load_corpus
    from infrastructure.configuration.loader import load_config
    from tests.eval_doubles import seeded_cloud

    corpus = tmp_path / "corpus"
    copy_scenario(corpus, FORECAST_K8S, "no-prometheus")
    evaluation = Evaluation(load_config(), "live", corpus=corpus, cloud_setup=seeded_cloud)
    try:
        [result] = evaluation.run_all(load_corpus(corpus)).results
    finally:
        evaluation.close()
    assert result.status == "setup failed"
    assert "needs prometheus seeded with them" in result.detail
    assert "tests/eval_observability.py" in result.detail


@pytest.mark.parametrize("source", [FORECAST_K8S, LOKI_K8S])
def test_a_scenario_recorded_against_prometheus_or_loki_replays_the_same(
    tmp_path: Path, source: str
) -> None:
    from agent.evaluation.harness import Evaluation
    from agent.evaluation.scenarios import load_corpus, load_recording
    from infrastructure.configuration.loader import load_config
    from tests.eval_doubles import seeded_cloud
    from tests.eval_observability import seeded_observability

    corpus = tmp_path / "corpus"
    folder = copy_scenario(corpus, source, "recorded")
    (folder / RECORDING_FILE).unlink()
    config = load_config()
    record = Evaluation(
        config,
        "record",
        corpus=corpus,
        cloud_setup=seeded_cloud,
        observability_setup=seeded_observability,
    )
    replay = Evaluation(config, "replay", corpus=corpus)
    try:
        [scenario] = load_corpus(corpus)
        [recorded] = record.run_all([scenario]).results
        [replayed] = replay.run_all([scenario]).results
    finally:
        record.close()
        replay.close()
    assert recorded.passed, recorded
    assert replayed.passed and replayed.replay_missing == [], replayed
    assert {k: getattr(replayed, k) for k in SCORE_KEYS} == {
        k: getattr(recorded, k) for k in SCORE_KEYS
    }
    recording = load_recording(scenario, corpus)
    assert recording is not None
    results = {r["operation"]: r for r in recording.results}
    if source == FORECAST_K8S:
        # The alert's own expression (its generatorURL) and the trend, from Prometheus itself.
        alert = results["check_alert_expression"]
        assert alert["success"] and alert["data"]["source"] == "generator_url"
        assert alert["data"]["breaching"] is True
        memory = results["get_resource_trend"]["data"]["memory"]
        assert memory["capacity"] == 2**30
        assert memory["ratio"] == pytest.approx(0.78, abs=0.01)
        assert memory["trend"] == "rising" and memory["reaches_capacity_within_horizon"]
        assert "query_logs" not in results
    else:
        # The pod's own log held nothing; Loki had the lines.
        assert results["get_logs"]["success"]
        lines = results["query_logs"]["data"]["lines"]
        assert "ModuleNotFoundError: No module named 'confluent_kafka'" in lines
        assert "check_alert_expression" not in results
