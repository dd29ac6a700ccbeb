"""What a scenario of the evaluation corpus holds in Prometheus and Loki: the series seeded
into a Prometheus and the log lines pushed into a Loki before the diagnosis. Data only, with
the values and timestamps it stands for; tests/ seeds a real Prometheus (backfilled with
promtool) and a Loki double from it (tests/eval_observability.py) and hands the harness their
URLs. Times are seconds before "now" (when the data is seeded, right before the diagnosis);
`{service}` in a label value or an alert expression stands for the service's live name (a
Docker scenario's container is `uici-eval-<service>`).

A scenario file embeds them under `metrics:` and `logs:`, for example:

    metrics:
      - name: container_memory_working_set_bytes
        labels: {name: "{service}"}
        start_seconds_ago: 2400
        linear: {from: 7Mi, to: 16Mi}
      - name: container_spec_memory_limit_bytes
        labels: {name: "{service}"}
        start_seconds_ago: 2400
        constant: 16Mi
    logs:
      - labels: {container: "{service}"}
        lines:
          - {seconds_ago: 12, line: "FATAL: DATABASE_URL is not set"}
        repeat: {times: 4, every_seconds: 10}

A scenario with `metrics:` (even an empty list) runs in an environment that has Prometheus,
one with `logs:` in one that has Loki; one without either has neither, whatever
environments.yml or the shell's UICI_PROMETHEUS_URL / UICI_LOKI_URL say, so a scenario
always plans the same steps.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from infrastructure.configuration.models import LokiSource, PrometheusSource

SERVICE_PLACEHOLDER = "{service}"
# The url a replay gives the sources it needs: the environment "has" them, so the planner
# plans the same steps, and nothing is contacted (the recording answers every call).
REPLAY_URL = "http://replay.invalid"
_LABEL = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
_SUFFIXES = {
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?P<suffix>k|Ki|[MGT]i?)?$"
)


def _quantity(value: Any) -> Any:
    """A number, or a quantity as Kubernetes writes it: 512Mi, 1Gi, 850M, 1.5k."""
    if isinstance(value, str):
        matched = _QUANTITY.match(value.strip())
        if matched is None:
            raise ValueError(f"{value!r} is neither a number nor a quantity such as 512Mi or 1G")
        factor = _SUFFIXES[matched["suffix"]] if matched["suffix"] else 1.0
        return float(matched["number"]) * factor
    return value


Quantity = Annotated[float, BeforeValidator(_quantity)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_labels(labels: dict[str, str]) -> None:
    for name, value in labels.items():
        if not re.match(_LABEL, name):
            raise ValueError(f"{name!r} is not a label name")
        other = set(re.findall(r"\{[^}]*\}", value)) - {SERVICE_PLACEHOLDER}
        if other:
            raise ValueError(f"label {name}: only {SERVICE_PLACEHOLDER} is replaced, not {other}")


def render_labels(labels: dict[str, str], service: str) -> dict[str, str]:
    return {name: value.replace(SERVICE_PLACEHOLDER, service) for name, value in labels.items()}


# --- metrics ---------------------------------------------------------------------------------


class Linear(_Strict):
    """From one value at the window's start to another at its end."""

    start: Quantity = Field(alias="from")
    end: Quantity = Field(alias="to")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Step(_Strict):
    """One value, then another from `at_seconds_ago` on (a jump)."""

    before: Quantity
    after: Quantity
    at_seconds_ago: float = Field(gt=0)


