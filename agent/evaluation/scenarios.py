"""The evaluation corpus: one folder per scenario, its `scenario.yml` and its `recorded.json`.

A scenario is data: the alert, how to create the failure (containers for Docker; objects for
the Kubernetes and OCI API doubles), what Prometheus and Loki hold about it (`metrics:`,
`logs:`; agent/evaluation/observability_setup.py), and what a correct diagnosis says (the
failure class, the facts it must name, the writes that must not run and those that may be
proposed). The recording
holds the results of every operation the diagnosis ran against the live failure, in order, so
that `uici eval --replay` replays the engine's own answers without an engine.

A scenario file is read like the configuration: an unknown key, a missing expectation or a bad
value is reported with its file, line and fix, every problem at once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.evaluation.cloud_setup import KubernetesSetup, OciSetup
from agent.evaluation.observability_setup import SERVICE_PLACEHOLDER, LogStream, MetricSeries
from infrastructure.configuration.loader import _validation_problems
from infrastructure.configuration.problems import ConfigError, ConfigProblem
from infrastructure.configuration.yaml_source import load_yaml_document

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
SCENARIO_FILE = "scenario.yml"
RECORDING_FILE = "recorded.json"
# The failure class of a scenario where nothing is wrong, or nothing a rule should name.
NO_FAILURE = "none"
# Docker container names of live scenarios: prefix + the scenario's name for it.
LIVE_PREFIX = "uici-eval-"

EnvironmentKind = Literal["docker", "kubernetes", "oci"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FactPattern(_Strict):
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        return value


class Expectation(_Strict):
    """What a correct diagnosis of the scenario says and does."""

    failure_class: str = Field(alias="class")
    # Strings (found case-insensitively) or patterns the root cause must name.
    facts: list[str | FactPattern] = Field(default_factory=list)
    # Write operations that must not be executed.
    forbidden_writes: list[str] = Field(default_factory=list)
    # Write operations that may be proposed; proposing any other write is unsafe.
    allowed_writes: list[str] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Alert(_Strict):
    alertname: str
    severity: str = "critical"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # The PromQL that fired it, sent as Prometheus sends it (generatorURL's g0.expr);
    # {service} stands for the service's live name.
    expression: str | None = Field(default=None, min_length=1, max_length=2000)

    def rendered_expression(self, service: str) -> str | None:
        if self.expression is None:
            return None
        return self.expression.replace(SERVICE_PLACEHOLDER, service)


class HealthCheck(_Strict):
    command: str  # run by the container's shell
    interval_ms: int = 500
    timeout_ms: int = 1000
    retries: int = 2


class DockerContainer(_Strict):
    name: str  # the container is named LIVE_PREFIX + name
    command: list[str] = Field(min_length=1)
    restart: Literal["no", "always", "on-failure"] = "no"
    memory: str | None = None  # e.g. 16m; swap is set to the same, so no swap
    cpus: float | None = None
    env: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    read_only: bool = False
    tmpfs: dict[str, str] = Field(default_factory=dict)  # path -> mount options (size=64k)
    health: HealthCheck | None = None
    ports: list[int] = Field(default_factory=list)  # published on a random loopback port
    compose_service: str | None = None  # labels it as a Compose service of that name
    # Created and started after the earlier containers (a dependency first).
    start: bool = True
    # The engine's logging driver: `none` keeps no log `docker logs` can read (like a
    # shipping driver with its local cache off: the lines are only where it shipped them).
    log_driver: Literal["json-file", "local", "none"] | None = None


class ReadyWhen(_Strict):
    """When the failure has happened, looking at the service's container."""

    restarts: int | None = None  # at least this many restarts
    state: str | None = None  # e.g. exited, running
    health: str | None = None  # e.g. unhealthy
    log: str | None = None  # a substring of its log ...
    log_count: int = 1  # ... at least this many times
    after_stop_log: str | None = None  # a substring logged after `stop` ran
    after_stop_count: int = 1
    seconds: float = 0  # then wait this long

    @model_validator(mode="after")
    def _something(self) -> ReadyWhen:
        if not any((self.restarts, self.state, self.health, self.log, self.seconds)):
            raise ValueError("say when the failure has happened: restarts, state, health or log")
        return self


class DockerSetup(_Strict):
    containers: list[DockerContainer] = Field(min_length=1)
    # Containers stopped once the service is ready (a dependency going down), then
    # `ready.after_stop_log` is awaited.
    stop: list[str] = Field(default_factory=list)
    ready: ReadyWhen
    timeout_seconds: float = 40

    @model_validator(mode="after")
    def _names(self) -> DockerSetup:
        names = [c.name for c in self.containers]
        if len(set(names)) != len(names):
            raise ValueError(f"container names repeat: {names}")
        unknown = [n for n in self.stop if n not in names]
        if unknown:
            raise ValueError(f"stop names no container of this scenario: {unknown}")
        return self


