"""The one redactor (infrastructure/redaction.py): every shipped pattern, whole texts before any
cut, a key block a source cut itself, and each exit applying it (store, events, audit, logs,
observations, reports, executors). The sweep over a real run is tests/test_redaction_sweep.py."""

from __future__ import annotations

import io
import logging
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent.incidents.audit import MAX_RESULT_CHARS, AuditLog
from agent.incidents.context import observation_from_result
from agent.incidents.events import EventLog
from agent.incidents.models import AlertInfo, IncidentContext, Observation, PlanStep
from agent.incidents.report import IncidentReport, operations_table, render_markdown
from agent.incidents.storage import IncidentStore
from agent.logs import RedactingFilter, configure_logging, install_redaction
from infrastructure.configuration.loader import UICIConfig, load_config
from infrastructure.configuration.models import EnvironmentType, RetrySettings, RiskLevel
from infrastructure.executors import docker as docker_executor
from infrastructure.executors import kubernetes as kubernetes_executor
from infrastructure.executors.base import (
    EnvironmentExecutor,
    ErrorKind,
    ExecutorError,
    MethodOutput,
    OperationError,
    OperationResult,
    ResolvedTarget,
    executor_method,
)
from infrastructure.executors.logtext import kept_lines
from infrastructure.redaction import Redactor, configured_redactor, redact_result
from infrastructure.translator import CommandSpec
from tests.conftest import SHIPPED_CONFIG, TEST_CONFIG

TAG = uuid.uuid4().hex[:8].upper()
BEGIN, END = "-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----"


def key_body(name: str, lines: int = 6) -> list[str]:
    """Base64-looking body lines, each carrying a findable marker."""
    return [f"MIIE{name}{TAG}{i:02d}" + "A" * 40 for i in range(lines)]


# One sample per shipped pattern: (text, secret substrings that must be gone, text that stays).
SAMPLES: dict[str, tuple[str, list[str], str]] = {
    "private-key-block": (
        "\n".join(["INFO loading key", BEGIN, *key_body("WHOLE"), END, "INFO key loaded"]),
        [f"WHOLE{TAG}"],
        "INFO key loaded",
    ),
    "private-key-tail": (
        "\n".join([*key_body("TAIL"), END, "INFO after the key"]),
        [f"TAIL{TAG}"],
        "INFO after the key",
    ),
    "bearer-token": (
        f"GET /api Authorization: Bearer tok{TAG}abcdef123 sent",
        [f"tok{TAG}"],
        "sent",
    ),
    "jwt": (
        f"session eyJhbGciOiJIUzI1.eyJzdWIiOi{TAG}.SflKxwRJSMeKKF2 ok",
        [f"eyJzdWIiOi{TAG}"],
        "ok",
    ),
    "url-credentials": (
        f"connecting to postgres://app:pw{TAG}@db:5432/orders",
        [f"pw{TAG}", "app:"],
        "@db:5432/orders",
    ),
    "aws-access-key-id": (f"key AKIA{TAG}ABCDEFGH in use", [f"AKIA{TAG}"], "in use"),
    "gcp-api-key": (f"maps AIza{TAG}" + "x" * 27 + " ok", [f"AIza{TAG}"], "ok"),
    "openai-style-key": (f"llm sk-{TAG}abcdefghijklmnop ok", [f"sk-{TAG}"], "ok"),
    "github-token": (f"clone ghp_{TAG}abcdefghijklmnop ok", [f"ghp_{TAG}"], "ok"),
    "slack-token": (f"notify xoxb-{TAG}-123456 ok", [f"xoxb-{TAG}"], "ok"),
    "azure-account-key": (
        f"DefaultEndpointsProtocol=https;AccountKey={TAG}abcdEFGH1234ijkl==;x=1",
        [f"{TAG}abcdEFGH"],
        "x=1",
    ),
    "oci-fingerprint": (
        "fingerprint " + ":".join(["a1"] * 15 + [TAG[:2].lower()]) + " ok",
        [":".join(["a1"] * 15)],
        "ok",
    ),
    "secret-assignment": (
        f"ERROR login failed DB_PASSWORD=pw{TAG}xyz user=app",
        [f"pw{TAG}"],
        "user=app",
    ),
}


@pytest.fixture(scope="module")
def shipped() -> UICIConfig:
    return load_config(SHIPPED_CONFIG, environ={})


@pytest.fixture(scope="module")
def redact(shipped: UICIConfig) -> Redactor:
    return Redactor.from_config(shipped)


