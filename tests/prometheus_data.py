"""A real Prometheus with two hours of known history, for tests/test_prometheus_client.py.

`History` says what the series are (every value is a function of time, so tests can compute
what a query must return); `write_openmetrics` writes them as OpenMetrics text with
timestamps, `promtool tsdb create-blocks-from openmetrics` turns that into TSDB blocks, and
`LocalPrometheus` starts Debian's /usr/bin/prometheus on that data directory on 127.0.0.1,
scraping itself every second, with alert rules and (when a bcrypt hash can be made) basic
authentication through its real `--web.config.file`.

The history ends `END_AGO_SECONDS` before the start, so the backfilled blocks never overlap
the head Prometheus appends its own samples to, while the last values stay within the
5-minute lookback of queries at "now" for the whole test module.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx
import yaml

from tests.promstack import HOST, PROMETHEUS_BIN, free_port, log_tail

PROMTOOL_BIN = Path("/usr/bin/promtool")
END_AGO_SECONDS = 30
PODS = 50


@dataclass(frozen=True)
class History:
    """Two hours of samples every `interval` seconds, ending at `end` (Unix seconds).

    - uici_test_memory_bytes{service="web"}: rises linearly from memory_base by memory_slope
      per second; uici_test_memory_limit_bytes{service="web"} is memory_limit throughout.
    - uici_test_disk_bytes{service="web"}: disk_level with a ripple of -1, 0, +1 disk_ripple;
      uici_test_disk_capacity_bytes{service="web"} is disk_capacity.
    - uici_test_requests_total{pod="pod-NN"} for NN in 00..49: a counter rising NN+1 per second.
    - uici_test_errors_total{service="web"}: a counter rising error_rate_before per second,
      then error_rate_after from jump_at on.
    - uici_test_quality{service="web"}: 1, but NaN at every eighth sample.
    """

    end: int
    interval: int = 15
    duration: int = 7200
    memory_base: float = 200e6
    memory_slope: float = 100e3
    memory_limit: float = 1e9
    disk_level: float = 500e6
    disk_ripple: float = 1e6
    disk_capacity: float = 1e9
    error_rate_before: float = 0.2
    error_rate_after: float = 0.93
    jump_before_end: int = 1800

    @classmethod
    def ending_now(cls) -> History:
        now = int(time.time())
        return cls(end=now - now % 15 - END_AGO_SECONDS)

    @property
    def start(self) -> int:
        return self.end - self.duration

    @property
    def jump_at(self) -> int:
        return self.end - self.jump_before_end

    def times(self) -> list[int]:
        return list(range(self.start, self.end + 1, self.interval))

    def memory(self, at: float) -> float:
        return self.memory_base + self.memory_slope * (at - self.start)

    def disk(self, at: int) -> float:
        index = (at - self.start) // self.interval
        return self.disk_level + self.disk_ripple * (index % 3 - 1)

    def requests(self, pod: int, at: int) -> float:
        return float((pod + 1) * (at - self.start))

    def errors(self, at: int) -> float:
        before = self.error_rate_before * (min(at, self.jump_at) - self.start)
        return before + self.error_rate_after * max(0, at - self.jump_at)

    def quality(self, at: int) -> float:
        return float("nan") if ((at - self.start) // self.interval) % 8 == 0 else 1.0

    def metric_names(self) -> list[str]:
        return sorted(
            [
                "uici_test_memory_bytes",
                "uici_test_memory_limit_bytes",
                "uici_test_disk_bytes",
                "uici_test_disk_capacity_bytes",
                "uici_test_requests_total",
                "uici_test_errors_total",
                "uici_test_quality",
            ]
        )

    def write_openmetrics(self, path: Path) -> None:
        """Each family once, each series' samples in time order, then `# EOF`."""
        times = self.times()
        web = '{service="web"}'
        lines: list[str] = []

        def family(name: str, kind: str, rows: list[tuple[str, float, int]]) -> None:
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{sample} {_om_value(value)} {at}" for sample, value, at in rows)

        gauges = {
            "uici_test_memory_bytes": self.memory,
            "uici_test_memory_limit_bytes": lambda _at: self.memory_limit,
            "uici_test_disk_bytes": self.disk,
            "uici_test_disk_capacity_bytes": lambda _at: self.disk_capacity,
            "uici_test_quality": self.quality,
        }
        for name, value_at in gauges.items():
            family(name, "gauge", [(f"{name}{web}", value_at(at), at) for at in times])
        family(
            "uici_test_requests",
            "counter",
            [
                (f'uici_test_requests_total{{pod="pod-{pod:02d}"}}', self.requests(pod, at), at)
                for pod in range(PODS)
                for at in times
            ],
        )
        family(
            "uici_test_errors",
            "counter",
            [(f"uici_test_errors_total{web}", self.errors(at), at) for at in times],
        )
        lines.append("# EOF")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _om_value(value: float) -> str:
    return "NaN" if value != value else repr(value)


