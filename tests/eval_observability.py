"""A real Prometheus and a Loki double seeded from an evaluation scenario's `metrics:` and
`logs:` (agent/evaluation/observability_setup.py), for `uici eval`'s live and record modes.

Prometheus is Debian's own binary on data backfilled with promtool
(tests/prometheus_data.py: `backfill`, `LocalPrometheus`): the scenario's series become
OpenMetrics text with timestamps relative to now, then TSDB blocks, so every query the
diagnosis makes (instant, range, the capacity at now) is answered by Prometheus itself. One
is started per scenario (well under a second, promtool included): the data is then relative
to the moment the scenario is diagnosed. Loki is tests/loki_double.py with the scenario's
streams pushed, as a shipper would have.

    with seeded_observability(scenario, service) as endpoints:
        ...  # endpoints.prometheus, endpoints.loki: the urls, None where not seeded
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from agent.evaluation.observability_setup import MetricSeries, ObservabilityEndpoints
from agent.evaluation.scenarios import Scenario
from tests.loki_double import LokiDouble
from tests.prometheus_data import LocalPrometheus

# The newest sample is at least this long before the moment Prometheus starts, so the
# backfilled blocks end before the head it appends its own scrapes to.
_HEAD_GAP_SECONDS = 2.0


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class ScenarioHistory:
    """The scenario's series as LocalPrometheus backfills a history: `write_openmetrics`."""

    def __init__(self, series: list[MetricSeries], service: str, now: float) -> None:
        self.series = series
        self.service = service
        self.now = now

    def openmetrics(self) -> str:
        """Each metric family once (gauges), each series' samples in time order, `# EOF`."""
        families: dict[str, list[str]] = {}
        for one in self.series:
            labels = ",".join(
                f"{name}={_quote(value)}"
                for name, value in sorted(one.rendered_labels(self.service).items())
            )
            sample = f"{one.name}{{{labels}}}" if labels else one.name
            rows = families.setdefault(one.name, [])
            rows.extend(f"{sample} {_value(v)} {at:.3f}" for at, v in one.samples(self.now))
        lines: list[str] = []
        for name, rows in families.items():
            lines.append(f"# TYPE {name} gauge")
            lines.extend(rows)
        lines.append("# EOF")
        return "\n".join(lines) + "\n"

    def write_openmetrics(self, path: Path) -> None:
        path.write_text(self.openmetrics(), encoding="utf-8")


@contextmanager
def seeded_observability(scenario: Scenario, service: str) -> Iterator[ObservabilityEndpoints]:
    """A Prometheus holding the scenario's metrics (when it has `metrics:`) and a Loki double
    holding its logs (when it has `logs:`), `{service}` being `service`; stopped on exit."""
    with ExitStack() as stack:
        now = time.time() - _HEAD_GAP_SECONDS
        prometheus_url = loki_url = None
        if scenario.metrics is not None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="uici-eval-")))
            history = ScenarioHistory(scenario.metrics, service, now)
            prometheus = LocalPrometheus(workdir, history, rules=[], basic=None)  # type: ignore[arg-type]
            stack.enter_context(prometheus)
            prometheus_url = prometheus.url
        if scenario.logs is not None:
            loki = stack.enter_context(LokiDouble())
            for stream in scenario.logs:
                loki.push(
                    stream.rendered_labels(service),
                    [(int(at * 1e9), line) for at, line in stream.entries(now)],
                )
            loki_url = loki.url
        yield ObservabilityEndpoints(prometheus=prometheus_url, loki=loki_url)
