"""Schema-driven fuzz of the HTTP API (schemathesis against the app's own OpenAPI, in process):
whatever the generated request, valid or not, the service never answers 5xx and its responses
match the documented schemas. Bounded: FUZZ_MAX_EXAMPLES per operation (default 25)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis import checks as st_checks

from agent.service.app import create_app
from infrastructure.configuration.cache import ConfigCache
from tests.api_support import KEYS, key_env

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))
_STATE = Path(tempfile.mkdtemp(prefix="uici-fuzz-"))
_CONFIG = Path(__file__).parent / "data" / "config"

# The admin key has every scope but the webhook's; the webhook route is fuzzed with its own key.
app = create_app(ConfigCache(_CONFIG, environ=key_env(_STATE)), run_dispatcher=False)
# /metrics is plain text; /health/deep answers 503 by design when a dependency is down (the
# test configuration's Prefect is), which test_api checks.
schema = (
    schemathesis.openapi.from_asgi("/openapi.json", app)
    .exclude(path="/metrics")
    .exclude(path="/health/deep")
)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])

CHECKS = [
    st_checks.not_a_server_error,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
@pytest.mark.timeout(180)
def test_no_request_makes_the_service_fail(case: schemathesis.Case[Any]) -> None:
    key = KEYS["webhook"] if case.path == "/webhooks/alertmanager" else KEYS["admin"]
    # Never fuzz real operations against the engine: runs are dry unless the body says so,
    # and the test configuration's Docker environment may not be reachable anyway.
    if case.path == "/operations/{name}/run" and isinstance(case.body, dict):
        case.body["dry_run"] = True
    case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)
