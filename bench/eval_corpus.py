"""How long `uici eval` takes on the corpus: replay (medians of several runs) and one live run
of the Docker part, against a baseline measured in the same run (reading and validating the
corpus and its recordings, which every eval run pays).

Run: make bench   (or .venv/bin/python bench/eval_corpus.py [--runs N] [--no-live])
Writes its figures under "eval_corpus" in .uici/bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.evaluation.harness import Evaluation  # noqa: E402
from agent.evaluation.scenarios import load_corpus, load_recording  # noqa: E402
from infrastructure.configuration.loader import load_config  # noqa: E402

RESULTS = REPO / ".uici" / "bench" / "results.json"


def _load_everything() -> float:
    start = time.perf_counter()
    for scenario in load_corpus():
        load_recording(scenario)
    return time.perf_counter() - start


def _eval(mode: str, environment: str | None = None) -> tuple[float, dict[str, float], int]:
    config = load_config()
    scenarios = [s for s in load_corpus() if environment is None or s.environment == environment]
    evaluation = Evaluation(config, mode)  # type: ignore[arg-type]
    try:
        start = time.perf_counter()
        report = evaluation.run_all(scenarios)
        elapsed = time.perf_counter() - start
    finally:
        evaluation.close()
    scores = {w: report.score(w) for w in ("cause", "facts", "safety")}
    return elapsed, scores, len(scenarios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-live", action="store_true", help="skip the live Docker run")
    args = parser.parse_args()
    baseline = statistics.median(_load_everything() for _ in range(args.runs))
    replays = [_eval("replay") for _ in range(args.runs)]
    replay = statistics.median(r[0] for r in replays)
    count = replays[0][2]
    figures: dict[str, object] = {
        "scenarios": count,
        "load_corpus_seconds_median": round(baseline, 3),
        "replay_seconds_median": round(replay, 2),
        "replay_seconds_per_scenario": round(replay / count, 3),
        "replay_over_load": round(replay / baseline, 1),
        "replay_scores": replays[0][1],
        "runs": args.runs,
    }
    print(f"eval corpus: {count} scenarios, medians of {args.runs} runs")
    print(f"  load and validate corpus + recordings (baseline) {baseline * 1000:8.0f} ms")
    print(
        f"  uici eval --replay (whole corpus)                {replay:8.2f} s"
        f"  ({replay / baseline:.0f}x baseline, {replay / count * 1000:.0f} ms per scenario)"
    )
    print(f"  scores {replays[0][1]}")
    if not args.no_live:
        live, scores, docker_count = _eval("live", "docker")
        figures.update(
            live_docker_seconds=round(live, 1),
            live_docker_scenarios=docker_count,
            live_docker_scores=scores,
            live_over_replay_per_scenario=round((live / docker_count) / (replay / count), 1),
        )
        print(f"  uici eval --live, Docker part ({docker_count}) {live:8.1f} s  scores {scores}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["eval_corpus"] = figures
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"  written to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
