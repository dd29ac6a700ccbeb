"""ConfigCache: changed files are picked up after the TTL; a bad change keeps the last good one."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from infrastructure.configuration.cache import ConfigCache
from infrastructure.configuration.problems import ConfigError


class Clock:
    """A controllable clock: the TTL is a time rule, so the test steps time instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def set_port(config_dir: Path, port: str) -> None:
    path = config_dir / "platform.yml"
    lines = [
        f"  port: {port}" if line.startswith("  port: ") else line
        for line in path.read_text().splitlines()
    ]
    path.write_text("\n".join(lines) + "\n")


def test_ttl_comes_from_platform_yml(test_config_dir: Path) -> None:
    cache = ConfigCache(test_config_dir, environ={})
    assert cache.ttl_seconds == 5


def test_a_change_is_picked_up_after_the_ttl_not_before(test_config_dir: Path) -> None:
    clock = Clock()
    cache = ConfigCache(test_config_dir, environ={}, clock=clock)
    first = cache.get()
    assert first.platform.service.port == 8080
    set_port(test_config_dir, "9001")
    clock.now += 4.9
    assert cache.get() is first
    clock.now += 0.2
    assert cache.get().platform.service.port == 9001


def test_an_unchanged_directory_is_not_reparsed(test_config_dir: Path) -> None:
    clock = Clock()
    cache = ConfigCache(test_config_dir, environ={}, clock=clock)
    first = cache.get()
    clock.now += 60
    assert cache.get() is first


def test_an_invalid_change_keeps_the_last_good_configuration_and_logs_why(
    test_config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    cache = ConfigCache(test_config_dir, environ={}, clock=clock)
    set_port(test_config_dir, "not-a-port")
    clock.now += 10
    with caplog.at_level(logging.ERROR, logger="uici.config"):
        config = cache.get()
    assert config.platform.service.port == 8080
    assert "service.port: invalid value 'not-a-port'" in caplog.text
    assert "keeping the last good one" in caplog.text
    assert cache.last_error is not None

    # the same bad revision is not reported again at every tick
    caplog.clear()
    clock.now += 10
    with caplog.at_level(logging.ERROR, logger="uici.config"):
        cache.get()
    assert caplog.text == ""

    # fixing the file brings the change in and clears the error
    set_port(test_config_dir, "9002")
    clock.now += 10
    assert cache.get().platform.service.port == 9002
    assert cache.last_error is None


def test_a_broken_configuration_stops_start_up(test_config_dir: Path) -> None:
    set_port(test_config_dir, "nope")
    with pytest.raises(ConfigError):
        ConfigCache(test_config_dir, environ={})