class MetricSeries(_Strict):
    """One gauge series of the scenario: its samples every `interval_seconds` over a window
    ending `end_seconds_ago`, shaped by exactly one of constant, linear, step or points
    (piecewise linear through [seconds_ago, value] pairs, oldest first; a time given twice is
    a jump, e.g. a restart in a sawtooth; the points give the window)."""

    name: str = Field(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    labels: dict[str, str] = Field(default_factory=dict)
    start_seconds_ago: float = Field(default=3600, gt=0, le=7 * 86400)
    end_seconds_ago: float = Field(default=0, ge=0)
    interval_seconds: float = Field(default=15, gt=0, le=3600)
    constant: Quantity | None = None
    linear: Linear | None = None
    step: Step | None = None
    points: list[tuple[float, Quantity]] | None = Field(default=None, min_length=2)

    @model_validator(mode="after")
    def _consistent(self) -> MetricSeries:
        _check_labels(self.labels)
        shapes = [
            shape
            for shape in ("constant", "linear", "step", "points")
            if getattr(self, shape) is not None
        ]
        if len(shapes) != 1:
            raise ValueError(
                f"give exactly one shape of constant, linear, step or points (given: {shapes})"
            )
        if self.points is not None:
            given = {"start_seconds_ago", "end_seconds_ago"} & self.model_fields_set
            if given:
                raise ValueError(f"points give the window; drop {sorted(given)}")
            ago = [at for at, _ in self.points]
            if any(later > earlier for earlier, later in itertools.pairwise(ago)):
                raise ValueError("points go from the oldest to the newest (seconds_ago falling)")
            if ago[0] == ago[-1] or ago[-1] < 0:
                raise ValueError("points span no time, or end in the future")
        elif self.end_seconds_ago >= self.start_seconds_ago:
            raise ValueError("end_seconds_ago must be less than start_seconds_ago")
        if self.step is not None and not (
            self.end_seconds_ago < self.step.at_seconds_ago < self.start_seconds_ago
        ):
            raise ValueError("step.at_seconds_ago must fall inside the window")
        return self

    @property
    def window(self) -> tuple[float, float]:
        """(start, end) in seconds before now."""
        if self.points is not None:
            return self.points[0][0], self.points[-1][0]
        return self.start_seconds_ago, self.end_seconds_ago

    def value(self, seconds_ago: float) -> float:
        """The series' value at that many seconds before now (within its window)."""
        start, end = self.window
        if self.constant is not None:
            return self.constant
        if self.linear is not None:
            share = (start - seconds_ago) / (start - end)
            return self.linear.start + (self.linear.end - self.linear.start) * share
        if self.step is not None:
            return self.step.before if seconds_ago > self.step.at_seconds_ago else self.step.after
        assert self.points is not None  # by the validator
        value = self.points[0][1]
        for (earlier, low), (later, high) in itertools.pairwise(self.points):
            if seconds_ago > earlier:
                break
            if seconds_ago <= later:
                value = high
                continue
            share = (earlier - seconds_ago) / (earlier - later)
            return low + (high - low) * share
        return value

    def samples(self, now: float) -> list[tuple[float, float]]:
        """(Unix seconds, value) every interval over the window, oldest first, the newest at
        `end_seconds_ago` before `now` (whole milliseconds, Prometheus's resolution)."""
        start, end = self.window
        count = math.floor((start - end) / self.interval_seconds + 1e-9)
        times = [end + k * self.interval_seconds for k in range(count, -1, -1)]
        return [(round(now - ago, 3), self.value(ago)) for ago in times]

    def rendered_labels(self, service: str) -> dict[str, str]:
        return render_labels(self.labels, service)


# --- logs ------------------------------------------------------------------------------------


class LogLine(_Strict):
    seconds_ago: float = Field(ge=0)
    line: str


class Repeat(_Strict):
    """The lines happened `times` times, `every_seconds` apart, the last time as given (the
    attempts of a crash loop)."""

    times: int = Field(ge=1, le=100)
    every_seconds: float = Field(gt=0)


class LogStream(_Strict):
    """One Loki stream: its labels and lines, as a shipper (Promtail, Alloy, the Docker Loki
    driver) would have pushed them."""

    labels: dict[str, str] = Field(min_length=1)
    lines: list[LogLine] = Field(min_length=1)
    repeat: Repeat | None = None

    @model_validator(mode="after")
    def _labels(self) -> LogStream:
        _check_labels(self.labels)
        return self

    def entries(self, now: float) -> list[tuple[float, str]]:
        """(Unix seconds, line), oldest first."""
        times = self.repeat.times if self.repeat else 1
        every = self.repeat.every_seconds if self.repeat else 0.0
        found = [
            (now - line.seconds_ago - attempt * every, line.line)
            for attempt in range(times)
            for line in self.lines
        ]
        return sorted(found, key=lambda entry: entry[0])

    def rendered_labels(self, service: str) -> dict[str, str]:
        return render_labels(self.labels, service)


# --- the environment a scenario runs in ------------------------------------------------------


@dataclass(frozen=True)
class ObservabilityEndpoints:
    """Where the seeded Prometheus and Loki of one live scenario answer (None: not seeded)."""

    prometheus: str | None = None
    loki: str | None = None


def observed_environment(environment: Any, urls: dict[str, str]) -> Any:
    """The environment model with exactly the sources of `urls` (kind -> url) on and every
    other source off."""
    observability = environment.observability
    update: dict[str, Any] = {}
    models: dict[str, type[PrometheusSource] | type[LokiSource]] = {
        "prometheus": PrometheusSource,
        "loki": LokiSource,
    }
    for kind, model in models.items():
        url = urls.get(kind, "")
        current = getattr(observability, kind)
        if current is not None:
            update[kind] = current.model_copy(update={"url": url})
        elif url:
            update[kind] = model(name="eval", url=url, timeout_seconds=10)
    return environment.model_copy(update={"observability": observability.model_copy(update=update)})