def assert_clean(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked in {text!r}"


# --- the patterns -------------------------------------------------------------------------


def test_every_shipped_pattern_has_a_sample(shipped: UICIConfig) -> None:
    names = [p.name for p in shipped.agents.redaction.patterns]
    assert sorted(names) == sorted(SAMPLES), "add a sample for each pattern of agents.yml"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_pattern_redacts_its_secret_and_keeps_the_rest(name: str, redact: Redactor) -> None:
    text, secrets, kept = SAMPLES[name]
    redacted = redact(text)
    assert_clean(redacted, secrets)
    assert kept in redacted
    assert "REDACTED" in redacted
    assert redact(redacted) == redacted, "redacting twice changes nothing"


def test_masked_values_and_references_are_left_alone(redact: Redactor) -> None:
    text = "env DB_PASSWORD=**********, TOKEN=<from secretKeyRef db-credentials>, pwd=[REDACTED]"
    assert redact(text) == text


def test_a_key_block_whose_begin_the_source_cut_away(redact: Redactor) -> None:
    # `docker logs --tail 8` of a log that printed a whole key: the tail starts inside it.
    log = ["INFO boot", BEGIN, *key_body("CUT", 10), END, "INFO serving", "ERROR boom"]
    tail = "\n".join(log[-8:])
    assert BEGIN not in tail and END in tail
    redacted = redact(tail)
    assert_clean(redacted, [f"CUT{TAG}", END])
    assert redacted.endswith("INFO serving\nERROR boom")


def test_a_key_block_whose_end_a_cut_removed(redact: Redactor) -> None:
    head = "\n".join(["INFO boot", BEGIN, *key_body("HEAD", 4)])
    redacted = redact(head)
    assert_clean(redacted, [f"HEAD{TAG}"])
    assert redacted.startswith("INFO boot\n")


def test_a_key_block_is_only_caught_in_the_whole_text_not_line_by_line(redact: Redactor) -> None:
    lines = [BEGIN, *key_body("LINES"), END]
    per_line = [redact(line) for line in lines]
    assert any(f"LINES{TAG}" in line for line in per_line), "line by line cannot see the block"
    assert_clean("\n".join(redact.lines(lines)), [f"LINES{TAG}"])
    assert redact.lines([]) == []


# --- whole text before any cut -------------------------------------------------------------


def test_redaction_before_a_cut_never_keeps_half_a_secret(redact: Redactor) -> None:
    text = "x" * 90 + f" AKIA{TAG}ABCDEFGH and more"
    limit = 100  # cuts the key id in the middle
    naive = redact(text[:limit])
    assert f"AKIA{TAG}"[:5] in naive, "cutting first keeps a fragment the patterns cannot see"
    safe = redact.cut(text, limit)
    assert "AKIA" not in safe and len(safe) <= limit


def test_the_log_byte_cap_comes_after_redaction(redact: Redactor) -> None:
    lines = ["INFO a", "INFO b", BEGIN, *key_body("CAP", 12), END, "INFO c", "INFO d"]
    for max_bytes in (30, 80, 200, 400, 10_000):
        item = kept_lines(lines, bool, max_bytes, redact)
        assert_clean("\n".join(item["lines"]), [f"CAP{TAG}"])
    assert "[REDACTED PRIVATE KEY]" in kept_lines(lines, bool, 10_000, redact)["lines"]


def test_docker_health_output_is_redacted_before_it_is_cut(redact: Redactor) -> None:
    output = "x" * 490 + f" AKIA{TAG}ABCDEFGH"  # the 500-character cut lands inside the key id
    state = {"Health": {"Status": "unhealthy", "Log": [{"ExitCode": 1, "Output": output}]}}
    health = docker_executor._health(state, redact)
    assert health is not None
    assert "AKIA" not in health["last_checks"][0]["output"]


def test_kubernetes_api_messages_are_redacted_before_they_are_cut(redact: Redactor) -> None:
    class Answer:
        data = ("y" * 295 + f" AKIA{TAG}ABCDEFGH").encode()

    assert "AKIA" not in kubernetes_executor._status_message(Answer(), redact)


def test_report_evidence_is_redacted_before_its_last_lines_are_kept(redact: Redactor) -> None:
    output = "\n".join(["INFO boot", BEGIN, *key_body("SHOWN", 30), END, "ERROR exit 1"])
    observation = Observation(id="obs-1", operation="get_logs", success=True, output=output)
    report = IncidentReport(
        incident_id="inc-r", alert={"labels": {"alertname": "Down"}}, environment="local-docker",
        service="api", dependencies=[], diagnosis=None, observations=[observation], plans=[],
    )  # fmt: skip
    markdown = render_markdown(report, max_output_lines=15, redactor=redact)
    assert_clean(markdown, [f"SHOWN{TAG}", END])
    assert "ERROR exit 1" in markdown
    assert render_markdown(report, max_output_lines=15)  # the configured redactor by default


def test_the_operations_table_is_redacted(redact: Redactor) -> None:
    failed = Observation(id="obs-1", operation="get_logs", success=False, error=SAMPLES["jwt"][0])
    report = IncidentReport(
        incident_id="inc-t", alert={}, environment="e", service="s", dependencies=[],
        diagnosis=None, observations=[failed], plans=[],
    )  # fmt: skip
    assert_clean(str(operations_table(report, redact)), SAMPLES["jwt"][1])


# --- values, models and results --------------------------------------------------------------


def test_data_redacts_every_string_and_masks_secret_keys(redact: Redactor) -> None:
    text, secrets, _ = SAMPLES["bearer-token"]
    value = {"a": [text, {"b": (text, 3)}], "api_key": "plain-value", "n": 1.5, "none": None}
    redacted = redact.data(value)
    assert_clean(str(redacted), [*secrets, "plain-value"])
    assert redacted["n"] == 1.5 and redacted["none"] is None
    assert isinstance(redacted["a"][1]["b"], tuple)
    assert value["api_key"] == "plain-value", "the original is not changed"


def test_json_data_redacts_what_str_would_write(redact: Redactor) -> None:
    class Opaque:
        def __str__(self) -> str:
            return SAMPLES["secret-assignment"][0]

    assert_clean(str(redact.json_data({"x": Opaque()})), SAMPLES["secret-assignment"][1])


def test_redact_result_for_an_api_answer(redact: Redactor) -> None:
    text, secrets, _ = SAMPLES["url-credentials"]
    result = OperationResult(
        operation="get_logs", environment="local-docker",
        environment_type=EnvironmentType.DOCKER, target="web", success=False, output=text,
        data={"lines": [text]}, error=OperationError(kind=ErrorKind.RETRYABLE, message=text),
        duration_seconds=0.1, started_at=datetime.now(UTC), command=["echo", text],
    )  # fmt: skip
    redacted = redact_result(result, redact)
    assert_clean(redacted.model_dump_json(), secrets)
    assert redacted.error is not None and redacted.error.kind is ErrorKind.RETRYABLE
    assert redacted.environment_type is EnvironmentType.DOCKER
    assert_clean(redact_result(result).model_dump_json(), secrets)  # configured by default


class _LeakyExecutor(EnvironmentExecutor):
    environment_type: ClassVar[EnvironmentType] = EnvironmentType.DOCKER

    @executor_method
    def get_logs(self, target: str) -> MethodOutput:
        text = SAMPLES["private-key-tail"][0]
        if target == "broken":
            raise ExecutorError(ErrorKind.PERMANENT, text, output=text, data={"raw": text})
        return MethodOutput(output=text, data={"lines": text.splitlines()})

    def check_connection(self) -> MethodOutput:
        return MethodOutput()

    def write_targets(self, target: str) -> list[ResolvedTarget]:
        return []


def test_every_result_leaves_the_executor_redacted() -> None:
    executor = _LeakyExecutor("local-docker", None)
    for target in ("web", "broken"):
        spec = CommandSpec(
            operation="get_logs", environment="local-docker",
            environment_type=EnvironmentType.DOCKER, target=target, method="get_logs",
            arguments={"target": target}, command=["docker", "logs", target],
            risk=RiskLevel.READ, timeout_seconds=5,
            retry=RetrySettings(attempts=1, delay_seconds=0, backoff_factor=1),
        )  # fmt: skip
        result = executor.execute(spec)
        assert_clean(result.model_dump_json(), SAMPLES["private-key-tail"][1])
        assert result.success is (target == "web")


def test_observations_are_redacted_when_made(redact: Redactor) -> None:
    text, secrets, _ = SAMPLES["secret-assignment"]
    result = OperationResult(
        operation="get_logs", environment="local-docker",
        environment_type=EnvironmentType.DOCKER, target="web", success=False, output=text,
        data=[{"line": text}], error=OperationError(kind=ErrorKind.PERMANENT, message=text),
        duration_seconds=0.1, started_at=datetime.now(UTC),
    )  # fmt: skip
    step = PlanStep(
        phase="triage", operation="get_logs", environment="local-docker", target="web",
        proposed_by="runbook",
    )  # fmt: skip
    for redactor in (redact, None):
        observation = observation_from_result("obs-1", step, result, redactor)
        assert_clean(observation.model_dump_json(), secrets)


# --- where the redactor comes from ------------------------------------------------------------


def test_the_configured_redactor_follows_the_process_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = configured_redactor()
    assert (
        shipped.patterns == Redactor.from_config(load_config(SHIPPED_CONFIG, environ={})).patterns
    )
    directory = tmp_path / "config"
    shutil.copytree(SHIPPED_CONFIG, directory)
    monkeypatch.setenv("UICI_CONFIG_DIR", str(directory))
    assert configured_redactor() is shipped, "same patterns, same compiled redactor"
    agents = directory / "agents.yml"
    agents.write_text(
        agents.read_text().replace(
            "  patterns:\n", f"  patterns:\n    - name: house-secret\n      pattern: 'HOUSE{TAG}'\n"
        )
    )
    assert configured_redactor()(f"x HOUSE{TAG} y") == "x [REDACTED] y", "an edit applies"


def test_stores_built_from_a_path_or_the_configuration_both_redact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = IncidentContext(
        incident_id="inc-ctx",
        alert=AlertInfo(
            labels={"alertname": "Down", "service": "api"},
            annotations={"description": SAMPLES["url-credentials"][0], "summary": "hunter2 here"},
        ),
        environment="local-docker",
        service="api",
    )
    by_path = IncidentStore(tmp_path / "a.db")
    by_path.open_incident(context)
    by_path.save_report("inc-ctx", {"logs": SAMPLES["jwt"][0]}, "diagnosed")
    record = by_path.get("inc-ctx")
    assert record is not None and record.report is not None
    assert_clean(record.context.model_dump_json(), SAMPLES["url-credentials"][1])
    assert_clean(str(record.report), SAMPLES["jwt"][1])
    assert record.context.alert.labels == context.alert.labels, "names are not changed"
    # from_config: the configuration's own patterns (the test configuration redacts hunter2).
    monkeypatch.setenv("UICI_TEST_STORAGE_URL", f"sqlite:///{tmp_path}/b.db")
    by_config = IncidentStore.from_config(load_config(TEST_CONFIG))
    by_config.open_incident(context)
    stored = by_config.get("inc-ctx")
    assert stored is not None and "hunter2" not in stored.context.model_dump_json()


def test_events_and_audit_are_redacted_before_they_are_written(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    IncidentStore(path)
    text, secrets, _ = SAMPLES["private-key-block"]
    EventLog(path).emit("incident.failed", "inc-e", error=text, nested={"lines": [text]})
    assert_clean(EventLog(path).since(0)[0].model_dump_json(), secrets)
    # A secret across the result column's cut: redacted whole first, then cut.
    result = "x" * (MAX_RESULT_CHARS - 8) + f" AKIA{TAG}ABCDEFGH"
    audit = AuditLog(path)
    audit.record("me", "operation.get_logs", result, target="local-docker/web",
                 parameters={"command": [text], "password": "plain-pw"}, incident_id="inc-e")  # fmt: skip
    [row] = audit.query("inc-e")
    assert_clean(row.model_dump_json(), [*secrets, "AKIA", "plain-pw"])
    assert len(row.result) <= MAX_RESULT_CHARS


# --- logs ------------------------------------------------------------------------------------


@pytest.fixture
def uici_logging() -> Any:
    """configure_logging into a buffer; the `uici` logger's handlers are restored after."""
    logger = logging.getLogger("uici")
    saved = (list(logger.handlers), logger.level)
    stream = io.StringIO()
    yield stream
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])


