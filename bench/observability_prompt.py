"""Prompt size of metric results handed to the LLM planner.

A one-hour range query over 50 series (`uici_test_requests_total`, one counter per pod, on a
real Prometheus backfilled with two hours of history) is run as the planner runs it:
query_metrics_range through the registry, translator and executor. Reported, medians of
several runs: the characters and estimated tokens of that observation in the planner's prompt
(agent/planning/llm_planner.py renders it), against the baseline of the same query's raw
Prometheus JSON answer at Prometheus's own default resolution (what a free-form tool that
passes the answer through would hand the model). Also the query's latency.

Writes its figures under "observability_prompt" in .uici/bench/results.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from agent.incidents.models import Observation  # noqa: E402
from agent.planning.llm_planner import LLMPlanner, PlanCache  # noqa: E402
from agent.planning.untrusted import estimate_tokens  # noqa: E402
from infrastructure.configuration.loader import load_config  # noqa: E402
from infrastructure.executors.factory import create_executor  # noqa: E402
from infrastructure.registry import OperationRegistry  # noqa: E402
from infrastructure.translator import CommandTranslator  # noqa: E402
from tests.prometheus_data import History, LocalPrometheus, available  # noqa: E402

RESULTS = REPO / ".uici" / "bench" / "results.json"
RUNS = 7
QUERY = "rate(uici_test_requests_total[5m])"


def main() -> None:
    reason = available()
    if reason:
        print(f"observability_prompt: skipped ({reason})")
        return
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalPrometheus(Path(tmp) / "prom", History.ending_now(), [], None) as prometheus,
    ):
        config = load_config(environ={"UICI_PROMETHEUS_URL": prometheus.url})
        registry = OperationRegistry.from_config(config)
        translator = CommandTranslator.from_config(config)
        planner = LLMPlanner(config, None, PlanCache(0))  # type: ignore[arg-type]
        executor = create_executor("local-docker", config.environments.environments["local-docker"])
        chars: list[int] = []
        tokens: list[int] = []
        seconds: list[float] = []
        raw_chars: list[int] = []
        per_token = config.agents.llm_safety.chars_per_token
        for _ in range(RUNS):
            call = registry.validate(
                "query_metrics_range", "local-docker", {"query": QUERY, "since": "1h"}
            )
            spec = translator.translate(call)
            start = time.perf_counter()
            result = executor.execute(spec)
            seconds.append(time.perf_counter() - start)
            assert result.success, result.error
            observation = Observation(
                id="obs-1",
                operation=result.operation,
                target=None,
                success=True,
                output=result.output,
                data=result.data,
            )
            rendered = planner._observation(observation, result.output)
            chars.append(len(rendered))
            tokens.append(estimate_tokens(rendered, per_token))
            # Baseline: the raw answer at Prometheus's default resolution (Grafana's and
            # promtool's 1 h / 250 points).
            end = time.time()
            raw = httpx.post(
                f"{prometheus.url}/api/v1/query_range",
                data={"query": QUERY, "start": end - 3600, "end": end, "step": 3600 / 250},
            )
            raw_chars.append(len(raw.text))
        executor.close()
        series = result.data["series_total"], result.data["series_shown"]
    figures = {
        "query": QUERY,
        "series_total": series[0],
        "series_shown": series[1],
        "observation_chars_median": statistics.median(chars),
        "observation_tokens_median": statistics.median(tokens),
        "baseline_raw_answer_chars_median": statistics.median(raw_chars),
        "baseline_raw_answer_tokens_median": int(statistics.median(raw_chars) // per_token),
        "ratio_observation_to_raw": round(
            statistics.median(chars) / statistics.median(raw_chars), 4
        ),
        "query_seconds_median": round(statistics.median(seconds), 4),
        "runs": RUNS,
    }
    print("Prompt size of a one-hour range query over 50 series (medians of", RUNS, "runs):")
    print(
        f"  in the planner's prompt: {figures['observation_chars_median']} characters, about"
        f" {figures['observation_tokens_median']} tokens ({series[1]} of {series[0]} series shown)"
    )
    print(
        f"  the raw Prometheus answer (baseline): {figures['baseline_raw_answer_chars_median']}"
        f" characters, about {figures['baseline_raw_answer_tokens_median']} tokens"
    )
    print(
        f"  ratio {figures['ratio_observation_to_raw']}; query {figures['query_seconds_median']} s"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["observability_prompt"] = figures
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
