"""Shared fixtures: configuration directories copied into a temporary place per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.store_backend import BACKEND, drop_stores, store_url_for, stores_made

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SHIPPED_CONFIG = REPO_ROOT / "infrastructure" / "config"
TEST_CONFIG = DATA / "config"


@pytest.fixture
def test_config_dir(tmp_path: Path) -> Path:
    """A writable copy of the small test configuration (tests/data/config)."""
    target = tmp_path / "config"
    shutil.copytree(TEST_CONFIG, target)
    return target


@pytest.fixture
def shipped_config_dir(tmp_path: Path) -> Path:
    """A writable copy of the configuration UICI ships with."""
    target = tmp_path / "shipped"
    shutil.copytree(SHIPPED_CONFIG, target)
    return target


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests choose their configuration explicitly; a developer's UICI_CONFIG_DIR must not leak in,
    # nor one a `uici --config-dir` run in-process set (recorded first, so undone at teardown).
    monkeypatch.setenv("UICI_CONFIG_DIR", "")
    monkeypatch.delenv("UICI_CONFIG_DIR")


@pytest.fixture(autouse=True)
def _drop_postgres_stores():  # type: ignore[no-untyped-def]
    """On PostgreSQL (make test-postgres): each test's stores are dropped after it."""
    if BACKEND != "postgresql":
        yield
        return
    before = stores_made()
    yield
    drop_stores(stores_made() - before)


# --- PostgreSQL: a real cluster (tests/postgres.py) ----------------------------------------


@pytest.fixture(scope="session")
def postgres():  # type: ignore[no-untyped-def]
    from tests.store_backend import shared_postgres

    return shared_postgres()  # one cluster for the session, stopped at exit


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new empty store on each backend: an SQLite file, or a database of the cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/uici.db"
    return str(request.getfixturevalue("postgres").database())


# --- Docker: a real engine ------------------------------------------------------------------

DOCKER_SOCKET = "unix:///var/run/docker.sock"


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    """The real engine. `make test` starts one (tests/infra/ensure_docker.sh); without it the
    Docker tests fail loudly rather than skip, so CI can never pass them by not running them."""
    import docker

    try:
        client = docker.DockerClient(base_url=DOCKER_SOCKET, timeout=30)
        client.ping()
    except Exception as exc:
        pytest.fail(
            f"no Docker engine answers at {DOCKER_SOCKET} ({exc}); "
            "run tests/infra/ensure_docker.sh",
            pytrace=False,
        )
    yield client
    client.close()


@pytest.fixture(scope="session")
def lab(docker_client):  # type: ignore[no-untyped-def]
    """The failure library for this test session; everything it made is removed at the end."""
    from agent.evaluation.failures import FailureLab

    failure_lab = FailureLab(docker_client)
    yield failure_lab
    failure_lab.cleanup()


# --- planning: the shipped configuration pointed at a scripted LLM server ----------------------

SENTINEL_LLM_KEY = "sk-SENTINEL-llm-key-0d9e2f"


@pytest.fixture(scope="session")
def llm_server():  # type: ignore[no-untyped-def]
    from tests.llm_server import FakeLLMServer

    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def fake_llm(llm_server):  # type: ignore[no-untyped-def]
    llm_server.reset()
    yield llm_server
    llm_server.reset()


@pytest.fixture
def planning_env(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Environment variables for the shipped configuration: an isolated store per test."""
    return {"UICI_STORAGE_URL": store_url_for(tmp_path)}


@pytest.fixture
def llm_env(planning_env, fake_llm):  # type: ignore[no-untyped-def]
    """The shipped configuration with an openai_compatible LLM at the scripted server."""
    return {
        **planning_env,
        "UICI_LLM_PROVIDER": "openai_compatible",
        "UICI_LLM_MODEL": "test-model",
        "UICI_LLM_BASE_URL": fake_llm.base_url,
        "UICI_LLM_API_KEY": SENTINEL_LLM_KEY,
        "UICI_LLM_TIMEOUT_SECONDS": "2",
        "UICI_LLM_MAX_RETRIES": "2",
        "UICI_LLM_RETRY_BACKOFF_SECONDS": "0.05",
    }


# --- Prefect: a real, temporary server (SQLite) for the whole session ----------------------------


@pytest.fixture(scope="session")
def prefect_server():  # type: ignore[no-untyped-def]
    """prefect_test_harness with the flow heartbeat off (it adds ~1 s to every sync flow)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=90),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture
def flow_env(prefect_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Flows read their configuration from the process environment: an isolated store."""
    monkeypatch.setenv("UICI_STORAGE_URL", store_url_for(tmp_path))
    return tmp_path