def test_every_uici_record_is_redacted_before_any_handler(
    uici_logging: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    # A handler that was there first (as Prefect's API handler is for an extra logger).
    earlier = logging.StreamHandler(io.StringIO())
    logging.getLogger("uici").addHandler(earlier)
    for fmt in ("text", "json"):
        configure_logging("INFO", fmt, uici_logging)
        log = logging.getLogger("uici.test.redaction")
        text, secrets, _ = SAMPLES["private-key-tail"]
        with caplog.at_level(logging.INFO):
            log.warning("output: %s", text)
            log.info("extra", extra={"output": text})
            try:
                raise RuntimeError(SAMPLES["bearer-token"][0])
            except RuntimeError:
                log.exception("failed on %s", "web")
        everything = uici_logging.getvalue() + caplog.text + earlier.stream.getvalue()  # type: ignore[attr-defined]
        everything += "".join(str(r.__dict__) for r in caplog.records)
        assert_clean(everything, [*secrets, *SAMPLES["bearer-token"][1]])
        assert "Traceback" in uici_logging.getvalue() and "RuntimeError" in caplog.text
    logging.getLogger("uici").removeHandler(earlier)


def test_install_redaction_covers_a_logger_and_every_handler_it_reaches() -> None:
    logger = logging.getLogger(f"uici-test-run-logger-{TAG}")
    stream = io.StringIO()
    logger.addHandler(logging.StreamHandler(stream))
    install_redaction(logger.name)
    install_redaction(logger.name)  # idempotent: one filter
    assert sum(isinstance(f, RedactingFilter) for f in logger.filters) == 1
    logger.error("probe %s", SAMPLES["aws-access-key-id"][0])
    assert_clean(stream.getvalue(), SAMPLES["aws-access-key-id"][1])
    assert "probe key" in stream.getvalue()
