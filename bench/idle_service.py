"""What an idle `uici serve` costs: CPU share of one core over a quiet interval, with two
notification sinks configured and polled every 0.1 s (tests/data/config), against the same
service with the shipped configuration (no sink enabled) as the baseline. Medians of 3 runs.

Writes its figures under "idle_service" in .uici/bench/results.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.api_support import key_env  # noqa: E402
from tests.conftest import SHIPPED_CONFIG, TEST_CONFIG  # noqa: E402
from tests.service_process import ServiceProcess  # noqa: E402

RESULTS = REPO / ".uici" / "bench" / "results.json"
RUNS = 3
SETTLE_SECONDS = 5.0
MEASURE_SECONDS = 15.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_share(config_dir: Path) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("UICI_")}
        env.update(
            key_env(
                Path(tmp),
                UICI_TEST_SLACK_URL="http://127.0.0.1:9/slack",
                UICI_TEST_NOTIFY_WEBHOOK_URL="http://127.0.0.1:9/hook",
                UICI_TEST_NOTIFY_WEBHOOK_SECRET="idle-bench-secret-0123456789abcdef",
            ),
            UICI_CONFIG_DIR=str(config_dir),
            UICI_STORAGE_URL=f"sqlite:///{tmp}/uici.db",
        )
        service = ServiceProcess(env, Path(tmp) / "serve.log", None, "--no-dispatch").start()
        try:
            assert service.process is not None
            time.sleep(SETTLE_SECONDS)
            before = cpu_seconds(service.process.pid)
            time.sleep(MEASURE_SECONDS)
            return (cpu_seconds(service.process.pid) - before) / MEASURE_SECONDS
        finally:
            service.stop()


def main() -> None:
    print(f"idle uici serve: CPU share of one core over {MEASURE_SECONDS:g} s, medians of {RUNS}")
    baseline = statistics.median(idle_share(SHIPPED_CONFIG) for _ in range(RUNS))
    with_sinks = statistics.median(idle_share(TEST_CONFIG) for _ in range(RUNS))
    ratio = with_sinks / baseline if baseline else float("inf")
    print(f"  shipped configuration (no sink):          {baseline:.3f} of a core (baseline)")
    print(f"  two sinks, notifier polling every 0.1 s:  {with_sinks:.3f} of a core (x{ratio:.2f})")
    figures = {
        "idle_cpu_share_baseline": round(baseline, 4),
        "idle_cpu_share_two_sinks": round(with_sinks, 4),
        "idle_cpu_ratio": round(ratio, 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["idle_service"] = figures
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"  written to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
