"""Shared pieces of the service tests: keys, configuration environment, payload builders."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

from agent.service.auth import key_hash
from tests.store_backend import store_url_for

# Sentinel secrets: tests assert that none of them ever shows up where it must not.
KEYS = {
    "webhook": "uici_SENTINEL-webhook-7f3a9c",
    "reader": "uici_SENTINEL-reader-1b2c3d",
    "operator": "uici_SENTINEL-operator-4e5f6a",
    "admin": "uici_SENTINEL-admin-9d8c7b",
}

_counter = itertools.count(1)


def key_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {f"UICI_TEST_{name.upper()}_SHA256": key_hash(key) for name, key in KEYS.items()}
    env["UICI_TEST_STORAGE_URL"] = store_url_for(tmp_path)
    env.update(extra)
    return env


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


SAMPLE = {
    "version": "4",
    "groupKey": '{}:{alertname="ContainerDown"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "uici",
    "groupLabels": {"alertname": "ContainerDown"},
    "commonLabels": {"alertname": "ContainerDown"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "alerts": [],
}


def alert(
    service: str = "web",
    status: str = "firing",
    fingerprint: str | None = None,
    starts_at: str = "2026-11-24T13:22:34.501986677Z",
    **labels: str,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "ContainerDown", "service": service, **labels},
        "annotations": {"summary": f"{service} is down"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-24T14:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint or f"fp{next(_counter):014x}",
    }


def notification(*alerts: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = copy.deepcopy(SAMPLE)
    body["alerts"] = list(alerts)
    body["status"] = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    body.update(fields)
    return body
