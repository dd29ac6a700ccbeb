"""Cold-start time of the `uici` CLI, against baselines measured in the same run.

`uici ops list` must not import Prefect or a cloud SDK, so its cold start should stay a small
multiple of a bare Python start and far below `import prefect`.

Run: make bench   (or .venv/bin/python bench/cli_startup.py [--runs N])
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

PYTHON = sys.executable
UICI = str(Path(PYTHON).parent / "uici")

CASES: list[tuple[str, list[str]]] = [
    ("python -c pass (baseline)", [PYTHON, "-c", "pass"]),
    ("python -c 'import prefect'", [PYTHON, "-c", "import prefect"]),
    ("uici ops list --json", [UICI, "ops", "list", "--json"]),
    ("uici config validate", [UICI, "config", "validate"]),
    (
        "uici run get_logs --dry-run",
        [UICI, "run", "get_logs", "--target", "web", "--param", "lines=5", "--dry-run"],
    ),
]


def median_seconds(argv: list[str], runs: int) -> float:
    subprocess.run(argv, capture_output=True, check=True)  # warm the page cache once
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    results = [(name, median_seconds(argv, args.runs)) for name, argv in CASES]
    baseline = results[0][1]
    print(f"CLI cold start, median of {args.runs} runs each")
    print(f"{'command':<34} {'median':>9} {'x python':>9}")
    for name, seconds in results:
        print(f"{name:<34} {seconds * 1000:>7.0f} ms {seconds / baseline:>8.1f}x")
    ops_list = dict(results)["uici ops list --json"]
    prefect = dict(results)["python -c 'import prefect'"]
    print(f"uici ops list / import prefect: {ops_list / prefect:.2f}")


if __name__ == "__main__":
    main()