def backfill(history: History, data_dir: Path, workdir: Path) -> None:
    """TSDB blocks of `history` in data_dir, made by Debian's promtool."""
    source = workdir / "history.om"
    history.write_openmetrics(source)
    data_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            str(PROMTOOL_BIN),
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            str(source),
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"promtool failed ({done.returncode}): {done.stderr or done.stdout}")


def bcrypt_hash(password: str) -> str | None:
    """A bcrypt hash for Prometheus's basic_auth_users, or None when nothing here makes one.
    Python 3.11's crypt (libxcrypt on Debian) does; cost 4 keeps each check fast."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # crypt leaves in 3.13
            import crypt
    except ImportError:
        return None
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    return hashed if hashed and hashed.startswith("$2") else None


def available() -> str | None:
    """Why the real Prometheus cannot run here, or None when it can."""
    missing = [str(b) for b in (PROMETHEUS_BIN, PROMTOOL_BIN) if shutil.which(str(b)) is None]
    if missing:
        return f"{', '.join(missing)} not installed (run tests/infra/ensure_packages.sh)"
    return None


class LocalPrometheus:
    """Prometheus on 127.0.0.1 with `history` backfilled and `rules` loaded (one group,
    evaluated every second). With `basic` = (user, password), its web config requires them."""

    def __init__(
        self,
        workdir: Path,
        history: History,
        rules: list[dict[str, Any]],
        basic: tuple[str, str] | None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.workdir = workdir
        self.history = history
        self.rules = rules
        self.basic = basic
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def _write_configs(self) -> list[str]:
        scrape: dict[str, Any] = {
            "job_name": "prometheus",
            "static_configs": [{"targets": [f"{HOST}:{self.port}"]}],
        }
        flags: list[str] = []
        if self.basic is not None:
            user, password = self.basic
            hashed = bcrypt_hash(password)
            if hashed is None:
                raise RuntimeError("no bcrypt hash available for basic auth")
            web = {"basic_auth_users": {user: hashed}}
            (self.workdir / "web.yml").write_text(yaml.safe_dump(web))
            flags.append(f"--web.config.file={self.workdir / 'web.yml'}")
            scrape["basic_auth"] = {"username": user, "password": password}
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(self.workdir / "rules.yml")],
            "scrape_configs": [scrape],
        }
        rules = {"groups": [{"name": "uici-test", "interval": "1s", "rules": self.rules}]}
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        (self.workdir / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        return flags

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        data_dir = self.workdir / "data"
        backfill(self.history, data_dir, self.workdir)
        flags = self._write_configs()
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [
                str(PROMETHEUS_BIN),
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={data_dir}",
                f"--web.listen-address={HOST}:{self.port}",
                f"--web.external-url={self.url}",
                *flags,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self.popen is not None
        deadline = time.monotonic() + self.startup_timeout
        auth = httpx.BasicAuth(*self.basic) if self.basic else None
        last = "no answer yet"
        with httpx.Client(timeout=2.0, trust_env=False, auth=auth) as client:
            while True:
                code = self.popen.poll()
                if code is not None:
                    raise RuntimeError(f"prometheus exited ({code}):\n{log_tail(self.log_path)}")
                try:
                    response = client.get(f"{self.url}/-/ready")
                    if response.status_code == httpx.codes.OK:
                        return
                    last = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"prometheus not ready in time ({last}):\n{log_tail(self.log_path)}"
                    )
                time.sleep(0.1)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
