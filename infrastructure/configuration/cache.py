"""Configuration cache for long-running processes (the service, workers).

`get()` returns the configuration in force. After the TTL it checks whether the files
changed (a digest of their bytes) and reloads them; a change that fails validation is
logged with every problem and the last good configuration stays in force.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from infrastructure.configuration.loader import UICIConfig, UniversalConfigLoader
from infrastructure.configuration.problems import ConfigError

logger = logging.getLogger("uici.config")


class ConfigCache:
    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        ttl_seconds: float | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = UniversalConfigLoader(directory, environ)
        self._clock = clock
        self._lock = threading.Lock()
        # The first load must succeed: a process does not start on a broken configuration.
        self._config = self._loader.load()
        self._explicit_ttl = ttl_seconds
        self._ttl = self._ttl_for(self._config)
        self._checked_at = clock()
        self._rejected_fingerprint: str | None = None
        self.last_error: ConfigError | None = None

    def _ttl_for(self, config: UICIConfig) -> float:
        if self._explicit_ttl is not None:
            return self._explicit_ttl
        return config.platform.configuration.cache_ttl_seconds

    @property
    def ttl_seconds(self) -> float:
        return self._ttl

    def get(self) -> UICIConfig:
        if self._clock() - self._checked_at < self._ttl:
            return self._config
        with self._lock:
            if self._clock() - self._checked_at >= self._ttl:
                self._refresh()
            return self._config

    def _refresh(self) -> None:
        self._checked_at = self._clock()
        fingerprint = self._loader.fingerprint()
        if fingerprint in (self._config.fingerprint, self._rejected_fingerprint):
            return
        try:
            config = self._loader.load()
        except ConfigError as exc:
            # Logged once per bad revision of the files, not at every TTL tick.
            self._rejected_fingerprint = fingerprint
            self.last_error = exc
            logger.error("configuration change rejected, keeping the last good one:\n%s", exc)
            return
        self._config = config
        self._rejected_fingerprint = None
        self.last_error = None
        self._ttl = self._ttl_for(config)
        logger.info("configuration reloaded from %s", config.directory)
