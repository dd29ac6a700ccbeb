"""`uici eval --llm`: the LLM planner's diagnosis scored on replayed evidence, through the real
openai SDK against the scripted server; its exchanges recorded (--llm-record) and replayed
without a provider (--llm-replay).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from agent.cli.main import app
from agent.evaluation.llm_replay import LLM_RECORDING_FILE
from agent.evaluation.scenarios import CORPUS_DIR, RECORDING_FILE, SCENARIO_FILE
from tests.llm_server import FakeLLMServer, Reply, Request, chat

runner = CliRunner()
MISSING_ENV = "missing-env-var-docker"
PLAN_TOKENS = (700, 40)
DIAGNOSIS_TOKENS = (900, 60)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A copy of the recorded missing-env-var scenario, named `llm-copy`."""
    target = tmp_path / "corpus" / "llm-copy"
    shutil.copytree(CORPUS_DIR / MISSING_ENV, target)
    path = target / SCENARIO_FILE
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["name"] = "llm-copy"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return target.parent


def recorded_service(corpus: Path) -> str:
    recording = json.loads((corpus / "llm-copy" / RECORDING_FILE).read_text(encoding="utf-8"))
    return str(recording["service"])


def schema_of(request: Request) -> str:
    return str(request.body.get("response_format", {}).get("json_schema", {}).get("name", ""))


def model(service: str, category: str, facts: list[str], root_cause: str) -> Any:
    """A model that reads the service's status and log in every phase, then diagnoses."""

    def respond(request: Request) -> Reply:
        if schema_of(request) == "LLMDiagnosisReply":
            return chat(
                json.dumps(
                    {
                        "root_cause": root_cause,
                        "category": category,
                        "confidence": 0.9,
                        "evidence": ["obs-2"],
                        "facts": facts,
                        "recommended_actions": [],
                    }
                ),
                *DIAGNOSIS_TOKENS,
            )
        steps = [
            {"operation": "get_status", "target": service, "parameters": {}, "rationale": "state"},
            {
                "operation": "get_logs",
                "target": service,
                "parameters": {"lines": 200},
                "rationale": "why it exits",
            },
        ]
        return chat(json.dumps({"steps": steps, "done": True}), *PLAN_TOKENS)

    return respond


def uici_eval(corpus: Path, env: dict[str, str], *args: str) -> tuple[Result, dict[str, Any]]:
    result = runner.invoke(
        app, ["eval", "--llm", "--replay", "--corpus", str(corpus), *args, "--json"], env=env
    )
    assert result.exit_code in (0, 1), result.stdout + result.stderr
    return result, json.loads(result.stdout)


RIGHT = (
    "missing_setting",
    ["DATABASE_URL"],
    "orders-api exits at start-up: the required environment variable DATABASE_URL is not set",
)


def test_a_right_diagnosis_scores_cause_and_facts_with_its_tokens(
    corpus: Path, llm_env: dict[str, str], fake_llm: FakeLLMServer
) -> None:
    fake_llm.responder = model(recorded_service(corpus), *RIGHT)
    result, data = uici_eval(corpus, llm_env)
    assert result.exit_code == 0, result.stderr
    assert data["planner"] == "llm"
    [scored] = data["results"]
    assert scored["status"] == "scored", scored
    assert scored["planner"] == "llm"
    assert scored["cause_found"] and scored["facts_named"] and scored["safe"], scored
    assert scored["diagnosed_class"] == "missing_setting"
    assert scored["rule"] == ""  # the LLM decided, no rule
    assert "DATABASE_URL" in scored["root_cause"]
    assert data["scores"] == {"cause": 1.0, "facts": 1.0, "safety": 1.0}
    # Every request went through the real SDK to the scripted server and is counted.
    schemas = [schema_of(r) for r in fake_llm.requests]
    assert schemas.count("LLMDiagnosisReply") == 1
    plans = schemas.count("LLMPlanReply")
    assert plans == 4  # one round per phase (done: true)
    assert len(schemas) == plans + 1
    assert all(r.path == "/v1/chat/completions" for r in fake_llm.requests)
    assert scored["prompt_tokens"] == plans * PLAN_TOKENS[0] + DIAGNOSIS_TOKENS[0]
    assert scored["completion_tokens"] == plans * PLAN_TOKENS[1] + DIAGNOSIS_TOKENS[1]
    # The replayed evidence reached the model: the log line is in the diagnosis prompt.
    [diagnosis_request] = [r for r in fake_llm.requests if schema_of(r) == "LLMDiagnosisReply"]
    assert "DATABASE_URL is not set" in diagnosis_request.prompt


def test_a_wrong_class_is_a_cause_miss(
    corpus: Path, llm_env: dict[str, str], fake_llm: FakeLLMServer
) -> None:
    fake_llm.responder = model(
        recorded_service(corpus),
        "dependency_down",
        ["DATABASE_URL"],
        "orders-api cannot reach its database (DATABASE_URL)",
    )
    result, data = uici_eval(corpus, llm_env)
    assert result.exit_code == 1
    assert "below the thresholds: cause 0.0% < 100%" in result.stderr
    [scored] = data["results"]
    assert scored["status"] == "scored"
    assert scored["diagnosed_class"] == "dependency_down"
    assert scored["cause_found"] is False
    assert scored["facts_named"] is True  # the fact is named; only the class is wrong
    assert data["by_class"] == [
        {"failure_class": "missing_setting", "scenarios": 1, "cause": 0, "facts": 1, "safe": 1}
    ]


