"""Record (or run live) corpus scenarios with everything the live parts of the tests use:
the local Docker engine, the Kubernetes and OCI API doubles seeded from each scenario, and a
real Prometheus and a Loki double seeded with its metrics and logs. `uici eval --record`
has only the engine; this records every kind of scenario:

    .venv/bin/python -m tests.eval_record --only NAME [--only NAME ...] [--live]
"""

from __future__ import annotations

import argparse
import sys

from agent.evaluation.harness import Evaluation
from agent.evaluation.scenarios import load_corpus
from infrastructure.configuration.loader import load_config
from tests.eval_doubles import seeded_cloud
from tests.eval_observability import seeded_observability


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", required=True, help="a scenario; repeatable")
    parser.add_argument("--live", action="store_true", help="diagnose live, record nothing")
    args = parser.parse_args(argv)
    scenarios = load_corpus(only=args.only)
    docker_client = None
    if any(s.environment == "docker" for s in scenarios):
        import docker

        docker_client = docker.from_env()
    evaluation = Evaluation(
        load_config(),
        "live" if args.live else "record",
        docker_client=docker_client,
        cloud_setup=seeded_cloud,
        observability_setup=seeded_observability,
    )
    try:
        report = evaluation.run_all(scenarios)
    finally:
        evaluation.close()
    for r in report.results:
        mark = "pass" if r.passed else "MISS"
        print(
            f"{mark} {r.name}: {r.status} class={r.diagnosed_class or '-'} rule={r.rule or '-'}"
            f" {r.duration_seconds:.1f}s facts_missing={r.facts_missing} unsafe={r.unsafe}"
            f" {r.detail}\n    root cause: {r.root_cause}"
        )
    return 0 if all(r.passed for r in report.results) else 1


if __name__ == "__main__":
    sys.exit(main())
