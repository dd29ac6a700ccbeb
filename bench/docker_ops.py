"""Overhead of the Docker executor against the raw SDK and the docker CLI, in the same run.

For `get_logs` and `get_status` it measures, per call, the median wall time of:
  - raw SDK:  client.containers.get(name) + .logs(tail=N) / .attrs  (the same two API calls)
  - executor: DockerExecutor.execute(spec) for an already translated spec
  - full:     registry validation + translation + execute (what `uici run` does per call)
  - CLI:      `docker logs --tail N name` / `docker inspect name` as a subprocess
and prints ratios and the executor's added milliseconds. Goal: under 10 ms added at the median.

Run: make bench   (or .venv/bin/python bench/docker_ops.py [--runs N])
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from agent.evaluation.failures import FailureLab, wait_for  # noqa: E402
from infrastructure.configuration.loader import load_config  # noqa: E402
from infrastructure.executors.factory import create_executor  # noqa: E402
from infrastructure.registry import OperationRegistry  # noqa: E402
from infrastructure.translator import CommandTranslator  # noqa: E402

LINES = 100


def median_ms(call: Callable[[], object], runs: int) -> float:
    call()  # warm-up: connections, caches
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=30)
    lab = FailureLab(client, prefix="uici-bench")
    try:
        lab.run(
            "logger",
            [
                "sh",
                "-c",
                "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done; sleep 600",
            ],
        )
        container = lab.container("logger")
        wait_for(lambda: b"line 1999" in container.logs(tail=1), 30, "the log lines")
        name = container.name

        config = load_config(environ={})
        registry = OperationRegistry.from_config(config)
        translator = CommandTranslator.from_config(config)
        executor = create_executor("local-docker", config.environments.environments["local-docker"])

        def spec(operation: str, **params: object):  # type: ignore[no-untyped-def]
            return translator.translate(registry.validate(operation, "local-docker", params, name))

        logs_spec = spec("get_logs", lines=LINES)
        status_spec = spec("get_status")
        cases = {
            "get_logs": {
                "raw SDK": lambda: client.containers.get(name).logs(
                    stdout=True, stderr=True, tail=LINES
                ),
                "executor": lambda: executor.execute(logs_spec),
                "validate+translate+execute": lambda: executor.execute(
                    spec("get_logs", lines=LINES)
                ),
                "docker CLI": lambda: subprocess.run(
                    ["docker", "logs", "--tail", str(LINES), name], capture_output=True, check=True
                ),
            },
            "get_status": {
                "raw SDK": lambda: client.containers.get(name).attrs,
                "executor": lambda: executor.execute(status_spec),
                "validate+translate+execute": lambda: executor.execute(spec("get_status")),
                "docker CLI": lambda: subprocess.run(
                    ["docker", "inspect", name], capture_output=True, check=True
                ),
            },
        }
        print(f"Docker executor overhead, median of {args.runs} runs each ({LINES} log lines)")
        for operation, variants in cases.items():
            results = {label: median_ms(call, args.runs) for label, call in variants.items()}
            raw = results["raw SDK"]
            print(f"\n{operation}")
            for label, value in results.items():
                print(f"  {label:<28} {value:8.2f} ms   {value / raw:6.2f}x raw SDK")
            added = results["executor"] - raw
            cli_ratio = results["docker CLI"] / results["executor"]
            print(
                f"  executor adds {added:+.2f} ms over the raw SDK (goal < 10 ms); "
                f"the docker CLI takes {cli_ratio:.1f}x the executor"
            )
        executor.close()
    finally:
        lab.cleanup()


if __name__ == "__main__":
    main()