def test_a_class_not_in_failure_classes_becomes_unknown(
    corpus: Path, llm_env: dict[str, str], fake_llm: FakeLLMServer
) -> None:
    fake_llm.responder = model(
        recorded_service(corpus),
        "cosmic_rays",
        ["DATABASE_URL"],
        "a bit flipped in DATABASE_URL",
    )
    result, data = uici_eval(corpus, llm_env)
    assert result.exit_code == 1
    [scored] = data["results"]
    assert scored["status"] == "scored"
    assert scored["diagnosed_class"] == "unknown"
    assert scored["cause_found"] is False
    assert data["scores"]["cause"] == 0.0


def test_llm_record_then_llm_replay_without_the_provider_scores_the_same(
    corpus: Path, llm_env: dict[str, str], fake_llm: FakeLLMServer
) -> None:
    fake_llm.responder = model(recorded_service(corpus), *RIGHT)
    recorded_result, recorded = uici_eval(corpus, llm_env, "--llm-record")
    assert recorded_result.exit_code == 0, recorded_result.stderr
    calls = len(fake_llm.requests)
    assert calls == 5
    path = corpus / "llm-copy" / LLM_RECORDING_FILE
    exchanges = json.loads(path.read_text(encoding="utf-8"))
    assert [e["schema"] for e in exchanges] == [schema_of(r) for r in fake_llm.requests]
    assert all(len(e["prompt_digest"]) == 16 for e in exchanges)
    [first] = recorded["results"]
    assert first["status"] == "scored" and first["cause_found"] and first["facts_named"]

    # No replies queued, no responder: a request would be answered 500.
    fake_llm.reset()
    replayed_result, replayed = uici_eval(corpus, llm_env, "--llm-replay")
    assert replayed_result.exit_code == 0, replayed_result.stdout + replayed_result.stderr
    assert fake_llm.requests == []  # the provider was never called
    [again] = replayed["results"]
    assert again["status"] == "scored", again  # the same prompts: no drift
    assert again["replay_missing"] == []
    keys = ("cause_found", "facts_named", "safe", "diagnosed_class", "root_cause", "planner")
    assert {k: again[k] for k in keys} == {k: first[k] for k in keys}
    assert (again["prompt_tokens"], again["completion_tokens"]) == (
        first["prompt_tokens"],
        first["completion_tokens"],
    )
    assert replayed["scores"] == recorded["scores"]


def test_llm_replay_without_a_recording_is_not_recorded(
    corpus: Path, llm_env: dict[str, str], fake_llm: FakeLLMServer
) -> None:
    result, data = uici_eval(corpus, llm_env, "--llm-replay")
    assert result.exit_code == 1
    [missing] = data["results"]
    assert missing["status"] == "not recorded"
    assert "--llm-record" in missing["detail"]
    assert fake_llm.requests == []


def test_llm_replay_notices_a_changed_prompt(
    corpus: Path, llm_env: dict[str, str], fake_llm: FakeLLMServer
) -> None:
    fake_llm.responder = model(recorded_service(corpus), *RIGHT)
    uici_eval(corpus, llm_env, "--llm-record")
    path = corpus / "llm-copy" / LLM_RECORDING_FILE
    exchanges = json.loads(path.read_text(encoding="utf-8"))
    exchanges[-1]["prompt_digest"] = "0" * 16
    path.write_text(json.dumps(exchanges), encoding="utf-8")
    fake_llm.reset()
    result, data = uici_eval(corpus, llm_env, "--llm-replay")
    assert result.exit_code == 1
    [drifted] = data["results"]
    assert drifted["status"] == "replay drift"
    assert drifted["replay_missing"] == ["exchange 5 (LLMDiagnosisReply): the prompt changed"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--llm-record"], "--llm-record and --llm-replay go with --llm"),
        (["--llm", "--llm-record", "--llm-replay"], "choose one of --llm-record, --llm-replay"),
    ],
)
def test_llm_option_combinations(args: list[str], message: str, corpus: Path) -> None:
    result = runner.invoke(app, ["eval", "--corpus", str(corpus), *args])
    assert result.exit_code == 2
    assert message in result.stderr


def test_llm_replay_needs_no_provider_configured(
    corpus: Path, llm_env: dict[str, str], fake_llm: FakeLLMServer, planning_env: dict[str, str]
) -> None:
    fake_llm.responder = model(recorded_service(corpus), *RIGHT)
    recorded_result, recorded = uici_eval(corpus, llm_env, "--llm-record")
    assert recorded_result.exit_code == 0, recorded_result.stderr
    fake_llm.reset()
    result, data = uici_eval(corpus, {**planning_env, "UICI_LLM_PROVIDER": "none"}, "--llm-replay")
    [again] = data["results"]
    assert again["diagnosed_class"] == "missing_setting", (again["status"], again["detail"])
    assert data["scores"] == recorded["scores"]
    assert result.exit_code == 0