class Scenario(_Strict):
    name: str
    description: str
    environment: EnvironmentKind
    service: str  # the alerted service: a container, a Deployment, an instance
    # Declared in the alert (uici_dependencies); undeclared ones must be discovered.
    dependencies: list[str] = Field(default_factory=list)
    alert: Alert
    docker: DockerSetup | None = None
    kubernetes: KubernetesSetup | None = None
    oci: OciSetup | None = None
    # What Prometheus and Loki hold (agent/evaluation/observability_setup.py). With
    # `metrics` (even none) the environment has Prometheus, with `logs` Loki; without, none.
    metrics: list[MetricSeries] | None = None
    logs: list[LogStream] | None = None
    expect: Expectation

    @model_validator(mode="after")
    def _setup_for_environment(self) -> Scenario:
        setups = {"docker": self.docker, "kubernetes": self.kubernetes, "oci": self.oci}
        if setups[self.environment] is None:
            raise ValueError(
                f"environment is {self.environment}: add a `{self.environment}:` section that"
                " creates the failure"
            )
        others = [k for k, v in setups.items() if v is not None and k != self.environment]
        if others:
            raise ValueError(f"sections {others} do not match environment {self.environment}")
        if self.docker is not None and self.service not in [c.name for c in self.docker.containers]:
            raise ValueError(f"service {self.service!r} names none of the docker containers")
        return self

    @model_validator(mode="after")
    def _facts_for_failures(self) -> Scenario:
        if self.expect.failure_class != NO_FAILURE and not self.expect.facts:
            raise ValueError(
                "expect.facts is empty: name at least one fact the evidence shows (the"
                " variable, module, port, path, host, signal...) that the diagnosis must name"
            )
        if self.expect.failure_class == NO_FAILURE and self.expect.facts:
            raise ValueError("a scenario where nothing is wrong expects no facts")
        return self

    @property
    def failure_class(self) -> str:
        return self.expect.failure_class

    @property
    def sources(self) -> list[str]:
        """The observability sources the scenario's environment has: prometheus, loki."""
        return [
            kind
            for kind, data in (("prometheus", self.metrics), ("loki", self.logs))
            if data is not None
        ]


class Recording(BaseModel):
    """What the diagnosis of a live scenario observed, replayed by `--replay`."""

    scenario: str
    environment_type: str
    service: str  # the target name the live run used
    dependencies: list[str] = Field(default_factory=list)
    recorded_at: str
    results: list[dict[str, Any]]  # OperationResult dumps, in the order they were run


def load_scenario(path: Path) -> Scenario:
    """One scenario file, validated; a ConfigError names the file, line, key and fix."""
    document, problems = load_yaml_document(path)
    if document is None or problems:
        raise ConfigError(problems)
    if not isinstance(document.data, dict):
        raise ConfigError(
            [ConfigProblem(path, 1, "", "a scenario is a mapping", "see the corpus's scenarios")]
        )
    try:
        scenario = Scenario.model_validate(document.data)
    except ValidationError as exc:
        raise ConfigError(_validation_problems(exc, document, Scenario)) from None
    if scenario.name != path.parent.name:
        raise ConfigError(
            [
                ConfigProblem(
                    path,
                    document.line_of(("name",)),
                    "name",
                    f"{scenario.name!r} differs from its folder {path.parent.name!r}",
                    "name the folder after the scenario",
                )
            ]
        )
    return scenario


def load_corpus(
    directory: Path = CORPUS_DIR,
    only: list[str] | None = None,
    classes: list[str] | None = None,
) -> list[Scenario]:
    """Every scenario under `directory` (sorted by name), or those named / of those classes.
    Every broken file is reported at once."""
    scenarios: list[Scenario] = []
    problems: list[ConfigProblem] = []
    for path in sorted(directory.glob(f"*/{SCENARIO_FILE}")):
        try:
            scenarios.append(load_scenario(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    known = {s.name for s in scenarios}
    unknown = [n for n in only or [] if n not in known]
    if unknown:
        raise ConfigError(
            [
                ConfigProblem(
                    directory, None, "--only", f"no scenario named {n!r}", "see `uici eval --list`"
                )
                for n in unknown
            ]
        )
    return [
        s
        for s in scenarios
        if (not only or s.name in only) and (not classes or s.failure_class in classes)
    ]


def recording_path(scenario: Scenario, directory: Path = CORPUS_DIR) -> Path:
    return directory / scenario.name / RECORDING_FILE


def load_recording(scenario: Scenario, directory: Path = CORPUS_DIR) -> Recording | None:
    path = recording_path(scenario, directory)
    if not path.exists():
        return None
    return Recording.model_validate(json.loads(path.read_text(encoding="utf-8")))


def save_recording(recording: Recording, directory: Path = CORPUS_DIR) -> Path:
    path = directory / recording.scenario / RECORDING_FILE
    path.write_text(json.dumps(recording.model_dump(mode="json"), indent=1) + "\n")
    return path
